//! [`Rejection`]: why the pipeline did not run a settlement.

use std::fmt;
use std::time::Duration;

use crate::authorizer::AuthorityError;
use crate::decision::{DecisionSource, Denial, PendingApproval, Violation};
use crate::intent::{ActorId, IntentError};
use crate::money::Amount;

/// The kind of rejection. Each carries its typed cause; retryability follows from the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectionKind {
    /// A policy denied the action (or the actor is paused).
    Denied(Denial),
    /// A human must approve the action first.
    ApprovalRequired(PendingApproval),
    /// The actor is not provisioned to spend (fail-closed). Not retryable: provision the actor
    /// first. A configured stand-in never decides for an unknown actor.
    UnknownActor(ActorId),
    /// The authority could not decide in time or could not be reached, and no stand-in
    /// decided: the action is denied (fail-closed). Retryable. The cause is an
    /// [`AuthorityError::Outage`].
    Unavailable(AuthorityError),
    /// The authority refused this service's call: a bad or revoked SDK key, a missing scope, a
    /// request it rejects, or a configuration it cannot serve. Not retryable, never covered by
    /// a stand-in: fix the configuration the cause names.
    Refused(AuthorityError),
    /// The pipeline refused the input before asking anyone (an invalid amount, address, actor).
    Invalid(IntentError),
    /// No authority is configured: `#[paid_action]` without `conto = ...` and no
    /// [`install_default`](crate::install_default).
    NotConfigured,
}

/// Why a paid action did not run. Convert it into your own error type with `From`.
///
/// ```
/// use conto::Rejection;
///
/// #[derive(Debug)]
/// enum PayError {
///     NotAllowed(Rejection),
///     Transfer(String),
/// }
///
/// impl From<Rejection> for PayError {
///     fn from(r: Rejection) -> Self {
///         PayError::NotAllowed(r)
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection(Box<Inner>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Inner {
    kind: RejectionKind,
    source: DecisionSource,
    latency: Duration,
    actor: Option<ActorId>,
    amount: Option<Amount>,
}

impl Rejection {
    /// A rejection of `kind` decided by `source`.
    pub fn new(kind: RejectionKind, source: DecisionSource) -> Self {
        Self(Box::new(Inner { kind, source, latency: Duration::ZERO, actor: None, amount: None }))
    }

    pub(crate) fn about(mut self, actor: &ActorId, amount: Amount, latency: Duration) -> Self {
        self.0.actor = Some(actor.clone());
        self.0.amount = Some(amount);
        self.0.latency = latency;
        self
    }

    /// The kind of rejection.
    pub fn kind(&self) -> &RejectionKind {
        &self.0.kind
    }

    /// Who decided: the policy, or the fail-closed rule after a timeout or an outage.
    pub fn source(&self) -> DecisionSource {
        self.0.source
    }

    /// How long the decision took.
    pub fn latency(&self) -> Duration {
        self.0.latency
    }

    /// The actor the action was for.
    pub fn actor(&self) -> Option<&ActorId> {
        self.0.actor.as_ref()
    }

    /// The amount that was asked for.
    pub fn amount(&self) -> Option<Amount> {
        self.0.amount
    }

    /// Human-readable reasons.
    pub fn reasons(&self) -> Vec<String> {
        match &self.0.kind {
            RejectionKind::Denied(d) => d.reasons.clone(),
            RejectionKind::ApprovalRequired(p) => p.reasons.clone(),
            RejectionKind::Unavailable(e) | RejectionKind::Refused(e) => vec![e.to_string()],
            RejectionKind::Invalid(e) => vec![e.to_string()],
            RejectionKind::UnknownActor(_) => vec!["the actor is not provisioned to spend".to_owned()],
            RejectionKind::NotConfigured => vec![NOT_CONFIGURED.to_owned()],
        }
    }

    /// The authority's typed error, for an unavailable or refused authority.
    pub fn cause(&self) -> Option<&AuthorityError> {
        match &self.0.kind {
            RejectionKind::Unavailable(e) | RejectionKind::Refused(e) => Some(e),
            _ => None,
        }
    }

    /// The broken rules, for a policy denial.
    pub fn violations(&self) -> &[Violation] {
        match &self.0.kind {
            RejectionKind::Denied(d) => &d.violations,
            _ => &[],
        }
    }

    /// The pending approval request, when a human must approve.
    pub fn pending_approval(&self) -> Option<&PendingApproval> {
        match &self.0.kind {
            RejectionKind::ApprovalRequired(p) => Some(p),
            _ => None,
        }
    }

    /// Whether a denial by policy (or by the fail-closed rule).
    pub fn is_denied(&self) -> bool {
        matches!(self.0.kind, RejectionKind::Denied(_) | RejectionKind::Unavailable(_) | RejectionKind::UnknownActor(_))
    }

    /// Whether the actor was refused because it is not provisioned.
    pub fn is_unknown_actor(&self) -> bool {
        matches!(self.0.kind, RejectionKind::UnknownActor(_))
    }

    /// Whether asking again can succeed: after a human approves, or once the authority is back.
    /// A policy denial is final for the same intent.
    pub fn is_retryable(&self) -> bool {
        matches!(self.0.kind, RejectionKind::ApprovalRequired(_) | RejectionKind::Unavailable(_))
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0.kind {
            RejectionKind::Denied(d) => {
                f.write_str("payment denied by policy")?;
                if let Some(v) = d.violations.first() {
                    write!(f, " ({})", v.kind)?;
                }
                if !d.reasons.is_empty() {
                    write!(f, ": {}", d.reasons.join("; "))?;
                }
                Ok(())
            }
            RejectionKind::ApprovalRequired(p) if p.approval_request_id.is_empty() => {
                write!(f, "payment requires human approval (no request named, expires {})", p.expires_at)
            }
            RejectionKind::ApprovalRequired(p) => write!(
                f,
                "payment requires human approval (request {}, expires {})",
                p.approval_request_id, p.expires_at
            ),
            RejectionKind::Unavailable(cause) => {
                write!(f, "payment denied: the authority was unavailable ({}): {cause}", self.0.source)
            }
            RejectionKind::Refused(cause) => write!(f, "payment refused: {cause}"),
            RejectionKind::Invalid(e) => write!(f, "payment refused: {e}"),
            RejectionKind::NotConfigured => write!(f, "payment refused: {NOT_CONFIGURED}"),
            RejectionKind::UnknownActor(actor) => {
                write!(f, "payment refused: actor `{actor}` is not provisioned to spend")
            }
        }
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.0.kind {
            RejectionKind::Unavailable(e) | RejectionKind::Refused(e) => Some(e),
            RejectionKind::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

const NOT_CONFIGURED: &str = "no payment authority is configured: pass `conto = ...` to #[paid_action] \
     or call conto::install_default(..) at start-up";
