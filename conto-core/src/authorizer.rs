//! The [`Authorizer`] trait: anything that can authorize an intent, record a settlement and
//! release an unused approval.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::decision::{Authorization, Decision, PendingApproval, Recorded, Settlement};
use crate::intent::PaymentIntent;
use crate::money::Amount;

/// A boxed, `Send` future; the return type of [`Authorizer`]'s methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an authority could not do what was asked. Policy denials are not errors: they are
/// [`Verdict::Denied`](crate::Verdict::Denied).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The authority could not be reached (connect error, reset, timeout of one try).
    #[error("the payment authority could not be reached: {0}")]
    Unreachable(String),
    /// The authority answered something that is not a well-formed answer.
    #[error("the payment authority sent an invalid response: {0}")]
    InvalidResponse(String),
    /// The authority refused the request with an error status and code.
    #[error("the payment authority refused the request (HTTP {status}, {code}): {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// Conto's error code (`AUTH_FAILED`, `INSUFFICIENT_SCOPE`, …).
        code: String,
        /// The authority's message.
        message: String,
    },
    /// No live authorization has this id.
    #[error("unknown authorization `{0}`")]
    UnknownAuthorization(String),
    /// The authorization was released before it was recorded.
    #[error("authorization `{0}` was already released")]
    AlreadyReleased(String),
    /// The settlement reported more than was approved; the approved amount was recorded.
    #[error("settled amount {settled} is more than the approved {approved} (authorization `{id}`)")]
    SettledAboveApproval {
        /// The authorization.
        id: String,
        /// What was approved.
        approved: Amount,
        /// What the settlement reported.
        settled: Amount,
    },
    /// The authorization was already recorded with a different settlement.
    #[error("authorization `{0}` was already recorded with a different settlement")]
    RecordConflict(String),
    /// The actor is not provisioned with this authority (or was retired). Not retryable, and
    /// never handed to a stand-in: an unknown payer is refused, whoever decides.
    #[error("actor `{0}` is not provisioned to spend")]
    UnknownActor(String),
    /// No approval request has this id.
    #[error("unknown approval request `{0}`")]
    UnknownApprovalRequest(String),
    /// The authority has no way to do this (for example, reconcile a stand-in transfer).
    #[error("not supported by this authority: {0}")]
    Unsupported(String),
}

impl AuthorityError {
    /// Whether trying the same call again (with the same idempotency key) can succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            AuthorityError::Unreachable(_) => true,
            AuthorityError::Api { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// A policy authority: the embedded engine, Conto's API, or a decorator around either.
///
/// `release` returns a `'static` future so that it can run from a drop guard; an authority
/// that can release synchronously should do the work before returning the future.
pub trait Authorizer: Send + Sync {
    /// Decides on an intent. An approval reserves the amount until it is recorded, released or
    /// expires.
    fn authorize<'a>(&'a self, intent: &'a PaymentIntent) -> BoxFuture<'a, Result<Decision, AuthorityError>>;

    /// Records a settled approval: the reservation becomes spend of the settled amount.
    /// Recording the same authorization twice with the same settlement is a no-op.
    fn record<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>>;

    /// Gives back an approval that will never be settled.
    fn release(&self, authorization: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>>;

    /// Looks up a pending approval request: `None` while a human has not decided yet.
    fn approval_status<'a>(
        &'a self,
        intent: &'a PaymentIntent,
        pending: &'a PendingApproval,
    ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>>;

    /// Reports a spend this authority did not approve — one a stand-in approved while this
    /// authority was unavailable. The default cannot.
    fn reconcile<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        let _ = settlement;
        Box::pin(std::future::ready(Err(AuthorityError::Unsupported(format!(
            "reconciling stand-in approval `{}`",
            authorization.id
        )))))
    }
}

impl<T: Authorizer + ?Sized> Authorizer for Arc<T> {
    fn authorize<'a>(&'a self, intent: &'a PaymentIntent) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        (**self).authorize(intent)
    }

    fn record<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        (**self).record(authorization, settlement)
    }

    fn release(&self, authorization: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
        (**self).release(authorization)
    }

    fn approval_status<'a>(
        &'a self,
        intent: &'a PaymentIntent,
        pending: &'a PendingApproval,
    ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
        (**self).approval_status(intent, pending)
    }

    fn reconcile<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        (**self).reconcile(authorization, settlement)
    }
}
