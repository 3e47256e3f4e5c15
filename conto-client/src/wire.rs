//! Decisions and records on Conto's wire (the types are conto-wire's): strict reading of
//! decision bodies for each rail. A body that is not a well-formed decision is an error, never
//! an approval.

use std::sync::Arc;

use conto_wire::ErrorBody;
use conto_wire::sdk::{DecisionBody, PaymentBody, RecordError, RecordedBody};
use jiff::{SignedDuration, Timestamp};
use secrecy::SecretString;
use serde_json::Value;

use conto_core::AuthorityError;
use conto_core::{Authorization, Decision, Denial, PendingApproval, Settlement, Verdict, Violation, ViolationType};
use conto_core::{PaymentIntent, Rail};

/// How long a pending human approval that states no expiry is followed.
pub(crate) const IMPLICIT_PENDING_TTL: SignedDuration = SignedDuration::from_mins(10);
/// The longest expiry accepted from the authority.
const MAX_TTL: SignedDuration = SignedDuration::from_hours(24);

fn invalid(what: impl Into<String>) -> AuthorityError {
    AuthorityError::invalid_response(what)
}

/// Reads a decision body; a field of the wrong type is an invalid response.
pub(crate) fn decision_body(status: u16, body: &Value) -> Result<DecisionBody, AuthorityError> {
    if !body.is_object() {
        return Err(invalid(format!("HTTP {status}: the body is not a JSON object")));
    }
    <DecisionBody as serde::Deserialize>::deserialize(body)
        .map_err(|e| invalid(format!("HTTP {status}: malformed decision: {e}")))
}

/// A denial Conto answered as an error (conto-api.md §8): `403 PAYMENT_DENIED` ("blocked by
/// policy"), `400 POLICY_DENIED` (an enriched denial), `400 DAILY_LIMIT_EXCEEDED`,
/// `PER_TX_LIMIT_EXCEEDED` or `INSUFFICIENT_BALANCE`. Its reasons and violations are the body's
/// when it carries them; otherwise its message is the reason, and a code that names a limit
/// names the violation. `None` for any other error.
pub(crate) fn denial_error(body: &Value, listed: Option<&DecisionBody>) -> Option<Denial> {
    let error = <ErrorBody as serde::Deserialize>::deserialize(body).ok()?;
    let kind = match error.code.as_deref()? {
        "PAYMENT_DENIED" | "POLICY_DENIED" => None,
        "DAILY_LIMIT_EXCEEDED" => Some(ViolationType::DailyLimit),
        "PER_TX_LIMIT_EXCEEDED" => Some(ViolationType::PerTxLimit),
        "INSUFFICIENT_BALANCE" => Some(ViolationType::InsufficientBalance),
        _ => return None,
    };
    let message = error.text().map(str::to_owned);
    // The enriched denial may carry a decision's own `reasons` and `violations` (`listed`, the
    // body already read as a decision); a malformed list is left out (the code already says it
    // is a denial), never turned into an approval.
    let (mut reasons, mut violations) = listed.map(|d| (d.reasons.clone(), d.violations.clone())).unwrap_or_default();
    if reasons.is_empty() {
        reasons.extend(message.clone());
    }
    if violations.is_empty()
        && let Some(kind) = kind
    {
        violations.push(Violation { kind, limit: None, current: None, message });
    }
    Some(Denial { reasons, violations })
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// An id the authority named that goes into a later call's path (`payments/{id}/confirm`,
/// `cards/{id}/confirm`, `payments/{requestId}`): letters, digits, `_` and `-`, at most 128, as
/// Conto's own helper checks an `approvalId`. Anything else (a `/` or `..` that would send the
/// confirm elsewhere, a NUL no store keeps) is an invalid answer, not an approval.
fn path_id<'a>(value: &'a Option<String>, field: &str) -> Result<Option<&'a str>, AuthorityError> {
    match given(value) {
        Some(id) if id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => {
            Err(invalid(format!("`{field}` is not an id (letters, digits, `_` and `-`, at most 128)")))
        }
        id => Ok(id),
    }
}

fn timestamp(value: &Option<String>, key: &str) -> Result<Option<Timestamp>, AuthorityError> {
    match given(value) {
        None => Ok(None),
        Some(s) => {
            s.parse::<Timestamp>().map(Some).map_err(|_| invalid(format!("`{key}` is not an RFC 3339 time: {s}")))
        }
    }
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
fn check_echo(body: &DecisionBody, intent: &PaymentIntent) -> Result<(), AuthorityError> {
    // What is approved is what the payment puts at stake: an MPP session's deposit when larger.
    if let Some(echoed) = body.amount
        && echoed != intent.exposure()
    {
        return Err(invalid(format!("approved amount {echoed} does not match the requested {}", intent.exposure())));
    }
    for echoed in [given(&body.recipient_address), given(&body.recipient)].into_iter().flatten() {
        if let Some(asked) = &intent.recipient
            && conto_core::Address::parse(echoed).map(|a| a != *asked).unwrap_or(true)
        {
            return Err(invalid(format!("approved recipient {echoed} does not match the requested {asked}")));
        }
    }
    Ok(())
}

/// A payment request's status, in every spelling Conto's hybrid example normalises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestStatus {
    /// `APPROVED`, `READY_TO_SEND`.
    Approved,
    /// `DENIED`, `REJECTED`, `DECLINED`.
    Denied,
    /// Waiting for a human: `REQUIRES_APPROVAL`, `PENDING_APPROVAL`, `REVIEW_REQUIRED`.
    Held,
    /// `EXECUTED` (by Conto, from a wallet it manages).
    Executed,
}

impl RequestStatus {
    /// The status `text` names (any case); `None` for one Conto's clients do not know.
    pub(crate) fn of(text: &str) -> Option<RequestStatus> {
        Some(match text.to_ascii_uppercase().as_str() {
            "APPROVED" | "READY_TO_SEND" => RequestStatus::Approved,
            // Lapsed before it was paid: it can no longer be, as if denied (ask again).
            "DENIED" | "REJECTED" | "DECLINED" | "EXPIRED" => RequestStatus::Denied,
            "REQUIRES_APPROVAL" | "PENDING_APPROVAL" | "REVIEW_REQUIRED" => RequestStatus::Held,
            "EXECUTED" => RequestStatus::Executed,
            _ => return None,
        })
    }
}

/// A decision that waits for a human. Its id is the `approvalRequestId`, or (Conto sends it only
/// when an approval workflow matches) the `approvalId` or the payment request's `requestId`.
/// With none of them it is still a requires-approval answer, never an unreadable one: an
/// unreadable answer would be an outage, which a stand-in may decide on. A pending approval
/// without an id cannot be followed; [`crate::ContoClient::approval_request`] answers it as
/// declined.
fn pending(body: &DecisionBody, now: Timestamp) -> Result<PendingApproval, AuthorityError> {
    // An id that is not one is passed over, never an error: an unreadable answer would be an
    // outage, which a stand-in may decide on, and this payment is held for a human.
    let id = [
        path_id(&body.approval_request_id, "approvalRequestId"),
        path_id(&body.approval_id, "approvalId"),
        path_id(&body.request_id, "requestId"),
    ]
    .into_iter()
    .find_map(|id| id.ok().flatten());
    Ok(PendingApproval {
        approval_request_id: id.unwrap_or_default().to_owned(),
        expires_at: timestamp(&body.expires_at, "expiresAt")?
            .unwrap_or(now.saturating_add(IMPLICIT_PENDING_TTL).unwrap_or(now)),
        reasons: body.reasons.clone(),
    })
}

/// An approval of exactly the requested amount, with a checked expiry.
fn approval(
    body: &DecisionBody,
    intent: &Arc<PaymentIntent>,
    id: String,
    token: Option<&str>,
    expires: Timestamp,
    now: Timestamp,
) -> Result<Decision, AuthorityError> {
    Ok(Decision::from_policy(Verdict::Approved(Authorization {
        id,
        token: token.map(|t| SecretString::from(t.to_owned())),
        amount: intent.exposure(),
        expires_at: check_expiry(expires, now)?,
        limits: body.limits.clone().unwrap_or_default(),
        intent: intent.clone(),
        wallet: body.wallet.as_ref().filter(|w| !w.id.is_empty()).map(|w| Box::new(w.named())),
    })))
}

/// Parses a decision body for `intent`'s rail. `status` is the HTTP status it came with.
pub(crate) fn parse_decision(
    status: u16,
    body: &DecisionBody,
    intent: &Arc<PaymentIntent>,
    now: Timestamp,
) -> Result<Decision, AuthorityError> {
    let decided = |v: Verdict| Ok(Decision::from_policy(v));
    let denial = || -> Result<Decision, AuthorityError> {
        Ok(Decision::from_policy(Verdict::Denied(Denial {
            reasons: body.reasons.clone(),
            violations: body.violations.clone(),
        })))
    };
    // An approval without `expiresAt` lives as long as Conto keeps one on its rail.
    let implicit = || now.saturating_add(conto_core::engine::conto_approval_ttl(&intent.rail)).unwrap_or(now);
    let wants_human = body.wants_human();
    match &intent.rail {
        Rail::Transfer { .. } => match body.approved {
            Some(true) => {
                check_echo(body, intent)?;
                let id = path_id(&body.approval_id, "approvalId")?
                    .ok_or_else(|| invalid("approved without `approvalId`"))?;
                let token = given(&body.approval_token).ok_or_else(|| invalid("approved without `approvalToken`"))?;
                if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid("`approvalToken` is not 64 hex characters"));
                }
                let expires =
                    timestamp(&body.expires_at, "expiresAt")?.ok_or_else(|| invalid("approved without `expiresAt`"))?;
                approval(body, intent, id.to_owned(), Some(token), expires, now)
            }
            Some(false) if wants_human => decided(Verdict::RequiresApproval(pending(body, now)?)),
            Some(false) => denial(),
            None => Err(invalid(format!("HTTP {status}: no boolean `approved` in the decision"))),
        },
        Rail::X402 { .. } | Rail::Mpp { .. } => match body.authorized {
            Some(true) => {
                check_echo(body, intent)?;
                let id = given(&body.authorization_id)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{}:{}", intent.rail.name(), intent.idempotency_key));
                let expires = timestamp(&body.expires_at, "expiresAt")?.unwrap_or_else(implicit);
                approval(body, intent, id, None, expires, now)
            }
            Some(false) if wants_human => decided(Verdict::RequiresApproval(pending(body, now)?)),
            Some(false) => denial(),
            None => Err(invalid(format!("HTTP {status}: no boolean `authorized` in the decision"))),
        },
        Rail::Request { .. } => match given(&body.status).map(|s| (s, RequestStatus::of(s))) {
            Some((_, Some(RequestStatus::Approved))) => {
                check_echo(body, intent)?;
                let id =
                    path_id(&body.request_id, "requestId")?.ok_or_else(|| invalid("approved without `requestId`"))?;
                let expires = timestamp(&body.expires_at, "expiresAt")?.unwrap_or_else(implicit);
                approval(body, intent, id.to_owned(), None, expires, now)
            }
            Some((_, Some(RequestStatus::Denied))) => denial(),
            Some((_, Some(RequestStatus::Held))) => decided(Verdict::RequiresApproval(pending(body, now)?)),
            Some((_, Some(RequestStatus::Executed))) => {
                Err(invalid("Conto executed a payment request the app meant to settle itself"))
            }
            Some((other, None)) => {
                Err(invalid(format!("unknown payment request status `{}`", other.to_ascii_uppercase())))
            }
            None => Err(invalid(format!("HTTP {status}: no `status` in the payment request decision"))),
        },
        Rail::Card { .. } => match given(&body.status) {
            Some("APPROVED") => {
                check_echo(body, intent)?;
                let id =
                    path_id(&body.request_id, "requestId")?.ok_or_else(|| invalid("approved without `requestId`"))?;
                let expires =
                    timestamp(&body.expires_at, "expiresAt")?.ok_or_else(|| invalid("approved without `expiresAt`"))?;
                approval(body, intent, id.to_owned(), given(&body.approval_token), expires, now)
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
) -> Result<Option<(String, PaymentBody)>, AuthorityError> {
    PaymentBody::record(authorization, settlement, token).map_err(|e| match e {
        RecordError::MissingReference => AuthorityError::InvalidRecord(e.to_string()),
        RecordError::MissingToken => invalid(e.to_string()),
    })
}

/// Parses a record response.
pub(crate) fn parse_recorded(
    body: &Value,
    authorization: &Authorization,
    settlement: &Settlement,
) -> Result<conto_core::Recorded, AuthorityError> {
    let body = <RecordedBody as serde::Deserialize>::deserialize(body)
        .map_err(|e| invalid(format!("malformed record response: {e}")))?;
    if !body.confirms() {
        return Err(invalid("the record response does not confirm the record"));
    }
    Ok(conto_core::Recorded {
        authorization_id: authorization.id.clone(),
        amount: settlement.amount.unwrap_or(authorization.amount),
        transaction_id: given(&body.transaction_id).map(str::to_owned),
        late: body.late.unwrap_or(false),
        queued: false,
        actor_inactive: false,
    })
}
