//! Per-actor bindings: SDK keys encrypted at rest, a wrong key or a tampered file is a clear
//! error, rotation works, and each actor pays through its own Conto agent — never a shared key.

mod common;

use std::sync::Arc;

use common::*;
use conto_client::BoundClients;
use conto_client::credentials::{CredentialError, CredentialStore, StaticKey};
use conto_core::{Conto, DecisionSource, ExposeSecret, Settlement};

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("conto-bind-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("credentials.json")
}

const KEY_A: &str = "conto_agent_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Actors bound from many threads at once are all in the file afterwards (saves at once wrote
/// one temporary file between them), and the file is its owner's only.
#[test]
fn concurrent_binds_are_all_saved() {
    let path = scratch("concurrent");
    let store = Arc::new(CredentialStore::open(&path, &StaticKey::new([7; 32])).unwrap());
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                for j in 0..8 {
                    store.bind(&format!("user-{i}-{j}"), &format!("agent-{i}-{j}"), KEY_A).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let reopened = CredentialStore::open(&path, &StaticKey::new([7; 32])).unwrap();
    assert_eq!(reopened.actors().len(), 128);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let dir = path.parent().unwrap();
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 1, "no temporary file is left");
}

#[test]
fn keys_are_encrypted_at_rest_and_tampering_is_detected() {
    let path = scratch("store");
    let store = CredentialStore::open(&path, &StaticKey::new([7; 32])).unwrap();
    store.bind("user-a", "agent-a", KEY_A).unwrap();
    store.bind("user-b", "agent-b", "conto_agent_bbbb").unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(KEY_A) && !text.contains("aaaaaaaaaaaaaaaa"), "no key in the file");
    assert!(!format!("{:?}", store.get("user-a").unwrap()).contains(KEY_A), "no key in Debug");

    let reopened = CredentialStore::open(&path, &StaticKey::new([7; 32])).unwrap();
    assert_eq!(reopened.get("user-a").unwrap().sdk_key.expose_secret(), KEY_A);
    assert_eq!(reopened.get("user-b").unwrap().agent_id, "agent-b");
    assert!(matches!(reopened.get("user-z"), Err(CredentialError::UnknownActor(a)) if a == "user-z"));

    // A wrong master key.
    assert!(matches!(CredentialStore::open(&path, &StaticKey::new([8; 32])), Err(CredentialError::Decrypt { .. })));
    // A flipped ciphertext byte.
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let c = v["entries"][0]["ciphertext"].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", if c.starts_with('0') { '1' } else { '0' }, &c[1..]);
    v["entries"][0]["ciphertext"] = flipped.into();
    std::fs::write(&path, v.to_string()).unwrap();
    let err = CredentialStore::open(&path, &StaticKey::new([7; 32])).unwrap_err();
    assert!(matches!(&err, CredentialError::Decrypt { actor } if actor == "user-a"), "{err}");
    // An entry moved to another agent (the binding is authenticated too).
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["entries"][1]["agentId"] = "agent-a".into();
    std::fs::write(&path, v.to_string()).unwrap();
    assert!(matches!(CredentialStore::open(&path, &StaticKey::new([7; 32])), Err(CredentialError::Decrypt { .. })));
    // Not a credential file at all.
    std::fs::write(&path, "{not json").unwrap();
    assert!(matches!(CredentialStore::open(&path, &StaticKey::new([7; 32])), Err(CredentialError::Malformed { .. })));
}

#[test]
fn the_master_key_rotates() {
    let path = scratch("rotate");
    let store = CredentialStore::open(&path, &StaticKey::new([1; 32])).unwrap();
    store.bind("user-a", "agent-a", KEY_A).unwrap();
    store.rotate(&StaticKey::new([2; 32])).unwrap();
    assert!(matches!(CredentialStore::open(&path, &StaticKey::new([1; 32])), Err(CredentialError::Decrypt { .. })));
    let rotated = CredentialStore::open(&path, &StaticKey::new([2; 32])).unwrap();
    assert_eq!(rotated.get("user-a").unwrap().sdk_key.expose_secret(), KEY_A);
}

#[test]
fn the_master_key_rolls_out_without_downtime() {
    let path = scratch("rollout");
    let (old, new) = (StaticKey::new([4; 32]), StaticKey::new([5; 32]));
    let v1 = CredentialStore::open(&path, &old).unwrap();
    v1.bind("user-a", "agent-a", KEY_A).unwrap();
    // Step 1: the new key is accepted for reading everywhere; step 2: it becomes primary.
    let step1 = CredentialStore::open_with_previous(&path, &old, &[&new]).unwrap();
    let step2 = CredentialStore::open_with_previous(&path, &new, &[&old]).unwrap();
    step2.bind("user-b", "agent-b", "conto_agent_bbbb").unwrap(); // sealed with the new key
    // An instance still at step 1 reads both entries.
    let lagging = CredentialStore::open_with_previous(&path, &old, &[&new]).unwrap();
    assert_eq!(lagging.get("user-a").unwrap().sdk_key.expose_secret(), KEY_A);
    assert_eq!(lagging.get("user-b").unwrap().sdk_key.expose_secret(), "conto_agent_bbbb");
    drop(step1);
    // Step 3: re-seal everything with the new key, then the old key is dropped.
    step2.rotate(&new).unwrap();
    let done = CredentialStore::open(&path, &new).unwrap();
    assert_eq!(done.actors(), vec!["user-a".to_owned(), "user-b".to_owned()]);
    assert!(matches!(CredentialStore::open(&path, &old), Err(CredentialError::Decrypt { .. })));
}

#[tokio::test]
async fn each_actor_pays_through_its_own_agent_and_unknown_actors_are_refused() {
    let server = start(None, "conto_org_test").await;
    let org = Org::new(&server);
    let key_a = org.agent("agent-a", ALL_SCOPES).await;
    let key_b = org.agent("agent-b", ALL_SCOPES).await;
    let store = Arc::new(CredentialStore::open(scratch("route"), &StaticKey::new([3; 32])).unwrap());
    store.bind("user-a", "agent-a", &key_a).unwrap();
    store.bind("user-b", "agent-b", &key_b).unwrap();
    let conto = Conto::new(BoundClients::new(store, server.url()).unwrap());

    for (actor, amount) in [("user-a", "2"), ("user-b", "3"), ("user-a", "4")] {
        conto
            .run(x402(actor, amount), |_| async { Ok::<_, ()>(()) }, |_| Settlement::default().reference(TX))
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(server.spend_count("agent-a").unwrap(), 2);
    assert_eq!(server.spend_count("agent-b").unwrap(), 1);
    assert_eq!(server.engine().usage("agent-a").stats.total_spent, 6.into());

    let mut ran = false;
    let out = conto
        .run(
            x402("user-z", "1"),
            |_| {
                ran = true;
                async { Ok::<_, ()>(()) }
            },
            |_| Settlement::default(),
        )
        .await;
    let r = out.unwrap_err();
    assert!(!ran);
    assert!(matches!(r.kind(), conto_core::RejectionKind::UnknownActor(a) if a.as_str() == "user-z"), "{r:?}");
    assert!(!r.is_retryable(), "an unbound actor is not an outage");
    assert_eq!(r.source(), DecisionSource::Policy);
}
