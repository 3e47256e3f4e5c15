//! Conto's wire format for the hybrid endpoints: request bodies from intents, and strict parsing
//! of decision bodies. A body that is not a well-formed decision is an error, never an approval.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use secrecy::SecretString;
use serde_json::{Map, Value, json};

use conto_core::Amount;
use conto_core::AuthorityError;
use conto_core::{Authorization, Decision, Denial, Limits, PendingApproval, Settlement, Verdict, Violation};
use conto_core::{PaymentIntent, Rail};

/// How long an approval from an endpoint that states no expiry is trusted (Conto: 10 minutes).
pub(crate) const IMPLICIT_TTL: SignedDuration = SignedDuration::from_mins(10);
/// The longest expiry accepted from the authority.
const MAX_TTL: SignedDuration = SignedDuration::from_hours(24);

fn invalid(what: impl Into<String>) -> AuthorityError {
    AuthorityError::invalid_response(what)
}

/// The endpoint (relative to `/api/sdk/`) and body of an authorize call.
pub(crate) fn authorize_request(intent: &PaymentIntent) -> (String, Value) {
    let mut body = Map::new();
    body.insert("amount".into(), serde_json::to_value(intent.amount).unwrap_or(Value::Null));
    if let Some(r) = &intent.recipient {
        body.insert("recipientAddress".into(), json!(r.as_str()));
    }
    let mut opt = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            body.insert(k.into(), json!(v));
        }
    };
    opt("recipientName", &intent.recipient_name);
    opt("purpose", &intent.purpose);
    opt("category", &intent.category);
    if !intent.context.is_empty() {
        body.insert("context".into(), Value::Object(intent.context.clone()));
    }
    body.insert("idempotencyKey".into(), json!(intent.idempotency_key.as_str()));
    let path = match &intent.rail {
        Rail::Transfer { chain_id, sender } => {
            body.insert("senderAddress".into(), json!(sender.as_str()));
            body.insert("chainId".into(), json!(chain_id));
            "payments/approve"
        }
        Rail::X402 { resource_url, service_domain, facilitator, scheme } => {
            body.insert("resourceUrl".into(), json!(resource_url));
            body.insert("serviceDomain".into(), json!(service_domain));
            if let Some(f) = facilitator {
                body.insert("facilitator".into(), json!(f));
            }
            if let Some(s) = scheme {
                body.insert("scheme".into(), json!(s));
            }
            "x402/pre-authorize"
        }
        Rail::Mpp { resource_url, service_domain, session_id, intent: mpp_intent, deposit, method } => {
            body.insert("resourceUrl".into(), json!(resource_url));
            body.insert("serviceDomain".into(), json!(service_domain));
            body.insert("intent".into(), json!(mpp_intent.as_deref().unwrap_or("session")));
            if let Some(s) = session_id {
                body.insert("sessionId".into(), json!(s));
            }
            if let Some(d) = deposit {
                body.insert("depositAmount".into(), serde_json::to_value(d).unwrap_or(Value::Null));
            }
            if let Some(m) = method {
                body.insert("method".into(), json!(m));
            }
            "mpp/pre-authorize"
        }
        Rail::Card { card_id, merchant, mcc } => {
            body.insert("merchantName".into(), json!(merchant));
            if let Some(m) = mcc {
                body.insert("merchantCategory".into(), json!(m));
            }
            if let Some(c) = card_id {
                body.insert("cardId".into(), json!(c));
            }
            "cards/approve"
        }
        Rail::Request { wallet_id } => {
            // A policy check only: the app settles elsewhere, so Conto must never execute it.
            body.insert("autoExecute".into(), json!(false));
            if let Some(w) = wallet_id {
                body.insert("walletId".into(), json!(w));
            }
            "payments/request"
        }
    };
    (path.to_owned(), Value::Object(body))
}

fn reasons(body: &Value) -> Vec<String> {
    match body.get("reasons") {
        Some(Value::Array(items)) => items.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

fn violations(body: &Value) -> Result<Vec<Violation>, AuthorityError> {
    match body.get("violations") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| invalid(format!("malformed `violations`: {e}"))),
    }
}

fn timestamp(body: &Value, key: &str) -> Result<Option<Timestamp>, AuthorityError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            s.parse::<Timestamp>().map(Some).map_err(|_| invalid(format!("`{key}` is not an RFC 3339 time: {s}")))
        }
        Some(other) => Err(invalid(format!("`{key}` is not a time: {other}"))),
    }
}

fn text<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn check_expiry(expires_at: Timestamp, now: Timestamp) -> Result<Timestamp, AuthorityError> {
    if expires_at <= now {
        return Err(invalid(format!("the approval expired already ({expires_at})")));
    }
    if expires_at > now.saturating_add(MAX_TTL).unwrap_or(now) {
        return Err(invalid(format!("the approval's expiry {expires_at} is implausibly far away")));
    }
    Ok(expires_at)
}

/// Checks the fields an approval echoes against what was asked.
fn check_echo(body: &Value, intent: &PaymentIntent) -> Result<(), AuthorityError> {
    if let Some(v) = body.get("amount").filter(|v| !v.is_null()) {
        let echoed: Amount =
            serde_json::from_value(v.clone()).map_err(|e| invalid(format!("malformed `amount`: {e}")))?;
        if echoed != intent.amount {
            return Err(invalid(format!("approved amount {echoed} does not match the requested {}", intent.amount)));
        }
    }
    for key in ["recipientAddress", "recipient"] {
        if let (Some(echoed), Some(asked)) = (text(body, key), &intent.recipient)
            && conto_core::Address::parse(echoed).map(|a| a != *asked).unwrap_or(true)
        {
            return Err(invalid(format!("approved recipient {echoed} does not match the requested {asked}")));
        }
    }
    Ok(())
}

fn limits(body: &Value) -> Limits {
    body.get("limits").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default()
}

fn pending(body: &Value, now: Timestamp) -> Result<PendingApproval, AuthorityError> {
    let id = text(body, "approvalRequestId").ok_or_else(|| invalid("approval required but no `approvalRequestId`"))?;
    Ok(PendingApproval {
        approval_request_id: id.to_owned(),
        expires_at: timestamp(body, "expiresAt")?.unwrap_or(now.saturating_add(IMPLICIT_TTL).unwrap_or(now)),
        reasons: reasons(body),
    })
}

/// An approval of exactly the requested amount, with a checked expiry.
fn approval(
    body: &Value,
    intent: &Arc<PaymentIntent>,
    id: String,
    token: Option<&str>,
    expires: Timestamp,
    now: Timestamp,
) -> Result<Decision, AuthorityError> {
    Ok(Decision::from_policy(Verdict::Approved(Authorization {
        id,
        token: token.map(|t| SecretString::from(t.to_owned())),
        amount: intent.amount,
        expires_at: check_expiry(expires, now)?,
        limits: limits(body),
        intent: intent.clone(),
    })))
}

/// Parses a decision body for `intent`'s rail. `status` is the HTTP status it came with.
pub(crate) fn parse_decision(
    status: u16,
    body: &Value,
    intent: &Arc<PaymentIntent>,
    now: Timestamp,
) -> Result<Decision, AuthorityError> {
    if !body.is_object() {
        return Err(invalid(format!("HTTP {status}: the body is not a JSON object")));
    }
    let decided = |v: Verdict| Ok(Decision::from_policy(v));
    let denial = || -> Result<Decision, AuthorityError> {
        Ok(Decision::from_policy(Verdict::Denied(Denial { reasons: reasons(body), violations: violations(body)? })))
    };
    let wants_human = body.get("requiresHumanApproval").and_then(Value::as_bool) == Some(true)
        || text(body, "status") == Some("REQUIRES_APPROVAL");
    match &intent.rail {
        Rail::Transfer { .. } => match body.get("approved").and_then(Value::as_bool) {
            Some(true) => {
                check_echo(body, intent)?;
                let id = text(body, "approvalId").ok_or_else(|| invalid("approved without `approvalId`"))?;
                let token = text(body, "approvalToken").ok_or_else(|| invalid("approved without `approvalToken`"))?;
                if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid("`approvalToken` is not 64 hex characters"));
                }
                let expires = timestamp(body, "expiresAt")?.ok_or_else(|| invalid("approved without `expiresAt`"))?;
                approval(body, intent, id.to_owned(), Some(token), expires, now)
            }
            Some(false) if wants_human => decided(Verdict::RequiresApproval(pending(body, now)?)),
            Some(false) => denial(),
            None => Err(invalid(format!("HTTP {status}: no boolean `approved` in the decision"))),
        },
        Rail::X402 { .. } | Rail::Mpp { .. } => match body.get("authorized").and_then(Value::as_bool) {
            Some(true) => {
                check_echo(body, intent)?;
                let id = text(body, "authorizationId")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{}:{}", intent.rail.name(), intent.idempotency_key));
                let expires = timestamp(body, "expiresAt")?.unwrap_or(now.saturating_add(IMPLICIT_TTL).unwrap_or(now));
                approval(body, intent, id, None, expires, now)
            }
            Some(false) if wants_human => decided(Verdict::RequiresApproval(pending(body, now)?)),
            Some(false) => denial(),
            None => Err(invalid(format!("HTTP {status}: no boolean `authorized` in the decision"))),
        },
        Rail::Request { .. } => match text(body, "status").map(str::to_ascii_uppercase).as_deref() {
            // Conto's hybrid example normalises these spellings the same way.
            Some("APPROVED" | "READY_TO_SEND") => {
                check_echo(body, intent)?;
                let id = text(body, "requestId").ok_or_else(|| invalid("approved without `requestId`"))?;
                let expires = timestamp(body, "expiresAt")?.unwrap_or(now.saturating_add(IMPLICIT_TTL).unwrap_or(now));
                approval(body, intent, id.to_owned(), None, expires, now)
            }
            Some("DENIED" | "REJECTED" | "DECLINED") => denial(),
            Some("REQUIRES_APPROVAL" | "PENDING_APPROVAL" | "REVIEW_REQUIRED") => {
                decided(Verdict::RequiresApproval(pending(body, now)?))
            }
            Some("EXECUTED") => Err(invalid("Conto executed a payment request the app meant to settle itself")),
            Some(other) => Err(invalid(format!("unknown payment request status `{other}`"))),
            None => Err(invalid(format!("HTTP {status}: no `status` in the payment request decision"))),
        },
        Rail::Card { .. } => match text(body, "status") {
            Some("APPROVED") => {
                check_echo(body, intent)?;
                let id = text(body, "requestId").ok_or_else(|| invalid("approved without `requestId`"))?;
                let expires = timestamp(body, "expiresAt")?.ok_or_else(|| invalid("approved without `expiresAt`"))?;
                approval(body, intent, id.to_owned(), text(body, "approvalToken"), expires, now)
            }
            Some("DENIED") => denial(),
            Some("REQUIRES_APPROVAL") => decided(Verdict::RequiresApproval(pending(body, now)?)),
            Some(other) => Err(invalid(format!("unknown card decision status `{other}`"))),
            None => Err(invalid(format!("HTTP {status}: no `status` in the card decision"))),
        },
    }
}

/// The endpoint and body of a record call; `None` for a rail Conto has no record step for (a
/// payment request settled elsewhere).
pub(crate) fn record_request(
    authorization: &Authorization,
    settlement: &Settlement,
    token: Option<&str>,
) -> Result<Option<(String, Value)>, AuthorityError> {
    let intent = &authorization.intent;
    let amount = serde_json::to_value(settlement.amount.unwrap_or(authorization.amount)).unwrap_or(Value::Null);
    let key = format!("rec_{}", authorization.id);
    let recipient = intent.recipient.as_ref().map(|r| r.as_str().to_owned());
    Ok(Some(match &intent.rail {
        Rail::Request { .. } => return Ok(None),
        Rail::Transfer { .. } => {
            let tx = settlement.reference.as_deref().ok_or_else(|| {
                AuthorityError::InvalidRecord(
                    "confirming a transfer needs the settlement reference (the tx hash)".into(),
                )
            })?;
            let token = token.ok_or_else(|| invalid("the approval carries no approval token"))?;
            (
                format!("payments/{}/confirm", authorization.id),
                json!({"txHash": tx, "approvalToken": token, "amount": amount, "idempotencyKey": key}),
            )
        }
        Rail::X402 { resource_url, facilitator, .. } => (
            "x402/record".to_owned(),
            json!({
                "amount": amount, "recipientAddress": recipient, "resourceUrl": resource_url,
                "txHash": settlement.reference, "transactionHash": settlement.reference,
                "paymentId": intent.idempotency_key.as_str(), "facilitator": facilitator,
                "responseCode": 200, "authorizationId": authorization.id, "idempotencyKey": key,
            }),
        ),
        Rail::Mpp { resource_url, session_id, .. } => (
            "mpp/record".to_owned(),
            json!({
                "amount": amount, "recipientAddress": recipient, "resourceUrl": resource_url,
                "txHash": settlement.reference, "transactionHash": settlement.reference,
                "sessionId": session_id, "scheme": "mpp", "authorizationId": authorization.id,
                "idempotencyKey": key,
            }),
        ),
        Rail::Card { .. } => (
            format!("cards/{}/confirm", authorization.id),
            json!({
                "transactionReference": settlement.reference, "amount": amount, "status": "COMPLETED",
                "approvalToken": token, "idempotencyKey": key,
            }),
        ),
    }))
}

/// Parses a record response.
pub(crate) fn parse_recorded(
    body: &Value,
    authorization: &Authorization,
    settlement: &Settlement,
) -> Result<conto_core::Recorded, AuthorityError> {
    let ok = body.get("confirmed").and_then(Value::as_bool) == Some(true)
        || body.get("recorded").and_then(Value::as_u64).is_some_and(|n| n > 0)
        || body.get("success").and_then(Value::as_bool) == Some(true);
    if !ok {
        return Err(invalid("the record response does not confirm the record"));
    }
    Ok(conto_core::Recorded {
        authorization_id: authorization.id.clone(),
        amount: settlement.amount.unwrap_or(authorization.amount),
        transaction_id: text(body, "transactionId").map(str::to_owned),
        late: body.get("late").and_then(Value::as_bool).unwrap_or(false),
        queued: false,
        actor_inactive: false,
    })
}
