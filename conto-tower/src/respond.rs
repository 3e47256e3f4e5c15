//! The layer's own responses: RFC 9457 problem documents for every outcome that stops a request.

use std::fmt;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use conto_core::{Rejection, RejectionKind};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

/// The status for a policy denial.
pub const DENIED_STATUS: StatusCode = StatusCode::FORBIDDEN;
/// The status for an action that waits for a human approval (Conto answers `REQUIRES_APPROVAL`
/// with 202).
pub const APPROVAL_REQUIRED_STATUS: StatusCode = StatusCode::ACCEPTED;
/// The status when the authority could not decide in time (fail-closed).
pub const UNAVAILABLE_STATUS: StatusCode = StatusCode::SERVICE_UNAVAILABLE;
/// The status when the authority refuses the service itself (a bad or revoked SDK key, a
/// missing scope, a configuration it cannot serve): a server-side fault, never retryable, never
/// answered with 503.
pub const AUTHORITY_REFUSED_STATUS: StatusCode = StatusCode::INTERNAL_SERVER_ERROR;
/// The status when no authenticated actor is found for a paid request.
pub const MISSING_ACTOR_STATUS: StatusCode = StatusCode::UNAUTHORIZED;
/// The status when the actor is not provisioned to spend (never retryable).
pub const UNKNOWN_ACTOR_STATUS: StatusCode = StatusCode::FORBIDDEN;
/// The `Retry-After` seconds sent with [`UNAVAILABLE_STATUS`].
pub const RETRY_AFTER_SECS: u32 = 5;

/// Why the layer stopped a request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Refusal {
    /// The authority refused or could not decide: denied, pending approval, unavailable, or an
    /// invalid intent.
    Rejected(Rejection),
    /// No authenticated actor was found for the request (401); says what was expected.
    MissingActor(String),
    /// The price could not be computed from the request (400).
    BadPrice(String),
    /// The body was larger than the pricing limit (413).
    BodyTooLarge(usize),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Rejected(r) => r.fmt(f),
            Refusal::MissingActor(expects) => write!(f, "no authenticated actor for this request: expected {expects}"),
            Refusal::BadPrice(m) => write!(f, "the request's price could not be computed: {m}"),
            Refusal::BodyTooLarge(limit) => write!(f, "the request body is larger than {limit} bytes"),
        }
    }
}

type ResponderFn = dyn Fn(&Refusal) -> Response + Send + Sync;

/// Turns a [`Refusal`] into a response; replace it with [`PaywallBuilder::respond_with`](crate::PaywallBuilder::respond_with).
#[derive(Clone)]
pub struct Responder(pub(crate) Arc<ResponderFn>);

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Responder(..)")
    }
}

impl Default for Responder {
    fn default() -> Self {
        Self(Arc::new(problem))
    }
}

/// What a caller is told when the authority refused this service itself.
const REFUSED_DETAIL: &str = "the payment authority refused this service's credentials or configuration: check the \
                              SDK key and its scopes (the cause is in the service's logs)";

/// The default response: `application/problem+json` (RFC 9457) with the decision, reasons and
/// violations; `Cache-Control: no-store` always.
pub fn problem(refusal: &Refusal) -> Response {
    let (status, slug, title, mut body) = match refusal {
        Refusal::Rejected(r) => match r.kind() {
            RejectionKind::Denied(d) => (
                DENIED_STATUS,
                "payment-denied",
                "Payment denied by policy",
                json!({"decision": "denied", "reasons": d.reasons, "violations": d.violations}),
            ),
            RejectionKind::ApprovalRequired(p) => (
                APPROVAL_REQUIRED_STATUS,
                "approval-required",
                "Payment requires human approval",
                json!({
                    "decision": "requires_approval",
                    "approvalRequestId": p.approval_request_id,
                    "expiresAt": p.expires_at.to_string(),
                    "reasons": p.reasons,
                }),
            ),
            RejectionKind::Unavailable { .. } => (
                UNAVAILABLE_STATUS,
                "authority-unavailable",
                "Payment authority unavailable",
                // The cause stays in the server's logs and events: clients learn only to retry.
                json!({"decision": "denied", "reasons": ["the payment authority did not answer in time; try again later"]}),
            ),
            RejectionKind::Refused(_) => (
                AUTHORITY_REFUSED_STATUS,
                "authority-refused",
                "Payment authority refused this service",
                // Not the client's fault and not retryable: the service's configuration must
                // change. The cause (the authority's own message, a credential store's path) stays
                // in the server's logs and events.
                json!({"decision": "refused", "reasons": [REFUSED_DETAIL]}),
            ),
            RejectionKind::NotConfigured => (
                AUTHORITY_REFUSED_STATUS,
                "not-configured",
                "No payment authority configured",
                json!({"decision": "refused", "reasons": r.reasons()}),
            ),
            RejectionKind::UnknownActor(_) => (
                UNKNOWN_ACTOR_STATUS,
                "actor-unknown",
                "Actor not provisioned",
                json!({"decision": "refused", "reasons": ["this actor is not provisioned to spend"]}),
            ),
            _ => (
                StatusCode::BAD_REQUEST,
                "invalid-payment",
                "Invalid payment request",
                json!({"decision": "invalid", "reasons": r.reasons()}),
            ),
        },
        Refusal::MissingActor(_) => (
            MISSING_ACTOR_STATUS,
            "actor-missing",
            "No authenticated actor",
            json!({"decision": "refused", "reasons": [refusal.to_string()]}),
        ),
        Refusal::BadPrice(m) => {
            (StatusCode::BAD_REQUEST, "invalid-price", "Invalid price", json!({"decision": "invalid", "reasons": [m]}))
        }
        Refusal::BodyTooLarge(_) => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large to price",
            json!({"decision": "invalid", "reasons": [refusal.to_string()]}),
        ),
    };
    if let (Some(map), Refusal::Rejected(r)) = (body.as_object_mut(), refusal) {
        map.insert("source".into(), json!(r.source().to_string()));
    }
    if let Some(map) = body.as_object_mut() {
        // RFC 9457 §4.2.1: `about:blank` with the status phrase as the title; what happened is
        // in the stable `code` member (and the human `detail`), so no URI has to resolve.
        map.insert("type".into(), json!("about:blank"));
        map.insert("title".into(), json!(status.canonical_reason().unwrap_or(title)));
        map.insert("code".into(), json!(slug));
        map.insert("status".into(), json!(status.as_u16()));
        let detail = match refusal {
            Refusal::Rejected(r) if matches!(r.kind(), RejectionKind::Unavailable { .. }) => {
                "the payment authority did not answer in time; try again later".to_owned()
            }
            Refusal::Rejected(r) if matches!(r.kind(), RejectionKind::Refused(_)) => REFUSED_DETAIL.to_owned(),
            _ => refusal.to_string(),
        };
        map.insert("detail".into(), json!(detail));
    }
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    if status == UNAVAILABLE_STATUS {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    response
}

/// Adds `Cache-Control: no-store` (every refusal carries it, custom ones too).
pub(crate) fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
