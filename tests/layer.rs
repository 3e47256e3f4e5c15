//! The tower layer over real HTTP: an axum server on 127.0.0.1:0, called with reqwest.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use conto::tower::{Actor, Paid, Paywall, PaywallBuilder, Price, PriceError, Settled, headers};
use conto::{
    AuthorityError, Authorization, Authorizer, BoxFuture, Conto, Decimal, Decision, Engine, PaymentIntent,
    PendingApproval, PolicySet, Rail, Recorded, Settlement,
};
use serde_json::Value;

const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";
const POLICIES: &str = r#"[{"name": "caps", "rules": [
    {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "10", "action": "ALLOW"},
    {"ruleType": "DAILY_LIMIT", "operator": "LTE", "value": "50", "action": "ALLOW"},
    {"ruleType": "REQUIRE_APPROVAL_ABOVE", "operator": "GT", "value": "8", "action": "REQUIRE_APPROVAL"}
]}]"#;

/// The actors the engine has provisioned.
const PROVISIONED: &[&str] = &["agent-1", "agent-2", "agent-7"];

/// The app's authenticated user, inserted by its auth middleware.
#[derive(Clone)]
struct User {
    id: String,
}

/// The app's authentication: a bearer token from a fixed table becomes a `User` extension.
/// `ghost` is a real user of the app who was never provisioned to spend.
async fn authenticate(mut req: Request, next: Next) -> axum::response::Response {
    let token = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let user = ["agent-1", "agent-2", "agent-7", "ghost"]
        .into_iter()
        .find(|u| token.strip_prefix("Bearer tok-") == Some(*u))
        .map(|u| User { id: u.to_owned() });
    if let Some(user) = user {
        req.extensions_mut().insert(user);
    }
    next.run(req).await
}

fn engine() -> Engine {
    Engine::builder()
        .policies(PolicySet::from_json(POLICIES).unwrap())
        .actors(PROVISIONED.iter().copied())
        .unwrap()
        .build()
}

struct App {
    base: String,
    engine: Engine,
    runs: Arc<AtomicUsize>,
    client: reqwest::Client,
}

fn layer(conto: Conto) -> Paywall {
    Paywall::builder(conto)
        .actor(Actor::extension(|user: &User| user.id.clone()))
        .rail(Rail::x402("https://api.example.com/v1").unwrap())
        .recipient(RECIPIENT)
        .category("API_PROVIDER")
        .receipt_headers()
        .build()
        .unwrap()
}

async fn serve(router: Router) -> String {
    let router = router.layer(axum::middleware::from_fn(authenticate));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

async fn app_with(conto: Conto, engine: Engine) -> App {
    let runs = Arc::new(AtomicUsize::new(0));
    let paid = layer(conto);
    let (r1, r2, r3, r4, r5) = (runs.clone(), runs.clone(), runs.clone(), runs.clone(), runs.clone());
    let price_from_query = Price::from_request(|req| {
        let text = req.query("price").ok_or_else(|| PriceError::new("`price` query parameter is required"))?;
        text.parse().map(Some).map_err(|e| PriceError::new(format!("bad price: {e}")))
    });
    let price_from_path = Price::from_request(|req| {
        let tier = req.path_param("tier").unwrap_or_default();
        Ok(match tier {
            "free" => None,
            "gold" => Some("9.5".parse().unwrap()),
            _ => Some("1".parse().unwrap()),
        })
    });
    let price_from_body = Price::json_body(1024, |req| {
        let units =
            req.json().and_then(|j| j["units"].as_u64()).ok_or_else(|| PriceError::new("`units` is required"))?;
        conto::Amount::try_from(units).map(Some).map_err(|e| PriceError::new(e.to_string()))
    });
    let router = Router::new()
        .route(
            "/paid",
            get(move |paid: Paid| async move {
                r1.fetch_add(1, Ordering::SeqCst);
                (Settled::new().amount("0.75".parse().unwrap()).reference("0xtx"), paid.authorization.id)
            })
            .route_layer(paid.with_price(Price::fixed("1".parse().unwrap()))),
        )
        .route(
            "/query",
            get(move || async move {
                r2.fetch_add(1, Ordering::SeqCst);
                "ok"
            })
            .route_layer(paid.with_price(price_from_query)),
        )
        .route(
            "/tier/{tier}",
            get(move |Path(tier): Path<String>| async move {
                r3.fetch_add(1, Ordering::SeqCst);
                tier
            })
            .route_layer(paid.with_price(price_from_path)),
        )
        .route(
            "/body",
            post(move |body: String| async move {
                r4.fetch_add(1, Ordering::SeqCst);
                body
            })
            .route_layer(paid.with_price(price_from_body)),
        )
        .route(
            "/fails",
            get(move || async move {
                r5.fetch_add(1, Ordering::SeqCst);
                (StatusCode::BAD_GATEWAY, "upstream down").into_response()
            })
            .route_layer(paid.with_price(Price::fixed("2".parse().unwrap()))),
        );
    App { base: serve(router).await, engine, runs, client: reqwest::Client::new() }
}

async fn app() -> App {
    let engine = engine();
    app_with(Conto::new(engine.clone()), engine).await
}

impl App {
    async fn get(&self, path: &str, actor: Option<&str>) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some(a) = actor {
            req = req.bearer_auth(format!("tok-{a}"));
        }
        req.send().await.unwrap()
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }
}

async fn problem(resp: reqwest::Response) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let headers = resp.headers().clone();
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["cache-control"], "no-store");
    (status, headers, resp.json().await.unwrap())
}

#[tokio::test]
async fn approved_runs_the_handler_and_records_what_it_reported() {
    let app = app().await;
    let resp = app.get("/paid", Some("agent-1")).await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    let auth_id = resp.text().await.unwrap();
    assert!(auth_id.starts_with("auth_"));
    assert_eq!(h[headers::AUTHORIZATION_ID], auth_id.as_str());
    assert_eq!(h[headers::RECORDED_AMOUNT], "0.75");
    assert_eq!(h[headers::DAILY_REMAINING], "49.25");
    let stats = app.engine.usage("agent-1").stats;
    assert_eq!((app.runs(), stats.recorded, stats.total_spent), (1, 1, "0.75".parse::<Decimal>().unwrap()));
}

#[tokio::test]
async fn denied_is_a_403_problem_and_the_handler_never_runs() {
    let app = app().await;
    let (status, _, body) = problem(app.get("/query?price=10.5", Some("agent-1")).await).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["decision"], "denied");
    assert_eq!(body["violations"][0]["type"], "PER_TX_LIMIT");
    assert_eq!(body["violations"][0]["limit"], 10.0);
    assert_eq!(body["status"], 403);
    assert_eq!(body["source"], "policy");
    assert_eq!(body["code"], "payment-denied");
    assert_eq!(body["type"], "about:blank");
    assert_eq!(app.runs(), 0);
}

#[tokio::test]
async fn requires_approval_is_a_202_with_the_request_id_and_expiry() {
    let app = app().await;
    let (status, _, body) = problem(app.get("/tier/gold", Some("agent-1")).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body["decision"], "requires_approval");
    assert!(body["approvalRequestId"].as_str().unwrap().starts_with("apr_"));
    assert!(body["expiresAt"].as_str().is_some());
    assert_eq!(app.runs(), 0);
}

#[tokio::test]
async fn missing_actor_is_a_401_that_names_the_extension_and_charges_no_one() {
    let app = app().await;
    // A client-set header is no identity: without authentication, nobody pays.
    let resp = app.client.get(format!("{}/paid", app.base)).header("x-conto-actor", "agent-1").send().await.unwrap();
    let (status, _, body) = problem(resp).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "actor-missing");
    assert_eq!(body["type"], "about:blank");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("request extension") && detail.contains("User"), "names what it expected: {detail}");
    assert_eq!(app.runs(), 0);
    assert_eq!(app.engine.usage("agent-1").stats.approved, 0);
}

#[tokio::test]
async fn spoofing_a_client_set_actor_header_is_ignored() {
    let app = app().await;
    // Authenticated as agent-1, claiming agent-2 in the header the old recipe read.
    let resp = app
        .client
        .get(format!("{}/paid", app.base))
        .bearer_auth("tok-agent-1")
        .header("x-conto-actor", "agent-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(app.engine.usage("agent-1").stats.recorded, 1, "the authenticated actor paid");
    assert_eq!(app.engine.usage("agent-2").stats.approved, 0, "the claimed actor's budget is untouched");
}

#[tokio::test]
async fn an_authenticated_but_unprovisioned_actor_is_a_403_and_never_runs() {
    let app = app().await;
    for path in ["/paid", "/query?price=1", "/tier/basic"] {
        let (status, headers, body) = problem(app.get(path, Some("ghost")).await).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert!(headers.get("retry-after").is_none(), "never retryable");
        assert_eq!(body["code"], "actor-unknown", "{body}");
        assert_eq!(body["type"], "about:blank");
        assert_eq!(body["decision"], "refused");
    }
    assert_eq!(app.runs(), 0);
    assert!(app.engine.usage("ghost").counters.is_empty(), "no ledger was created for the unknown actor");
}

#[tokio::test]
async fn receipt_headers_are_off_unless_asked_for() {
    let engine = engine();
    let paid = Paywall::builder(Conto::new(engine.clone()))
        .actor(Actor::extension(|user: &User| user.id.clone()))
        .rail(Rail::card("Acme").unwrap())
        .build()
        .unwrap()
        .with_price(Price::fixed("1".parse().unwrap()));
    let base = serve(Router::new().route("/", get(|| async { "hi" })).layer(paid)).await;
    let resp = reqwest::Client::new().get(&base).bearer_auth("tok-agent-1").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    for h in [headers::AUTHORIZATION_ID, headers::RECORDED_AMOUNT, headers::DAILY_REMAINING] {
        assert!(resp.headers().get(h).is_none(), "{h} must be opt-in");
    }
    assert_eq!(engine.usage("agent-1").stats.recorded, 1);
}

#[tokio::test]
async fn a_trusted_header_is_read_exactly_and_still_needs_a_provisioned_actor() {
    let engine = engine();
    let paid = Paywall::builder(Conto::new(engine.clone()))
        .actor(Actor::trusted_header("x-authenticated-user"))
        .rail(Rail::card("Acme").unwrap())
        .build()
        .unwrap()
        .with_price(Price::fixed("1".parse().unwrap()));
    let base = serve(Router::new().route("/", get(|| async { "hi" })).layer(paid)).await;
    let send = |v: &'static str| reqwest::Client::new().get(&base).header("x-authenticated-user", v).send();
    assert_eq!(send("agent-2").await.unwrap().status(), 200);
    assert_eq!(send("invented-1").await.unwrap().status(), 403, "invented names get nothing");
    assert_eq!(send("Agent-2").await.unwrap().status(), 403, "ids are case-sensitive: no alias");
    assert_eq!(send("agent 2").await.unwrap().status(), 400, "not an actor id");
    // A proxy that appends its own value to the client's: two values, no actor (the client's
    // would be read first).
    let twice = reqwest::Client::new()
        .get(&base)
        .header("x-authenticated-user", "agent-1")
        .header("x-authenticated-user", "agent-2")
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 401);
    assert_eq!(engine.usage("agent-2").stats.recorded, 1);
    assert_eq!(engine.usage("agent-1").stats.approved, 0);
}

#[tokio::test]
async fn prices_from_path_query_and_json_body() {
    let app = app().await;
    assert_eq!(app.get("/tier/free", None).await.status(), 200, "a free route needs no actor");
    assert_eq!(app.engine.usage("agent-1").stats.approved, 0);
    assert_eq!(app.get("/tier/basic", Some("agent-1")).await.status(), 200);
    assert_eq!(app.get("/query?price=2.5", Some("agent-1")).await.status(), 200);
    let (status, _, body) = problem(app.get("/query?price=abc", Some("agent-1")).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("bad price"), "{body}");
    // A priced parameter given twice (the price would read the first, a handler perhaps the
    // last) is refused before anyone pays, even by a price that would fall back to a default.
    let (status, _, body) = problem(app.get("/query?price=0.5&price=250", Some("agent-1")).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("`price` is given more than once"), "{body}");
    let defaulting = Paywall::builder(Conto::new(app.engine.clone()))
        .actor(Actor::trusted_header("x-user"))
        .rail(Rail::card("Acme").unwrap())
        .build()
        .unwrap()
        .with_price(Price::from_request(|req| {
            let n: u32 = req.query("items").unwrap_or_else(|| "1".into()).parse().map_err(|_| PriceError::new("n"))?;
            conto::Amount::try_from(n).map(Some).map_err(|e| PriceError::new(e.to_string()))
        }));
    let base = serve(Router::new().route("/items", get(|| async { "items" })).layer(defaulting)).await;
    let items =
        |q: &'static str| reqwest::Client::new().get(format!("{base}/items{q}")).header("x-user", "agent-2").send();
    assert_eq!(items("?items=2").await.unwrap().status(), 200);
    assert_eq!(items("?items=1&items=100").await.unwrap().status(), 400);
    assert_eq!(items("?items=1&other=1&other=2").await.unwrap().status(), 200, "a parameter the price never reads");
    assert_eq!(app.engine.usage("agent-2").stats.total_spent, Decimal::from(3));

    let post =
        |body: String| app.client.post(format!("{}/body", app.base)).bearer_auth("tok-agent-1").body(body).send();
    let ok = post(r#"{"units": 3}"#.into()).await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), r#"{"units": 3}"#, "the handler still gets the whole body");
    let (status, ..) = problem(post("not json".into()).await.unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, ..) = problem(post(format!(r#"{{"units": 1, "pad": "{}"}}"#, "x".repeat(2000))).await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.runs(), 4, "free, basic, query and body ran");
    assert_eq!(app.engine.usage("agent-1").stats.total_spent, "6.5".parse::<Decimal>().unwrap());
}

#[tokio::test]
async fn non_2xx_releases_and_records_nothing() {
    let app = app().await;
    let resp = app.get("/fails", Some("agent-1")).await;
    assert_eq!(resp.status(), 502);
    assert!(resp.headers().get(headers::RECORDED_AMOUNT).is_none());
    let stats = app.engine.usage("agent-1").stats;
    assert_eq!((app.runs(), stats.approved, stats.recorded, stats.released), (1, 1, 0, 1));
}

/// An upgraded connection (`101 Switching Protocols`, a WebSocket) is served: its spend is
/// recorded, not released as a failure would be.
#[tokio::test]
async fn an_upgraded_connection_is_served_and_recorded() {
    use tower::ServiceExt;
    let engine = engine();
    let paid = layer(Conto::new(engine.clone()));
    let router = Router::new().route(
        "/ws",
        get(|| async { (StatusCode::SWITCHING_PROTOCOLS, [("upgrade", "websocket"), ("connection", "upgrade")]) })
            .route_layer(paid.with_price(Price::fixed("1".parse().unwrap()))),
    );
    let mut req = Request::builder().uri("/ws").body(axum::body::Body::empty()).unwrap();
    req.extensions_mut().insert(User { id: "agent-1".into() });
    let resp = router.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let stats = engine.usage("agent-1").stats;
    assert_eq!((stats.approved, stats.recorded, stats.released), (1, 1, 0));
}

/// A route whose handler pays its provider, then waits (for the provider's answer) until told
/// to go on; serves it, sends one request and hangs up once the handler has paid.
async fn hang_up_after_paying(paywall: PaywallBuilder) -> (Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
    let paid_out = Arc::new(AtomicUsize::new(0));
    let (started, go_on) = (Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new()));
    let (paid, notify, wait) = (paid_out.clone(), started.clone(), go_on.clone());
    let layer = paywall.actor(Actor::extension(|user: &User| user.id.clone())).build().unwrap();
    let router = Router::new().route(
        "/slow",
        get(move || async move {
            paid.fetch_add(1, Ordering::SeqCst); // the money moves here
            notify.notify_one();
            wait.notified().await;
            "late"
        })
        .route_layer(layer.with_price(Price::fixed("3".parse().unwrap()))),
    );
    let base = serve(router).await;
    let request = tokio::spawn(async move {
        let _ = reqwest::Client::new().get(format!("{base}/slow")).bearer_auth("tok-agent-1").send().await;
    });
    started.notified().await;
    request.abort(); // the client goes away
    let _ = request.await;
    (paid_out, go_on)
}

fn paywall(engine: &Engine) -> PaywallBuilder {
    Paywall::builder(Conto::new(engine.clone()))
        .rail(Rail::x402("https://api.example.com/v1").unwrap())
        .recipient(RECIPIENT)
}

/// Waits (a bounded number of short sleeps) until `done` holds.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

#[tokio::test]
async fn a_client_that_hangs_up_after_its_handler_paid_is_still_charged() {
    // The attack: hang up once the handler has paid its provider. Were the handler cancelled
    // with the connection, its approval would be released and the spend never counted: a
    // client could spend past its budget. The request runs to its end and is recorded.
    let engine = engine();
    let (paid_out, go_on) = hang_up_after_paying(paywall(&engine)).await;
    assert_eq!(engine.usage("agent-1").live_reservations, 1, "held while the handler runs");
    go_on.notify_one();
    assert!(eventually(|| engine.usage("agent-1").stats.recorded == 1).await, "{:?}", engine.usage("agent-1").stats);
    let stats = engine.usage("agent-1").stats;
    assert_eq!((paid_out.load(Ordering::SeqCst), stats.released, stats.total_spent), (1, 0, Decimal::from(3)));
}

#[tokio::test]
async fn cancel_on_disconnect_releases_when_the_client_goes_away() {
    // Opted in, for a handler that waits on its client and pays nothing meanwhile.
    let engine = engine();
    let (_, _go_on) = hang_up_after_paying(paywall(&engine).cancel_on_disconnect()).await;
    assert!(eventually(|| engine.usage("agent-1").stats.released == 1).await, "released");
    assert_eq!(engine.usage("agent-1").stats.recorded, 0);
}

/// The embedded engine, deciding only after `delay` (a slow remote authority).
struct Slow(Engine, Duration);

impl Authorizer for Slow {
    fn authorize<'a>(
        &'a self,
        intent: &'a std::sync::Arc<PaymentIntent>,
    ) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        Box::pin(async move {
            tokio::time::sleep(self.1).await;
            self.0.authorize(intent).await
        })
    }
    fn record<'a>(
        &'a self,
        a: &'a Authorization,
        s: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        self.0.record(a, s)
    }
    fn release(&self, a: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
        self.0.release(a)
    }
    fn approval_status<'a>(
        &'a self,
        intent: &'a PaymentIntent,
        pending: &'a PendingApproval,
    ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
        self.0.approval_status(intent, pending)
    }
}

#[tokio::test]
async fn a_client_gone_before_its_request_was_approved_is_not_served_after_all() {
    // Only a settlement under way finishes without its client: one that hangs up while its
    // payment is still being decided is dropped, and its handler never runs.
    let engine = engine();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let paid = Paywall::builder(Conto::new(Slow(engine.clone(), Duration::from_millis(300))))
        .actor(Actor::extension(|user: &User| user.id.clone()))
        .rail(Rail::x402("https://api.example.com/v1").unwrap())
        .recipient(RECIPIENT)
        .build()
        .unwrap();
    let router = Router::new().route(
        "/slow-decision",
        get(move || async move {
            counted.fetch_add(1, Ordering::SeqCst);
            "served"
        })
        .route_layer(paid.with_price(Price::fixed("3".parse().unwrap()))),
    );
    let base = serve(router).await;
    let request = tokio::spawn(async move {
        let _ = reqwest::Client::new().get(format!("{base}/slow-decision")).bearer_auth("tok-agent-1").send().await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    request.abort(); // gone while the authority decides
    let _ = request.await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "the handler never ran");
    assert_eq!(engine.usage("agent-1").stats.recorded, 0);
}

#[tokio::test]
async fn a_handler_that_panics_is_dropped_once_its_approval_released() {
    // The panic unwinds out of the route's future, which is dropped: never polled again in a
    // task of its own (an `async fn` polled after a panic panics again, where nothing catches
    // it).
    static AGAIN: AtomicUsize = AtomicUsize::new(0);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.to_string().contains("resumed after panicking") {
            AGAIN.fetch_add(1, Ordering::SeqCst);
        }
        hook(info);
    }));
    let engine = engine();
    let router = Router::new()
        .route(
            "/panics",
            get(|| async {
                if true {
                    panic!("the handler failed");
                }
                "never"
            })
            .route_layer(layer(Conto::new(engine.clone())).with_price(Price::fixed("3".parse().unwrap()))),
        )
        .layer(axum::middleware::from_fn(authenticate));
    let mut req = Request::builder().uri("/panics").body(axum::body::Body::empty()).unwrap();
    req.extensions_mut().insert(User { id: "agent-1".into() });
    let served = tokio::spawn(tower::ServiceExt::oneshot(router, req)).await;
    assert!(served.is_err_and(|e| e.is_panic()));
    assert!(eventually(|| engine.usage("agent-1").stats.released == 1).await, "released");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = engine.usage("agent-1").stats;
    assert_eq!((stats.approved, stats.recorded, stats.released), (1, 0, 1));
    assert_eq!(AGAIN.load(Ordering::SeqCst), 0, "polled again after its panic");
}

/// An authority that never answers.
struct Hangs;

impl Authorizer for Hangs {
    fn authorize<'a>(
        &'a self,
        _: &'a std::sync::Arc<PaymentIntent>,
    ) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        Box::pin(std::future::pending())
    }
    fn record<'a>(
        &'a self,
        _: &'a Authorization,
        _: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(std::future::pending())
    }
    fn release(&self, _: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn approval_status<'a>(
        &'a self,
        _: &'a PaymentIntent,
        _: &'a PendingApproval,
    ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn unavailable_authority_is_a_503_with_retry_after() {
    let conto = Conto::builder(Hangs).deadline(Duration::from_millis(50)).build();
    let app = app_with(conto, Engine::from_json("[]").unwrap()).await;
    let (status, headers, body) = problem(app.get("/paid", Some("agent-1")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(body["source"], "timeout");
    assert!(!body.to_string().contains("deadline"), "the cause stays server-side: {body}");
    assert_eq!(app.runs(), 0);
}

/// An authority that refuses this service's SDK key.
struct BadKey;

impl Authorizer for BadKey {
    fn authorize<'a>(
        &'a self,
        _: &'a std::sync::Arc<PaymentIntent>,
    ) -> BoxFuture<'a, Result<Decision, AuthorityError>> {
        Box::pin(std::future::ready(Err(AuthorityError::from_status(401, "AUTH_FAILED", "invalid SDK key"))))
    }
    fn record<'a>(
        &'a self,
        _: &'a Authorization,
        _: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(std::future::ready(Err(AuthorityError::from_status(401, "AUTH_FAILED", "invalid SDK key"))))
    }
    fn release(&self, _: &Authorization) -> BoxFuture<'static, Result<(), AuthorityError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn approval_status<'a>(
        &'a self,
        _: &'a PaymentIntent,
        _: &'a PendingApproval,
    ) -> BoxFuture<'a, Result<Option<Decision>, AuthorityError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
}

#[tokio::test]
async fn a_refused_key_is_a_500_that_says_what_to_fix_never_a_retryable_503() {
    let stand_in = engine();
    let conto = Conto::builder(BadKey).stand_in(stand_in.clone()).build();
    let app = app_with(conto, stand_in.clone()).await;
    let (status, headers, body) = problem(app.get("/paid", Some("agent-1")).await).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(headers.get("retry-after").is_none(), "not retryable");
    assert_eq!(body["code"], "authority-refused", "{body}");
    assert_eq!(body["type"], "about:blank");
    assert_eq!(body["source"], "authority");
    assert!(body["detail"].as_str().unwrap().contains("check the SDK key"), "{body}");
    // The authority's own words (and anything else of the cause) stay in the service's logs.
    assert!(!body.to_string().contains("invalid SDK key") && !body.to_string().contains("AUTH_FAILED"), "{body}");
    assert_eq!(app.runs(), 0);
    assert_eq!(stand_in.usage("agent-1").stats.approved, 0, "a bad key never falls back to the stand-in");
}

#[tokio::test]
async fn a_custom_responder_replaces_the_problem_and_keeps_no_store() {
    let paid = Paywall::builder(Conto::new(engine()))
        .actor(Actor::extension(|user: &User| user.id.clone()))
        .rail(Rail::card("Acme").unwrap())
        .respond_with(|refusal| (StatusCode::PAYMENT_REQUIRED, format!("nope: {refusal}")).into_response())
        .build()
        .unwrap()
        .with_price(Price::fixed("11".parse().unwrap()));
    let base = serve(Router::new().route("/", get(|| async { "hi" })).layer(paid)).await;
    let resp = reqwest::Client::new().get(&base).bearer_auth("tok-agent-1").send().await.unwrap();
    assert_eq!(resp.status(), 402);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert!(resp.text().await.unwrap().starts_with("nope: payment denied by policy (PER_TX_LIMIT)"));
}

#[tokio::test]
async fn builder_errors_are_typed() {
    let conto = Conto::new(Engine::from_json("[]").unwrap());
    let err = Paywall::builder(conto.clone()).rail(Rail::card("A").unwrap()).build().unwrap_err();
    assert_eq!(err, conto::tower::LayerError::MissingActor);
    let err = Paywall::builder(conto.clone()).recipient("0xnope").build().unwrap_err();
    assert!(matches!(err, conto::tower::LayerError::Invalid(_)), "{err}");
    // A fixed rail that pays an address, with none given: refused when built, not per request.
    let user = Actor::extension(|u: &User| u.id.clone());
    let err = Paywall::builder(conto.clone())
        .actor(user.clone())
        .rail(Rail::x402("https://api.example.com/search").unwrap())
        .build()
        .unwrap_err();
    assert_eq!(err, conto::tower::LayerError::Invalid(conto::IntentError::MissingRecipient("x402")), "{err}");
    assert!(err.to_string().contains("x402"), "{err}");
    let card = Paywall::builder(conto).actor(user).rail(Rail::card("Acme").unwrap()).build();
    assert!(card.is_ok(), "a card pays no address");
}

#[tokio::test]
async fn concurrent_requests_never_overspend_the_daily_budget() {
    let app = app().await;
    let mut tasks = Vec::new();
    for _ in 0..120 {
        let client = app.client.clone();
        let url = format!("{}/query?price=1", app.base);
        tasks.push(tokio::spawn(async move {
            client.get(url).bearer_auth("tok-agent-7").send().await.unwrap().status().as_u16()
        }));
    }
    let mut ok = 0;
    let mut denied = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            403 => denied += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    let usage = app.engine.usage("agent-7");
    assert_eq!(ok, 50, "exactly the daily limit of 1.00 requests is approved");
    assert_eq!(denied, 70);
    assert_eq!(usage.stats.total_spent, Decimal::from(50));
    assert_eq!(app.runs(), 50);
    assert!(usage.counters.iter().all(|c| c.spent <= Decimal::from(50) && c.reserved.is_zero()));
}

#[tokio::test]
async fn a_computed_price_of_zero_is_an_invalid_payment_and_none_is_free() {
    let engine = engine();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let price = Price::from_request(|req| match req.query("price").as_deref() {
        Some("free") => Ok(None),
        Some(p) => p.parse().map(Some).map_err(|e| PriceError::new(format!("bad price: {e}"))),
        None => Err(PriceError::new("`price` is required")),
    });
    let paywall = layer(Conto::new(engine.clone()));
    let router = Router::new().route(
        "/q",
        get(move || async move {
            r.fetch_add(1, Ordering::SeqCst);
            "ok"
        })
        .route_layer(paywall.with_price(price)),
    );
    let base = serve(router).await;
    let client = reqwest::Client::new();
    let resp = client.get(format!("{base}/q?price=0")).bearer_auth("tok-agent-1").send().await.unwrap();
    let (status, _, body) = problem(resp).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["code"] == "invalid-price" || body["code"] == "invalid-payment", "{body}");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a zero price never reaches the handler");
    let resp = client.get(format!("{base}/q?price=free")).bearer_auth("tok-agent-1").send().await.unwrap();
    assert_eq!(resp.status(), 200, "Ok(None) is free");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(engine.usage("agent-1").stats.approved, 0, "a free request is not authorized");
}

/// A caller's `Idempotency-Key` header is never the payment's key: an authority answers a
/// repeated key with the approval it gave first (conto-local does, as Conto documents), so a
/// caller repeating one would run the route again under an approval already spent. Each
/// request is its own payment attempt: two approvals, two spends.
#[cfg(feature = "client")]
#[tokio::test]
async fn a_callers_idempotency_key_never_replays_an_earlier_approval() {
    let server = conto_local::start(conto_local::Config {
        port: 0,
        org_key: Some("conto_org_layer".into()),
        rate_limit: 100_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let org = |path: &str, body: Value| {
        http.post(format!("{}{path}", server.url())).bearer_auth("conto_org_layer").json(&body).send()
    };
    assert_eq!(
        org("/api/agents", serde_json::json!({"id": "agent-1", "name": "agent-1"})).await.unwrap().status(),
        201
    );
    let scopes =
        serde_json::json!({"name": "app", "scopes": ["payments:request", "payments:approve", "payments:confirm"]});
    let key: Value = org("/api/agents/agent-1/sdk-keys", scopes).await.unwrap().json().await.unwrap();
    let mut policy = serde_json::from_str::<Value>(POLICIES).unwrap()[0].clone();
    policy["scope"] = "all".into();
    assert_eq!(org("/api/policies", policy).await.unwrap().status(), 201);
    let client = conto::ContoClient::builder()
        .base_url(server.url())
        .sdk_key(key["key"].as_str().unwrap())
        .actor("agent-1")
        .build()
        .unwrap();
    let app = app_with(Conto::new(client), engine()).await;
    let paid = || async {
        let resp = app
            .client
            .get(format!("{}/paid", app.base))
            .bearer_auth("tok-agent-1")
            .header("idempotency-key", "the-same-key")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.text().await.unwrap()
    };
    let (first, second) = (paid().await, paid().await);
    assert_ne!(first, second, "each request got its own approval");
    assert_eq!(app.runs(), 2);
    let stats = server.engine().usage("agent-1").stats;
    assert_eq!((stats.approved, stats.recorded), (2, 2), "both requests were paid for");
    // The key pays for agent-1 only: another authenticated, provisioned user of the app is
    // refused as unknown to this key (403), and never spends agent-1's budget.
    let resp = app.get("/paid", Some("agent-2")).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(server.engine().usage("agent-1").stats.approved, 2);
    server.stop().await;
}

/// One request through `router` in process, as `user`: what the handler saw of its intent.
async fn intent_seen(router: &Router, user: &str, price: &str) -> (String, String, String, Value) {
    use tower::ServiceExt;
    let mut req = axum::http::Request::get(format!("/paid?price={price}")).body(axum::body::Body::empty()).unwrap();
    req.extensions_mut().insert(User { id: user.to_owned() });
    let res = router.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{user} at {price}");
    let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
    let seen: Value = serde_json::from_slice(&body).unwrap();
    let field = |k: &str| seen[k].as_str().unwrap().to_owned();
    (field("actor"), field("amount"), field("key"), seen["intent"].clone())
}

#[tokio::test(flavor = "current_thread")]
async fn consecutive_requests_on_one_thread_are_each_their_own_payment_by_their_own_actor() {
    // On one thread, a route with a fixed rail reuses its last intent when the actor and the
    // price are the same: every request must still carry its own actor, amount and key.
    let engine = engine();
    let price = Price::from_request(|req| {
        let text = req.query("price").ok_or_else(|| PriceError::new("`price` is required"))?;
        text.parse().map(Some).map_err(|e| PriceError::new(format!("bad price: {e}")))
    });
    let router = Router::new().route(
        "/paid",
        get(|paid: Paid| async move {
            let intent = &paid.authorization.intent;
            axum::Json(serde_json::json!({"actor": intent.actor.as_str(), "amount": intent.amount.to_string(),
                "key": intent.idempotency_key.as_str(), "intent": &**intent}))
        })
        .route_layer(layer(Conto::new(engine.clone())).with_price(price)),
    );
    let mut keys = std::collections::HashSet::new();
    let calls = [
        ("agent-1", "1"),
        ("agent-1", "1"),
        ("agent-2", "1"),
        ("agent-1", "1"),
        ("agent-1", "1.0"),
        ("agent-1", "2"),
        ("agent-2", "2"),
        ("agent-2", "2"),
    ];
    for (user, price) in calls {
        let (actor, amount, key, mut intent) = intent_seen(&router, user, price).await;
        let amount: Decimal = amount.parse().unwrap();
        assert_eq!((actor.as_str(), amount), (user, price.parse().unwrap()), "the intent is this request's");
        assert!(keys.insert(key.clone()), "a fresh idempotency key for every request: {key} repeated");
        // Whether reused, made from the route's template or built: the paywall's payment, as
        // the builder makes it from the same parts.
        let mut built = serde_json::to_value(
            PaymentIntent::builder(user, price, Rail::x402("https://api.example.com/v1").unwrap())
                .recipient(RECIPIENT)
                .category("API_PROVIDER")
                .build()
                .unwrap(),
        )
        .unwrap();
        for v in [&mut intent, &mut built] {
            v.as_object_mut().unwrap().remove("idempotencyKey");
        }
        assert_eq!(intent, built, "{user} at {price}");
    }
    let spent = |actor: &str| engine.usage(actor).stats.total_spent;
    assert_eq!(
        spent("agent-1"),
        "6".parse::<Decimal>().unwrap(),
        "agent-1 paid for its own five requests (1 + 1 + 1 + 1.0 + 2)"
    );
    assert_eq!(spent("agent-2"), "5".parse::<Decimal>().unwrap(), "agent-2 paid for its own three");
}
