//! The organization API bodies (org API key): agents, SDK keys, policies and rules, members,
//! counterparties, wallet delegations. Documents a server stores as given keep the fields they
//! do not name in `extra`, so nothing a client sent is lost.

use conto_core::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An agent (`/api/agents`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Agent {
    /// Its id (a client may propose one on create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `ACTIVE`, `PAUSED` (or `SUSPENDED`, `REVOKED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// The same agent, in the wrapped form some deployments answer with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<Box<Agent>>,
}

impl Agent {
    /// The agent's id, wrapped or not.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref().or_else(|| self.agent.as_ref().and_then(|a| a.id.as_deref()))
    }

    /// The agent's status, wrapped or not.
    pub fn status(&self) -> Option<&str> {
        self.status.as_deref().or_else(|| self.agent.as_ref().and_then(|a| a.status.as_deref()))
    }
}

/// `GET /api/agents`: `{agents}`, `{data: {agents}}` or a bare array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Agents {
    /// `{agents}` (or `{data: {agents}}`).
    Wrapped {
        /// The agents.
        #[serde(default)]
        agents: Vec<Agent>,
        /// The wrapped form.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Box<Agents>>,
    },
    /// A bare array.
    Bare(Vec<Agent>),
}

impl Agents {
    /// Every agent listed.
    pub fn all(&self) -> Vec<&Agent> {
        match self {
            Agents::Wrapped { agents, data } => agents.iter().chain(data.iter().flat_map(|d| d.all())).collect(),
            Agents::Bare(agents) => agents.iter().collect(),
        }
    }
}

/// `PATCH /api/agents/{id}`: the fields given change, the others stay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentPatch {
    /// The new status: `ACTIVE` or `PAUSED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
    /// A new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What it is for, anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An SDK key (`/api/agents/{id}/sdk-keys`); `key` only in the answer that creates it.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SdkKey {
    /// Its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The agent it pays for (in lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The key itself: shown once, on creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The key's first characters, to recognise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `standard` or `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    /// What it may do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Create: days until it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<i64>,
    /// When it expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When it was revoked (`null` while it works).
    #[serde(default)]
    pub revoked_at: Option<String>,
    /// Create: a note for whoever holds the key (it is shown once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `GET /api/agents/{id}/sdk-keys`: `{keys}` or a bare array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SdkKeys {
    /// `{keys}`.
    Wrapped {
        /// The keys.
        keys: Vec<SdkKey>,
    },
    /// A bare array.
    Bare(Vec<SdkKey>),
}

impl SdkKeys {
    /// Every key listed.
    pub fn all(&self) -> &[SdkKey] {
        match self {
            SdkKeys::Wrapped { keys } | SdkKeys::Bare(keys) => keys,
        }
    }
}

/// `{deleted: true, id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// Always `true`.
    pub deleted: bool,
    /// What was deleted.
    pub id: String,
}

/// `{revoked: true, id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// Always `true`.
    pub revoked: bool,
    /// The key.
    pub id: String,
}

/// A member of the organization.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its id.
    pub id: String,
    /// `OWNER`, `ADMIN`, …
    pub role: String,
    /// Its name.
    pub name: String,
    /// Its email.
    pub email: String,
    /// `ACTIVE`.
    pub status: String,
}

/// `GET /api/organizations/me/members`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// The members.
    pub members: Vec<Member>,
}

/// A counterparty, as the client described it plus its id.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counterparty {
    /// Its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its name (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// When it was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Every other field, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GET /api/counterparties`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counterparties {
    /// The matches.
    pub counterparties: Vec<Counterparty>,
}

/// A wallet delegated to an agent, with its spend limits (`/api/agents/{id}/wallets`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentWallet {
    /// The delegation's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The wallet (required on create).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_id: Option<String>,
    /// The most per transaction.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::opt_number")]
    pub spend_limit_per_tx: Option<Decimal>,
    /// The most per day.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::opt_number")]
    pub spend_limit_daily: Option<Decimal>,
    /// The most per week.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::opt_number")]
    pub spend_limit_weekly: Option<Decimal>,
    /// The most per month.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::opt_number")]
    pub spend_limit_monthly: Option<Decimal>,
    /// Listing: spent today.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::opt_number")]
    pub spent_today: Option<Decimal>,
    /// Listing: spent this week.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::opt_number")]
    pub spent_this_week: Option<Decimal>,
    /// Listing: spent this month.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::opt_number")]
    pub spent_this_month: Option<Decimal>,
    /// Every other field, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl AgentWallet {
    /// The spend limits, each with the policy rule type that enforces it.
    pub fn limits(&self) -> [(&'static str, &'static str, Option<Decimal>); 4] {
        [
            ("spendLimitPerTx", "MAX_AMOUNT", self.spend_limit_per_tx),
            ("spendLimitDaily", "DAILY_LIMIT", self.spend_limit_daily),
            ("spendLimitWeekly", "WEEKLY_LIMIT", self.spend_limit_weekly),
            ("spendLimitMonthly", "MONTHLY_LIMIT", self.spend_limit_monthly),
        ]
    }

    /// Applies a patch: every limit it sets, and its other fields; never the ids.
    pub fn apply(&mut self, patch: AgentWallet) {
        let keep = |mine: &mut Option<Decimal>, theirs: Option<Decimal>| {
            if theirs.is_some() {
                *mine = theirs;
            }
        };
        keep(&mut self.spend_limit_per_tx, patch.spend_limit_per_tx);
        keep(&mut self.spend_limit_daily, patch.spend_limit_daily);
        keep(&mut self.spend_limit_weekly, patch.spend_limit_weekly);
        keep(&mut self.spend_limit_monthly, patch.spend_limit_monthly);
        self.extra.extend(patch.extra);
    }
}

/// `GET /api/agents/{id}/wallets`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Wallets {
    /// The delegations.
    pub wallets: Vec<AgentWallet>,
}

/// A policy rule: `{ruleType, operator, value, action}` (`type` is accepted for `ruleType`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Its id (servers assign one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `MAX_AMOUNT`, `DAILY_LIMIT`, …
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "type")]
    pub rule_type: Option<String>,
    /// `LTE`, `IN_LIST`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// The rule's value: always a string in Conto's format (lists and objects encoded in it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// `ALLOW`, `DENY`, `REQUIRE_APPROVAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Every other field, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One agent a policy is linked to (`agentPolicies`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentLink {
    /// The agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Every other field, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A policy (`/api/policies`, a policy file's entries): the fields servers act on are typed;
/// the rest is checked by the policy engine that compiles it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Its id (servers assign one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `SPEND_LIMIT`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_type: Option<String>,
    /// Higher first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Value>,
    /// Whether it applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_active: Option<Value>,
    /// The agents it is assigned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_ids: Option<Vec<String>>,
    /// The agents it is linked to, in the org API's long form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_policies: Option<Vec<AgentLink>>,
    /// `all`: every agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The time zone of its periods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Its rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule>>,
    /// Every other field, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Policy {
    /// The agents it is assigned to, in either form.
    pub fn assigned(&self) -> impl Iterator<Item = &str> {
        let ids = self.agent_ids.iter().flatten().map(String::as_str);
        ids.chain(self.agent_policies.iter().flatten().filter_map(|l| l.agent_id.as_deref()))
    }

    /// Whether it applies to `agent`: scoped to every agent (`scope: "all"`), assigned to it,
    /// or (as in a policy file) naming no agents at all without `scope: "assigned"`, which
    /// means every agent. A policy with `scope: "assigned"` and no agents, or with an empty
    /// `agentIds` or `agentPolicies` (an export's unassigned policy), applies to no one.
    pub fn applies_to(&self, agent: &str) -> bool {
        self.binds_every_agent() || self.assigned().any(|a| a == agent)
    }

    /// Whether it applies to every agent: `scope: "all"`, or (as in a policy file) naming no
    /// agents, neither `agentIds` nor `agentPolicies` given, without `scope: "assigned"`.
    pub fn binds_every_agent(&self) -> bool {
        match self.scope.as_deref() {
            Some(s) if s.eq_ignore_ascii_case("all") => true,
            Some(s) if s.eq_ignore_ascii_case("assigned") => false,
            _ => self.agent_ids.is_none() && self.agent_policies.is_none(),
        }
    }

    /// The body that creates this policy elsewhere (policy sync): its content, without the
    /// source's ids. Its assignments go as `agentIds`, whichever form the source named them in
    /// (a copy of a list view's `agentPolicies` must still bind its agents, not be created
    /// binding none of them).
    pub fn to_create(&self) -> Policy {
        let agent_ids = match (&self.agent_ids, &self.agent_policies) {
            (None, None) => None,
            _ => {
                let mut agents: Vec<String> = self.assigned().map(str::to_owned).collect();
                agents.sort_unstable();
                agents.dedup();
                Some(agents)
            }
        };
        Policy {
            id: None,
            agent_ids,
            agent_policies: None,
            rules: self
                .rules
                .as_ref()
                .map(|rules| rules.iter().map(|r| Rule { id: None, extra: Map::new(), ..r.clone() }).collect()),
            ..self.clone()
        }
    }

    /// What the policy means, for comparing two copies: its type, priority, activity, whom it
    /// binds (every agent, or its agents in either form, sorted), time zone and rules, without
    /// ids, names or server metadata.
    pub fn essence(&self) -> Policy {
        let every = self.binds_every_agent();
        let mut agents: Vec<String> = self.assigned().map(str::to_owned).collect();
        agents.sort_unstable();
        agents.dedup();
        Policy {
            policy_type: self.policy_type.clone(),
            priority: self.priority.clone(),
            is_active: self.is_active.clone(),
            scope: Some(if every { "all" } else { "assigned" }.to_owned()),
            agent_ids: (!every).then_some(agents),
            timezone: self.timezone.clone(),
            rules: self
                .rules
                .as_ref()
                .map(|rules| rules.iter().map(|r| Rule { id: None, extra: Map::new(), ..r.clone() }).collect()),
            ..Policy::default()
        }
    }

    /// As JSON, for a policy engine.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// `{policies}` (or `{data: {policies}}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policies {
    /// The policies.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// The wrapped form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<Policies>>,
}

impl Policies {
    /// These policies, in a `{policies}` answer.
    pub fn new(policies: Vec<Policy>) -> Self {
        Self { policies, data: None }
    }

    /// Every policy listed, wrapped or not.
    pub fn all(&self) -> Vec<&Policy> {
        self.policies.iter().chain(self.data.iter().flat_map(|d| d.all())).collect()
    }
}

/// One entry of `GET /api/agents/{id}/policies`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignedPolicy {
    /// The policy's id.
    pub policy_id: Option<String>,
    /// The policy.
    pub policy: Policy,
}

/// `GET /api/agents/{id}/policies`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssignedPolicies {
    /// The assigned policies.
    pub policies: Vec<AssignedPolicy>,
}

/// `{rules}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// The rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

impl std::fmt::Debug for SdkKey {
    /// As its JSON, with the key redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        crate::redacted_debug(f, "SdkKey", self, "key")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_keeps_what_it_does_not_name() {
        let text = r#"{"id": "p1", "name": "cap", "agentIds": ["a"], "custom": {"x": 1},
            "rules": [{"type": "MAX_AMOUNT", "operator": "LTE", "value": "5", "action": "ALLOW", "note": "n"}]}"#;
        let p: Policy = serde_json::from_str(text).unwrap();
        assert!(p.applies_to("a") && !p.applies_to("b"));
        let back = p.to_value();
        assert_eq!(back["custom"]["x"], 1);
        assert_eq!(back["rules"][0]["ruleType"], "MAX_AMOUNT");
        assert_eq!(back["rules"][0]["note"], "n");
        let create = p.to_create().to_value();
        assert!(create.get("id").is_none() && create["rules"][0].get("note").is_none());
        // Assigned in the list view's form: the copy still binds that agent (as `agentIds`).
        let listed: Policy = serde_json::from_str(
            r#"{"id": "p2", "name": "cap", "scope": "assigned", "agentPolicies": [{"agentId": "a", "policyId": "p2"}],
                "rules": []}"#,
        )
        .unwrap();
        let create = listed.to_create();
        assert_eq!(create.agent_ids.as_deref(), Some(&["a".to_owned()][..]));
        assert!(create.applies_to("a") && !create.applies_to("b"));
        assert!(create.to_value().get("agentPolicies").is_none());
    }

    /// Policy sync compares what it wants (`agentIds`) with what Conto's list shows
    /// (`agentPolicies[]`, with server fields on each rule): the same policy is the same
    /// essence, so a second sync writes nothing.
    #[test]
    fn the_essence_reads_assignments_in_either_form_and_ignores_server_fields() {
        let wanted: Policy = serde_json::from_str(
            r#"{"name": "app · cap", "policyType": "SPEND_LIMIT", "priority": 10, "isActive": true,
                "scope": "assigned", "agentIds": ["b", "a"],
                "rules": [{"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "5", "action": "ALLOW"}]}"#,
        )
        .unwrap();
        let listed: Policy = serde_json::from_str(
            r#"{"id": "pol_1", "name": "app · cap", "policyType": "SPEND_LIMIT", "priority": 10, "isActive": true,
                "agentPolicies": [{"agentId": "a", "policyId": "pol_1"}, {"agentId": "b", "policyId": "pol_1"}],
                "createdAt": "2026-01-01T00:00:00Z",
                "rules": [{"id": "r1", "policyId": "pol_1", "ruleType": "MAX_AMOUNT", "operator": "LTE",
                    "value": "5", "action": "ALLOW"}]}"#,
        )
        .unwrap();
        assert_eq!(listed.essence(), wanted.essence());
        let other_agents = Policy { agent_ids: Some(vec!["a".into()]), ..wanted.clone() };
        assert_ne!(listed.essence(), other_agents.essence());
    }

    /// A policy naming no agents binds every agent; one whose `agentIds` or `agentPolicies`
    /// is an empty list (an export's unassigned policy) binds no one, and the two are not the
    /// same essence.
    #[test]
    fn an_empty_assignment_binds_no_one() {
        let read = |text: &str| serde_json::from_str::<Policy>(text).unwrap();
        let every = read(r#"{"name": "p", "rules": []}"#);
        assert!(every.binds_every_agent() && every.applies_to("a"));
        for text in
            [r#"{"name": "p", "agentIds": [], "rules": []}"#, r#"{"name": "p", "agentPolicies": [], "rules": []}"#]
        {
            let none = read(text);
            assert!(!none.binds_every_agent() && !none.applies_to("a"), "{text}");
            assert_ne!(none.essence(), every.essence(), "{text}");
            assert_eq!(none.essence(), read(r#"{"name": "p", "scope": "assigned", "rules": []}"#).essence());
        }
        assert_eq!(every.essence(), read(r#"{"name": "p", "scope": "ALL", "agentIds": ["a"], "rules": []}"#).essence());
    }

    #[test]
    fn wallet_limits_are_exact_numbers() {
        let w: AgentWallet =
            serde_json::from_str(r#"{"walletId": "w", "spendLimitDaily": 12.5, "spendLimitPerTx": "0.000001"}"#)
                .unwrap();
        assert_eq!(w.spend_limit_daily, Some(Decimal::new(125, 1)));
        assert_eq!(w.spend_limit_per_tx, Some(Decimal::new(1, 6)));
        assert_eq!(serde_json::to_value(&w).unwrap()["spendLimitDaily"], serde_json::json!(12.5));
        assert!(serde_json::from_str::<AgentWallet>(r#"{"spendLimitDaily": true}"#).is_err());
        // Digit separators, which rust_decimal alone would read as 10.
        for separated in ["1_0", "10_", "1_0.5"] {
            let text = format!(r#"{{"spendLimitPerTx": "{separated}"}}"#);
            assert!(serde_json::from_str::<AgentWallet>(&text).is_err(), "{separated}");
        }
    }
}
