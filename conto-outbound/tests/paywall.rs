//! Paying loopback paywalls through the policy: an x402 v2 paywall (`PAYMENT-REQUIRED`,
//! `PAYMENT-SIGNATURE`, `PAYMENT-RESPONSE`) that verifies and settles through a facilitator on
//! loopback (`POST /verify`, `POST /settle`, answered by this test's code, no chain), an x402 v1
//! paywall (body, `X-PAYMENT`, `X-PAYMENT-RESPONSE`) and an MPP paywall (`WWW-Authenticate:
//! Payment`, `Payment-Receipt`).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::Records;
use conto::outbound::{Challenge, Credential, Offer, PaidRequests, PayAs, PaymentError, SignError, Signer};
use conto::{BoxFuture, Conto, Decimal, Engine, RejectionKind};
use serde_json::{Value, json};

const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"; // Base Sepolia
const PAY_TO: &str = "0x1111111111111111111111111111111111111111";
const SIGNATURE: &str = "signed-by-the-test-wallet";

/// The paywall's and the facilitator's state.
#[derive(Default)]
struct Paywall {
    /// The price in atomic units (USDC: 6 decimals).
    price: Mutex<String>,
    asset: Mutex<String>,
    /// Raise the price once a challenge was sent (a paywall that changes its mind).
    raise_after_challenge: AtomicBool,
    facilitator: Mutex<String>,
    settled: AtomicU32,
    served: AtomicU32,
    /// A host the challenge claims instead of its own (a paywall posing as another service).
    claim_host: Mutex<Option<String>>,
    /// `maxTimeoutSeconds` of its requirement, when not the usual 60.
    max_timeout: Mutex<Option<u64>>,
    /// Leave `maxTimeoutSeconds` out of its requirement (the validity of what is signed is
    /// then the signer's guess).
    no_max_timeout: AtomicBool,
    /// The amount its settlement report claims, when not the one settled (a paywall under-
    /// reporting what it took).
    report_amount: Mutex<Option<String>>,
    /// Settle the payment, then answer 402 as if it had been refused (a paywall draining a
    /// payer that believes refusals).
    settle_then_refuse: AtomicBool,
    /// Ask with the `upto` scheme (the payment may settle less than it signs for).
    upto: AtomicBool,
}

fn requirement(p: &Paywall, url: &str) -> Value {
    let mut r = json!({"scheme": "exact", "network": "eip155:84532", "amount": *p.price.lock().unwrap(),
        "asset": *p.asset.lock().unwrap(), "payTo": PAY_TO, "maxTimeoutSeconds": p.max_timeout.lock().unwrap().unwrap_or(60),
        "extra": {"name": "USDC", "version": "2"}, "resource": url});
    if p.no_max_timeout.load(Ordering::SeqCst) {
        r.as_object_mut().unwrap().remove("maxTimeoutSeconds");
    }
    if p.upto.load(Ordering::SeqCst) {
        r["scheme"] = json!("upto");
    }
    r
}

async fn x402_v2(State(p): State<Arc<Paywall>>, headers: HeaderMap) -> Response {
    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or_default().to_owned();
    let claimed = p.claim_host.lock().unwrap().clone();
    let url = &format!("http://{}/search", claimed.unwrap_or(host));
    let wanted = requirement(&p, url);
    let Some(signature) = headers.get("payment-signature") else {
        let challenge = json!({"x402Version": 2, "resource": {"url": url}, "accepts": [wanted]});
        if p.raise_after_challenge.load(Ordering::SeqCst) {
            *p.price.lock().unwrap() = "900000".into();
        }
        return (StatusCode::PAYMENT_REQUIRED, [("payment-required", STANDARD.encode(challenge.to_string()))], "")
            .into_response();
    };
    let payload: Value = serde_json::from_slice(&STANDARD.decode(signature.as_bytes()).unwrap()).unwrap();
    let facilitator = p.facilitator.lock().unwrap().clone();
    let client = reqwest::Client::new();
    let body = json!({"x402Version": 2, "paymentPayload": payload, "paymentRequirements": wanted});
    let verify: Value =
        client.post(format!("{facilitator}/verify")).json(&body).send().await.unwrap().json().await.unwrap();
    if verify["isValid"] != true {
        let challenge = json!({"x402Version": 2, "resource": {"url": url}, "accepts": [wanted],
            "error": verify["invalidReason"]});
        return (StatusCode::PAYMENT_REQUIRED, [("payment-required", STANDARD.encode(challenge.to_string()))], "")
            .into_response();
    }
    p.served.fetch_add(1, Ordering::SeqCst);
    let mut settle: Value =
        client.post(format!("{facilitator}/settle")).json(&body).send().await.unwrap().json().await.unwrap();
    if p.settle_then_refuse.load(Ordering::SeqCst) {
        let challenge = json!({"x402Version": 2, "resource": {"url": url}, "accepts": [wanted], "error": "refused"});
        return (StatusCode::PAYMENT_REQUIRED, [("payment-required", STANDARD.encode(challenge.to_string()))], "")
            .into_response();
    }
    if let Some(amount) = p.report_amount.lock().unwrap().clone() {
        settle["amount"] = json!(amount);
    }
    (StatusCode::OK, [("payment-response", STANDARD.encode(settle.to_string()))], "results").into_response()
}

/// The facilitator: a payment is valid when it carries the test wallet's signature and accepts
/// exactly what the paywall requires now.
async fn verify(Json(body): Json<Value>) -> Json<Value> {
    let p = &body["paymentPayload"];
    let ok = p["payload"]["signature"] == SIGNATURE && p["accepted"] == body["paymentRequirements"];
    Json(if ok {
        json!({"isValid": true, "payer": "0xpayer"})
    } else {
        json!({"isValid": false, "invalidReason": "invalid_payload"})
    })
}

async fn settle(State(p): State<Arc<Paywall>>, Json(body): Json<Value>) -> Json<Value> {
    let n = p.settled.fetch_add(1, Ordering::SeqCst) + 1;
    Json(json!({"success": true, "transaction": format!("0x{n:064x}"), "network": "eip155:84532",
        "payer": "0xpayer", "amount": body["paymentRequirements"]["amount"]}))
}

async fn x402_v1(State(p): State<Arc<Paywall>>, headers: HeaderMap) -> Response {
    if headers.get("x-payment").is_none() {
        let body = json!({"x402Version": 1, "error": "X-PAYMENT header is required", "accepts": [{
            "scheme": "exact", "network": "base-sepolia", "maxAmountRequired": *p.price.lock().unwrap(),
            "asset": USDC, "payTo": PAY_TO, "resource": "http://127.0.0.1/v1", "description": "search",
            "mimeType": "application/json", "maxTimeoutSeconds": 60}]});
        return (StatusCode::PAYMENT_REQUIRED, Json(body)).into_response();
    }
    p.served.fetch_add(1, Ordering::SeqCst);
    let settled = json!({"success": true, "transaction": "0xv1", "network": "base-sepolia"});
    (StatusCode::OK, [("x-payment-response", STANDARD.encode(settled.to_string()))], "v1 results").into_response()
}

async fn mpp(State(p): State<Arc<Paywall>>, headers: HeaderMap) -> Response {
    if headers.get("authorization").is_none() {
        let request =
            URL_SAFE_NO_PAD.encode(json!({"amount": "75", "currency": "usd", "recipient": PAY_TO}).to_string());
        let challenge =
            format!(r#"Payment id="c1", realm="api.test", method="tempo", intent="charge", request="{request}""#);
        return (StatusCode::PAYMENT_REQUIRED, [("www-authenticate", challenge)], "").into_response();
    }
    p.served.fetch_add(1, Ordering::SeqCst);
    let receipt =
        URL_SAFE_NO_PAD.encode(json!({"status": "success", "method": "tempo", "reference": "0xmpp"}).to_string());
    (StatusCode::OK, [("payment-receipt", receipt)], "stream").into_response()
}

async fn start(p: Arc<Paywall>) -> String {
    let app = Router::new()
        .route("/search", get(x402_v2))
        .route("/v1", get(x402_v1))
        .route("/stream", get(mpp))
        .route("/verify", post(verify))
        .route("/settle", post(settle))
        .with_state(p.clone());
    let url = common::serve(app).await;
    *p.facilitator.lock().unwrap() = url.clone();
    url
}

/// The test wallet: counts its calls and writes the credential each protocol expects.
#[derive(Clone, Default)]
struct Wallet {
    calls: Arc<AtomicU32>,
}

impl Signer for Wallet {
    fn sign<'a>(&'a self, offer: &'a Offer) -> BoxFuture<'a, Result<Credential, SignError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match &offer.challenge {
                Challenge::X402 { version: 2, resource, .. } => {
                    let accepted = serde_json::to_value(offer.requirement.as_ref().unwrap()).unwrap();
                    let payload = json!({"x402Version": 2, "resource": {"url": resource}, "accepted": accepted,
                        "payload": {"signature": SIGNATURE}});
                    Credential::new("payment-signature", STANDARD.encode(payload.to_string()))
                }
                Challenge::X402 { .. } => Credential::new(
                    "x-payment",
                    STANDARD.encode(json!({"x402Version": 1, "payload": {"signature": SIGNATURE}}).to_string()),
                ),
                Challenge::Mpp(m) => {
                    let credential = json!({"challenge": {"id": m.param("id")}, "payload": {"signature": SIGNATURE}});
                    Credential::new(
                        "authorization",
                        format!("Payment {}", URL_SAFE_NO_PAD.encode(credential.to_string())),
                    )
                }
                _ => Err(SignError("unknown challenge".into())),
            }
        })
    }
}

const POLICIES: &str = r#"{"agents": ["agent-1"], "policies": [
    {"name": "per payment", "rules": [{"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "1", "action": "ALLOW"}]},
    {"name": "budget", "rules": [{"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "10", "action": "ALLOW"}]}
]}"#;

struct Setup {
    url: String,
    paywall: Arc<Paywall>,
    engine: Engine,
    wallet: Wallet,
    client: reqwest_middleware::ClientWithMiddleware,
    recorded: Records,
}

async fn setup(price: &str) -> Setup {
    setup_with(price, false).await
}

/// `trust`: the middleware believes a paywall's refusal ([`PaidRequestsBuilder::trust_refusals`]).
async fn setup_with(price: &str, trust: bool) -> Setup {
    let paywall = Arc::new(Paywall::default());
    *paywall.price.lock().unwrap() = price.into();
    *paywall.asset.lock().unwrap() = USDC.into();
    let url = start(paywall.clone()).await;
    let engine = Engine::from_json(POLICIES).unwrap();
    let (conto, recorded) = common::observed(&engine);
    let wallet = Wallet::default();
    let assets = conto::outbound::Assets::usdc().with_any_network("usd", 2);
    let mut paid = PaidRequests::builder(conto, wallet.clone()).actor("agent-1").unwrap().assets(assets);
    if trust {
        paid = paid.trust_refusals();
    }
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(paid.build()).build();
    Setup { url, paywall, engine, wallet, client, recorded }
}

fn payment_error(e: &reqwest_middleware::Error) -> &PaymentError {
    PaymentError::from_middleware(e).unwrap_or_else(|| panic!("not a payment error: {e:?}"))
}

#[tokio::test]
async fn an_approved_x402_v2_payment_is_signed_once_settled_and_recorded_once_with_its_reference() {
    let s = setup("250000").await; // 0.25 USDC
    let answer = s.client.get(format!("{}/search", s.url)).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "results");
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 1);
    assert_eq!(s.paywall.settled.load(Ordering::SeqCst), 1);
    let recorded = s.recorded.lock().unwrap().clone();
    assert_eq!(recorded, vec![(Decimal::new(25, 2), Some(format!("0x{:064x}", 1)))], "recorded once, exactly 0.25");
    let usage = s.engine.usage("agent-1");
    assert_eq!((usage.stats.recorded, usage.live_reservations), (1, 0));
}

#[tokio::test]
async fn a_denied_payment_never_calls_the_signer() {
    let s = setup("5000000").await; // 5 USDC: above the per-payment limit of 1
    let err = s.client.get(format!("{}/search", s.url)).send().await.unwrap_err();
    let PaymentError::Refused(rejection) = payment_error(&err) else { panic!("{err:?}") };
    assert!(matches!(rejection.kind(), RejectionKind::Denied(_)), "{rejection:?}");
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 0, "the signer was never called");
    assert_eq!(s.paywall.settled.load(Ordering::SeqCst), 0);
    // A request paying as an unprovisioned actor is refused the same way.
    let err = s
        .client
        .get(format!("{}/search", s.url))
        .with_extension(PayAs::new("intruder").unwrap())
        .send()
        .await
        .unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::Refused(_)));
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn an_unknown_asset_is_a_typed_error_and_never_paid() {
    let s = setup("1000").await;
    *s.paywall.asset.lock().unwrap() = "0xdeadbeef00000000000000000000000000000000".into();
    let err = s.client.get(format!("{}/search", s.url)).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::UnknownAsset { .. }), "{err:?}");
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 0);
}

/// A paywall that raises its price after the challenge is never paid the new price. The
/// credential it was sent for the first price is counted as spent (it may be settled whatever
/// the paywall answers); a paywall trusted to tell the truth has the approval released.
#[tokio::test]
async fn a_paywall_that_raises_its_price_after_the_challenge_is_not_paid_again() {
    for trust in [false, true] {
        let s = setup_with("250000", trust).await;
        s.paywall.raise_after_challenge.store(true, Ordering::SeqCst);
        let err = s.client.get(format!("{}/search", s.url)).send().await.unwrap_err();
        assert!(matches!(payment_error(&err), PaymentError::ChallengeChanged), "{err:?}");
        assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 1, "signed once, for the price first asked; never again");
        assert_eq!(s.paywall.settled.load(Ordering::SeqCst), 0);
        let usage = s.engine.usage("agent-1");
        if trust {
            assert!(s.recorded.lock().unwrap().is_empty());
            assert_eq!((usage.stats.recorded, usage.stats.released, usage.live_reservations), (0, 1, 0), "released");
        } else {
            assert_eq!(s.recorded.lock().unwrap().clone(), vec![(Decimal::new(25, 2), None)]);
            assert_eq!((usage.stats.recorded, usage.stats.released, usage.live_reservations), (1, 0, 0), "counted");
        }
    }
}

/// A paywall that settles every credential and answers 402 as if it had refused it cannot draw
/// on the budget without bound: each credential sent is counted, so the daily limit (10, at
/// 1.00 a request) stops the wallet being asked after ten. Believing the refusals, it would
/// be paid on every request.
#[tokio::test]
async fn a_paywall_that_takes_the_money_and_answers_a_refusal_is_stopped_by_the_budget() {
    let s = setup("1000000").await; // 1 USDC
    s.paywall.settle_then_refuse.store(true, Ordering::SeqCst);
    for _ in 0..15 {
        let err = s.client.get(format!("{}/search", s.url)).send().await.unwrap_err();
        assert!(
            matches!(payment_error(&err), PaymentError::Failed { status: 402 } | PaymentError::Refused(_)),
            "{err:?}"
        );
    }
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 10, "the budget stopped the wallet after 10");
    assert_eq!(s.paywall.settled.load(Ordering::SeqCst), 10);
    assert_eq!(s.engine.usage("agent-1").stats.total_spent, Decimal::new(10, 0));
}

/// An `exact` payment moved the amount signed for: a settlement report claiming less is not
/// what is recorded.
#[tokio::test]
async fn an_exact_payment_is_recorded_at_the_amount_signed_for_whatever_the_report_claims() {
    let s = setup("250000").await;
    *s.paywall.report_amount.lock().unwrap() = Some("1".into());
    let answer = s.client.get(format!("{}/search", s.url)).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let recorded = s.recorded.lock().unwrap().clone();
    assert_eq!(recorded, vec![(Decimal::new(25, 2), Some(format!("0x{:064x}", 1)))], "0.25, not 0.000001");
}

/// An `upto` payment may settle less than it signed for, but only a trusted paywall's report
/// says how much: one that settles the whole and reports a little would otherwise drain the
/// budget many times over.
#[tokio::test]
async fn an_upto_payment_is_recorded_at_what_a_trusted_paywall_reports_and_in_full_otherwise() {
    for (trust, want) in [(false, Decimal::new(25, 2)), (true, Decimal::new(1, 6))] {
        let s = setup_with("250000", trust).await;
        s.paywall.upto.store(true, Ordering::SeqCst);
        *s.paywall.report_amount.lock().unwrap() = Some("1".into());
        let answer = s.client.get(format!("{}/search", s.url)).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        let recorded = s.recorded.lock().unwrap().clone();
        assert_eq!(recorded, vec![(want, Some(format!("0x{:064x}", 1)))], "trusted: {trust}");
    }
}

/// A paid retry redirected to another origin took its credential there: that origin's answer
/// is not believed, and the payment is counted.
#[tokio::test]
async fn a_paid_retry_redirected_to_another_origin_is_counted_not_believed() {
    let s = setup("250000").await;
    let elsewhere = common::serve(Router::new().route("/ok", get(|| async { "fine" }))).await;
    let url = common::serve(Router::new().route(
        "/pay",
        get(move |headers: HeaderMap| {
            let elsewhere = elsewhere.clone();
            async move {
                if headers.get("authorization").is_none() {
                    let request = URL_SAFE_NO_PAD
                        .encode(json!({"amount": "75", "currency": "usd", "recipient": PAY_TO}).to_string());
                    let header = format!(
                        r#"Payment id="c1", realm="api.test", method="tempo", intent="charge", request="{request}""#
                    );
                    return (StatusCode::PAYMENT_REQUIRED, [("www-authenticate", header)]).into_response();
                }
                (StatusCode::FOUND, [("location", format!("{elsewhere}/ok"))]).into_response()
            }
        }),
    ))
    .await;
    let err = s.client.get(format!("{url}/pay")).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::NotAcceptable(why) if why.contains("redirected")), "{err:?}");
    assert_eq!(s.recorded.lock().unwrap().clone(), vec![(Decimal::new(75, 2), None)]);
    assert_eq!(s.engine.usage("agent-1").live_reservations, 0);
}

#[tokio::test]
async fn x402_v1_and_mpp_paywalls_are_paid_through_the_policy_too() {
    let s = setup("100000").await;
    let v1 = s.client.get(format!("{}/v1", s.url)).send().await.unwrap();
    assert_eq!(v1.text().await.unwrap(), "v1 results");
    let stream = s.client.get(format!("{}/stream", s.url)).send().await.unwrap();
    assert_eq!(stream.text().await.unwrap(), "stream");
    let recorded = s.recorded.lock().unwrap().clone();
    assert_eq!(
        recorded,
        vec![(Decimal::new(1, 1), Some("0xv1".into())), (Decimal::new(75, 2), Some("0xmpp".into()))],
        "0.1 USDC (v1) and 75 cents (MPP)"
    );
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_per_request_cap_and_the_network_allowlist_hold_before_the_policy_is_asked() {
    let paywall = Arc::new(Paywall::default());
    *paywall.price.lock().unwrap() = "900000".into();
    *paywall.asset.lock().unwrap() = USDC.into();
    let url = start(paywall.clone()).await;
    let wallet = Wallet::default();
    let conto = Conto::new(Engine::from_json(POLICIES).unwrap());
    let capped = PaidRequests::builder(conto.clone(), wallet.clone())
        .actor("agent-1")
        .unwrap()
        .max_per_request(conto::Amount::new(Decimal::new(5, 1)).unwrap())
        .build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(capped).build();
    let err = client.get(format!("{url}/search")).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::OverCap { .. }), "{err:?}");
    let mainnet_only =
        PaidRequests::builder(conto, wallet.clone()).actor("agent-1").unwrap().networks(["eip155:8453"]).build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(mainnet_only).build();
    let err = client.get(format!("{url}/search")).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::NotAcceptable(_)), "{err:?}");
    // "Base only" holds for MPP too: a Tempo challenge is another network.
    let err = client.get(format!("{url}/stream")).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::NotAcceptable(why) if why.contains("MPP method")), "{err:?}");
    assert_eq!(wallet.calls.load(Ordering::SeqCst), 0);
}

/// Malformed 402s (random headers and bodies) never panic and are never paid.
#[tokio::test]
async fn malformed_challenges_are_never_paid() {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let garbage: Arc<Mutex<(String, Vec<u8>, String)>> = Arc::default();
    let g = garbage.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            let (header, body, auth) = g.lock().unwrap().clone();
            async move {
                let mut r = (StatusCode::PAYMENT_REQUIRED, body).into_response();
                if let Ok(v) = header.parse() {
                    r.headers_mut().insert("payment-required", v);
                }
                if let Ok(v) = auth.parse() {
                    r.headers_mut().insert("www-authenticate", v);
                }
                r
            }
        }),
    );
    let url = common::serve(app).await;
    let wallet = Wallet::default();
    let conto = Conto::new(Engine::from_json(POLICIES).unwrap());
    let paid = PaidRequests::builder(conto, wallet.clone()).actor("agent-1").unwrap().build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(paid).build();

    let cases: Vec<(String, Vec<u8>, String)> = {
        let strategy = (
            prop_oneof![
                Just(String::new()),
                "[ -~]{0,60}",
                any::<Vec<u8>>().prop_map(|b| STANDARD.encode(b)),
                Just(STANDARD.encode(r#"{"x402Version":2,"accepts":[]}"#)),
                Just(STANDARD.encode(r#"{"x402Version":2,"accepts":[{"scheme":"exact"}]}"#)),
            ],
            prop_oneof![
                any::<Vec<u8>>(),
                Just(br#"{"x402Version":1,"accepts":[{"maxAmountRequired":"-1"}]}"#.to_vec())
            ],
            prop_oneof![Just(String::new()), "Payment [ -~]{0,60}", Just("Payment request=\"%%%\"".to_owned())],
        );
        let mut runner = TestRunner::new(Config { cases: 150, ..Config::default() });
        (0..150).map(|_| strategy.new_tree(&mut runner).unwrap().current()).collect()
    };
    for case in cases {
        // The parser alone never panics on it...
        let mut headers = HeaderMap::new();
        if let Ok(v) = case.0.parse() {
            headers.insert("payment-required", v);
        }
        let _ = conto::outbound::challenge::read(&headers, &case.1);
        // ...and through the middleware it is an error, never a payment.
        *garbage.lock().unwrap() = case;
        let out = client.get(&url).send().await;
        assert!(out.is_err() || out.is_ok_and(|r| r.status() == 402));
    }
    assert_eq!(wallet.calls.load(Ordering::SeqCst), 0, "no malformed challenge reached the signer");
}

/// An outer retry (here: a middleware that sends the whole request twice, as a retry policy
/// would after a lost answer) never pays twice for one payment attempt: the credential was
/// sent once, and the repeat is refused with `AlreadySent` before anything is signed. A new
/// request is a new attempt, under a new key.
#[tokio::test]
async fn a_repeated_request_never_pays_twice_for_one_payment_attempt() {
    struct Twice;
    #[async_trait::async_trait]
    impl reqwest_middleware::Middleware for Twice {
        async fn handle(
            &self,
            req: reqwest::Request,
            ext: &mut axum::http::Extensions,
            next: reqwest_middleware::Next<'_>,
        ) -> reqwest_middleware::Result<reqwest::Response> {
            let again = req.try_clone().unwrap();
            let _ = next.clone().run(req, ext).await;
            next.run(again, ext).await
        }
    }
    #[derive(Clone, Default)]
    struct KeyWallet(Wallet, Arc<Mutex<Vec<String>>>);
    impl Signer for KeyWallet {
        fn sign<'a>(&'a self, offer: &'a Offer) -> BoxFuture<'a, Result<Credential, SignError>> {
            let key = offer.authorization.intent.idempotency_key.as_str().to_owned();
            self.1.lock().unwrap().push(key);
            self.0.sign(offer)
        }
    }
    let paywall = Arc::new(Paywall::default());
    *paywall.price.lock().unwrap() = "10000".into();
    *paywall.asset.lock().unwrap() = USDC.into();
    let url = start(paywall.clone()).await;
    let wallet = KeyWallet::default();
    let conto = Conto::new(Engine::from_json(POLICIES).unwrap());
    let paid = PaidRequests::builder(conto, wallet.clone()).actor("agent-1").unwrap().build();
    let twice = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(Twice).with(paid.clone()).build();
    let err = twice.get(format!("{url}/search")).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::AlreadySent), "{err:?}");
    assert_eq!(wallet.1.lock().unwrap().len(), 1, "signed once");
    assert_eq!(paywall.settled.load(Ordering::SeqCst), 1, "paid once");
    // A new request is a new attempt.
    let once = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(paid).build();
    once.get(format!("{url}/search")).send().await.unwrap();
    let keys = wallet.1.lock().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert_ne!(keys[0], keys[1]);
}

/// A 402 reached through a redirect to another origin is not paid: the approval would be for
/// the origin called, and the credential would go to the other one.
#[tokio::test]
async fn a_402_reached_through_a_redirect_to_another_origin_is_not_paid() {
    let s = setup("250000").await;
    let target = format!("{}/search", s.url);
    let elsewhere = common::serve(Router::new().route(
        "/go",
        get(move || {
            let target = target.clone();
            async move { (StatusCode::FOUND, [("location", target)]) }
        }),
    ))
    .await;
    let err = s.client.get(format!("{elsewhere}/go")).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::NotAcceptable(why) if why.contains("redirect")), "{err:?}");
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 0);
    assert_eq!(s.engine.usage("agent-1").stats.approved, 0, "nothing was asked of the policy");
}

/// An x402 payment stays valid `maxTimeoutSeconds` after it is signed; one that would outlive
/// its approval (whose reservation a lost answer holds) is refused, and the approval released.
#[tokio::test]
async fn an_x402_payment_valid_past_its_approval_is_refused() {
    let s = setup("250000").await;
    *s.paywall.max_timeout.lock().unwrap() = Some(24 * 3600);
    let err = s.client.get(format!("{}/search", s.url)).send().await.unwrap_err();
    assert!(
        matches!(payment_error(&err), PaymentError::NotAcceptable(why) if why.contains("past its approval")),
        "{err:?}"
    );
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 0);
    assert_eq!(s.engine.usage("agent-1").live_reservations, 0, "released");
}

/// A requirement without `maxTimeoutSeconds` (x402 requires it) is not paid: how long the
/// signed payment stays valid would be the signer's guess, unbounded by the approval.
#[tokio::test]
async fn an_x402_requirement_without_a_validity_window_is_not_paid() {
    let s = setup("250000").await;
    s.paywall.no_max_timeout.store(true, Ordering::SeqCst);
    let err = s.client.get(format!("{}/search", s.url)).send().await.unwrap_err();
    assert!(
        matches!(payment_error(&err), PaymentError::NotAcceptable(why) if why.contains("maxTimeoutSeconds")),
        "{err:?}"
    );
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 0);
    assert_eq!(s.engine.usage("agent-1").stats.approved, 0, "nothing was asked of the policy");
}

/// A 402 whose body is larger than any challenge is not read on (64 KiB at most).
#[tokio::test]
async fn a_402_body_larger_than_a_challenge_is_not_read() {
    let s = setup("250000").await;
    let huge = common::serve(
        Router::new().route("/huge", get(|| async { (StatusCode::PAYMENT_REQUIRED, vec![b'x'; 1 << 20]) })),
    )
    .await;
    let err = s.client.get(format!("{huge}/huge")).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::ChallengeTooLarge(_)), "{err:?}");
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 0);
    // An x402 v2 challenge is its header: a large body beside it is not read (here the
    // challenge itself is then refused for its unknown asset, after being read).
    let v2 = common::serve(Router::new().route(
        "/v2",
        get(|| async {
            let challenge = json!({"x402Version": 2, "resource": {"url": "http://127.0.0.1/v2"}, "accepts": [{
                "scheme": "exact", "network": "eip155:84532", "amount": "1", "asset": "0x00000000000000000000000000000000000000aa",
                "payTo": PAY_TO, "maxTimeoutSeconds": 60}]});
            (StatusCode::PAYMENT_REQUIRED, [("payment-required", STANDARD.encode(challenge.to_string()))], vec![b'x'; 1 << 20])
        }),
    ))
    .await;
    let err = s.client.get(format!("{v2}/v2")).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::UnknownAsset { .. }), "{err:?}");
}

/// An MPP challenge for 75 cents to `PAY_TO`, payable for two minutes: within its approval
/// (which a trusted paywall's challenge must be).
fn charge_challenge() -> String {
    let request = URL_SAFE_NO_PAD.encode(json!({"amount": "75", "currency": "usd", "recipient": PAY_TO}).to_string());
    let expires = (conto::jiff::Timestamp::now() + std::time::Duration::from_secs(120)).to_string();
    format!(
        r#"Payment id="c1", realm="api.test", method="tempo", intent="charge", request="{request}", expires="{expires}""#
    )
}

/// An MPP paywall whose answer to the paid retry never comes: the caller gives up (its future
/// is dropped) after the credential was sent. The money may have moved, and a held reservation
/// would lapse uncounted while the paywall can still settle: the approved amount is counted.
/// A trusted paywall's (whose challenge expires with the approval) is held.
#[tokio::test]
async fn a_request_dropped_after_its_credential_was_sent_is_counted_or_held_when_trusted() {
    for trust in [false, true] {
        let s = setup_with("250000", trust).await;
        let slow = common::serve(Router::new().route(
            "/slow",
            get(|headers: HeaderMap| async move {
                if headers.get("authorization").is_none() {
                    return (StatusCode::PAYMENT_REQUIRED, [("www-authenticate", charge_challenge())], "")
                        .into_response();
                }
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                "too late".into_response()
            }),
        ))
        .await;
        let call = s.client.get(format!("{slow}/slow")).send();
        assert!(tokio::time::timeout(std::time::Duration::from_millis(500), call).await.is_err(), "given up");
        assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 1, "the credential was sent");
        let usage = s.engine.usage("agent-1");
        if trust {
            assert_eq!((usage.stats.recorded, usage.live_reservations), (0, 1), "held, not released");
        } else {
            assert_eq!((usage.stats.recorded, usage.live_reservations), (1, 0), "counted");
            assert_eq!(usage.stats.total_spent, Decimal::new(75, 2));
        }
    }
}

/// A Tempo challenge that splits its payment pays recipients the policy was never asked about:
/// never paid. Under `trust_refusals` (a lost answer is held until the approval expires), an
/// MPP challenge that stays payable past its approval is not paid either.
#[tokio::test]
async fn mpp_splits_and_a_trusted_challenge_outliving_its_approval_are_not_paid() {
    let challenge = |request: Value, expires: Option<&str>| {
        let request = URL_SAFE_NO_PAD.encode(request.to_string());
        let expires = expires.map(|e| format!(r#", expires="{e}""#)).unwrap_or_default();
        format!(r#"Payment id="c1", realm="api.test", method="tempo", intent="charge", request="{request}"{expires}"#)
    };
    let split = challenge(
        json!({"amount": "75", "currency": "usd", "recipient": PAY_TO,
            "methodDetails": {"splits": [{"recipient": "0x9999999999999999999999999999999999999999", "amount": "70"}]}}),
        None,
    );
    let plain = json!({"amount": "75", "currency": "usd", "recipient": PAY_TO});
    let far = (conto::jiff::Timestamp::now() + std::time::Duration::from_secs(24 * 3600)).to_string();
    for (trust, www) in [
        (false, split.clone()),
        (true, split),
        (true, challenge(plain.clone(), None)),
        (true, challenge(plain, Some(&far))),
    ] {
        let s = setup_with("250000", trust).await;
        let url = common::serve(Router::new().route(
            "/pay",
            get(move || {
                let www = www.clone();
                async move { (StatusCode::PAYMENT_REQUIRED, [("www-authenticate", www)], "") }
            }),
        ))
        .await;
        let err = s.client.get(format!("{url}/pay")).send().await.unwrap_err();
        assert!(matches!(payment_error(&err), PaymentError::NotAcceptable(_)), "{err:?}");
        assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 0, "never signed");
        let usage = s.engine.usage("agent-1");
        assert_eq!((usage.stats.recorded, usage.live_reservations), (0, 0));
    }
}

/// MPP challenges: an expired one is never paid; a `session` one is approved for the deposit it
/// may lock up (`suggestedDeposit`, the most that can move) and recorded for the one unit a
/// request spends (`amount`), each request again.
#[tokio::test]
async fn mpp_an_expired_challenge_is_not_paid_and_a_session_is_approved_for_its_deposit() {
    let s = setup("250000").await;
    let app = Router::new()
        .route(
            "/expired",
            get(|| async {
                let request = URL_SAFE_NO_PAD.encode(json!({"amount": "75", "currency": "usd", "recipient": PAY_TO}).to_string());
                let challenge = format!(
                    r#"Payment id="c1", realm="api.test", method="tempo", intent="charge", request="{request}", expires="2001-01-01T00:00:00Z""#
                );
                (StatusCode::PAYMENT_REQUIRED, [("www-authenticate", challenge)], "")
            }),
        )
        .route(
            "/session",
            get(|headers: HeaderMap| async move {
                if headers.get("authorization").is_none() {
                    let request = URL_SAFE_NO_PAD.encode(
                        json!({"amount": "1", "unitType": "request", "suggestedDeposit": "80", "currency": "usd",
                            "recipient": PAY_TO})
                        .to_string(),
                    );
                    let challenge = format!(r#"Payment id="s1", realm="api.test", method="tempo", intent="session", request="{request}""#);
                    return (StatusCode::PAYMENT_REQUIRED, [("www-authenticate", challenge)], "").into_response();
                }
                let receipt = URL_SAFE_NO_PAD
                    .encode(json!({"status": "success", "method": "tempo", "reference": "0xopen"}).to_string());
                (StatusCode::OK, [("payment-receipt", receipt)], "opened").into_response()
            }),
        );
    let mpp = common::serve(app).await;
    let err = s.client.get(format!("{mpp}/expired")).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::NotAcceptable(why) if why.contains("expired")), "{err:?}");
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 0);

    #[derive(Clone, Default)]
    struct Approved(Wallet, Arc<Mutex<Vec<conto::Amount>>>);
    impl Signer for Approved {
        fn sign<'a>(&'a self, offer: &'a Offer) -> BoxFuture<'a, Result<Credential, SignError>> {
            self.1.lock().unwrap().push(offer.amount);
            self.0.sign(offer)
        }
    }
    let approved = Approved::default();
    let (conto, recorded) = common::observed(&s.engine);
    let assets = conto::outbound::Assets::usdc().with_any_network("usd", 2);
    let paid = PaidRequests::builder(conto, approved.clone()).actor("agent-1").unwrap().assets(assets).build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(paid).build();
    for _ in 0..2 {
        assert_eq!(client.get(format!("{mpp}/session")).send().await.unwrap().status(), 200);
    }
    let deposit: conto::Amount = "0.8".parse().unwrap();
    assert_eq!(*approved.1.lock().unwrap(), vec![deposit, deposit], "the signer may lock up to the deposit");
    let unit = (Decimal::new(1, 2), Some("0xopen".to_owned()));
    assert_eq!(*recorded.lock().unwrap(), vec![unit.clone(), unit], "one unit spent a request, not the deposit");
    let usage = s.engine.usage("agent-1");
    assert_eq!((usage.live_reservations, usage.stats.total_spent), (0, Decimal::new(2, 2)), "the rest released");
}

/// A paywall whose challenge names another service's URL (to pass a service allowlist) is
/// refused before the policy is asked: the intent is always for the host actually called.
#[tokio::test]
async fn a_challenge_naming_another_host_is_refused() {
    let s = setup("250000").await;
    *s.paywall.claim_host.lock().unwrap() = Some("api.trusted.example".into());
    let err = s.client.get(format!("{}/search", s.url)).send().await.unwrap_err();
    assert!(
        matches!(payment_error(&err), PaymentError::NotAcceptable(why) if why.contains("api.trusted.example")),
        "{err:?}"
    );
    assert_eq!(s.wallet.calls.load(Ordering::SeqCst), 0);
}

/// A failed paid retry: a settlement report is believed whatever the status (a service that
/// charged and then failed to serve: the spend is recorded, the answer returned as it is);
/// without one the approved amount is counted (the credential left), or, when the paywall is
/// trusted, a server error holds the reservation until it expires and any other failure
/// releases it.
#[tokio::test]
async fn a_failed_paid_retry_is_recorded_counted_held_or_released_by_what_it_says_of_the_money() {
    async fn paywall(status: StatusCode, receipt: bool) -> String {
        common::serve(Router::new().route(
            "/pay",
            get(move |headers: HeaderMap| async move {
                if headers.get("authorization").is_none() {
                    return (StatusCode::PAYMENT_REQUIRED, [("www-authenticate", charge_challenge())], "")
                        .into_response();
                }
                let mut answer = (status, "upstream failed").into_response();
                if receipt {
                    let receipt = URL_SAFE_NO_PAD
                        .encode(json!({"status": "success", "method": "tempo", "reference": "0xcharged"}).to_string());
                    answer.headers_mut().insert("payment-receipt", receipt.parse().unwrap());
                }
                answer
            }),
        ))
        .await
    }

    // Charged, then failed: recorded, and the caller sees the service's own answer.
    let s = setup("250000").await;
    let url = paywall(StatusCode::INTERNAL_SERVER_ERROR, true).await;
    let answer = s.client.get(format!("{url}/pay")).send().await.unwrap();
    assert_eq!(answer.status(), 500);
    assert_eq!(s.recorded.lock().unwrap().clone(), vec![(Decimal::new(75, 2), Some("0xcharged".into()))]);
    assert_eq!(s.engine.usage("agent-1").live_reservations, 0);

    // No report, a server error or a refusal: counted at the approved amount.
    for (status, error) in [(StatusCode::BAD_GATEWAY, 502), (StatusCode::BAD_REQUEST, 400)] {
        let s = setup("250000").await;
        let url = paywall(status, false).await;
        let err = s.client.get(format!("{url}/pay")).send().await.unwrap_err();
        assert!(
            matches!(payment_error(&err), PaymentError::ServerFailed { status } | PaymentError::Failed { status } if *status == error),
            "{err:?}"
        );
        assert_eq!(s.recorded.lock().unwrap().clone(), vec![(Decimal::new(75, 2), None)]);
        assert_eq!(s.engine.usage("agent-1").live_reservations, 0);
    }

    // Trusted: a server error may have settled, so the reservation holds.
    let s = setup_with("250000", true).await;
    let url = paywall(StatusCode::BAD_GATEWAY, false).await;
    let err = s.client.get(format!("{url}/pay")).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::ServerFailed { status: 502 }), "{err:?}");
    let usage = s.engine.usage("agent-1");
    assert_eq!((usage.stats.recorded, usage.live_reservations), (0, 1), "held, neither recorded nor released");

    // Trusted, refused as malformed: nothing settled, released.
    let s = setup_with("250000", true).await;
    let url = paywall(StatusCode::BAD_REQUEST, false).await;
    let err = s.client.get(format!("{url}/pay")).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::Failed { status: 400 }), "{err:?}");
    let usage = s.engine.usage("agent-1");
    assert_eq!((usage.stats.recorded, usage.live_reservations), (0, 0), "released");
}

/// A signer that notes what it is shown, then signs as the test wallet.
struct Noting(Wallet, Arc<Mutex<Vec<String>>>);

impl Signer for Noting {
    fn sign<'a>(&'a self, offer: &'a Offer) -> BoxFuture<'a, Result<Credential, SignError>> {
        self.1.lock().unwrap().push(format!("{} {:?}", offer.url, offer.authorization.intent.rail));
        self.0.sign(offer)
    }
}

/// An API key in the query string stays in this process: the policy, the authority, the logs
/// and the signer see the endpoint without its query.
#[tokio::test]
async fn a_query_string_never_leaves_the_process_with_the_payment() {
    let paywall = Arc::new(Paywall::default());
    *paywall.price.lock().unwrap() = "250000".into();
    *paywall.asset.lock().unwrap() = USDC.into();
    let url = start(paywall.clone()).await;
    let engine = Engine::from_json(POLICIES).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let paid = PaidRequests::builder(Conto::new(engine.clone()), Noting(Wallet::default(), seen.clone()))
        .actor("agent-1")
        .unwrap()
        .build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(paid).build();
    let answer = client.get(format!("{url}/search?api_key=s3cr3t&q=rust")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(!seen[0].contains("s3cr3t") && seen[0].contains("/search"), "{seen:?}");
    assert_eq!(engine.usage("agent-1").stats.recorded, 1);
}
