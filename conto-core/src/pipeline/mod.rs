//! The one pipeline: `authorize -> settle -> record | release`.
//!
//! Both `#[paid_action]` and the tower layer call [`Conto::run`]; nothing else decides whether a
//! settlement may run.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing::Instrument;

mod delivery;
mod named_keys;

use crate::authorizer::{AuthorityError, Authorizer, Outage, Refused};
use crate::decision::{Authorization, Decision, DecisionSource, Recorded, Settlement, Verdict};

use crate::decision::ViolationType;
use crate::intent::{ActorId, IntentError, PaymentIntent};
use crate::money::Amount;
use crate::rejection::{Rejection, RejectionKind};
use crate::sink::{RecordKind, RecordSink};

/// The default deadline for one authorize call.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);

/// What to do when a policy says a human must approve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApprovalMode {
    /// Return [`RejectionKind::ApprovalRequired`] at once (the default).
    #[default]
    Reject,
    /// Poll the authority until a human decides, for at most this long (clamped to
    /// [`MAX_WAIT`](crate::MAX_WAIT)); then reject.
    Wait(Duration),
}

/// Something the pipeline did, for observers (audit logs, operator views, tests).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// An authorize call ended with a decision.
    Decided {
        /// The intent.
        intent: Arc<PaymentIntent>,
        /// `approved`, `denied`, `requires_approval`, `unknown_actor`, `unavailable` or
        /// `invalid`.
        outcome: &'static str,
        /// Who decided.
        source: DecisionSource,
        /// How long it took.
        latency: Duration,
        /// The authorization, when approved (joins this decision to its record).
        authorization_id: Option<String>,
        /// The broken rules' types, when denied by policy.
        violations: Vec<ViolationType>,
        /// Why, when not approved.
        reasons: Vec<String>,
        /// The actor is not provisioned and was admitted only by an open engine.
        open_actor: bool,
        /// The authority's typed error: why the stand-in decided, or why the authority was
        /// unavailable or refused the call.
        cause: Option<AuthorityError>,
    },
    /// A settlement was recorded.
    Recorded {
        /// The actor that paid.
        actor: ActorId,
        /// The receipt.
        recorded: Recorded,
        /// The settlement reference, if any.
        reference: Option<String>,
    },
    /// Recording a settled action failed; the money moved, so an operator must look.
    RecordFailed {
        /// The authorization id.
        authorization_id: String,
        /// The error.
        error: AuthorityError,
    },
    /// The settlement reported more than was approved: the approved amount was recorded. The
    /// money that moved above it is the app's to investigate.
    RecordClamped {
        /// The actor that paid.
        actor: ActorId,
        /// The authorization id.
        authorization_id: String,
        /// What was approved (and recorded).
        approved: Amount,
        /// What the settlement reported.
        settled: Amount,
    },
    /// An approval was given back without settling.
    Released {
        /// The authorization id.
        authorization_id: String,
        /// Why: `settlement_failed` or `dropped`.
        reason: &'static str,
    },
}

type Observer = Arc<dyn Fn(&Event) + Send + Sync>;

static DEFAULT: OnceLock<Conto> = OnceLock::new();

/// Installs the process-wide [`Conto`] that `#[paid_action]` functions without an `authorizer`
/// argument use. Call once at start-up; a second call returns the handle it was given.
pub fn install_default(conto: Conto) -> Result<(), Conto> {
    DEFAULT.set(conto)
}

/// The process-wide default handle, if one was installed.
pub fn installed_default() -> Option<&'static Conto> {
    DEFAULT.get()
}

pub(crate) struct Inner {
    pub(crate) authorizer: Arc<dyn Authorizer>,
    stand_in: Option<Arc<dyn Authorizer>>,
    deadline: Duration,
    poll_interval: Duration,
    observers: Vec<Observer>,
    default_actor: Option<String>,
    pub(crate) sink: Option<Arc<dyn RecordSink>>,
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// Whether a background delivery worker runs (or may be started lazily).
    pub(crate) background: bool,
    pub(crate) worker_started: std::sync::atomic::AtomicBool,
    /// The caller-named idempotency keys of payments under way or settled.
    named_keys: named_keys::NamedKeys,
    /// Records running as tasks of their own (`detached`), which [`Conto::flush`] waits for.
    pub(crate) under_way: Arc<UnderWay>,
}

/// How many records run as tasks of their own, and a wake-up for when the last one ends.
#[derive(Default)]
pub(crate) struct UnderWay {
    count: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
}

impl UnderWay {
    /// Counts a record under way until the guard is dropped (its task ended or cancelled).
    fn enter(self: &Arc<Self>) -> UnderWayGuard {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        UnderWayGuard(self.clone())
    }

    /// How many records are under way.
    pub(crate) fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until no record is under way.
    pub(crate) async fn idle(&self) {
        loop {
            let ended = self.ended.notified();
            if self.count() == 0 {
                return;
            }
            ended.await;
        }
    }
}

/// One record under way (see [`UnderWay::enter`]).
struct UnderWayGuard(Arc<UnderWay>);

impl Drop for UnderWayGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

impl Drop for Inner {
    /// Wakes the delivery worker, so that it sees the last handle gone and lets go of the sink
    /// (and its file) now rather than after its next wait.
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// Which authority approved: the configured one, or the stand-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Primary,
    StandIn,
}

/// A record's outcome: the authorization it was made against, and the receipt.
type RecordOutcome = (Authorization, Result<Recorded, AuthorityError>);

/// A record, done in place or still to finish. The in-place outcome is not boxed: it is the
/// embedded authority's every call, and a box would be an allocation per paid call.
#[allow(clippy::large_enum_variant)]
enum Recording {
    Done(RecordOutcome),
    Later(Pin<Box<dyn Future<Output = RecordOutcome> + Send>>),
}

/// How far [`Conto::authorize`] got without waiting.
enum InPlace {
    /// The authorization is done.
    Done(Result<Approval, Rejection>),
    /// The authority answered; what follows waits (a stand-in, a human).
    Answered(Result<Decision, AuthorityError>),
    /// The authority answers only as a future.
    Ask,
}

/// A handle on the pipeline: an authorizer plus settings. Cheap to clone; share one per app.
///
/// ```
/// use conto::{Conto, Engine};
/// let engine = Engine::from_json(r#"{"policies": []}"#)?;
/// let conto = Conto::new(engine);
/// # Ok::<(), conto::PolicyError>(())
/// ```
#[derive(Clone)]
pub struct Conto {
    pub(crate) inner: Arc<Inner>,
    pub(crate) approval: ApprovalMode,
}

impl fmt::Debug for Conto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conto")
            .field("deadline", &self.inner.deadline)
            .field("approval", &self.approval)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Conto`] with non-default settings.
pub struct ContoBuilder {
    authorizer: Arc<dyn Authorizer>,
    deadline: Duration,
    poll_interval: Duration,
    approval: ApprovalMode,
    observers: Vec<Observer>,
    default_actor: Option<String>,
    stand_in: Option<Arc<dyn Authorizer>>,
    sink: Option<Arc<dyn RecordSink>>,
    background: bool,
}

impl ContoBuilder {
    /// A bounded stand-in (Commando-style): when the authority is unreachable or too slow, this
    /// authorizer decides instead — typically an [`Engine`](crate::Engine) with its own tight
    /// caps. Its decisions carry [`DecisionSource::StandIn`]; the spends it approves are
    /// recorded with it and reconciled to the authority once it is back (through the outbox,
    /// when one is configured). Without a stand-in, unavailability is a denial (fail-closed).
    pub fn stand_in(mut self, authorizer: impl Authorizer + 'static) -> Self {
        self.stand_in = Some(Arc::new(authorizer));
        self
    }

    /// Records through a durable [`RecordSink`] (conto's SQLite `Outbox`): a settled spend is
    /// written to it before any network attempt and delivered by a background worker (started
    /// on the current tokio runtime, or on the first record), so recording is off the caller's
    /// critical path and survives crashes. Call [`Conto::flush`] at shutdown.
    pub fn outbox(mut self, sink: impl RecordSink) -> Self {
        self.sink = Some(Arc::new(sink));
        self.background = true;
        self
    }

    /// Records through a durable sink that the app delivers itself: nothing is sent until the
    /// app spawns [`Conto::delivery`] (and drains with [`Conto::flush`] at shutdown).
    pub fn outbox_manual(mut self, sink: impl RecordSink) -> Self {
        self.sink = Some(Arc::new(sink));
        self.background = false;
        self
    }

    /// The actor that pays when a `#[paid_action]` names none (for single-agent services).
    /// The tower layer never uses it: a request must name its actor.
    pub fn default_actor(mut self, actor: impl Into<String>) -> Self {
        self.default_actor = Some(actor.into());
        self
    }

    /// The deadline for one authorize call (default 2 s). Past it the action is denied with
    /// source [`DecisionSource::Timeout`].
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline.min(crate::clock::MAX_WAIT);
        self
    }

    /// How to handle "requires approval" (default: reject at once).
    pub fn approval(mut self, mode: ApprovalMode) -> Self {
        self.approval = match mode {
            ApprovalMode::Wait(max) => ApprovalMode::Wait(max.min(crate::clock::MAX_WAIT)),
            other => other,
        };
        self
    }

    /// How often to poll a pending approval in [`ApprovalMode::Wait`] (default 1 s).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every.clamp(Duration::from_millis(1), crate::clock::MAX_WAIT);
        self
    }

    /// Calls `observer` for every [`Event`]; keep it quick and non-blocking.
    pub fn observe(mut self, observer: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Finishes the handle.
    pub fn build(self) -> Conto {
        let conto = Conto {
            inner: Arc::new(Inner {
                authorizer: self.authorizer,
                stand_in: self.stand_in,
                deadline: self.deadline,
                poll_interval: self.poll_interval,
                observers: self.observers,
                default_actor: self.default_actor,
                sink: self.sink,
                wake: Arc::new(tokio::sync::Notify::new()),
                background: self.background,
                worker_started: std::sync::atomic::AtomicBool::new(false),
                named_keys: named_keys::NamedKeys::default(),
                under_way: Arc::default(),
            }),
            approval: self.approval,
        };
        delivery::start(&conto);
        conto
    }
}

impl Conto {
    /// A handle with default settings over `authorizer`.
    pub fn new(authorizer: impl Authorizer + 'static) -> Self {
        Self::builder(authorizer).build()
    }

    /// A builder over `authorizer`.
    pub fn builder(authorizer: impl Authorizer + 'static) -> ContoBuilder {
        ContoBuilder {
            authorizer: Arc::new(authorizer),
            deadline: DEFAULT_DEADLINE,
            poll_interval: Duration::from_secs(1),
            approval: ApprovalMode::Reject,
            observers: Vec::new(),
            default_actor: None,
            stand_in: None,
            sink: None,
            background: true,
        }
    }

    /// The actor `#[paid_action]` uses when it names none.
    pub fn default_actor(&self) -> Option<&str> {
        self.inner.default_actor.as_deref()
    }

    /// The same handle with another [`ApprovalMode`].
    pub fn with_approval(&self, mode: ApprovalMode) -> Self {
        Self { inner: self.inner.clone(), approval: mode }
    }

    /// The authorizer behind this handle.
    pub fn authorizer(&self) -> &Arc<dyn Authorizer> {
        &self.inner.authorizer
    }

    fn authority(&self, via: Via) -> &Arc<dyn Authorizer> {
        match (via, &self.inner.stand_in) {
            (Via::StandIn, Some(stand_in)) => stand_in,
            _ => &self.inner.authorizer,
        }
    }

    /// Tells every observer. An observer that panics is logged and skipped: the app's code
    /// cannot stop a record on its way (the delivery worker, a record in a task of its own).
    pub(crate) fn emit(&self, event: impl FnOnce() -> Event) {
        if !self.inner.observers.is_empty() {
            let event = event();
            for observer in &self.inner.observers {
                let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| observer(&event)));
                if told.is_err() {
                    tracing::error!("conto.observer_panicked: an observer panicked on an event and was skipped");
                }
            }
        }
    }

    /// Asks for an approval. On success the returned [`Approval`] holds the reservation: record
    /// it after settling, or drop it to release.
    ///
    /// The intent is a [`PaymentIntent`] or an `Arc` of one: it is shared at once (moved into
    /// one allocation here, not from future to future, where each copy of it is a third of a
    /// kilobyte).
    pub fn authorize(
        &self,
        intent: impl Into<Arc<PaymentIntent>>,
    ) -> impl Future<Output = Result<Approval, Rejection>> {
        self.authorize_shared(intent.into())
    }

    /// A caller-named idempotency key is one payment: a second run under it while the first is
    /// under way, or after it settled, is refused before anyone is asked (the authority would
    /// answer it with the first one's approval, and it would pay twice); after a denial or a
    /// release, the key may be tried again.
    async fn authorize_shared(&self, intent: Arc<PaymentIntent>) -> Result<Approval, Rejection> {
        let started = Instant::now();
        // A key claimed is let go of unless an approval comes of it (then by its release), also
        // when this is dropped on the way or a panic unwinds it.
        let mut claim = KeyClaim { conto: self, intent: None };
        if intent.idempotency_key.is_named() {
            if let Err(used) = self.claim(&intent) {
                return self.concluded(&intent, started, Err(used));
            }
            claim.intent = Some(Arc::clone(&intent));
        }
        // An in-process authority answers in place: unless a human's approval is waited for,
        // the whole authorization is done here, with no future to build or move (and no span:
        // its events name the actor, the amount and the rail themselves).
        let answer = match self.in_place(&intent, started) {
            InPlace::Done(result) => {
                if result.is_ok() {
                    claim.keep();
                }
                return result;
            }
            InPlace::Answered(answer) => Some(answer),
            InPlace::Ask => None,
        };
        // What waits (a remote authority, a stand-in, a human) is boxed, so the futures of
        // callers that never wait stay small, and runs in a span: what the authority's client
        // logs on the way is about this payment.
        let span = tracing::debug_span!(
            "conto.authorize",
            actor = %intent.actor,
            amount = %intent.amount,
            rail = intent.rail.name(),
        );
        let later = async move {
            let result = self.authorize_later(intent, started, answer).await;
            if result.is_ok() {
                claim.keep();
            }
            result
        };
        Box::pin(later.instrument(span)).await
    }

    /// Claims `intent`'s named key, or refuses the intent if it is claimed.
    fn claim(&self, intent: &PaymentIntent) -> Result<(), Rejection> {
        let key = intent.idempotency_key.as_str();
        if self.inner.named_keys.claim(intent.actor.as_str(), key) {
            return Ok(());
        }
        let used = IntentError::IdempotencyKeyUsed(key.to_owned());
        Err(Rejection::new(RejectionKind::Invalid(used), DecisionSource::Input))
    }

    /// Lets go of a named key: its payment never happened (denied, released).
    fn unclaim(&self, intent: &PaymentIntent) {
        if intent.idempotency_key.is_named() {
            self.inner.named_keys.unclaim(intent.actor.as_str(), intent.idempotency_key.as_str());
        }
    }

    /// [`Conto::authorize`] without waiting, when it can be: the result, or the authority's
    /// answer (when what follows it waits), or `Ask` (the authority answers only as a future).
    fn in_place(&self, intent: &Arc<PaymentIntent>, started: Instant) -> InPlace {
        if let Err(e) = intent.validate() {
            let invalid = Rejection::new(RejectionKind::Invalid(e), DecisionSource::Input);
            return InPlace::Done(self.concluded(intent, started, Err(invalid)));
        }
        match self.inner.authorizer.authorize_now(intent) {
            None => InPlace::Ask,
            Some(Ok(decision)) if !self.waits_for(&decision) => {
                InPlace::Done(self.concluded(intent, started, Ok((decision, Via::Primary, None))))
            }
            Some(answer) => InPlace::Answered(answer),
        }
    }

    /// Whether concluding `decision` waits for a human.
    fn waits_for(&self, decision: &Decision) -> bool {
        matches!((&decision.verdict, self.approval), (Verdict::RequiresApproval(_), ApprovalMode::Wait(_)))
    }

    /// The authorization that waits: on the authority (when it did not answer in place), on a
    /// stand-in, or on a human's approval.
    async fn authorize_later(
        &self,
        intent: Arc<PaymentIntent>,
        started: Instant,
        answer: Option<Result<Decision, AuthorityError>>,
    ) -> Result<Approval, Rejection> {
        match (self.decide(&intent, answer).await, self.approval) {
            (
                Ok((Decision { verdict: Verdict::RequiresApproval(pending), source, open_actor, .. }, via, cause)),
                ApprovalMode::Wait(max),
            ) => {
                let latency = started.elapsed();
                let waited = self.wait_for_approval(&intent, pending, source, via, max).await;
                self.finish(&intent, started, latency, open_actor, cause, waited)
            }
            (decided, _) => self.concluded(&intent, started, decided),
        }
    }

    /// Concludes a decision that needs no waiting, and reports it.
    fn concluded(
        &self,
        intent: &Arc<PaymentIntent>,
        started: Instant,
        decided: Result<(Decision, Via, Option<AuthorityError>), Rejection>,
    ) -> Result<Approval, Rejection> {
        let latency = started.elapsed();
        let (result, open_actor, cause) = match decided {
            Ok((Decision { verdict, source, open_actor, .. }, via, cause)) => {
                let result = match verdict {
                    Verdict::Approved(a) => Ok(Approval::new(self.clone(), a, source, latency, via)),
                    Verdict::Denied(denial) => Err(Rejection::new(RejectionKind::Denied(denial), source)),
                    Verdict::RequiresApproval(pending) => {
                        Err(Rejection::new(RejectionKind::ApprovalRequired(pending), source))
                    }
                };
                (result, open_actor, cause)
            }
            Err(rejection) => (Err(rejection), false, None),
        };
        self.finish(intent, started, latency, open_actor, cause, result)
    }

    /// Reports how an authorization ended (events, logs) and returns it.
    fn finish(
        &self,
        intent: &Arc<PaymentIntent>,
        started: Instant,
        latency: Duration,
        open_actor: bool,
        stand_in_cause: Option<AuthorityError>,
        result: Result<Approval, Rejection>,
    ) -> Result<Approval, Rejection> {
        if open_actor {
            tracing::warn!(actor = %intent.actor, "conto.open_actor: an unprovisioned actor was admitted by an open engine");
        }
        let result = result.map_err(|r| r.about(&intent.actor, intent.amount, started.elapsed()));
        self.emit(|| {
            let (outcome, source) = match &result {
                Ok(a) => ("approved", a.source),
                Err(r) => (
                    match r.kind() {
                        RejectionKind::Denied(_) => "denied",
                        RejectionKind::ApprovalRequired(_) => "requires_approval",
                        RejectionKind::Invalid(_) => "invalid",
                        RejectionKind::UnknownActor(_) => "unknown_actor",
                        RejectionKind::Refused(_) => "refused",
                        RejectionKind::NotConfigured => "not_configured",
                        _ => "unavailable",
                    },
                    r.source(),
                ),
            };
            let (authorization_id, violations, reasons) = match &result {
                Ok(a) => (Some(a.authorization().id.clone()), Vec::new(), Vec::new()),
                Err(r) => (None, r.violations().iter().map(|v| v.kind.clone()).collect(), r.reasons()),
            };
            Event::Decided {
                intent: intent.clone(),
                outcome,
                source,
                latency,
                authorization_id,
                violations,
                reasons,
                open_actor,
                cause: stand_in_cause.clone().or_else(|| result.as_ref().err().and_then(|r| r.cause().cloned())),
            }
        });
        let (actor, amount, rail) = (&intent.actor, intent.amount, intent.rail.name());
        match &result {
            Ok(a) => {
                tracing::debug!(%actor, %amount, rail, authorization = %a.authorization().id, ?latency, "conto.approved")
            }
            Err(r) => tracing::info!(%actor, %amount, rail, reason = %r, ?latency, "conto.rejected"),
        }
        result
    }

    /// One authorize call under the deadline (unless the authority already answered in place;
    /// the intent was validated there).
    /// An error or a timeout is a fail-closed rejection, unless a stand-in is configured: then
    /// the stand-in decides.
    async fn decide(
        &self,
        intent: &Arc<PaymentIntent>,
        answer: Option<Result<Decision, AuthorityError>>,
    ) -> Result<(Decision, Via, Option<AuthorityError>), Rejection> {
        let deadline = self.inner.deadline;
        let answer = match answer {
            Some(answer) => Ok(answer),
            None => tokio::time::timeout(deadline, self.inner.authorizer.authorize(intent)).await,
        };
        let (source, cause) = match answer {
            Ok(Ok(decision)) => return Ok((decision, Via::Primary, None)),
            Ok(Err(error)) => (DecisionSource::Unavailable, outage_or_reject(error, intent, DecisionSource::Policy)?),
            Err(_) => (DecisionSource::Timeout, Outage::Timeout { what: "authorize".into(), after: deadline }.into()),
        };
        // Only an outage reaches here: a stand-in never covers a refused key, scope or actor.
        if let Some(stand_in) = &self.inner.stand_in {
            tracing::warn!(%cause, "conto.stand_in: the authority is unavailable; the stand-in decides");
            match stand_in.authorize(intent).await {
                Ok(mut decision) => {
                    decision.source = DecisionSource::StandIn;
                    return Ok((decision, Via::StandIn, Some(cause)));
                }
                Err(error) => {
                    outage_or_reject(error, intent, DecisionSource::StandIn)?;
                }
            }
        }
        Err(Rejection::new(RejectionKind::Unavailable(cause), source))
    }

    /// Polls the authority until a human decides on `pending`, or `max` (at most
    /// [`MAX_WAIT`](crate::MAX_WAIT)) is over.
    async fn wait_for_approval(
        &self,
        intent: &Arc<PaymentIntent>,
        pending: crate::decision::PendingApproval,
        source: DecisionSource,
        via: Via,
        max: Duration,
    ) -> Result<Approval, Rejection> {
        let now = tokio::time::Instant::now();
        let give_up = now.checked_add(max.min(crate::clock::MAX_WAIT)).unwrap_or(now);
        loop {
            let now = tokio::time::Instant::now();
            if now >= give_up {
                return Err(Rejection::new(RejectionKind::ApprovalRequired(pending), source));
            }
            tokio::time::sleep(self.inner.poll_interval.min(give_up - now)).await;
            match self.authority(via).approval_status(intent, &pending).await {
                Ok(None) => continue,
                Ok(Some(Decision { verdict: Verdict::RequiresApproval(_), .. })) => continue,
                Ok(Some(Decision { verdict: Verdict::Approved(a), source, latency, .. })) => {
                    return Ok(Approval::new(self.clone(), a, source, latency, via));
                }
                Ok(Some(Decision { verdict: Verdict::Denied(d), source, .. })) => {
                    return Err(Rejection::new(RejectionKind::Denied(d), source));
                }
                Err(error) if error.is_retryable() => continue,
                Err(error) => {
                    outage_or_reject(error, intent, source)?;
                }
            }
        }
    }

    /// The pipeline: authorize `intent`; on approval run `settle`; on `Ok` record what
    /// `settled` reports; on `Err` release. If the returned future is dropped while `settle`
    /// runs, the approval is released. A rejection means `settle` was never called.
    pub fn run<T, E, F, Fut, S>(
        &self,
        intent: impl Into<Arc<PaymentIntent>>,
        settle: F,
        settled: S,
    ) -> impl Future<Output = Result<Result<T, E>, Rejection>>
    where
        F: FnOnce(&Approval) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        S: FnOnce(&T) -> Settlement,
    {
        self.run_shared(intent.into(), settle, settled, |ran| ran.map(|ran| ran.outcome))
    }

    /// [`Conto::run`], also returning the authorization the settlement ran under and the
    /// record's receipt: what an adapter (the tower layer) reports back to its caller.
    pub fn run_recorded<T, E, F, Fut, S>(
        &self,
        intent: impl Into<Arc<PaymentIntent>>,
        settle: F,
        settled: S,
    ) -> impl Future<Output = Result<Ran<T, E>, Rejection>>
    where
        F: FnOnce(&Approval) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        S: FnOnce(&T) -> Settlement,
    {
        self.run_shared(intent.into(), settle, settled, |ran| ran)
    }

    /// What `run`, `run_recorded` and `guard` share, each with its own `finish`. One `async fn`
    /// over the shared intent, not an `async` block around an inner future: a block would keep
    /// the captured future and the awaited one side by side.
    async fn run_shared<T, E, F, Fut, S, R>(
        &self,
        intent: Arc<PaymentIntent>,
        settle: F,
        settled: S,
        finish: impl FnOnce(Result<Ran<T, E>, Rejection>) -> R,
    ) -> R
    where
        F: FnOnce(&Approval) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        S: FnOnce(&T) -> Settlement,
    {
        let approval = match self.authorize_shared(intent).await {
            Ok(approval) => approval,
            Err(rejection) => return finish(Err(rejection)),
        };
        let outcome = settle(&approval).await;
        let (authorization, receipt) = match &outcome {
            // The money moved: a failed record never turns the caller's success into an error.
            Ok(value) => {
                let (authorization, receipt) = match approval.record_keeping(settled(value)) {
                    Recording::Done(done) => done,
                    Recording::Later(later) => later.await,
                };
                (authorization, Some(receipt))
            }
            Err(_) => {
                let authorization = approval.authorization().clone();
                approval.release_because("settlement_failed");
                (authorization, None)
            }
        };
        finish(Ok(Ran { outcome, authorization, receipt }))
    }

    /// [`Conto::run`] for functions whose error type absorbs a [`Rejection`]: what
    /// `#[paid_action]` expands to.
    pub fn guard<T, E, F, Fut, S>(
        &self,
        intent: impl Into<Arc<PaymentIntent>>,
        settle: F,
        settled: S,
    ) -> impl Future<Output = Result<T, E>>
    where
        E: From<Rejection>,
        F: FnOnce(&Approval) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        S: FnOnce(&T) -> Settlement,
    {
        self.run_shared(intent.into(), settle, settled, |ran| match ran {
            Ok(ran) => ran.outcome,
            Err(rejection) => Err(E::from(rejection)),
        })
    }
}

/// What [`Conto::run_recorded`] reports once the settlement ran.
#[derive(Debug)]
#[non_exhaustive]
pub struct Ran<T, E> {
    /// The settlement's own result.
    pub outcome: Result<T, E>,
    /// The authorization it ran under.
    pub authorization: Authorization,
    /// The record's receipt; `None` when the settlement failed and the approval was released.
    pub receipt: Option<Result<Recorded, AuthorityError>>,
}

/// A live approval. Record it after the settlement succeeded; dropping it releases it.
pub struct Approval {
    conto: Conto,
    authorization: Option<Authorization>,
    source: DecisionSource,
    latency: Duration,
    via: Via,
    /// What dropping it unconsumed does: release it (the default), hold it
    /// ([`Approval::hold_if_dropped`]) or record it ([`Approval::record_if_dropped`]).
    on_drop: OnDrop,
}

impl fmt::Debug for Approval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Approval")
            .field("authorization", &self.authorization)
            .field("source", &self.source)
            .field("latency", &self.latency)
            .finish()
    }
}

impl Approval {
    fn new(conto: Conto, authorization: Authorization, source: DecisionSource, latency: Duration, via: Via) -> Self {
        Self { conto, authorization: Some(authorization), source, latency, via, on_drop: OnDrop::Release }
    }

    /// The authorization (id, approved amount, expiry, limits).
    pub fn authorization(&self) -> &Authorization {
        self.authorization.as_ref().expect("an Approval holds its authorization until consumed")
    }

    /// Who approved: the policy, or a stand-in.
    pub fn source(&self) -> DecisionSource {
        self.source
    }

    /// How long the decision took.
    pub fn latency(&self) -> Duration {
        self.latency
    }

    /// Records the settlement. With an outbox, the record is written durably and delivered in
    /// the background (the receipt says `queued`). Errors are also reported as
    /// [`Event::RecordFailed`].
    pub async fn record(self, settlement: Settlement) -> Result<Recorded, AuthorityError> {
        match self.record_keeping(settlement) {
            Recording::Done((_, result)) => result,
            Recording::Later(later) => later.await.1,
        }
    }

    /// [`Approval::record`], also giving back the authorization (no copy of it is made). An
    /// in-process authority records in place when no outbox queues the record; what waits (an
    /// outbox write, a remote authority, a stand-in's reconcile) is a boxed future, so the
    /// futures of callers that never wait stay small.
    fn record_keeping(mut self, settlement: Settlement) -> Recording {
        let authorization = self.authorization.take().expect("an Approval is consumed only once");
        // Borrowed: only a record that waits takes a handle of its own (a reference count
        // shared by every core, touched twice, saved where the record is made in place).
        let (conto, via) = (&self.conto, self.via);
        let settlement = clamped(conto, &authorization, settlement);
        let queues = via == Via::Primary && conto.inner.sink.is_some();
        let answer = if queues { None } else { conto.authority(via).record_now(&authorization, &settlement) };
        match answer {
            // Recorded in place, with no stand-in spend to reconcile: done.
            Some(result) if via == Via::Primary || result.as_ref().is_err_and(|e| !reconciled_anyway(e)) => {
                conto.report_record(&authorization, &settlement, &result);
                Recording::Done((authorization, result))
            }
            answer => {
                let conto = conto.clone();
                let kept = authorization.clone();
                // Counted from now, before the task first runs: a `flush` now waits for it.
                let under_way = conto.inner.under_way.enter();
                let later = async move {
                    let _under_way = under_way;
                    conto.record_later(via, authorization, settlement, answer).await
                };
                Recording::Later(detached(kept, later))
            }
        }
    }

    /// The record this approval's settlement is, for a sink that writes it in the app's own
    /// transaction (a transactional outbox): hand it to the sink's transactional write, commit,
    /// then call [`Approval::queued`]. If the transaction rolls back, drop the approval instead:
    /// it is released.
    pub fn record_for(&self, settlement: &Settlement) -> crate::sink::QueuedRecord {
        let authorization = self.authorization.as_ref().expect("an Approval is consumed only once");
        let mut settlement = settlement.clone();
        settlement.amount = settlement.amount.map(|a| a.min(authorization.amount));
        without_nul(authorization, &mut settlement);
        crate::sink::QueuedRecord::new(RecordKind::Record, authorization, &settlement)
    }

    /// The app committed [`Approval::record_for`]'s record in its own transaction: the sink
    /// owns its delivery now. Consumes the approval without releasing it, and wakes the
    /// delivery worker.
    pub fn queued(mut self, record: &crate::sink::QueuedRecord) -> Recorded {
        let authorization = self.authorization.take().expect("an Approval is consumed only once");
        delivery::queued(&self.conto, RecordKind::Record, &authorization, &record.settlement())
    }

    /// Gives the approval back without settling.
    pub fn release(self) {
        self.release_because("released");
    }

    /// Lets go of the approval without recording or releasing it, when whether money moved is
    /// unknown (a payment credential was sent and no answer came back): its reservation keeps
    /// holding the amount until the approval expires, so the budget errs on the side of spent.
    /// Returns the authorization, for an operator or a later reconcile.
    pub fn hold(mut self) -> Authorization {
        let authorization = self.authorization.take().expect("an Approval is consumed only once");
        held(&authorization);
        authorization
    }

    /// From now on, dropping this approval unconsumed [holds](Approval::hold) it instead of
    /// releasing it: for a caller about to hand a payment credential over, after which money
    /// may move without this process hearing whether it did (its future dropped meanwhile).
    pub fn hold_if_dropped(&mut self) {
        self.on_drop = OnDrop::Hold;
    }

    /// From now on, dropping this approval unconsumed records it at its approved amount (in a
    /// task of its own): for a caller about to hand a payment credential to a party whose word
    /// it does not take, where a held reservation would lapse uncounted while the credential
    /// may still be settled.
    pub fn record_if_dropped(&mut self) {
        self.on_drop = OnDrop::Record;
    }

    fn release_because(mut self, reason: &'static str) {
        if let Some(authorization) = self.authorization.take() {
            release(&self.conto, self.via, &authorization, reason);
        }
    }
}

impl Conto {
    /// A record that waits: queued in the outbox, sent to an authority that answers only as a
    /// future, or (`answer`, given in place) a stand-in's spend still to reconcile.
    async fn record_later(
        &self,
        via: Via,
        authorization: Authorization,
        settlement: Settlement,
        answer: Option<Result<Recorded, AuthorityError>>,
    ) -> RecordOutcome {
        let result = match answer {
            Some(result) => result,
            None => {
                if via == Via::Primary
                    && let Some(queued) = delivery::enqueue(self, RecordKind::Record, &authorization, &settlement).await
                {
                    return (authorization, Ok(queued));
                }
                // Not queued (no outbox, or its write failed): the authority records it.
                self.authority(via).record(&authorization, &settlement).await
            }
        };
        self.report_record(&authorization, &settlement, &result);
        // The money moved: the authority hears of it even when the stand-in's own record
        // failed (down, or broken), or the spend would be counted nowhere. A record the
        // stand-in refused as such (a conflict, an unknown authorization) is not a spend.
        let reconciles = result.as_ref().err().is_none_or(reconciled_anyway);
        if via == Via::StandIn && reconciles {
            self.reconcile(&authorization, &settlement).await;
        }
        (authorization, result)
    }

    /// Logs a record's result and tells the observers.
    fn report_record(
        &self,
        authorization: &Authorization,
        settlement: &Settlement,
        result: &Result<Recorded, AuthorityError>,
    ) {
        match result {
            Ok(recorded) => {
                tracing::debug!(authorization = %authorization.id, amount = %recorded.amount, "conto.recorded");
                self.emit(|| Event::Recorded {
                    actor: authorization.intent.actor.clone(),
                    recorded: recorded.clone(),
                    reference: settlement.reference.clone(),
                });
            }
            Err(error) => {
                tracing::error!(authorization = %authorization.id, %error, "conto.record_failed");
                self.emit(|| Event::RecordFailed { authorization_id: authorization.id.clone(), error: error.clone() });
            }
        }
    }

    /// Reports a stand-in approval's spend to the authority: queued when an outbox is
    /// configured, otherwise tried once now (a failure is an [`Event::RecordFailed`]).
    async fn reconcile(&self, authorization: &Authorization, settlement: &Settlement) {
        if delivery::enqueue(self, RecordKind::Reconcile, authorization, settlement).await.is_some() {
            return;
        }
        if let Err(error) = self.inner.authorizer.reconcile(authorization, settlement).await {
            tracing::error!(authorization = %authorization.id, %error, "conto.reconcile_failed");
            self.emit(|| Event::RecordFailed { authorization_id: authorization.id.clone(), error });
        }
    }
}

/// Sorts an authority error: an outage is returned for the stand-in or the fail-closed rule;
/// anything else becomes its own typed rejection at once.
fn outage_or_reject(
    error: AuthorityError,
    intent: &PaymentIntent,
    source: DecisionSource,
) -> Result<AuthorityError, Rejection> {
    match error {
        AuthorityError::Outage(_) => Ok(error),
        AuthorityError::Refused(Refused::UnknownActor(_)) => {
            Err(Rejection::new(RejectionKind::UnknownActor(intent.actor.clone()), source))
        }
        other => Err(Rejection::new(RejectionKind::Refused(other), DecisionSource::Authority)),
    }
}

/// Whether a stand-in's failed record of a settlement is still reconciled with the authority:
/// the stand-in could not count it (down, its journal failing, broken), but the money moved.
/// A record it refused as such (a conflict, an unknown authorization) is not a spend.
fn reconciled_anyway(error: &AuthorityError) -> bool {
    error.is_retryable() || matches!(error, AuthorityError::Unsupported(_))
}

/// Never more than was approved: the settlement clamped to the approval, and said so, rather
/// than failing after money moved.
fn clamped(conto: &Conto, authorization: &Authorization, mut settlement: Settlement) -> Settlement {
    if let Some(settled) = settlement.amount.filter(|s| *s > authorization.amount) {
        tracing::warn!(authorization = %authorization.id, %settled, approved = %authorization.amount, "conto.record_clamped");
        conto.emit(|| Event::RecordClamped {
            actor: authorization.intent.actor.clone(),
            authorization_id: authorization.id.clone(),
            approved: authorization.amount,
            settled,
        });
        settlement.amount = Some(authorization.amount);
    }
    without_nul(authorization, &mut settlement);
    settlement
}

/// A reference holding a NUL character (which no store keeps: PostgreSQL refuses it) is
/// recorded with U+FFFD in its place, said so: the money moved, so the record is not refused.
fn without_nul(authorization: &Authorization, settlement: &mut Settlement) {
    if let Some(reference) = settlement.reference.as_mut().filter(|r| crate::intent::has_nul(r)) {
        tracing::warn!(authorization = %authorization.id,
            "conto.record_reference_nul: the settlement's reference holds a NUL character, recorded as U+FFFD");
        *reference = reference.replace('\0', "\u{FFFD}");
    }
}

/// A named key claimed by an authorization under way: let go of if it is dropped or does not
/// approve (an approval's release lets go of it then).
struct KeyClaim<'a> {
    conto: &'a Conto,
    intent: Option<Arc<PaymentIntent>>,
}

impl KeyClaim<'_> {
    /// Keeps the key claimed: an approval came of it.
    fn keep(&mut self) {
        self.intent = None;
    }
}

impl Drop for KeyClaim<'_> {
    fn drop(&mut self) {
        if let Some(intent) = self.intent.take() {
            self.conto.unclaim(&intent);
        }
    }
}

fn release(conto: &Conto, via: Via, authorization: &Authorization, reason: &'static str) {
    conto.unclaim(&authorization.intent);
    let fut = conto.authority(via).release(authorization);
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            let id = authorization.id.clone();
            handle.spawn(async move {
                if let Err(error) = fut.await {
                    tracing::warn!(authorization = %id, %error, "conto.release_failed");
                }
            });
        }
        Err(_) => tracing::warn!(
            authorization = %authorization.id,
            "conto.release_deferred: no tokio runtime; the approval lapses at its expiry"
        ),
    }
    tracing::debug!(authorization = %authorization.id, reason, "conto.released");
    conto.emit(|| Event::Released { authorization_id: authorization.id.clone(), reason });
}

/// A record that waits (a remote authority, an outbox write, a stand-in's reconcile) runs as a
/// task of its own, started now, when a tokio runtime is there: the caller's future dropped
/// meanwhile (a client gone, a timeout around the call) does not cancel the record of money
/// that moved. Without a runtime it runs in the caller's future, as it must.
fn detached(
    authorization: Authorization,
    later: impl Future<Output = RecordOutcome> + Send + 'static,
) -> Pin<Box<dyn Future<Output = RecordOutcome> + Send>> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return Box::pin(later) };
    let task = runtime.spawn(later);
    Box::pin(async move {
        match task.await {
            Ok(outcome) => outcome,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only a runtime shutting down cancels the task.
            Err(_) => {
                tracing::error!(authorization = %authorization.id,
                    "conto.record_failed: the runtime shut down before the record was delivered");
                let error = AuthorityError::Unsupported("the runtime shut down before the record was delivered".into());
                (authorization, Err(error))
            }
        }
    })
}

impl Drop for Approval {
    fn drop(&mut self) {
        let Some(authorization) = self.authorization.take() else { return };
        match self.on_drop {
            OnDrop::Release => release(&self.conto, self.via, &authorization, "dropped"),
            OnDrop::Hold => held(&authorization),
            // Without a runtime a record that waits could not run: held, said so.
            OnDrop::Record if tokio::runtime::Handle::try_current().is_err() => {
                tracing::error!(authorization = %authorization.id,
                    "conto.approval.not_recorded_on_drop: no tokio runtime to record it on; held until it expires");
            }
            OnDrop::Record => {
                tracing::warn!(authorization = %authorization.id,
                    "conto.approval.recorded_on_drop: outcome unknown; the approved amount is counted as spent");
                let again = Approval {
                    conto: self.conto.clone(),
                    authorization: Some(authorization),
                    source: self.source,
                    latency: self.latency,
                    via: self.via,
                    on_drop: OnDrop::Hold,
                };
                // A record that waits runs as a task of its own (`detached`): dropping its
                // future here does not cancel it.
                drop(again.record_keeping(Settlement::default()));
            }
        }
    }
}

/// What dropping an unconsumed [`Approval`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnDrop {
    /// Releases it: nothing was settled.
    Release,
    /// Holds it until it expires: whether money moved is unknown.
    Hold,
    /// Records it at its approved amount: money may have moved, and a lapse would not count it.
    Record,
}

/// Logs an approval left holding its reservation until it expires.
fn held(authorization: &Authorization) {
    tracing::warn!(authorization = %authorization.id, expires_at = %authorization.expires_at,
        "conto.approval.held: outcome unknown; the reservation holds until it expires");
}
