//! [`ProductControls`]: the spend controls a product exposes per actor, mapped to Conto's
//! policy types (the hybrid guide's mapping), for Conto's Policies API and the embedded engine
//! alike.

use serde_json::{Value, json};

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
    /// Conto's spelling: `DAILY`, `WEEKLY`, `MONTHLY` or `TOTAL`.
    pub fn name(self) -> &'static str {
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
