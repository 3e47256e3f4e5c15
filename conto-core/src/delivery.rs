//! The background worker that delivers the outbox: due records go to the authority with
//! exponential backoff; a record that fails past the bound is dead-lettered and reported.

use std::sync::{Arc, Weak};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::authorizer::AuthorityError;
use crate::decision::{Authorization, Recorded, Settlement};
use crate::outbox::{Job, JobKind, OutboxStats};
use crate::pipeline::{Conto, Event, Inner};

/// The deadline of one delivery attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the background worker for `conto`'s outbox once: at build time when a tokio runtime
/// is running, otherwise on the first record (which always runs inside one). Never for an
/// outbox the app delivers itself.
pub(crate) fn start(conto: &Conto) {
    use std::sync::atomic::Ordering;
    if conto.inner.outbox.is_none() || !conto.inner.background || conto.inner.worker_started.load(Ordering::Acquire) {
        return;
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current()
        && !conto.inner.worker_started.swap(true, Ordering::AcqRel)
    {
        handle.spawn(run(Arc::downgrade(&conto.inner)));
    }
}

impl Conto {
    /// The delivery worker of an outbox configured with
    /// [`ContoBuilder::outbox_manual`](crate::ContoBuilder::outbox_manual): spawn it on your
    /// runtime; it ends when the last `Conto` handle is dropped. Call [`Conto::flush`] at
    /// shutdown to drain what is due.
    pub fn delivery(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        run(Arc::downgrade(&self.inner))
    }
}

/// Writes a record job durably and wakes the worker. `None` when there is no outbox, or writing
/// failed (the caller then records inline, and the failure is logged).
pub(crate) fn enqueue(conto: &Conto, kind: JobKind, a: &Authorization, s: &Settlement) -> Option<Recorded> {
    let outbox = conto.inner.outbox.as_ref()?;
    start(conto);
    match outbox.push(&Job::new(kind, a, s)) {
        Ok(()) => {
            conto.inner.wake.notify_one();
            tracing::debug!(authorization = %a.id, ?kind, "conto.outbox.queued");
            Some(Recorded {
                authorization_id: a.id.clone(),
                amount: s.amount.unwrap_or(a.amount),
                transaction_id: None,
                late: false,
                queued: true,
                actor_inactive: false,
            })
        }
        Err(error) => {
            tracing::error!(authorization = %a.id, %error, "conto.outbox.write_failed: recording inline");
            None
        }
    }
}

/// Backoff before attempt `n + 1`: 200 ms · 2ⁿ, at most 60 s.
fn backoff(attempts: u32) -> SignedDuration {
    SignedDuration::from_millis((200u64.saturating_mul(1 << attempts.min(9))).min(60_000) as i64)
}

/// Whether a failed delivery should be tried again.
fn transient(e: &AuthorityError) -> bool {
    e.is_retryable() || e.code() == Some("IDEMPOTENCY_IN_FLIGHT")
}

async fn run(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let Some(outbox) = inner.outbox.clone() else { return };
        let wake = inner.wake.clone();
        let due = match outbox.due(Timestamp::now(), 64) {
            Ok(due) => due,
            Err(error) => {
                tracing::error!(%error, "conto.outbox.read_failed");
                Vec::new()
            }
        };
        if due.is_empty() {
            let wait = match outbox.next_due() {
                Ok(Some(at)) => Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or(Duration::ZERO),
                _ => Duration::from_secs(1),
            }
            .clamp(Duration::from_millis(5), Duration::from_secs(1));
            drop(inner);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        }
        let conto = Conto::from_inner(inner);
        for (id, attempts, job) in due {
            deliver(&conto, &outbox, id, attempts, job).await;
        }
    }
}

/// Gives a claimed row back if its delivery is abandoned half-way (the future dropped).
struct Claim<'a>(&'a crate::outbox::Outbox, i64);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.release_claim(self.1);
    }
}

async fn deliver(conto: &Conto, outbox: &crate::outbox::Outbox, id: i64, attempts: u32, job: Job) {
    let _claim = Claim(outbox, id);
    let authorization = job.authorization();
    let settlement = job.settlement();
    let authority = &conto.inner.authorizer;
    let call = async {
        match job.kind {
            JobKind::Record => authority.record(&authorization, &settlement).await,
            JobKind::Reconcile => authority.reconcile(&authorization, &settlement).await,
        }
    };
    let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(crate::Outage::Timeout { what: "record delivery".into(), after: ATTEMPT_TIMEOUT }.into()),
    };
    let stored = match result {
        Ok(recorded) => {
            tracing::debug!(authorization = %job.authorization_id, attempts = attempts + 1, "conto.outbox.delivered");
            conto.emit(|| Event::Recorded {
                actor: authorization.intent.actor.clone(),
                recorded,
                reference: job.reference.clone(),
            });
            outbox.delivered(id)
        }
        Err(error) if transient(&error) && attempts + 1 < outbox.max_attempts => {
            tracing::warn!(authorization = %job.authorization_id, %error, attempts = attempts + 1, "conto.outbox.retry");
            outbox.retry(id, backoff(attempts), &error.to_string())
        }
        Err(error) => {
            tracing::error!(authorization = %job.authorization_id, %error, "conto.outbox.dead: an operator must look");
            let stored = outbox.dead_letter(id, &error.to_string());
            conto.emit(|| Event::RecordFailed { authorization_id: job.authorization_id.clone(), error });
            stored
        }
    };
    if let Err(error) = stored {
        tracing::error!(%error, "conto.outbox.write_failed");
    }
}

impl Conto {
    fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner, approval: Default::default() }
    }

    /// The outbox's counts (depth = `pending`), when an outbox is configured.
    pub fn outbox_stats(&self) -> Option<OutboxStats> {
        self.inner.outbox.as_ref().and_then(|o| o.stats().ok())
    }

    /// Delivers what is queued, waiting at most `within` (graceful shutdown). Returns the
    /// outbox's counts after: `pending` is what is left for the next start.
    pub async fn flush(&self, within: Duration) -> Option<OutboxStats> {
        let outbox = self.inner.outbox.as_ref()?;
        let give_up = crate::clock::deadline_after(within);
        loop {
            let stats = outbox.stats().ok()?;
            if stats.pending == 0 || tokio::time::Instant::now() >= give_up {
                return Some(stats);
            }
            // Deliver what is due right here too: the worker may not be running (no runtime at
            // build time) or may be sleeping on a backoff.
            if let Ok(due) = outbox.due(Timestamp::now(), 64) {
                for (id, attempts, job) in due {
                    deliver(self, outbox, id, attempts, job).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
