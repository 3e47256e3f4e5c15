//! The embedded engine on a ledger shared by every replica of a service.
//!
//! The in-process [`Engine`] keeps each actor's counters in its own memory: N replicas of a
//! service on it each enforce the limits alone, so together they can spend N × every budget.
//! [`SharedEngine`] evaluates the same policies with the same code, but reads and reserves
//! against a [`SharedLedger`] (conto's `postgres::PgLedger` is one), in one transaction per
//! decision under a per-actor lock held by the store: every replica sees every other's
//! reservations, and a limit holds across all of them.
//!
//! The split: this crate owns the semantics (which counters a payment touches, their periods and
//! time zones, what is approved, clamped or late); a store owns only atomic reads and writes of
//! rows it is told to touch ([`LedgerRead`], [`LedgerWrite`]).

use std::sync::Arc;

use jiff::Timestamp;
use rust_decimal::Decimal;

use crate::micros::Micros;
use crate::policy::PolicySet;

use super::evaluate::{self, Evaluation, Reads, evaluate};
use super::ledger::{CounterKey, IdKey, VelocityKey};
use super::{Engine, EngineBuilder, Usage, limits_of};
use crate::authorizer::{AuthorityError, Authorizer, BoxFuture, LedgerError, Outage};
use crate::controls::ProductControls;
use crate::decision::{Authorization, Decision, Denial, Limits, PendingApproval, Recorded, Settlement, Verdict};
use crate::engine::{CounterUsage, LedgerStats};
use crate::ids::random_id;
use crate::intent::{ActorId, PaymentIntent};
use crate::lifecycle::{ActorLifecycle, Ensured, LifecycleError};
use crate::money::Amount;

/// One period counter of one actor: what it counts (the counter's id in the policy set and the
/// scope's key: a service, an endpoint, a session, or empty for the whole actor) and the start
/// of the period. Rows of an older period are another counter: a new period starts at zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterSlot {
    /// The counted quantity (rails, scope, period and time zone, spelled out).
    pub counter: String,
    /// The scope's key (empty for the actor as a whole).
    pub scope: String,
    /// The first instant of the period, in the counter's time zone.
    pub period_start: Timestamp,
}

/// How the [`WindowSlot::counter`] of a window that counts live approvals only starts
/// (`MPP_MAX_CONCURRENT_SESSIONS`'s open sessions): an approval leaves such a window when it
/// ends, settled too ([`LedgerWrite::Settle`]), and a [`LedgerWrite::Spend`] never enters it.
pub const LIVE_WINDOW_PREFIX: &str = "live|";

/// One sliding window of approvals: what it counts and where it starts (approvals at or
/// before `since` have left the window).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSlot {
    /// The counted quantity (rails, scope and window length, spelled out).
    pub counter: String,
    /// The scope's key (empty for the actor as a whole).
    pub scope: String,
    /// The window's start.
    pub since: Timestamp,
}

/// What a [`SharedLedger`] reads for one actor, inside the transaction, before the engine
/// decides.
#[derive(Debug, Clone, Copy)]
pub struct LedgerRead<'a> {
    /// Counters whose spent + reserved amount to read.
    pub counters: &'a [CounterSlot],
    /// Windows whose approvals to count.
    pub windows: &'a [WindowSlot],
    /// An authorization whose state to read.
    pub authorization: Option<&'a str>,
    /// A request for human approval whose state to read.
    pub pending: Option<&'a str>,
}

/// What a [`SharedLedger`] read, in the order asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerView {
    /// Spent + reserved per counter of [`LedgerRead::counters`] (zero for a counter never used).
    pub used: Vec<Decimal>,
    /// Approvals per window of [`LedgerRead::windows`].
    pub counts: Vec<u64>,
    /// The state of [`LedgerRead::authorization`], if the ledger knows it.
    pub authorization: Option<Held>,
    /// Whether [`LedgerRead::pending`] is still waiting for a human (and not past its expiry).
    pub pending_waiting: bool,
}

/// The state of one authorization in a shared ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Held {
    /// Live: it holds `amount` on its counters.
    Live {
        /// The amount held.
        amount: Decimal,
    },
    /// Recorded as spend.
    Recorded {
        /// The amount counted (never more than approved).
        counted: Decimal,
        /// The settled amount as reported.
        settled: Decimal,
        /// The settlement reference, when one was given.
        reference: Option<String>,
        /// The transaction id given when it was recorded.
        transaction_id: Option<String>,
        /// It was recorded after its approval had expired.
        late: bool,
    },
    /// Given back unused.
    Released,
    /// Lapsed unused.
    Expired,
}

/// A change a [`SharedLedger`] applies in the transaction that read the [`LedgerView`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LedgerWrite {
    /// A new live authorization: `amount` is added to the reserved amount of each counter (a
    /// missing counter starts at zero) and one approval at `at` to each window, until it is
    /// recorded, released, or `expires_at` passes.
    Reserve {
        /// The authorization id.
        id: String,
        /// The amount held.
        amount: Decimal,
        /// When it lapses.
        expires_at: Timestamp,
        /// The counters it holds.
        counters: Vec<CounterSlot>,
        /// The windows it takes a slot in.
        windows: Vec<WindowSlot>,
        /// When it was granted.
        at: Timestamp,
    },
    /// A live authorization becomes spend: each counter it holds gives back the held amount
    /// and counts `counted`; its window slots stay (it was used), but for those of windows
    /// that count live approvals only, whose counter starts [`LIVE_WINDOW_PREFIX`] (it is no
    /// longer live).
    Settle {
        /// The authorization id.
        id: String,
        /// The amount counted.
        counted: Decimal,
        /// The amount settled, as reported.
        settled: Decimal,
        /// The settlement reference.
        reference: Option<String>,
        /// The transaction id.
        transaction_id: String,
    },
    /// An expired or released authorization is settled after all: `counted` is added to the
    /// spend of these counters (the periods current now), one approval at `now` to these
    /// windows, and the authorization is marked recorded, late.
    SettleLate {
        /// The authorization id.
        id: String,
        /// The amount counted.
        counted: Decimal,
        /// The amount settled, as reported.
        settled: Decimal,
        /// The settlement reference.
        reference: Option<String>,
        /// The transaction id.
        transaction_id: String,
        /// The counters the spend counts on.
        counters: Vec<CounterSlot>,
        /// The velocity windows the spend takes a slot in.
        windows: Vec<WindowSlot>,
    },
    /// A live authorization is given back: counters and windows drop it.
    Release {
        /// The authorization id.
        id: String,
    },
    /// A spend with no reservation (a stand-in's, reconciled): `amount` is added to these
    /// counters and one approval at `at` to these windows. With an `id`, it is also kept as
    /// that authorization, recorded (so a repeat of the same reconcile is seen, and not counted
    /// again).
    Spend {
        /// The authorization the spend was approved under, when it has one.
        id: Option<String>,
        /// The counters.
        counters: Vec<CounterSlot>,
        /// The windows.
        windows: Vec<WindowSlot>,
        /// The amount.
        amount: Decimal,
        /// When it was spent.
        at: Timestamp,
    },
    /// A request for human approval is opened.
    OpenPending {
        /// The request id.
        id: String,
        /// The intent that waits.
        intent: Box<PaymentIntent>,
        /// When the request lapses.
        expires_at: Timestamp,
    },
    /// A human answered a request (an approval comes with its own [`LedgerWrite::Reserve`]).
    AnswerPending {
        /// The request id.
        id: String,
        /// The answer.
        answer: PendingAnswer,
    },
}

/// A human's answer to a request for approval, as a shared ledger keeps it (serialized, for a
/// store that keeps it as a document).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PendingAnswer {
    /// Approved and reserved.
    Approved {
        /// The authorization id.
        authorization_id: String,
        /// The amount approved.
        amount: Amount,
        /// When the approval lapses.
        expires_at: Timestamp,
        /// The spend counters after the approval.
        limits: Limits,
    },
    /// Denied (by the human, or by the policies when re-checked).
    Denied {
        /// Why.
        denial: Denial,
    },
}

/// A request for human approval, as a shared ledger keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedPending {
    /// The intent waiting.
    pub intent: PaymentIntent,
    /// When the request lapses.
    pub expires_at: Timestamp,
    /// `None` while waiting.
    pub answer: Option<PendingAnswer>,
}

/// One actor's counters and authorizations, as a shared ledger keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedUsage {
    /// Each counter in the period that contains `now`: slot, spent, reserved.
    pub counters: Vec<(CounterSlot, Decimal, Decimal)>,
    /// Authorizations still live.
    pub live_reservations: usize,
    /// Totals over the authorizations the ledger still remembers (its retention window).
    pub stats: LedgerStats,
}

/// Why a shared ledger could not answer; nothing was changed, and the decision fails closed.
/// The engine reports an unavailable ledger as an outage ([`Outage::Ledger`]: retryable, and
/// covered by a stand-in when one is configured), and a broken one (set up wrong, or holding
/// what it cannot read) as a configuration error ([`AuthorityError::Unsupported`]), which no
/// retry or stand-in hides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SharedLedgerError {
    /// What went wrong.
    pub message: String,
    /// Whether trying again cannot help: a missing table, no permission, unreadable data.
    pub broken: bool,
}

impl SharedLedgerError {
    /// The ledger cannot be reached or did not answer for now (an outage).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { message: message.into(), broken: false }
    }

    /// The ledger is set up wrong, holds what it cannot read, or was given what it cannot
    /// store: trying again fails the same way, and an operator must look.
    pub fn broken(message: impl Into<String>) -> Self {
        Self { message: message.into(), broken: true }
    }
}

/// Storage for a ledger that several engines share: atomic, per actor.
///
/// Implementations must run each [`SharedLedger::transact`] as one transaction under a lock on
/// the actor, so that no two transactions of the same actor interleave, in any process. Inside
/// it, in this order: expire the actor's live authorizations whose expiry is at or before `now`
/// (giving back their holds and window slots), read what `read` asks, call `step` once with
/// what was read, apply the writes it returns, and commit. On any failure nothing is applied
/// and an error is returned; `step` may then be called again on a retry.
pub trait SharedLedger: Send + Sync + 'static {
    /// One atomic read-decide-write for `actor`.
    fn transact<'a>(
        &'a self,
        actor: &'a ActorId,
        now: Timestamp,
        read: LedgerRead<'a>,
        step: &'a mut (dyn FnMut(&LedgerView) -> Vec<LedgerWrite> + Send),
    ) -> BoxFuture<'a, Result<(), SharedLedgerError>>;

    /// A request for human approval, by id.
    fn pending<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<SharedPending>, SharedLedgerError>>;

    /// `actor`'s counters in the periods that contain `now`, and its live authorizations.
    fn usage<'a>(&'a self, actor: &'a ActorId, now: Timestamp)
    -> BoxFuture<'a, Result<SharedUsage, SharedLedgerError>>;
}

/// A ledger failure on the way to counting money that moved (a record, a release, a
/// reconcile): an outage whatever its kind, so an outbox keeps trying (up to its attempts)
/// instead of giving the spend up at once to a ledger set up wrong for a while.
fn retried(e: SharedLedgerError) -> AuthorityError {
    Outage::Ledger(e.message).into()
}

impl From<SharedLedgerError> for AuthorityError {
    fn from(e: SharedLedgerError) -> Self {
        if e.broken {
            AuthorityError::Unsupported(format!("the shared ledger is broken: {}", e.message))
        } else {
            Outage::Ledger(e.message).into()
        }
    }
}

/// The embedded engine on a [`SharedLedger`]: the same policies and semantics as [`Engine`],
/// with counters, reservations and requests for approval shared by every replica. Built with
/// [`EngineBuilder::build_shared`]. Cheap to clone.
///
/// Actors (who is provisioned, who is paused) stay per process, as the policies do: give every
/// replica the same policy file. A ledger outage fails closed: [`Outage::Ledger`].
#[derive(Clone)]
pub struct SharedEngine {
    engine: Engine,
    ledger: Arc<dyn SharedLedger>,
}

impl std::fmt::Debug for SharedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedEngine").field("engine", &self.engine).finish_non_exhaustive()
    }
}

impl EngineBuilder {
    /// Finishes an engine whose counters, reservations and requests for approval live in
    /// `ledger`, shared with every other engine on the same ledger (see [`SharedEngine`]).
    pub fn build_shared(self, ledger: impl SharedLedger) -> SharedEngine {
        SharedEngine { engine: self.build(), ledger: Arc::new(ledger) }
    }
}

/// The counters and windows every applicable rule keeps for `intent`, as slots.
fn slots(
    holds: &[(CounterKey, Timestamp)],
    windows: &[VelocityKey],
    now: Timestamp,
) -> (Vec<CounterSlot>, Vec<WindowSlot>) {
    let counters = holds.iter().map(|(k, start)| counter_slot(k, *start)).collect();
    let windows = windows.iter().map(|k| window_slot(k, now)).collect();
    (counters, windows)
}

fn counter_slot(key: &CounterKey, start: Timestamp) -> CounterSlot {
    CounterSlot { counter: key.id.as_str().to_owned(), scope: key.scope_key.clone(), period_start: start }
}

fn window_slot(key: &VelocityKey, now: Timestamp) -> WindowSlot {
    WindowSlot {
        counter: key.id.as_str().to_owned(),
        scope: key.scope_key.clone(),
        // A live approval counts until it ends, however long ago it was given.
        since: if key.is_live() {
            Timestamp::UNIX_EPOCH
        } else {
            now.checked_sub(key.window).unwrap_or(Timestamp::UNIX_EPOCH)
        },
    }
}

/// Reads nothing: used to list the keys a payment touches before the transaction.
struct NoReads;

impl Reads for NoReads {
    fn used(&mut self, _: &CounterKey, _: Timestamp) -> Micros {
        Micros::ZERO
    }

    fn count(&mut self, _: &VelocityKey, _: Timestamp) -> usize {
        0
    }
}

/// What a shared ledger read, answered to the evaluation by key.
struct ViewReads<'a> {
    holds: &'a [(CounterKey, Timestamp)],
    windows: &'a [VelocityKey],
    view: &'a LedgerView,
}

impl Reads for ViewReads<'_> {
    fn used(&mut self, key: &CounterKey, start: Timestamp) -> Micros {
        // The store keeps decimals (sums of amounts): whole micro-units, rounded up otherwise.
        self.holds
            .iter()
            .position(|(k, s)| k == key && *s == start)
            .and_then(|i| self.view.used.get(i).copied())
            .map_or(Micros::ZERO, Micros::of_decimal)
    }

    fn count(&mut self, key: &VelocityKey, _: Timestamp) -> usize {
        self.windows
            .iter()
            .position(|k| k == key)
            .and_then(|i| self.view.counts.get(i).copied())
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// A new reservation of `amount` on the counters and windows an evaluation passed: its id, its
/// expiry, and the write that makes it.
fn reservation(
    held: &[(CounterKey, Timestamp)],
    taken: &[VelocityKey],
    amount: Amount,
    ttl: jiff::SignedDuration,
    now: Timestamp,
) -> (String, Timestamp, LedgerWrite) {
    // Time-ordered, as the engine's own: the shared ledger's tables index them at their end.
    let id = IdKey::fresh(now).1;
    let expires_at = now.saturating_add(ttl).unwrap_or(now);
    let (counters, windows) = slots(held, taken, now);
    let write = LedgerWrite::Reserve { id: id.clone(), amount: amount.get(), expires_at, counters, windows, at: now };
    (id, expires_at, write)
}

impl SharedEngine {
    /// The in-process part: policies and actors (provision, pause, resume, retire).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The counters and windows `policies` keep for `intent` at `now`. A decision reads them and
    /// evaluates with one load of the policies: a set swapped between two loads could name
    /// counters the decision never read.
    fn keys(
        policies: &PolicySet,
        intent: &PaymentIntent,
        now: Timestamp,
    ) -> (Vec<(CounterKey, Timestamp)>, Vec<VelocityKey>) {
        evaluate::all_keys(policies, intent, &mut NoReads, now)
    }

    /// The counters and windows a spend of `intent` without a live reservation counts in at
    /// `now` (a late record, a reconciled spend), under the policies in force: every window but
    /// a live-only one (a spend is no live approval).
    fn spend_slots(&self, intent: &PaymentIntent, now: Timestamp) -> (Vec<CounterSlot>, Vec<WindowSlot>) {
        let (holds, mut windows) = Self::keys(&self.engine.inner.policies.load(), intent, now);
        windows.retain(|k| !k.is_live());
        slots(&holds, &windows, now)
    }

    /// Decides on an intent against the shared ledger; an approval is reserved there. See
    /// [`Engine::try_decide`] for actors.
    pub async fn decide(&self, intent: &PaymentIntent) -> Result<Decision, AuthorityError> {
        let open_actor = match self.engine.admit(&intent.actor)? {
            Ok(open) => open,
            Err(denial) => return Ok(Decision::from_policy(Verdict::Denied(denial))),
        };
        let now = self.engine.now();
        let policies = self.engine.inner.policies.load_full();
        let (holds, windows) = Self::keys(&policies, intent, now);
        let (counters, window_slots) = slots(&holds, &windows, now);
        let approval_ttl = self.engine.lifetime(&policies, intent);
        let pending_ttl = self.engine.inner.pending_ttl;
        let mut verdict = None;
        let mut step = |view: &LedgerView| {
            let mut reads = ViewReads { holds: &holds, windows: &windows, view };
            match evaluate(&policies, intent, &mut reads, now, false) {
                Evaluation::Pass { holds: held, windows: taken, daily } => {
                    let (id, expires_at, write) = reservation(&held, &taken, intent.exposure(), approval_ttl, now);
                    verdict = Some(Verdict::Approved(Authorization {
                        id,
                        token: None,
                        amount: intent.exposure(),
                        expires_at,
                        limits: limits_of(daily),
                        intent: Arc::new(intent.clone()),
                        wallet: None,
                    }));
                    vec![write]
                }
                Evaluation::Denied(denial) => {
                    verdict = Some(Verdict::Denied(denial));
                    vec![]
                }
                Evaluation::NeedsApproval(reasons) => {
                    let id = random_id("apr_", 12);
                    let expires_at = now.saturating_add(pending_ttl).unwrap_or(now);
                    verdict = Some(Verdict::RequiresApproval(PendingApproval {
                        approval_request_id: id.clone(),
                        expires_at,
                        reasons,
                    }));
                    vec![LedgerWrite::OpenPending { id, intent: Box::new(intent.clone()), expires_at }]
                }
            }
        };
        let read = LedgerRead { counters: &counters, windows: &window_slots, authorization: None, pending: None };
        self.ledger.transact(&intent.actor, now, read, &mut step).await?;
        let verdict = verdict.ok_or_else(|| Outage::Ledger("the shared ledger never ran the decision".into()))?;
        let mut decision = Decision::from_policy(verdict);
        decision.open_actor = open_actor;
        Ok(decision)
    }

    /// Records a settlement against the shared ledger, with [`Engine::settle`]'s rules: an
    /// excess is clamped, a repeat gets the first answer, a settlement after expiry is counted
    /// late.
    pub async fn settle(
        &self,
        authorization: &Authorization,
        settlement: &Settlement,
    ) -> Result<Recorded, AuthorityError> {
        let now = self.engine.now();
        let actor_inactive = !matches!(self.engine.admit(&authorization.intent.actor), Ok(Ok(_)));
        let settled = settlement.amount.unwrap_or(authorization.amount);
        let approved = authorization.amount.get();
        let id = authorization.id.as_str();
        let recorded = |counted: Decimal, transaction_id: Option<String>, late: bool| Recorded {
            authorization_id: authorization.id.clone(),
            amount: Amount::new(counted).unwrap_or(authorization.amount),
            transaction_id,
            late,
            queued: false,
            actor_inactive,
        };
        let mut answer: Option<Result<Recorded, AuthorityError>> = None;
        let mut step = |view: &LedgerView| -> Vec<LedgerWrite> {
            let (result, writes) = match &view.authorization {
                None => (Err(LedgerError::UnknownAuthorization(id.to_owned()).into()), vec![]),
                Some(Held::Live { amount }) => {
                    let counted = settled.get().min(*amount);
                    let transaction_id = random_id("tx_", 12);
                    let write = LedgerWrite::Settle {
                        id: id.to_owned(),
                        counted,
                        settled: settled.get(),
                        reference: settlement.reference.clone(),
                        transaction_id: transaction_id.clone(),
                    };
                    (Ok(recorded(counted, Some(transaction_id), false)), vec![write])
                }
                Some(Held::Recorded { counted, settled: s, reference, transaction_id, late })
                    if (*s).min(approved) == settled.get().min(approved)
                        && (settlement.reference.is_none() || settlement.reference == *reference) =>
                {
                    (Ok(recorded(*counted, transaction_id.clone(), *late)), vec![])
                }
                Some(Held::Recorded { .. }) => (Err(LedgerError::RecordConflict(id.to_owned()).into()), vec![]),
                // Lapsed or given back, and settled after all: counted now, flagged late.
                Some(Held::Released | Held::Expired) => {
                    let counted = settled.get().min(approved);
                    let transaction_id = random_id("tx_", 12);
                    // The periods and windows current now: only a late record needs them. Its
                    // approval's slots went with its expiry or release; the spend takes them
                    // again (as in one process).
                    let (counters, windows) = self.spend_slots(&authorization.intent, now);
                    let write = LedgerWrite::SettleLate {
                        id: id.to_owned(),
                        counted,
                        settled: settled.get(),
                        reference: settlement.reference.clone(),
                        transaction_id: transaction_id.clone(),
                        counters,
                        windows,
                    };
                    (Ok(recorded(counted, Some(transaction_id), true)), vec![write])
                }
            };
            answer = Some(result);
            writes
        };
        let read = LedgerRead { counters: &[], windows: &[], authorization: Some(id), pending: None };
        self.ledger.transact(&authorization.intent.actor, now, read, &mut step).await.map_err(retried)?;
        answer.unwrap_or_else(|| Err(Outage::Ledger("the shared ledger never ran the record".into()).into()))
    }

    /// Gives back an approval that will not be settled. Releasing twice is a no-op.
    pub async fn free(&self, authorization: &Authorization) -> Result<(), AuthorityError> {
        let now = self.engine.now();
        let id = authorization.id.as_str();
        let mut answer = None;
        let mut step = |view: &LedgerView| -> Vec<LedgerWrite> {
            let (result, writes) = match &view.authorization {
                None => (Err(LedgerError::UnknownAuthorization(id.to_owned()).into()), vec![]),
                Some(Held::Live { .. }) => (Ok(()), vec![LedgerWrite::Release { id: id.to_owned() }]),
                Some(_) => (Ok(()), vec![]),
            };
            answer = Some(result);
            writes
        };
        let read = LedgerRead { counters: &[], windows: &[], authorization: Some(id), pending: None };
        self.ledger.transact(&authorization.intent.actor, now, read, &mut step).await.map_err(retried)?;
        answer.unwrap_or_else(|| Err(Outage::Ledger("the shared ledger never ran the release".into()).into()))
    }

    /// A human's answer to a request for approval, from any replica. Approving evaluates the
    /// intent again (without approval rules) and reserves it if it still passes.
    pub async fn resolve_approval(&self, approval_request_id: &str, approve: bool) -> Result<(), AuthorityError> {
        let now = self.engine.now();
        let unknown = || AuthorityError::from(LedgerError::UnknownApprovalRequest(approval_request_id.to_owned()));
        let pending = self.ledger.pending(approval_request_id).await?.ok_or_else(unknown)?;
        if pending.answer.is_some() || pending.expires_at <= now {
            return Err(unknown());
        }
        let intent = &pending.intent;
        let gate = match self.engine.admit(&intent.actor) {
            Ok(Ok(_)) => None,
            Ok(Err(denial)) => Some(denial),
            Err(e) => Some(Denial { reasons: vec![e.to_string()], violations: vec![] }),
        };
        let refusal = match (approve, gate) {
            (false, _) => Some(Denial { reasons: vec!["rejected by a human approver".to_owned()], violations: vec![] }),
            (true, gate) => gate,
        };
        let policies = self.engine.inner.policies.load_full();
        let (holds, windows) = Self::keys(&policies, intent, now);
        let (counters, window_slots) = if refusal.is_some() { (vec![], vec![]) } else { slots(&holds, &windows, now) };
        let approval_ttl = self.engine.lifetime(&policies, intent);
        let id = approval_request_id;
        let mut waiting = false;
        let mut step = |view: &LedgerView| -> Vec<LedgerWrite> {
            waiting = view.pending_waiting;
            if !view.pending_waiting {
                return vec![];
            }
            if let Some(denial) = &refusal {
                return vec![LedgerWrite::AnswerPending {
                    id: id.to_owned(),
                    answer: PendingAnswer::Denied { denial: denial.clone() },
                }];
            }
            let mut reads = ViewReads { holds: &holds, windows: &windows, view };
            match evaluate(&policies, intent, &mut reads, now, true) {
                Evaluation::Pass { holds: held, windows: taken, daily } => {
                    let (authorization_id, expires_at, write) =
                        reservation(&held, &taken, intent.exposure(), approval_ttl, now);
                    let answer = PendingAnswer::Approved {
                        authorization_id,
                        amount: intent.exposure(),
                        expires_at,
                        limits: limits_of(daily),
                    };
                    vec![write, LedgerWrite::AnswerPending { id: id.to_owned(), answer }]
                }
                Evaluation::Denied(denial) => {
                    vec![LedgerWrite::AnswerPending { id: id.to_owned(), answer: PendingAnswer::Denied { denial } }]
                }
                Evaluation::NeedsApproval(_) => unreachable!("approval rules are skipped"),
            }
        };
        let read = LedgerRead { counters: &counters, windows: &window_slots, authorization: None, pending: Some(id) };
        self.ledger.transact(&intent.actor, now, read, &mut step).await?;
        if waiting { Ok(()) } else { Err(unknown()) }
    }

    /// The current answer to a request for approval: `None` while waiting.
    pub async fn approval(&self, approval_request_id: &str) -> Result<Option<Decision>, AuthorityError> {
        let now = self.engine.now();
        let Some(pending) = self.ledger.pending(approval_request_id).await? else {
            return Err(LedgerError::UnknownApprovalRequest(approval_request_id.to_owned()).into());
        };
        let verdict = match pending.answer {
            None if pending.expires_at <= now => {
                Verdict::Denied(Denial { reasons: vec!["the approval request expired".to_owned()], violations: vec![] })
            }
            None => return Ok(None),
            Some(PendingAnswer::Approved { authorization_id, amount, expires_at, limits }) => {
                Verdict::Approved(Authorization {
                    id: authorization_id,
                    token: None,
                    amount,
                    expires_at,
                    limits,
                    intent: Arc::new(pending.intent),
                    wallet: None,
                })
            }
            Some(PendingAnswer::Denied { denial }) => Verdict::Denied(denial),
        };
        Ok(Some(Decision::from_policy(verdict)))
    }

    /// Counts a spend that has no reservation here (a stand-in's, reconciled) into the
    /// counters and windows of the periods that contain now.
    pub async fn restore_spend(&self, intent: &PaymentIntent, amount: Amount) -> Result<(), AuthorityError> {
        Ok(self.spend(intent, amount, None).await?)
    }

    /// Counts a stand-in's approved spend (the outbox's reconcile) once, kept under its
    /// authorization id: a repeat (a delivery whose answer was lost) counts nothing.
    async fn reconcile_spend(
        &self,
        authorization: &Authorization,
        settlement: &Settlement,
    ) -> Result<Recorded, AuthorityError> {
        let amount = settlement.amount.unwrap_or(authorization.amount);
        self.spend(&authorization.intent, amount, Some(&authorization.id)).await.map_err(retried)?;
        Ok(Recorded::reconciled(&authorization.id, amount))
    }

    /// Counts a spend no reservation holds into the periods and windows that contain now; kept
    /// under authorization `id` when given, and then counted only if the ledger does not know
    /// that id yet.
    async fn spend(&self, intent: &PaymentIntent, amount: Amount, id: Option<&str>) -> Result<(), SharedLedgerError> {
        let now = self.engine.now();
        let (counters, windows) = self.spend_slots(intent, now);
        let write = LedgerWrite::Spend { id: id.map(str::to_owned), counters, windows, amount: amount.get(), at: now };
        let mut step = |view: &LedgerView| if view.authorization.is_some() { vec![] } else { vec![write.clone()] };
        let read = LedgerRead { counters: &[], windows: &[], authorization: id, pending: None };
        self.ledger.transact(&intent.actor, now, read, &mut step).await
    }

    /// A snapshot of `actor`'s counters in the shared ledger, described with the policies in
    /// force (counters no policy keeps any more are left out).
    pub async fn usage(&self, actor: &str) -> Result<Usage, AuthorityError> {
        let Ok(actor) = ActorId::new(actor) else {
            return Ok(Usage { counters: vec![], live_reservations: 0, stats: LedgerStats::default() });
        };
        let now = self.engine.now();
        let shared = self.ledger.usage(&actor, now).await?;
        let policies = self.engine.inner.policies.load();
        let mut counters: Vec<CounterUsage> = shared
            .counters
            .iter()
            .filter_map(|(slot, spent, reserved)| {
                let c = evaluate::cumulative(&policies, &slot.counter)?;
                let limit = evaluate::counter_limit(&policies, actor.as_str(), &slot.counter);
                // The ledger's latest period for this counter; one that has ended since shows
                // as the current one, nothing spent in it yet.
                let current = c.period_start(now);
                let (spent, reserved) =
                    if slot.period_start < current { (Decimal::ZERO, Decimal::ZERO) } else { (*spent, *reserved) };
                Some(CounterUsage {
                    period: c.period.label(),
                    scope: if slot.scope.is_empty() { "agent".to_owned() } else { slot.scope.clone() },
                    time_zone: c.tz_name.to_string(),
                    period_start: slot.period_start.max(current),
                    spent: spent.normalize(),
                    reserved: reserved.normalize(),
                    limit: limit.map(|l| l.0),
                    rails: limit.map(|l| l.1),
                })
            })
            .collect();
        counters.sort_by(|a, b| (a.period, &a.scope, &a.time_zone).cmp(&(b.period, &b.scope, &b.time_zone)));
        Ok(Usage { counters, live_reservations: shared.live_reservations, stats: shared.stats })
    }
}

impl Authorizer for SharedEngine {
    fn authorize<'a>(&'a self, intent: &'a Arc<PaymentIntent>) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        Box::pin(self.decide(intent))
    }

    fn record<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(self.settle(authorization, settlement))
    }

    fn release(&self, authorization: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
        let this = self.clone();
        let authorization = authorization.clone();
        Box::pin(async move { this.free(&authorization).await })
    }

    fn approval_status<'a>(
        &'a self,
        _intent: &'a PaymentIntent,
        pending: &'a PendingApproval,
    ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
        Box::pin(self.approval(&pending.approval_request_id))
    }

    fn reconcile<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(self.reconcile_spend(authorization, settlement))
    }
}

/// Actors are the in-process engine's: see [`SharedEngine`].
impl ActorLifecycle for SharedEngine {
    fn ensure_actor<'a>(
        &'a self,
        actor: &'a str,
        controls: &'a ProductControls,
    ) -> BoxFuture<'a, Result<Ensured, LifecycleError>> {
        ActorLifecycle::ensure_actor(&self.engine, actor, controls)
    }

    fn pause_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>> {
        ActorLifecycle::pause_actor(&self.engine, actor)
    }

    fn resume_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>> {
        ActorLifecycle::resume_actor(&self.engine, actor)
    }

    fn rotate_key<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<bool, LifecycleError>> {
        ActorLifecycle::rotate_key(&self.engine, actor)
    }

    fn retire_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>> {
        ActorLifecycle::retire_actor(&self.engine, actor)
    }
}
