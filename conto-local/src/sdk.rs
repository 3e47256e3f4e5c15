//! The agent-facing `/api/sdk/*` endpoints: approve / pre-authorize, confirm / record, reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use conto_core::jiff::Timestamp;
use conto_core::{Amount, AuthorityError, IntentError, PaymentIntent, Rail, Settlement, Verdict, service_domain_of};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq;

use crate::store::{ApprovalRecord, RequestRecord, hash};
use crate::{ApiError, App, lock, now_text, random_hex};

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
        .route("/api/sdk/x402/budget", get(budget))
        .route("/api/sdk/x402/services", get(x402_services))
        .route("/api/sdk/mpp/budget", get(budget))
}

/// The authenticated agent and its rate-limit window.
struct Caller {
    agent: String,
    remaining: u32,
    reset: Timestamp,
}

fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, message)
}

fn caller(app: &App, headers: &HeaderMap, scope: &str, class: &'static str) -> Result<Caller, ApiError> {
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
    if record.expires_at.parse::<Timestamp>().is_ok_and(|t| t <= Timestamp::now()) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "EXPIRED_KEY", "the SDK key has expired"));
    }
    if !record.scopes.iter().any(|s| s == scope) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "INSUFFICIENT_SCOPE",
            format!("this key lacks the `{scope}` scope"),
        ));
    }
    // Sliding one-minute window per agent and class.
    let limit = if class == "reads" { app.rate_limit * 2 } else { app.rate_limit };
    let now = Instant::now();
    let mut rate = lock(&app.rate);
    let window = rate.entry((record.agent_id.clone(), class)).or_default();
    while window.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
        window.pop_front();
    }
    let oldest_left = |w: &std::collections::VecDeque<Instant>| {
        w.front().map_or(Duration::ZERO, |t| Duration::from_secs(60).saturating_sub(now.duration_since(*t)))
    };
    if window.len() as u32 >= limit {
        let wait = oldest_left(window).as_secs().max(1);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RATE_LIMITED",
            format!("rate limit of {limit} requests per minute exceeded"),
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    window.push_back(now);
    let reset = Timestamp::now()
        .checked_add(conto_core::jiff::SignedDuration::try_from(oldest_left(window)).unwrap_or_default())
        .unwrap_or(Timestamp::now());
    Ok(Caller { agent: record.agent_id, remaining: limit - window.len() as u32, reset })
}

fn reply(caller: &Caller, status: StatusCode, body: Value) -> Response {
    let mut resp = (status, axum::Json(body)).into_response();
    let h = resp.headers_mut();
    h.insert("x-ratelimit-remaining", caller.remaining.into());
    if let Ok(v) = HeaderValue::from_str(&caller.reset.to_string()) {
        h.insert("x-ratelimit-reset", v);
    }
    resp
}

fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(bad("VALIDATION_ERROR", "the body must be a JSON object")),
        Err(e) => Err(bad("VALIDATION_ERROR", format!("the body is not JSON: {e}"))),
    }
}

fn text(body: &Value, key: &str) -> Option<String> {
    body.get(key).and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_owned)
}

fn required(body: &Value, key: &str) -> Result<String, ApiError> {
    text(body, key).ok_or_else(|| bad("VALIDATION_ERROR", format!("`{key}` is required")))
}

fn amount_of(body: &Value, key: &str) -> Result<Option<Amount>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            serde_json::from_value(v.clone()).map(Some).map_err(|e| bad("INVALID_AMOUNT", format!("`{key}`: {e}")))
        }
    }
}

fn intent_error(e: IntentError) -> ApiError {
    match e {
        IntentError::Amount(a) => bad("INVALID_AMOUNT", a.to_string()),
        IntentError::Address(_) | IntentError::MissingRecipient(_) => bad("INVALID_ADDRESS", e.to_string()),
        other => bad("VALIDATION_ERROR", other.to_string()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transfer,
    X402,
    Mpp,
    Card,
    /// `payments/request`: a payment from a Conto-managed wallet, used by hybrid apps as a pure
    /// policy check before they settle elsewhere (a card processor).
    Request,
}

/// Builds the intent an SDK request describes, for `agent`.
fn intent_from(agent: &str, body: &Value, kind: Kind) -> Result<PaymentIntent, ApiError> {
    let amount = amount_of(body, "amount")?.ok_or_else(|| bad("VALIDATION_ERROR", "`amount` is required"))?;
    let rail = match kind {
        Kind::Transfer => {
            let chain = body
                .get("chainId")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("VALIDATION_ERROR", "`chainId` is required"))?;
            Rail::transfer(chain, &required(body, "senderAddress")?).map_err(intent_error)?
        }
        Kind::X402 | Kind::Mpp => {
            let url = required(body, "resourceUrl")?;
            let domain = match text(body, "serviceDomain") {
                Some(d) => d.to_ascii_lowercase(),
                None => service_domain_of(&url).map_err(intent_error)?,
            };
            if kind == Kind::X402 {
                Rail::X402 {
                    resource_url: url,
                    service_domain: domain,
                    facilitator: text(body, "facilitator"),
                    scheme: text(body, "scheme"),
                }
            } else {
                Rail::Mpp {
                    resource_url: url,
                    service_domain: domain,
                    session_id: text(body, "sessionId"),
                    intent: text(body, "intent"),
                    deposit: amount_of(body, "depositAmount")?,
                    method: text(body, "method"),
                }
            }
        }
        Kind::Card => Rail::Card {
            card_id: text(body, "cardId"),
            merchant: required(body, "merchantName")?,
            mcc: text(body, "merchantCategory"),
        },
        Kind::Request => Rail::Request { wallet_id: text(body, "walletId") },
    };
    let mut b = PaymentIntent::builder(agent, amount, rail);
    if let Some(r) = text(body, "recipientAddress") {
        b = b.recipient(r);
    }
    for (key, set) in [("recipientName", 0), ("purpose", 1), ("category", 2)] {
        if let Some(v) = text(body, key) {
            b = match set {
                0 => b.recipient_name(v),
                1 => b.purpose(v),
                _ => b.category(v),
            };
        }
    }
    if let Some(Value::Object(ctx)) = body.get("context") {
        for (k, v) in ctx {
            b = b.context(k.clone(), v.clone());
        }
    }
    if let Some(k) = text(body, "idempotencyKey") {
        b = b.idempotency_key(k);
    }
    b.build().map_err(intent_error)
}

/// Runs `f` once per idempotency key: a repeat with the same body gets the first answer, a
/// repeat with another body gets 409.
fn once(
    app: &App,
    caller: &Caller,
    endpoint: &str,
    headers: &HeaderMap,
    body: &Value,
    f: impl FnOnce() -> Result<(StatusCode, Value), ApiError>,
) -> Result<(StatusCode, Value), ApiError> {
    let key = text(body, "idempotencyKey")
        .or_else(|| headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned));
    let Some(key) = key else { return f() };
    let mut canonical = body.clone();
    if let Some(m) = canonical.as_object_mut() {
        m.remove("idempotencyKey");
    }
    let request_hash = hash(&canonical.to_string());
    if let Some((stored_hash, status, response)) = lock(&app.store).idempotent(&caller.agent, endpoint, &key)? {
        if stored_hash != request_hash {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "IDEMPOTENCY_CONFLICT",
                format!("idempotency key `{key}` was used with different parameters"),
            ));
        }
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        let mut response: Value = serde_json::from_str(&response).unwrap_or(Value::Null);
        // The token was kept in memory only: put it back for this process's replays.
        if let (Some(map), Some(token)) =
            (response.as_object_mut(), lock(&app.approval_tokens).get(&replay_slot(&caller.agent, endpoint, &key)))
        {
            map.insert("approvalToken".into(), json!(secrecy::ExposeSecret::expose_secret(token)));
        }
        return Ok((status, response));
    }
    let slot = (caller.agent.clone(), endpoint.to_owned(), key.clone());
    if !lock(&app.inflight).insert(slot.clone()) {
        let mut e = ApiError::new(
            StatusCode::CONFLICT,
            "IDEMPOTENCY_IN_FLIGHT",
            format!("a request with idempotency key `{key}` is still being processed"),
        );
        e.retry_after = Some(1);
        return Err(e);
    }
    let result = f();
    if let Ok((status, response)) = &result {
        // Never store an approval token in clear: the replay copy keeps it in memory only.
        let mut response = response.clone();
        if let Some(token) = response.as_object_mut().and_then(|m| m.remove("approvalToken"))
            && let Some(token) = token.as_str()
        {
            lock(&app.approval_tokens)
                .insert(replay_slot(&caller.agent, endpoint, &key), secrecy::SecretString::from(token.to_owned()));
        }
        let _ = lock(&app.store).remember(
            &caller.agent,
            endpoint,
            &key,
            &request_hash,
            status.as_u16(),
            &response.to_string(),
            &now_text(),
        );
    } else if let Err(e) = &result
        && e.status.is_client_error()
        && e.status != StatusCode::TOO_MANY_REQUESTS
    {
        let response = json!({"error": e.message, "code": e.code, "message": e.message});
        let _ = lock(&app.store).remember(
            &caller.agent,
            endpoint,
            &key,
            &request_hash,
            e.status.as_u16(),
            &response.to_string(),
            &now_text(),
        );
    }
    lock(&app.inflight).remove(&slot);
    result
}

/// The in-memory slot of an idempotent answer's approval token.
fn replay_slot(agent: &str, endpoint: &str, key: &str) -> String {
    format!("replay\0{agent}\0{endpoint}\0{key}")
}

/// Decides on an intent and shapes the answer like Conto does for the rail.
fn decide(app: &App, intent: &PaymentIntent, kind: Kind) -> Result<(StatusCode, Value), ApiError> {
    let decision = app.engine.decide(intent);
    let intent_json = serde_json::to_string(intent).unwrap_or_default();
    let recipient = intent.recipient.as_ref().map(|r| r.as_str().to_owned());
    Ok(match decision.verdict {
        Verdict::Approved(a) => {
            lock(&app.store).add_approval(&a.id, &ApprovalRecord::live(intent.actor.as_str(), intent_json, &a))?;
            let token =
                a.token.as_ref().map(|t| secrecy::ExposeSecret::expose_secret(t).to_owned()).unwrap_or_default();
            let limits = serde_json::to_value(&a.limits).unwrap_or(json!({}));
            let expires = a.expires_at.to_string();
            let body = match kind {
                Kind::Transfer => json!({
                    "approved": true, "approvalId": a.id, "approvalToken": token, "expiresAt": expires,
                    "confirmUrl": format!("/api/sdk/payments/{}/confirm", a.id), "limits": limits,
                    "amount": a.amount, "recipientAddress": recipient,
                }),
                Kind::X402 | Kind::Mpp => json!({
                    "authorized": true, "authorizationId": a.id, "expiresAt": expires, "reasons": [],
                    "limits": limits, "amount": a.amount, "recipientAddress": recipient,
                }),
                Kind::Card => json!({
                    "requestId": a.id, "status": "APPROVED", "amount": a.amount, "expiresAt": expires,
                    "approvalToken": token, "limits": limits,
                }),
                Kind::Request => {
                    lock(&app.store).put_payment_request(
                        &a.id,
                        intent.actor.as_str(),
                        "APPROVED",
                        None,
                        &json!([]),
                        &now_text(),
                    )?;
                    json!({
                        "requestId": a.id, "status": "APPROVED", "approvalRequestId": Value::Null, "reasons": [],
                        "amount": a.amount, "recipientAddress": recipient, "expiresAt": expires, "limits": limits,
                    })
                }
            };
            (StatusCode::OK, body)
        }
        Verdict::Denied(d) => {
            let message = d.reasons.first().cloned().unwrap_or_else(|| "Payment denied by policy".to_owned());
            let mut body = match kind {
                Kind::Transfer => {
                    json!({"approved": false, "reasons": d.reasons, "violations": d.violations, "requiresHumanApproval": false})
                }
                Kind::X402 | Kind::Mpp => {
                    json!({"authorized": false, "reasons": d.reasons, "violations": d.violations})
                }
                Kind::Card => {
                    json!({"requestId": Value::Null, "status": "DENIED", "amount": intent.amount, "reasons": d.reasons, "violations": d.violations})
                }
                Kind::Request => {
                    let id = format!("req_{}", random_hex(12));
                    let reasons = json!(d.reasons);
                    lock(&app.store).put_payment_request(
                        &id,
                        intent.actor.as_str(),
                        "DENIED",
                        None,
                        &reasons,
                        &now_text(),
                    )?;
                    json!({"requestId": id, "status": "DENIED", "approvalRequestId": Value::Null,
                        "reasons": reasons, "violations": d.violations, "amount": intent.amount})
                }
            };
            // A decision, not an error: Conto's own clients read a decision body only below 400
            // (403 means a missing scope to them).
            body["message"] = json!(message);
            (StatusCode::OK, body)
        }
        Verdict::RequiresApproval(p) => {
            lock(&app.store).put_request(&RequestRecord {
                id: p.approval_request_id.clone(),
                agent_id: intent.actor.as_str().to_owned(),
                intent: intent_json,
                status: "PENDING".into(),
                approval_id: None,
                approval_token: None,
                expires_at: p.expires_at.to_string(),
            })?;
            let mut body = json!({
                "requiresHumanApproval": true, "status": "REQUIRES_APPROVAL",
                "approvalRequestId": p.approval_request_id, "expiresAt": p.expires_at.to_string(), "reasons": p.reasons,
            });
            match kind {
                Kind::Transfer => body["approved"] = json!(false),
                Kind::X402 | Kind::Mpp => body["authorized"] = json!(false),
                Kind::Card => {}
                Kind::Request => {
                    let id = format!("req_{}", random_hex(12));
                    lock(&app.store).put_payment_request(
                        &id,
                        intent.actor.as_str(),
                        "REQUIRES_APPROVAL",
                        Some(&p.approval_request_id),
                        &json!(p.reasons),
                        &now_text(),
                    )?;
                    body["requestId"] = json!(id);
                }
            }
            (StatusCode::ACCEPTED, body)
        }
    })
}

async fn authorize(
    app: Arc<App>,
    headers: HeaderMap,
    body: Bytes,
    kind: Kind,
    scope: &str,
    endpoint: &str,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, scope, "payments")?;
    let body = json_body(&body)?;
    let (status, out) = once(&app, &caller, endpoint, &headers, &body, || {
        let intent = intent_from(&caller.agent, &body, kind)?;
        decide(&app, &intent, kind)
    })?;
    Ok(reply(&caller, status, out))
}

async fn approve_transfer(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authorize(app, headers, body, Kind::Transfer, "payments:approve", "payments/approve").await
}

async fn pre_authorize_x402(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(app, headers, body, Kind::X402, "payments:request", "x402/pre-authorize").await
}

async fn pre_authorize_mpp(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authorize(app, headers, body, Kind::Mpp, "payments:request", "mpp/pre-authorize").await
}

async fn request_payment(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authorize(app, headers, body, Kind::Request, "payments:request", "payments/request").await
}

/// `GET /api/sdk/payments/{requestId}`: a payment request's current status; a request that
/// waited for a human follows the human's answer.
async fn payment_request_status(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "payments:request", "reads")?;
    let (mut status, approval_request_id, reasons) = lock(&app.store)
        .payment_request(&id, &caller.agent)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no payment request `{id}`")))?;
    let mut body = json!({"requestId": id, "approvalRequestId": approval_request_id, "reasons": reasons});
    if let Some(apr) = &approval_request_id {
        let request = lock(&app.store).requests(Some(&caller.agent))?.into_iter().find(|r| &r.id == apr);
        if let Some(r) = request {
            let expired = r.expires_at.parse::<Timestamp>().is_ok_and(|t| t <= Timestamp::now());
            status = match r.status.as_str() {
                "APPROVED" => {
                    body["approvalId"] = json!(r.approval_id);
                    "APPROVED".into()
                }
                "REJECTED" => "DENIED".into(),
                "PENDING" if expired => "DENIED".into(),
                _ => status,
            };
        }
    }
    body["status"] = json!(status);
    Ok(reply(&caller, StatusCode::OK, body))
}

/// `POST /api/sdk/payments/{requestId}/execute`: Conto executes from a Conto-managed wallet;
/// conto-local holds none, and says so instead of faking a payment.
async fn execute_payment(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "payments:execute", "payments")?;
    lock(&app.store)
        .payment_request(&id, &caller.agent)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no payment request `{id}`")))?;
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "MANAGED_WALLET_UNAVAILABLE",
        "conto-local holds no Conto-managed wallet and cannot execute payments: settle it yourself \
         (hybrid) and record it, or run against Conto",
    ))
}

async fn approve_card(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authorize(app, headers, body, Kind::Card, "payments:request", "cards/approve").await
}

/// Settles a live approval: checks owner, token, expiry and amount, then records the spend.
fn settle(
    app: &App,
    agent: &str,
    id: &str,
    amount: Option<Amount>,
    reference: Option<String>,
    token: Option<&str>,
) -> Result<(Amount, String, Arc<PaymentIntent>), ApiError> {
    let row = lock(&app.store).approval(id)?.filter(|r| r.agent_id == agent).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no approval `{id}` for this agent"))
    })?;
    if row.state == "recorded" {
        return Err(bad("INVALID_STATUS", format!("approval `{id}` was already confirmed")));
    }
    if let Some(expected) = &row.token_hash {
        let given = token.map(hash).unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return Err(bad("INVALID_TOKEN", "the approval token does not match this approval"));
        }
    }
    let authorization =
        row.authorization(id).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e))?;
    if authorization.expires_at <= Timestamp::now() {
        return Err(bad("EXPIRED", format!("approval `{id}` expired at {}", authorization.expires_at)));
    }
    let approved = authorization.amount;
    let settled = amount.unwrap_or(approved);
    if settled > approved {
        return Err(bad("VALIDATION_ERROR", format!("settled amount {settled} is more than the approved {approved}")));
    }
    let intent = authorization.intent.clone();
    match app.engine.settle(&authorization, &Settlement { amount: Some(settled), reference: reference.clone() }) {
        Ok(_) => {}
        Err(AuthorityError::Ledger(conto_core::LedgerError::UnknownAuthorization(_))) => {
            app.engine.restore_spend(&intent, settled, Timestamp::now())
        }
        Err(e) => return Err(bad("INVALID_STATUS", e.to_string())),
    }
    let transaction_id = format!("tx_{}", random_hex(10));
    lock(&app.store).record_spend(
        id,
        agent,
        &row.intent,
        &settled.to_string(),
        reference.as_deref(),
        &transaction_id,
        &now_text(),
    )?;
    Ok((settled, transaction_id, intent))
}

fn is_tx_hash(s: &str) -> bool {
    let evm = s.len() == 66 && s.starts_with("0x") && s[2..].bytes().all(|b| b.is_ascii_hexdigit());
    const BASE58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    evm || ((43..=90).contains(&s.len()) && s.chars().all(|c| BASE58.contains(c)))
}

/// The block explorer's page for `tx` on the transfer's chain (`null` for chains conto-local
/// does not know).
fn explorer_url(rail: &Rail, tx: &str) -> Option<String> {
    let Rail::Transfer { chain_id, .. } = rail else { return None };
    let base = match chain_id {
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

async fn confirm_transfer(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "payments:confirm", "payments")?;
    let body = json_body(&body)?;
    let (status, out) = once(&app, &caller, &format!("payments/{id}/confirm"), &headers, &body, || {
        let tx = required(&body, "txHash")?;
        if !is_tx_hash(&tx) {
            return Err(bad("VALIDATION_ERROR", "`txHash` must be 0x + 64 hex characters or a Solana signature"));
        }
        let token = required(&body, "approvalToken")?;
        let (amount, transaction_id, intent) =
            settle(&app, &caller.agent, &id, amount_of(&body, "amount")?, Some(tx.clone()), Some(&token))?;
        Ok((
            StatusCode::OK,
            json!({
                "confirmed": true, "transactionId": transaction_id, "status": "CONFIRMING", "amount": amount,
                "currency": "USDC", "recipient": intent.recipient.as_ref().map(|r| r.as_str().to_owned()),
                "explorerUrl": explorer_url(&intent.rail, &tx), "txHash": tx,
            }),
        ))
    })?;
    Ok(reply(&caller, status, out))
}

async fn confirm_card(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "payments:request", "payments")?;
    let body = json_body(&body)?;
    let (status, out) = once(&app, &caller, &format!("cards/{id}/confirm"), &headers, &body, || {
        if text(&body, "status").is_some_and(|s| s != "COMPLETED") {
            return Err(bad("VALIDATION_ERROR", "only `status: COMPLETED` settlements are confirmed"));
        }
        let token = text(&body, "approvalToken");
        let (amount, transaction_id, _) = settle(
            &app,
            &caller.agent,
            &id,
            amount_of(&body, "amount")?,
            text(&body, "transactionReference"),
            token.as_deref(),
        )?;
        Ok((
            StatusCode::OK,
            json!({"confirmed": true, "transactionId": transaction_id, "amount": amount, "status": "COMPLETED"}),
        ))
    })?;
    Ok(reply(&caller, status, out))
}

/// Records one x402/MPP payment: settles its reservation, or counts it as unreserved spend.
fn record_one(app: &App, agent: &str, payment: &Value, kind: Kind) -> Result<Value, ApiError> {
    let reference = text(payment, "txHash").or_else(|| text(payment, "transactionHash"));
    if let Some(id) = text(payment, "authorizationId") {
        let (amount, transaction_id, _) = settle(app, agent, &id, amount_of(payment, "amount")?, reference, None)?;
        return Ok(
            json!({"authorizationId": id, "transactionId": transaction_id, "amount": amount, "status": "RECORDED"}),
        );
    }
    let intent = intent_from(agent, payment, kind)?;
    let amount = intent.amount;
    // The payment's own key: its `paymentId`, or else its tx hash.
    let key = text(payment, "paymentId").or_else(|| reference.clone());
    let id = format!("rec_{}", key.clone().unwrap_or_else(|| random_hex(10)));
    // A repeated record is refused before anything is counted.
    let seen = match &key {
        Some(k) => lock(&app.store).recorded_payment(agent, k)?.is_some(),
        None => false,
    };
    if seen || lock(&app.store).spend_exists(&id)? {
        return Err(ApiError::new(StatusCode::CONFLICT, "CONFLICT", format!("payment `{id}` was already recorded")));
    }
    // A record without `authorizationId` settles the live pre-authorization it belongs to
    // rather than adding to it: same agent and rail, same resource and recipient, an amount
    // within the reservation; the oldest such pre-authorization first.
    if let Some(preauth) = matching_preauthorization(app, agent, &intent)? {
        let (amount, transaction_id, _) = settle(app, agent, &preauth, Some(amount), reference, None)?;
        if let Some(k) = &key {
            lock(&app.store).remember_payment(agent, k, &preauth)?;
        }
        return Ok(json!({"paymentId": id, "authorizationId": preauth, "transactionId": transaction_id,
            "amount": amount, "status": "RECORDED"}));
    }
    app.engine.restore_spend(&intent, amount, Timestamp::now());
    let transaction_id = format!("tx_{}", random_hex(10));
    let intent_json = serde_json::to_string(&intent).unwrap_or_default();
    lock(&app.store).record_spend(&id, agent, &intent_json, &amount.to_string(), None, &transaction_id, &now_text())?;
    if let Some(k) = &key {
        lock(&app.store).remember_payment(agent, k, &id)?;
    }
    Ok(json!({"paymentId": id, "transactionId": transaction_id, "amount": amount, "status": "RECORDED"}))
}

fn resource(rail: &Rail) -> Option<&str> {
    match rail {
        Rail::X402 { resource_url, .. } | Rail::Mpp { resource_url, .. } => Some(resource_url),
        _ => None,
    }
}

/// The oldest live pre-authorization of `agent` that `intent` (a record without an
/// authorization id) settles.
fn matching_preauthorization(app: &App, agent: &str, intent: &PaymentIntent) -> Result<Option<String>, ApiError> {
    let now = Timestamp::now();
    let mut candidates: Vec<(Timestamp, String)> = lock(&app.store)
        .live_approvals(Some(agent))?
        .into_iter()
        .filter_map(|(id, row)| {
            let a = row.authorization(&id).ok()?;
            let same = a.intent.rail.name() == intent.rail.name()
                && resource(&a.intent.rail) == resource(&intent.rail)
                && a.intent.recipient == intent.recipient
                && intent.amount <= a.amount
                && a.expires_at > now;
            same.then_some((a.expires_at, id))
        })
        .collect();
    candidates.sort();
    Ok(candidates.into_iter().next().map(|(_, id)| id))
}

async fn record(
    app: Arc<App>,
    headers: HeaderMap,
    body: Bytes,
    kind: Kind,
    endpoint: &str,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "payments:request", "payments")?;
    let body = json_body(&body)?;
    let (status, out) = once(&app, &caller, endpoint, &headers, &body, || {
        let payments: Vec<Value> = match body.get("payments") {
            Some(Value::Array(items)) if kind == Kind::X402 => items.clone(),
            Some(_) => return Err(bad("VALIDATION_ERROR", "`payments` must be an array of x402 payments")),
            None => vec![body.clone()],
        };
        if payments.is_empty() {
            return Err(bad("VALIDATION_ERROR", "`payments` is empty"));
        }
        let mut results = Vec::with_capacity(payments.len());
        for p in &payments {
            results.push(record_one(&app, &caller.agent, p, kind)?);
        }
        Ok((StatusCode::OK, json!({"recorded": results.len(), "payments": results})))
    })?;
    Ok(reply(&caller, status, out))
}

async fn record_x402(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    record(app, headers, body, Kind::X402, "x402/record").await
}

async fn record_mpp(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    record(app, headers, body, Kind::Mpp, "mpp/record").await
}

async fn policies(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "policies:read", "reads")?;
    let mine: Vec<Value> = lock(&app.store)
        .policies()?
        .into_iter()
        .filter(|p| {
            let ids: Vec<&str> =
                p["agentIds"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            let linked: Vec<&str> = p["agentPolicies"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x["agentId"].as_str()).collect())
                .unwrap_or_default();
            p["scope"] == json!("all")
                || (ids.is_empty() && linked.is_empty())
                || ids.contains(&caller.agent.as_str())
                || linked.contains(&caller.agent.as_str())
        })
        .collect();
    Ok(reply(&caller, StatusCode::OK, json!({"policies": mine})))
}

fn request_json(r: &RequestRecord, token: Option<&secrecy::SecretString>, payment_request: Option<String>) -> Value {
    let intent: Value = serde_json::from_str(&r.intent).unwrap_or(Value::Null);
    let mut out = Map::new();
    out.insert("approvalRequestId".into(), json!(r.id));
    out.insert("type".into(), json!("payment"));
    out.insert("status".into(), json!(r.status));
    out.insert("expiresAt".into(), json!(r.expires_at));
    out.insert("amount".into(), intent["amount"].clone());
    out.insert("recipientAddress".into(), intent["recipientAddress"].clone());
    if let Some(id) = &r.approval_id {
        out.insert("approvalId".into(), json!(id));
        out.insert("authorizationId".into(), json!(id));
        out.insert("requestId".into(), json!(id));
    }
    if let Some(token) = token {
        out.insert("approvalToken".into(), json!(secrecy::ExposeSecret::expose_secret(token)));
    }
    if let Some(payment_request) = payment_request {
        out.insert("paymentRequestId".into(), json!(payment_request));
    }
    Value::Object(out)
}

async fn approval_requests(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "payments:request", "reads")?;
    let now = Timestamp::now();
    let tokens = lock(&app.approval_tokens);
    let requests = lock(&app.store).requests(Some(&caller.agent))?;
    let payment_requests = lock(&app.store).payment_requests_by_approval(&caller.agent)?;
    let list: Vec<Value> = requests
        .iter()
        .map(|r| {
            let payment_request = payment_requests.get(&r.id).cloned();
            let mut v = request_json(r, tokens.get(&r.id), payment_request);
            if r.status == "PENDING" && r.expires_at.parse::<Timestamp>().is_ok_and(|t| t <= now) {
                v["status"] = json!("EXPIRED");
            }
            v
        })
        .collect();
    Ok(reply(&caller, StatusCode::OK, json!({"requests": list})))
}

/// `GET /api/sdk/x402/services`: the x402 services this agent has paid, with totals.
async fn x402_services(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "analytics:read", "reads")?;
    let mut services: std::collections::BTreeMap<String, (conto_core::Decimal, u64, String)> = Default::default();
    for (agent, intent, amount, at) in lock(&app.store).spends()? {
        let Ok(intent) = serde_json::from_str::<PaymentIntent>(&intent) else { continue };
        let (true, Rail::X402 { service_domain, .. }) = (agent == caller.agent, &intent.rail) else { continue };
        let amount: conto_core::Decimal = amount.parse().unwrap_or_default();
        let entry = services.entry(service_domain.clone()).or_default();
        entry.0 += amount;
        entry.1 += 1;
        entry.2 = at;
    }
    let list: Vec<Value> = services
        .into_iter()
        .map(|(domain, (total, count, last))| {
            json!({"serviceDomain": domain, "totalSpent": total.normalize().to_string().parse::<Value>().unwrap_or(Value::Null),
                "paymentCount": count, "lastPaymentAt": last})
        })
        .collect();
    Ok(reply(&caller, StatusCode::OK, json!({"services": list})))
}

async fn budget(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "analytics:read", "reads")?;
    let usage = app.engine.usage(&caller.agent);
    let counters: Vec<Value> = usage
        .counters
        .iter()
        .map(|c| json!({"period": c.period, "scope": c.scope, "timeZone": c.time_zone, "since": c.period_start.to_string(), "spent": c.spent.to_string(), "reserved": c.reserved.to_string()}))
        .collect();
    Ok(reply(
        &caller,
        StatusCode::OK,
        json!({"agentId": caller.agent, "counters": counters, "totalSpent": usage.stats.total_spent.to_string()}),
    ))
}

/// A human's decision on a pending request (org endpoint).
pub(crate) fn decide_request(app: &App, id: &str, approve: bool) -> Result<Value, ApiError> {
    let mut request = lock(&app.store)
        .requests(None)?
        .into_iter()
        .find(|r| r.id == id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no approval request `{id}`")))?;
    if request.status != "PENDING" {
        return Err(bad("INVALID_STATUS", format!("approval request `{id}` is {}", request.status)));
    }
    app.engine
        .resolve_approval(id, approve)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", e.to_string()))?;
    let decision =
        app.engine.approval(id).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", e.to_string()))?;
    match decision.map(|d| d.verdict) {
        Some(Verdict::Approved(a)) => {
            lock(&app.store)
                .add_approval(&a.id, &ApprovalRecord::live(&request.agent_id, request.intent.clone(), &a))?;
            // Only the token's hash is stored; the token itself waits in memory for the agent.
            if let Some(token) = a.token.clone() {
                lock(&app.approval_tokens).insert(request.id.clone(), token);
            }
            request.status = "APPROVED".into();
            request.approval_id = Some(a.id);
            request.approval_token = None;
            request.expires_at = a.expires_at.to_string();
        }
        _ => request.status = "REJECTED".into(),
    }
    lock(&app.store).put_request(&request)?;
    Ok(json!({"approvalRequestId": id, "status": request.status}))
}
