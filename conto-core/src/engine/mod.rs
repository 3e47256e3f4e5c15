//! The embedded policy engine: Conto's policy semantics, in process, with an atomic
//! reservation ledger.
//!
//! Each agent has its own ledger behind its own lock, so agents never wait for each other; the
//! policy set is swapped atomically and read without locking. A decision holds its agent's lock
//! only for what needs the ledger: the stateless rules are judged before it is taken, a
//! decision's approval id and authorization are built outside it, and an approval is reserved
//! before it is released (check and reserve are one step: no two decisions spend the same
//! headroom).
//!
//! That ledger is this process's own: N replicas of a service on [`Engine`] each enforce every
//! limit alone (N × each budget in all). [`SharedEngine`] keeps the ledger in a
//! [`SharedLedger`] that every replica uses (conto's `postgres::PgLedger`).

mod actors;
mod compact;
pub(crate) mod evaluate;
pub(crate) mod ledger;
mod shared;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use jiff::{SignedDuration, Timestamp};
use rust_decimal::Decimal;

use crate::micros::Micros;

pub use ledger::LedgerStats;
pub use shared::{
    CounterSlot, Held, LIVE_WINDOW_PREFIX, LedgerRead, LedgerView, LedgerWrite, PendingAnswer, SharedEngine,
    SharedLedger, SharedLedgerError, SharedPending, SharedUsage, WindowSlot,
};

use crate::authorizer::{AuthorityError, Authorizer, BoxFuture, LedgerError};
use crate::clock::{Clock, SystemClock};
use crate::controls::{ProductControls, SyncReport};
use crate::decision::{Authorization, Decision, Denial, Limits, PendingApproval, Recorded, Settlement, Verdict};
use crate::ids::random_id;
use crate::intent::{ActorId, IntentError, PaymentIntent, Rail};
use crate::journal::{Compaction, Entry, Journal, JournalError};
use crate::lifecycle::{ActorLifecycle, Ensured, LifecycleError};
use crate::money::Amount;
use crate::policy::{PolicyError, PolicySet};
use evaluate::{Evaluation, evaluate};
use ledger::{AgentLedger, Closed, IdKey, Kept};

/// How long an approval may wait for its settlement (Conto: 10 minutes for `payments/approve`;
/// x402 and MPP pre-authorizations alike).
pub const DEFAULT_APPROVAL_TTL: SignedDuration = SignedDuration::from_mins(10);
/// How long an approved payment request or card approval may wait (Conto: 5 minutes).
pub const DEFAULT_SHORT_APPROVAL_TTL: SignedDuration = SignedDuration::from_mins(5);

/// How long Conto keeps an approval on `rail` waiting for its settlement.
pub fn conto_approval_ttl(rail: &Rail) -> SignedDuration {
    match rail {
        Rail::Request { .. } | Rail::Card { .. } => DEFAULT_SHORT_APPROVAL_TTL,
        Rail::Transfer { .. } | Rail::X402 { .. } | Rail::Mpp { .. } => DEFAULT_APPROVAL_TTL,
    }
}
/// How long a request for human approval stays open.
pub const DEFAULT_PENDING_TTL: SignedDuration = SignedDuration::from_hours(1);
/// How long ended approvals are remembered, so a repeated record or release is answered the same
/// (at least this long, and at most a 24th of it longer: they are forgotten in hourly batches).
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

/// Whether a provisioned actor may spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ActorStatus {
    /// The actor may spend, within its policies.
    Active,
    /// The kill switch: every new authorization is denied. Records of settlements approved
    /// before the pause are still accepted (money that moved is never dropped from the ledger).
    Paused,
}

impl ActorStatus {
    /// Conto's spelling: `ACTIVE` or `PAUSED`.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorStatus::Active => "ACTIVE",
            ActorStatus::Paused => "PAUSED",
        }
    }
}

/// The policies an engine enforces: the base set, plus one set per managed actor
/// ([`ActorLifecycle::ensure_actor`]).
#[derive(Default)]
struct Layers {
    base: PolicySet,
    managed: std::collections::BTreeMap<ActorId, (Vec<serde_json::Value>, PolicySet)>,
}

impl Layers {
    fn effective(&self) -> PolicySet {
        PolicySet::merged(std::iter::once(&self.base).chain(self.managed.values().map(|(_, set)| set)))
    }
}

struct Inner {
    policies: ArcSwap<PolicySet>,
    layers: Mutex<Layers>,
    journal: std::sync::OnceLock<Arc<dyn Journal>>,
    /// Entries for changes made though their append failed (money that moved, an actor
    /// stopped), in order: written before the next entry (see [`Engine::write_applied`]).
    unjournaled: Mutex<std::collections::VecDeque<Entry>>,
    /// Every actor the engine knows: its status while provisioned, its ledger once it needs
    /// one. One map, so a decision finds both in one lookup (see [`actors`]).
    actors: actors::Actors,
    open_actors: bool,
    pending: Mutex<HashMap<String, Pending>>,
    clock: Arc<dyn Clock>,
    /// Every rail's approval lifetime, when set; else Conto's per rail ([`conto_approval_ttl`]).
    approval_ttl: Option<SignedDuration>,
    pending_ttl: SignedDuration,
    retention: SignedDuration,
}

/// One actor's entry: its status while provisioned (`None` once retired, or for an actor
/// only a ledger knows), and its ledger, created the first time one is needed (a decision
/// past the stateless rules, a record, a release or a restore), as before the merge.
#[derive(Default)]
struct Slot {
    status: Option<ActorStatus>,
    ledger: Option<Arc<Mutex<AgentLedger>>>,
}

/// The embedded engine. Cheap to clone; clones share policies and ledgers.
///
/// ```
/// use conto::{Engine, PaymentIntent, Rail, Verdict};
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
    actors: HashMap<ActorId, ActorStatus>,
    open_actors: bool,
    clock: Arc<dyn Clock>,
    approval_ttl: Option<SignedDuration>,
    pending_ttl: SignedDuration,
    retention: SignedDuration,
    compact_on_open: bool,
}

impl EngineBuilder {
    /// The policies to enforce. The actors the set lists (a policy file's `agents`) are
    /// provisioned.
    pub fn policies(mut self, policies: PolicySet) -> Self {
        for actor in policies.agents() {
            self.actors.entry(actor.clone()).or_insert(ActorStatus::Active);
        }
        self.policies = policies;
        self
    }

    /// Provisions these actors: only provisioned actors may spend. Each id must follow the
    /// rule in [`ActorId`]'s docs.
    ///
    /// ```
    /// use conto::Engine;
    /// let engine = Engine::builder().actors(["agent-1", "agent-2"])?.build();
    /// assert!(engine.actor_status("agent-1").is_some());
    /// assert!(engine.actor_status("agent-3").is_none());
    /// # Ok::<(), conto::IntentError>(())
    /// ```
    pub fn actors<I, S>(mut self, actors: I) -> Result<Self, IntentError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for actor in actors {
            self.actors.entry(ActorId::new(actor)?).or_insert(ActorStatus::Active);
        }
        Ok(self)
    }

    /// Lets **any** valid actor id spend, each with its own fresh ledger: for demos and tests
    /// only. Never the default. Every decision for an actor that was not provisioned carries
    /// [`Decision::open_actor`], and the pipeline reports it in its events.
    pub fn open_actors(mut self) -> Self {
        self.open_actors = true;
        self
    }

    /// The clock (tests use [`ManualClock`](crate::ManualClock)).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long an approval waits for its settlement, on every rail; `None` (the default) for
    /// Conto's lifetimes ([`conto_approval_ttl`]): 10 minutes for transfers, x402 and MPP, 5
    /// minutes for payment requests and cards.
    pub fn approval_ttl(mut self, ttl: impl Into<Option<SignedDuration>>) -> Self {
        self.approval_ttl = ttl.into();
        self
    }

    /// How long a request for human approval stays open (default 1 hour).
    pub fn pending_ttl(mut self, ttl: SignedDuration) -> Self {
        self.pending_ttl = ttl;
        self
    }

    /// How long an ended approval is remembered ([`DEFAULT_RETENTION`], 24 hours, by default;
    /// at least a minute). Within the window, a repeated record or release is answered as the
    /// first was, and a settlement recorded after its approval expired is still counted,
    /// flagged late. After it, such a record is refused as unknown and not counted. Every
    /// recorded payment is kept in memory for the window (about 75 bytes; see BENCHMARKS.md):
    /// a shorter one bounds what a busy engine holds, at 100 payments a second some 650 MB
    /// for a day, 27 MB for an hour.
    ///
    /// ```
    /// use conto::{Engine, jiff::SignedDuration};
    /// let engine = Engine::builder().retention(SignedDuration::from_hours(1)).build();
    /// # let _ = engine;
    /// ```
    pub fn retention(mut self, window: SignedDuration) -> Self {
        self.retention = window.max(SignedDuration::from_mins(1));
        self
    }

    /// Whether [`EngineBuilder::build_journaled`] compacts the journal once it is replayed
    /// (default `true`; see [`Engine::compact_journal`]).
    ///
    /// ```
    /// use conto::Engine;
    /// let builder = Engine::builder().compact_on_open(false);
    /// # let _ = builder;
    /// ```
    pub fn compact_on_open(mut self, compact: bool) -> Self {
        self.compact_on_open = compact;
        self
    }

    /// Finishes an engine whose ledger is durable: every change is written to `journal` before
    /// it is acknowledged, and the journal's entries are replayed now, so spent counters, live
    /// reservations, pending approvals and actors provisioned at run time survive a restart.
    /// The journal is then compacted ([`Engine::compact_journal`]; see
    /// [`EngineBuilder::compact_on_open`]), so that the next start replays the history folded,
    /// not every payment. A compaction that fails is logged and leaves the journal as it was.
    pub fn build_journaled(self, journal: impl Journal + 'static) -> Result<Engine, JournalError> {
        let compact_now = self.compact_on_open;
        let engine = self.build();
        // Compacting, the journal is read once: replayed as the compaction reads it (nothing
        // appends before the engine is handed out).
        let mut replayed = false;
        if compact_now {
            let (now, retention) = engine.compaction_horizon();
            let compacted = journal.compact(&mut |entries| {
                engine.replay(&entries);
                replayed = true;
                compact::compact(entries, now, retention)
            });
            match compacted {
                Ok(Some(c)) if c.after < c.before => {
                    tracing::info!(before = c.before, after = c.after, "conto.engine.journal_compacted");
                }
                Ok(_) => {}
                // Not read at all: the replay below says why.
                Err(_) if !replayed => {}
                Err(error) => tracing::warn!(%error, "conto.engine.journal_not_compacted: replayed whole next start"),
            }
        }
        if !replayed {
            engine.replay(&journal.replay()?);
        }
        let _ = engine.inner.journal.set(Arc::new(journal));
        Ok(engine)
    }

    /// Finishes the engine, with its ledger in memory (see [`EngineBuilder::build_journaled`]
    /// for a durable one; conto's `DurableEngine::open` journals to a SQLite file).
    pub fn build(self) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                policies: ArcSwap::from_pointee(self.policies.clone()),
                layers: Mutex::new(Layers { base: self.policies, managed: Default::default() }),
                journal: std::sync::OnceLock::new(),
                unjournaled: Mutex::default(),
                actors: actors::Actors::with_slots(
                    self.actors.into_iter().map(|(id, status)| (id, Slot { status: Some(status), ledger: None })),
                ),
                open_actors: self.open_actors,
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
    /// The least limit the rules that apply to the actor now set on it (`None`: no rule
    /// counts it now, its spend kept from an earlier policy).
    pub limit: Option<Decimal>,
    /// The rails it counts: `"all"`, `"x402"`, `"mpp"` or `"card"` (`None` with `limit`).
    pub rails: Option<&'static str>,
}

/// Forgets the requests for human approval that ended more than `retention` before `now`: a
/// request lapsed unanswered, or answered and, if approved, its approval lapsed too. (Kept
/// for ever, every request a long-running engine ever opened stayed in memory.)
fn forget_answered(pending: &mut HashMap<String, Pending>, now: Timestamp, retention: SignedDuration) {
    pending.retain(|_, p| {
        let ended = match &p.state {
            PendingState::Approved(a) => a.expires_at.max(p.expires_at),
            _ => p.expires_at,
        };
        ended.checked_add(retention).ok().is_none_or(|t| t > now)
    });
}

/// The daily figures an approval reports, from the tightest daily limit evaluation saw
/// (`(used after this approval, limit)`).
fn limits_of(daily: Option<(Decimal, Decimal)>) -> Limits {
    daily
        .map(|(used, limit)| Limits {
            daily_used: Some(used),
            daily_limit: Some(limit),
            daily_remaining: Some((limit - used).max(Decimal::ZERO)),
        })
        .unwrap_or_default()
}

/// What the ledger keeps of a record, to answer its repeats: the amount counted, the amount
/// reported and its reference, without the authorization id (the closed map's key already is
/// that id) or a receipt to copy.
fn kept(counted: Micros, settled: Amount, (late, actor_inactive): (bool, bool), reference: &Option<String>) -> Kept {
    let reference = reference.as_deref().map(Box::from);
    Kept { counted, settled: Micros::of(settled), late, actor_inactive, reference }
}

/// A journal that could not write: an outage (the change it describes is not made, or not yet
/// durable).
/// Appends the entries `waiting` for a journal that failed, oldest first, each taken off once
/// it is written.
fn write_waiting(journal: &dyn Journal, waiting: &mut std::collections::VecDeque<Entry>) -> Result<(), JournalError> {
    while let Some(first) = waiting.front() {
        journal.append(first)?;
        waiting.pop_front();
    }
    Ok(())
}

fn journal_outage(e: JournalError) -> AuthorityError {
    crate::Outage::Journal(e.0).into()
}

/// The answer to a repeat of a kept record.
fn answer(authorization: &Authorization, kept: &Kept) -> Recorded {
    Recorded {
        authorization_id: authorization.id.clone(),
        // Kept from an `Amount`, so always one; the approved amount is the bound regardless.
        amount: Amount::from_micros(kept.counted.0).unwrap_or(authorization.amount),
        transaction_id: Some(transaction_id(IdKey::of(&authorization.id))),
        late: kept.late,
        queued: false,
        actor_inactive: kept.actor_inactive,
    }
}

/// The engine's transaction reference for a recorded authorization: derived from the
/// authorization's id, so a replayed record (in this process or from the journal) answers the
/// same reference without the ledger keeping a copy.
fn transaction_id(key: IdKey) -> String {
    // An odd multiplier is a bijection on the low bits: distinct ids, distinct references.
    crate::ids::hex_id("tx_", key.bits().wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835), 24)
}

/// Provisions `id` in `actors` (an existing actor keeps its status); whether it was not
/// provisioned before.
fn provision_in(actors: &mut ledger::Map<ActorId, Slot>, id: &ActorId) -> bool {
    let slot = actors.entry(id.clone()).or_default();
    let new = slot.status.is_none();
    slot.status.get_or_insert(ActorStatus::Active);
    new
}

/// Un-provisions `id` in `actors`, keeping its ledger (its live approvals can still be
/// recorded or released); whether it was provisioned.
fn retire_in(actors: &mut ledger::Map<ActorId, Slot>, id: &ActorId) -> bool {
    let Some(slot) = actors.get_mut(id) else { return false };
    let was = slot.status.take().is_some();
    if slot.ledger.is_none() {
        actors.remove(id);
    }
    was
}

/// Whether what ended at `ended` is still within `retention` at `now` (a retention past the
/// calendar's end keeps everything): what replay answers for, and compaction keeps.
pub(crate) fn retained(ended: Timestamp, retention: SignedDuration, now: Timestamp) -> bool {
    ended.checked_add(retention).map_or(true, |t| t > now)
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Engine {
    /// The least authorization id this engine makes at `t` (its ids begin with `auth_` and the
    /// second they were made in, in hex): every id it made before `t`'s second sorts below, so
    /// a store keeping authorizations by id finds the old ones as a range.
    ///
    /// ```
    /// use conto::Engine;
    /// let t: conto::jiff::Timestamp = "2026-12-02T00:00:00Z".parse()?;
    /// assert_eq!(Engine::first_id_at(t), "auth_6b0f5f80"); // 1 796 169 600 s
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn first_id_at(t: Timestamp) -> String {
        IdKey::first_at(t)
    }

    /// How long an approval on `rail` waits for its settlement.
    pub(crate) fn approval_ttl(&self, rail: &Rail) -> SignedDuration {
        self.inner.approval_ttl.unwrap_or_else(|| conto_approval_ttl(rail))
    }

    /// An approval's lifetime for `intent` under `policies`: an MPP session lives as long as
    /// an applicable `MPP_MAX_SESSION_DURATION` allows (the shortest such; longer or shorter
    /// than [`Engine::approval_ttl`]: a session the policy lets stay open keeps its deposit
    /// held and its slot taken until then), any other approval [`Engine::approval_ttl`].
    pub(crate) fn lifetime(&self, policies: &PolicySet, intent: &PaymentIntent) -> SignedDuration {
        evaluate::session_cap(policies, intent).unwrap_or_else(|| self.approval_ttl(&intent.rail))
    }

    /// A builder with no policies, the system clock and Conto's default lifetimes.
    pub fn builder() -> EngineBuilder {
        EngineBuilder {
            policies: PolicySet::empty(),
            actors: HashMap::new(),
            open_actors: false,
            clock: Arc::new(SystemClock),
            approval_ttl: None,
            pending_ttl: DEFAULT_PENDING_TTL,
            retention: DEFAULT_RETENTION,
            compact_on_open: true,
        }
    }

    /// An engine enforcing `policies`, with the actors the set lists provisioned.
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

    /// Replaces the base policies atomically (managed actors keep theirs); ledgers are kept. Actors the new set lists are
    /// provisioned; no actor is un-provisioned by a policy change.
    pub fn set_policies(&self, policies: PolicySet) {
        {
            let mut actors = self.inner.actors.write();
            for actor in policies.agents() {
                provision_in(&mut actors, actor);
            }
        }
        let mut layers = lock(&self.inner.layers);
        layers.base = policies;
        self.inner.policies.store(Arc::new(layers.effective()));
    }

    /// Provisions `actor` (idempotent: an existing actor keeps its status). Returns the
    /// validated id.
    pub fn provision(&self, actor: &str) -> Result<ActorId, IntentError> {
        let id = ActorId::new(actor)?;
        self.provision_id(&id);
        Ok(id)
    }

    /// Provisions `id` (an existing actor keeps its status), journaling it when it is new;
    /// whether it was not provisioned before.
    fn provision_id(&self, id: &ActorId) -> bool {
        let new = provision_in(&mut self.inner.actors.write(), id);
        if new {
            // Logged; the entry waits to be written (refusing a provisioned actor is safe).
            let _ = self.journal_actor(id, "ACTIVE");
        }
        new
    }

    /// The kill switch: `actor`'s next authorization is denied. Idempotent.
    pub fn pause(&self, actor: &str) -> Result<(), AuthorityError> {
        self.set_status(actor, ActorStatus::Paused)
    }

    /// Lifts a pause. Idempotent.
    pub fn resume(&self, actor: &str) -> Result<(), AuthorityError> {
        self.set_status(actor, ActorStatus::Active)
    }

    fn set_status(&self, actor: &str, status: ActorStatus) -> Result<(), AuthorityError> {
        let unknown = || AuthorityError::unknown_actor(actor);
        let id = ActorId::new(actor).map_err(|_| unknown())?;
        let mut actors = self.inner.actors.write();
        let slot = actors.get_mut(&id).and_then(|slot| slot.status.as_mut()).ok_or_else(unknown)?;
        let changed = *slot != status;
        *slot = status;
        drop(actors);
        if changed {
            // Made whatever the journal says (a pause must stop spending now); the error
            // says it is not yet durable.
            self.journal_actor(&id, status.as_str())?;
        } else {
            // Asked again: done once its entry is durable (it may still be waiting).
            self.flush_journal()?;
        }
        Ok(())
    }

    /// Retires `actor`: it is no longer provisioned, so its next authorization is refused as an
    /// unknown actor. Its live approvals can still be recorded or released. Returns whether it
    /// was provisioned.
    ///
    /// The retirement applies at once. An error says it is not yet durable: the journal failed,
    /// and its entry waits to be written before the next one (a restart before then would bring
    /// the actor back). Asked again, it is done once that entry is written.
    pub fn retire(&self, actor: &str) -> Result<bool, AuthorityError> {
        let Ok(id) = ActorId::new(actor) else { return Ok(false) };
        let removed = {
            let mut actors = self.inner.actors.write();
            retire_in(&mut actors, &id)
        };
        {
            let mut layers = lock(&self.inner.layers);
            if layers.managed.remove(&id).is_some() {
                self.inner.policies.store(Arc::new(layers.effective()));
            }
        }
        if removed {
            self.journal_actor(&id, "RETIRED")?;
        } else {
            self.flush_journal()?;
        }
        Ok(removed)
    }

    /// Provisions `actor` with `controls` as its own policies (named `conto-rs:{actor} · …`),
    /// replacing the ones an earlier call installed. Idempotent; the report says what changed.
    pub fn ensure_actor(&self, actor: &str, controls: &ProductControls) -> Result<Ensured, LifecycleError> {
        let id = ActorId::new(actor)?;
        let name = crate::lifecycle::managed_name(&id);
        let wanted = controls.policies(&name, id.as_str());
        let set = PolicySet::from_value(serde_json::Value::Array(wanted.clone()))?;
        let created = self.provision_id(&id);
        let mut report = SyncReport::default();
        let mut layers = lock(&self.inner.layers);
        let have: Vec<serde_json::Value> = layers.managed.get(&id).map(|(docs, _)| docs.clone()).unwrap_or_default();
        for want in &wanted {
            match have.iter().find(|h| h["name"] == want["name"]) {
                None => report.created += 1,
                Some(h) if h == want => report.unchanged += 1,
                Some(_) => report.updated += 1,
            }
        }
        report.deleted = have.iter().filter(|h| !wanted.iter().any(|w| w["name"] == h["name"])).count() as u32;
        if report.created + report.updated + report.deleted > 0 {
            layers.managed.insert(id.clone(), (wanted, set));
            self.inner.policies.store(Arc::new(layers.effective()));
        }
        Ok(Ensured { agent_id: id.to_string(), actor: id, created, issued_key: false, policies: report })
    }

    /// `actor`'s status, or `None` when it is not provisioned.
    pub fn actor_status(&self, actor: &str) -> Option<ActorStatus> {
        let id = ActorId::new(actor).ok()?;
        self.inner.actors.read().get(&id).and_then(|slot| slot.status)
    }

    /// The provisioned actors and their status, sorted by id.
    pub fn actors(&self) -> Vec<(ActorId, ActorStatus)> {
        let mut all: Vec<_> =
            self.inner.actors.read().iter().filter_map(|(a, slot)| Some((a.clone(), slot.status?))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Whether this engine lets unprovisioned actors spend (see [`EngineBuilder::open_actors`]).
    pub fn is_open(&self) -> bool {
        self.inner.open_actors
    }

    /// The gate in front of every decision: `Ok(false)` for a provisioned, active actor,
    /// `Ok(true)` for an unprovisioned one let through by `open_actors`, a denial for a paused
    /// actor, and an error for an unknown one.
    fn admit(&self, actor: &ActorId) -> Result<Result<bool, Denial>, AuthorityError> {
        self.inner.actors.with(actor, |status, _| self.admission(actor, status))
    }

    /// [`Engine::admit`] for an actor with this status (`None`: not provisioned).
    fn admission(&self, actor: &ActorId, status: Option<ActorStatus>) -> Result<Result<bool, Denial>, AuthorityError> {
        match status {
            Some(ActorStatus::Active) => Ok(Ok(false)),
            Some(ActorStatus::Paused) => Ok(Err(Denial {
                reasons: vec![format!("actor `{actor}` is paused: every new payment is denied until it is resumed")],
                violations: vec![],
            })),
            None if self.inner.open_actors => Ok(Ok(true)),
            None => Err(AuthorityError::unknown_actor(actor.as_str())),
        }
    }

    /// The policies in force: the base set and every managed actor's.
    pub fn policies(&self) -> Arc<PolicySet> {
        self.inner.policies.load_full()
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    fn ledger(&self, actor: &ActorId) -> Arc<Mutex<AgentLedger>> {
        if let Some(l) = self.inner.actors.read().get(actor).and_then(|s| s.ledger.as_ref()) {
            return l.clone();
        }
        let mut actors = self.inner.actors.write();
        actors.entry(actor.clone()).or_default().ledger.get_or_insert_default().clone()
    }

    /// Decides on an intent, synchronously. An approval reserves its amount. An unprovisioned
    /// actor is denied here; [`Engine::try_decide`] (what the pipeline calls) says so with a
    /// typed [`Refused::UnknownActor`](crate::Refused::UnknownActor).
    pub fn decide(&self, intent: &PaymentIntent) -> Decision {
        self.try_decide(intent).unwrap_or_else(|e| {
            Decision::from_policy(Verdict::Denied(Denial { reasons: vec![e.to_string()], violations: vec![] }))
        })
    }

    /// Decides on an intent, synchronously: an unprovisioned actor is an
    /// [`Refused::UnknownActor`](crate::Refused::UnknownActor) (unless the engine is open), a paused one is denied, and
    /// any other gets its policies' verdict. An approval reserves its amount.
    pub fn try_decide(&self, intent: &PaymentIntent) -> Result<Decision, AuthorityError> {
        self.decide_with(intent, || Arc::new(intent.clone()))
    }

    /// [`Engine::try_decide`] on a shared intent: an approval keeps the `Arc`, no copy.
    pub fn decide_shared(&self, intent: &Arc<PaymentIntent>) -> Result<Decision, AuthorityError> {
        self.decide_with(intent, || intent.clone())
    }

    fn decide_with(
        &self,
        intent: &PaymentIntent,
        shared: impl FnOnce() -> Arc<PaymentIntent>,
    ) -> Result<Decision, AuthorityError> {
        self.inner.actors.with(&intent.actor, |status, ledger| {
            let open_actor = match self.admission(&intent.actor, status)? {
                Ok(open) => open,
                Err(denial) => return Ok(Decision::from_policy(Verdict::Denied(denial))),
            };
            let mut decision = self.evaluate_admitted(intent, shared, ledger)?;
            decision.open_actor = open_actor;
            Ok(decision)
        })
    }

    fn evaluate_admitted(
        &self,
        intent: &PaymentIntent,
        shared: impl FnOnce() -> Arc<PaymentIntent>,
        ledger: Option<&Arc<Mutex<AgentLedger>>>,
    ) -> Result<Decision, AuthorityError> {
        let now = self.now();
        let policies = self.inner.policies.load();
        // Everything that needs no ledger happens outside its lock: the stateless rules, the
        // approval's id, and (below) the authorization itself.
        let mut screened = evaluate::screen(&policies, intent, now, false);
        if let Some(denial) = screened.denied_outright() {
            return Ok(Decision::from_policy(Verdict::Denied(denial)));
        }
        let (key, id) = IdKey::fresh(now);
        // Created here when the actor has none yet (never for a denial outright).
        let created;
        let ledger = match ledger {
            Some(ledger) => ledger,
            None => {
                created = self.ledger(&intent.actor);
                &created
            }
        };
        let mut ledger = lock(ledger);
        let now = ledger.now(now);
        let expires_at = now.saturating_add(self.lifetime(&policies, intent)).unwrap_or(now);
        ledger.sweep(now, self.inner.retention);
        Ok(match screened.finish(&mut *ledger, now) {
            Evaluation::Pass { holds, windows, daily } => {
                self.reserve(&mut ledger, (key, &id), intent, expires_at, holds, windows, now)?;
                drop(ledger);
                let limits = limits_of(daily);
                let authorization = Authorization {
                    id,
                    token: None,
                    amount: intent.exposure(),
                    expires_at,
                    limits,
                    intent: shared(),
                    wallet: None,
                };
                Decision::from_policy(Verdict::Approved(authorization))
            }
            Evaluation::Denied(denial) => Decision::from_policy(Verdict::Denied(denial)),
            Evaluation::NeedsApproval(reasons) => {
                drop(ledger);
                let id = random_id("apr_", 12);
                let expires_at = now.saturating_add(self.inner.pending_ttl).unwrap_or(now);
                self.write_with(|| Entry::PendingOpened { id: id.clone(), intent: intent.clone(), expires_at })?;
                let mut pending = lock(&self.inner.pending);
                if pending.len() % 1024 == 1023 {
                    forget_answered(&mut pending, now, self.inner.retention);
                }
                pending.insert(id.clone(), Pending { intent: shared(), expires_at, state: PendingState::Waiting });
                drop(pending);
                Decision::from_policy(Verdict::RequiresApproval(PendingApproval {
                    approval_request_id: id,
                    expires_at,
                    reasons,
                }))
            }
        })
    }

    /// Writes a journal entry, when the engine has a journal, after any entry still waiting
    /// (see [`Engine::write_applied`]). A failure is an outage: the change it describes is not
    /// made.
    fn write(&self, entry: &Entry) -> Result<(), AuthorityError> {
        let Some(journal) = self.inner.journal.get() else { return Ok(()) };
        self.flush_journal()?;
        journal.append(entry).map_err(journal_outage)
    }

    /// Writes the journal entries still waiting (a record or a status change made while the
    /// journal failed: made anyway, and answered `Outage::Journal`), oldest first. Every later
    /// entry does this first; so does a repeat of a change still waiting (a retried record, a
    /// pause asked again), which then fails until the entry is durable. Call it at shutdown.
    /// `Ok` when nothing waits.
    pub fn flush_journal(&self) -> Result<(), AuthorityError> {
        let Some(journal) = self.inner.journal.get() else { return Ok(()) };
        write_waiting(&**journal, &mut lock(&self.inner.unjournaled)).map_err(journal_outage)
    }

    /// Writes the entry of a change made whatever the journal says: money that moved (a
    /// record) or an actor's status. When the append fails the change stays made, its entry
    /// waits in memory and is written before the next one (a decision then fails closed until
    /// it is), and the error says the change is not yet durable.
    fn write_applied(&self, entry: impl FnOnce() -> Entry) -> Result<(), AuthorityError> {
        if self.inner.journal.get().is_none() {
            return Ok(());
        }
        let entry = entry();
        self.write(&entry).inspect_err(|error| {
            tracing::error!(%error, "conto.engine.journal_failed: kept in memory, written before the next entry");
            lock(&self.inner.unjournaled).push_back(entry);
        })
    }

    /// [`Engine::write`] that builds the entry only when there is a journal to write it to
    /// (an in-memory engine clones no intent for it).
    fn write_with(&self, entry: impl FnOnce() -> Entry) -> Result<(), AuthorityError> {
        match self.inner.journal.get() {
            Some(_) => self.write(&entry()),
            None => Ok(()),
        }
    }

    /// Applies a journal's entries to a fresh engine (nothing is written back).
    fn replay(&self, entries: &[Entry]) {
        // Keyed by id (linear in the journal's length), restored in journal order.
        // A live reservation: its journal position, intent, amount, expiry and (in entries that
        // have it) when it was reserved.
        let mut live: HashMap<&str, (usize, &PaymentIntent, Amount, Timestamp, Option<Timestamp>)> = HashMap::new();
        let mut pending: HashMap<&str, (usize, &PaymentIntent, Timestamp)> = HashMap::new();
        // An entry written twice (an append that failed after it was made durable, then
        // written again) is counted once.
        let mut recorded: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let now = self.now();
        // An approval that ended at `ended` is still answered for (kept closed) after a restart
        // while within the retention window.
        let retained = |ended: Timestamp| retained(ended, self.inner.retention, now);
        for (seq, entry) in entries.iter().enumerate() {
            match entry {
                Entry::Reserved { id, intent, amount, expires_at, at } => {
                    live.insert(id, (seq, intent, *amount, *expires_at, *at));
                }
                Entry::Recorded { id, intent, amount, settled, reference, at } => {
                    if !recorded.insert(id.as_str()) {
                        continue;
                    }
                    // Counted as it was before the restart: a record in time turned its
                    // reservation into spend in the periods and windows it was reserved in; a
                    // late one (its approval lapsed, or released, when it came) counted when it
                    // came, as does one whose entry from before reservations had a time.
                    let in_time = live.remove(id.as_str()).filter(|(.., expires_at, _)| *at < *expires_at);
                    let late = in_time.is_none();
                    let counted_at = in_time.and_then(|(.., reserved_at)| reserved_at).unwrap_or(*at);
                    self.restore_spend(intent, *amount, counted_at);
                    let ledger = self.ledger(&intent.actor);
                    let how = Closed::Recorded(kept(Micros::of(*amount), *settled, (late, false), reference));
                    lock(&ledger).close(IdKey::of(id), how, *at);
                }
                // Closed as it was, so that a record arriving after the restart (a caller that
                // released and settled after all) is counted late, not refused as unknown. It
                // is kept as if it ended at its expiry: the release came no later.
                Entry::Released { id, actor } => {
                    if let Some((_, _, _, expires_at, _)) = live.remove(id.as_str())
                        && retained(expires_at)
                    {
                        lock(&self.ledger(actor)).close(IdKey::of(id), Closed::Released, expires_at);
                    }
                }
                Entry::PendingOpened { id, intent, expires_at } => {
                    pending.insert(id, (seq, intent, *expires_at));
                }
                Entry::PendingClosed { id } => {
                    pending.remove(id.as_str());
                }
                Entry::Folded { intent, spent, records, at } => {
                    self.restore_records(intent, Micros::of_decimal(*spent), *records, *at);
                }
                Entry::Actor { actor, status } => {
                    let mut actors = self.inner.actors.write();
                    match status.as_str() {
                        "PAUSED" => {
                            actors.entry(actor.clone()).or_default().status = Some(ActorStatus::Paused);
                        }
                        "RETIRED" => {
                            retire_in(&mut actors, actor);
                        }
                        "ACTIVE" => {
                            actors.entry(actor.clone()).or_default().status = Some(ActorStatus::Active);
                        }
                        // A status this build does not know (written by a newer one): paused,
                        // never active, until an operator says otherwise.
                        other => {
                            tracing::warn!(%actor, status = other, "conto.engine.unknown_status: replayed as PAUSED");
                            actors.entry(actor.clone()).or_default().status = Some(ActorStatus::Paused);
                        }
                    }
                }
            }
        }
        let (mut live, mut lapsed): (Vec<_>, Vec<_>) = live.into_iter().partition(|(_, l)| l.3 > now);
        lapsed.sort_by_key(|(_, l)| l.3);
        // Lapsed while the engine was down (or before): closed as expired, so that their
        // records, still on their way in an outbox, are counted late, not refused as unknown.
        for (id, (_, intent, _, expires_at, _)) in lapsed {
            if retained(expires_at) {
                lock(&self.ledger(&intent.actor)).close(IdKey::of(id), Closed::Expired, expires_at);
            }
        }
        live.sort_by_key(|(_, l)| l.0);
        for (id, (_, intent, amount, expires_at, reserved_at)) in live {
            let authorization = Authorization {
                id: id.to_owned(),
                token: None,
                amount,
                expires_at,
                limits: Limits::default(),
                intent: Arc::new(intent.clone()),
                wallet: None,
            };
            // Holding the periods and windows it was reserved in, as before the restart.
            self.restore_reservation(&authorization, reserved_at);
        }
        for (id, (_, intent, expires_at)) in pending.into_iter().filter(|(_, p)| p.2 > now) {
            let pending = PendingApproval { approval_request_id: id.to_owned(), expires_at, reasons: vec![] };
            self.restore_pending(&pending, intent);
        }
    }

    /// Compacts the journal now: records past the retention window and older than two days
    /// are folded, per payer, counting scopes and quarter hour, into one entry each, and ended
    /// approvals, answered requests and earlier actor statuses dropped (see
    /// [`Journal::compact`]). A restart from the compacted journal has the ledger this one has,
    /// under any policies. Appends wait while the journal is rewritten: run it when the engine
    /// is quiet (it runs on its own when the journal is opened). `Ok(None)` for an engine
    /// without a journal, or with one that cannot rewrite itself.
    ///
    /// Entries still waiting to be written (a journal that failed) are written first, and the
    /// compaction does not run until they are: it must see every record the engine counted.
    /// Ended approvals are kept for the longer of the retention window and
    /// [`DEFAULT_RETENTION`], so a restart with a retention raised up to a day still answers
    /// for them.
    pub fn compact_journal(&self) -> Result<Option<Compaction>, JournalError> {
        let Some(journal) = self.inner.journal.get() else { return Ok(None) };
        // Held throughout: an entry that starts waiting now waits for the rewrite.
        let mut waiting = lock(&self.inner.unjournaled);
        write_waiting(&**journal, &mut waiting)?;
        let (now, retention) = self.compaction_horizon();
        journal.compact(&mut |entries| compact::compact(entries, now, retention))
    }

    /// The time a compaction runs at, and how long it keeps ended approvals: the retention
    /// window, at least [`DEFAULT_RETENTION`].
    fn compaction_horizon(&self) -> (Timestamp, SignedDuration) {
        (self.now(), self.inner.retention.max(DEFAULT_RETENTION))
    }

    /// Journals `actor`'s new status (see [`Engine::write_applied`]).
    fn journal_actor(&self, actor: &ActorId, status: &str) -> Result<(), AuthorityError> {
        self.write_applied(|| Entry::Actor { actor: actor.clone(), status: status.to_owned() })
    }

    fn grant(
        &self,
        intent: Arc<PaymentIntent>,
        ledger: &mut AgentLedger,
        (holds, windows): (ledger::Held, Vec<ledger::VelocityKey>),
        daily: Option<(Decimal, Decimal)>,
        (now, lifetime): (Timestamp, SignedDuration),
    ) -> Result<Authorization, AuthorityError> {
        let (key, id) = IdKey::fresh(now);
        let expires_at = now.saturating_add(lifetime).unwrap_or(now);
        self.reserve(ledger, (key, &id), &intent, expires_at, holds, windows, now)?;
        let limits = limits_of(daily);
        Ok(Authorization { id, token: None, amount: intent.exposure(), expires_at, limits, intent, wallet: None })
    }

    /// Journals, then holds, an approval's reservation.
    #[allow(clippy::too_many_arguments)]
    fn reserve(
        &self,
        ledger: &mut AgentLedger,
        (key, id): (IdKey, &str),
        intent: &PaymentIntent,
        expires_at: Timestamp,
        holds: ledger::Held,
        windows: Vec<ledger::VelocityKey>,
        now: Timestamp,
    ) -> Result<(), AuthorityError> {
        self.write_with(|| Entry::Reserved {
            id: id.to_owned(),
            intent: intent.clone(),
            amount: intent.exposure(),
            expires_at,
            at: Some(now),
        })?;
        ledger.reserve(key, Micros::of(intent.exposure()), expires_at, holds, windows, now);
        Ok(())
    }

    /// Records a settlement, synchronously. See [`Authorizer::record`]. A settled amount above
    /// the approval is counted as the approved amount (clamped); replaying the same record gives
    /// the same answer.
    pub fn settle(&self, authorization: &Authorization, settlement: &Settlement) -> Result<Recorded, AuthorityError> {
        let actor = &authorization.intent.actor;
        self.inner.actors.with(actor, |status, ledger| {
            let actor_inactive = !matches!(self.admission(actor, status), Ok(Ok(_)));
            match ledger {
                Some(ledger) => self.settle_in(authorization, settlement, actor_inactive, ledger),
                None => self.settle_in(authorization, settlement, actor_inactive, &self.ledger(actor)),
            }
        })
    }

    /// [`Engine::settle`] in the actor's ledger.
    fn settle_in(
        &self,
        authorization: &Authorization,
        settlement: &Settlement,
        actor_inactive: bool,
        ledger: &Mutex<AgentLedger>,
    ) -> Result<Recorded, AuthorityError> {
        let now = self.now();
        let settled = settlement.amount.unwrap_or(authorization.amount);
        let key = IdKey::of(&authorization.id);
        let mut ledger = lock(ledger);
        let now = ledger.now(now);
        // A live reservation is never also closed: look the (small) live map up first, the
        // retention window's generations only for a repeat.
        let live = ledger.reserved(key);
        if live.is_none()
            && let Some(closed) = ledger.closed(key)
        {
            return match closed {
                // The same settlement (compared as counted: an excess is clamped either way).
                Closed::Recorded(k)
                    if k.settled.min(Micros::of(authorization.amount))
                        == Micros::of(settled).min(Micros::of(authorization.amount))
                        && (settlement.reference.is_none()
                            || settlement.reference.as_deref() == k.reference.as_deref()) =>
                {
                    // A repeat is done once the first's entry is durable: a retry of a record
                    // whose entry is still waiting fails as the first did, so an outbox keeps it.
                    self.flush_journal()?;
                    Ok(answer(authorization, k))
                }
                Closed::Recorded(_) => Err(LedgerError::RecordConflict(authorization.id.clone()).into()),
                // The money moved after the approval lapsed, or after it was given back (a
                // caller that released it and settled after all, a transaction whose commit
                // was not seen): a record says money moved, so it is counted now, flagged late.
                Closed::Released | Closed::Expired => {
                    let counted = settled.min(authorization.amount);
                    let how = (true, actor_inactive);
                    self.count_unreserved(
                        &mut ledger,
                        authorization,
                        (counted, settled, &settlement.reference),
                        how,
                        now,
                    )?;
                    let recorded = Recorded {
                        authorization_id: authorization.id.clone(),
                        amount: counted,
                        transaction_id: Some(transaction_id(key)),
                        late: true,
                        queued: false,
                        actor_inactive,
                    };
                    Ok(recorded)
                }
            };
        }
        let Some(reserved) = live else {
            return Err(LedgerError::UnknownAuthorization(authorization.id.clone()).into());
        };
        // Count what moved, but never more than was approved: an excess is clamped (the pipeline
        // reports it as `Event::RecordClamped`), never an error after the spend was counted.
        let counted = Micros::of(settled).min(reserved);
        let counted_amount = Amount::from_micros(counted.0).unwrap_or(authorization.amount);
        // At or past its expiry but not yet swept, it is what a sweep would have made it:
        // expired, and its record counted late in the periods current now. Where the spend
        // lands does not hang on when a sweep ran (a replay of the journal, which knows the
        // expiry and not the sweep, counts it so too).
        let late = now >= authorization.expires_at;
        let journaled = if late {
            ledger.expire(key, now);
            let reference = &settlement.reference;
            self.count_unreserved(
                &mut ledger,
                authorization,
                (counted_amount, settled, reference),
                (true, actor_inactive),
                now,
            )
        } else {
            // Money moved: counted even when its entry cannot be written yet.
            let journaled = self.write_applied(|| Entry::Recorded {
                id: authorization.id.clone(),
                intent: (*authorization.intent).clone(),
                amount: counted_amount,
                settled,
                reference: settlement.reference.clone(),
                at: now,
            });
            ledger.settle(key, counted, kept(counted, settled, (late, actor_inactive), &settlement.reference), now);
            journaled
        };
        drop(ledger);
        journaled?;
        Ok(Recorded {
            authorization_id: authorization.id.clone(),
            amount: counted_amount,
            transaction_id: Some(transaction_id(key)),
            late,
            queued: false,
            actor_inactive,
        })
    }

    /// Every counter and velocity window a spend of `intent` at `now` counts in, whatever the
    /// rules would say of it now (a late payment that breaks one still moved money), as a
    /// replay counts it.
    fn counts_for(
        &self,
        intent: &PaymentIntent,
        ledger: &mut AgentLedger,
        now: Timestamp,
    ) -> (Vec<(ledger::CounterKey, Timestamp)>, Vec<ledger::VelocityKey>) {
        evaluate::all_keys(&self.inner.policies.load(), intent, ledger, now)
    }

    /// Forgets every actor's spend counters, velocity windows, live reservations and closed
    /// approvals: what a restart forgets. Actors, policies and requests for human approval
    /// stay. For a caller that keeps the history itself and counts it again
    /// ([`Engine::restore_spend`], [`Engine::restore_authorization`]) under a policy set it
    /// just changed, so that a limit added later counts the spend before it, as it would after
    /// a restart (conto-local does, holding its store, so that nothing is decided meanwhile).
    pub fn forget_ledgers(&self) {
        for slot in self.inner.actors.read().values() {
            if let Some(ledger) = &slot.ledger {
                *lock(ledger) = AgentLedger::default();
            }
        }
    }

    /// [`Engine::forget_ledgers`] for `actor` alone: for a policy change that binds only some
    /// actors (another actor's rules, and so its counters, are unchanged).
    pub fn forget_ledger(&self, actor: &str) {
        let Ok(id) = ActorId::new(actor) else { return };
        if let Some(ledger) = self.inner.actors.read().get(&id).and_then(|slot| slot.ledger.as_ref()) {
            *lock(ledger) = AgentLedger::default();
        }
    }

    /// Counts a stand-in's approved spend (the outbox's reconcile) once: journaled as a record
    /// of its authorization id, so it survives a restart, and a repeat (a delivery whose
    /// answer was lost) is answered without counting it again.
    fn reconcile_spend(
        &self,
        authorization: &Authorization,
        settlement: &Settlement,
    ) -> Result<Recorded, AuthorityError> {
        let amount = settlement.amount.unwrap_or(authorization.amount);
        let key = IdKey::of(&authorization.id);
        let ledger = self.ledger(&authorization.intent.actor);
        let mut ledger = lock(&ledger);
        let now = ledger.now(self.now());
        if ledger.reserved(key).is_none() && matches!(ledger.closed(key), Some(Closed::Recorded(_))) {
            self.flush_journal()?;
            return Ok(Recorded::reconciled(&authorization.id, amount));
        }
        self.count_unreserved(
            &mut ledger,
            authorization,
            (amount, amount, &settlement.reference),
            (false, false),
            now,
        )?;
        Ok(Recorded::reconciled(&authorization.id, amount))
    }

    /// Journals and counts a spend of `authorization` that no live reservation holds (a late
    /// record, a reconciled one) on every counter and window it counts in, and closes it as
    /// recorded so that a repeat is answered, not counted again.
    fn count_unreserved(
        &self,
        ledger: &mut AgentLedger,
        authorization: &Authorization,
        (counted, settled, reference): (Amount, Amount, &Option<String>),
        (late, actor_inactive): (bool, bool),
        now: Timestamp,
    ) -> Result<(), AuthorityError> {
        // Money moved: counted even when its entry cannot be written yet.
        let journaled = self.write_applied(|| Entry::Recorded {
            id: authorization.id.clone(),
            intent: (*authorization.intent).clone(),
            amount: counted,
            settled,
            reference: reference.clone(),
            at: now,
        });
        let (holds, windows) = self.counts_for(&authorization.intent, ledger, now);
        if late {
            ledger.settle_late(&holds, &windows, Micros::of(counted), now);
        } else {
            ledger.restore_spend(&holds, &windows, Micros::of(counted), now);
        }
        let answer = kept(Micros::of(counted), settled, (late, actor_inactive), reference);
        ledger.close(IdKey::of(&authorization.id), Closed::Recorded(answer), now);
        journaled
    }

    /// Counts a spend that has no live reservation — one recorded before a restart, or reported
    /// without a prior authorization — into the counters of the periods that contain `at`.
    /// Replay spends in the order they happened.
    pub fn restore_spend(&self, intent: &PaymentIntent, amount: Amount, at: Timestamp) {
        self.restore_records(intent, Micros::of(amount), 1, at);
    }

    /// [`Engine::restore_spend`] of `records` records (more than one: a compacted journal's
    /// [`Entry::Folded`]) that spent `spent` in all.
    fn restore_records(&self, intent: &PaymentIntent, spent: Micros, records: u64, at: Timestamp) {
        let ledger = self.ledger(&intent.actor);
        let mut ledger = lock(&ledger);
        let policies = self.inner.policies.load();
        let (holds, windows) = evaluate::all_keys(&policies, intent, &mut *ledger, at);
        ledger.restore_spend(&holds, &windows, spent, at);
        ledger.count_records(records.saturating_sub(1));
    }

    /// Re-creates a live approval (after a restart) with its id, amount and expiry. Approvals
    /// already past their expiry are ignored.
    pub fn restore_authorization(&self, authorization: &Authorization) {
        self.restore_reservation(authorization, None);
    }

    /// [`Engine::restore_authorization`], holding the periods and windows current at
    /// `reserved_at` (when it was reserved; now when unknown).
    fn restore_reservation(&self, authorization: &Authorization, reserved_at: Option<Timestamp>) {
        let now = self.now();
        if authorization.expires_at <= now {
            return;
        }
        let ledger = self.ledger(&authorization.intent.actor);
        let mut ledger = lock(&ledger);
        let now = ledger.now(now);
        // Already live, or already ended (recorded, released, expired): nothing to restore. A
        // live reservation is never also closed; `settle` relies on it.
        let key = IdKey::of(&authorization.id);
        if ledger.reserved(key).is_some() || ledger.closed(key).is_some() {
            return;
        }
        let at = reserved_at.map_or(now, |at| at.min(now));
        let policies = self.inner.policies.load();
        let (holds, windows) = evaluate::all_keys(&policies, &authorization.intent, &mut *ledger, at);
        ledger.reserve(key, Micros::of(authorization.amount), authorization.expires_at, holds.into(), windows, at);
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
        self.free_counted(authorization, false)
    }

    /// Takes back an approval that was never handed out: a further gate of the caller's (a
    /// budget it keeps) refused the payment after the policies approved it. The reservation
    /// is freed as by [`Engine::free`], and the approval counts neither as granted nor as
    /// released in [`Usage::stats`]. Withdrawing twice, or after a release, is a no-op.
    pub fn withdraw(&self, authorization: &Authorization) -> Result<(), AuthorityError> {
        self.free_counted(authorization, true)
    }

    /// [`Engine::free`] and [`Engine::withdraw`].
    fn free_counted(&self, authorization: &Authorization, withdrawn: bool) -> Result<(), AuthorityError> {
        let now = self.now();
        let ledger = self.ledger(&authorization.intent.actor);
        let mut ledger = lock(&ledger);
        let key = IdKey::of(&authorization.id);
        if ledger.release(key, now, withdrawn) {
            // Unjournaled, a release only makes the reservation come back after a restart
            // until it expires: bounded, so a failure here is logged, not returned.
            let entry = Entry::Released { id: authorization.id.clone(), actor: authorization.intent.actor.clone() };
            if let Err(error) = self.write(&entry) {
                tracing::error!(authorization = %authorization.id, %error, "conto.engine.journal_failed");
            }
            return Ok(());
        }
        match ledger.closed(key) {
            Some(Closed::Released | Closed::Expired) => Ok(()),
            Some(Closed::Recorded(_)) => Ok(()),
            None => Err(LedgerError::UnknownAuthorization(authorization.id.clone()).into()),
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
            .ok_or_else(|| LedgerError::UnknownApprovalRequest(approval_request_id.to_owned()))?;
        if !approve {
            self.write(&Entry::PendingClosed { id: approval_request_id.to_owned() })?;
            entry.state = PendingState::Denied(Denial {
                reasons: vec!["rejected by a human approver".to_owned()],
                violations: vec![],
            });
            return Ok(());
        }
        let intent = entry.intent.clone();
        // A denial on the re-check is journaled as the request's end, as a rejection is (it
        // came back waiting after a restart); not journaled, the request stays waiting.
        let closed = || Entry::PendingClosed { id: approval_request_id.to_owned() };
        let admitted = match self.admit(&intent.actor) {
            Ok(Ok(_)) => None,
            Ok(Err(denial)) => Some(denial),
            Err(e) => Some(Denial { reasons: vec![e.to_string()], violations: vec![] }),
        };
        if let Some(denial) = admitted {
            self.write(&closed())?;
            entry.state = PendingState::Denied(denial);
            return Ok(());
        }
        let policies = self.inner.policies.load();
        let ledger = self.ledger(&intent.actor);
        let mut ledger = lock(&ledger);
        let now = ledger.now(now);
        ledger.sweep(now, self.inner.retention);
        let lifetime = self.lifetime(&policies, &intent);
        entry.state = match evaluate(&policies, &intent, &mut *ledger, now, true) {
            Evaluation::Pass { holds, windows, daily } => {
                let granted = self.grant(intent.clone(), &mut ledger, (holds, windows), daily, (now, lifetime))?;
                if let Err(e) = self.write(&closed()) {
                    // Still waiting: its reservation is given back, so approving again never
                    // holds the amount twice in this process. (When the journal takes neither
                    // write, a restart restores the hold until it lapses: fail-safe.)
                    let _ = self.write(&Entry::Released { id: granted.id.clone(), actor: intent.actor.clone() });
                    ledger.release(IdKey::of(&granted.id), now, true);
                    return Err(e);
                }
                PendingState::Approved(granted)
            }
            Evaluation::Denied(denial) => {
                self.write(&closed())?;
                PendingState::Denied(denial)
            }
            Evaluation::NeedsApproval(_) => unreachable!("approval rules are skipped"),
        };
        Ok(())
    }

    /// The current answer to a pending approval request: `None` while waiting.
    pub fn approval(&self, approval_request_id: &str) -> Result<Option<Decision>, AuthorityError> {
        let now = self.now();
        let mut pending = lock(&self.inner.pending);
        let Some(entry) = pending.get(approval_request_id) else {
            return Err(LedgerError::UnknownApprovalRequest(approval_request_id.to_owned()).into());
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

    /// Expires every approval past its time; returns how many. Requests for human approval
    /// that ended (lapsed, or answered and their approval lapsed) more than the retention
    /// window ago are forgotten.
    pub fn sweep_expired(&self) -> usize {
        if let Err(error) = self.flush_journal() {
            tracing::error!(%error, "conto.engine.journal_failed: entries still waiting");
        }
        let now = self.now();
        forget_answered(&mut lock(&self.inner.pending), now, self.inner.retention);
        let ledgers: Vec<_> = self.inner.actors.read().values().filter_map(|s| s.ledger.clone()).collect();
        ledgers.iter().map(|l| lock(l).sweep(now, self.inner.retention)).sum()
    }

    /// A snapshot of `actor`'s ledger (expired approvals are swept first).
    pub fn usage(&self, actor: &str) -> Usage {
        let now = self.now();
        let empty = Usage { counters: vec![], live_reservations: 0, stats: LedgerStats::default() };
        let Ok(actor) = ActorId::new(actor) else {
            return empty;
        };
        // Never create a ledger for a name that was only looked up.
        let Some(ledger) = self.inner.actors.read().get(&actor).and_then(|s| s.ledger.clone()) else {
            return empty;
        };
        let mut ledger = lock(&ledger);
        ledger.sweep(now, self.inner.retention);
        let policies = self.inner.policies.load();
        let mut counters: Vec<CounterUsage> = ledger
            .counters
            .iter()
            .map(|(k, c)| {
                // A counter still holding a period that has ended (no decision since) is shown
                // as the next decision will find it: the current period, nothing in it.
                let current = jiff::tz::TimeZone::get(k.tz).ok().map(|tz| ledger::period_bounds(k.period, &tz, now).0);
                let ended = current.is_some_and(|start| c.period_start < start);
                let limit = evaluate::counter_limit(&policies, actor.as_str(), k.id.as_str());
                CounterUsage {
                    period: k.period.label(),
                    scope: if k.scope_key.is_empty() { "agent".to_owned() } else { k.scope_key.clone() },
                    time_zone: k.tz.to_string(),
                    period_start: current.filter(|_| ended).unwrap_or(c.period_start),
                    spent: if ended { Decimal::ZERO } else { c.spent.to_decimal() },
                    reserved: if ended { Decimal::ZERO } else { c.reserved.to_decimal() },
                    limit: limit.map(|l| l.0),
                    rails: limit.map(|l| l.1),
                }
            })
            .collect();
        counters.sort_by(|a, b| (a.period, &a.scope, &a.time_zone).cmp(&(b.period, &b.scope, &b.time_zone)));
        Usage { counters, live_reservations: ledger.live_count(), stats: ledger.stats() }
    }
}

impl Authorizer for Engine {
    fn authorize<'a>(&'a self, intent: &'a Arc<PaymentIntent>) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        Box::pin(std::future::ready(self.decide_shared(intent)))
    }

    fn authorize_now(&self, intent: &Arc<PaymentIntent>) -> Option<Result<Decision, AuthorityError>> {
        Some(self.decide_shared(intent))
    }

    fn record_now(
        &self,
        authorization: &Authorization,
        settlement: &Settlement,
    ) -> Option<Result<Recorded, AuthorityError>> {
        Some(self.settle(authorization, settlement))
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
        Box::pin(std::future::ready(self.reconcile_spend(authorization, settlement)))
    }
}

/// The embedded engine's lifecycle: registration, per-actor policies and the pause switch, all
/// in process. It holds no credential, so [`ActorLifecycle::rotate_key`] rotates nothing.
impl ActorLifecycle for Engine {
    fn ensure_actor<'a>(
        &'a self,
        actor: &'a str,
        controls: &'a ProductControls,
    ) -> BoxFuture<'a, Result<Ensured, LifecycleError>> {
        Box::pin(std::future::ready(Engine::ensure_actor(self, actor, controls)))
    }

    fn pause_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>> {
        Box::pin(std::future::ready(self.pause(actor).map_err(|_| LifecycleError::UnknownActor(actor.to_owned()))))
    }

    fn resume_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>> {
        Box::pin(std::future::ready(self.resume(actor).map_err(|_| LifecycleError::UnknownActor(actor.to_owned()))))
    }

    fn rotate_key<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<bool, LifecycleError>> {
        let known = self.actor_status(actor).is_some();
        Box::pin(std::future::ready(if known {
            Ok(false)
        } else {
            Err(LifecycleError::UnknownActor(actor.to_owned()))
        }))
    }

    fn retire_actor<'a>(&'a self, actor: &'a str) -> BoxFuture<'a, Result<(), LifecycleError>> {
        Box::pin(std::future::ready(self.retire(actor).map(drop).map_err(LifecycleError::from)))
    }
}
