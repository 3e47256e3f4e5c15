//! Product controls → Conto policies, applied idempotently.
//!
//! The hybrid guide maps product controls to Conto's policy types; [`ProductControls`] is that
//! mapping, typed. [`sync_policies`] applies it to Conto's Policies API (or conto-local) with the
//! org key, diffing by policy name so a second run writes nothing; [`ProductControls::policy_set`]
//! applies the same policies to the embedded engine.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::{ClientError, check_url};
use crate::authorizer::AuthorityError;
use crate::money::Amount;
use crate::policy::{PolicyError, PolicySet};

/// A budget's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    /// Per calendar day.
    Daily,
    /// Per ISO week.
    Weekly,
    /// Per calendar month.
    Monthly,
    /// For the whole session or run (never resets).
    Total,
}

impl BudgetPeriod {
    fn name(self) -> &'static str {
        match self {
            BudgetPeriod::Daily => "DAILY",
            BudgetPeriod::Weekly => "WEEKLY",
            BudgetPeriod::Monthly => "MONTHLY",
            BudgetPeriod::Total => "TOTAL",
        }
    }
}

/// The controls a product exposes for one actor (a user, workspace, bot or run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductControls {
    /// Max per action → `SPEND_LIMIT` (`MAX_AMOUNT`).
    pub max_per_action: Option<Amount>,
    /// Budget per session or run → `BUDGET_ALLOCATION` (`BUDGET_CAP`).
    pub budget: Option<(Amount, BudgetPeriod)>,
    /// Allowed providers (recipient addresses) → `WHITELIST` (`ALLOWED_COUNTERPARTIES`).
    pub allowed_providers: Vec<String>,
    /// Review threshold → `APPROVAL_THRESHOLD` (`REQUIRE_APPROVAL_ABOVE`).
    pub review_above: Option<Amount>,
    /// Allowed hours, `("09:00", "18:00")` → `TIME_WINDOW`.
    pub allowed_hours: Option<(String, String)>,
    /// Blackouts `(start, end, reason)` → `BLACKOUT_PERIOD`.
    pub blackouts: Vec<(String, String, Option<String>)>,
    /// The IANA zone of the hours, blackouts and budget periods (UTC when `None`).
    pub time_zone: Option<String>,
}

impl ProductControls {
    /// The Conto policies these controls map to, named `"{prefix} · {control}"` and assigned
    /// to `agent_id`.
    pub fn policies(&self, prefix: &str, agent_id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut policy = |control: &str, policy_type: &str, priority: i64, rule: Value| {
            let mut p = json!({
                "name": format!("{prefix} · {control}"), "policyType": policy_type, "priority": priority,
                "isActive": true, "agentIds": [agent_id], "rules": [rule],
            });
            if let Some(tz) = &self.time_zone {
                p["timezone"] = json!(tz);
            }
            out.push(p);
        };
        let rule = |t: &str, op: &str, value: String, action: &str| json!({"ruleType": t, "operator": op, "value": value, "action": action});
        if let Some(max) = self.max_per_action {
            policy("max per action", "SPEND_LIMIT", 90, rule("MAX_AMOUNT", "LTE", max.to_string(), "ALLOW"));
        }
        if let Some((amount, period)) = self.budget {
            let value = json!({"amount": amount, "period": period.name()}).to_string();
            policy("budget", "BUDGET_ALLOCATION", 80, rule("BUDGET_CAP", "LTE", value, "ALLOW"));
        }
        if !self.allowed_providers.is_empty() {
            let value = json!(self.allowed_providers).to_string();
            policy("allowed providers", "WHITELIST", 70, rule("ALLOWED_COUNTERPARTIES", "IN_LIST", value, "ALLOW"));
        }
        if let Some((start, end)) = &self.allowed_hours {
            let value = json!({"start": start, "end": end}).to_string();
            policy("allowed hours", "TIME_WINDOW", 60, rule("TIME_WINDOW", "BETWEEN", value, "ALLOW"));
        }
        if !self.blackouts.is_empty() {
            let windows: Vec<Value> = self
                .blackouts
                .iter()
                .map(|(s, e, r)| json!({"start": s, "end": e, "reason": r, "recurring": true}))
                .collect();
            let value = json!({ "windows": windows }).to_string();
            policy("blackouts", "BLACKOUT_PERIOD", 60, rule("BLACKOUT_PERIOD", "BETWEEN", value, "DENY"));
        }
        if let Some(above) = self.review_above {
            let r = rule("REQUIRE_APPROVAL_ABOVE", "GT", above.to_string(), "REQUIRE_APPROVAL");
            policy("review threshold", "APPROVAL_THRESHOLD", 50, r);
        }
        out
    }

    /// The same policies compiled for the embedded engine (`Engine::set_policies`).
    pub fn policy_set(&self, prefix: &str, agent_id: &str) -> Result<PolicySet, PolicyError> {
        PolicySet::from_value(Value::Array(self.policies(prefix, agent_id)))
    }
}

/// A minimal client of Conto's org Policies API (org key). Counts the writes it sends.
#[derive(Clone)]
pub struct OrgClient {
    http: reqwest::Client,
    base: String,
    key: SecretString,
    writes: Arc<AtomicU64>,
}

impl std::fmt::Debug for OrgClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgClient").field("base", &self.base).field("key", &"[redacted]").finish()
    }
}

/// What a sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Policies created.
    pub created: u32,
    /// Policies updated.
    pub updated: u32,
    /// Policies deleted (owned by the prefix, no longer wanted).
    pub deleted: u32,
    /// Policies already as wanted.
    pub unchanged: u32,
}

impl OrgClient {
    /// A client for `base_url` (https except localhost) with the org key.
    pub fn new(base_url: &str, org_key: &str) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        check_url(&base)?;
        Ok(Self {
            http: reqwest::Client::new(),
            base,
            key: SecretString::from(org_key.to_owned()),
            writes: Arc::default(),
        })
    }

    /// How many writes (POST, PATCH, DELETE) this client has sent.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Result<Value, AuthorityError> {
        if method != reqwest::Method::GET {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(self.key.expose_secret());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| AuthorityError::Unreachable(e.without_url().to_string()))?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !(200..300).contains(&status) {
            let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            return Err(AuthorityError::Api { status, code: text("code"), message: text("message") });
        }
        Ok(body)
    }
}

/// The fields a sync compares (what a policy means, not server-side metadata).
fn essence(p: &Value) -> Value {
    let rules: Vec<Value> = p["rules"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| json!({"ruleType": r.get("ruleType").or_else(|| r.get("type")), "operator": r["operator"], "value": r["value"], "action": r["action"]}))
                .collect()
        })
        .unwrap_or_default();
    json!({"policyType": p["policyType"], "priority": p["priority"], "isActive": p["isActive"],
        "agentIds": p["agentIds"], "timezone": p["timezone"], "rules": rules})
}

/// Applies `controls` as the policies named `"{prefix} · …"`: creates the missing, updates the
/// changed, deletes the ones no longer wanted, and leaves everything else alone. A second run
/// with the same controls writes nothing.
pub async fn sync_policies(
    org: &OrgClient,
    controls: &ProductControls,
    prefix: &str,
    agent_id: &str,
) -> Result<SyncReport, AuthorityError> {
    let wanted = controls.policies(prefix, agent_id);
    let listed = org.send(reqwest::Method::GET, "/api/policies", None).await?;
    let existing: Vec<Value> =
        listed["policies"].as_array().or_else(|| listed["data"]["policies"].as_array()).cloned().unwrap_or_default();
    let owned = |p: &&Value| p["name"].as_str().is_some_and(|n| n.starts_with(&format!("{prefix} · ")));
    let mut report = SyncReport::default();
    for want in &wanted {
        match existing.iter().filter(owned).find(|p| p["name"] == want["name"]) {
            None => {
                org.send(reqwest::Method::POST, "/api/policies", Some(want)).await?;
                report.created += 1;
            }
            Some(have) if essence(have) == essence(want) => report.unchanged += 1,
            Some(have) => {
                let id = have["id"].as_str().unwrap_or_default();
                org.send(reqwest::Method::PATCH, &format!("/api/policies/{id}"), Some(want)).await?;
                report.updated += 1;
            }
        }
    }
    for have in existing.iter().filter(owned) {
        if !wanted.iter().any(|w| w["name"] == have["name"]) {
            let id = have["id"].as_str().unwrap_or_default();
            org.send(reqwest::Method::DELETE, &format!("/api/policies/{id}"), None).await?;
            report.deleted += 1;
        }
    }
    Ok(report)
}
