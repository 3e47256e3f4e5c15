//! Budget requests: an agent asks a human for an allowance (`POST /api/sdk/budget-request`),
//! a human approves or rejects it (`POST /api/budget-requests/{id}/approve|reject`), and an
//! approved budget is a further gate on the agent's payments until its window ends: a payment
//! must fit both the agent's policies and what is left of the budget.
//!
//! One active request per agent (`PENDING`, or `APPROVED` with money left in its window): a
//! second is refused with `409 BUDGET_REQUEST_EXISTS`. A request nobody answers lapses after 24
//! hours; an approved one runs for 24 hours unless the human names another window.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use conto_core::jiff::{SignedDuration, Timestamp};
use conto_core::{Amount, Decimal, Denial, Violation, ViolationType};
use conto_wire::sdk::{BudgetRequest, BudgetRequestBody, BudgetRequests, read_body};
use serde::Deserialize;
use serde_json::Value;

use crate::rate::Class;
use crate::sdk::{bad, body_error, caller, reply};
use crate::store::{Store, StoreError};
use crate::{ApiError, App, iso, lock, random_hex};

/// How long a request waits for a human's answer.
const PENDING_FOR: SignedDuration = SignedDuration::from_hours(24);
/// An approved budget's window, unless the human names another.
const DEFAULT_WINDOW_HOURS: i64 = 24;

/// The request as it stands at `now`: lapsed or spent in full, what was spent under it since
/// its approval, and what is left.
fn as_of(store: &Store, mut r: BudgetRequest, now: Timestamp) -> Result<BudgetRequest, StoreError> {
    let lapsed = r.expires_at.parse::<Timestamp>().is_ok_and(|t| t <= now);
    let (Some(approved), Some(since)) = (r.approved_amount, r.approved_at.as_deref()) else {
        if r.status == "PENDING" && lapsed {
            r.status = "EXPIRED".into();
        }
        return Ok(r);
    };
    let since: Timestamp = since.parse().unwrap_or(now);
    let until: Timestamp = r.expires_at.parse().unwrap_or(now);
    let spent = store.spent_between(&r.agent_id, since, until)?;
    r.current_spend = Some(spent);
    r.remaining = Some((approved.get() - spent).max(Decimal::ZERO));
    if r.status == "APPROVED" {
        if lapsed {
            r.status = "EXPIRED".into();
        } else if spent >= approved.get() {
            r.status = "EXHAUSTED".into();
        }
    }
    Ok(r)
}

/// The agent's requests as they stand now, newest first.
fn requests_of(store: &Store, agent: Option<&str>, now: Timestamp) -> Result<Vec<BudgetRequest>, StoreError> {
    store.budget_requests(agent)?.into_iter().map(|r| as_of(store, r, now)).collect()
}

/// What an approved budget lets `agent` pay: `Some(denial)` when a payment of `amount`, beside
/// what was spent under the budget and what the agent's live approvals hold, would pass the
/// approved amount. The budget that governs is the latest approved one whose window has not
/// ended, spent in full or not (a budget spent in full denies until its window ends).
pub(crate) fn gate(store: &Store, agent: &str, amount: Amount, now: Timestamp) -> Result<Option<Denial>, StoreError> {
    // The latest approved request; lapsed, it governs nothing (and no older one does).
    let Some(latest) = store.latest_budget_request(agent, Some("APPROVED"))? else {
        return Ok(None);
    };
    let budget = as_of(store, latest, now)?;
    if budget.status == "EXPIRED" {
        return Ok(None);
    }
    let approved = budget.approved_amount.map_or(Decimal::ZERO, Amount::get);
    // Live approvals hold their amount until recorded or lapsed (older ones too: erring on the
    // side of spent).
    let held: Decimal = store
        .live_approvals(Some(agent))?
        .iter()
        .filter(|(_, a)| a.expires_at.parse::<Timestamp>().is_ok_and(|t| t > now))
        .filter_map(|(_, a)| a.amount.parse::<Decimal>().ok())
        .sum();
    let used = budget.current_spend.unwrap_or_default() + held;
    if used + amount.get() <= approved {
        return Ok(None);
    }
    let message = format!(
        "Budget request {} approved {approved}; {used} is spent or held, and this {amount} would exceed it",
        budget.id
    );
    Ok(Some(Denial {
        reasons: vec![message.clone()],
        violations: vec![Violation {
            kind: ViolationType::BudgetExceeded,
            limit: Some(approved),
            current: Some(used),
            message: Some(message),
        }],
    }))
}

/// `POST /api/sdk/budget-request` (`payments:request`): `{amount, purpose, category?,
/// metadata?}` → `201` and the request, `PENDING`.
pub(crate) async fn create(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "payments:request", Class::Payments)?;
    let body: BudgetRequestBody = read_body(&body).map_err(body_error)?;
    let amount = body.amount.ok_or_else(|| bad("VALIDATION_ERROR", "`amount` is required"))?;
    let blank = |name: &str| bad("VALIDATION_ERROR", format!("`{name}` must be a non-empty string"));
    let purpose = body.purpose.ok_or_else(|| bad("VALIDATION_ERROR", "`purpose` is required"))?;
    if purpose.trim().is_empty() {
        return Err(blank("purpose"));
    }
    if body.category.as_deref().is_some_and(|c| c.trim().is_empty()) {
        return Err(blank("category"));
    }
    let (category, metadata) = (body.category, body.metadata.map(Value::Object));
    let now = Timestamp::now();
    let store = lock(&app.store);
    // Only the latest request can be active: one is made only when none is, and a request
    // that lapsed or was spent in full stays so.
    let latest = store.latest_budget_request(&caller.agent, None)?.map(|r| as_of(&store, r, now)).transpose()?;
    if let Some(active) = latest.filter(|r| matches!(r.status.as_str(), "PENDING" | "APPROVED")) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "BUDGET_REQUEST_EXISTS",
            format!("budget request {} is {}: one active budget request per agent", active.id, active.status),
        ));
    }
    let request = BudgetRequest {
        id: format!("breq_{}", random_hex(12)),
        agent_id: caller.agent.clone(),
        amount,
        purpose,
        category,
        metadata,
        status: "PENDING".into(),
        approved_amount: None,
        current_spend: None,
        remaining: None,
        created_at: iso(now),
        expires_at: iso(now.saturating_add(PENDING_FOR).unwrap_or(now)),
        approved_at: None,
        reviewed_at: None,
        rejection_reason: None,
    };
    store.put_budget_request(&request)?;
    Ok(reply(StatusCode::CREATED, request))
}

/// The filters of a list read.
#[derive(Deserialize)]
pub(crate) struct ListQuery {
    id: Option<String>,
    status: Option<String>,
    #[serde(rename = "agentId")]
    agent_id: Option<String>,
}

fn listed(
    store: &Store,
    agent: Option<&str>,
    query: &ListQuery,
    now: Timestamp,
) -> Result<Vec<BudgetRequest>, ApiError> {
    if let Some(status) = &query.status
        && !matches!(status.as_str(), "PENDING" | "APPROVED" | "REJECTED" | "EXPIRED" | "EXHAUSTED")
    {
        return Err(bad(
            "VALIDATION_ERROR",
            format!("`status` `{status}` is not one of PENDING, APPROVED, REJECTED, EXPIRED, EXHAUSTED"),
        ));
    }
    Ok(requests_of(store, agent, now)?
        .into_iter()
        .filter(|r| query.id.as_ref().is_none_or(|id| &r.id == id))
        .filter(|r| query.status.as_ref().is_none_or(|s| &r.status == s))
        .collect())
}

/// `GET /api/sdk/budget-request?id=&status=` (`payments:request`): the caller's requests, newest
/// first; with `id`, that one request (`404` if it is not the caller's).
pub(crate) async fn list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: axum::extract::Query<ListQuery>,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "payments:request", Class::Reads)?;
    let found = listed(&lock(&app.store), Some(&caller.agent), &query, Timestamp::now())?;
    match &query.id {
        Some(id) => one(found, id),
        None => Ok(reply(StatusCode::OK, BudgetRequests { budget_requests: found })),
    }
}

/// `GET /api/sdk/budget-request/{id}` (`payments:request`): one of the caller's requests.
pub(crate) async fn get(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = caller(&app, &headers, "payments:request", Class::Reads)?;
    let query = ListQuery { id: Some(id.clone()), status: None, agent_id: None };
    one(listed(&lock(&app.store), Some(&caller.agent), &query, Timestamp::now())?, &id)
}

fn one(found: Vec<BudgetRequest>, id: &str) -> Result<Response, ApiError> {
    let request = found
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no budget request `{id}`")))?;
    Ok(reply(StatusCode::OK, request))
}

/// `GET /api/budget-requests?agentId=&status=` (org key): every agent's requests, newest first.
pub(crate) async fn org_list(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: axum::extract::Query<ListQuery>,
) -> Result<Response, ApiError> {
    crate::org(&app, &headers)?;
    let found = listed(&lock(&app.store), query.agent_id.as_deref(), &query, Timestamp::now())?;
    Ok(reply(StatusCode::OK, BudgetRequests { budget_requests: found }))
}

/// A human's answer: `approve` takes `{approvedAmount?, windowHours?}` (the asked amount and
/// 24 hours by default), `reject` takes `{reason?}`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Answer {
    #[serde(default, deserialize_with = "Amount::deserialize_rounded_up")]
    approved_amount: Option<Amount>,
    window_hours: Option<i64>,
    reason: Option<String>,
}

/// `POST /api/budget-requests/{id}/approve|reject` (org key): a human's answer to a `PENDING`
/// request.
pub(crate) async fn decide(
    State(app): State<Arc<App>>,
    Path((id, verdict)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    crate::org(&app, &headers)?;
    let approve = match verdict.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "use /approve or /reject")),
    };
    let answer: Answer = if body.iter().all(u8::is_ascii_whitespace) {
        Answer::default()
    } else {
        read_body(&body).map_err(body_error)?
    };
    let now = Timestamp::now();
    let store = lock(&app.store);
    let request = store
        .budget_request(&id)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no budget request `{id}`")))?;
    let current = as_of(&store, request.clone(), now)?;
    if current.status != "PENDING" {
        return Err(bad("INVALID_STATUS", format!("budget request `{id}` is {}", current.status)));
    }
    let mut request = request;
    request.reviewed_at = Some(iso(now));
    if approve {
        let approved = answer.approved_amount.unwrap_or(request.amount);
        let hours = answer.window_hours.unwrap_or(DEFAULT_WINDOW_HOURS);
        if !(1..=24 * 366).contains(&hours) {
            return Err(bad("VALIDATION_ERROR", format!("`windowHours` must be 1 to 8784, not {hours}")));
        }
        request.status = "APPROVED".into();
        request.approved_amount = Some(approved);
        request.approved_at = Some(iso(now));
        request.expires_at = iso(now.saturating_add(SignedDuration::from_hours(hours)).unwrap_or(now));
    } else {
        request.status = "REJECTED".into();
        request.rejection_reason = answer.reason.filter(|r| !r.trim().is_empty());
    }
    store.put_budget_request(&request)?;
    let answered = as_of(&store, request, now)?;
    Ok(reply(StatusCode::OK, answered))
}
