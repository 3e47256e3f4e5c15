//! With `seal_tokens`, the SQLite outbox holds no readable approval token, and still delivers
//! the token whole.

use std::sync::{Arc, Mutex};

use conto::credentials::{StaticKey, TokenSealer};
use conto::outbox::Outbox;
use conto::sink::{Deliver, QueuedRecord, RecordKind, RecordSink};
use conto::{
    AuthorityError, Authorization, BoxFuture, ExposeSecret, PaymentIntent, Rail, Recorded, SecretString, Settlement,
};

#[derive(Default)]
struct Capture(Mutex<Vec<Option<String>>>, Mutex<Vec<String>>);

impl Deliver for Capture {
    fn deliver<'a>(
        &'a self,
        _kind: RecordKind,
        authorization: &'a Authorization,
        _settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        self.0.lock().unwrap().push(authorization.token.as_ref().map(|t| t.expose_secret().to_owned()));
        Box::pin(std::future::ready(Ok(Recorded {
            authorization_id: authorization.id.clone(),
            amount: authorization.amount,
            transaction_id: None,
            late: false,
            queued: false,
            actor_inactive: false,
        })))
    }

    fn dead(&self, authorization_id: &str, _error: AuthorityError) {
        self.1.lock().unwrap().push(authorization_id.to_owned());
    }
}

/// Neither the outbox file at `path` nor its write-ahead log holds `token` readable.
fn assert_no_readable(path: &std::path::Path, token: &str) {
    let raw = std::fs::read(path).unwrap();
    let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
    let hay = [raw, wal].concat();
    assert!(!hay.windows(token.len()).any(|w| w == token.as_bytes()), "no readable token in the outbox files");
}

/// A transfer approval `id` whose confirm needs `token`.
fn transfer_approval(id: &str, token: &str) -> Authorization {
    let intent = PaymentIntent::builder(
        "agent-1",
        "3",
        Rail::transfer(8453, "0x1111111111111111111111111111111111111111").unwrap(),
    )
    .recipient("0x2222222222222222222222222222222222222222")
    .build()
    .unwrap();
    Authorization {
        id: id.into(),
        token: Some(SecretString::from(token.to_owned())),
        amount: "3".parse().unwrap(),
        expires_at: conto::jiff::Timestamp::now(),
        limits: Default::default(),
        intent: Arc::new(intent),
        wallet: None,
    }
}

#[tokio::test]
async fn tokens_are_sealed_in_the_file_and_delivered_whole() {
    let dir = std::env::temp_dir().join(format!("conto-sealed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("outbox.db");
    let token = "ef".repeat(32);
    let authorization = transfer_approval("auth_1", &token);
    let record = QueuedRecord::new(RecordKind::Record, &authorization, &Settlement::default().reference("0xtx"));
    let sealer = || TokenSealer::new(&StaticKey::new([3; 32])).unwrap();
    let outbox = Outbox::open(&path).unwrap().seal_tokens(sealer());
    outbox.enqueue(&record).await.unwrap();
    drop(outbox);

    assert_no_readable(&path, &token);

    // After a restart, the same key opens it.
    let outbox = Outbox::open(&path).unwrap().seal_tokens(sealer());
    let capture = Capture::default();
    assert_eq!(outbox.deliver_due(&capture).await.unwrap(), 1);
    assert_eq!(capture.0.lock().unwrap()[0].as_deref(), Some(token.as_str()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without a seal, no token is stored at all: the file holds none, the process that queued the
/// record still delivers it with its token, and after a restart the record (which can no
/// longer be confirmed) is a dead record whose error says to seal tokens, never a confirm
/// without its token.
#[tokio::test]
async fn without_a_seal_tokens_are_held_in_memory_and_never_written() {
    let dir = std::env::temp_dir().join(format!("conto-unsealed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("outbox.db");
    let token = "ab".repeat(32);
    let record =
        |id: &str| QueuedRecord::new(RecordKind::Record, &transfer_approval(id, &token), &Settlement::default());
    let outbox = Outbox::open(&path).unwrap();
    outbox.enqueue(&record("auth_1")).await.unwrap();
    let capture = Capture::default();
    assert_eq!(outbox.deliver_due(&capture).await.unwrap(), 1);
    assert_eq!(capture.0.lock().unwrap()[0].as_deref(), Some(token.as_str()), "delivered whole by its process");
    outbox.enqueue(&record("auth_2")).await.unwrap();
    drop(outbox);

    assert_no_readable(&path, &token);

    // After a restart the second record cannot be confirmed: it is dead, and says why.
    let outbox = Outbox::open(&path).unwrap();
    let capture = Capture::default();
    assert_eq!(outbox.deliver_due(&capture).await.unwrap(), 0);
    assert!(capture.0.lock().unwrap().is_empty(), "never delivered without its token");
    assert_eq!(*capture.1.lock().unwrap(), vec!["auth_2".to_owned()], "reported as a record given up on");
    let dead = outbox.dead().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(format!("{dead:?}").contains("seal tokens"), "{dead:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process started without the key its records' tokens are sealed under (a missing secret
/// at boot) leaves them pending, not dead: the next start with the key delivers them whole,
/// at once. Once its approval has expired, such a record is given up on.
#[tokio::test]
async fn a_start_without_the_key_leaves_sealed_records_waiting_for_it() {
    let dir = std::env::temp_dir().join(format!("conto-sealed-wait-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("outbox.db");
    let token = "cd".repeat(32);
    let in_an_hour = |id: &str| {
        let mut a = transfer_approval(id, &token);
        a.expires_at = conto::jiff::Timestamp::now() + conto::jiff::SignedDuration::from_hours(1);
        a
    };
    let sealer = || TokenSealer::new(&StaticKey::new([5; 32])).unwrap();
    let outbox = Outbox::open(&path).unwrap().seal_tokens(sealer());
    outbox
        .enqueue(&QueuedRecord::new(RecordKind::Record, &in_an_hour("auth_1"), &Settlement::default()))
        .await
        .unwrap();
    // Expired: no confirm can succeed any more.
    outbox
        .enqueue(&QueuedRecord::new(RecordKind::Record, &transfer_approval("auth_2", &token), &Settlement::default()))
        .await
        .unwrap();
    drop(outbox);

    // Started without the key, twice: nothing delivered, nothing given up on but the expired one.
    for _ in 0..2 {
        let outbox = Outbox::open(&path).unwrap();
        let capture = Capture::default();
        assert_eq!(outbox.deliver_due(&capture).await.unwrap(), 0);
        assert!(capture.0.lock().unwrap().is_empty());
        let stats = outbox.stats().unwrap();
        assert_eq!((stats.pending, stats.dead), (1, 1), "{stats:?}");
        let dead = outbox.dead().unwrap();
        assert_eq!(dead[0].authorization_id, "auth_2");
    }

    // With the key: delivered whole, at once (not a minute later).
    let outbox = Outbox::open(&path).unwrap().seal_tokens(sealer());
    let capture = Capture::default();
    assert_eq!(outbox.deliver_due(&capture).await.unwrap(), 1);
    assert_eq!(capture.0.lock().unwrap()[0].as_deref(), Some(token.as_str()));
    assert_eq!(outbox.stats().unwrap().pending, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Never answers: a delivery pass on it is dropped half-way (a timeout around `flush`).
struct Hang;

impl Deliver for Hang {
    fn deliver<'a>(
        &'a self,
        _kind: RecordKind,
        _authorization: &'a Authorization,
        _settlement: &'a Settlement,
    ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
        Box::pin(std::future::pending())
    }

    fn dead(&self, _authorization_id: &str, _error: AuthorityError) {}
}

/// A delivery pass dropped half-way gives back every record it had claimed, not only the one
/// under way: the next pass delivers them all (a claim kept held its record from this process
/// until a restart).
#[tokio::test]
async fn a_delivery_pass_dropped_half_way_gives_every_record_back() {
    let outbox = Outbox::in_memory().unwrap();
    for id in ["auth_1", "auth_2", "auth_3"] {
        let record =
            QueuedRecord::new(RecordKind::Record, &transfer_approval(id, &"cd".repeat(32)), &Settlement::default());
        outbox.enqueue(&record).await.unwrap();
    }
    let pass = tokio::time::timeout(std::time::Duration::from_millis(50), outbox.deliver_due(&Hang)).await;
    assert!(pass.is_err(), "the pass hangs on its first record and is dropped");
    let capture = Capture::default();
    assert_eq!(outbox.deliver_due(&capture).await.unwrap(), 3);
    assert_eq!(outbox.stats().unwrap().delivered, 3);
    // Delivered records are kept a while (a repeat enqueue of one is ignored), then pruned.
    assert_eq!(outbox.prune_delivered(std::time::Duration::from_secs(3600)).unwrap(), 0);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await; // aged from its delivery
    assert_eq!(outbox.prune_delivered(std::time::Duration::ZERO).unwrap(), 3);
    assert_eq!(outbox.stats().unwrap(), conto::sink::OutboxStats::default());
}
