//! The pipeline's delivery worker over its [`RecordSink`]: started lazily (or run by the app),
//! it hands due records to the authority through a [`Deliverer`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Conto, Event, Inner};
use crate::authorizer::{AuthorityError, BoxFuture, Outage};
use crate::decision::{Authorization, Recorded, Settlement};
use crate::sink::{ATTEMPT_TIMEOUT, Deliver, OutboxStats, QueuedRecord, RecordKind};

/// The pipeline's [`Deliver`]: the authority and the observers of one `Conto`.
#[derive(Clone)]
pub(crate) struct Deliverer {
    inner: Weak<Inner>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deliverer(..)")
    }
}

impl Deliverer {
    async fn deliver_now(
        &self,
        kind: RecordKind,
        authorization: &Authorization,
        settlement: &Settlement,
    ) -> Result<Recorded, AuthorityError> {
        let Some(inner) = self.inner.upgrade() else {
            return Err(AuthorityError::Unsupported("the Conto handle was dropped".into()));
        };
        let conto = Conto::from_inner(inner);
        let authority = conto.inner.authorizer.clone();
        let in_place = match kind {
            RecordKind::Record => authority.record_now(authorization, settlement),
            RecordKind::Reconcile => None,
        };
        let call = async {
            match kind {
                RecordKind::Record => authority.record(authorization, settlement).await,
                RecordKind::Reconcile => authority.reconcile(authorization, settlement).await,
            }
        };
        let timed = |what: &'static str| Outage::Timeout { what: what.into(), after: ATTEMPT_TIMEOUT };
        let mut result = match in_place {
            // An in-process authority answers in place: nothing to time out.
            Some(result) => result,
            None => match tokio::time::timeout(ATTEMPT_TIMEOUT, call).await {
                Ok(r) => r,
                Err(_) => Err(timed("record delivery").into()),
            },
        };
        // The authority no longer knows the approval (a restart after its retention window,
        // the record waiting here meanwhile): the money moved all the same, so it is reported
        // as a spend the authority did not approve, counted once, rather than given up on.
        if kind == RecordKind::Record
            && matches!(result, Err(AuthorityError::Ledger(crate::LedgerError::UnknownAuthorization(_))))
        {
            let reconciled =
                match tokio::time::timeout(ATTEMPT_TIMEOUT, authority.reconcile(authorization, settlement)).await {
                    Ok(r) => r,
                    Err(_) => Err(timed("record delivery (as a reconcile)").into()),
                };
            match reconciled {
                Ok(recorded) => result = Ok(recorded),
                Err(e) if e.is_retryable() => result = Err(e),
                Err(e) => tracing::error!(authorization = %authorization.id, error = %e,
                    "conto.outbox.unknown_authorization: the authority cannot take it as a reconcile either"),
            }
        }
        if let Ok(recorded) = &result {
            conto.emit(|| Event::Recorded {
                actor: authorization.intent.actor.clone(),
                recorded: recorded.clone(),
                reference: settlement.reference.clone(),
            });
        }
        result
    }

    fn report_dead(&self, authorization_id: &str, error: AuthorityError) {
        if let Some(inner) = self.inner.upgrade() {
            Conto::from_inner(inner)
                .emit(|| Event::RecordFailed { authorization_id: authorization_id.to_owned(), error });
        }
    }
}

impl Deliver for Deliverer {
    fn deliver<'a>(
        &'a self,
        kind: RecordKind,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(self.deliver_now(kind, authorization, settlement))
    }

    fn dead(&self, authorization_id: &str, error: AuthorityError) {
        self.report_dead(authorization_id, error);
    }

    fn closed(&self) -> bool {
        self.inner.strong_count() == 0
    }
}

/// Starts the background worker once: at build time when a tokio runtime is running, otherwise
/// on the first record (which always runs inside one). Never for a sink the app delivers itself.
pub(crate) fn start(conto: &Conto) {
    use std::sync::atomic::Ordering;
    let inner = &conto.inner;
    if inner.sink.is_none() || !inner.background || inner.worker_started.load(Ordering::Acquire) {
        return;
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current()
        && !inner.worker_started.swap(true, Ordering::AcqRel)
    {
        handle.spawn(run(Arc::downgrade(inner)));
    }
}

/// Writes a record to the sink and wakes the worker. `None` when there is no sink, or writing
/// failed (the caller then records inline, and the failure is logged).
pub(crate) async fn enqueue(conto: &Conto, kind: RecordKind, a: &Authorization, s: &Settlement) -> Option<Recorded> {
    let sink = conto.inner.sink.as_ref()?;
    start(conto);
    match sink.enqueue(&QueuedRecord::new(kind, a, s)).await {
        Ok(()) => Some(queued(conto, kind, a, s)),
        Err(error) => {
            tracing::error!(authorization = %a.id, %error, "conto.outbox.write_failed: recording inline");
            None
        }
    }
}

/// The receipt of a record the sink now owns; wakes the worker.
pub(crate) fn queued(conto: &Conto, kind: RecordKind, a: &Authorization, s: &Settlement) -> Recorded {
    start(conto);
    conto.inner.wake.notify_one();
    tracing::debug!(authorization = %a.id, ?kind, "conto.outbox.queued");
    Recorded {
        authorization_id: a.id.clone(),
        amount: s.amount.unwrap_or(a.amount),
        transaction_id: None,
        late: false,
        queued: true,
        actor_inactive: false,
    }
}

async fn run(weak: Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let Some(sink) = inner.sink.clone() else { return };
        let wake = inner.wake.clone();
        drop(inner);
        let deliverer = Deliverer { inner: weak.clone() };
        let attempted = sink.deliver_due(&deliverer).await.unwrap_or_else(|error| {
            tracing::error!(%error, "conto.outbox.read_failed");
            0
        });
        if attempted == 0 {
            let wait = sink.next_due().unwrap_or(Duration::from_secs(1));
            // Not held while waiting: once the last handle is gone the sink is let go at once.
            drop(sink);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait.clamp(Duration::from_millis(5), Duration::from_secs(1))) => {}
            }
        }
    }
}

impl Conto {
    /// The delivery worker of a sink configured with
    /// [`ContoBuilder::outbox_manual`](crate::ContoBuilder::outbox_manual): spawn it on your
    /// runtime; it ends when the last `Conto` handle is dropped. Call [`Conto::flush`] at
    /// shutdown to drain what is due.
    pub fn delivery(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        run(Arc::downgrade(&self.inner))
    }

    /// The outbox's counts (depth = `pending`), when one is configured.
    pub fn outbox_stats(&self) -> Option<OutboxStats> {
        self.inner.sink.as_ref().and_then(|s| s.stats().ok())
    }

    /// Delivers what is queued, waiting at most `within` (graceful shutdown). Records still
    /// under way in tasks of their own (a caller dropped while its record waited on a remote
    /// authority or an outbox write) are waited for first, for at most half of `within`: a
    /// runtime shut down after `flush` does not cancel one. Returns the outbox's counts after (`None` without an outbox):
    /// `pending` is what is left for the next start.
    pub async fn flush(&self, within: Duration) -> Option<OutboxStats> {
        let give_up = crate::clock::deadline_after(within);
        let under_way = &self.inner.under_way;
        // At most half the time: an app still serving keeps starting records, and the outbox
        // must still be delivered within `within`.
        if tokio::time::timeout(within.min(crate::clock::MAX_WAIT) / 2, under_way.idle()).await.is_err() {
            tracing::warn!(under_way = under_way.count(), "conto.flush: records still under way at the deadline");
        }
        let sink = self.inner.sink.clone()?;
        let deliverer = Deliverer { inner: Arc::downgrade(&self.inner) };
        loop {
            // Deliver what is due right here first: the worker may be sleeping on a backoff, or
            // the app may run none, and a shared outbox's counts are only as fresh as its last
            // pass (a record committed in the app's own transaction is seen by this one).
            if let Err(error) = sink.deliver_due(&deliverer).await {
                tracing::error!(%error, "conto.outbox.read_failed");
            }
            let stats = sink.stats().ok()?;
            if stats.pending == 0 || tokio::time::Instant::now() >= give_up {
                return Some(stats);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner, approval: Default::default() }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Deliverer;
    use crate::sink::{Next, QueuedRecord, RecordKind, attempt};
    use crate::{Authorization, Conto, Engine, PaymentIntent, Rail, Settlement};

    /// A batch the worker took before the last `Conto` handle was dropped (an app shutting
    /// down) leaves its records for the next start: never dead letters, whatever their count
    /// of attempts.
    #[tokio::test]
    async fn a_record_whose_pipeline_was_dropped_is_left_for_the_next_start() {
        let conto = Conto::builder(Engine::builder().build()).build();
        let deliverer = Deliverer { inner: Arc::downgrade(&conto.inner) };
        drop(conto);
        let rail = Rail::transfer(8453, "0x2222222222222222222222222222222222222222").unwrap();
        let authorization = Authorization {
            id: "auth_1".into(),
            token: None,
            amount: "3".parse().unwrap(),
            expires_at: crate::jiff::Timestamp::now(),
            limits: Default::default(),
            intent: Arc::new(
                PaymentIntent::builder("agent-1", "3", rail)
                    .recipient("0x1111111111111111111111111111111111111111")
                    .build()
                    .unwrap(),
            ),
            wallet: None,
        };
        let record = QueuedRecord::new(RecordKind::Record, &authorization, &Settlement::default());
        let next = attempt(&deliverer, &record, 4, 5).await;
        assert!(matches!(next, Next::Retry(..)), "{next:?}");
    }
}
