//! Interop with the Rust x402 and MPP ecosystems, on loopback:
//!
//! - the paywall is `x402-axum`'s own middleware (crates.io), verifying and settling through
//!   the smallest honest facilitator (`x402_types::facilitator::Facilitator`, answered by this
//!   test's code, no chain); the payer is an x402-rs scheme client behind
//!   [`X402Schemes`](conto::outbound::X402Schemes);
//! - the MPP payer is an `mpp` crate `PaymentProvider` behind
//!   [`MppProvider`](conto::outbound::MppProvider), and the paywall reads its credential with the
//!   `mpp` crate's own parser.

mod common;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use alloy_primitives::U256;
use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::Records;
use conto::outbound::{MppProvider, PaidRequests, PaymentError, X402Schemes};
use conto::{Decimal, Engine, RejectionKind};
use serde_json::{Value, json};
use x402_axum::X402Middleware;
use x402_types::facilitator::Facilitator;
use x402_types::proto::{self, v2};
use x402_types::scheme::X402SchemeId;
use x402_types::scheme::client::{PaymentCandidate, PaymentCandidateSigner, X402Error, X402SchemeClient};

const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"; // Base Sepolia
const PAY_TO: &str = "0x1111111111111111111111111111111111111111";
const SIGNATURE: &str = "signed-by-the-test-wallet";

/// The facilitator: a payment is valid when it carries the test wallet's signature and accepts
/// exactly the requirements the paywall checks it against; each settlement is a new transaction.
#[derive(Default)]
struct TestFacilitator {
    verified: AtomicU32,
    settled: AtomicU32,
}

impl TestFacilitator {
    fn check(request: &proto::VerifyRequest) -> Value {
        let body: Value = serde_json::from_str(request.as_str()).unwrap_or_default();
        let p = &body["paymentPayload"];
        if p["payload"]["signature"] == SIGNATURE && p["accepted"] == body["paymentRequirements"] {
            json!({"isValid": true, "payer": "0xpayer"})
        } else {
            json!({"isValid": false, "invalidReason": "invalid_payload"})
        }
    }
}

impl Facilitator for TestFacilitator {
    type Error = String;

    async fn verify(&self, request: &proto::VerifyRequest) -> Result<proto::VerifyResponse, String> {
        self.verified.fetch_add(1, Ordering::SeqCst);
        Ok(proto::VerifyResponse(Self::check(request)))
    }

    async fn settle(&self, request: &proto::SettleRequest) -> Result<proto::SettleResponse, String> {
        if Self::check(request)["isValid"] != true {
            return Ok(proto::SettleResponse(json!({"success": false, "errorReason": "invalid_payload"})));
        }
        let n = self.settled.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(proto::SettleResponse(json!({"success": true, "transaction": format!("0x{n:064x}"),
            "network": "eip155:84532", "payer": "0xpayer"})))
    }

    async fn supported(&self) -> Result<proto::SupportedResponse, String> {
        serde_json::from_value(json!({"kinds": [{"x402Version": 2, "scheme": "exact", "network": "eip155:84532"}]}))
            .map_err(|e| e.to_string())
    }
}

/// The paywall's price in atomic units, the asset it asks for, and a raise it applies once a
/// challenge went out (a paywall that changes its mind between the 402 and the paid retry).
struct Prices {
    price: AtomicU64,
    raise_to: AtomicU64,
    asset: Mutex<String>,
}

fn price_tag(prices: &Prices) -> v2::PriceTag {
    let requirements = v2::PaymentRequirements {
        scheme: "exact".into(),
        network: "eip155:84532".parse().unwrap(),
        amount: prices.price.load(Ordering::SeqCst).to_string(),
        pay_to: PAY_TO.into(),
        max_timeout_seconds: 60,
        asset: prices.asset.lock().unwrap().clone(),
        extra: Some(json!({"name": "USDC", "version": "2"})),
    };
    v2::PriceTag { requirements, enricher: None }
}

async fn paywall(prices: Arc<Prices>, facilitator: Arc<TestFacilitator>) -> String {
    let x402 = X402Middleware::from_facilitator(facilitator);
    let layer = x402.with_dynamic_price(move |headers: &HeaderMap, _, _| {
        let tag = price_tag(&prices);
        // The raise applies to the answer after a challenge, i.e. to the paid retry.
        let raise = prices.raise_to.load(Ordering::SeqCst);
        if raise != 0 && !headers.contains_key("payment-signature") {
            prices.price.store(raise, Ordering::SeqCst);
        }
        async move { vec![tag] }
    });
    let app = Router::new().route("/report", get(|| async { "the paid report" }).layer(layer));
    common::serve(app).await
}

/// An x402-rs scheme client (v2, eip155, exact) over the test wallet: what `x402-chain-eip155`
/// does with a real key, minus the chain.
#[derive(Clone, Default)]
struct TestScheme {
    signed: Arc<AtomicU32>,
    /// Offer to sign twice the amount asked (a scheme client that does not pay what was approved).
    greedy: bool,
}

impl X402SchemeId for TestScheme {
    fn namespace(&self) -> &str {
        "eip155"
    }
    fn scheme(&self) -> &str {
        "exact"
    }
}

struct TestSigner {
    payload: Value,
    signed: Arc<AtomicU32>,
}

#[async_trait::async_trait]
impl PaymentCandidateSigner for TestSigner {
    async fn sign_payment(&self) -> Result<String, X402Error> {
        self.signed.fetch_add(1, Ordering::SeqCst);
        Ok(STANDARD.encode(self.payload.to_string()))
    }
}

impl X402SchemeClient for TestScheme {
    fn accept(&self, required: &proto::PaymentRequired) -> Vec<PaymentCandidate> {
        let proto::PaymentRequired::V2(required) = required else { return Vec::new() };
        let resource = serde_json::to_value(&required.resource).unwrap();
        required
            .accepts
            .iter()
            .filter_map(|original| {
                let accepted: Value = serde_json::from_str(original.0.get()).ok()?;
                let r: v2::PaymentRequirements = serde_json::from_value(accepted.clone()).ok()?;
                let payload = json!({"x402Version": 2, "accepted": accepted, "resource": resource,
                    "payload": {"signature": SIGNATURE}});
                Some(PaymentCandidate {
                    chain_id: r.network,
                    asset: r.asset,
                    amount: r.amount.parse::<U256>().ok()? * U256::from(if self.greedy { 2 } else { 1 }),
                    scheme: r.scheme,
                    x402_version: 2,
                    pay_to: r.pay_to,
                    signer: Box::new(TestSigner { payload, signed: self.signed.clone() }),
                })
            })
            .collect()
    }
}

const POLICIES: &str = r#"{"agents": ["agent-1"], "policies": [
    {"name": "per payment", "rules": [{"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "1", "action": "ALLOW"}]}
]}"#;

struct X402Setup {
    url: String,
    prices: Arc<Prices>,
    facilitator: Arc<TestFacilitator>,
    scheme: TestScheme,
    engine: Engine,
    recorded: Records,
    client: reqwest_middleware::ClientWithMiddleware,
}

async fn x402_setup(price: u64) -> X402Setup {
    x402_setup_with(price, TestScheme::default()).await
}

async fn x402_setup_with(price: u64, scheme: TestScheme) -> X402Setup {
    let prices = Arc::new(Prices { price: price.into(), raise_to: 0.into(), asset: Mutex::new(USDC.into()) });
    let facilitator = Arc::new(TestFacilitator::default());
    let url = paywall(prices.clone(), facilitator.clone()).await;
    let engine = Engine::from_json(POLICIES).unwrap();
    let (conto, recorded) = common::observed(&engine);
    let paid =
        PaidRequests::builder(conto, X402Schemes::new().register(scheme.clone())).actor("agent-1").unwrap().build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(paid).build();
    X402Setup { url, prices, facilitator, scheme, engine, recorded, client }
}

fn payment_error(e: &reqwest_middleware::Error) -> &PaymentError {
    PaymentError::from_middleware(e).unwrap_or_else(|| panic!("not a payment error: {e:?}"))
}

#[tokio::test]
async fn x402_axum_paywall_is_paid_by_an_x402_rs_scheme_once_and_recorded_with_the_facilitators_transaction() {
    let s = x402_setup(250_000).await; // 0.25 USDC
    let answer = s.client.get(format!("{}/report", s.url)).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "the paid report");
    assert_eq!(s.scheme.signed.load(Ordering::SeqCst), 1, "signed once");
    assert_eq!(s.facilitator.settled.load(Ordering::SeqCst), 1, "settled once");
    let recorded = s.recorded.lock().unwrap().clone();
    assert_eq!(recorded, vec![(Decimal::new(25, 2), Some(format!("0x{:064x}", 1)))]);
    let usage = s.engine.usage("agent-1");
    assert_eq!((usage.stats.recorded, usage.live_reservations), (1, 0));
}

#[tokio::test]
async fn x402_axum_paywall_a_denied_payment_never_reaches_the_scheme_signer() {
    let s = x402_setup(5_000_000).await; // 5 USDC: above the per-payment limit of 1
    let err = s.client.get(format!("{}/report", s.url)).send().await.unwrap_err();
    let PaymentError::Refused(rejection) = payment_error(&err) else { panic!("{err:?}") };
    assert!(matches!(rejection.kind(), RejectionKind::Denied(_)), "{rejection:?}");
    assert_eq!(s.scheme.signed.load(Ordering::SeqCst), 0, "never signed");
    assert_eq!(s.facilitator.verified.load(Ordering::SeqCst), 0);
    assert_eq!(s.facilitator.settled.load(Ordering::SeqCst), 0);
    assert!(s.recorded.lock().unwrap().is_empty());
}

/// The raised price is never paid. The authorization signed for the first price left the
/// process (the paywall could settle it whatever it answers), so it is counted as spent.
#[tokio::test]
async fn x402_axum_paywall_that_raises_its_price_before_the_retry_is_refused_and_counted() {
    let s = x402_setup(250_000).await;
    s.prices.raise_to.store(900_000, Ordering::SeqCst);
    let err = s.client.get(format!("{}/report", s.url)).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::ChallengeChanged), "{err:?}");
    assert_eq!(s.scheme.signed.load(Ordering::SeqCst), 1, "signed once, for the first price");
    assert_eq!(s.facilitator.settled.load(Ordering::SeqCst), 0, "nothing settled");
    let recorded = s.recorded.lock().unwrap().clone();
    assert_eq!(recorded, vec![(Decimal::new(25, 2), None)], "counted, not released");
    assert_eq!(s.engine.usage("agent-1").live_reservations, 0);
}

#[tokio::test]
async fn x402_axum_paywall_in_an_unknown_asset_is_a_typed_error() {
    let s = x402_setup(1_000).await;
    *s.prices.asset.lock().unwrap() = "0xdeadbeef00000000000000000000000000000000".into();
    let err = s.client.get(format!("{}/report", s.url)).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::UnknownAsset { .. }), "{err:?}");
    assert_eq!(s.scheme.signed.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_scheme_client_that_would_sign_another_amount_is_never_used_and_the_approval_is_released() {
    let s = x402_setup_with(250_000, TestScheme { greedy: true, ..TestScheme::default() }).await;
    let err = s.client.get(format!("{}/report", s.url)).send().await.unwrap_err();
    assert!(matches!(payment_error(&err), PaymentError::Signer(_)), "{err:?}");
    assert_eq!(s.scheme.signed.load(Ordering::SeqCst), 0, "nothing signed");
    assert_eq!(s.facilitator.settled.load(Ordering::SeqCst), 0);
    assert_eq!(s.engine.usage("agent-1").live_reservations, 0, "released");
}

/// An `mpp` crate payment provider over the test wallet.
#[derive(Clone, Default)]
struct TestProvider {
    paid: Arc<AtomicU32>,
}

impl mpp::client::PaymentProvider for TestProvider {
    fn supports(&self, method: &str, intent: &str) -> bool {
        method == "tempo" && intent == "charge"
    }

    async fn pay(
        &self,
        challenge: &mpp::PaymentChallenge,
    ) -> Result<mpp::protocol::core::PaymentCredential, mpp::MppError> {
        self.paid.fetch_add(1, Ordering::SeqCst);
        Ok(mpp::protocol::core::PaymentCredential::new(challenge.to_echo(), json!({"signature": SIGNATURE})))
    }
}

/// An MPP paywall: challenges in `WWW-Authenticate: Payment`, reads the credential with the `mpp`
/// crate's own parser, and answers with a `Payment-Receipt`.
async fn mpp_paywall(amount: &'static str) -> String {
    let handler = move |headers: HeaderMap| async move {
        let Some(auth) = headers.get("authorization").and_then(|a| a.to_str().ok()) else {
            let request =
                URL_SAFE_NO_PAD.encode(json!({"amount": amount, "currency": "usd", "recipient": PAY_TO}).to_string());
            let challenge =
                format!(r#"Payment id="ch-1", realm="api.test", method="tempo", intent="charge", request="{request}""#);
            return (StatusCode::PAYMENT_REQUIRED, [("www-authenticate", challenge)], "").into_response();
        };
        let Ok(credential) = mpp::protocol::core::parse_authorization(auth) else {
            return (StatusCode::BAD_REQUEST, "unreadable credential").into_response();
        };
        if credential.challenge.id != "ch-1" || credential.payload["signature"] != SIGNATURE {
            return (StatusCode::PAYMENT_REQUIRED, "bad credential").into_response();
        }
        let receipt =
            URL_SAFE_NO_PAD.encode(json!({"status": "success", "method": "tempo", "reference": "0xmpp-1"}).to_string());
        Response::builder().header("payment-receipt", receipt).body(axum::body::Body::from("stream")).unwrap()
    };
    let app = Router::new().route("/stream", get(handler));
    common::serve(app).await
}

#[tokio::test]
async fn an_mpp_provider_pays_an_approved_challenge_and_never_a_denied_one() {
    for (amount, approved) in [("75", true), ("250", false)] {
        let url = mpp_paywall(amount).await;
        let engine = Engine::from_json(POLICIES).unwrap();
        let (conto, recorded) = common::observed(&engine);
        let provider = TestProvider::default();
        let assets = conto::outbound::Assets::new().with_any_network("usd", 2);
        let paid = PaidRequests::builder(conto, MppProvider(provider.clone()))
            .actor("agent-1")
            .unwrap()
            .assets(assets)
            .build();
        let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(paid).build();
        let answer = client.get(format!("{url}/stream")).send().await;
        if approved {
            let answer = answer.unwrap();
            assert_eq!(answer.status(), 200, "{amount} cents");
            assert_eq!(provider.paid.load(Ordering::SeqCst), 1);
            assert_eq!(*recorded.lock().unwrap(), vec![(Decimal::new(75, 2), Some("0xmpp-1".to_owned()))]);
        } else {
            let err = answer.unwrap_err();
            assert!(matches!(payment_error(&err), PaymentError::Refused(_)), "{err:?}");
            assert_eq!(provider.paid.load(Ordering::SeqCst), 0, "2.50 is above the limit: never paid");
            assert!(recorded.lock().unwrap().is_empty());
        }
    }
}
