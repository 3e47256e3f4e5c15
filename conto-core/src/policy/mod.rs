//! Policies in Conto's JSON shape, loaded and compiled for the embedded engine.
//!
//! A policy file is either `{"policies": [...]}`, a bare array, Conto's list response
//! `{"data": {"policies": [...]}}`, or one policy as Conto's API answers for one (see 13 below). The first shape may also list the actors the engine lets
//! spend, `{"agents": ["agent-1", "agent-2"], "policies": [...]}`; an actor that is not
//! provisioned (here, with [`EngineBuilder::actors`](crate::engine::EngineBuilder::actors) or
//! [`Engine::provision`](crate::Engine::provision)) is refused. Each policy is Conto's object:
//!
//! ```json
//! { "name": "Daily cap", "policyType": "SPEND_LIMIT", "priority": 80, "isActive": true,
//!   "agentIds": ["agent-1"], "timezone": "Europe/Paris",
//!   "rules": [ { "ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "1000", "action": "ALLOW" } ] }
//! ```
//!
//! # Rule types
//!
//! Every `ruleType` the engine evaluates, by family (the names are Conto's; `value` is always
//! a string, its content as shown):
//!
//! | family | rule types | operator | `value` |
//! |---|---|---|---|
//! | per payment | `MAX_AMOUNT`, `SINGLE_AMOUNT`, `X402_PRICE_CEILING`, `X402_MAX_PER_REQUEST`, `MPP_PRICE_CEILING`, `MPP_MAX_PER_REQUEST`, `MPP_MAX_SESSION_DEPOSIT`, `CARD_MAX_AMOUNT`, `REQUIRE_APPROVAL_ABOVE` | `LTE`, `LT`, `GT`, `GTE` | `"50"` |
//! | per period | `DAILY_LIMIT`, `WEEKLY_LIMIT`, `MONTHLY_LIMIT` | `LTE`, `LT` | `"1000"` |
//! | | `BUDGET_CAP` | `LTE`, `LT` | `"{\"amount\": 10000, \"period\": \"MONTHLY\"}"` |
//! | | `X402_MAX_PER_SERVICE`, `X402_MAX_PER_ENDPOINT`, `MPP_MAX_PER_SERVICE`, `MPP_MAX_PER_ENDPOINT` | `LTE`, `LT` | `"50"` (daily) or a budget object |
//! | | `X402_SESSION_BUDGET`, `MPP_SESSION_BUDGET` | `LTE`, `LT` | `"100"` (a session's lifetime) |
//! | lists | `ALLOWED_CATEGORIES`, `BLOCKED_CATEGORIES`, `X402_ALLOWED_SERVICES`, `X402_BLOCKED_SERVICES`, `MPP_ALLOWED_SERVICES`, `MPP_BLOCKED_SERVICES`, `MPP_BLOCK_SESSION_INTENT`, `MPP_ALLOWED_METHODS`, `CARD_ALLOWED_MERCHANTS`, `CARD_BLOCKED_MERCHANTS` | `IN_LIST`, `NOT_IN_LIST` | `"[\"api.openai.com\"]"` |
//! | | `ALLOWED_COUNTERPARTIES`, `WHITELIST`, `BLOCKED_COUNTERPARTIES`, `CONTRACT_ALLOWLIST` | `IN_LIST`, `NOT_IN_LIST` | `"[\"0x1111…\"]"` (EVM or Solana addresses) |
//! | | `CARD_ALLOWED_MCCS`, `CARD_BLOCKED_MCCS` | `IN_LIST`, `NOT_IN_LIST` | `"[\"5734\"]"` (4-digit codes) |
//! | time | `TIME_WINDOW` | `BETWEEN` | `"{\"start\": \"09:00\", \"end\": \"17:00\"}"` |
//! | | `DAY_OF_WEEK` | `IN_LIST` | `"[\"MON\", \"TUE\"]"` |
//! | | `DATE_RANGE` | `BETWEEN` | `"{\"start\": \"2026-01-01\", \"end\": \"2026-03-31\"}"` |
//! | | `BLACKOUT_PERIOD` | `BETWEEN` | `"{\"windows\": [{\"start\": \"02:00\", \"end\": \"03:00\"}]}"` (6 below) |
//! | velocity | `VELOCITY_LIMIT`, `X402_VELOCITY_PER_ENDPOINT`, `MPP_VELOCITY_PER_ENDPOINT` | `LTE`, `LT` | `"{\"maxCount\": 10, \"period\": \"HOUR\"}"` |
//! | | `MPP_MAX_CONCURRENT_SESSIONS` | `LTE`, `LT` | `"3"` |
//! | | `MPP_MAX_SESSION_DURATION` | `LTE` | `"3600"` (seconds) |
//!
//! `GEOGRAPHIC_RESTRICTION`, `TRUST_SCORE`, `COUNTERPARTY_STATUS` and `FAIRSCALE_MIN_SCORE` need
//! data the engine does not have: a load error by default (11 below). An operator or action a
//! rule type does not take is a load error that names what it takes.
//!
//! # Semantics chosen where Conto's docs are silent or ambiguous
//!
//! This list is the one place these decisions are written down; the tests in
//! `conto-core/tests/policy_rules.rs` hold each of them.
//!
//! 1. **Rule `value` is always a JSON string**, as Conto sends it; a bare number or object is a
//!    load error (`ValueNotString`). Numbers inside are exact decimals.
//! 2. **Polarity.** A rule's condition is `subject OPERATOR value`. With action `ALLOW` the
//!    condition describes what is allowed: the rule is broken when it does not hold. With `DENY`
//!    or `REQUIRE_APPROVAL` it describes what is refused or gated: broken when it holds; except
//!    an upper bound (`LTE`, `LT`), which is the cap whatever the action (every comparison rule
//!    evaluated is a cap): `MAX_AMOUNT LTE 5 REQUIRE_APPROVAL` gates what is above 5, as
//!    `GT 5 REQUIRE_APPROVAL` does. Rule
//!    types whose name says the polarity keep it whatever the action: `ALLOWED_*` and `WHITELIST`
//!    (broken when the subject is not listed), `BLOCKED_*`, `MPP_BLOCK_SESSION_INTENT` and
//!    `BLACKOUT_PERIOD` (broken inside the list or window), `REQUIRE_APPROVAL_ABOVE` (gated when
//!    the comparison holds; `GT` or `GTE` only).
//! 3. **A broken rule** with action `REQUIRE_APPROVAL` (or of type `REQUIRE_APPROVAL_ABOVE`,
//!    unless its action is `DENY`, which makes it a hard cap, reported as `PER_TX_LIMIT`) asks for a human; any other broken
//!    rule denies. Policies run by `priority`, highest first
//!    (ties in file order); the first denial stops evaluation and is the only violation
//!    returned; a denial anywhere beats a request for approval.
//! 4. **Cumulative limits** (`DAILY_LIMIT`, `WEEKLY_LIMIT`, `MONTHLY_LIMIT`, `BUDGET_CAP`, the
//!    per-service / per-endpoint / session budgets) compare *spent + reserved + this amount*
//!    with the limit, so `LTE 1000` allows a payment that lands exactly on 1000. Periods are
//!    calendar periods in the policy's time zone (or the `timezone` of a budget's value object): the day from midnight, the ISO week from
//!    Monday, the month from the 1st. A plain `X402_MAX_PER_SERVICE`, `X402_MAX_PER_ENDPOINT`,
//!    `MPP_MAX_PER_SERVICE` or `MPP_MAX_PER_ENDPOINT` value is a daily cap; `{"amount", "period"}`
//!    names the period (`DAILY`, `WEEKLY`, `MONTHLY`, `YEARLY`, `TOTAL`). An endpoint is the
//!    resource's host and path, without scheme, port or query, the path read as loosely as
//!    any server reads one ([`crate::endpoint_key`]: case ignored, escapes of unreserved
//!    characters decoded, `;` parameters dropped, decoded once more, an escaped `/` or `\`
//!    read as `/`, a segment's trailing dots and spaces, empty segments and a trailing `/`
//!    dropped, dot segments resolved), so one resource spelled
//!    several ways meets one limit. Session budgets are lifetime totals per session: the MPP
//!    rail's `sessionId`, or the intent's `context.sessionId` for x402 (intents without one
//!    share the session `default`).
//!    Spend counted before a rule existed is not counted by it (the engine keeps counters, not
//!    history). An approval reserved in one period and recorded in time in the next counts in
//!    the period it was reserved in (its hold was that period's), also after a restart; a late
//!    record (its approval lapsed or released) counts in the period it came in.
//! 5. **Time zones.** UTC unless the policy has `timezone` (an IANA name) or the rule's value
//!    object has `timezone`. `TIME_WINDOW` `{"start":"22:00","end":"06:00"}` wraps midnight; start
//!    is inclusive, end exclusive; `start == end` is an empty window and a load error.
//!    `DATE_RANGE` and date-only blackout windows include their whole end day.
//! 6. **`BLACKOUT_PERIOD`** takes both documented formats: `{"windows": [{"start", "end",
//!    "reason", "recurring"}]}` and `{"start", "end"}`, with `BETWEEN` only (`NOT_BETWEEN`
//!    would invert the blackout; hours allowed are a `TIME_WINDOW`'s). `HH:MM` bounds are a daily window;
//!    `YYYY-MM-DD` or RFC 3339 bounds are an absolute period. `recurring`, when given, must
//!    agree (`true` with `HH:MM`, `false` with dates): one that contradicts the bounds is a
//!    load error.
//! 7. **Lists.** Counterparty addresses compare in canonical form (EVM lower-cased, Solana as
//!    written); categories, merchants and methods compare ASCII-case-insensitively; a service entry
//!    matches that domain and its subdomains. Services compare as canonical hosts
//!    ([`service_domain_of`](crate::service_domain_of)): the host a browser's URL parser finds
//!    in `resourceUrl`, punycode, lower case, no trailing dot; list entries are read the same
//!    way, and one that is not a host name is a load error. An allowlist rule fails for an intent that lacks
//!    the field it checks (no category, no MCC, no method), except that counterparty rules do not
//!    apply to card payments, which have no address (use `CARD_*_MERCHANTS`); any other payment
//!    without a recipient is on no counterparty list. An empty list
//!    (`"value": "[]"`, how Conto's hybrid example disables a merchant) is valid: an empty
//!    allowlist allows nothing, an empty blocklist blocks nothing. **`CONTRACT_ALLOWLIST`**
//!    (`["0x…"]` or `{"contracts": [...], "protocols": [...]}`) checks the contract a payment
//!    calls, the intent's `context["targetContractAddress"]` (Conto's request field): one it
//!    does not list is denied; a payment that calls no contract is not under it. Protocol names
//!    cannot be matched to an address and are not compared.
//! 8. **Rail scope.** `X402_*` rules apply to x402 intents only, `MPP_*` to MPP, `CARD_*` to
//!    cards; the rest to every rail. Cumulative and velocity counters count the rails their rule
//!    applies to. **An MPP session is decided on its deposit**: Conto's app pre-authorizes the
//!    deposit and the session pays out of it, so when `depositAmount` is larger than `amount`,
//!    the deposit is what every amount and cumulative rule compares, what is reserved and what
//!    is approved ([`PaymentIntent::exposure`](crate::PaymentIntent::exposure)); only
//!    `MPP_PRICE_CEILING` and `MPP_MAX_PER_REQUEST` compare the per-request `amount`. The
//!    record settles it at what the session spent.
//! 9. **`VELOCITY_LIMIT`** `{"maxCount": n, "period": "MINUTE"|"HOUR"|"DAY"}` is a sliding window
//!    over approvals (released approvals do not count); its operator compares the window's
//!    approvals, this one included, with `maxCount` (`LTE n` allows n, `LT n` n − 1; `GT n` with
//!    `DENY` or `REQUIRE_APPROVAL` refuses or gates the (n + 1)th and on), as do the x402 and MPP
//!    per-endpoint velocities; an operator that makes no cap (`EQ`, `NEQ`, `GT`/`GTE` with
//!    `ALLOW`) is a load error. **`MPP_MAX_CONCURRENT_SESSIONS`** `LTE n`
//!    counts the agent's open MPP sessions: its MPP pre-authorizations still live (not yet
//!    recorded, released or lapsed), this one included; a record closes a session. A one-off
//!    MPP `charge` (its `intent`, naming no session and carrying no deposit) is no session:
//!    neither session rule applies to it; any other MPP payment is one, and
//!    `MPP_BLOCK_SESSION_INTENT` reads its intent as `session` when it says `charge` or nothing.
//!    **`MPP_MAX_SESSION_DURATION`** `LTE` seconds is how long an MPP pre-authorization lives
//!    (the shortest applicable one, instead of the approval's lifetime, longer or shorter):
//!    until then the session's deposit stays held and its slot taken; past it the session
//!    lapses, its reservation and slot freed. It denies nothing by itself.
//! 10. **Assignment.** A policy applies to the agents in `agentIds` (or `agentPolicies[].agentId`);
//!     with neither field, or with `scope: "all"`, to every agent; with `scope: "assigned"` and
//!     no agents, or with either field given as an empty list (an export's policy that is
//!     assigned to no one: Conto's list view always shows `agentPolicies`), to no agent (created,
//!     not yet assigned, as Conto's policy API has it). Any other `scope` is a load error (read
//!     as none, it would bind every agent). Inactive policies are loaded and skipped.
//! 11. **Known but not evaluated.** Rule types that need data the engine does not have
//!     (`GEOGRAPHIC_RESTRICTION`, `TRUST_SCORE`, `COUNTERPARTY_STATUS`,
//!     `FAIRSCALE_MIN_SCORE`) are a load
//!     error (`Unsupported`), never silently ignored; loaded with [`UnevaluatedRules::Deny`]
//!     (conto-local does), each denies every payment on its rails instead. Unknown rule types
//!     and operators are always a load error.
//! 12. **Human approval** in the engine: a pending request lives one hour (configurable). When a
//!     human approves, the intent is evaluated again without the approval rules and, if it still
//!     passes, reserved like any approval.
//! 13. **Spellings.** A field Conto spells two ways may be given under both when they agree
//!     (`ruleType` and `type`, `timezone` and `timeZone`; `id` wins over `policyId`); a policy
//!     set is an array, `{"policies": [...]}`, an API answer's `{"data": ...}` (either of those,
//!     or one policy), or one policy object as `GET /api/policies/{id}` answers.
//!     Bounds of `DATE_RANGE` and one-off `BLACKOUT_PERIOD` windows are dates (`YYYY-MM-DD`,
//!     whole days in the policy's zone), local date-times (`YYYY-MM-DDTHH:MM[:SS]`, in the
//!     policy's zone) or RFC 3339 instants; times of day may have a one-digit hour (`9:00`).

mod compile;
pub(crate) mod plan;
pub(crate) mod rules;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use jiff::tz::TimeZone;
use serde::Deserialize;

use crate::intent::ActorId;

pub(crate) use rules::{CompiledRule, CounterId, Cumulative, Period};

/// What loading does with a rule type Conto documents but the engine cannot evaluate, because
/// it needs data a payment intent does not carry (`GEOGRAPHIC_RESTRICTION`, `TRUST_SCORE`,
/// `COUNTERPARTY_STATUS`, `FAIRSCALE_MIN_SCORE`). Never silently ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnevaluatedRules {
    /// A load error, [`RuleProblem::Unsupported`]: the default, for an app loading its own
    /// policies, who learns at start that a rule would not be enforced.
    #[default]
    Refuse,
    /// Loaded as a rule every payment on its rails breaks (an `MPP_*` rule's, MPP; any
    /// other's, every rail): denied whatever the rule's action, with a violation named for the
    /// rule type (`GEOGRAPHIC_RESTRICTION`, `CONTRACT_NOT_ALLOWED`, ...) saying why. Fail-closed,
    /// for a server that must keep what Conto's API accepts (conto-local).
    Deny,
}

/// Why a policy file could not be loaded. Each variant says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The text is not JSON.
    #[error("policy file is not valid JSON at line {line}, column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser saw.
        message: String,
    },
    /// The JSON does not have the shape of a policy list.
    #[error("policy file has the wrong shape at `{path}`: {message}")]
    Shape {
        /// A JSON path such as `policies[2].rules[0].operator`.
        path: String,
        /// What was expected.
        message: String,
    },
    /// A policy-level field is wrong.
    #[error("policy `{policy}`, field `{field}`: {message}")]
    Policy {
        /// The policy's name.
        policy: String,
        /// The field, as Conto spells it.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A rule is wrong.
    #[error("policy `{policy}`, rule #{rule} ({rule_type}), field `{field}`: {problem}")]
    Rule {
        /// The policy's name.
        policy: String,
        /// The rule's 0-based index in the policy's `rules`.
        rule: usize,
        /// The rule's `ruleType`.
        rule_type: String,
        /// The field, as Conto spells it.
        field: &'static str,
        /// What is wrong.
        problem: RuleProblem,
    },
}

/// What is wrong with one rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleProblem {
    /// Not a rule type Conto documents.
    #[error("unknown ruleType `{0}`")]
    UnknownRuleType(String),
    /// A Conto rule type the embedded engine cannot evaluate.
    #[error("ruleType `{0}` needs data the embedded engine does not have; remove it or use Conto's API")]
    Unsupported(String),
    /// Not an operator Conto documents.
    #[error("unknown operator `{0}`")]
    UnknownOperator(String),
    /// An operator that makes no sense for this rule type.
    #[error("operator `{operator}` does not apply here; use one of {allowed}")]
    OperatorNotAllowed {
        /// The operator given.
        operator: String,
        /// The operators this rule type takes.
        allowed: &'static str,
    },
    /// Not `ALLOW`, `DENY` or `REQUIRE_APPROVAL`.
    #[error("unknown action `{0}`; use ALLOW, DENY or REQUIRE_APPROVAL")]
    UnknownAction(String),
    /// The action is known but means nothing for this rule type.
    #[error("action `{action}` does not apply here; use {allowed}")]
    ActionNotAllowed {
        /// The action given.
        action: String,
        /// What this rule type takes.
        allowed: &'static str,
    },
    /// `value` must be a JSON string (Conto encodes numbers, lists and objects inside it).
    #[error("value must be a JSON string (e.g. \"1000\" or \"[\\\"a\\\"]\"), got {0}")]
    ValueNotString(String),
    /// The value's text is not in the format this rule type takes.
    #[error("{found:?} is not {expected}")]
    BadValue {
        /// The value text.
        found: String,
        /// What this rule type takes.
        expected: &'static str,
    },
    /// A limit below zero.
    #[error("limit {0} is negative")]
    NegativeLimit(String),
    /// A window or list that can never match.
    #[error("{0}")]
    Empty(String),
    /// An IANA time zone name that is not known.
    #[error("unknown time zone `{0}`")]
    TimeZone(String),
}

/// One policy as Conto's API spells it.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "PolicyFields")]
pub(crate) struct PolicyDoc {
    pub id: Option<String>,
    pub name: String,
    pub description: Option<String>,
    pub policy_type: Option<String>,
    pub rules: Vec<RuleDoc>,
    /// `None` when neither `agentIds` nor `agentPolicies` is given (a file's policy for every
    /// agent); a list, empty or not, when either is.
    pub agents: Option<Vec<String>>,
    pub scope: Option<String>,
    pub timezone: Option<String>,
    pub priority: i64,
    pub is_active: bool,
}

/// A policy's fields as sent: a field Conto spells two ways may come under both names (an
/// export showing `id` and `policyId`, `timezone` and `timeZone`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyFields {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    policy_id: Option<String>,
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    policy_type: Option<String>,
    #[serde(default = "default_priority")]
    priority: i64,
    #[serde(default = "default_true")]
    is_active: bool,
    #[serde(default)]
    rules: Vec<RuleDoc>,
    #[serde(default)]
    agent_ids: Option<Vec<String>>,
    #[serde(default)]
    agent_policies: Option<Vec<AgentPolicyDoc>>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
}

impl TryFrom<PolicyFields> for PolicyDoc {
    type Error = String;

    fn try_from(f: PolicyFields) -> Result<Self, String> {
        let timezone = same("timezone", "timeZone", f.timezone, f.time_zone)?;
        let agents = match (f.agent_ids, f.agent_policies) {
            (None, None) => None,
            (ids, links) => {
                let mut agents = ids.unwrap_or_default();
                agents.extend(links.into_iter().flatten().map(|l| l.agent_id));
                Some(agents)
            }
        };
        Ok(PolicyDoc {
            // The policy's own id; `policyId` where a view names it so.
            id: f.id.or(f.policy_id),
            name: f.name,
            description: f.description,
            policy_type: f.policy_type,
            rules: f.rules,
            agents,
            scope: f.scope,
            timezone,
            priority: f.priority,
            is_active: f.is_active,
        })
    }
}

/// One value given under either of its two names, or under both when they agree.
fn same(name: &str, alias: &str, a: Option<String>, b: Option<String>) -> Result<Option<String>, String> {
    match (a, b) {
        (Some(a), Some(b)) if a != b => Err(format!("`{name}` is `{a}` but `{alias}` is `{b}`: give one")),
        (a, b) => Ok(a.or(b)),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentPolicyDoc {
    pub agent_id: String,
}

/// One rule as Conto's API spells it: its type as `ruleType` or `type` (or both, the same).
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RuleFields")]
pub(crate) struct RuleDoc {
    pub rule_type: String,
    pub operator: String,
    pub value: serde_json::Value,
    pub action: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleFields {
    #[serde(default)]
    rule_type: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    operator: String,
    value: serde_json::Value,
    #[serde(default)]
    action: Option<String>,
}

impl TryFrom<RuleFields> for RuleDoc {
    type Error = String;

    fn try_from(f: RuleFields) -> Result<Self, String> {
        let rule_type = same("ruleType", "type", f.rule_type, f.kind)?.ok_or("missing field `ruleType`")?;
        Ok(RuleDoc { rule_type, operator: f.operator, value: f.value, action: f.action })
    }
}

fn default_priority() -> i64 {
    50
}

fn default_true() -> bool {
    true
}

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) id: Option<String>,
    pub(crate) name: String,
    pub(crate) description: Option<String>,
    pub(crate) policy_type: Option<String>,
    pub(crate) priority: i64,
    pub(crate) active: bool,
    pub(crate) agents: Option<HashSet<String, foldhash::fast::RandomState>>,
    pub(crate) rules: Vec<CompiledRule>,
}

impl Policy {
    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The policy's id, when it has one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// Its description.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Its `policyType` (`SPEND_LIMIT`, `WHITELIST`, …), when given.
    pub fn policy_type(&self) -> Option<&str> {
        self.policy_type.as_deref()
    }

    /// Its priority (higher runs first).
    pub fn priority(&self) -> i64 {
        self.priority
    }

    /// Whether it is active.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Whether it applies to `agent`.
    #[inline]
    pub fn applies_to(&self, agent: &str) -> bool {
        self.active && self.agents.as_ref().is_none_or(|a| a.contains(agent))
    }

    /// How many rules it has.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

/// A validated, compiled set of policies, ordered by priority.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub(crate) policies: Vec<Policy>,
    agents: Vec<ActorId>,
    /// The rules regrouped for evaluation.
    pub(crate) plan: plan::Plan,
    /// Every list entry, numbered: what a decision looks its list fields up in.
    pub(crate) lexicon: rules::lists::Lexicon,
    /// Whether some policy is inactive or assigned to some actors only: else every policy
    /// applies to every actor, and a decision need not ask each.
    pub(crate) partial: bool,
}

impl PolicySet {
    /// No policies: every valid intent is approved.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses a policy file's text.
    ///
    /// ```
    /// use conto::PolicySet;
    /// let set = PolicySet::from_json(r#"[{"name": "cap", "rules": [
    ///     {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "200", "action": "ALLOW"}]}]"#)?;
    /// assert_eq!(set.policies().len(), 1);
    /// let err = PolicySet::from_json(r#"[{"name": "cap", "rules": [
    ///     {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "-5", "action": "ALLOW"}]}]"#).unwrap_err();
    /// assert_eq!(err.to_string(), "policy `cap`, rule #0 (MAX_AMOUNT), field `value`: limit -5 is negative");
    /// # Ok::<(), conto::PolicyError>(())
    /// ```
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        Self::from_json_with(text, UnevaluatedRules::Refuse)
    }

    /// [`PolicySet::from_json`], choosing what a rule type the engine cannot evaluate becomes
    /// (see [`UnevaluatedRules`]).
    pub fn from_json_with(text: &str, unevaluated: UnevaluatedRules) -> Result<Self, PolicyError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| PolicyError::Json {
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })?;
        Self::from_value_with(value, unevaluated)
    }

    /// Reads and parses a policy file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            // A relative path is read against the working directory: say which one it was.
            let mut message = e.to_string();
            if path.is_relative()
                && let Ok(dir) = std::env::current_dir()
            {
                message.push_str(&format!(" (relative to the working directory {})", dir.display()));
            }
            PolicyError::Io { path: path.display().to_string(), message }
        })?;
        Self::from_json(&text)
    }

    /// Compiles policies from a parsed JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Self, PolicyError> {
        Self::from_value_with(value, UnevaluatedRules::Refuse)
    }

    /// [`PolicySet::from_value`], choosing what a rule type Conto documents but the engine
    /// cannot evaluate becomes (see [`UnevaluatedRules`]).
    ///
    /// ```
    /// use conto::{PolicySet, UnevaluatedRules};
    /// let doc = serde_json::json!([{"name": "geo", "rules": [{"ruleType": "GEOGRAPHIC_RESTRICTION",
    ///     "operator": "IN_LIST", "value": "[\"US\",\"CA\"]", "action": "ALLOW"}]}]);
    /// assert!(PolicySet::from_value(doc.clone()).is_err());
    /// assert!(PolicySet::from_value_with(doc, UnevaluatedRules::Deny).is_ok());
    /// ```
    pub fn from_value_with(value: serde_json::Value, unevaluated: UnevaluatedRules) -> Result<Self, PolicyError> {
        let agents = parse_agents(&value)?;
        let docs = parse_shape(value)?;
        let mut policies = Vec::with_capacity(docs.len());
        for doc in docs {
            policies.push(compile::policy(doc, unevaluated)?);
        }
        // Stable: equal priorities keep file order.
        policies.sort_by_key(|p| std::cmp::Reverse(p.priority));
        Ok(Self::indexed(policies, agents))
    }

    /// The policies, highest priority first.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// The policies of several sets together, highest priority first (ties keep set order).
    pub(crate) fn merged<'a>(sets: impl IntoIterator<Item = &'a PolicySet>) -> PolicySet {
        let (mut policies, mut agents) = (Vec::new(), Vec::new());
        for set in sets {
            policies.extend(set.policies.iter().cloned());
            agents.extend(set.agents.iter().cloned());
        }
        policies.sort_by_key(|p| std::cmp::Reverse(p.priority));
        Self::indexed(policies, agents)
    }

    /// The set of `policies` (in evaluation order), with what every decision on it shares
    /// computed once: counters numbered, list entries numbered, the evaluation plan.
    fn indexed(mut policies: Vec<Policy>, agents: Vec<ActorId>) -> Self {
        number_counters(&mut policies);
        let lexicon = rules::lists::Lexicon::index(policies.iter_mut().flat_map(|p| p.rules.iter_mut()));
        let plan = plan::Plan::of(&policies);
        let partial = policies.iter().any(|p| !p.active || p.agents.is_some());
        PolicySet { policies, agents, plan, lexicon, partial }
    }

    /// The actors the file provisions (its top-level `agents` list).
    pub fn agents(&self) -> &[ActorId] {
        &self.agents
    }
}

/// Numbers the spend counters of a set densely (a decision indexes its reads by the number);
/// rules that count the same quantity share one number.
fn number_counters(policies: &mut [Policy]) {
    let mut slots: HashMap<rules::CounterId, u32> = HashMap::new();
    for rule in policies.iter_mut().flat_map(|p| p.rules.iter_mut()) {
        if let rules::Check::Cumulative(c) = &mut rule.check {
            let next = slots.len() as u32;
            c.counter.slot = *slots.entry(c.counter.id).or_insert(next);
        }
    }
}

/// The optional top-level `agents` list of a `{"agents": [...], "policies": [...]}` file.
fn parse_agents(value: &serde_json::Value) -> Result<Vec<ActorId>, PolicyError> {
    let Some(list) = value.get("agents") else {
        return Ok(Vec::new());
    };
    let items = list.as_array().ok_or_else(|| PolicyError::Shape {
        path: "agents".into(),
        message: format!("expected an array of actor ids, got {}", json_kind(list)),
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let shape = |message: String| PolicyError::Shape { path: format!("agents[{i}]"), message };
            let text = item.as_str().ok_or_else(|| shape(format!("expected a string, got {}", json_kind(item))))?;
            ActorId::new(text).map_err(|e| shape(e.to_string()))
        })
        .collect()
}

fn parse_shape(value: serde_json::Value) -> Result<Vec<PolicyDoc>, PolicyError> {
    // Try each shape with a path-reporting deserializer, so errors name the field.
    let shape_error = |e: serde_path_to_error::Error<serde_json::Error>| PolicyError::Shape {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    };
    #[derive(Deserialize)]
    struct Wrapped {
        policies: Vec<PolicyDoc>,
    }
    #[derive(Deserialize)]
    struct Data<T> {
        data: T,
    }
    match &value {
        serde_json::Value::Array(_) => serde_path_to_error::deserialize(value).map_err(shape_error),
        serde_json::Value::Object(map) if map.contains_key("policies") => {
            serde_path_to_error::deserialize::<_, Wrapped>(value).map(|w| w.policies).map_err(shape_error)
        }
        // An API answer: `data` holds the policies, as a list or under `policies`, or one.
        serde_json::Value::Object(map) if map.contains_key("data") => match &map["data"] {
            serde_json::Value::Object(data) if !data.contains_key("policies") => {
                serde_path_to_error::deserialize::<_, Data<PolicyDoc>>(value).map(|d| vec![d.data])
            }
            serde_json::Value::Array(_) => {
                serde_path_to_error::deserialize::<_, Data<Vec<PolicyDoc>>>(value).map(|d| d.data)
            }
            _ => serde_path_to_error::deserialize::<_, Data<Wrapped>>(value).map(|d| d.data.policies),
        }
        .map_err(shape_error),
        // One policy, as Conto's API answers for one (`GET /api/policies/{id}`).
        serde_json::Value::Object(map) if map.contains_key("rules") => {
            serde_path_to_error::deserialize::<_, PolicyDoc>(value).map(|p| vec![p]).map_err(shape_error)
        }
        other => Err(PolicyError::Shape {
            path: ".".into(),
            message: format!(
                "expected an array of policies, an object with `policies`, or one policy (with `rules`), got {}",
                json_kind(other)
            ),
        }),
    }
}

pub(crate) fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

pub(crate) fn time_zone(name: &str) -> Option<TimeZone> {
    TimeZone::get(name).ok()
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (priority {}, {} rules)", self.name, self.priority, self.rules.len())
    }
}
