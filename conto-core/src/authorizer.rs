//! The [`Authorizer`] trait: anything that can authorize an intent, record a settlement and
//! release an unused approval.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::decision::{Authorization, Decision, PendingApproval, Recorded, Settlement};
use crate::intent::PaymentIntent;

/// A boxed, `Send` future; the return type of [`Authorizer`]'s methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why an authority could not do what was asked, by kind. Policy denials are not errors: they
/// are [`Verdict::Denied`](crate::Verdict::Denied).
///
/// The kind decides what the pipeline does: an [`Outage`] is retryable and may be covered by a
/// configured stand-in; a [`Refused`] call (bad key, missing scope, unknown actor, a request the
/// authority rejects) is not retryable and never falls back; a [`LedgerError`] is about the
/// state of one authorization; [`AuthorityError::Unsupported`] is a configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The authority is unreachable, too slow, overloaded or broken: retryable.
    #[error(transparent)]
    Outage(#[from] Outage),
    /// The authority refused this caller or this request: not retryable.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The state of an authorization or approval request does not allow the call.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The authority has no way to do this (for example, reconcile a stand-in transfer).
    #[error("not supported by this authority: {0}")]
    Unsupported(String),
    /// The settlement cannot be recorded as reported (checked before anything is sent).
    #[error("the settlement cannot be recorded: {0}")]
    InvalidRecord(String),
}

/// An outage-class failure: trying again later (with the same idempotency key) can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Outage {
    /// No connection (refused, reset, DNS).
    #[error("the payment authority could not be reached: {0}")]
    Connect(String),
    /// No answer in time.
    #[error("the payment authority did not answer {what} within {after:?}")]
    Timeout {
        /// The call.
        what: String,
        /// The time allowed.
        after: Duration,
    },
    /// A 5xx or 429 answer.
    #[error("the payment authority failed (HTTP {status}, {code}): {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// Conto's error code.
        code: String,
        /// The authority's message.
        message: String,
    },
    /// The embedded engine could not write its journal: the change was not made.
    #[error("the ledger journal could not be written: {0}")]
    Journal(String),
    /// The embedded engine's shared ledger (a database every replica uses) could not be read
    /// or written: nothing was decided or changed.
    #[error("the shared ledger is unavailable: {0}")]
    Ledger(String),
    /// An answer that is not a well-formed answer (never read as an approval).
    #[error("the payment authority sent an invalid response: {0}")]
    InvalidResponse(String),
}

/// The authority refused the caller or the request; asking again unchanged cannot succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// HTTP 401: the SDK key is missing, wrong, revoked or expired.
    #[error("the payment authority rejected the credentials (HTTP 401, {code}): {message}; check the SDK key")]
    Unauthenticated {
        /// Conto's error code (`AUTH_FAILED`, `EXPIRED_KEY`, …).
        code: String,
        /// The authority's message.
        message: String,
    },
    /// HTTP 403: the key lacks a scope the call needs.
    #[error("the SDK key lacks a scope (HTTP 403, {code}): {message}; issue a key with the scope")]
    MissingScope {
        /// Conto's error code (`INSUFFICIENT_SCOPE`).
        code: String,
        /// The authority's message.
        message: String,
    },
    /// The actor is not provisioned with this authority (or was retired), or has no binding.
    #[error("actor `{0}` is not provisioned to spend")]
    UnknownActor(String),
    /// Any other 4xx: the request itself was rejected.
    #[error("the payment authority rejected the request (HTTP {status}, {code}): {message}")]
    Request {
        /// The HTTP status.
        status: u16,
        /// Conto's error code.
        code: String,
        /// The authority's message.
        message: String,
    },
}

/// The state of one authorization or approval request does not allow the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// No live authorization has this id.
    #[error("unknown authorization `{0}`")]
    UnknownAuthorization(String),
    /// The authorization was released before it was recorded. (The embedded engine counts
    /// such a record, flagged late, and no longer answers this; other authorities may.)
    #[error("authorization `{0}` was already released")]
    AlreadyReleased(String),
    /// The authorization was already recorded with a different settlement.
    #[error("authorization `{0}` was already recorded with a different settlement")]
    RecordConflict(String),
    /// No approval request has this id.
    #[error("unknown approval request `{0}`")]
    UnknownApprovalRequest(String),
}

impl AuthorityError {
    /// Classifies an HTTP error answer: 429 and 5xx are outages, 401 and 403 are refused
    /// credentials or scopes, any other status is a rejected request.
    pub fn from_status(status: u16, code: impl Into<String>, message: impl Into<String>) -> Self {
        let (code, message) = (code.into(), message.into());
        match status {
            429 | 500.. => Outage::Status { status, code, message }.into(),
            401 => Refused::Unauthenticated { code, message }.into(),
            403 => Refused::MissingScope { code, message }.into(),
            _ => Refused::Request { status, code, message }.into(),
        }
    }

    /// A connection failure.
    pub fn unreachable(message: impl Into<String>) -> Self {
        Outage::Connect(message.into()).into()
    }

    /// An answer that cannot be read.
    pub fn invalid_response(message: impl Into<String>) -> Self {
        Outage::InvalidResponse(message.into()).into()
    }

    /// An unknown or unbound actor.
    pub fn unknown_actor(actor: impl Into<String>) -> Self {
        Refused::UnknownActor(actor.into()).into()
    }

    /// Whether trying the same call again (with the same idempotency key) can succeed: only an
    /// [`Outage`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, AuthorityError::Outage(_))
    }

    /// The HTTP status the authority answered, when it answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            AuthorityError::Outage(Outage::Status { status, .. })
            | AuthorityError::Refused(Refused::Request { status, .. }) => Some(*status),
            AuthorityError::Refused(Refused::Unauthenticated { .. }) => Some(401),
            AuthorityError::Refused(Refused::MissingScope { .. }) => Some(403),
            _ => None,
        }
    }

    /// Conto's error code, when the authority answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            AuthorityError::Outage(Outage::Status { code, .. })
            | AuthorityError::Refused(
                Refused::Unauthenticated { code, .. }
                | Refused::MissingScope { code, .. }
                | Refused::Request { code, .. },
            ) => Some(code),
            _ => None,
        }
    }
}

/// A policy authority: the embedded engine, Conto's API, or a decorator around either.
///
/// `release` returns a `'static` future so that it can run from a drop guard; an authority
/// that can release synchronously should do the work before returning the future.
pub trait Authorizer: Send + Sync {
    /// Decides on an intent. An approval reserves the amount until it is recorded, released or
    /// expires. The intent is shared: an approval keeps it (`Authorization::intent`) without
    /// copying it.
    fn authorize<'a>(&'a self, intent: &'a Arc<PaymentIntent>) -> BoxFuture<'a, Result<Decision, AuthorityError>>;

    /// Records a settled approval: the reservation becomes spend of the settled amount.
    /// Recording the same authorization twice with the same settlement is a no-op.
    fn record<'a>(
        &'a self,
        authorization: &'a Authorization,
        settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>>;

    /// [`Authorizer::authorize`] answered in place, for an authority that decides in process
    /// without waiting (the embedded [`Engine`](crate::Engine)): the pipeline then skips the
    /// future and its deadline. `None`, the default, means "call `authorize`".
    fn authorize_now(&self, intent: &Arc<PaymentIntent>) -> Option<Result<Decision, AuthorityError>> {
        let _ = intent;
        None
    }

    /// [`Authorizer::record`] answered in place, as for [`Authorizer::authorize_now`].
    fn record_now(
        &self,
        authorization: &Authorization,
        settlement: &Settlement,
    ) -> Option<Result<Recorded, AuthorityError>> {
        let _ = (authorization, settlement);
        None
    }

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
    fn authorize<'a>(&'a self, intent: &'a Arc<PaymentIntent>) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        (**self).authorize(intent)
    }

    fn authorize_now(&self, intent: &Arc<PaymentIntent>) -> Option<Result<Decision, AuthorityError>> {
        (**self).authorize_now(intent)
    }

    fn record_now(
        &self,
        authorization: &Authorization,
        settlement: &Settlement,
    ) -> Option<Result<Recorded, AuthorityError>> {
        (**self).record_now(authorization, settlement)
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
