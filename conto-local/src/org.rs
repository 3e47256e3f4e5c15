//! The org surface Conto's hybrid starter provisions through: members, counterparties, an
//! agent's wallet delegations (their spend limits are enforced as limits) and its policies.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch};
use conto_core::jiff::civil::{Date, Time};
use conto_core::jiff::tz::TimeZone;
use conto_core::jiff::{self, SignedDuration, Timestamp};
use conto_core::{Address, Decimal};
use conto_wire::org::{
    AgentWallet, AssignedPolicies, AssignedPolicy, Counterparties, Counterparty, Deleted, Member, Members, Policy,
    Rule, SdkKeys, Wallets,
};
use serde_json::Value;

use crate::store::KeyRow;
use crate::{ApiError, App, agent_store, json_body, lock, now_text, org, random_hex, reload_policies};

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/organizations/me/members", get(members))
        .route("/api/counterparties", get(list_counterparties).post(create_counterparty))
        .route("/api/counterparties/{id}", delete(delete_counterparty))
        .route("/api/agents/{agent_id}/wallets", get(list_wallets).post(delegate_wallet))
        .route("/api/agents/{agent_id}/wallets/{wallet_id}", patch(patch_wallet))
        .route("/api/agents/{agent_id}/policies", get(agent_policies))
        .route("/api/wallets", get(org_wallets))
        .route("/api/api-keys", get(org_keys))
}

/// `GET /api/wallets`: every wallet delegation in the organization, each naming its agent.
async fn org_wallets(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let wallets = lock(&app.store).wallets(None)?;
    Ok(axum::Json(Wallets { wallets }).into_response())
}

/// `GET /api/api-keys`: every agent's SDK keys (never the key itself), each naming its agent.
async fn org_keys(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let keys = lock(&app.store).keys_of(None)?.into_iter().map(KeyRow::listed).collect();
    Ok(axum::Json(SdkKeys::Wrapped { keys }).into_response())
}

/// conto-local's organization has one member, its owner.
async fn members(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let owner = Member {
        id: "mem_owner".into(),
        role: "OWNER".into(),
        name: "conto-local owner".into(),
        email: "owner@localhost".into(),
        status: "ACTIVE".into(),
    };
    Ok(axum::Json(Members { members: vec![owner] }).into_response())
}

async fn create_counterparty(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let mut doc: Counterparty = json_body(&body)?;
    if doc.name.as_deref().is_none_or(|n| n.trim().is_empty()) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "`name` is required"));
    }
    if let Some(address) = &doc.address {
        let canonical = Address::parse(address)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_ADDRESS", e.to_string()))?;
        doc.address = Some(canonical.as_str().to_owned());
    }
    let id = format!("cp_{}", random_hex(10));
    doc.id = Some(id.clone());
    doc.created_at = Some(now_text());
    lock(&app.store).put_counterparty(&id, &doc)?;
    Ok((StatusCode::CREATED, axum::Json(doc)).into_response())
}

/// `GET /api/counterparties?search=&limit=`: a case-insensitive match on name or address.
async fn list_counterparties(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let search = query.get("search").map(|s| s.to_ascii_lowercase()).unwrap_or_default();
    let limit = match query.get("limit") {
        None => 50,
        Some(l) => l.parse::<usize>().ok().filter(|n| (1..=500).contains(n)).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "`limit` must be a whole number from 1 to 500")
        })?,
    };
    let counterparties = lock(&app.store)
        .counterparties()?
        .into_iter()
        .filter(|c| {
            search.is_empty()
                || [&c.name, &c.address]
                    .into_iter()
                    .any(|v| v.as_deref().is_some_and(|v| v.to_ascii_lowercase().contains(&search)))
        })
        .take(limit)
        .collect();
    Ok(axum::Json(Counterparties { counterparties }).into_response())
}

async fn delete_counterparty(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    if !lock(&app.store).delete_counterparty(&id)? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no counterparty `{id}`")));
    }
    Ok(axum::Json(Deleted { deleted: true, id }).into_response())
}

/// Checks the limit fields of a delegation: positive, or absent.
fn check_limits(doc: &AgentWallet) -> Result<(), ApiError> {
    for (field, _, limit) in doc.limits() {
        if limit.is_some_and(|l| l <= Decimal::ZERO) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                format!("`{field}` must be a positive number"),
            ));
        }
    }
    Ok(())
}

/// `POST /api/agents/{id}/wallets`: delegates a wallet to the agent with spend limits, which
/// the engine enforces as the agent's per-transaction, daily, weekly and monthly limits, and
/// with the hours and days it may pay in.
async fn delegate_wallet(
    State(app): State<Arc<App>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let mut doc: AgentWallet = json_body(&body)?;
    check_limits(&doc)?;
    check_schedule(&doc)?;
    let wallet_id = doc
        .wallet_id
        .clone()
        .filter(|w| !w.is_empty())
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "`walletId` is required"))?;
    let store = agent_store(&app, &agent_id)?;
    doc.agent_id = Some(agent_id.clone());
    doc.id = Some(format!("aw_{}", random_hex(8)));
    store.put_wallet(&agent_id, &wallet_id, &doc)?;
    reload_policies(&app, &store)?;
    Ok((StatusCode::CREATED, axum::Json(doc)).into_response())
}

async fn patch_wallet(
    State(app): State<Arc<App>>,
    Path((agent_id, wallet_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let patch: AgentWallet = json_body(&body)?;
    check_limits(&patch)?;
    let store = agent_store(&app, &agent_id)?;
    let mut doc = store
        .wallets(Some(&agent_id))?
        .into_iter()
        .find(|w| w.wallet_id.as_deref() == Some(wallet_id.as_str()))
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no wallet `{wallet_id}` for `{agent_id}`"))
        })?;
    doc.apply(patch);
    check_schedule(&doc)?;
    store.put_wallet(&agent_id, &wallet_id, &doc)?;
    reload_policies(&app, &store)?;
    Ok(axum::Json(doc).into_response())
}

/// `GET /api/agents/{id}/wallets`: the delegations with what the agent spent in each period.
async fn list_wallets(
    State(app): State<Arc<App>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    // A deleted agent's delegations are not shown (its history stays, under its retired id).
    drop(agent_store(&app, &agent_id)?);
    Ok(axum::Json(agent_wallets(&app, &agent_id)?).into_response())
}

/// An agent's wallet delegations, each with what the agent spent today, this week (from
/// Monday) and this month, in UTC as the delegations' own hours are (the org's read, and the
/// agent's own `GET /api/sdk/wallets`): its recorded spends, whether or not a limit counts them.
/// A calendar computation that cannot fail for the present time.
fn internal(e: jiff::Error) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", e.to_string())
}

pub(crate) fn agent_wallets(app: &App, agent_id: &str) -> Result<Wallets, ApiError> {
    let store = lock(&app.store);
    let wallets = store.wallets(Some(agent_id))?;
    if wallets.is_empty() {
        return Ok(Wallets { wallets });
    }
    let now = Timestamp::now();
    let date = TimeZone::UTC.to_datetime(now).date();
    let offset = i64::from(date.weekday().to_monday_zero_offset());
    let monday = date.checked_sub(SignedDuration::from_hours(24 * offset)).map_err(internal)?;
    let midnight = |d: Date| TimeZone::UTC.to_timestamp(d.to_datetime(Time::midnight())).map_err(internal);
    let (today, week, month) = (midnight(date)?, midnight(monday)?, midnight(date.first_of_month())?);
    // Until just after now: a spend recorded in this very millisecond counts.
    let until = now.checked_add(SignedDuration::from_millis(1)).unwrap_or(now);
    let spent = |since: Timestamp| -> Result<Option<Decimal>, ApiError> {
        Ok(Some(store.spent_between(agent_id, since, until)?.normalize()))
    };
    let (day, week, month) = (spent(today)?, spent(week)?, spent(month)?);
    let wallets = wallets
        .into_iter()
        .map(|mut w| {
            w.spent_today = day;
            w.spent_this_week = week;
            w.spent_this_month = month;
            w
        })
        .collect();
    Ok(Wallets { wallets })
}

/// `GET /api/agents/{id}/policies`: the policies assigned to the agent.
async fn agent_policies(
    State(app): State<Arc<App>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let store = agent_store(&app, &agent_id)?;
    let policies = store
        .policies()?
        .into_iter()
        .filter(|p| p.assigned().any(|a| a == agent_id))
        .map(|policy| AssignedPolicy { policy_id: policy.id.clone(), policy: crate::shown(policy) })
        .collect();
    Ok(axum::Json(AssignedPolicies { policies }).into_response())
}

/// The rules a delegation's hours and days stand for (conto-api.md §7.5: `allowedHoursStart`
/// and `allowedHoursEnd`, whole hours in UTC, and `allowedDays`, `Mon`..`Sun`, are enforced
/// with its limits): a `TIME_WINDOW` unless every hour is allowed (0 to 24; a start after the
/// end wraps midnight), a `DAY_OF_WEEK` when days are named. Checked whole, the rules compiled
/// as the engine will (a day name is one the `DAY_OF_WEEK` rule knows): an error says which
/// field is wrong.
fn schedule_rules(w: &AgentWallet) -> Result<Vec<Rule>, String> {
    let hour = |field: &str, default: u64, range: std::ops::RangeInclusive<u64>| match w.extra.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|h| range.contains(h))
            .ok_or_else(|| format!("`{field}` must be a whole hour {}-{}, not {v}", range.start(), range.end())),
    };
    let rule = |rule_type: &str, operator: &str, value: String| Rule {
        rule_type: Some(rule_type.to_owned()),
        operator: Some(operator.to_owned()),
        value: Some(value.into()),
        action: Some("ALLOW".to_owned()),
        ..Rule::default()
    };
    let mut rules = Vec::new();
    let (start, end) = (hour("allowedHoursStart", 0, 0..=23)?, hour("allowedHoursEnd", 24, 1..=24)?);
    if (start, end) != (0, 24) {
        if start == end {
            return Err("`allowedHoursStart` and `allowedHoursEnd` must differ (0 and 24 allow every hour)".to_owned());
        }
        let window = serde_json::json!({"start": format!("{start:02}:00"), "end": format!("{end:02}:00")});
        rules.push(rule("TIME_WINDOW", "BETWEEN", window.to_string()));
    }
    match w.extra.get("allowedDays") {
        None | Some(Value::Null) => {}
        Some(Value::Array(days)) if !days.is_empty() && days.iter().all(Value::is_string) => {
            rules.push(rule("DAY_OF_WEEK", "IN_LIST", Value::Array(days.clone()).to_string()));
        }
        Some(v) => return Err(format!("`allowedDays` must list at least one day (`Mon`..`Sun`), not {v}")),
    }
    let probe = Policy { name: Some("wallet schedule".to_owned()), rules: Some(rules.clone()), ..Policy::default() };
    crate::compile(&[probe]).map_err(|e| e.message)?;
    Ok(rules)
}

/// Checks a delegation's hours and days before it is stored.
fn check_schedule(doc: &AgentWallet) -> Result<(), ApiError> {
    schedule_rules(doc).map(drop).map_err(|message| ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message))
}

/// The policies a wallet delegation's spend limits, hours and days stand for, assigned to its
/// agent.
pub(crate) fn wallet_policies(wallets: &[AgentWallet]) -> Vec<Policy> {
    wallets
        .iter()
        .filter_map(|w| {
            let agent = w.agent_id.as_deref()?;
            let wallet = w.wallet_id.as_deref()?;
            let mut rules: Vec<Rule> = w
                .limits()
                .into_iter()
                .filter_map(|(_, rule, limit)| {
                    Some(Rule {
                        rule_type: Some(rule.to_owned()),
                        operator: Some("LTE".to_owned()),
                        value: Some(limit?.normalize().to_string().into()),
                        action: Some("ALLOW".to_owned()),
                        ..Rule::default()
                    })
                })
                .collect();
            // Checked on every write; a delegation stored before hours and days were enforced
            // keeps its limits, and says why its schedule is not (a bad schedule never keeps
            // the server from loading its policies).
            match schedule_rules(w) {
                Ok(schedule) => rules.extend(schedule),
                Err(why) => tracing::warn!(agent, wallet, %why, "conto_local.wallet_schedule_ignored"),
            }
            (!rules.is_empty()).then(|| Policy {
                name: Some(format!("wallet {wallet} limits for {agent}")),
                policy_type: Some("SPEND_LIMIT".to_owned()),
                priority: Some(100.into()),
                agent_ids: Some(vec![agent.to_owned()]),
                rules: Some(rules),
                ..Policy::default()
            })
        })
        .collect()
}
