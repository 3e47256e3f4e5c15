//! The managed-actor lifecycle (provision, pause, rotate, retire) behaves the same against
//! conto-local (Conto's org API, keys sealed in a credential store) and the embedded engine; it
//! is idempotent, and a crash at any step leaves no orphan and no duplicate.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use common::*;
use conto_client::credentials::{CredentialStore, StaticKey};
use conto_client::sync::OrgClient;
use conto_client::{BoundClients, ManagedActors};
use conto_core::{
    ActorLifecycle, BudgetPeriod, Conto, Engine, Event, ExposeSecret, ProductControls, RejectionKind, Settlement,
    ViolationType,
};
use serde_json::Value;

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("conto-lifecycle-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("credentials.json")
}

fn controls() -> ProductControls {
    ProductControls {
        max_per_action: Some("10".parse().unwrap()),
        budget: Some(("100".parse().unwrap(), BudgetPeriod::Daily)),
        ..Default::default()
    }
}

fn master() -> StaticKey {
    StaticKey::new([9; 32])
}

/// The one scenario both authorities go through: provision, idempotence, policy, pause (with a
/// settlement approved before it still recorded), resume, retire.
async fn scenario(lifecycle: &dyn ActorLifecycle, conto: &Conto, actor: &str) {
    let first = lifecycle.ensure_actor(actor, &controls()).await.unwrap();
    assert!(first.created);
    assert_eq!((first.policies.created, first.policies.unchanged), (2, 0));
    let again = lifecycle.ensure_actor(actor, &controls()).await.unwrap();
    assert!(!again.created && !again.issued_key, "{again:?}");
    assert_eq!((again.policies.created, again.policies.updated, again.policies.unchanged), (0, 0, 2));

    let before_pause = conto.authorize(x402(actor, "5")).await.expect("a provisioned actor spends");
    let over = conto.authorize(x402(actor, "11")).await.unwrap_err();
    assert_eq!(over.violations()[0].kind, ViolationType::PerTxLimit, "the synced controls apply");

    // The kill switch: the next authorization is denied at once.
    lifecycle.pause_actor(actor).await.unwrap();
    lifecycle.pause_actor(actor).await.unwrap(); // idempotent
    let paused = conto.authorize(x402(actor, "1")).await.unwrap_err();
    assert!(matches!(paused.kind(), RejectionKind::Denied(_)), "{paused:?}");
    assert!(paused.reasons().iter().any(|r| r.contains("paused")), "{paused}");
    // Money that moved before the pause is never dropped from the ledger.
    before_pause.record(Settlement::default().reference(TX)).await.expect("recorded after the pause");

    lifecycle.resume_actor(actor).await.unwrap();
    let resumed = conto.authorize(x402(actor, "1")).await.expect("resumed");
    resumed.record(Settlement::default().reference(TX)).await.unwrap();

    lifecycle.retire_actor(actor).await.unwrap();
    lifecycle.retire_actor(actor).await.unwrap(); // idempotent
    let retired = conto.authorize(x402(actor, "1")).await.unwrap_err();
    assert!(matches!(retired.kind(), RejectionKind::UnknownActor(_)), "{retired:?}");
    assert!(!retired.is_retryable());
    assert!(lifecycle.pause_actor(actor).await.is_err(), "a retired actor is unknown");
}

#[tokio::test]
async fn the_lifecycle_behaves_the_same_on_the_embedded_engine() {
    let engine = Engine::builder().build();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let conto = Conto::builder(engine.clone())
        .observe(move |e| {
            if let Event::Recorded { recorded, .. } = e {
                log.lock().unwrap().push(recorded.actor_inactive);
            }
        })
        .build();
    assert!(conto.authorize(x402("user-1", "1")).await.unwrap_err().is_unknown_actor(), "closed by default");
    scenario(&engine, &conto, "user-1").await;
    assert_eq!(*seen.lock().unwrap(), vec![true, false], "the record made while paused is flagged");
    assert_eq!(engine.usage("user-1").stats.total_spent, 6.into());
}

#[tokio::test]
async fn the_lifecycle_behaves_the_same_against_conto_local() {
    let server = start(None, "conto_org_test").await;
    let store = Arc::new(CredentialStore::open(scratch("same"), &master()).unwrap());
    let org = OrgClient::new(&server.url(), server.org_key().expose_secret()).unwrap();
    let managed = ManagedActors::new(org, store.clone());
    let conto = Conto::new(BoundClients::new(store.clone(), server.url()).unwrap());
    assert!(conto.authorize(x402("user-1", "1")).await.unwrap_err().is_unknown_actor(), "unbound is unknown");
    scenario(&managed, &conto, "user-1").await;
    assert!(store.get("user-1").is_err(), "retire removes the binding");
    let (_, agents) = Org::new(&server).get("/api/agents").await;
    assert!(agents["agents"].as_array().unwrap().is_empty(), "retire deletes the agent: {agents}");
}

#[tokio::test]
async fn a_second_ensure_makes_zero_api_writes() {
    let server = start(None, "conto_org_test").await;
    let path = scratch("writes");
    let store = Arc::new(CredentialStore::open(&path, &master()).unwrap());
    let org = OrgClient::new(&server.url(), server.org_key().expose_secret()).unwrap();
    let managed = ManagedActors::new(org.clone(), store.clone());
    managed.ensure_actor("user-1", &controls()).await.unwrap();
    let after_first = org.writes();
    assert_eq!(after_first, 4, "agent, key, two policies");
    let second = managed.ensure_actor("user-1", &controls()).await.unwrap();
    assert_eq!(org.writes(), after_first, "{second:?}");
    // The sealed key is the agent's only live key: the standard preset plus the payment
    // scopes the rails need (asked for; nothing else is added).
    let (_, keys) = Org::new(&server).get(&format!("/api/agents/{}/sdk-keys", second.agent_id)).await;
    let keys = keys["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let scopes: Vec<&str> = keys[0]["scopes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for scope in conto_client::RAIL_SCOPES {
        assert!(scopes.contains(scope), "{scope} missing from {scopes:?}");
    }
    assert!(!scopes.contains(&"payments:execute"), "{scopes:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(store.get("user-1").unwrap().sdk_key.expose_secret()), "sealed at rest");
}

#[tokio::test]
async fn rotating_the_sdk_key_seals_the_new_one_and_revokes_the_old() {
    let server = start(None, "conto_org_test").await;
    let store = Arc::new(CredentialStore::open(scratch("rotate"), &master()).unwrap());
    let org = OrgClient::new(&server.url(), server.org_key().expose_secret()).unwrap();
    let managed = ManagedActors::new(org, store.clone());
    managed.ensure_actor("user-1", &controls()).await.unwrap();
    let conto = Conto::new(BoundClients::new(store.clone(), server.url()).unwrap());
    conto.authorize(x402("user-1", "1")).await.unwrap();
    let old = store.get("user-1").unwrap().sdk_key;

    assert!(managed.rotate_key("user-1").await.unwrap());
    let new = store.get("user-1").unwrap().sdk_key;
    assert_ne!(old.expose_secret(), new.expose_secret());
    let old_client = Conto::new(client(&server, old.expose_secret()));
    let refused = old_client.authorize(x402("user-1", "1")).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "the old key is revoked: {refused}");
    conto.authorize(x402("user-1", "1")).await.expect("the same Conto picks up the new key");
}

#[tokio::test]
async fn concurrent_calls_for_one_actor_leave_it_one_agent_and_a_live_key() {
    // Two first ensures at once would each create an agent; two rotations at once would each
    // revoke the other's new key, leaving the actor none. One actor's calls take turns.
    let server = start(None, "conto_org_test").await;
    let store = Arc::new(CredentialStore::open(scratch("concurrent"), &master()).unwrap());
    let org = OrgClient::new(&server.url(), server.org_key().expose_secret()).unwrap();
    let managed = ManagedActors::new(org, store.clone());
    let (controls, twin) = (controls(), managed.clone());
    let (a, b) = tokio::join!(managed.ensure_actor("user-1", &controls), twin.ensure_actor("user-1", &controls));
    assert_eq!(a.unwrap().agent_id, b.unwrap().agent_id, "one agent");
    let (a, b) = tokio::join!(managed.rotate_key("user-1"), managed.rotate_key("user-1"));
    assert!(a.unwrap() && b.unwrap());
    let conto = Conto::new(BoundClients::new(store.clone(), server.url()).unwrap());
    conto.authorize(x402("user-1", "1")).await.expect("the sealed key is live");
}

// ---- crash safety ----

/// The child half of the crash proof: runs `ensure_actor` through the proxy, which lets the
/// parent SIGKILL it right after a chosen write reached the server.
#[test]
#[ignore = "the child process of ensure_actor_survives_a_crash_at_every_step; run by it"]
fn ensure_child() {
    let url = std::env::var("CONTO_LC_URL").expect("run by ensure_actor_survives_a_crash_at_every_step");
    let org_key = std::env::var("CONTO_LC_ORG").unwrap();
    let store = Arc::new(CredentialStore::open(std::env::var("CONTO_LC_STORE").unwrap(), &master()).unwrap());
    let managed = ManagedActors::new(OrgClient::new(&url, &org_key).unwrap(), store);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let done = rt.block_on(managed.ensure_actor("user-1", &controls()));
    println!("CHILD DONE {}", done.is_ok());
    std::io::stdout().flush().unwrap();
}

/// A forwarding proxy in front of conto-local that, once the `crash_at`-th write has been
/// applied by the server, tells the parent and never answers.
async fn crash_proxy(upstream: String, crash_at: usize) -> (String, Arc<tokio::sync::Notify>) {
    let writes = Arc::new(AtomicUsize::new(0));
    let crashed = Arc::new(tokio::sync::Notify::new());
    let notify = crashed.clone();
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
        let (http, upstream, writes, notify) = (http.clone(), upstream.clone(), writes.clone(), notify.clone());
        async move {
            let mut req = http.request(method.clone(), format!("{upstream}{uri}")).body(body);
            for name in ["authorization", "content-type"] {
                if let Some(v) = headers.get(name) {
                    req = req.header(name, v.clone());
                }
            }
            let resp = req.send().await.unwrap();
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
            let body = resp.bytes().await.unwrap();
            if method != Method::GET && writes.fetch_add(1, Ordering::SeqCst) + 1 == crash_at {
                notify.notify_one(); // the write is applied; the child never hears back
                std::future::pending::<()>().await;
            }
            (status, [("content-type", "application/json")], body).into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, crashed)
}

#[tokio::test]
async fn ensure_actor_survives_a_crash_at_every_step() {
    // Writes of a fresh ensure: 1 create agent, 2 issue key, 3 and 4 create the two policies.
    for crash_at in 1..=4 {
        let server = start(None, "conto_org_test").await;
        let store_path = scratch(&format!("crash-{crash_at}"));
        let (proxy, crashed) = crash_proxy(server.url(), crash_at).await;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["ensure_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env("CONTO_LC_URL", &proxy)
            .env("CONTO_LC_ORG", server.org_key().expose_secret())
            .env("CONTO_LC_STORE", &store_path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(60), crashed.notified())
            .await
            .unwrap_or_else(|_| panic!("the child reaches write {crash_at}"));
        child.kill().unwrap(); // SIGKILL, mid-call
        let _ = child.wait();
        let stdout = child.stdout.take().unwrap();
        let printed: Vec<String> = BufReader::new(stdout).lines().map_while(Result::ok).collect();
        assert!(!printed.iter().any(|l| l.contains("CHILD DONE")), "killed before finishing: {printed:?}");

        // The next run finds what the crashed one made and finishes the job.
        let store = Arc::new(CredentialStore::open(&store_path, &master()).unwrap());
        let org = OrgClient::new(&server.url(), server.org_key().expose_secret()).unwrap();
        let managed = ManagedActors::new(org.clone(), store.clone());
        let ensured = managed.ensure_actor("user-1", &controls()).await.unwrap();
        assert!(!ensured.created, "crash at {crash_at}: the agent was found, not duplicated");

        let admin = Org::new(&server);
        let (_, agents) = admin.get("/api/agents").await;
        let ours: Vec<&Value> =
            agents["agents"].as_array().unwrap().iter().filter(|a| a["name"] == "conto-rs:user-1").collect();
        assert_eq!(ours.len(), 1, "crash at {crash_at}: exactly one agent");
        let (_, keys) = admin.get(&format!("/api/agents/{}/sdk-keys", ensured.agent_id)).await;
        let live = keys["keys"].as_array().unwrap().iter().filter(|k| k["revokedAt"].is_null()).count();
        assert_eq!(live, 1, "crash at {crash_at}: no live unsealed key left behind: {keys}");
        let (_, policies) = admin.get("/api/policies").await;
        let named = policies["policies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"].as_str().is_some_and(|n| n.starts_with("conto-rs:user-1 · ")))
            .count();
        assert_eq!(named, 2, "crash at {crash_at}: no duplicate policy");

        // The sealed key works, and a further run writes nothing.
        let conto = Conto::new(BoundClients::new(store.clone(), server.url()).unwrap());
        conto.authorize(x402("user-1", "1")).await.expect("the sealed key pays");
        let writes = org.writes();
        managed.ensure_actor("user-1", &controls()).await.unwrap();
        assert_eq!(org.writes(), writes, "crash at {crash_at}: idempotent afterwards");
        eprintln!("crash at write {crash_at}: recovered with 1 agent, 1 live key, 2 policies");
        server.stop().await;
    }
}
