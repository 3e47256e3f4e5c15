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
use conto_core::Address;
use serde_json::{Value, json};

use crate::{ApiError, App, agent_store, json_body, lock, now_text, org, random_hex, reload_policies};

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/api/organizations/me/members", get(members))
        .route("/api/counterparties", get(list_counterparties).post(create_counterparty))
        .route("/api/counterparties/{id}", delete(delete_counterparty))
        .route("/api/agents/{agent_id}/wallets", get(list_wallets).post(delegate_wallet))
        .route("/api/agents/{agent_id}/wallets/{wallet_id}", patch(patch_wallet))
        .route("/api/agents/{agent_id}/policies", get(agent_policies))
}

/// conto-local's organization has one member, its owner.
async fn members(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    Ok(axum::Json(json!({"members": [
        {"id": "mem_owner", "role": "OWNER", "name": "conto-local owner", "email": "owner@localhost", "status": "ACTIVE"}
    ]}))
    .into_response())
}

async fn create_counterparty(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let mut doc = json_body(&body)?;
    let map = doc
        .as_object_mut()
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "a counterparty is a JSON object"))?;
    if map.get("name").and_then(Value::as_str).is_none_or(|n| n.trim().is_empty()) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "`name` is required"));
    }
    if let Some(address) = map.get("address").and_then(Value::as_str) {
        let canonical = Address::parse(address)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_ADDRESS", e.to_string()))?;
        map.insert("address".into(), json!(canonical.as_str()));
    }
    let id = format!("cp_{}", random_hex(10));
    map.insert("id".into(), json!(id));
    map.insert("createdAt".into(), json!(now_text()));
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
    let limit = query.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(50).min(500);
    let hits: Vec<Value> = lock(&app.store)
        .counterparties()?
        .into_iter()
        .filter(|c| {
            search.is_empty()
                || ["name", "address"]
                    .iter()
                    .any(|k| c[*k].as_str().is_some_and(|v| v.to_ascii_lowercase().contains(&search)))
        })
        .take(limit)
        .collect();
    Ok(axum::Json(json!({"counterparties": hits})).into_response())
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
    Ok(axum::Json(json!({"deleted": true, "id": id})).into_response())
}

const LIMIT_FIELDS: [&str; 4] = ["spendLimitPerTx", "spendLimitDaily", "spendLimitWeekly", "spendLimitMonthly"];

/// Checks the limit fields of a delegation: positive numbers, or absent.
fn check_limits(doc: &Value) -> Result<(), ApiError> {
    for field in LIMIT_FIELDS {
        match doc.get(field) {
            None | Some(Value::Null) => {}
            Some(v) if v.as_f64().is_some_and(|n| n > 0.0) => {}
            Some(_) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_ERROR",
                    format!("`{field}` must be a positive number"),
                ));
            }
        }
    }
    Ok(())
}

/// `POST /api/agents/{id}/wallets`: delegates a wallet to the agent with spend limits, which
/// the engine enforces as the agent's per-transaction, daily, weekly and monthly limits.
async fn delegate_wallet(
    State(app): State<Arc<App>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let mut doc = json_body(&body)?;
    check_limits(&doc)?;
    let wallet_id = doc
        .get("walletId")
        .and_then(Value::as_str)
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", "`walletId` is required"))?;
    let store = agent_store(&app, &agent_id)?;
    if let Some(map) = doc.as_object_mut() {
        map.insert("agentId".into(), json!(agent_id));
        map.insert("id".into(), json!(format!("aw_{}", random_hex(8))));
    }
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
    let patch = json_body(&body)?;
    check_limits(&patch)?;
    let store = lock(&app.store);
    let mut doc =
        store.wallets(Some(&agent_id))?.into_iter().find(|w| w["walletId"] == wallet_id.as_str()).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no wallet `{wallet_id}` for `{agent_id}`"))
        })?;
    if let (Some(map), Some(changes)) = (doc.as_object_mut(), patch.as_object()) {
        for (k, v) in changes {
            if k != "agentId" && k != "walletId" && k != "id" {
                map.insert(k.clone(), v.clone());
            }
        }
    }
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
    let wallets = lock(&app.store).wallets(Some(&agent_id))?;
    let usage = app.engine.usage(&agent_id);
    let spent = |period: &str| {
        usage
            .counters
            .iter()
            .filter(|c| c.period == period && c.scope == "agent")
            .map(|c| c.spent)
            .max()
            .unwrap_or_default()
            .normalize()
            .to_string()
            .parse::<Value>()
            .unwrap_or(Value::Null)
    };
    let wallets: Vec<Value> = wallets
        .into_iter()
        .map(|mut w| {
            if let Some(map) = w.as_object_mut() {
                map.insert("spentToday".into(), json!(spent("daily")));
                map.insert("spentThisWeek".into(), json!(spent("weekly")));
                map.insert("spentThisMonth".into(), json!(spent("monthly")));
            }
            w
        })
        .collect();
    Ok(axum::Json(json!({"wallets": wallets})).into_response())
}

/// `GET /api/agents/{id}/policies`: the policies assigned to the agent.
async fn agent_policies(
    State(app): State<Arc<App>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    org(&app, &headers)?;
    let store = agent_store(&app, &agent_id)?;
    let assigned: Vec<Value> = store
        .policies()?
        .into_iter()
        .filter(|p| p["agentIds"].as_array().is_some_and(|ids| ids.iter().any(|i| i == agent_id.as_str())))
        .map(|p| json!({"policyId": p["id"], "policy": p}))
        .collect();
    Ok(axum::Json(json!({"policies": assigned})).into_response())
}

/// The policies a wallet delegation's spend limits stand for, assigned to its agent.
pub(crate) fn wallet_policies(wallets: &[Value]) -> Vec<Value> {
    let rules = [
        ("spendLimitPerTx", "MAX_AMOUNT"),
        ("spendLimitDaily", "DAILY_LIMIT"),
        ("spendLimitWeekly", "WEEKLY_LIMIT"),
        ("spendLimitMonthly", "MONTHLY_LIMIT"),
    ];
    wallets
        .iter()
        .filter_map(|w| {
            let agent = w["agentId"].as_str()?;
            let wallet = w["walletId"].as_str()?;
            let rules: Vec<Value> = rules
                .iter()
                .filter_map(|(field, rule)| {
                    let limit = w.get(*field)?.as_f64()?;
                    Some(json!({"ruleType": rule, "operator": "LTE", "value": limit.to_string(), "action": "ALLOW"}))
                })
                .collect();
            (!rules.is_empty()).then(|| {
                json!({"name": format!("wallet {wallet} limits for {agent}"), "policyType": "SPEND_LIMIT",
                    "priority": 100, "agentIds": [agent], "rules": rules})
            })
        })
        .collect()
}
