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
struct Capture(Mutex<Vec<Option<String>>>);

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

    fn dead(&self, _authorization_id: &str, _error: AuthorityError) {}
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
    let dead = outbox.dead().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(format!("{dead:?}").contains("seal tokens"), "{dead:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
