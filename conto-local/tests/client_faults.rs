//! The client against a scripted server for faults an honest server would not produce: 429 with
//! `Retry-After`, 500s, answers slower than the deadline, malformed bodies, 401/403. Each gives
//! a typed outcome, and none gives an approval.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use common::*;
use conto_client::ContoClient;
use conto_core::{AuthorityError, Conto, DecisionSource, Outage, Refused, RejectionKind, Settlement, Verdict};
use serde_json::{Value, json};

type Script = Arc<dyn Fn(usize) -> axum::response::Response + Send + Sync>;

struct Stub {
    url: String,
    hits: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<String>>>,
}

async fn stub(script: Script) -> Stub {
    let hits = Arc::new(AtomicUsize::new(0));
    let keys = Arc::new(Mutex::new(Vec::new()));
    let (h, k) = (hits.clone(), keys.clone());
    let handler = move |headers: HeaderMap| {
        let n = h.fetch_add(1, Ordering::SeqCst);
        if let Some(key) = headers.get("idempotency-key") {
            k.lock().unwrap().push(key.to_str().unwrap().to_owned());
        }
        let response = script(n);
        async move { response }
    };
    // Every path answers from the script: authorize calls and record calls alike.
    let router = Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Stub { url, hits, keys }
}

fn client(url: &str) -> ContoClient {
    ContoClient::builder()
        .base_url(url)
        .sdk_key(format!("conto_agent_{}", "ab".repeat(32)))
        .authorize_timeout(Duration::from_millis(1500))
        .any_actor()
        .build()
        .unwrap()
}

fn approved_body(amount: f64, expires_in_secs: i64) -> Value {
    let expires = conto_core::jiff::Timestamp::now()
        .checked_add(conto_core::jiff::SignedDuration::from_secs(expires_in_secs))
        .unwrap();
    json!({"approved": true, "approvalId": "apr_1", "approvalToken": "a".repeat(64), "expiresAt": expires.to_string(),
        "amount": amount, "recipientAddress": RECIPIENT})
}

/// Runs a paid transfer of 5 through `conto`; says whether the settlement body ran.
async fn pay(conto: &Conto) -> (Result<Result<(), ()>, conto_core::Rejection>, bool) {
    let mut ran = false;
    let out = conto
        .run(
            transfer("agent-1", "5"),
            |_| {
                ran = true;
                async { Ok::<(), ()>(()) }
            },
            |_| Settlement::default(),
        )
        .await;
    (out, ran)
}

#[tokio::test]
async fn retries_429_honouring_retry_after_with_the_same_idempotency_key() {
    let s = stub(Arc::new(|n| {
        if n == 0 {
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], axum::Json(json!({"code": "RATE_LIMITED"})))
                .into_response()
        } else {
            axum::Json(approved_body(5.0, 600)).into_response()
        }
    }))
    .await;
    let client = ContoClient::builder()
        .base_url(&s.url)
        .sdk_key(format!("conto_agent_{}", "ab".repeat(32)))
        .authorize_timeout(Duration::from_secs(3))
        .any_actor()
        .build()
        .unwrap();
    let intent = transfer("agent-1", "5");
    let d = client.authorize_intent(&intent).await.unwrap();
    assert!(matches!(d.verdict, Verdict::Approved(_)));
    assert_eq!(s.hits.load(Ordering::SeqCst), 2);
    let keys = s.keys.lock().unwrap().clone();
    assert_eq!(keys, vec![intent.idempotency_key.as_str().to_owned(); 2], "one attempt, one key, every try");
}

#[tokio::test]
async fn persistent_500s_end_as_a_typed_error_after_bounded_retries() {
    let s = stub(Arc::new(|_| {
        (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({"code": "INTERNAL_ERROR", "message": "boom"})))
            .into_response()
    }))
    .await;
    let err = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await.unwrap_err();
    assert!(
        matches!(&err, AuthorityError::Outage(Outage::Status { status: 500, code, .. }) if code == "INTERNAL_ERROR"),
        "{err}"
    );
    assert!(err.is_retryable());
    let hits = s.hits.load(Ordering::SeqCst);
    assert!((2..=4).contains(&hits), "retried, but at most 3 times: {hits}");
}

#[tokio::test]
async fn an_answer_slower_than_the_deadline_is_denied_as_timeout() {
    // A deadline far below the server's answer time: the stub sleeps on an async runtime too.
    let slow = {
        let router = Router::new().route(
            "/api/sdk/payments/approve",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                axum::Json(approved_body(5.0, 600))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        url
    };
    let conto = Conto::builder(
        ContoClient::builder()
            .base_url(&slow)
            .sdk_key(format!("conto_agent_{}", "ab".repeat(32)))
            .authorize_timeout(Duration::from_millis(200))
            .any_actor()
            .build()
            .unwrap(),
    )
    .deadline(Duration::from_millis(300))
    .build();
    let (out, ran) = pay(&conto).await;
    let r = out.expect_err("a slow authority is never an approval");
    assert!(!ran);
    assert!(matches!(r.kind(), RejectionKind::Unavailable { .. }), "{r}");
    assert!(matches!(r.source(), DecisionSource::Unavailable | DecisionSource::Timeout));
}

#[tokio::test]
async fn malformed_bodies_are_errors_never_approvals() {
    let cases: Vec<(&str, axum::response::Response)> = vec![
        ("not json", (StatusCode::OK, "approved!").into_response()),
        ("a JSON array", axum::Json(json!([true])).into_response()),
        ("approved as a string", axum::Json(json!({"approved": "yes"})).into_response()),
        (
            "approved without an id",
            axum::Json(json!({"approved": true, "approvalToken": "a".repeat(64)})).into_response(),
        ),
        ("a short token", {
            let mut b = approved_body(5.0, 600);
            b["approvalToken"] = json!("abc");
            axum::Json(b).into_response()
        }),
        ("an expiry in the past", axum::Json(approved_body(5.0, -5)).into_response()),
        ("an expiry years away", axum::Json(approved_body(5.0, 3 * 365 * 86_400)).into_response()),
        ("another amount", axum::Json(approved_body(500.0, 600)).into_response()),
        ("another recipient", {
            let mut b = approved_body(5.0, 600);
            b["recipientAddress"] = json!("0x9999999999999999999999999999999999999999");
            axum::Json(b).into_response()
        }),
        ("malformed violations", axum::Json(json!({"approved": false, "violations": "DAILY_LIMIT"})).into_response()),
        // An id that would send the confirm elsewhere (`payments/{id}/confirm`), or that no
        // store keeps.
        ("an id that is a path", {
            let mut b = approved_body(5.0, 600);
            b["approvalId"] = json!("apr_1/../../agents/agent-1");
            axum::Json(b).into_response()
        }),
        ("an id with a NUL", {
            let mut b = approved_body(5.0, 600);
            b["approvalId"] = json!("apr\u{0}_1");
            axum::Json(b).into_response()
        }),
    ];
    for (what, response) in cases {
        let response = Arc::new(Mutex::new(Some(response)));
        let s = stub(Arc::new(move |_| {
            response.lock().unwrap().take().unwrap_or_else(|| StatusCode::GONE.into_response())
        }))
        .await;
        let result = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await;
        match result {
            Err(AuthorityError::Outage(Outage::InvalidResponse(_))) => {}
            other => panic!("{what}: expected InvalidResponse, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn unauthorized_and_forbidden_are_typed_and_fail_closed() {
    for (status, code) in [(401u16, "AUTH_FAILED"), (403, "INSUFFICIENT_SCOPE")] {
        let s = stub(Arc::new(move |_| {
            (StatusCode::from_u16(status).unwrap(), axum::Json(json!({"error": "no", "code": code, "message": "no"})))
                .into_response()
        }))
        .await;
        let err = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await.unwrap_err();
        match (&err, status) {
            (AuthorityError::Refused(Refused::Unauthenticated { code: c, .. }), 401) => assert_eq!(c, code),
            (AuthorityError::Refused(Refused::MissingScope { code: c, .. }), 403) => assert_eq!(c, code),
            other => panic!("HTTP {status}: {other:?}"),
        }
        assert!(!err.is_retryable());
        assert_eq!(s.hits.load(Ordering::SeqCst), 1, "4xx is never retried");

        // Through the pipeline with a stand-in configured: the stand-in must not cover a bad key
        // or a missing scope, and the rejection keeps its typed, non-retryable cause.
        let stand_in = conto_core::Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap();
        let (out, ran) = pay(&Conto::builder(client(&s.url)).stand_in(stand_in.clone()).build()).await;
        let r = out.unwrap_err();
        assert!(!ran);
        assert!(matches!(r.kind(), RejectionKind::Refused(cause) if cause == &err), "{r:?}");
        assert!(!r.is_retryable(), "HTTP {status} is not an outage");
        assert_eq!(r.source(), DecisionSource::Authority);
        assert_eq!(stand_in.usage("agent-1").stats.approved, 0, "the stand-in was not used");
    }
}

#[tokio::test]
async fn a_denial_with_403_is_a_decision_not_an_error() {
    let s = stub(Arc::new(|_| {
        (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"approved": false, "reasons": ["Daily spend limit exceeded"],
            "violations": [{"type": "DAILY_LIMIT", "limit": 1000, "current": 950}], "requiresHumanApproval": false})),
        )
            .into_response()
    }))
    .await;
    let d = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await.unwrap();
    let Verdict::Denied(denial) = d.verdict else { panic!() };
    assert_eq!(denial.violations[0].kind, conto_core::ViolationType::DailyLimit);
    assert_eq!(denial.violations[0].current, Some(950.into()));
}

/// An error status never approves: a 403 or 400 whose body claims an approval (a proxy's
/// mangled answer, a hostile server) is not one, and the body never runs.
#[tokio::test]
async fn an_error_status_whose_body_claims_an_approval_is_not_one() {
    for status in [StatusCode::FORBIDDEN, StatusCode::BAD_REQUEST] {
        let s = stub(Arc::new(move |_| {
            let expires = (conto_core::jiff::Timestamp::now() + std::time::Duration::from_secs(600)).to_string();
            let body = json!({"approved": true, "approvalId": "apr_1", "approvalToken": "ab".repeat(32),
                "expiresAt": expires, "confirmUrl": "/api/sdk/payments/apr_1/confirm", "status": "APPROVED"});
            (status, axum::Json(body)).into_response()
        }))
        .await;
        let decided = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await;
        assert!(!matches!(&decided, Ok(d) if matches!(d.verdict, Verdict::Approved(_))), "{status}: {decided:?}");
        let (out, ran) = pay(&Conto::new(client(&s.url))).await;
        assert!(out.is_err() && !ran, "{status}: the body never runs");
    }
}

#[test]
fn parse_decision_reads_the_status_as_the_client_does() {
    // The public parser for custom transports: an error status claiming an approval is not one.
    let intent = x402("agent-1", "5");
    let body = json!({"authorized": true, "authorizationId": "auth_1", "reasons": []}).to_string();
    let approved = conto_client::parse_decision(200, body.as_bytes(), &intent).unwrap();
    assert!(matches!(approved.verdict, Verdict::Approved(_)), "{approved:?}");
    for status in [500, 503, 404, 302] {
        let read = conto_client::parse_decision(status, body.as_bytes(), &intent);
        assert!(read.is_err(), "HTTP {status}: {read:?}");
    }
}

#[tokio::test]
async fn an_outage_page_that_is_not_json_is_retried_as_an_outage() {
    // A proxy's HTML 502, then the answer: retried with the same key, and approved.
    let s = stub(Arc::new(|n| {
        if n == 0 {
            (StatusCode::BAD_GATEWAY, [("content-type", "text/html")], "<html>502 Bad Gateway</html>").into_response()
        } else {
            axum::Json(approved_body(5.0, 600)).into_response()
        }
    }))
    .await;
    let decided = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await.unwrap();
    assert!(matches!(decided.verdict, Verdict::Approved(_)), "{decided:?}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 2);
    // Only outages: a 400 that is not JSON is a malformed answer, not retried.
    let s = stub(Arc::new(|_| (StatusCode::BAD_REQUEST, "nope").into_response())).await;
    let err = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await.unwrap_err();
    assert!(matches!(err, AuthorityError::Outage(Outage::InvalidResponse(_))), "{err:?}");
    assert_eq!(s.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_redirect_is_never_followed_and_never_approves() {
    // An answer redirecting the call (with its body, a confirm's approval token) elsewhere: the
    // client does not follow it, and the redirect target's approval is never read.
    let target = stub(Arc::new(|_| axum::Json(approved_body(5.0, 600)).into_response())).await;
    let to = format!("{}/api/sdk/payments/approve", target.url);
    let s = stub(Arc::new(move |_| {
        (StatusCode::TEMPORARY_REDIRECT, [("location", to.clone())], axum::Json(json!({}))).into_response()
    }))
    .await;
    let decided = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await;
    assert!(decided.is_err(), "{decided:?}");
    assert_eq!(target.hits.load(Ordering::SeqCst), 0, "the redirect was followed");
    let (out, ran) = pay(&Conto::new(client(&s.url))).await;
    assert!(out.is_err() && !ran);
}

#[test]
fn a_key_a_header_cannot_carry_is_refused_when_the_client_is_built() {
    // Read from a file with its newline: refused as a bad key now, not sent and failed as if
    // the network were down (which a stand-in would cover).
    let built = ContoClient::builder()
        .base_url("http://127.0.0.1:9")
        .sdk_key(format!("conto_agent_{}\n", "ab".repeat(32)))
        .any_actor()
        .build();
    assert_eq!(built.err(), Some(conto_client::ClientError::InvalidKey));
    let org = conto_client::sync::OrgClient::new("http://127.0.0.1:9", "conto_org\r\nx-evil: 1");
    assert!(matches!(org, Err(conto_client::ClientError::InvalidKey)), "{org:?}");
}

/// Conto documents denials as error codes too (conto-api.md §8): `403 PAYMENT_DENIED`,
/// `400 POLICY_DENIED`, `400 DAILY_LIMIT_EXCEEDED`, `PER_TX_LIMIT_EXCEEDED`,
/// `INSUFFICIENT_BALANCE`. Each is the policy's denial, its message the reason, never an outage
/// a stand-in would cover and never an approval; any other 4xx stays the error it is.
#[tokio::test]
async fn a_denial_sent_as_a_documented_error_code_is_a_denial() {
    use conto_core::ViolationType as V;
    let cases = [
        (403, "PAYMENT_DENIED", None),
        (400, "POLICY_DENIED", None),
        (400, "DAILY_LIMIT_EXCEEDED", Some(V::DailyLimit)),
        (400, "PER_TX_LIMIT_EXCEEDED", Some(V::PerTxLimit)),
        (400, "INSUFFICIENT_BALANCE", Some(V::InsufficientBalance)),
    ];
    for (status, code, kind) in cases {
        let s = stub(Arc::new(move |_| {
            let body =
                json!({"error": "Blocked by policy", "code": code, "message": "Blocked by policy: over the cap"});
            (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
        }))
        .await;
        let d = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await.unwrap();
        let Verdict::Denied(denial) = d.verdict else { panic!("{code}: {:?}", d.verdict) };
        assert_eq!(denial.reasons, ["Blocked by policy: over the cap"], "{code}");
        assert_eq!(denial.violations.first().map(|v| v.kind.clone()), kind, "{code}");
        assert_eq!(s.hits.load(Ordering::SeqCst), 1, "{code}: a denial is never retried");

        // Through the pipeline with a stand-in: the denial stands, the body never runs.
        let stand_in = conto_core::Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap();
        let (out, ran) = pay(&Conto::builder(client(&s.url)).stand_in(stand_in.clone()).build()).await;
        let r = out.unwrap_err();
        assert!(!ran && matches!(r.kind(), RejectionKind::Denied(_)), "{code}: {r:?}");
        assert_eq!(stand_in.usage("agent-1").stats.approved, 0, "{code}: the stand-in was not used");
    }
    // The enriched denial's own reasons and violations are kept.
    let s = stub(Arc::new(|_| {
        let body = json!({"error": "denied", "code": "POLICY_DENIED", "message": "denied",
            "reasons": ["Recipient not allowed"], "violations": [{"type": "WHITELIST_VIOLATION"}],
            "context": {"nextSteps": ["ask an admin"]}});
        (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
    }))
    .await;
    let d = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await.unwrap();
    let Verdict::Denied(denial) = d.verdict else { panic!("{:?}", d.verdict) };
    assert_eq!(denial.reasons, ["Recipient not allowed"]);
    assert_eq!(denial.violations[0].kind, V::WhitelistViolation);
    // Another code with the same statuses is the error it says.
    let s = stub(Arc::new(|_| {
        (StatusCode::BAD_REQUEST, axum::Json(json!({"code": "INVALID_ADDRESS", "message": "bad address"})))
            .into_response()
    }))
    .await;
    let err = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await.unwrap_err();
    assert!(matches!(err, AuthorityError::Refused(Refused::Request { status: 400, .. })), "{err:?}");
}

#[tokio::test]
async fn a_refused_connection_is_unreachable_and_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = client(&url).authorize_intent(&transfer("agent-1", "5")).await.unwrap_err();
    assert!(matches!(err, AuthorityError::Outage(Outage::Connect(_))), "{err}");
    assert!(err.is_retryable());
}

/// A payment held for a human is a requires-approval decision even when Conto names no
/// `approvalRequestId` (it sends one only when an approval workflow matches). Read as an
/// unreadable answer it would be an outage, and a configured stand-in would decide the payment
/// Conto held.
#[tokio::test]
async fn a_payment_held_for_a_human_without_a_request_id_is_never_decided_by_the_stand_in() {
    let held = json!({"approved": false, "requiresHumanApproval": true, "reasons": ["Amount above 500 needs review"]});
    // Named by something that is not an id (a path): held all the same, never an outage.
    let mut by_a_path = held.clone();
    by_a_path["approvalRequestId"] = json!("../agents/agent-1");
    for held in [held, by_a_path] {
        held_without_a_usable_id(held).await;
    }
}

async fn held_without_a_usable_id(held: Value) {
    let s = stub(Arc::new(move |_| (StatusCode::ACCEPTED, axum::Json(held.clone())).into_response())).await;
    let d = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await.unwrap();
    let Verdict::RequiresApproval(pending) = d.verdict else { panic!("{:?}", d.verdict) };
    assert_eq!(pending.reasons, ["Amount above 500 needs review"]);
    // Waiting on it cannot see it approved: it is declined at once, saying why.
    let looked = client(&s.url).approval_request(&transfer("agent-1", "5"), &pending).await.unwrap();
    assert!(matches!(looked.map(|d| d.verdict), Some(Verdict::Denied(_))));

    for mode in [conto_core::ApprovalMode::Reject, conto_core::ApprovalMode::Wait(Duration::from_secs(5))] {
        let stand_in = conto_core::Engine::from_json(r#"{"agents": ["agent-1"], "policies": []}"#).unwrap();
        let (out, ran) = pay(&Conto::builder(client(&s.url)).stand_in(stand_in.clone()).approval(mode).build()).await;
        let r = out.expect_err("held for a human, never approved here");
        assert!(!ran);
        assert!(matches!(r.kind(), RejectionKind::ApprovalRequired(_) | RejectionKind::Denied(_)), "{mode:?}: {r:?}");
        assert_eq!(stand_in.usage("agent-1").stats.approved, 0, "{mode:?}: the stand-in was not asked");
    }
}

/// The id a requires-approval answer is followed by: `approvalRequestId`, else the `approvalId`
/// Conto's skill reports to the user.
#[tokio::test]
async fn a_requires_approval_answer_is_known_by_its_approval_id_when_it_names_no_request() {
    let s = stub(Arc::new(|_| {
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({"approved": false, "requiresHumanApproval": true, "approvalId": "apr_9"})),
        )
            .into_response()
    }))
    .await;
    let d = client(&s.url).authorize_intent(&transfer("agent-1", "5")).await.unwrap();
    let Verdict::RequiresApproval(pending) = d.verdict else { panic!() };
    assert_eq!(pending.approval_request_id, "apr_9");
}

/// A payment request (`payments/request`) of `amount` by `agent-1`.
fn payment_request(amount: &str) -> conto_core::PaymentIntent {
    conto_core::PaymentIntent::builder("agent-1", amount, conto_core::Rail::request(None))
        .recipient(RECIPIENT)
        .build()
        .unwrap()
}

/// Conto's docs allow a decision body on 403; a payment request's denial carries `status`.
#[tokio::test]
async fn a_payment_request_denied_with_403_is_a_decision_with_its_reasons() {
    let s = stub(Arc::new(|_| {
        (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"requestId": "req_1", "status": "DENIED", "reasons": ["Category not allowed"]})),
        )
            .into_response()
    }))
    .await;
    let intent = payment_request("5");
    let d = client(&s.url).authorize_intent(&intent).await.unwrap();
    let Verdict::Denied(denial) = d.verdict else { panic!("{:?}", d.verdict) };
    assert_eq!(denial.reasons, ["Category not allowed"]);
}

/// A 400 that is not a decision (no `requestId`) stays the typed error it is, even when its
/// body has a `status`: never read as an unreadable decision, which would be an outage.
#[tokio::test]
async fn a_payment_request_refused_as_invalid_is_an_error_not_a_decision_or_an_outage() {
    for body in [
        json!({"error": "amount must be positive", "code": "VALIDATION_ERROR", "status": "error"}),
        // Named, but neither denied nor held: an error body with a trace id, or an approval
        // sent with an error status. Neither is a decision.
        json!({"requestId": "req_1", "status": "FAILED", "error": "wallet misconfigured"}),
        json!({"requestId": "req_1", "status": "APPROVED"}),
    ] {
        let s = stub(Arc::new(move |_| (StatusCode::BAD_REQUEST, axum::Json(body.clone())).into_response())).await;
        let err = client(&s.url).authorize_intent(&payment_request("5")).await.unwrap_err();
        assert!(!matches!(err, AuthorityError::Outage(_)), "{err:?}");
        assert!(!err.is_retryable());
    }
}

/// A payment request held for a human without an `approvalRequestId` is followed by its
/// `requestId`, which the approval request entry names as `paymentRequestId` (how Conto's
/// shopping starter matches them); once approved, the approval is that payment request.
#[tokio::test]
async fn a_held_payment_request_is_followed_by_its_payment_request_id() {
    let s = stub(Arc::new(|n| {
        let body = if n == 0 {
            json!({"requestId": "req_7", "status": "REQUIRES_APPROVAL", "reasons": ["above 500"]})
        } else {
            json!({"requests": [
                {"paymentRequestId": "req_other", "status": "PENDING"},
                {"paymentRequestId": "req_7", "status": "APPROVED"}
            ]})
        };
        axum::Json(body).into_response()
    }))
    .await;
    let c = client(&s.url);
    let intent = payment_request("5");
    let Verdict::RequiresApproval(pending) = c.authorize_intent(&intent).await.unwrap().verdict else { panic!() };
    assert_eq!(pending.approval_request_id, "req_7");
    let decided = c.approval_request(&intent, &pending).await.unwrap().expect("decided");
    let Verdict::Approved(a) = decided.verdict else { panic!("{:?}", decided.verdict) };
    assert_eq!(a.id, "req_7");
    let lifetime = a.expires_at.duration_since(conto_core::jiff::Timestamp::now()).as_secs();
    assert!((270..=300).contains(&lifetime), "a payment request's approval lives 5 minutes: {lifetime} s");
}

/// A 2xx record answer is a record unless its body says it is not: Conto does not document
/// every record answer's shape, and a settled payment must not be reported unrecorded because
/// the body looked unfamiliar.
#[tokio::test]
async fn a_record_is_taken_on_2xx_unless_the_answer_says_it_was_not() {
    for (answer, recorded) in [
        (json!({}), true),
        (json!({"id": "pay_1", "status": "RECORDED"}), true),
        (json!({"confirmed": true, "transactionId": "tx_1"}), true),
        (json!({"confirmed": false}), false),
        (json!({"success": false, "error": "duplicate"}), false),
        (json!({"recorded": 0}), false),
        (json!({"status": "FAILED"}), false),
        (json!({"error": "duplicate payment"}), false),
        (json!({"confirmed": true, "error": null}), true),
    ] {
        let s = stub(Arc::new(move |n| {
            let body = if n == 0 { approved_body(5.0, 600) } else { answer.clone() };
            axum::Json(body).into_response()
        }))
        .await;
        let c = client(&s.url);
        let Verdict::Approved(a) = c.authorize_intent(&transfer("agent-1", "5")).await.unwrap().verdict else {
            panic!("approved")
        };
        let result = c.record_settlement(&a, &Settlement::default().reference(TX)).await;
        assert_eq!(result.is_ok(), recorded, "{result:?}");
    }
}
