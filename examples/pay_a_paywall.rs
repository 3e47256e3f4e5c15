//! Outbound payments through the policy: a client pays an x402 paywall running on 127.0.0.1
//! only when the spend policy approves. `cargo run --example pay_a_paywall`
//!
//! The paywall asks 0.25 USDC for `/report` and 2 USDC for `/premium`; the policy allows 1 per
//! payment. The demo signer stands in for the app's wallet (it signs nothing real).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use conto::outbound::{Credential, Offer, PaidRequests, PaymentError, SignError, Signer};
use conto::{BoxFuture, Conto, Engine, Event};
use serde_json::json;

const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"; // Base Sepolia

/// An x402 v2 paywall: a `PAYMENT-REQUIRED` challenge, then the content and a
/// `PAYMENT-RESPONSE` once a `PAYMENT-SIGNATURE` comes (a real one verifies and settles it
/// through its facilitator).
async fn paywall(price: &'static str, headers: HeaderMap) -> Response {
    if headers.get("payment-signature").is_none() {
        let challenge = json!({"x402Version": 2, "resource": {"url": "http://127.0.0.1/report"}, "accepts": [{
            "scheme": "exact", "network": "eip155:84532", "amount": price, "asset": USDC,
            "payTo": "0x1111111111111111111111111111111111111111", "maxTimeoutSeconds": 60}]});
        return (StatusCode::PAYMENT_REQUIRED, [("payment-required", STANDARD.encode(challenge.to_string()))], "")
            .into_response();
    }
    let settled = json!({"success": true, "transaction": "0xabc123", "network": "eip155:84532"});
    (StatusCode::OK, [("payment-response", STANDARD.encode(settled.to_string()))], "the report").into_response()
}

/// The app's payer; here it only counts.
struct DemoWallet(Arc<AtomicU32>);

impl Signer for DemoWallet {
    fn sign<'a>(&'a self, offer: &'a Offer) -> BoxFuture<'a, Result<Credential, SignError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        println!("  wallet: signing {} for {}", offer.amount, offer.url);
        Box::pin(async { Credential::new("payment-signature", STANDARD.encode(r#"{"x402Version":2,"payload":{}}"#)) })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = axum::Router::new()
        .route("/report", get(|h: HeaderMap| paywall("250000", h)))
        .route("/premium", get(|h: HeaderMap| paywall("2000000", h)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let engine = Engine::from_json(
        r#"{"agents": ["agent-1"], "policies": [{"name": "per payment", "rules": [
            {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "1", "action": "ALLOW"}]}]}"#,
    )?;
    let conto = Conto::builder(engine)
        .observe(|e| {
            if let Event::Recorded { recorded, reference, .. } = e {
                println!("  recorded {} (tx {})", recorded.amount, reference.as_deref().unwrap_or("-"));
            }
        })
        .build();
    let signed = Arc::new(AtomicU32::new(0));
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(PaidRequests::builder(conto, DemoWallet(signed.clone())).actor("agent-1")?.build())
        .build();

    println!("GET /report (0.25 USDC):");
    let report = client.get(format!("{base}/report")).send().await?;
    let paid = report.status();
    println!("  {} {}", paid, report.text().await?);

    println!("GET /premium (2 USDC, above the 1 per payment the policy allows):");
    match client.get(format!("{base}/premium")).send().await {
        Err(e) => match PaymentError::from_middleware(&e) {
            Some(PaymentError::Refused(rejection)) => println!("  refused, the wallet was not asked: {rejection}"),
            _ => return Err(e.into()),
        },
        Ok(r) => return Err(format!("/premium was answered {}, not refused before the wallet", r.status()).into()),
    }
    let signatures = signed.load(Ordering::SeqCst);
    println!("the wallet signed {signatures} payment(s)");
    // The example checks itself: one payment made, the other refused before the wallet.
    if paid != reqwest::StatusCode::OK || signatures != 1 {
        return Err(format!("expected /report paid (200) and one signature; got {paid} and {signatures}").into());
    }
    Ok(())
}
