//! The embedded policy engine: Conto's policy semantics, in process, with an atomic
//! reservation ledger.
//!
//! Each agent has its own ledger behind its own lock, so agents never wait for each other; the
//! policy set is swapped atomically and read without locking.

mod evaluate;
mod ledger;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwap;
use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;

pub use ledger::LedgerStats;

use crate::authorizer::{AuthorityError, Authorizer, BoxFuture};
use crate::clock::{Clock, SystemClock};
use crate::decision::{Authorization, Decision, Denial, Limits, PendingApproval, Recorded, Settlement, Verdict};
use crate::ids::random_hex;
use crate::intent::{ActorId, PaymentIntent};
use crate::money::Amount;
use crate::policy::{PolicyError, PolicySet};
use evaluate::{Evaluation, evaluate};
use ledger::{AgentLedger, Closed};

/// How long an approval may wait for its settlement (Conto: 10 minutes for `payments/approve`).
pub const DEFAULT_APPROVAL_TTL: SignedDuration = SignedDuration::from_mins(10);
/// How long a request for human approval stays open.
pub const DEFAULT_PENDING_TTL: SignedDuration = SignedDuration::from_hours(1);
/// How long ended approvals are remembered, so a repeated record or release is answered the same.
pub const DEFAULT_RETENTION: SignedDuration = SignedDuration::from_hours(24);

#[derive(Debug)]
enum PendingState {
    Waiting,
    Approved(Authorization),
    Denied(Denial),
}

#[derive(Debug)]
struct Pending {
    intent: Arc<PaymentIntent>,
    expires_at: Timestamp,
    state: PendingState,
}

struct Inner {
    policies: ArcSwap<PolicySet>,
    agents: RwLock<ledger::Map<ActorId, Arc<Mutex<AgentLedger>>>>,
    pending: Mutex<HashMap<String, Pending>>,
    clock: Arc<dyn Clock>,
    approval_ttl: SignedDuration,
    pending_ttl: SignedDuration,
    retention: SignedDuration,
}

/// The embedded engine. Cheap to clone; clones share policies and ledgers.
///
/// ```
/// use conto_core::{Engine, PaymentIntent, Rail, Verdict};
/// let engine = Engine::from_json(r#"[{"name": "cap", "rules": [
///     {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "100", "action": "ALLOW"}]}]"#)?;
/// let rail = Rail::transfer(8453, "0x2222222222222222222222222222222222222222")?;
/// let intent = PaymentIntent::builder("agent-1", "150", rail)
///     .recipient("0x1111111111111111111111111111111111111111")
///     .build()?;
/// let decision = engine.decide(&intent);
/// assert!(matches!(decision.verdict, Verdict::Denied(_)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("policies", &self.inner.policies.load().policies().len())
            .field("approval_ttl", &self.inner.approval_ttl)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    policies: PolicySet,
    clock: Arc<dyn Clock>,
    approval_ttl: SignedDuration,
    pending_ttl: SignedDuration,
    retention: SignedDuration,
}

impl EngineBuilder {
    /// The policies to enforce.
    pub fn policies(mut self, policies: PolicySet) -> Self {
        self.policies = policies;
        self
    }

    /// The clock (tests use [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long an approval waits for its settlement (default 10 minutes).
    pub fn approval_ttl(mut self, ttl: SignedDuration) -> Self {
        self.approval_ttl = ttl;
        self
    }

    /// How long a request for human approval stays open (default 1 hour).
    pub fn pending_ttl(mut self, ttl: SignedDuration) -> Self {
        self.pending_ttl = ttl;
        self
    }

    /// Finishes the engine.
    pub fn build(self) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                policies: ArcSwap::from_pointee(self.policies),
                agents: RwLock::new(ledger::Map::default()),
                pending: Mutex::new(HashMap::new()),
                clock: self.clock,
                approval_ttl: self.approval_ttl,
                pending_ttl: self.pending_ttl,
                retention: self.retention,
            }),
        }
    }
}

/// A snapshot of one agent's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// One line per counter in its current period.
    pub counters: Vec<CounterUsage>,
    /// Approvals not yet recorded, released or expired.
    pub live_reservations: usize,
    /// Totals over the ledger's life.
    pub stats: LedgerStats,
}

/// One period counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterUsage {
    /// `daily`, `weekly`, `monthly`, `yearly` or `total`.
    pub period: &'static str,
    /// What the counter is kept per: `agent`, or a service, endpoint or session.
    pub scope: String,
    /// The time zone of the period.
    pub time_zone: String,
    /// When the current period began.
    pub period_start: Timestamp,
    /// Recorded spend in the period.
    pub spent: Decimal,
    /// Approved but not yet recorded.
    pub reserved: Decimal,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// A builder with no policies, the system clock and Conto's default lifetimes.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            policies: PolicySet::empty(),
            clock: Arc::new(SystemClock),
            approval_ttl: DEFAULT_APPROVAL_TTL,
            pending_ttl: DEFAULT_PENDING_TTL,
            retention: DEFAULT_RETENTION,
        }
    }

    /// An engine enforcing `policies`.
    pub fn new(policies: PolicySet) -> Self {
        Self::builder().policies(policies).build()
    }

    /// An engine enforcing the policies in a JSON text.
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        Ok(Self::new(PolicySet::from_json(text)?))
    }

    /// An engine enforcing the policies in a JSON file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        Ok(Self::new(PolicySet::from_file(path)?))
    }

    /// Replaces the policies atomically; ledgers are kept.
    pub fn set_policies(&self, policies: PolicySet) {
        self.inner.policies.store(Arc::new(policies));
    }

    /// The policies in force.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.inner.policies.load_full()
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn ledger(&self, actor: &ActorId) -> Arc<Mutex<AgentLedger>> {
        if let Some(l) = self.inner.agents.read().unwrap_or_else(|e| e.into_inner()).get(actor) {
            return l.clone();
        }
        let mut agents = self.inner.agents.write().unwrap_or_else(|e| e.into_inner());
        agents.entry(actor.clone()).or_default().clone()
    }

    /// Decides on an intent, synchronously. An approval reserves its amount.
    pub fn decide(&self, intent: &PaymentIntent) -> Decision {
        let now = self.now();
        let policies = self.inner.policies.load();
        let ledger = self.ledger(&intent.actor);
        let mut ledger = lock(&ledger);
        ledger.sweep(now, self.inner.retention);
        match evaluate(&policies, intent, &mut ledger, now, false) {
            Evaluation::Pass { holds, windows, daily } => {
                let authorization = self.grant(intent, &mut ledger, holds, windows, daily, now);
                Decision::from_policy(Verdict::Approved(authorization))
            }
            Evaluation::Denied(denial) => Decision::from_policy(Verdict::Denied(denial)),
            Evaluation::NeedsApproval(reasons) => {
                drop(ledger);
                let id = format!("apr_{}", random_hex(12));
                let expires_at = now.saturating_add(self.inner.pending_ttl).unwrap_or(now);
                lock(&self.inner.pending).insert(
                    id.clone(),
                    Pending { intent: Arc::new(intent.clone()), expires_at, state: PendingState::Waiting },
                );
                Decision::from_policy(Verdict::RequiresApproval(PendingApproval {
                    approval_request_id: id,
                    expires_at,
                    reasons,
                }))
            }
        }
    }

    fn grant(
        &self,
        intent: &PaymentIntent,
        ledger: &mut AgentLedger,
        holds: Vec<(ledger::CounterKey, Timestamp)>,
        windows: Vec<ledger::VelocityKey>,
        daily: Option<(Decimal, Decimal)>,
        now: Timestamp,
    ) -> Authorization {
        let id = format!("auth_{}", random_hex(12));
        let expires_at = now.saturating_add(self.inner.approval_ttl).unwrap_or(now);
        ledger.reserve(&id, intent.amount.get(), expires_at, holds, windows, now);
        let limits = daily
            .map(|(used, limit)| Limits {
                daily_used: Some(used),
                daily_limit: Some(limit),
                daily_remaining: Some((limit - used).max(Decimal::ZERO)),
            })
            .unwrap_or_default();
        Authorization {
            id,
            token: Some(random_hex(32).into()),
            amount: intent.amount,
            expires_at,
            limits,
            intent: Arc::new(intent.clone()),
        }
    }

    /// Records a settlement, synchronously. See [`Authorizer::record`].
    pub fn settle(&self, authorization: &Authorization, settlement: &Settlement) -> Result<Recorded, AuthorityError> {
        let now = self.now();
        let ledger = self.ledger(&authorization.intent.actor);
        let mut ledger = lock(&ledger);
        let settled = settlement.amount.unwrap_or(authorization.amount);
        if let Some(closed) = ledger.closed(&authorization.id) {
            return match closed {
                Closed::Recorded { recorded, settled: s, reference }
                    if *s == settled.get()
                        && (settlement.reference.is_none() || settlement.reference == *reference) =>
                {
                    Ok(recorded.clone())
                }
                Closed::Recorded { .. } => Err(AuthorityError::RecordConflict(authorization.id.clone())),
                Closed::Released => Err(AuthorityError::AlreadyReleased(authorization.id.clone())),
                Closed::Expired => {
                    // The money moved after the approval lapsed: count it now, flagged late.
                    let holds = self.holds_for(&authorization.intent, &mut ledger, now);
                    let counted = settled.min(authorization.amount);
                    ledger.settle_late(&holds, counted.get(), now);
                    let recorded = Recorded {
                        authorization_id: authorization.id.clone(),
                        amount: counted,
                        transaction_id: Some(format!("tx_{}", random_hex(12))),
                        late: true,
                        queued: false,
                    };
                    ledger.close(
                        &authorization.id,
                        Closed::Recorded {
                            recorded: recorded.clone(),
                            settled: settled.get(),
                            reference: settlement.reference.clone(),
                        },
                        now,
                    );
                    if settled > authorization.amount {
                        return Err(AuthorityError::SettledAboveApproval {
                            id: authorization.id.clone(),
                            approved: authorization.amount,
                            settled,
                        });
                    }
                    Ok(recorded)
                }
            };
        }
        let Some(reserved) = ledger.reserved(&authorization.id) else {
            return Err(AuthorityError::UnknownAuthorization(authorization.id.clone()));
        };
        // Count what moved, but never more than was approved (the excess is reported as an error).
        let over = settled.get() > reserved;
        let counted = if over { reserved } else { settled.get() };
        ledger.settle(&authorization.id, counted);
        let recorded = Recorded {
            authorization_id: authorization.id.clone(),
            amount: Amount::new(counted).unwrap_or(authorization.amount),
            transaction_id: Some(format!("tx_{}", random_hex(12))),
            late: false,
            queued: false,
        };
        ledger.close(
            &authorization.id,
            Closed::Recorded {
                recorded: recorded.clone(),
                settled: settled.get(),
                reference: settlement.reference.clone(),
            },
            now,
        );
        if over {
            return Err(AuthorityError::SettledAboveApproval {
                id: authorization.id.clone(),
                approved: authorization.amount,
                settled,
            });
        }
        Ok(recorded)
    }

    fn holds_for(
        &self,
        intent: &PaymentIntent,
        ledger: &mut AgentLedger,
        now: Timestamp,
    ) -> Vec<(ledger::CounterKey, Timestamp)> {
        let policies = self.inner.policies.load();
        match evaluate(&policies, intent, ledger, now, true) {
            Evaluation::Pass { holds, .. } => holds,
            // Even when the late payment breaks a rule now, its spend is counted on every counter
            // that applies: collect them with a pass that ignores verdicts.
            _ => evaluate::all_keys(&policies, intent, ledger, now).0,
        }
    }

    /// Counts a spend that has no live reservation — one recorded before a restart, or reported
    /// without a prior authorization — into the counters of the periods that contain `at`.
    /// Replay spends in the order they happened.
    pub fn restore_spend(&self, intent: &PaymentIntent, amount: Amount, at: Timestamp) {
        let ledger = self.ledger(&intent.actor);
        let mut ledger = lock(&ledger);
        let policies = self.inner.policies.load();
        let (holds, windows) = evaluate::all_keys(&policies, intent, &mut ledger, at);
        ledger.restore_spend(&holds, &windows, amount.get(), at);
    }

    /// Re-creates a live approval (after a restart) with its id, amount and expiry. Approvals
    /// already past their expiry are ignored.
    pub fn restore_authorization(&self, authorization: &Authorization) {
        let now = self.now();
        if authorization.expires_at <= now {
            return;
        }
        let ledger = self.ledger(&authorization.intent.actor);
        let mut ledger = lock(&ledger);
        if ledger.reserved(&authorization.id).is_some() {
            return;
        }
        let policies = self.inner.policies.load();
        let (holds, windows) = evaluate::all_keys(&policies, &authorization.intent, &mut ledger, now);
        ledger.reserve(&authorization.id, authorization.amount.get(), authorization.expires_at, holds, windows, now);
    }

    /// Re-creates a request for human approval (after a restart).
    pub fn restore_pending(&self, pending: &PendingApproval, intent: &PaymentIntent) {
        lock(&self.inner.pending).entry(pending.approval_request_id.clone()).or_insert_with(|| Pending {
            intent: Arc::new(intent.clone()),
            expires_at: pending.expires_at,
            state: PendingState::Waiting,
        });
    }

    /// Frees an approval that will not be settled. Releasing twice is a no-op.
    pub fn free(&self, authorization: &Authorization) -> Result<(), AuthorityError> {
        let now = self.now();
        let ledger = self.ledger(&authorization.intent.actor);
        let mut ledger = lock(&ledger);
        if ledger.release(&authorization.id) {
            ledger.close(&authorization.id, Closed::Released, now);
            return Ok(());
        }
        match ledger.closed(&authorization.id) {
            Some(Closed::Released | Closed::Expired) => Ok(()),
            Some(Closed::Recorded { .. }) => Ok(()),
            None => Err(AuthorityError::UnknownAuthorization(authorization.id.clone())),
        }
    }

    /// A human's answer to a pending approval request. Approving evaluates the intent again
    /// (without approval rules) and reserves it if it still passes.
    pub fn resolve_approval(&self, approval_request_id: &str, approve: bool) -> Result<(), AuthorityError> {
        let now = self.now();
        let mut pending = lock(&self.inner.pending);
        let entry = pending
            .get_mut(approval_request_id)
            .filter(|p| p.expires_at > now && matches!(p.state, PendingState::Waiting))
            .ok_or_else(|| AuthorityError::UnknownApprovalRequest(approval_request_id.to_owned()))?;
        if !approve {
            entry.state = PendingState::Denied(Denial {
                reasons: vec!["rejected by a human approver".to_owned()],
                violations: vec![],
            });
            return Ok(());
        }
        let intent = entry.intent.clone();
        let policies = self.inner.policies.load();
        let ledger = self.ledger(&intent.actor);
        let mut ledger = lock(&ledger);
        ledger.sweep(now, self.inner.retention);
        entry.state = match evaluate(&policies, &intent, &mut ledger, now, true) {
            Evaluation::Pass { holds, windows, daily } => {
                PendingState::Approved(self.grant(&intent, &mut ledger, holds, windows, daily, now))
            }
            Evaluation::Denied(denial) => PendingState::Denied(denial),
            Evaluation::NeedsApproval(_) => unreachable!("approval rules are skipped"),
        };
        Ok(())
    }

    /// The current answer to a pending approval request: `None` while waiting.
    pub fn approval(&self, approval_request_id: &str) -> Result<Option<Decision>, AuthorityError> {
        let now = self.now();
        let mut pending = lock(&self.inner.pending);
        let Some(entry) = pending.get(approval_request_id) else {
            return Err(AuthorityError::UnknownApprovalRequest(approval_request_id.to_owned()));
        };
        Ok(match &entry.state {
            PendingState::Waiting if entry.expires_at <= now => {
                pending.remove(approval_request_id);
                Some(Decision::from_policy(Verdict::Denied(Denial {
                    reasons: vec!["the approval request expired".to_owned()],
                    violations: vec![],
                })))
            }
            PendingState::Waiting => None,
            PendingState::Approved(a) => Some(Decision::from_policy(Verdict::Approved(a.clone()))),
            PendingState::Denied(d) => Some(Decision::from_policy(Verdict::Denied(d.clone()))),
        })
    }

    /// The ids of approval requests still waiting for a human.
    pub fn pending_requests(&self) -> Vec<String> {
        let now = self.now();
        let pending = lock(&self.inner.pending);
        let mut ids: Vec<String> = pending
            .iter()
            .filter(|(_, p)| matches!(p.state, PendingState::Waiting) && p.expires_at > now)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Expires every approval past its time; returns how many.
    pub fn sweep_expired(&self) -> usize {
        let now = self.now();
        let ledgers: Vec<_> = self.inner.agents.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        ledgers.iter().map(|l| lock(l).sweep(now, self.inner.retention)).sum()
    }

    /// A snapshot of `actor`'s ledger (expired approvals are swept first).
    pub fn usage(&self, actor: &str) -> Usage {
        let now = self.now();
        let Ok(actor) = ActorId::new(actor) else {
            return Usage { counters: vec![], live_reservations: 0, stats: LedgerStats::default() };
        };
        let ledger = self.ledger(&actor);
        let mut ledger = lock(&ledger);
        ledger.sweep(now, self.inner.retention);
        let mut counters: Vec<CounterUsage> = ledger
            .counters
            .iter()
            .map(|(k, c)| CounterUsage {
                period: k.period.label(),
                scope: if k.scope_key.is_empty() { "agent".to_owned() } else { k.scope_key.clone() },
                time_zone: k.tz.to_string(),
                period_start: c.period_start,
                spent: c.spent.normalize(),
                reserved: c.reserved.normalize(),
            })
            .collect();
        counters.sort_by(|a, b| (a.period, &a.scope, &a.time_zone).cmp(&(b.period, &b.scope, &b.time_zone)));
        Usage { counters, live_reservations: ledger.live_count(), stats: ledger.stats }
    }
}

impl Authorizer for Engine {
    fn authorize<'a>(&'a self, intent: &'a PaymentIntent) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        let decision = self.decide(intent);
        Box::pin(std::future::ready(Ok(decision)))
    }

    fn record<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(std::future::ready(self.settle(authorization, settlement)))
    }

    fn release(&self, authorization: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
        Box::pin(std::future::ready(self.free(authorization)))
    }

    fn approval_status<'a>(
        &'a self,
        _intent: &'a PaymentIntent,
        pending: &'a PendingApproval,
    ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
        Box::pin(std::future::ready(self.approval(&pending.approval_request_id)))
    }

    fn reconcile<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        let amount = settlement.amount.unwrap_or(authorization.amount);
        self.restore_spend(&authorization.intent, amount, self.now());
        Box::pin(std::future::ready(Ok(Recorded {
            authorization_id: authorization.id.clone(),
            amount,
            transaction_id: None,
            late: false,
            queued: false,
        })))
    }
}
