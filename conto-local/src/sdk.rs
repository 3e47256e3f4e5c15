//! The agent-facing `/api/sdk/*` endpoints: approve / pre-authorize, confirm / record, reads.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use conto_core::jiff::Timestamp;
use conto_core::{Amount, AuthorityError, PaymentIntent, Rail, Settlement, Verdict};
use conto_wire::org::{AgentWallet, Policies};
use conto_wire::sdk::{
    ApprovalAnswer, ApprovalRequest, ApprovalRequests, BodyError, Budget, Counter, DecisionBody, Execution,
    PayingWallet, PaymentBody, RecordedBody, ServiceSpend, Services, SpendSummary, SummaryFilters, SummaryService,
    SummaryTotals, Transaction, Transactions,
};
use conto_wire::{ErrorBody, Kind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

use crate::rate::Class;
use crate::store::{ApprovalRecord, RequestRecord, Store, hash};
use crate::{ApiError, App, iso, lock, now_text, random_hex};

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/sdk/payments/approve", post(approve_transfer))
        .route("/api/sdk/payments/request", post(request_payment))
        .route("/api/sdk/payments/{id}", axum::routing::get(payment_request_status))
        .route("/api/sdk/payments/{id}/execute", post(execute_payment))
        .route("/api/sdk/payments/{id}/confirm", post(confirm_transfer))
        .route("/api/sdk/x402/pre-authorize", post(pre_authorize_x402))
        .route("/api/sdk/x402/record", post(record_x402))
        .route("/api/sdk/mpp/pre-authorize", post(pre_authorize_mpp))
        .route("/api/sdk/mpp/record", post(record_mpp))
        .route("/api/sdk/cards/approve", post(approve_card))
        .route("/api/sdk/cards/{id}/confirm", post(confirm_card))
        .route("/api/sdk/policies", get(policies))
        .route("/api/sdk/approval-requests", get(approval_requests))
        .route("/api/sdk/x402/budget", get(|s, h| budget(s, h, Kind::X402)))
        .route("/api/sdk/x402/services", get(x402_services))
        .route("/api/sdk/mpp/budget", get(|s, h| budget(s, h, Kind::Mpp)))
        .route("/api/sdk/mpp/services", get(mpp_services))
        .route("/api/sdk/service-spend/summary", get(spend_summary))
        .route("/api/sdk/wallets", get(wallets))
        .route("/api/sdk/transactions", get(transactions))
        .route("/api/sdk/budget-request", post(crate::budget::create).get(crate::budget::list))
        .route("/api/sdk/budget-request/{id}", get(crate::budget::get))
        .route("/api/sdk/setup", get(setup))
}

/// The authenticated agent (its rate-limit window is left for the answer's headers).
pub(crate) struct Caller {
    pub(crate) agent: String,
    /// The calling key's type (`standard`, `admin`).
    key_type: String,
    /// The calling key's scopes.
    scopes: Vec<String>,
}

pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

pub(crate) fn caller(app: &App, headers: &HeaderMap, scope: &str, class: Class) -> Result<Caller, ApiError> {
    let key = crate::bearer(headers).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "AUTH_FAILED", "missing `Authorization: Bearer <sdk key>`")
    })?;
    if !key.starts_with("conto_agent_") {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "AUTH_FAILED",
            "SDK endpoints need an agent SDK key (conto_agent_...)",
        ));
    }
    let record = lock(&app.store)
        .key(key)?
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "AUTH_FAILED", "invalid SDK key"))?;
    // An expired key or a missing scope is refused with its agent's window in the answer's
    // headers, and not counted in it: a key that cannot pay never uses up its agent's limit.
    let refused = if record.expired() {
        Some(ApiError::new(StatusCode::UNAUTHORIZED, "EXPIRED_KEY", "the SDK key has expired"))
    } else if !record.scopes.iter().any(|s| s == scope) {
        Some(ApiError::new(StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE", format!("this key lacks the `{scope}` scope")))
    } else {
        None
    };
    crate::rate::take(app, &record.agent_id, class, refused.is_none())?;
    if let Some(refused) = refused {
        return Err(refused);
    }
    Ok(Caller { agent: record.agent_id, key_type: record.key_type, scopes: record.scopes })
}

pub(crate) fn reply(status: StatusCode, body: impl Serialize) -> Response {
    // The rate-limit headers are added by `rate::headers`, to errors as to answers.
    (status, axum::Json(body)).into_response()
}

pub(crate) fn body_error(e: BodyError) -> ApiError {
    bad(e.code, e.message)
}

/// Reads a payment body (authorize, confirm, record).
fn payment_body(body: &Bytes) -> Result<PaymentBody, ApiError> {
    PaymentBody::from_json(body).map_err(body_error)
}

/// Builds the intent an SDK request describes, for `agent`.
fn intent_from(agent: &str, body: &PaymentBody, kind: Kind) -> Result<PaymentIntent, ApiError> {
    body.to_intent(agent, kind).map_err(body_error)
}

/// An answer that may carry an approval token, which is never stored in clear.
trait Answer: Serialize + DeserializeOwned + Clone {
    /// Takes the token out (for the stored replay copy), with when its approval lapses.
    fn take_token(&mut self) -> Option<(String, Timestamp)> {
        None
    }
    /// Puts a kept token back (for a replay in this process).
    fn put_token(&mut self, _token: String) {}
    /// The approval it answered approved (a transfer's `approvalId`, a card's `requestId`).
    fn approved_id(&self) -> Option<&str> {
        None
    }
}

impl Answer for DecisionBody {
    fn take_token(&mut self) -> Option<(String, Timestamp)> {
        let token = self.approval_token.take()?;
        // An approval with a token always says when it lapses; were it not to, as long as a
        // transfer's approval lives by default.
        let lapses = self.expires_at.as_deref().and_then(|t| t.parse().ok()).unwrap_or_else(|| {
            Timestamp::now().saturating_add(conto_core::engine::DEFAULT_APPROVAL_TTL).unwrap_or(Timestamp::MAX)
        });
        Some((token, lapses))
    }
    fn put_token(&mut self, token: String) {
        self.approval_token = Some(token);
    }
    fn approved_id(&self) -> Option<&str> {
        match (self.approved, self.status.as_deref()) {
            (Some(true), _) => self.approval_id.as_deref(),
            (None, Some("APPROVED")) => self.request_id.as_deref(),
            _ => None,
        }
    }
}

impl Answer for RecordedBody {}

/// Runs `f` once per idempotency key: a repeat with the same body gets the first answer (an
/// error included), a repeat with another body gets 409.
///
/// `f` runs holding the store, in one transaction with the idempotent answer: a request's
/// writes and its answer commit together (one commit per request), and a repeat of a key
/// that arrives while the first is running waits for its answer instead of racing it.
fn once<T: Answer>(
    app: &App,
    caller: &Caller,
    endpoint: &str,
    headers: &HeaderMap,
    body: &PaymentBody,
    f: impl FnOnce(&Store) -> Result<(StatusCode, T), ApiError>,
) -> Result<(StatusCode, T), ApiError> {
    let key = body
        .idempotency_key
        .clone()
        .filter(|k| !k.is_empty())
        .or_else(|| headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned));
    let Some(key) = key else { return lock(&app.store).batch(f)? };
    let canonical = PaymentBody { idempotency_key: None, ..body.clone() };
    let request_hash = hash(&serde_json::to_string(&canonical).unwrap_or_default());
    let store = lock(&app.store);
    if let Some((stored_hash, status, response)) = store.idempotent(&caller.agent, endpoint, &key, Timestamp::now())? {
        if stored_hash != request_hash {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "IDEMPOTENCY_CONFLICT",
                format!("idempotency key `{key}` was used with different parameters"),
            ));
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        if status.is_client_error() {
            // The first answer was an error: the same error again.
            let error: ErrorBody = serde_json::from_str(&response).unwrap_or_default();
            return Err(ApiError::replayed(status, error));
        }
        let mut answer: T = serde_json::from_str(&response)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e.to_string()))?;
        // The token was kept in memory only: put it back for this process's replays, or (lost
        // with a restart) hand out another for the same live approval.
        let slot = replay_slot(&caller.agent, endpoint, &key);
        let kept = lock(&app.approval_tokens).get(&slot, Timestamp::now()).cloned();
        let token = match (kept, answer.approved_id()) {
            (Some(token), _) => Some(token),
            (None, Some(id)) => token_again(app, &store, &caller.agent, &slot, id)?,
            (None, None) => None,
        };
        if let Some(token) = token {
            answer.put_token(secrecy::ExposeSecret::expose_secret(&token).to_owned());
        }
        return Ok((status, answer));
    }
    store.batch(|store| {
        let result = f(store);
        let stored = match &result {
            Ok((status, answer)) => {
                // Never store an approval token in clear: the replay copy keeps it in memory only.
                let mut copy = answer.clone();
                if let Some((token, lapses)) = copy.take_token() {
                    lock(&app.approval_tokens).keep(
                        replay_slot(&caller.agent, endpoint, &key),
                        secrecy::SecretString::from(token),
                        lapses,
                        Timestamp::now(),
                    );
                }
                Some((status.as_u16(), serde_json::to_string(&copy).unwrap_or_default()))
            }
            Err(e) if e.status.is_client_error() && e.status != StatusCode::TOO_MANY_REQUESTS => {
                Some((e.status.as_u16(), serde_json::to_string(&e.body()).unwrap_or_default()))
            }
            Err(_) => None,
        };
        if let Some((status, response)) = stored {
            let _ = store.remember(&caller.agent, endpoint, &key, &request_hash, status, &response, &now_text());
        }
        result
    })?
}

/// The in-memory slot of an idempotent answer's approval token.
fn replay_slot(agent: &str, endpoint: &str, key: &str) -> String {
    format!("replay\0{agent}\0{endpoint}\0{key}")
}

/// `written`, or (when the approval's writes failed) the approval taken back and the error:
/// unwritten, the approval could never be confirmed, and a retry would reserve again. Never
/// handed out, it counts as no approval in the engine's stats.
fn withdrawn_unless_written<T>(
    app: &App,
    approval: &conto_core::Authorization,
    written: Result<T, crate::store::StoreError>,
) -> Result<T, ApiError> {
    written.map_err(|e| {
        let _ = app.engine.withdraw(approval);
        e.into()
    })
}

/// `verdict` on `intent` past the further gate of an approved budget request: the payment must
/// fit what is left of it, whether the policies approve it or hold it for a human (at once,
/// and again when a human approves). What the engine set aside for a payment the gate denies
/// (or could not check) is given back, and an approval the gate took back is not counted as
/// one.
fn budget_gated(app: &App, store: &Store, intent: &PaymentIntent, verdict: Verdict) -> Result<Verdict, ApiError> {
    if matches!(verdict, Verdict::Denied(_)) {
        return Ok(verdict);
    }
    // What the approval holds: an MPP session's deposit, not its per-request price.
    let gated = crate::budget::gate(store, intent.actor.as_str(), intent.exposure(), Timestamp::now());
    if !matches!(gated, Ok(None)) {
        let _ = match &verdict {
            Verdict::Approved(a) => app.engine.withdraw(a),
            Verdict::RequiresApproval(p) => app.engine.resolve_approval(&p.approval_request_id, false),
            Verdict::Denied(_) => Ok(()),
        };
    }
    Ok(gated?.map_or(verdict, Verdict::Denied))
}

/// Decides on an intent and shapes the answer like Conto does for the rail. A decision is
/// an answer, not an error: 200 for approved and denied (Conto's own clients read a decision
/// body only below 400, and take 403 to mean a missing scope), 202 for requires-approval.
fn decide(
    app: &App,
    store: &Store,
    intent: &PaymentIntent,
    kind: Kind,
) -> Result<(StatusCode, DecisionBody), ApiError> {
    let mut decision = app.engine.decide(intent);
    decision.verdict = budget_gated(app, store, intent, decision.verdict)?;
    let intent_json = serde_json::to_string(intent).unwrap_or_default();
    let recipient = intent.recipient.as_ref().map(|r| r.as_str().to_owned());
    Ok(match decision.verdict {
        Verdict::Approved(mut a) => {
            a.token = crate::store::issue_token(&a.intent.rail);
            // The reservation stands only with its approval written (and, for x402 and MPP, the
            // wallet it names read): freed if any of it fails here (none of the writes stands),
            // or if the request's writes do not commit.
            let written = store.all_or_nothing(|| {
                let wallet = match kind {
                    Kind::X402 | Kind::Mpp => Some(paying_wallet(store, intent.actor.as_str(), kind)?),
                    _ => None,
                };
                store.add_approval(&a.id, &ApprovalRecord::live(intent.actor.as_str(), intent_json, &a))?;
                if kind == Kind::Request {
                    store.put_payment_request(
                        &a.id,
                        intent.actor.as_str(),
                        "APPROVED",
                        None,
                        (&[], &[]),
                        &now_text(),
                    )?;
                }
                Ok(wallet)
            });
            let wallet = withdrawn_unless_written(app, &a, written)?;
            let (engine, held) = (app.engine.clone(), a.clone());
            store.on_rollback(move || {
                let _ = engine.withdraw(&held);
            });
            let token = a.token.as_ref().map(|t| secrecy::ExposeSecret::expose_secret(t).to_owned());
            let mut body = DecisionBody {
                amount: Some(a.amount),
                expires_at: Some(iso(a.expires_at)),
                limits: Some(a.limits.clone()),
                ..DecisionBody::default()
            };
            match kind {
                Kind::Transfer => {
                    body.approved = Some(true);
                    body.approval_id = Some(a.id.clone());
                    body.approval_token = token;
                    body.confirm_url = Some(format!("/api/sdk/{}", kind.record_path(&a.id).unwrap_or_default()));
                    body.recipient_address = recipient;
                }
                Kind::X402 | Kind::Mpp => {
                    body.authorized = Some(true);
                    body.authorization_id = Some(a.id.clone());
                    body.recipient_address = recipient;
                    body.wallet = wallet;
                }
                Kind::Card => {
                    body.request_id = Some(a.id.clone());
                    body.status = Some("APPROVED".into());
                    body.approval_token = token;
                }
                Kind::Request => {
                    body.request_id = Some(a.id.clone());
                    body.status = Some("APPROVED".into());
                    body.recipient_address = recipient;
                }
            }
            (StatusCode::OK, body)
        }
        Verdict::Denied(d) => {
            let message = d.reasons.first().cloned().unwrap_or_else(|| "Payment denied by policy".to_owned());
            let mut body = DecisionBody {
                reasons: d.reasons.clone(),
                violations: d.violations.clone(),
                message: Some(message),
                ..DecisionBody::default()
            };
            match kind {
                Kind::Transfer => {
                    body.approved = Some(false);
                    body.requires_human_approval = Some(false);
                }
                Kind::X402 | Kind::Mpp => body.authorized = Some(false),
                Kind::Card => {
                    // Conto's card answers carry a `requestId` whatever the decision (§9); a
                    // denied one names nothing that can be confirmed.
                    body.request_id = Some(format!("req_{}", random_hex(12)));
                    body.status = Some("DENIED".into());
                    body.amount = Some(intent.amount);
                }
                Kind::Request => {
                    let id = format!("req_{}", random_hex(12));
                    store.put_payment_request(
                        &id,
                        intent.actor.as_str(),
                        "DENIED",
                        None,
                        (&d.reasons, &body.violations),
                        &now_text(),
                    )?;
                    body.request_id = Some(id);
                    body.status = Some("DENIED".into());
                    body.amount = Some(intent.amount);
                }
            }
            (StatusCode::OK, body)
        }
        Verdict::RequiresApproval(p) => {
            // The same transfer asked again while a human decides on it, or after a human
            // approved it and before its approval is used: that request or that approval,
            // never another request for a human.
            if kind == Kind::Transfer
                && let Some(answer) = asked_before(app, store, intent, &p.reasons)?
            {
                let _ = app.engine.resolve_approval(&p.approval_request_id, false);
                return Ok(answer);
            }
            store.put_request(&RequestRecord {
                id: p.approval_request_id.clone(),
                agent_id: intent.actor.as_str().to_owned(),
                intent: intent_json,
                status: "PENDING".into(),
                approval_id: None,
                approval_token: None,
                expires_at: iso(p.expires_at),
                reasons: None,
            })?;
            let mut body = DecisionBody {
                requires_human_approval: Some(true),
                status: Some("REQUIRES_APPROVAL".into()),
                approval_request_id: Some(p.approval_request_id.clone()),
                expires_at: Some(iso(p.expires_at)),
                reasons: p.reasons.clone(),
                ..DecisionBody::default()
            };
            match kind {
                Kind::Transfer => {
                    body.approved = Some(false);
                    // Conto's skill tells the user the approval's id to share with an admin.
                    body.approval_id = Some(p.approval_request_id.clone());
                }
                // As on a transfer: the id Conto's skill prints for an admin to approve.
                Kind::X402 | Kind::Mpp => {
                    body.authorized = Some(false);
                    body.approval_id = Some(p.approval_request_id.clone());
                }
                // Conto's card answers carry a `requestId` whatever the decision (§9): here the
                // approval request's.
                Kind::Card => {
                    body.request_id = Some(p.approval_request_id.clone());
                    // As every card answer does (§9).
                    body.amount = Some(intent.amount);
                }
                Kind::Request => {
                    let id = format!("req_{}", random_hex(12));
                    store.put_payment_request(
                        &id,
                        intent.actor.as_str(),
                        "REQUIRES_APPROVAL",
                        Some(&p.approval_request_id),
                        (&p.reasons, &[]),
                        &now_text(),
                    )?;
                    body.request_id = Some(id);
                    // As on a transfer: the id Conto's skill reports for an admin to approve.
                    body.approval_id = Some(p.approval_request_id.clone());
                }
            }
            (StatusCode::ACCEPTED, body)
        }
    })
}

/// The answer to a transfer `intent` asked again, unchanged, that the policies hold for a
/// human again, when one of the agent's latest requests for a human still stands for it:
/// waiting (`202`, the same `approvalRequestId`, with the policies' `reasons`), or approved
/// with its approval unused (`200`, the approval with its token: how an agent following
/// Conto's skill, which asks again once an admin approved, gets it). `None` when none does.
/// (Asked again when what the approval holds leaves no room for it twice, it is denied: the
/// token is then read from `GET /api/sdk/approval-requests`.)
///
/// Unchanged means every field alike; an idempotency key the client sent is one of them (two
/// payments it keys apart are two payments), one conto-local drew for a request without one
/// is not.
fn asked_before(
    app: &App,
    store: &Store,
    intent: &PaymentIntent,
    reasons: &[String],
) -> Result<Option<(StatusCode, DecisionBody)>, ApiError> {
    let unkeyed = |mut v: serde_json::Value| {
        if let Some(o) = v.as_object_mut()
            && o.get("idempotencyKey").and_then(serde_json::Value::as_str).is_some_and(drawn)
        {
            o.remove("idempotencyKey");
        }
        v
    };
    let asked = unkeyed(serde_json::to_value(intent).unwrap_or_default());
    let now = Timestamp::now();
    for r in store.latest_requests(intent.actor.as_str(), 100)? {
        let standing = r.expires_at.parse::<Timestamp>().is_ok_and(|t| t > now);
        if !standing || unkeyed(serde_json::from_str(&r.intent).unwrap_or_default()) != asked {
            continue;
        }
        match r.status.as_str() {
            "PENDING" => {
                let body = DecisionBody {
                    approved: Some(false),
                    requires_human_approval: Some(true),
                    status: Some("REQUIRES_APPROVAL".into()),
                    approval_id: Some(r.id.clone()),
                    approval_request_id: Some(r.id.clone()),
                    expires_at: Some(r.expires_at.clone()),
                    reasons: reasons.to_vec(),
                    ..DecisionBody::default()
                };
                return Ok(Some((StatusCode::ACCEPTED, body)));
            }
            "APPROVED" => {
                if let Some(body) = approved_unused(app, store, &r, intent)? {
                    return Ok(Some((StatusCode::OK, body)));
                }
            }
            _ => {}
        }
    }
    Ok(None)
}

/// Whether `key` is one conto-local drew for a payment sent without one (`ck_` and 32 hex
/// digits, `conto_core::IdempotencyKey::random`).
fn drawn(key: &str) -> bool {
    key.len() == 35 && key.starts_with("ck_") && key.bytes().skip(3).all(|b| b.is_ascii_hexdigit())
}

/// The approval a human gave transfer request `r`, as an approve answer with its token, while
/// it is live and unused and its agent is active (a paused agent is handed no token); `None`
/// otherwise (a token lost with a restart is issued again: [`token_again`]).
fn approved_unused(
    app: &App,
    store: &Store,
    r: &RequestRecord,
    intent: &PaymentIntent,
) -> Result<Option<DecisionBody>, ApiError> {
    let Some(approval) = &r.approval_id else { return Ok(None) };
    let (row, taken) = store.approval_taken(approval)?;
    let live = row.as_ref().is_some_and(|a| a.state == "live" && !a.expired());
    if taken || !live || store.agent(&r.agent_id)?.is_some_and(|a| a.status == "PAUSED") {
        return Ok(None);
    }
    let kept = lock(&app.approval_tokens).get(&r.id, Timestamp::now()).cloned();
    let token = match kept {
        Some(token) => token,
        None => match token_again(app, store, &r.agent_id, &r.id, approval)? {
            Some(token) => token,
            None => return Ok(None),
        },
    };
    Ok(Some(DecisionBody {
        approved: Some(true),
        approval_id: Some(approval.clone()),
        approval_token: Some(secrecy::ExposeSecret::expose_secret(&token).to_owned()),
        approval_request_id: Some(r.id.clone()),
        expires_at: Some(r.expires_at.clone()),
        amount: Some(intent.amount),
        recipient_address: intent.recipient.as_ref().map(|a| a.as_str().to_owned()),
        confirm_url: Some(format!("/api/sdk/{}", Kind::Transfer.record_path(approval).unwrap_or_default())),
        ..DecisionBody::default()
    }))
}

/// A transfer approve sent again under its idempotency key, answered as it stands now (as a
/// payment request is): held for a human and since approved, the approval with its token
/// ([`approved_unused`]); rejected, or lapsed unanswered, a denial that says so; approved
/// and lapsed unused, `400 EXPIRED` (never `approved` again, which a client would go on to
/// pay and could not confirm). Otherwise the first answer.
fn transfer_now(
    app: &App,
    store: &Store,
    agent: &str,
    (status, first): (StatusCode, DecisionBody),
) -> Result<(StatusCode, DecisionBody), ApiError> {
    if first.approved == Some(true) {
        let id = first.approval_id.clone().unwrap_or_default();
        match store.approval_taken(&id)? {
            (Some(a), false) if a.expired() => {
                return Err(bad(
                    "EXPIRED",
                    format!(
                        "EXPIRED: approval `{id}` expired at {}; ask again with a new idempotency key",
                        a.expires_at
                    ),
                ));
            }
            // The kill switch: a paused agent is handed no token, not even its own again.
            (Some(_), false) if store.agent(agent)?.is_some_and(|a| a.status == "PAUSED") => {
                return Err(bad(
                    "EXPIRED",
                    format!("EXPIRED: agent `{agent}` is paused; approval `{id}` is not handed out again"),
                ));
            }
            // Used: its payment was made and confirmed. Handing its token out again would
            // invite a second payment that no confirm can count.
            (_, true) => {
                return Err(bad(
                    "INVALID_STATUS",
                    format!(
                        "approval `{id}` was already confirmed (its payment was made); ask again with a new idempotency key for another payment"
                    ),
                ));
            }
            _ => {}
        }
        return Ok((status, first));
    }
    let Some(r) = first.approval_request_id.as_deref().map(|id| store.request(id)).transpose()?.flatten() else {
        return Ok((status, first));
    };
    if r.agent_id != agent || first.status.as_deref() != Some("REQUIRES_APPROVAL") {
        return Ok((status, first));
    }
    let lapsed = r.expires_at.parse::<Timestamp>().is_ok_and(|t| t <= Timestamp::now());
    let denied = |reasons: Vec<String>| DecisionBody {
        approved: Some(false),
        requires_human_approval: Some(false),
        approval_request_id: Some(r.id.clone()),
        message: reasons.first().cloned(),
        reasons,
        ..DecisionBody::default()
    };
    Ok(match r.status.as_str() {
        "APPROVED" => {
            let intent = serde_json::from_str::<PaymentIntent>(&r.intent)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e.to_string()))?;
            match approved_unused(app, store, &r, &intent)? {
                Some(body) => (StatusCode::OK, body),
                None => {
                    return Err(bad(
                        "EXPIRED",
                        format!(
                            "EXPIRED: the approval of request `{}` was used, or lapsed, or its agent is paused; ask again with a new idempotency key",
                            r.id
                        ),
                    ));
                }
            }
        }
        "REJECTED" => {
            let why = r.reasons.as_deref().and_then(|w| serde_json::from_str(w).ok()).unwrap_or_default();
            (StatusCode::OK, denied(why))
        }
        "PENDING" if lapsed => (StatusCode::OK, denied(vec![LAPSED_UNANSWERED.to_owned()])),
        _ => (status, first),
    })
}

/// The wallet an approved x402/MPP payment is made from, as Conto names it: the agent's
/// delegated wallet on the rail's chain (else its first), with what the delegation says of it
/// (`address`, `chainId`, `custodyType`, `availableBalance`). conto-local's own choices, where
/// Conto's docs are silent: x402's chain is Base (`"8453"`); an agent with no delegation pays
/// from its app's own wallet, `external` (Conto would refuse it with `NO_WALLET`); and holding
/// no wallet, conto-local knows no balance the delegation does not state.
fn paying_wallet(store: &Store, agent: &str, kind: Kind) -> Result<PayingWallet, crate::store::StoreError> {
    let chain = if kind == Kind::Mpp { "4217" } else { "8453" };
    let delegations = delegations(store, agent)?;
    let Some(w) = on_chain(&delegations, chain) else {
        return Ok(PayingWallet {
            id: "external".to_owned(),
            chain_id: Some(chain.into()),
            custody_type: Some("EXTERNAL".to_owned()),
            ..PayingWallet::default()
        });
    };
    Ok(PayingWallet {
        id: w.wallet_id.clone().unwrap_or_default(),
        address: text(w, "address").or_else(|| text(w, "walletAddress")),
        chain_id: Some(text(w, "chainId").unwrap_or_else(|| chain.to_owned()).into()),
        custody_type: Some(text(w, "custodyType").unwrap_or_else(|| "EXTERNAL".to_owned())),
        available_balance: w.extra.get("availableBalance").cloned(),
    })
}

/// The wallets delegated to `agent` (those naming a wallet).
fn delegations(store: &Store, agent: &str) -> Result<Vec<AgentWallet>, crate::store::StoreError> {
    Ok(store
        .wallets(Some(agent))?
        .into_iter()
        .filter(|w| w.wallet_id.as_deref().is_some_and(|id| !id.is_empty()))
        .collect())
}

/// The delegation a payment on `chain` is made from: the one on that chain, else the first.
fn on_chain<'a>(delegations: &'a [AgentWallet], chain: &str) -> Option<&'a AgentWallet> {
    delegations.iter().find(|w| text(w, "chainId").as_deref() == Some(chain)).or(delegations.first())
}

/// A delegation's stated field as text: a string as it is, a number as its digits (Conto
/// writes chains as strings).
fn text(w: &AgentWallet, name: &str) -> Option<String> {
    w.extra.get(name).filter(|v| !v.is_null()).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
}

/// A payment request's `walletId` must be a wallet delegated to its agent (`400 NO_WALLET`
/// otherwise): never another agent's, nor one outside the agent's delegations. An agent with no
/// delegation may name a wallet no agent holds: it pays from its app's own (the zero-setup
/// path, as for x402 and MPP).
fn check_wallet(store: &Store, agent: &str, wallet: &str) -> Result<(), ApiError> {
    let holders = store.wallet_holders(wallet)?;
    if holders.iter().any(|h| h == agent) || (holders.is_empty() && store.wallets(Some(agent))?.is_empty()) {
        return Ok(());
    }
    Err(bad("NO_WALLET", format!("`walletId`: wallet `{wallet}` is not delegated to this agent")))
}

async fn authorize(app: Arc<App>, headers: HeaderMap, body: Bytes, kind: Kind) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, kind.authorize_scope(), Class::Payments)?;
    let body = payment_body(&body)?;
    let mut fresh = false;
    let (status, out) = once(&app, &caller, kind.authorize_path(), &headers, &body, |store| {
        fresh = true;
        let intent = intent_from(&caller.agent, &body, kind)?;
        if let Rail::Request { wallet_id: Some(wallet) } = &intent.rail {
            check_wallet(store, &caller.agent, wallet)?;
        }
        let (status, mut out) = decide(&app, store, &intent, kind)?;
        if kind == Kind::Request && body.auto_execute == Some(true) && out.status.as_deref() == Some("APPROVED") {
            let id = out.request_id.clone().unwrap_or_default();
            match execute_managed(&app, store, &caller.agent, &id)? {
                Some(execution) => out.execution = Some(execution),
                // Conto's answer when it could not execute: the approval stands, the caller
                // settles.
                None => out.auto_execute_error = Some(NO_MANAGED_WALLET.to_owned()),
            }
        }
        Ok((status, out))
    })?;
    // A payment request asked again under its idempotency key is the request as it stands
    // now (conto-api.md §4.4: the original request): decided by a human, paid, or lapsed,
    // not the "requires approval" or "approved" it was first answered with.
    let (status, out) = if kind == Kind::Transfer && !fresh {
        transfer_now(&app, &lock(&app.store), &caller.agent, (status, out))?
    } else {
        (status, out)
    };
    let (status, out) = match (&out.request_id, out.status.as_deref()) {
        (Some(id), Some("REQUIRES_APPROVAL" | "APPROVED")) if kind == Kind::Request && !fresh => {
            let store = lock(&app.store);
            match request_if_any(&store, id, &caller.agent)? {
                Some(now) if now.status != out.status => {
                    let reasons = if now.reasons.is_empty() { out.reasons.clone() } else { now.reasons.clone() };
                    // When it lapses now is its approval's expiry, not the wait's.
                    let approval = now.approval_id.clone().unwrap_or_else(|| id.clone());
                    let expires_at = store.approval(&approval)?.map(|a| a.expires_at).or(out.expires_at.clone());
                    let body = DecisionBody {
                        status: now.status,
                        approval_id: now.approval_id,
                        reasons,
                        expires_at,
                        requires_human_approval: None,
                        ..out
                    };
                    (StatusCode::OK, body)
                }
                _ => (status, out),
            }
        }
        _ => (status, out),
    };
    if kind == Kind::Request {
        // A payment request's answer always carries `approvalRequestId`, `null` unless a human
        // must approve (conto-api.md §14.2); other decisions carry it only when one must.
        let mut value = serde_json::to_value(&out)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e.to_string()))?;
        if let Some(fields) = value.as_object_mut() {
            fields.entry("approvalRequestId").or_insert(serde_json::Value::Null);
        }
        return Ok(reply(status, value));
    }
    Ok(reply(status, out))
}

async fn approve_transfer(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authorize(app, headers, body, Kind::Transfer).await
}

async fn pre_authorize_x402(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(app, headers, body, Kind::X402).await
}

async fn pre_authorize_mpp(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authorize(app, headers, body, Kind::Mpp).await
}

async fn request_payment(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authorize(app, headers, body, Kind::Request).await
}

/// Why a request for a human's approval that no human answered in time stands denied.
const LAPSED_UNANSWERED: &str = "lapsed before a human answered it";

/// `GET /api/sdk/payments/{requestId}`: a payment request's current status; a request that
/// waited for a human follows the human's answer.
async fn payment_request_status(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, Kind::Request.authorize_scope(), Class::Reads)?;
    Ok(reply(StatusCode::OK, request_now(&lock(&app.store), id, &caller.agent)?))
}

/// A payment request of `agent` as it stands now: its status follows a human's answer
/// (`APPROVED` with the approval's id, `DENIED` when rejected or left to lapse), then its
/// approval's: `EXECUTED` once confirmed, `EXPIRED` once it lapsed unconfirmed (an approval
/// that can no longer be paid is never shown `APPROVED`).
fn request_now(store: &Store, id: String, agent: &str) -> Result<DecisionBody, ApiError> {
    request_if_any(store, &id, agent)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no payment request `{id}`")))
}

/// [`request_now`], or `None` when `agent` has no payment request `id`.
fn request_if_any(store: &Store, id: &str, agent: &str) -> Result<Option<DecisionBody>, ApiError> {
    let Some((mut status, approval_request_id, reasons, violations)) = store.payment_request(id, agent)? else {
        return Ok(None);
    };
    let mut body = DecisionBody { reasons, violations, ..DecisionBody::default() };
    if let Some(apr) = &approval_request_id {
        let request = store.request(apr)?.filter(|r| r.agent_id == agent);
        if let Some(r) = request {
            let expired = r.expires_at.parse::<Timestamp>().is_ok_and(|t| t <= Timestamp::now());
            status = match r.status.as_str() {
                "APPROVED" => {
                    body.approval_id = r.approval_id.clone();
                    "APPROVED".into()
                }
                "REJECTED" => {
                    if let Some(why) = r.reasons.as_deref().and_then(|r| serde_json::from_str(r).ok()) {
                        body.reasons = why;
                    }
                    "DENIED".into()
                }
                "PENDING" if expired => {
                    body.reasons.push(LAPSED_UNANSWERED.to_owned());
                    "DENIED".into()
                }
                _ => status,
            };
        }
    }
    if status == "APPROVED" {
        // Approved when asked, the request's id is its approval's; approved by a human, the
        // approval is named.
        let approval_id = body.approval_id.clone().unwrap_or_else(|| id.to_owned());
        status = match store.approval_taken(&approval_id)? {
            (_, true) => "EXECUTED".into(),
            (Some(a), false) if !a.expired() => status,
            // Lapsed, or forgotten long after it lapsed.
            _ => "EXPIRED".into(),
        };
    }
    body.request_id = Some(id.to_owned());
    body.approval_request_id = approval_request_id;
    body.status = Some(status);
    Ok(Some(body))
}

/// `POST /api/sdk/payments/{requestId}/execute`: Conto executes an approved request from a
/// Conto-managed wallet. Its refusals use Conto's codes: an unknown request is `404
/// NOT_FOUND`; one not approved (denied, waiting for a human) or already paid is `400
/// INVALID_STATUS`; one whose approval lapsed is `400 EXPIRED`. A live approved request paid
/// from a wallet delegated with a managed custody (`PRIVY`, `SPONGE`: the skill's Mode A) is
/// executed, simulated ([`execute_managed`]); one paid from the app's own wallet is answered
/// as Conto answers for an external wallet, `400 EXTERNAL_WALLET`: the app pays it and
/// confirms it (`/payments/{id}/confirm`).
async fn execute_payment(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "payments:execute", Class::Payments)?;
    lock(&app.store).batch(|store| {
        let request = request_now(store, id, &caller.agent)?;
        let (status, id) = (request.status.unwrap_or_default(), request.request_id.unwrap_or_default());
        match status.as_str() {
            "APPROVED" => match execute_managed(&app, store, &caller.agent, &id)? {
                Some(execution) => Ok(reply(StatusCode::OK, Executed { request_id: id, execution })),
                // Conto's answer to `/execute` on a wallet it does not hold (conto-api.md §2, §8).
                None => Err(ApiError::new(StatusCode::BAD_REQUEST, "EXTERNAL_WALLET", NO_MANAGED_WALLET)),
            },
            "EXECUTED" => Err(bad("INVALID_STATUS", format!("payment request `{id}` was already paid"))),
            "EXPIRED" => Err(bad("EXPIRED", format!("EXPIRED: payment request `{id}`'s approval lapsed; ask again"))),
            _ => {
                Err(bad("INVALID_STATUS", format!("payment request `{id}` is {status}; only an APPROVED one executes")))
            }
        }
    })?
}

/// `/execute`'s answer: the request and the transfer made.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Executed {
    request_id: String,
    #[serde(flatten)]
    execution: Execution,
}

/// The custodies whose wallets Conto executes from itself (the skill's Mode A).
fn managed_custody(custody: &str) -> bool {
    custody.eq_ignore_ascii_case("PRIVY") || custody.eq_ignore_ascii_case("SPONGE")
}

/// Executes approved payment request `id` of `agent` when the wallet it is paid from is
/// Conto-managed: the wallet it names, else the agent's delegation on the request's chain,
/// else its first. `None` (nothing done) when that wallet is the app's own (custody
/// `EXTERNAL`, or no delegation).
///
/// Simulated: conto-local holds no custody provider's keys and moves no money. The execution
/// is what a confirm of a fresh transaction hash would be (the spend counted and stored, the
/// request `EXECUTED`), marked `simulated: true` and logged as such.
fn execute_managed(app: &App, store: &Store, agent: &str, id: &str) -> Result<Option<Execution>, ApiError> {
    let approval_id = request_approval(store, agent, id)?;
    let approval = live_approval(store, agent, Kind::Transfer, &approval_id, None, None)?;
    let Rail::Request { wallet_id } = &approval.authorization.intent.rail else { return Ok(None) };
    let delegations = delegations(store, agent)?;
    let wallet = match wallet_id {
        Some(named) => delegations.iter().find(|w| w.wallet_id.as_deref() == Some(named.as_str())),
        None => on_chain(&delegations, &REQUEST_CHAIN.to_string()),
    };
    let Some(wallet) = wallet.filter(|w| text(w, "custodyType").is_some_and(|c| managed_custody(&c))) else {
        return Ok(None);
    };
    let tx = format!("0x{}", random_hex(32));
    let rail = approval.authorization.intent.rail.clone();
    let (amount, transaction_id) = approval.settle(app, store, agent, Some(tx.clone()))?;
    tracing::warn!(
        agent,
        request = id,
        wallet = wallet.wallet_id.as_deref().unwrap_or_default(),
        %amount,
        "conto_local.execution_simulated: counted as paid, but no money moved (conto-local holds no custody keys)"
    );
    Ok(Some(Execution {
        transaction_id,
        explorer_url: explorer_url(&rail, &tx),
        tx_hash: tx,
        status: "CONFIRMING".to_owned(),
        simulated: Some(true),
    }))
}

/// Why conto-local executes no payment from the app's own wallet (`execute`, `autoExecute`).
const NO_MANAGED_WALLET: &str = "the payment is made from your own wallet (no Conto-managed wallet, custody PRIVY \
     or SPONGE, is delegated for it), which conto-local cannot execute from: pay from it and confirm it \
     (`/payments/{requestId}/confirm` with its `txHash`; or the external-wallet flow, `/payments/approve` then \
     `/confirm`)";

async fn approve_card(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authorize(app, headers, body, Kind::Card).await
}

/// A live approval that a confirm or a record may settle: found for its agent and its
/// endpoint, its token, expiry and amount checked.
struct LiveApproval {
    id: String,
    authorization: conto_core::Authorization,
    /// The approval's stored intent (JSON), kept with the spend.
    intent_json: String,
    settled: Amount,
}

/// Checks that `agent` may settle approval `id`, through the endpoint of `kind`, for `amount`
/// (the approved amount when `None`), with `token`; changes nothing.
///
/// An endpoint settles only its own flow's approvals (a transfer's confirm also the payment
/// requests', which carry no token): another flow's approval id is unknown to it, as another
/// agent's is. A transfer approval's token is required (conto-api.md §3.2; a payment
/// request's approval was issued none, and is confirmed without); a card's is checked when
/// sent (Conto's card confirm body carries none, §9); x402 and MPP approvals have none.
fn live_approval(
    store: &Store,
    agent: &str,
    kind: Kind,
    id: &str,
    amount: Option<Amount>,
    token: Option<&str>,
) -> Result<LiveApproval, ApiError> {
    let unknown =
        || ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no approval `{id}` for this agent here"));
    let row = store.approval(id)?.filter(|r| r.agent_id == agent).ok_or_else(unknown)?;
    let authorization =
        row.authorization(id).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e))?;
    let flow = Kind::of(&authorization.intent.rail);
    if !(flow == kind || (kind == Kind::Transfer && flow == Kind::Request)) {
        return Err(unknown());
    }
    if row.state == "recorded" {
        return Err(bad("INVALID_STATUS", format!("approval `{id}` was already confirmed")));
    }
    // Lapsed is said first: its token (no longer listed once it lapsed) cannot make it live.
    // An x402/MPP record is never refused for it: the money moved, and is counted late (a
    // session longer than `MPP_MAX_SESSION_DURATION` lets it lapse before its record).
    let lapsed_ok = matches!(kind, Kind::X402 | Kind::Mpp);
    if !lapsed_ok && authorization.expires_at <= Timestamp::now() {
        return Err(bad(
            "EXPIRED",
            format!("EXPIRED: approval `{id}` expired at {}; ask again", iso(authorization.expires_at)),
        ));
    }
    if let Some(expected) = &row.token_hash
        && (kind == Kind::Transfer || token.is_some())
    {
        token_matches(expected, token)?;
    }
    let approved = authorization.amount;
    let settled = amount.unwrap_or(approved);
    // An MPP session may settle more than its first deposit (a top-up): its record closes the
    // session and counts all it settled. Any other payment settles at most what was approved.
    if settled > approved && kind != Kind::Mpp {
        return Err(bad("VALIDATION_ERROR", format!("settled amount {settled} is more than the approved {approved}")));
    }
    Ok(LiveApproval { id: id.to_owned(), authorization, intent_json: row.intent, settled })
}

/// A record naming its authorization is for what was pre-authorized: the `resourceUrl` and
/// `recipientAddress` it sends, when it sends them, must be the authorization's endpoint (as
/// limits count one) and recipient. Otherwise its spend would be counted under another
/// service, endpoint and counterparty than the ones it paid (a session may top up past its
/// deposit, so a cheap pre-authorization could carry any amount elsewhere).
fn same_payment(approval: &LiveApproval, payment: &PaymentBody) -> Result<(), ApiError> {
    let approved = &approval.authorization.intent;
    let id = &approval.id;
    if let Some(url) = payment.resource_url.as_deref().filter(|u| !u.trim().is_empty()) {
        let (canonical, _) =
            conto_core::canonical_resource(url).map_err(|e| bad("VALIDATION_ERROR", format!("`resourceUrl`: {e}")))?;
        if endpoint(&approved.rail) != Some(conto_core::endpoint_key(&canonical)) {
            let message = format!("`resourceUrl` {url} is not the endpoint authorization `{id}` was for");
            return Err(bad("VALIDATION_ERROR", message));
        }
    }
    if let Some(recipient) = payment.recipient_address.as_deref().filter(|r| !r.trim().is_empty()) {
        let named = conto_core::Address::parse(recipient.trim())
            .map_err(|e| bad("INVALID_ADDRESS", format!("`recipientAddress`: {e}")))?;
        if approved.recipient.as_ref() != Some(&named) {
            let message = format!("`recipientAddress` {recipient} is not the recipient authorization `{id}` was for");
            return Err(bad("VALIDATION_ERROR", message));
        }
    }
    Ok(())
}

impl LiveApproval {
    /// Records the spend against the approval: the engine's ledger, then the store.
    fn settle(
        self,
        app: &App,
        store: &Store,
        agent: &str,
        reference: Option<String>,
    ) -> Result<(Amount, String), ApiError> {
        let LiveApproval { id, authorization, intent_json, settled } = self;
        let settlement = Settlement { amount: Some(settled), reference: reference.clone() };
        let count_now = if settled > authorization.amount {
            // An MPP session that topped up past its deposit: the deposit's hold is freed and
            // all it settled counted, as one payment.
            let _ = app.engine.free(&authorization);
            true
        } else {
            match app.engine.settle(&authorization, &settlement) {
                // Counted by the engine, late if the approval was closed unspent (an MPP
                // session) before its money moved after all.
                Ok(_) => false,
                // Forgotten (past the engine's retention window): counted now.
                Err(AuthorityError::Ledger(conto_core::LedgerError::UnknownAuthorization(_))) => true,
                Err(e) => return Err(bad("INVALID_STATUS", e.to_string())),
            }
        };
        if count_now {
            app.engine.restore_spend(&authorization.intent, settled, Timestamp::now());
        }
        let transaction_id = store_spend(store, &id, agent, &intent_json, settled, reference.as_deref())?;
        Ok((settled, transaction_id))
    }
}

/// Stores a counted spend under `id` with a fresh transaction id, which it returns.
fn store_spend(
    store: &Store,
    id: &str,
    agent: &str,
    intent_json: &str,
    amount: Amount,
    reference: Option<&str>,
) -> Result<String, ApiError> {
    let transaction_id = format!("tx_{}", random_hex(10));
    store.record_spend(id, agent, intent_json, &amount.to_string(), reference, &transaction_id, &now_text())?;
    Ok(transaction_id)
}

/// Whether `tx` can be the transaction a payment to `intent`'s recipient was made in: on
/// Solana (a Solana recipient) a signature, base58 of 64 bytes; elsewhere an EVM transaction
/// hash, 0x + 64 hex characters. A hash of the other network's shape is refused: it cannot
/// be this payment's.
fn tx_fits(intent: &PaymentIntent, tx: &str) -> Result<(), ApiError> {
    let solana = intent.recipient.as_ref().is_some_and(|r| !r.is_evm());
    match (solana, solana_signature(tx), evm_tx_hash(tx)) {
        (true, true, _) | (false, _, true) => Ok(()),
        (true, false, _) => {
            Err(bad("VALIDATION_ERROR", "`txHash` must be a Solana transaction signature (base58 of 64 bytes)"))
        }
        (false, _, false) => Err(bad("VALIDATION_ERROR", "`txHash` must be 0x + 64 hex characters")),
    }
}

/// An EVM transaction hash: 0x + 64 hex characters.
fn evm_tx_hash(tx: &str) -> bool {
    tx.len() == 66 && tx.starts_with("0x") && tx[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A Solana transaction signature: base58 of 64 bytes (at most 88 characters).
fn solana_signature(tx: &str) -> bool {
    tx.len() <= 88 && bs58::decode(tx).into_vec().is_ok_and(|bytes| bytes.len() == 64)
}

/// Whether `tx` has the shape of a transaction hash on any network conto-local knows.
fn is_tx_hash(tx: &str) -> bool {
    evm_tx_hash(tx) || solana_signature(tx)
}

/// The chain a payment request is paid on: Conto's default, Tempo testnet (conto-api.md §4.1:
/// `chainId` defaults to 42431 when not supplied; the request body names none).
const REQUEST_CHAIN: u64 = 42431;

/// The chain a confirmed payment was made on: a transfer's own, a payment request's
/// [`REQUEST_CHAIN`].
fn chain_of(rail: &Rail) -> Option<u64> {
    match rail {
        Rail::Transfer { chain_id, .. } => Some(*chain_id),
        Rail::Request { .. } => Some(REQUEST_CHAIN),
        _ => None,
    }
}

/// The block explorer's page for `tx` on the payment's chain (left out for chains conto-local
/// does not know).
fn explorer_url(rail: &Rail, tx: &str) -> Option<String> {
    let base = match chain_of(rail)? {
        // Tempo testnet, the chain Conto's skill defaults to (its example explorer URL).
        42431 => "https://explore.moderato.tempo.xyz/tx/",
        1 => "https://etherscan.io/tx/",
        8453 => "https://basescan.org/tx/",
        84532 => "https://sepolia.basescan.org/tx/",
        10 => "https://optimistic.etherscan.io/tx/",
        137 => "https://polygonscan.com/tx/",
        42161 => "https://arbiscan.io/tx/",
        _ => return None,
    };
    Some(format!("{base}{tx}"))
}

/// The stablecoin a transfer settles in: pathUSD on Tempo, testnet (42431, Conto's default
/// chain, where its skill sends `token: "pathUSD"`) and mainnet (4217, conto-api.md §6.5);
/// USDC elsewhere (§4.1: `USDC`, `pathUSD`).
fn currency(rail: &Rail) -> &'static str {
    match chain_of(rail) {
        Some(42431 | 4217) => "pathUSD",
        _ => "USDC",
    }
}

async fn confirm_transfer(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, Kind::Transfer.record_scope(), Class::Payments)?;
    let body = payment_body(&body)?;
    let endpoint = Kind::Transfer.record_path(&id).unwrap_or_default();
    let (status, out) = once(&app, &caller, &endpoint, &headers, &body, |store| {
        let tx = body
            .tx_hash
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("VALIDATION_ERROR", "`txHash` is required"))?;
        if !is_tx_hash(&tx) {
            return Err(bad("VALIDATION_ERROR", "`txHash` must be 0x + 64 hex characters or a Solana signature"));
        }
        // Required for an approval that was issued one (a transfer's); a payment request's
        // approval was issued none, and is confirmed by its id (checked in `live_approval`).
        let token = body.approval_token.as_deref().filter(|t| !t.is_empty());
        let approval_id = request_approval(store, &caller.agent, &id)?;
        if let Some((row, first, amount, transaction_id)) =
            settled_before(store, &caller.agent, &approval_id, &tx, &[Kind::Transfer, Kind::Request])?
        {
            // The token is checked as on the first confirm, then the amount.
            if let Some(expected) = &row.token_hash {
                token_matches(expected, token)?;
            }
            same_amount(&approval_id, &tx, amount, body.amount)?;
            return Ok((StatusCode::OK, confirmed(&first.intent, amount, transaction_id, tx)));
        }
        let approval = live_approval(store, &caller.agent, Kind::Transfer, &approval_id, body.amount, token)?;
        let intent = approval.authorization.intent.clone();
        tx_fits(&intent, &tx)?;
        let (amount, transaction_id) = approval.settle(&app, store, &caller.agent, Some(tx.clone()))?;
        Ok((StatusCode::OK, confirmed(&intent, amount, transaction_id, tx)))
    })?;
    Ok(reply(status, out))
}

/// A transfer's confirm answer. A payment to a Solana address was made on Solana, whatever
/// `chainId` its approve sent (Conto detects Solana from the address), in USDC.
fn confirmed(intent: &PaymentIntent, amount: Amount, transaction_id: String, tx: String) -> RecordedBody {
    let solana = intent.recipient.as_ref().is_some_and(|r| !r.is_evm());
    let (currency, explorer_url) = if solana {
        ("USDC", Some(format!("https://explorer.solana.com/tx/{tx}")))
    } else {
        (currency(&intent.rail), explorer_url(&intent.rail, &tx))
    };
    RecordedBody {
        confirmed: Some(true),
        transaction_id: Some(transaction_id),
        status: Some("CONFIRMING".into()),
        amount: Some(amount),
        currency: Some(currency.into()),
        recipient: intent.recipient.as_ref().map(|r| r.as_str().to_owned()),
        explorer_url,
        tx_hash: Some(tx),
        ..RecordedBody::default()
    }
}

/// `token` is the one issued with an approval whose token hash is `expected`:
/// `400 VALIDATION_ERROR` when none is sent, `400 INVALID_TOKEN` when another is.
fn token_matches(expected: &str, token: Option<&str>) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(bad("VALIDATION_ERROR", "`approvalToken` is required: the one issued with this approval"));
    };
    // Any of the approval's tokens (`Store::add_token_hash`); each compared in constant time.
    let given = hash(token);
    let matched =
        expected.split(',').fold(subtle::Choice::from(0), |any, h| any | given.as_bytes().ct_eq(h.as_bytes()));
    if !bool::from(matched) {
        return Err(bad("INVALID_TOKEN", "the approval token does not match this approval"));
    }
    Ok(())
}

/// The token of live approval `id` of `agent` to hand out again, once the one issued (kept in
/// memory only, never stored in clear) was lost with a restart: a new one, its hash added to
/// the approval's (so the first, if it reached its caller, still confirms too), kept in memory
/// under `slot` for later asks. `None` when the approval takes no token, or is used, lapsed,
/// withdrawn, another agent's, or its agent is paused: the callers answer those.
pub(crate) fn token_again(
    app: &App,
    store: &Store,
    agent: &str,
    slot: &str,
    id: &str,
) -> Result<Option<secrecy::SecretString>, ApiError> {
    let (row, taken) = store.approval_taken(id)?;
    let Some(row) = row.filter(|r| r.agent_id == agent && r.state == "live" && !r.expired()) else { return Ok(None) };
    if taken || row.token_hash.is_none() || store.agent(agent)?.is_some_and(|a| a.status == "PAUSED") {
        return Ok(None);
    }
    let token = secrecy::SecretString::from(random_hex(32));
    if !store.add_token_hash(id, &hash(secrecy::ExposeSecret::expose_secret(&token)))? {
        return Ok(None);
    }
    let now = Timestamp::now();
    let lapses = row.expires_at.parse().unwrap_or(now);
    lock(&app.approval_tokens).keep(slot.to_owned(), token.clone(), lapses, now);
    tracing::info!(approval = id, "conto_local.token_issued_again: the first was lost with a restart");
    Ok(Some(token))
}

/// Approval `id` of `agent`, of one of `flows`, when it was already confirmed with this
/// settlement `reference`, with what was counted and its transaction id: a confirm sent
/// again (a client retrying after a lost answer) is answered from it, nothing counted twice.
/// Confirmed with another reference, of another flow, or not yet: `None`, and the confirm
/// goes on to be refused or made.
fn settled_before(
    store: &Store,
    agent: &str,
    id: &str,
    reference: &str,
    flows: &[Kind],
) -> Result<Option<(ApprovalRecord, conto_core::Authorization, Amount, String)>, ApiError> {
    let Some(row) = store.approval(id)?.filter(|r| r.agent_id == agent && r.state == "recorded") else {
        return Ok(None);
    };
    let Some(spend) = store.spend(id)?.filter(|s| s.reference.as_deref() == Some(reference)) else { return Ok(None) };
    let internal = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e);
    let authorization = row.authorization(id).map_err(internal)?;
    // Only the flows this confirm settles (as `live_approval` has them), never another's record.
    if !flows.contains(&Kind::of(&authorization.intent.rail)) {
        return Ok(None);
    }
    let counted = spend.amount.parse::<Amount>().map_err(|e| internal(e.to_string()))?;
    Ok(Some((row, authorization, counted, spend.transaction_id)))
}

/// A confirm sent again that names another `amount` than was counted is `409 CONFLICT`: a
/// settlement is confirmed once, for one amount.
fn same_amount(id: &str, reference: &str, counted: Amount, amount: Option<Amount>) -> Result<(), ApiError> {
    match amount.filter(|a| *a != counted) {
        Some(amount) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            format!("approval `{id}` was confirmed for {counted} with `{reference}`, not {amount}"),
        )),
        None => Ok(()),
    }
}

/// A card confirm's answer.
fn card_confirmed(amount: Amount, transaction_id: String) -> RecordedBody {
    RecordedBody {
        confirmed: Some(true),
        transaction_id: Some(transaction_id),
        amount: Some(amount),
        status: Some("COMPLETED".into()),
        ..RecordedBody::default()
    }
}

/// The approval a confirm of `id` settles: a payment request's (confirmed by the request's
/// own id, also once a human approved it, when its approval has an id of its own), the one a
/// human's approval issued for an approval request (the `approvalId` a held approve answered
/// with), or `id` itself. A request not approved (denied, waiting for a human) is
/// `400 INVALID_STATUS`; one whose human never answered in time, `400 EXPIRED`.
fn request_approval(store: &Store, agent: &str, id: &str) -> Result<String, ApiError> {
    let Some(request) = request_if_any(store, id, agent)? else {
        let Some(asked) = store.request(id)?.filter(|r| r.agent_id == agent) else { return Ok(id.to_owned()) };
        let lapsed = asked.expires_at.parse::<Timestamp>().is_ok_and(|t| t <= Timestamp::now());
        return match (asked.status.as_str(), asked.approval_id) {
            ("APPROVED", Some(approval)) => Ok(approval),
            ("PENDING", _) if lapsed => {
                Err(bad("EXPIRED", format!("EXPIRED: approval request `{id}` lapsed unanswered")))
            }
            ("PENDING", _) => Err(bad(
                "INVALID_STATUS",
                format!("approval request `{id}` is waiting for a human; confirm once it is approved"),
            )),
            (status, _) => {
                Err(bad("INVALID_STATUS", format!("approval request `{id}` is {status}; nothing to confirm")))
            }
        };
    };
    match request.status.as_deref().unwrap_or_default() {
        // Already confirmed, or lapsed: the approval's own check says which.
        "APPROVED" | "EXECUTED" | "EXPIRED" => Ok(request.approval_id.unwrap_or_else(|| id.to_owned())),
        status => {
            Err(bad("INVALID_STATUS", format!("payment request `{id}` is {status}; only an APPROVED one is confirmed")))
        }
    }
}

async fn confirm_card(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, Kind::Card.record_scope(), Class::Payments)?;
    let body = payment_body(&body)?;
    let endpoint = Kind::Card.record_path(&id).unwrap_or_default();
    let (status, out) = once(&app, &caller, &endpoint, &headers, &body, |store| {
        if body.status.as_deref().is_some_and(|s| !s.is_empty() && s != "COMPLETED") {
            return Err(bad("VALIDATION_ERROR", "only `status: COMPLETED` settlements are confirmed"));
        }
        let reference = body.transaction_reference.clone().filter(|r| !r.is_empty());
        let token = body.approval_token.as_deref().filter(|t| !t.is_empty());
        let approval_id = request_approval(store, &caller.agent, &id)?;
        if let Some(reference) = &reference
            && let Some((row, _, amount, transaction_id)) =
                settled_before(store, &caller.agent, &approval_id, reference, &[Kind::Card])?
        {
            if let (Some(expected), Some(_)) = (&row.token_hash, token) {
                token_matches(expected, token)?;
            }
            same_amount(&approval_id, reference, amount, body.amount)?;
            return Ok((StatusCode::OK, card_confirmed(amount, transaction_id)));
        }
        let (amount, transaction_id) =
            live_approval(store, &caller.agent, Kind::Card, &approval_id, body.amount, token)?.settle(
                &app,
                store,
                &caller.agent,
                reference,
            )?;
        Ok((StatusCode::OK, card_confirmed(amount, transaction_id)))
    })?;
    Ok(reply(status, out))
}

/// One x402/MPP payment of a record, checked and ready to count: nothing is counted or stored
/// until every payment of the record is.
enum Planned {
    /// Settles a live pre-authorization (named by the payment, or matched to it).
    Settle {
        approval: LiveApproval,
        reference: Option<String>,
        /// The record's own id, when it found its pre-authorization by matching.
        record_id: Option<String>,
        key: Option<Keyed>,
    },
    /// Counts spend no reservation held.
    Unreserved { intent: PaymentIntent, record_id: String, key: Option<Keyed>, reference: Option<String> },
    /// A repeat of a payment recorded before, the same in every field: its first answer again,
    /// nothing counted.
    Replay(RecordedBody),
}

/// A payment's key (its `paymentId`, or else its tx hash) and what it records (a hash of it).
struct Keyed {
    key: String,
    fingerprint: String,
    /// The client's own `paymentId`, when it sent one: its answer names the payment by it.
    payment_id: Option<String>,
}

/// Checks one payment of a record against the store and against the payments before it in the
/// same record (`taken`: the pre-authorizations, record ids and payment keys they use),
/// changing nothing. A payment's key seen before (in the store, or earlier in the record),
/// whether or not it names its pre-authorization, makes it a repeat: the same payment (every
/// field equal) is answered as the first time, another is refused.
fn plan_one(
    store: &Store,
    agent: &str,
    payment: &PaymentBody,
    kind: Kind,
    taken: &mut HashSet<String>,
) -> Result<Planned, ApiError> {
    let reference = payment.reference();
    let twice = |what: &str| bad("VALIDATION_ERROR", format!("{what} appears twice in one record"));
    // The payment's own key: its `paymentId`, or else its tx hash (two payments may share a
    // settlement reference; never a `paymentId`).
    let payment_id = payment.payment_id.clone().filter(|p| !p.is_empty());
    let key = payment_id.clone().or_else(|| reference.clone()).map(|key| Keyed {
        fingerprint: hash(&format!("{kind:?}\0{}", serde_json::to_string(payment).unwrap_or_default())),
        key,
        payment_id,
    });
    if let Some(Keyed { key, fingerprint, .. }) = &key {
        if !taken.insert(format!("key {key}")) {
            return Err(twice(&format!("payment `{key}`")));
        }
        if let Some(before) = store.recorded_payment(agent, key)? {
            let answer = before
                .answer
                .filter(|_| before.fingerprint.as_ref() == Some(fingerprint))
                .and_then(|answer| serde_json::from_str(&answer).ok());
            return match answer {
                Some(answer) => Ok(Planned::Replay(answer)),
                None => Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "CONFLICT",
                    format!("payment `{key}` was already recorded, with other details"),
                )),
            };
        }
    }
    if let Some(id) = payment.authorization_id.clone().filter(|i| !i.is_empty()) {
        // A pre-authorization held for a human is recorded by the id it was answered with.
        let id = request_approval(store, agent, &id)?;
        let approval = live_approval(store, agent, kind, &id, payment.amount, None)?;
        same_payment(&approval, payment)?;
        if !taken.insert(id.clone()) {
            return Err(twice(&format!("authorization `{id}`")));
        }
        return Ok(Planned::Settle { approval, reference, record_id: None, key });
    }
    let intent = intent_from(agent, payment, kind)?;
    // Scoped to the agent: a payment id or tx hash another agent recorded first (a tx hash is
    // public) never blocks this agent's own record.
    // (`/` is in no actor id: one agent's id and key never spell another's.)
    let record_id = format!("rec_{agent}/{}", key.as_ref().map_or_else(|| random_hex(10), |k| k.key.clone()));
    if store.spend_exists(&record_id)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CONFLICT",
            format!("payment `{record_id}` was already recorded"),
        ));
    }
    if !taken.insert(record_id.clone()) {
        return Err(twice(&format!("payment `{record_id}`")));
    }
    // A record without `authorizationId` settles the live pre-authorization it belongs to
    // rather than adding to it (`matching_preauthorization`), one not already settled by an
    // earlier payment of the same record.
    if let Some(preauth) = matching_preauthorization(store, agent, &intent, taken)? {
        let approval = live_approval(store, agent, kind, &preauth, Some(intent.amount), None)?;
        taken.insert(preauth);
        return Ok(Planned::Settle { approval, reference, record_id: Some(record_id), key });
    }
    Ok(Planned::Unreserved { intent, record_id, key, reference })
}

impl Planned {
    /// Counts and stores the checked payment, and remembers its key with its answer.
    fn record(self, app: &App, store: &Store, agent: &str) -> Result<RecordedBody, ApiError> {
        let recorded =
            |id: Option<String>, preauth: Option<String>, transaction_id: String, amount: Amount| RecordedBody {
                payment_id: id,
                authorization_id: preauth,
                transaction_id: Some(transaction_id),
                amount: Some(amount),
                status: Some("RECORDED".into()),
                ..RecordedBody::default()
            };
        let (mut answer, counted_as, key) = match self {
            Planned::Replay(answer) => return Ok(answer),
            Planned::Settle { approval, reference, record_id, key } => {
                let preauth = approval.id.clone();
                let (amount, transaction_id) = approval.settle(app, store, agent, reference)?;
                (recorded(record_id, Some(preauth.clone()), transaction_id, amount), preauth, key)
            }
            Planned::Unreserved { intent, record_id, key, reference } => {
                let amount = intent.amount;
                app.engine.restore_spend(&intent, amount, Timestamp::now());
                let intent_json = serde_json::to_string(&intent).unwrap_or_default();
                // Its tx hash kept, as a settled pre-authorization's is (`/transactions`).
                let transaction_id = store_spend(store, &record_id, agent, &intent_json, amount, reference.as_deref())?;
                (recorded(Some(record_id.clone()), None, transaction_id, amount), record_id, key)
            }
        };
        // Named as the client named it (the record's own id is conto-local's).
        if let Some(payment_id) = key.as_ref().and_then(|k| k.payment_id.clone()) {
            answer.payment_id = Some(payment_id);
        }
        if let Some(Keyed { key, fingerprint, .. }) = &key {
            let kept = serde_json::to_string(&answer).unwrap_or_default();
            store.remember_payment(agent, key, &counted_as, fingerprint, &kept)?;
        }
        Ok(answer)
    }
}

/// The endpoint an x402/MPP payment is for ([`conto_core::endpoint_key`]: one however its URL
/// is spelled, as its per-endpoint limits count it).
fn endpoint(rail: &Rail) -> Option<String> {
    match rail {
        Rail::X402 { resource_url, .. } | Rail::Mpp { resource_url, .. } => {
            Some(conto_core::endpoint_key(resource_url))
        }
        _ => None,
    }
}

/// An MPP payment's session.
fn session(rail: &Rail) -> Option<&str> {
    match rail {
        Rail::Mpp { session_id, .. } => session_id.as_deref(),
        _ => None,
    }
}

/// The live pre-authorization of `agent` that `intent` (a record without an authorization id)
/// settles, other than those `taken`: the same rail, endpoint and recipient. A deposit
/// pre-authorized for a named MPP session is settled by that session's record only; one
/// pre-authorized before its session was named (as Conto's flow has it) by any, after those of
/// the record's own session. An x402 pre-authorization must cover the payment; an MPP deposit
/// need not (a session may top up), one that covers it first. Then the oldest (an id starts
/// with the second it was made in).
fn matching_preauthorization(
    store: &Store,
    agent: &str,
    intent: &PaymentIntent,
    taken: &HashSet<String>,
) -> Result<Option<String>, ApiError> {
    let now = Timestamp::now();
    let (paid, paid_session) = (endpoint(&intent.rail), session(&intent.rail));
    let top_ups = matches!(intent.rail, Rail::Mpp { .. });
    let mut candidates: Vec<(bool, bool, String)> = store
        .live_approvals(Some(agent))?
        .into_iter()
        .filter_map(|(id, row)| {
            let a = row.authorization(&id).ok()?;
            let session_of = session(&a.intent.rail);
            let covers = intent.amount <= a.amount;
            let same = a.intent.rail.name() == intent.rail.name()
                && endpoint(&a.intent.rail) == paid
                && (session_of.is_none() || session_of == paid_session)
                && a.intent.recipient == intent.recipient
                && (covers || top_ups)
                && a.expires_at > now
                && !taken.contains(&id);
            same.then_some((session_of != paid_session, !covers, id))
        })
        .collect();
    candidates.sort();
    Ok(candidates.into_iter().next().map(|(_, _, id)| id))
}

/// An MPP record of `0` (one payment, no batch), which reading the body refused (an amount is
/// positive): the session settled nothing, as when it never opened. Its body with the amount
/// read as the least one, to find its deposit as a record would; `None` for any other body.
fn unspent_session(kind: Kind, body: &Bytes) -> Option<PaymentBody> {
    if kind != Kind::Mpp {
        return None;
    }
    let mut value = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    // Zero as an amount is read (`0`, `"0.00"`, `0e5`; a number below f64's range reads as 0).
    let text = match &value["amount"] {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s.clone(),
        _ => return None,
    };
    if !matches!(text.parse::<Amount>(), Err(conto_core::AmountError::Zero(_))) || value.get("payments").is_some() {
        return None;
    }
    value["amount"] = serde_json::Value::String("0.000001".into());
    PaymentBody::from_value(value).ok()
}

/// Closes an MPP session that settled nothing: its deposit's hold and its open-session slot
/// are freed, nothing is counted. The deposit is the one named (`authorizationId`) or the one
/// its record would settle. Closing it again answers the same (both frees are no-ops then); a
/// deposit already recorded is `400 INVALID_STATUS`.
fn close_unspent(app: &App, store: &Store, agent: &str, body: &PaymentBody) -> Result<RecordedBody, ApiError> {
    let id = match body.authorization_id.clone().filter(|i| !i.is_empty()) {
        Some(id) => request_approval(store, agent, &id)?,
        None => {
            let intent = intent_from(agent, body, Kind::Mpp)?;
            matching_preauthorization(store, agent, &intent, &HashSet::new())?.ok_or_else(|| {
                ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no open MPP session's deposit matches this record")
            })?
        }
    };
    let approval = live_approval(store, agent, Kind::Mpp, &id, None, None)?;
    store.release_approval(&id)?;
    let _ = app.engine.free(&approval.authorization);
    let entry = RecordedBody { authorization_id: Some(id), status: Some("RELEASED".into()), ..RecordedBody::default() };
    Ok(RecordedBody { status: Some("RELEASED".into()), payments: vec![entry], ..RecordedBody::default() })
}

async fn record(app: Arc<App>, headers: HeaderMap, body: Bytes, kind: Kind) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, kind.record_scope(), Class::Payments)?;
    let endpoint = kind.record_path("").unwrap_or_default();
    let body = match payment_body(&body) {
        Ok(read) => read,
        Err(refused) => {
            let Some(unspent) = unspent_session(kind, &body) else { return Err(refused) };
            // Its idempotency keys are apart from records' (its body is read with a stand-in
            // amount, which a real record of that amount must not replay).
            let (status, out) = once(&app, &caller, &format!("{endpoint}#unspent"), &headers, &unspent, |store| {
                Ok((StatusCode::OK, close_unspent(&app, store, &caller.agent, &unspent)?))
            })?;
            return Ok(reply(status, out));
        }
    };
    let (status, out) = once(&app, &caller, &endpoint, &headers, &body, |store| {
        let payments: Vec<PaymentBody> = match &body.payments {
            Some(items) if kind == Kind::X402 => items.clone(),
            Some(_) => return Err(bad("VALIDATION_ERROR", "`payments` batches are x402 only")),
            None => vec![body.clone()],
        };
        if payments.is_empty() {
            return Err(bad("VALIDATION_ERROR", "`payments` is empty"));
        }
        // Every payment is checked before any is counted: a record with a payment that is
        // refused counts none of them (and its retry is not refused as a repeat).
        let mut taken = HashSet::new();
        let planned = payments
            .iter()
            .enumerate()
            .map(|(i, p)| {
                plan_one(store, &caller.agent, p, kind, &mut taken).map_err(|e| match &body.payments {
                    Some(_) => e.at(&format!("payments[{i}]")),
                    None => e,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut results = Vec::with_capacity(planned.len());
        for p in planned {
            results.push(p.record(&app, store, &caller.agent)?);
        }
        Ok((
            StatusCode::OK,
            RecordedBody { recorded: Some(results.len() as u64), payments: results, ..RecordedBody::default() },
        ))
    })?;
    Ok(reply(status, out))
}

async fn record_x402(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    record(app, headers, body, Kind::X402).await
}

async fn record_mpp(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    record(app, headers, body, Kind::Mpp).await
}

/// `GET /api/sdk/policies`: the policies that apply to the calling agent.
async fn policies(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "policies:read", Class::Reads)?;
    Ok(reply(StatusCode::OK, Policies::new(agent_policies(&lock(&app.store), &caller.agent)?)))
}

/// The stored policies that apply to `agent`, as the org API shows them (Conto's defaults
/// filled in: `isActive`, `priority`).
fn agent_policies(store: &Store, agent: &str) -> Result<Vec<conto_wire::org::Policy>, ApiError> {
    Ok(store.policies()?.into_iter().filter(|p| p.applies_to(agent)).map(crate::shown).collect())
}

fn request_entry(
    r: &RequestRecord,
    intent: Option<&PaymentIntent>,
    token: Option<&secrecy::SecretString>,
    payment_request: Option<String>,
) -> ApprovalRequest {
    ApprovalRequest {
        approval_request_id: r.id.clone(),
        kind: Some("payment".into()),
        status: Some(r.status.clone()),
        expires_at: Some(r.expires_at.clone()),
        // What the approver would let move: an MPP session's deposit, not its per-request price.
        amount: intent.map(PaymentIntent::exposure),
        recipient_address: intent.and_then(|i| i.recipient.as_ref()).map(|a| a.as_str().to_owned()),
        approval_id: r.approval_id.clone(),
        authorization_id: r.approval_id.clone(),
        // `requestId` is what `/payments/{requestId}` reads for a payment request, and what
        // `/cards/{requestId}/confirm` takes for a card (the approval).
        request_id: payment_request.clone().or_else(|| r.approval_id.clone()),
        approval_token: token.map(|t| secrecy::ExposeSecret::expose_secret(t).to_owned()),
        payment_request_id: payment_request,
        // Once a human approved it, when the approval it issued lapses unpaid.
        approval_expires_at: r.approval_id.as_ref().map(|_| r.expires_at.clone()),
        reasons: r.reasons.as_deref().and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default(),
    }
}

/// Whether `caller` may be shown the token of an approval of `intent`: a key that may confirm
/// with it, `payments:confirm` for a transfer's (a key kept out of the transfer flow is not
/// handed its secret), `payments:request` for a card's.
fn may_confirm(caller: &Caller, intent: Option<&PaymentIntent>) -> bool {
    let transfer = intent.is_some_and(|i| matches!(i.rail, Rail::Transfer { .. }));
    let scope = if transfer { Kind::Transfer.record_scope() } else { Kind::Card.record_scope() };
    caller.scopes.iter().any(|s| s == scope)
}

/// `GET /api/sdk/approval-requests?type=&limit=` query.
#[derive(serde::Deserialize)]
struct ApprovalQuery {
    /// `payment`: every approval request conto-local makes is one; any other type lists none.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// At most this many (1 to 100, 100 by default), newest first.
    limit: Option<String>,
    /// Only those in this status (`PENDING`, `APPROVED`, `REJECTED`, `EXPIRED`, …; any case).
    status: Option<String>,
}

/// `GET /api/sdk/approval-requests?type=payment&limit=100`: the agent's approval requests,
/// newest first.
async fn approval_requests(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<ApprovalQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "payments:request", Class::Reads)?;
    let query = read_query(query)?;
    let limit = query_limit(query.limit.as_deref(), 100).map_err(invalid_query)?;
    let payments = query.kind.as_deref().is_none_or(|t| t.eq_ignore_ascii_case("payment"));
    let now = Timestamp::now();
    let store = lock(&app.store);
    // Filtered by status after each entry's status is known (a lapsed one reads `EXPIRED`),
    // then `limit` kept.
    let status = query.status.as_deref().map(str::trim).filter(|s| !s.is_empty());
    // The newest 1 000 at most: a poll never reads an agent's whole history under the lock.
    let read = if status.is_some() { 1000 } else { limit };
    let requests = if payments { store.latest_requests(&caller.agent, read)? } else { Vec::new() };
    let payment_requests = store.payment_requests_by_approval(&caller.agent)?;
    // A live approval's token that a restart lost is issued again for a key that may confirm
    // with it (`token_again`; shown below like any kept one).
    for r in requests.iter().filter(|r| r.status == "APPROVED") {
        let Some(approval) = &r.approval_id else { continue };
        let intent = serde_json::from_str::<PaymentIntent>(&r.intent).ok();
        let lost = lock(&app.approval_tokens).get(&r.id, now).is_none();
        if lost && may_confirm(&caller, intent.as_ref()) {
            token_again(&app, &store, &caller.agent, &r.id, approval)?;
        }
    }
    let tokens = lock(&app.approval_tokens);
    // A paused agent is handed no token (pausing is the org's kill switch), nor is one shown
    // once its approval was used.
    let paused = store.agent(&caller.agent)?.is_some_and(|a| a.status == "PAUSED");
    let list = requests
        .iter()
        .map(|r| {
            // Read once, when first needed (the token's filter, the lapse below).
            let taken = std::cell::OnceCell::new();
            let untaken = || {
                *taken.get_or_init(|| {
                    r.approval_id.as_deref().is_none_or(|id| !store.approval_taken(id).is_ok_and(|(_, taken)| taken))
                })
            };
            let intent = serde_json::from_str::<PaymentIntent>(&r.intent).ok();
            let may_confirm = may_confirm(&caller, intent.as_ref());
            let token = tokens.get(&r.id, now).filter(|_| !paused && may_confirm && untaken());
            let mut entry = request_entry(r, intent.as_ref(), token, payment_requests.get(&r.id).cloned());
            // A request still pending, or an approval not taken (still live), past its expiry
            // has lapsed; an approval that was confirmed stays APPROVED.
            let lapsed = r.expires_at.parse::<Timestamp>().is_ok_and(|t| t <= now);
            if lapsed && (r.status == "PENDING" || (r.status == "APPROVED" && untaken())) {
                entry.status = Some("EXPIRED".into());
            }
            entry
        })
        .filter(|entry| status.is_none_or(|s| entry.status.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(s))))
        .take(limit)
        .collect();
    Ok(reply(StatusCode::OK, ApprovalRequests { requests: list, data: None }))
}

/// `GET /api/sdk/x402/services`: the x402 services this agent has paid, with totals.
async fn x402_services(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    services(&app, &headers, Kind::X402)
}

async fn mpp_services(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    services(&app, &headers, Kind::Mpp)
}

/// `GET /api/sdk/wallets` (`wallets:read`): the caller's wallet delegations, as the org's
/// `GET /api/agents/{id}/wallets` lists them.
async fn wallets(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "wallets:read", Class::Reads)?;
    Ok(reply(StatusCode::OK, crate::org::agent_wallets(&app, &caller.agent)?))
}

/// `GET /api/sdk/setup` (`agents:read`): the calling agent, its key, wallets and policies, and
/// whether it can pay (active, with a wallet).
async fn setup(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "agents:read", Class::Reads)?;
    let may = |scope: &str| caller.scopes.iter().any(|s| s == scope);
    let delegated = crate::org::agent_wallets(&app, &caller.agent)?.wallets;
    let (row, policies) = {
        let store = lock(&app.store);
        (store.agent(&caller.agent)?, agent_policies(&store, &caller.agent)?)
    };
    // What the key may not read itself is left out (its own reads need `wallets:read` and
    // `policies:read`); whether a wallet is delegated is still said.
    let has_wallet = !delegated.is_empty();
    let wallets = if may("wallets:read") { delegated } else { Vec::new() };
    let policies = if may("policies:read") { policies } else { Vec::new() };
    let agent = conto_wire::org::Agent {
        name: row.as_ref().map(|r| r.name.clone()),
        status: row.as_ref().map(|r| r.status.clone()),
        created_at: row.as_ref().map(|r| r.created_at.clone()),
        id: Some(caller.agent),
        ..Default::default()
    };
    let mut issues = Vec::new();
    if agent.status.as_deref() != Some("ACTIVE") {
        issues.push(format!("the agent is {}, not ACTIVE", agent.status.as_deref().unwrap_or("unknown")));
    }
    if !has_wallet {
        issues.push("no wallet is delegated to the agent".to_owned());
    }
    let (key_type, scopes, ready) = (caller.key_type, caller.scopes, issues.is_empty());
    let setup = conto_wire::sdk::Setup { agent, key_type, scopes, wallets, policies, ready, issues };
    Ok(reply(StatusCode::OK, setup))
}

/// `GET /api/sdk/transactions?limit=50` (`transactions:read`): the caller's recorded payments,
/// newest first (`limit` 1 to 100, 50 by default).
async fn transactions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<SummaryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "transactions:read", Class::Reads)?;
    let query = read_query(query)?;
    let limit = query_limit(query.limit.as_deref(), 50).map_err(invalid_query)?;
    let rows = lock(&app.store).transactions(&caller.agent, limit)?;
    let transactions = rows
        .into_iter()
        .map(|row| {
            let intent = serde_json::from_str::<PaymentIntent>(&row.intent).ok();
            Transaction {
                id: row.transaction_id,
                authorization_id: row.authorization_id,
                amount: row.amount.parse().unwrap_or_default(),
                status: "COMPLETED".into(),
                kind: intent.as_ref().map_or("transfer", |i| i.rail.name()).into(),
                recipient_address: intent.and_then(|i| i.recipient).map(|a| a.as_str().to_owned()),
                tx_hash: row.reference,
                created_at: row.recorded_at,
            }
        })
        .collect();
    Ok(reply(StatusCode::OK, Transactions { transactions }))
}

/// A spend read's query, or a `400 VALIDATION_ERROR` saying what is wrong with it.
fn read_query<T>(
    query: Result<axum::extract::Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    query.map(|q| q.0).map_err(|e| invalid_query(e.body_text()))
}

fn invalid_query(what: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", what)
}

/// A read's `limit` parameter: 1 to 100, `default` when absent.
fn query_limit(given: Option<&str>, default: usize) -> Result<usize, String> {
    match given.map(str::parse::<usize>) {
        None => Ok(default),
        Some(Ok(n)) if (1..=100).contains(&n) => Ok(n),
        Some(_) => Err("`limit` is a whole number from 1 to 100".into()),
    }
}

/// One recorded x402 or MPP payment of an agent, as the spend reads see it.
struct MachineSpend {
    service_domain: String,
    rail: Kind,
    amount: conto_core::Decimal,
    recorded_at: String,
}

/// The x402 and MPP payments `agent` recorded, oldest first.
fn machine_spends(app: &App, agent: &str) -> Result<Vec<MachineSpend>, ApiError> {
    let spends = lock(&app.store).agent_spends(agent)?;
    Ok(spends
        .into_iter()
        .filter_map(|row| {
            let intent = serde_json::from_str::<PaymentIntent>(&row.intent).ok()?;
            let (service_domain, rail) = match intent.rail {
                Rail::X402 { service_domain, .. } => (service_domain, Kind::X402),
                Rail::Mpp { service_domain, .. } => (service_domain, Kind::Mpp),
                _ => return None,
            };
            let amount = row.amount.parse().unwrap_or_default();
            Some(MachineSpend { service_domain, rail, amount, recorded_at: row.recorded_at })
        })
        .collect())
}

/// The services the caller paid on one rail (x402 or MPP), by service domain.
fn services(app: &App, headers: &HeaderMap, kind: Kind) -> Result<Response, ApiError> {
    let caller = caller(app, headers, "analytics:read", Class::Reads)?;
    let mut services: std::collections::BTreeMap<String, ServiceSpend> = Default::default();
    for spend in machine_spends(app, &caller.agent)?.into_iter().filter(|s| s.rail == kind) {
        let entry = services.entry(spend.service_domain.clone()).or_insert_with(|| ServiceSpend {
            service_domain: spend.service_domain,
            total_spent: conto_core::Decimal::ZERO,
            payment_count: 0,
            last_payment_at: String::new(),
        });
        entry.total_spent += spend.amount;
        entry.payment_count += 1;
        entry.last_payment_at = spend.recorded_at;
    }
    Ok(reply(StatusCode::OK, Services { services: services.into_values().collect() }))
}

/// The query of the spend reads (`service-spend/summary`, `transactions`); other parameters
/// are ignored.
#[derive(serde::Deserialize)]
struct SummaryQuery {
    period: Option<String>,
    protocol: Option<String>,
    limit: Option<String>,
}

/// `GET /api/sdk/service-spend/summary?period=24h|7d|30d|all&protocol=all|x402|mpp&limit=10`:
/// the caller's machine spend (x402 and MPP) over the period, with its services, most spent
/// first.
async fn spend_summary(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<SummaryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "analytics:read", Class::Reads)?;
    let query = read_query(query)?;
    let period = query.period.unwrap_or_else(|| "24h".into());
    let hours = match period.as_str() {
        "24h" => Some(24),
        "7d" => Some(24 * 7),
        "30d" => Some(24 * 30),
        "all" => None,
        other => return Err(invalid_query(format!("`period` is one of 24h, 7d, 30d, all, not `{other}`"))),
    };
    let protocol = query.protocol.unwrap_or_else(|| "all".into());
    let only = match protocol.as_str() {
        "all" => None,
        "x402" => Some(Kind::X402),
        "mpp" => Some(Kind::Mpp),
        other => return Err(invalid_query(format!("`protocol` is one of all, x402, mpp, not `{other}`"))),
    };
    let limit = query_limit(query.limit.as_deref(), 10).map_err(invalid_query)?;
    let start = hours.map(|h| Timestamp::now() - conto_core::jiff::SignedDuration::from_hours(h));
    let mut totals = SummaryTotals::default();
    let mut services: std::collections::HashMap<(String, Kind), SummaryService> = Default::default();
    let spends = machine_spends(&app, &caller.agent)?.into_iter().filter(|s| {
        only.is_none_or(|k| s.rail == k)
            && start.is_none_or(|start| s.recorded_at.parse::<Timestamp>().is_ok_and(|at| at >= start))
    });
    for spend in spends {
        let (spent, calls, protocol) = match spend.rail {
            Kind::X402 => (&mut totals.x402_spend, &mut totals.x402_calls, "x402"),
            _ => (&mut totals.mpp_spend, &mut totals.mpp_calls, "mpp"),
        };
        *spent += spend.amount;
        *calls += 1;
        totals.total_spend += spend.amount;
        totals.total_calls += 1;
        let entry = services.entry((spend.service_domain.clone(), spend.rail)).or_insert_with(|| SummaryService {
            service_domain: spend.service_domain,
            protocol: protocol.into(),
            total_spend: conto_core::Decimal::ZERO,
            calls: 0,
            last_payment_at: String::new(),
        });
        entry.total_spend += spend.amount;
        entry.calls += 1;
        entry.last_payment_at = spend.recorded_at;
    }
    totals.micropayment_transactions = totals.total_calls;
    totals.active_services = services.len() as u64;
    totals.active_agents = u64::from(totals.total_calls > 0);
    let mut services: Vec<_> = services.into_values().collect();
    services.sort_by(|a, b| b.total_spend.cmp(&a.total_spend).then_with(|| a.service_domain.cmp(&b.service_domain)));
    services.truncate(limit);
    let filters = SummaryFilters {
        period,
        protocol,
        organization_id: crate::ORGANIZATION_ID.into(),
        agent_id: caller.agent.clone(),
        start_date: start.map(iso),
    };
    Ok(reply(StatusCode::OK, SpendSummary { filters, summary: totals, services, alerts: Vec::new() }))
}

/// `GET /api/sdk/{x402,mpp}/budget`: the counters that count this rail's payments (a limit on
/// every rail's, or on this rail's), each with its limit and what is left of it; what is left
/// on the rail (the least of those); and the burn rate, this rail's spend over the last 24
/// hours, per hour.
async fn budget(State(app): State<Arc<App>>, headers: HeaderMap, kind: Kind) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "analytics:read", Class::Reads)?;
    let usage = app.engine.usage(&caller.agent);
    let rail = if kind == Kind::X402 { "x402" } else { "mpp" };
    let counters: Vec<Counter> = usage
        .counters
        .iter()
        .filter(|c| c.rails.is_none_or(|r| r == "all" || r == rail))
        .map(|c| Counter {
            period: c.period.to_string(),
            scope: c.scope.to_string(),
            time_zone: c.time_zone.to_string(),
            since: iso(c.period_start),
            spent: c.spent,
            reserved: c.reserved,
            limit: c.limit,
            remaining: c.limit.map(|l| (l - c.spent - c.reserved).max(conto_core::Decimal::ZERO)),
        })
        .collect();
    let remaining = counters.iter().filter_map(|c| c.remaining).min();
    let since =
        Timestamp::now().saturating_sub(conto_core::jiff::SignedDuration::from_hours(24)).unwrap_or(Timestamp::MIN);
    let last_day: conto_core::Decimal = machine_spends(&app, &caller.agent)?
        .into_iter()
        .filter(|s| s.rail == kind && s.recorded_at.parse::<Timestamp>().is_ok_and(|at| at > since))
        .map(|s| s.amount)
        .sum();
    let burn = (last_day / conto_core::Decimal::from(24)).round_dp(6);
    Ok(reply(
        StatusCode::OK,
        Budget {
            agent_id: caller.agent.clone(),
            counters,
            total_spent: usage.stats.total_spent,
            remaining,
            spent_last_24h: Some(last_day),
            burn_rate_per_hour: Some(burn),
        },
    ))
}

/// A human's decision on a pending request (org endpoint).
pub(crate) fn decide_request(app: &App, id: &str, approve: bool) -> Result<ApprovalAnswer, ApiError> {
    // The store is held throughout, as for every decision: a policy change's recount never
    // runs between the engine's reservation and the approval's row.
    let store = lock(&app.store);
    let mut request = store
        .request(id)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no approval request `{id}`")))?;
    if request.status != "PENDING" {
        // The same decision sent again (a retry after its answer was lost) is answered as
        // the first was; another is refused.
        if store.decision(id)? == Some(approve) {
            let reasons = request.reasons.as_deref().and_then(|r| serde_json::from_str(r).ok()).unwrap_or_default();
            return Ok(ApprovalAnswer { approval_request_id: id.to_owned(), status: request.status, reasons });
        }
        return Err(bad("INVALID_STATUS", format!("approval request `{id}` is {}", request.status)));
    }
    // Lapsed unanswered (listed `EXPIRED`): Conto's code for it, not an unknown request.
    if request.expires_at.parse::<Timestamp>().is_ok_and(|t| t <= Timestamp::now()) {
        let _ = app.engine.resolve_approval(id, false);
        let message = format!("approval request `{id}` {LAPSED_UNANSWERED} (it lapsed at {})", request.expires_at);
        return Err(bad("EXPIRED", message));
    }
    app.engine
        .resolve_approval(id, approve)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", e.to_string()))?;
    let decision =
        app.engine.approval(id).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", e.to_string()))?;
    // The budget as it stands now: spent and held since the request was made.
    let verdict = match decision.map(|d| d.verdict) {
        Some(Verdict::Approved(a)) => {
            let intent = a.intent.clone();
            Some(budget_gated(app, &store, &intent, Verdict::Approved(a))?)
        }
        other => other,
    };
    let mut reasons = Vec::new();
    match verdict {
        Some(Verdict::Approved(mut a)) => {
            // As for an approval given at once: a payment request's, an x402 or an MPP
            // approval carries none.
            a.token = crate::store::issue_token(&a.intent.rail);
            let written =
                store.add_approval(&a.id, &ApprovalRecord::live(&request.agent_id, request.intent.clone(), &a));
            withdrawn_unless_written(app, &a, written)?;
            // Only the token's hash is stored; the token itself waits in memory for the agent.
            if let Some(token) = a.token.clone() {
                lock(&app.approval_tokens).keep(request.id.clone(), token, a.expires_at, Timestamp::now());
            }
            request.status = "APPROVED".into();
            request.approval_id = Some(a.id);
            request.approval_token = None;
            request.expires_at = iso(a.expires_at);
        }
        // Rejected by the human, or approved but denied by the re-check that follows (the
        // budget went meanwhile, the agent was paused): said why, here and to the agent.
        other => {
            reasons = match other {
                Some(Verdict::Denied(denial)) => denial.reasons,
                _ if approve => vec!["the request lapsed before it was approved".to_owned()],
                _ => vec!["rejected by a human approver".to_owned()],
            };
            request.status = "REJECTED".into();
            request.reasons = Some(serde_json::to_string(&reasons).unwrap_or_default());
        }
    }
    store.put_request(&request)?;
    store.set_decision(id, approve)?;
    Ok(ApprovalAnswer { approval_request_id: id.to_owned(), status: request.status, reasons })
}

#[cfg(test)]
mod tests {
    use conto_core::{Engine, PaymentIntent, Rail};
    use conto_wire::Kind;

    use super::decide;
    use crate::App;
    use crate::store::Store;

    fn app() -> App {
        let engine = Engine::builder().build();
        engine.provision("agent-1").unwrap();
        App::new(Store::open(None).unwrap(), engine, "conto_org_test".to_owned().into(), (100, 100))
    }

    fn intent() -> PaymentIntent {
        let rail = Rail::transfer(8453, "0x2222222222222222222222222222222222222222").unwrap();
        PaymentIntent::builder("agent-1", "5", rail)
            .recipient("0x1111111111111111111111111111111111111111")
            .build()
            .unwrap()
    }

    /// An approval whose write fails is answered with an error and holds no budget: a retry
    /// would otherwise reserve a second time while the first waited out its expiry.
    #[test]
    fn an_approval_that_was_not_written_holds_nothing() {
        let app = app();
        let store = crate::lock(&app.store);
        store.execute_for_test("DROP TABLE approvals");
        assert!(decide(&app, &store, &intent(), Kind::Transfer).is_err());
        assert_eq!(app.engine.usage("agent-1").live_reservations, 0);
    }

    /// A payment request's approval is written with its request or not at all: a failure
    /// of the second write leaves no live approval row (which a restart would reserve
    /// again) and no reservation.
    #[test]
    fn a_request_approval_stands_only_with_its_request() {
        let app = app();
        let store = crate::lock(&app.store);
        store.execute_for_test("DROP TABLE payment_requests");
        let intent = intent();
        assert!(store.batch(|s| decide(&app, s, &intent, Kind::Request)).unwrap().is_err());
        assert_eq!(app.engine.usage("agent-1").live_reservations, 0);
        assert_eq!(store.live_approvals(Some("agent-1")).unwrap().len(), 0, "no approval row stands");
    }

    /// The same when the approval was written but its request's writes did not commit.
    #[test]
    fn an_approval_whose_writes_did_not_commit_holds_nothing() {
        let app = app();
        let store = crate::lock(&app.store);
        let decided = store.batch(|s| {
            let answer = decide(&app, s, &intent(), Kind::Transfer).unwrap();
            assert_eq!(app.engine.usage("agent-1").live_reservations, 1, "reserved while the request runs");
            s.fail_commit_for_test();
            answer
        });
        assert!(decided.is_err(), "the commit failed");
        assert_eq!(app.engine.usage("agent-1").live_reservations, 0);

        // A request that commits keeps its reservation.
        store.batch(|s| decide(&app, s, &intent(), Kind::Transfer).unwrap()).unwrap();
        assert_eq!(app.engine.usage("agent-1").live_reservations, 1);
    }
}
