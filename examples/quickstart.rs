//! conto-rs in one run: an axum app whose paid route sits behind a `Paywall` on the embedded
//! engine, driven over real HTTP on 127.0.0.1, then `#[paid_action]` on a settlement function.
//!
//! ```sh
//! cargo run --example quickstart
//! ```
//!
//! No setup and no network: the policies come from `policies/example.json` and the clock is
//! pinned, so every run prints the same story.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use conto::tower::{Actor, Paid, Paywall, Price, PriceError, Settled, headers};
use conto::{Clock, Conto, Decimal, Engine, ManualClock, PolicySet, Rail, Rejection, paid_action};

const ALPHA: &str = "0xa11ce00000000000000000000000000000000001";
const BETA: &str = "0xb0b0000000000000000000000000000000000002";
const GAMMA: &str = "0x9a33a00000000000000000000000000000000003";
const TREASURY: &str = "0x7ea5000000000000000000000000000000000004";

/// The caller, as the app's authentication established it.
#[derive(Clone)]
struct User {
    id: String,
}

/// The app's authentication (a stand-in for sessions, JWTs or API keys): a known bearer token
/// becomes a `User` in the request's extensions. The paid layer reads the payer from there, so
/// no header a client sets can choose whose budget is spent.
async fn authenticate(mut req: Request, next: Next) -> Response {
    let token =
        req.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let user = match token {
        Some("demo-token-agent-1") => Some("agent-1"),
        Some("demo-token-mallory") => Some("mallory"), // a real user, never provisioned to spend
        _ => None,
    };
    if let Some(id) = user {
        req.extensions_mut().insert(User { id: id.to_owned() });
    }
    next.run(req).await
}

/// The app's own error type: a refused payment is one of its cases.
#[derive(Debug)]
enum PayError {
    Refused(Rejection),
}

impl From<Rejection> for PayError {
    fn from(r: Rejection) -> Self {
        PayError::Refused(r)
    }
}

/// A service that settles invoices from its own wallet; Conto decides first.
struct Treasury {
    conto: Conto,
}

impl Treasury {
    #[paid_action(
        amount = amount,
        recipient = to,
        rail = transfer(chain_id = 8453, sender = TREASURY),
        actor = "agent-2",
        conto = self.conto,
        purpose = "invoice",
        reference = |tx: &String| tx.clone(),
    )]
    async fn pay_invoice(&self, to: &str, amount: Decimal) -> Result<String, PayError> {
        // The app's own settlement code runs only when Conto approved.
        Ok(format!("0x{:064x}", 0xfeed_0000 + amount.mantissa()))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let clock = ManualClock::new("2026-06-10T12:00:00Z".parse()?);
    let policies = PolicySet::from_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/example.json"))?;
    let engine = Engine::builder().policies(policies).clock(clock.clone()).build();
    let conto = Conto::new(engine.clone());

    // GET /search/{provider}?price=X, paid by the authenticated user. The policy file provisions
    // agent-1 and agent-2 (its `agents` list); any other actor is refused.
    let providers: Arc<HashMap<&str, &str>> = Arc::new([("alpha", ALPHA), ("beta", BETA), ("gamma", GAMMA)].into());
    let paid = Paywall::builder(conto.clone())
        .actor(Actor::extension(|user: &User| user.id.clone()))
        .receipt_headers() // the caller is authenticated: it may see its own remaining budget
        .rail(Rail::x402("https://search.example.com/v1/query")?)
        .recipient_from(move |req| req.path_param("provider").and_then(|p| providers.get(p)).map(|a| a.to_string()))
        .category("API_PROVIDER")
        .build()?
        .with_price(Price::from_request(|req| {
            let price = req.query("price").ok_or_else(|| PriceError::new("`price` is required"))?;
            price.parse().map(Some).map_err(|e| PriceError::new(format!("bad price: {e}")))
        }));
    let app = Router::new()
        .route(
            "/search/{provider}",
            get(|Path(provider): Path<String>, paid: Paid| async move {
                // The handler settles with the provider itself. Alpha takes 0.20 less than quoted
                // and says so; the others take the approved amount.
                let approved = paid.authorization.amount.get();
                let settled = match provider.as_str() {
                    "alpha" => Settled::new().amount(conto::Amount::new(approved - Decimal::new(20, 2)).unwrap()),
                    _ => Settled::new(),
                };
                (settled.reference("0xfeed"), format!("results from {provider}"))
            })
            .route_layer(paid),
        )
        .layer(middleware::from_fn(authenticate));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    println!("conto-rs quickstart: policies/example.json on the embedded engine, clock at 2026-06-10T12:00Z\n");
    println!("{:<3} {:<40} {:<7} outcome", "#", "request (as agent-1)", "status");
    let client = reqwest::Client::new();
    // Each step with the status it must get: the quickstart checks itself, and exits with an
    // error naming any step that went otherwise.
    let script = [
        ("alpha", "2.00", 200), // approved; alpha settles 0.20 less than quoted
        ("alpha", "7.50", 403), // over the per-action limit
        ("gamma", "1.00", 403), // provider not on the allowlist
        ("beta", "4.50", 202),  // above the human-review threshold
        ("beta", "3.00", 200),  // approved
        ("alpha", "3.00", 200), // approved
        ("alpha", "3.00", 200), // approved
        ("alpha", "3.00", 403), // daily budget exhausted
    ];
    let mut surprises = Vec::new();
    let mut expect = |n: usize, got: u16, wanted: u16| {
        if got != wanted {
            surprises.push(format!("step {n}: status {got}, expected {wanted}"));
        }
    };
    let mut n = 0;
    for (provider, price, wanted) in script {
        n += 1;
        let path = format!("/search/{provider}?price={price}");
        let resp = client.get(format!("{base}{path}")).bearer_auth("demo-token-agent-1").send().await?;
        expect(n, print_outcome(n, &format!("GET {path}"), resp).await?, wanted);
    }
    clock.set("2026-06-11T02:30:00Z".parse()?);
    n += 1;
    let path = "/search/alpha?price=1.00";
    let resp = client.get(format!("{base}{path}")).bearer_auth("demo-token-agent-1").send().await?;
    expect(n, print_outcome(n, &format!("GET {path} at 02:30"), resp).await?, 403);
    clock.set("2026-06-11T09:00:00Z".parse()?);
    let path = format!("{base}/search/beta?price=1.00");
    let resp = client.get(&path).header("x-conto-actor", "agent-2").send().await?;
    expect(n + 1, print_outcome(n + 1, "unauthenticated, claims x-conto-actor", resp).await?, 401);
    let resp = client.get(&path).bearer_auth("demo-token-mallory").send().await?;
    expect(n + 2, print_outcome(n + 2, "as mallory (not provisioned)", resp).await?, 403);

    println!("\n#[paid_action] on a settlement function (actor agent-2):");
    let treasury = Treasury { conto };
    for (amount, settles) in [(Decimal::new(300, 2), true), (Decimal::new(600, 2), false)] {
        let settled = match treasury.pay_invoice(BETA, amount).await {
            Ok(tx) => {
                println!("    pay_invoice({amount}) -> settled, tx 0x…{}", &tx[tx.len() - 10..]);
                true
            }
            Err(PayError::Refused(r)) => {
                println!("    pay_invoice({amount}) -> refused, body never ran: {r}");
                false
            }
        };
        if settled != settles {
            surprises.push(format!("pay_invoice({amount}): settled {settled}, expected {settles}"));
        }
    }

    // The clock has moved to the next day (step 9): the daily counters show that day so far,
    // the totals line everything.
    println!("\nLedger (now {}: the daily rows are this day's, the totals every day's):", clock.now());
    println!("    {:<8} {:<8} {:<21} {:>8} {:>9}", "actor", "period", "since", "spent", "reserved");
    for actor in ["agent-1", "agent-2"] {
        let usage = engine.usage(actor);
        for c in &usage.counters {
            println!(
                "    {:<8} {:<8} {:<21} {:>8} {:>9}",
                actor,
                c.period,
                c.period_start.to_string(),
                c.spent,
                c.reserved
            );
        }
        let s = usage.stats;
        println!(
            "    {actor}: {} approved, {} recorded ({} in all), {} released, {} expired",
            s.approved, s.recorded, s.total_spent, s.released, s.expired
        );
    }
    let spent = |actor| engine.usage(actor).stats.total_spent;
    if (spent("agent-1"), spent("agent-2")) != (Decimal::new(104, 1), Decimal::new(3, 0)) {
        surprises.push(format!("ledger: spent {} and {}, expected 10.4 and 3", spent("agent-1"), spent("agent-2")));
    }
    if surprises.is_empty() {
        println!("\nEvery outcome was as expected.");
        Ok(())
    } else {
        Err(format!("the quickstart went otherwise than expected: {}", surprises.join("; ")).into())
    }
}

/// Prints a step's outcome; returns its status.
async fn print_outcome(n: usize, request: &str, resp: reqwest::Response) -> Result<u16, Box<dyn std::error::Error>> {
    let status = resp.status().as_u16();
    let recorded = resp.headers().get(headers::RECORDED_AMOUNT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let remaining = resp.headers().get(headers::DAILY_REMAINING).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = resp.text().await?;
    let outcome = match status {
        200 => format!(
            "approved, recorded {} (daily remaining {})",
            recorded.unwrap_or_default(),
            remaining.unwrap_or_else(|| "n/a".into())
        ),
        _ => {
            let problem: serde_json::Value = serde_json::from_str(&body)?;
            match problem["violations"][0]["type"].as_str() {
                Some(kind) => format!(
                    "{} {kind}: {}",
                    problem["decision"].as_str().unwrap_or("?"),
                    problem["reasons"][0].as_str().unwrap_or("")
                ),
                None => format!(
                    "{} {}",
                    problem["decision"].as_str().unwrap_or("?"),
                    problem["approvalRequestId"]
                        .as_str()
                        .map(|id| format!("(approval request {id})"))
                        .unwrap_or_else(|| problem["detail"].as_str().unwrap_or("").to_owned())
                ),
            }
        }
    };
    println!("{n:<3} {request:<40} {status:<7} {outcome}");
    Ok(status)
}
