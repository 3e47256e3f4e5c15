//! The files conto-store writes: one process owns each, and only its owner can read them.

use conto::DurableEngine;
use conto_core::{Engine, PolicySet};
use conto_store::{Outbox, OutboxError};

const POLICIES: &str = r#"{"agents": ["agent-1"], "policies": [{"name": "cap", "rules": [
    {"ruleType": "MAX_AMOUNT", "operator": "LTE", "value": "10", "action": "ALLOW"}]}]}"#;

fn dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("conto-files-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn engine(path: &std::path::Path) -> Result<Engine, conto_core::journal::JournalError> {
    Engine::builder().policies(PolicySet::from_json(POLICIES).unwrap()).open(path)
}

/// A second process on a ledger journal would keep a ledger of its own in the same file (each
/// enforcing every limit alone); it is refused while the first holds the file, and the file
/// opens again once the first is gone.
#[test]
fn a_ledger_journal_has_one_owner() {
    let path = dir("journal").join("ledger.db");
    let first = engine(&path).unwrap();
    let err = engine(&path).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()), "names the file: {err}");
    drop(first);
    engine(&path).expect("free once its owner is gone");
}

/// An outbox file has one owner too: two would each hold their own unsealed tokens, and each
/// declare the other's records dead.
#[test]
fn an_outbox_file_has_one_owner() {
    let path = dir("outbox").join("outbox.db");
    let first = Outbox::open(&path).unwrap();
    let err = Outbox::open(&path).unwrap_err();
    assert!(matches!(&err, OutboxError::InUse { path: p } if p.contains("outbox.db")), "{err:?}");
    // A file that is the journal's is refused by the outbox while the journal owns it.
    let ledger = path.with_file_name("ledger.db");
    let _engine = engine(&ledger).unwrap();
    assert!(matches!(Outbox::open(&ledger), Err(OutboxError::InUse { .. })));
    drop(first);
    Outbox::open(&path).expect("free once its owner is gone");
}

/// The journal and the outbox hold the spend history: created readable by their owner only,
/// and a file left wider is narrowed when opened.
#[cfg(unix)]
#[test]
fn files_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = dir("modes");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let (journal, outbox) = (dir.join("ledger.db"), dir.join("outbox.db"));
    drop(engine(&journal).unwrap());
    drop(Outbox::open(&outbox).unwrap());
    assert_eq!(mode(&journal), 0o600);
    assert_eq!(mode(&outbox), 0o600);
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o644)).unwrap();
    drop(engine(&journal).unwrap());
    assert_eq!(mode(&journal), 0o600, "narrowed");
}

/// A file that is not a database is an error that names it, never a fresh ledger.
#[test]
fn a_file_that_is_not_a_database_is_refused_by_name() {
    let path = dir("garbage").join("ledger.db");
    std::fs::write(&path, b"this is not a database, it is a shopping list\n".repeat(100)).unwrap();
    let err = engine(&path).unwrap_err();
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert!(err.to_string().contains("not a database"), "{err}");
    let err = Outbox::open(&path).unwrap_err();
    assert!(err.to_string().contains("not a database") && err.to_string().contains("ledger.db"), "{err}");
}

/// The outbox given as the ledger's path (or the other way round, or another application's
/// database) is refused, never given a table of ours and read as an empty history.
#[test]
fn another_files_database_is_refused_not_read_as_empty() {
    let dir = dir("foreign");
    let (journal, outbox) = (dir.join("ledger.db"), dir.join("outbox.db"));
    drop(engine(&journal).unwrap());
    drop(Outbox::open(&outbox).unwrap());
    let err = engine(&outbox).unwrap_err();
    assert!(err.to_string().contains("not a conto-rs ledger journal"), "{err}");
    let err = Outbox::open(&journal).unwrap_err();
    assert!(err.to_string().contains("not a conto-rs outbox"), "{err}");
    // Another application's database, unmarked: refused by what it holds.
    let other = dir.join("app.db");
    rusqlite::Connection::open(&other).unwrap().execute_batch("CREATE TABLE orders (id INTEGER);").unwrap();
    let err = engine(&other).unwrap_err();
    assert!(err.to_string().contains("orders"), "{err}");
    // Each still opens as itself.
    drop(engine(&journal).unwrap());
    drop(Outbox::open(&outbox).unwrap());
}

/// A row whose job is not text (a hand edit, a bit flipped on disk) behind a good one: the pass
/// marks it dead and delivers the good one. (Read as the pass's error, it ended the pass while
/// the good row's claim was dropped under the claim set's own lock: the delivery hung, and the
/// outbox with it.)
#[test]
fn an_unreadable_row_is_marked_dead_and_the_others_are_delivered() {
    use conto_core::sink::{Deliver, RecordKind, RecordSink};
    use conto_core::{AuthorityError, Authorization, BoxFuture, Conto, PaymentIntent, Rail, Recorded, Settlement};

    struct Records(std::sync::Mutex<Vec<String>>, std::sync::Mutex<Vec<String>>);
    impl Deliver for Records {
        fn deliver<'a>(
            &'a self,
            _: RecordKind,
            a: &'a Authorization,
            s: &'a Settlement,
        ) -> BoxFuture<'a, Result<Recorded, AuthorityError>> {
            self.0.lock().unwrap().push(a.id.clone());
            let recorded = Recorded {
                authorization_id: a.id.clone(),
                amount: s.amount.unwrap_or(a.amount),
                transaction_id: None,
                late: false,
                queued: false,
                actor_inactive: false,
            };
            Box::pin(async move { Ok(recorded) })
        }
        fn dead(&self, authorization_id: &str, _: AuthorityError) {
            self.1.lock().unwrap().push(authorization_id.to_owned());
        }
    }

    let path = dir("unreadable").join("outbox.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let good = rt.block_on(async {
        let conto = Conto::new(Engine::new(PolicySet::from_json(POLICIES).unwrap()));
        let intent = PaymentIntent::builder("agent-1", "1", Rail::card("Acme").unwrap()).build().unwrap();
        let approval = conto.authorize(intent).await.unwrap();
        let record = approval.record_for(&Settlement::default());
        std::mem::forget(approval); // the test owns delivery here
        record
    });
    let outbox = Outbox::open(&path).unwrap();
    rt.block_on(outbox.enqueue(&good)).unwrap();
    drop(outbox);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("INSERT INTO outbox (authorization_id, kind, job, next_attempt_at) VALUES ('auth_bad', 'record', X'FF00', 0)", [])
        .unwrap();

    let outbox = Outbox::open(&path).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let pass = outbox.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let records = Records(Default::default(), Default::default());
        let delivered = rt.block_on(pass.deliver_due(&records));
        let _ = done.send((delivered.map_err(|e| e.to_string()), records));
    });
    let (delivered, records) =
        finished.recv_timeout(std::time::Duration::from_secs(30)).expect("the delivery pass returned (no deadlock)");
    assert_eq!(delivered, Ok(1));
    assert_eq!(*records.0.lock().unwrap(), vec![good.authorization_id.clone()]);
    assert_eq!(*records.1.lock().unwrap(), vec!["auth_bad".to_owned()]);
    let stats = outbox.stats().unwrap();
    assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 1, 1));
}
