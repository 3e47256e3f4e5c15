//! SQLite persistence: agents, SDK keys, policies, approvals, spends and idempotency keys, so a
//! restart loses nothing. Keys and approval tokens are stored as SHA-256 hashes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::path::Path;
use std::sync::Arc;

use conto_core::{Authorization, PaymentIntent, Rail};
use secrecy::ExposeSecret;

use conto_wire::org::{AgentWallet, Counterparty, Policy};
use conto_wire::sdk::BudgetRequest;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A stored payment request: (status, approval request id, reasons, violations).
pub type PaymentRequestRow = (String, Option<String>, Vec<String>, Vec<conto_core::Violation>);

fn to_json(doc: &impl Serialize) -> String {
    serde_json::to_string(doc).unwrap_or_default()
}
use sha2::{Digest, Sha256};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("conto-local storage: {0}")]
pub struct StoreError(#[from] rusqlite::Error);

impl StoreError {
    /// Whether the database is locked by another connection (another process owns it).
    pub(crate) fn is_busy(&self) -> bool {
        matches!(
            self.0.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        )
    }
}

/// The hex SHA-256 of a secret.
pub(crate) fn hash(secret: &str) -> String {
    lower_hex(&Sha256::digest(secret.as_bytes()))
}

/// How many tokens one approval may have been handed out under: the first, and one per restart
/// that lost it from memory before it was asked for again.
pub(crate) const MAX_TOKENS: usize = 8;

/// Whether Conto's wire confirms an approval on `rail` with its token (transfers and cards; x402
/// and MPP records carry none).
pub(crate) fn confirmed_with_token(rail: &Rail) -> bool {
    matches!(rail, Rail::Transfer { .. } | Rail::Card { .. })
}

/// A fresh approval token for an approval on `rail`, when Conto's wire confirms it with one
/// ([`confirmed_with_token`]): 32 random bytes as 64 lower-case hex digits. The server mints
/// the tokens it checks (the embedded engine issues none: in process, the authorization value
/// is the capability).
pub(crate) fn issue_token(rail: &Rail) -> Option<secrecy::SecretString> {
    confirmed_with_token(rail).then(|| crate::random_hex(32).into())
}

/// Bytes as lower-case hex.
pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

pub(crate) struct Store {
    conn: Connection,
    /// Live SDK keys already looked up, by hash: the key check of every request without a
    /// query. Emptied by every write to `sdk_keys` or `agents`; airtight because this
    /// process owns the database (EXCLUSIVE locking: nothing else writes it). Misses are not
    /// kept, so unknown keys cannot grow it.
    keys: RefCell<HashMap<String, KeyRecord>>,
    /// What the open batch changed outside the database (an engine's reservation), undone if
    /// its writes do not commit.
    undo: RefCell<Vec<Undo>>,
    /// The row of every remembered answer, by its key's slot (see [`slot`]): the table's only
    /// index, built on open. A new key is known new without a query, and an answer is appended
    /// to the table with no index beside it to update. A row is read only when it holds the
    /// same agent, endpoint and key, so an entry whose write did not commit (or two keys in one
    /// slot) never answers for another key.
    slots: RefCell<HashMap<i64, i64>>,
    /// The hash key of [`slot`].
    slot_keys: RandomState,
    /// Answers remembered since old ones were last forgotten.
    remembered: std::cell::Cell<usize>,
    /// Approvals written since lapsed ones were last forgotten.
    approvals_added: std::cell::Cell<usize>,
}

/// How long an idempotency key's answer is remembered: a day, the floor peers promise (Stripe
/// keeps keys at least 24 hours; Conto's docs name no window). A repeat after that is a new
/// request.
pub(crate) const ANSWER_RETENTION: conto_core::jiff::SignedDuration = conto_core::jiff::SignedDuration::from_hours(24);

/// Whether an answer remembered at `created` (as stored) still answers at `now`: within
/// [`ANSWER_RETENTION`]; one whose time does not read does not.
fn answers_at(created: &str, now: conto_core::jiff::Timestamp) -> bool {
    let cutoff = now.saturating_sub(ANSWER_RETENTION).unwrap_or(now);
    created.parse::<conto_core::jiff::Timestamp>().is_ok_and(|at| at >= cutoff)
}

/// Old answers are forgotten every this many remembered ones, up to twice as many at a time:
/// forgetting keeps pace with remembering, a little at a time, and the table and its map in
/// memory hold about a day of answers.
const FORGET_EVERY: usize = 1024;

/// How long an approval's row is kept after it lapses: a late confirm is told `EXPIRED` for a
/// week, then that no such approval exists. A live approval's row stays while it can settle.
pub(crate) const APPROVAL_RETENTION: conto_core::jiff::SignedDuration =
    conto_core::jiff::SignedDuration::from_hours(24 * 7);

/// Where the map keeps an idempotency key's row: a keyed hash (SipHash under this process's own
/// random key, [`RandomState`]) of the agent, the endpoint and the key. The map lives only in
/// memory and is rebuilt on open, so the key need not outlive the process; not knowing it, a
/// caller cannot choose two keys that share a slot (which would make the later one's answer
/// hide the earlier one's).
fn slot(keys: &RandomState, agent: &str, endpoint: &str, key: &str) -> i64 {
    keys.hash_one((agent, endpoint, key)) as i64
}

/// Moves the answers of an earlier version's `idempotency` table (keyed by the agent, endpoint
/// and key, with an index beside it) into `answers`, then drops it.
fn migrate_idempotency(conn: &Connection) -> Result<(), StoreError> {
    let old: bool = conn
        .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'idempotency'", [], |_| Ok(()))
        .optional()?
        .is_some();
    if !old {
        return Ok(());
    }
    // In time order, as answers are appended (what forgetting the old ones relies on).
    conn.execute_batch(
        "BEGIN;
         INSERT INTO answers (agent_id, endpoint, key, request_hash, status, response, created_at)
             SELECT agent_id, endpoint, key, request_hash, status, response, created_at FROM idempotency
             ORDER BY created_at;
         DROP TABLE idempotency;
         COMMIT;",
    )?;
    Ok(())
}

/// An in-memory effect to undo when a batch's writes do not commit.
type Undo = Box<dyn FnOnce() + Send>;

/// An SDK key's record.
#[derive(Clone)]
pub(crate) struct KeyRecord {
    pub agent_id: String,
    pub scopes: Vec<String>,
    pub expires_at: String,
    pub key_type: String,
}

impl KeyRecord {
    /// Whether the key has expired (`401 EXPIRED_KEY` wherever it is used).
    pub fn expired(&self) -> bool {
        lapsed(&self.expires_at)
    }
}

/// Whether a stored expiry time has passed (an unreadable one never has: the row is kept).
fn lapsed(expires_at: &str) -> bool {
    expires_at.parse::<conto_core::jiff::Timestamp>().is_ok_and(|t| t <= conto_core::jiff::Timestamp::now())
}

/// A live or ended approval.
pub(crate) struct ApprovalRecord {
    pub agent_id: String,
    pub token_hash: Option<String>,
    pub intent: String,
    pub amount: String,
    pub expires_at: String,
    pub state: String,
}

impl ApprovalRecord {
    /// Whether it has lapsed.
    pub fn expired(&self) -> bool {
        lapsed(&self.expires_at)
    }

    /// The row for a fresh approval. Transfer and card approvals get a token, so its hash is
    /// kept (a transfer's confirm must show it; a card's confirm is checked against it when it
    /// sends one); x402 and MPP records carry no token on Conto's wire.
    pub fn live(agent_id: &str, intent_json: String, a: &Authorization) -> Self {
        let tokened = confirmed_with_token(&a.intent.rail);
        Self {
            agent_id: agent_id.to_owned(),
            token_hash: a.token.as_ref().filter(|_| tokened).map(|t| hash(t.expose_secret())),
            intent: intent_json,
            amount: a.amount.to_string(),
            expires_at: crate::iso(a.expires_at),
            state: "live".into(),
        }
    }

    /// The authorization this row stands for (without its token).
    pub fn authorization(&self, id: &str) -> Result<Authorization, String> {
        let intent: PaymentIntent = serde_json::from_str(&self.intent).map_err(|e| e.to_string())?;
        Ok(Authorization {
            id: id.to_owned(),
            token: None,
            amount: self.amount.parse().map_err(|e: conto_core::AmountError| e.to_string())?,
            expires_at: self.expires_at.parse().map_err(|e: conto_core::jiff::Error| e.to_string())?,
            limits: Default::default(),
            intent: Arc::new(intent),
            wallet: None,
        })
    }
}

/// A recorded spend, as the agent's spend reads list it.
#[derive(Debug, Clone)]
pub(crate) struct SpendRow {
    pub(crate) authorization_id: String,
    pub(crate) intent: String,
    pub(crate) amount: String,
    pub(crate) reference: Option<String>,
    pub(crate) transaction_id: String,
    pub(crate) recorded_at: String,
}

/// An agent: id, name, status (`ACTIVE` or `PAUSED`), creation time.
pub(crate) struct AgentRow {
    pub id: String,
    pub name: String,
    pub status: String,
    pub created_at: String,
    pub description: Option<String>,
}

/// The approval-request query with its columns in [`request_row`]'s order, then `$rest`.
macro_rules! select_requests {
    ($rest:literal) => {
        concat!(
            "SELECT id, agent_id, intent, status, approval_id, approval_token, expires_at, reasons FROM approval_requests ",
            $rest
        )
    };
}

/// An approval request from `id, agent_id, intent, status, approval_id, approval_token,
/// expires_at, reasons` (in that order).
fn request_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RequestRecord> {
    Ok(RequestRecord {
        id: r.get(0)?,
        agent_id: r.get(1)?,
        intent: r.get(2)?,
        status: r.get(3)?,
        approval_id: r.get(4)?,
        approval_token: r.get(5)?,
        expires_at: r.get(6)?,
        reasons: r.get(7)?,
    })
}

/// The query a [`SpendRow`] is read from, to which a caller adds its filter and order.
const SPEND_ROW: &str = "SELECT authorization_id, intent, amount, reference, transaction_id, recorded_at FROM spends";

fn spend_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SpendRow> {
    Ok(SpendRow {
        authorization_id: r.get(0)?,
        intent: r.get(1)?,
        amount: r.get(2)?,
        reference: r.get(3)?,
        transaction_id: r.get(4)?,
        recorded_at: r.get(5)?,
    })
}

/// An approval from `agent_id, token_hash, intent, amount, expires_at, state` (in that order).
fn approval_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApprovalRecord> {
    Ok(ApprovalRecord {
        agent_id: r.get(0)?,
        token_hash: r.get(1)?,
        intent: r.get(2)?,
        amount: r.get(3)?,
        expires_at: r.get(4)?,
        state: r.get(5)?,
    })
}

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok(AgentRow { id: r.get(0)?, name: r.get(1)?, status: r.get(2)?, created_at: r.get(3)?, description: r.get(4)? })
}

/// An SDK key's metadata (never the key itself, which is stored hashed).
pub(crate) struct KeyRow {
    pub agent_id: String,
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub key_type: String,
    pub scopes: Vec<String>,
    pub expires_at: String,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl KeyRow {
    /// The key as a list shows it: everything but the key itself.
    pub fn listed(self) -> conto_wire::org::SdkKey {
        conto_wire::org::SdkKey {
            id: Some(self.id),
            agent_id: Some(self.agent_id),
            name: Some(self.name),
            key_prefix: Some(self.prefix),
            key_type: Some(self.key_type),
            scopes: Some(self.scopes),
            expires_at: Some(self.expires_at),
            created_at: Some(self.created_at),
            revoked_at: self.revoked_at,
            ..conto_wire::org::SdkKey::default()
        }
    }
}

/// An x402/MPP payment recorded before, found by its key.
pub(crate) struct RecordedPayment {
    /// What was recorded (a hash of the payment as sent); none for one recorded by an earlier
    /// version, whose repeat cannot be told from a different payment.
    pub fingerprint: Option<String>,
    /// The answer it got, as JSON (none from an earlier version).
    pub answer: Option<String>,
}

fn add_column(conn: &Connection, table: &str, column: &str, decl: &str) -> Result<(), StoreError> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let exists = stmt.query_map([], |r| r.get::<_, String>(1))?.any(|name| name.is_ok_and(|n| n == column));
    if !exists {
        conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
    }
    Ok(())
}

/// A request for human approval.
pub(crate) struct RequestRecord {
    pub id: String,
    pub agent_id: String,
    pub intent: String,
    pub status: String,
    pub approval_id: Option<String>,
    pub approval_token: Option<String>,
    pub expires_at: String,
    /// Why it ended as it did, as a JSON array of strings, when it was refused (by the human,
    /// or by the re-check after the human approved).
    pub reasons: Option<String>,
}

/// The server owns its file: `EXCLUSIVE` locking takes the file lock once and keeps it (no
/// lock/unlock system calls per statement, no shared-memory index), and a second process on
/// the same file is refused instead of splitting the ledger.
// Spends are numbered through an index (`spends_by_seq`), not a scan of every spend, and live
// approvals (what a record without an authorization id matches) are found through a partial
// index, not a scan of every approval; both are added to earlier versions' files on open.
const SCHEMA: &str = "
PRAGMA locking_mode = EXCLUSIVE;
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS agents (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sdk_keys (id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL, name TEXT NOT NULL, key_type TEXT NOT NULL, scopes TEXT NOT NULL,
    expires_at TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS policies (id TEXT PRIMARY KEY, doc TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS approvals (id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, token_hash TEXT,
    intent TEXT NOT NULL, amount TEXT NOT NULL, expires_at TEXT NOT NULL, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS spends (authorization_id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, intent TEXT NOT NULL,
    amount TEXT NOT NULL, reference TEXT, transaction_id TEXT NOT NULL, recorded_at TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS approval_requests (id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, intent TEXT NOT NULL,
    status TEXT NOT NULL, approval_id TEXT, approval_token TEXT, expires_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS payment_requests (id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, status TEXT NOT NULL,
    approval_request_id TEXT, reasons TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counterparties (id TEXT PRIMARY KEY, doc TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS agent_wallets (agent_id TEXT NOT NULL, wallet_id TEXT NOT NULL, doc TEXT NOT NULL,
    PRIMARY KEY (agent_id, wallet_id));
CREATE TABLE IF NOT EXISTS recorded_payments (agent_id TEXT NOT NULL, payment_key TEXT NOT NULL,
    authorization_id TEXT NOT NULL, PRIMARY KEY (agent_id, payment_key));
CREATE TABLE IF NOT EXISTS answers (id INTEGER PRIMARY KEY, agent_id TEXT NOT NULL, endpoint TEXT NOT NULL,
    key TEXT NOT NULL, request_hash TEXT NOT NULL, status INTEGER NOT NULL, response TEXT NOT NULL,
    created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS budget_requests (id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, doc TEXT NOT NULL,
    seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS retired_agents (id TEXT PRIMARY KEY, retired_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS budget_requests_by_agent ON budget_requests (agent_id, seq);
CREATE INDEX IF NOT EXISTS spends_by_seq ON spends (seq);
CREATE INDEX IF NOT EXISTS spends_by_agent_time ON spends (agent_id, recorded_at);
CREATE INDEX IF NOT EXISTS live_approvals ON approvals (agent_id) WHERE state = 'live';
CREATE INDEX IF NOT EXISTS approval_requests_by_agent ON approval_requests (agent_id);
";

/// An open [`Store::batch`]: released (committed) if the batch unwinds, so a panic in a
/// handler never leaves every later write inside a transaction that never commits.
struct Open<'a>(&'a Connection);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let _ = self.0.execute_batch("RELEASE batch");
    }
}

impl Store {
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let conn = match path {
            Some(p) => Connection::open(p)?,
            None => Connection::open_in_memory()?,
        };
        // A file another server owns is refused after a short wait (a restart may overlap the
        // previous server's last moments), not after SQLite's default 5 s.
        conn.busy_timeout(std::time::Duration::from_secs(1))?;
        conn.execute_batch(SCHEMA)?;
        // Columns added after the first release: agent status, key revocation, record replays.
        add_column(&conn, "agents", "status", "TEXT NOT NULL DEFAULT 'ACTIVE'")?;
        add_column(&conn, "agents", "description", "TEXT")?;
        add_column(&conn, "sdk_keys", "revoked_at", "TEXT")?;
        // What a recorded x402/MPP payment was and what it was answered, to replay its repeat.
        add_column(&conn, "recorded_payments", "fingerprint", "TEXT")?;
        add_column(&conn, "approval_requests", "reasons", "TEXT")?;
        add_column(&conn, "recorded_payments", "answer", "TEXT")?;
        // The human's decision on an approval request (`approve`, `reject`), so that the same
        // decision sent again (a retry after a lost answer) gets the first answer.
        add_column(&conn, "approval_requests", "decision", "TEXT")?;
        // A denied payment request's broken rules, shown again by its status read.
        add_column(&conn, "payment_requests", "violations", "TEXT")?;
        // Earlier versions deleted an agent without a trace: every id their rows still name
        // and no agent holds is retired, so it is never handed to a new agent with that history.
        conn.execute(
            "INSERT OR IGNORE INTO retired_agents (id, retired_at)
             SELECT agent_id, '' FROM (SELECT agent_id FROM sdk_keys UNION SELECT agent_id FROM spends
                 UNION SELECT agent_id FROM approvals UNION SELECT agent_id FROM approval_requests
                 UNION SELECT agent_id FROM payment_requests UNION SELECT agent_id FROM agent_wallets
                 UNION SELECT agent_id FROM budget_requests)
             WHERE agent_id NOT IN (SELECT id FROM agents)",
            [],
        )?;
        // Earlier versions kept approved requests' tokens in clear: scrub them.
        conn.execute("UPDATE approval_requests SET approval_token = NULL WHERE approval_token IS NOT NULL", [])?;
        // Every statement is prepared once and reused (parsing SQL was a tenth of a decision).
        conn.set_prepared_statement_cache_capacity(64);
        migrate_idempotency(&conn)?;
        let store = Self {
            conn,
            keys: RefCell::default(),
            undo: RefCell::default(),
            slots: RefCell::default(),
            slot_keys: RandomState::new(),
            remembered: Default::default(),
            approvals_added: Default::default(),
        };
        store.forget_old_approvals(conto_core::jiff::Timestamp::now())?;
        // The old answers go first; the map is built from what is left.
        while store.forget_old_answers(conto_core::jiff::Timestamp::now(), 4 * FORGET_EVERY)? == 4 * FORGET_EVERY {}
        let slots = store
            .conn
            .prepare("SELECT id, agent_id, endpoint, key FROM answers ORDER BY id")?
            .query_map([], |r| {
                let (agent, endpoint, key): (String, String, String) = (r.get(1)?, r.get(2)?, r.get(3)?);
                Ok((slot(&store.slot_keys, &agent, &endpoint, &key), r.get(0)?))
            })?
            .collect::<Result<_, _>>()?;
        *store.slots.borrow_mut() = slots;
        Ok(store)
    }

    pub fn add_agent(&self, id: &str, name: &str, now: &str) -> Result<(), StoreError> {
        self.keys.borrow_mut().clear();
        self.conn
            .prepare_cached("INSERT INTO agents (id, name, created_at) VALUES (?1, ?2, ?3)")?
            .execute(params![id, name, now])?;
        Ok(())
    }

    pub fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, name, status, created_at, description FROM agents ORDER BY created_at, id")?;
        let rows = stmt.query_map([], agent_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn agent(&self, id: &str) -> Result<Option<AgentRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT id, name, status, created_at, description FROM agents WHERE id = ?1")?
            .query_row([id], agent_row)
            .optional()?)
    }

    /// Renames the agent and/or sets what it is for (a field left `None` is kept).
    pub fn describe_agent(&self, id: &str, name: Option<&str>, description: Option<&str>) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE agents SET name = COALESCE(?2, name), description = COALESCE(?3, description) WHERE id = ?1",
            )?
            .execute(params![id, name, description])?
            > 0)
    }

    pub fn set_agent_status(&self, id: &str, status: &str) -> Result<bool, StoreError> {
        self.keys.borrow_mut().clear();
        Ok(self.conn.prepare_cached("UPDATE agents SET status = ?2 WHERE id = ?1")?.execute(params![id, status])? > 0)
    }

    /// Deletes the agent and revokes its keys; its spend history stays, under an id that is
    /// retired: never given to another agent.
    pub fn delete_agent(&self, id: &str, now: &str) -> Result<bool, StoreError> {
        self.keys.borrow_mut().clear();
        self.all_or_nothing(|| {
            self.conn
                .prepare_cached("UPDATE sdk_keys SET revoked_at = ?2 WHERE agent_id = ?1 AND revoked_at IS NULL")?
                .execute(params![id, now])?;
            if self.conn.prepare_cached("DELETE FROM agents WHERE id = ?1")?.execute([id])? == 0 {
                return Ok(false);
            }
            self.conn
                .prepare_cached("INSERT OR IGNORE INTO retired_agents (id, retired_at) VALUES (?1, ?2)")?
                .execute(params![id, now])?;
            Ok(true)
        })
    }

    /// Whether `id` belonged to an agent that was deleted (an id is never reused: its history,
    /// keys and approvals stay under it).
    pub fn agent_retired(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM retired_agents WHERE id = ?1")?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// The SDK keys of `agent_id`, or of every agent (by agent, as [`Store::agents`] lists
    /// them), oldest first.
    pub fn keys_of(&self, agent_id: Option<&str>) -> Result<Vec<KeyRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT k.id, k.name, k.key_prefix, k.key_type, k.scopes, k.expires_at, k.created_at, k.revoked_at,
                    k.agent_id
             FROM sdk_keys k JOIN agents a ON a.id = k.agent_id
             WHERE ?1 IS NULL OR k.agent_id = ?1
             ORDER BY a.created_at, a.id, k.created_at, k.id",
        )?;
        let rows = stmt.query_map([agent_id], |r| {
            let scopes: String = r.get(4)?;
            Ok(KeyRow {
                agent_id: r.get(8)?,
                id: r.get(0)?,
                name: r.get(1)?,
                prefix: r.get(2)?,
                key_type: r.get(3)?,
                scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                expires_at: r.get(5)?,
                created_at: r.get(6)?,
                revoked_at: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn revoke_key(&self, agent_id: &str, key_id: &str, now: &str) -> Result<bool, StoreError> {
        self.keys.borrow_mut().clear();
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE sdk_keys SET revoked_at = COALESCE(revoked_at, ?3) WHERE agent_id = ?1 AND id = ?2",
            )?
            .execute(params![agent_id, key_id, now])?
            > 0)
    }

    pub fn agent_exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM agents WHERE id = ?1")?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add_key(
        &self,
        id: &str,
        agent_id: &str,
        key: &str,
        name: &str,
        key_type: &str,
        scopes: &[String],
        expires_at: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.keys.borrow_mut().clear();
        self.conn.prepare_cached(
            "INSERT INTO sdk_keys (id, agent_id, key_hash, key_prefix, name, key_type, scopes, expires_at, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")?.execute(
            params![id, agent_id, hash(key), &key[..20], name, key_type, scopes.join(" "), expires_at, now],
        )?;
        Ok(())
    }

    pub fn key(&self, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        let hashed = hash(key);
        if let Some(record) = self.keys.borrow().get(&hashed) {
            return Ok(Some(record.clone()));
        }
        let found = self
            .conn
            .prepare_cached(
                "SELECT agent_id, scopes, expires_at, key_type FROM sdk_keys WHERE key_hash = ?1 AND revoked_at IS NULL")?.query_row(
                [&hashed],
                |r| {
                    let scopes: String = r.get(1)?;
                    Ok(KeyRecord {
                        agent_id: r.get(0)?,
                        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
                        expires_at: r.get(2)?,
                        key_type: r.get(3)?,
                    })
                },
            )
            .optional()?;
        if let Some(record) = &found {
            self.keys.borrow_mut().insert(hashed, record.clone());
        }
        Ok(found)
    }

    pub fn put_policy(&self, id: &str, doc: &Policy) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO policies (id, doc, seq) VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM policies))
             ON CONFLICT(id) DO UPDATE SET doc = excluded.doc",
            )?
            .execute(params![id, to_json(doc)])?;
        Ok(())
    }

    pub fn delete_policy(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn.prepare_cached("DELETE FROM policies WHERE id = ?1")?.execute([id])? > 0)
    }

    pub fn policies(&self) -> Result<Vec<Policy>, StoreError> {
        self.docs("SELECT doc FROM policies ORDER BY seq", [])
    }

    /// Documents stored as JSON; a document that does not read back is an error, never skipped
    /// (a lost policy would loosen the limits).
    fn docs<T: DeserializeOwned>(&self, sql: &str, params: impl rusqlite::Params) -> Result<Vec<T>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(params, |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        rows.iter()
            .map(|text| {
                serde_json::from_str(text).map_err(|e| {
                    StoreError(rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
                })
            })
            .collect()
    }

    pub fn add_approval(&self, id: &str, a: &ApprovalRecord) -> Result<(), StoreError> {
        self.conn.prepare_cached(
            "INSERT INTO approvals (id, agent_id, token_hash, intent, amount, expires_at, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?.execute(
            params![id, a.agent_id, a.token_hash, a.intent, a.amount, a.expires_at, a.state],
        )?;
        self.approvals_added.set(self.approvals_added.get() + 1);
        if self.approvals_added.get() >= FORGET_EVERY {
            self.approvals_added.set(0);
            // Housekeeping: a failure here is logged, never the approval's.
            if let Err(e) = self.forget_old_approvals(conto_core::jiff::Timestamp::now()) {
                tracing::warn!(error = %e, "conto_local.store: lapsed approvals could not be forgotten");
            }
        }
        Ok(())
    }

    /// Forgets approvals that lapsed more than [`APPROVAL_RETENTION`] before `now`, settled or
    /// not; says how many. The engine's ids sort by the second they were made in
    /// ([`conto_core::Engine::first_id_at`]), so the old ones are a range of the primary key and
    /// nothing younger is read; expiry times are written in UTC (`iso`), so they compare as text (a fraction of a
    /// second either side of the cutoff does not matter at a week). An id of another form is
    /// never forgotten.
    pub fn forget_old_approvals(&self, now: conto_core::jiff::Timestamp) -> Result<usize, StoreError> {
        let cutoff = now.saturating_sub(APPROVAL_RETENTION).unwrap_or(now);
        let made_before = conto_core::Engine::first_id_at(cutoff);
        Ok(self
            .conn
            .prepare_cached("DELETE FROM approvals WHERE id >= 'auth_' AND id < ?1 AND expires_at < ?2")?
            .execute(params![made_before, crate::iso(cutoff)])?)
    }

    pub fn approval(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT agent_id, token_hash, intent, amount, expires_at, state FROM approvals WHERE id = ?1",
            )?
            .query_row([id], approval_row)
            .optional()?)
    }

    /// Adds `token_hash` to the hashes live approval `id` accepts (a token issued again after
    /// a restart lost the first, which still confirms if it reached its caller): whether it
    /// was added. At most [`MAX_TOKENS`] per approval.
    pub fn add_token_hash(&self, id: &str, token_hash: &str) -> Result<bool, StoreError> {
        let Some(row) = self.approval(id)? else { return Ok(false) };
        let Some(hashes) = row.token_hash.filter(|h| h.split(',').count() < MAX_TOKENS) else { return Ok(false) };
        self.conn
            .prepare_cached("UPDATE approvals SET token_hash = ?2 WHERE id = ?1")?
            .execute(params![id, format!("{hashes},{token_hash}")])?;
        Ok(true)
    }

    /// Marks a live approval released: settled with nothing (an MPP session closed unspent).
    /// It is no longer restored or counted as held.
    pub fn release_approval(&self, id: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE approvals SET state = 'released' WHERE id = ?1 AND state = 'live'")?
            .execute([id])?;
        Ok(())
    }

    /// Live approvals, of one agent or of all, read through the index of live approvals (not
    /// every approval ever made).
    pub fn live_approvals(&self, agent_id: Option<&str>) -> Result<Vec<(String, ApprovalRecord)>, StoreError> {
        const COLUMNS: &str = "SELECT agent_id, token_hash, intent, amount, expires_at, state, id FROM approvals";
        let (mut stmt, params) = match agent_id {
            Some(agent) => {
                (self.conn.prepare_cached(&format!("{COLUMNS} WHERE state = 'live' AND agent_id = ?1"))?, vec![agent])
            }
            None => (self.conn.prepare_cached(&format!("{COLUMNS} WHERE state = 'live'"))?, vec![]),
        };
        let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| Ok((r.get(6)?, approval_row(r)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A payment recorded before by `agent` under `key` (its `paymentId`, or its tx hash).
    pub fn recorded_payment(&self, agent: &str, key: &str) -> Result<Option<RecordedPayment>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT fingerprint, answer FROM recorded_payments WHERE agent_id = ?1 AND payment_key = ?2",
            )?
            .query_row([agent, key], |r| Ok(RecordedPayment { fingerprint: r.get(0)?, answer: r.get(1)? }))
            .optional()?)
    }

    /// Remembers that a payment was recorded against `authorization_id`, with its
    /// `fingerprint` (what was recorded) and the `answer` it got, for a repeat to be replayed.
    pub fn remember_payment(
        &self,
        agent: &str,
        key: &str,
        authorization_id: &str,
        fingerprint: &str,
        answer: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO recorded_payments (agent_id, payment_key, authorization_id, fingerprint, answer) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![agent, key, authorization_id, fingerprint, answer])?;
        Ok(())
    }

    /// Stores a payment request's outcome (`POST /api/sdk/payments/request`).
    pub fn put_payment_request(
        &self,
        id: &str,
        agent_id: &str,
        status: &str,
        approval_request_id: Option<&str>,
        (reasons, violations): (&[String], &[conto_core::Violation]),
        now: &str,
    ) -> Result<(), StoreError> {
        let reasons = serde_json::to_string(reasons).unwrap_or_default();
        let violations = (!violations.is_empty()).then(|| to_json(&violations));
        self.conn.prepare_cached(
            "INSERT OR REPLACE INTO payment_requests (id, agent_id, status, approval_request_id, reasons, violations, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?.execute(
            params![id, agent_id, status, approval_request_id, reasons, violations, now],
        )?;
        Ok(())
    }

    /// A payment request of `agent_id`.
    pub fn payment_request(&self, id: &str, agent_id: &str) -> Result<Option<PaymentRequestRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT status, approval_request_id, reasons, violations FROM payment_requests
                 WHERE id = ?1 AND agent_id = ?2",
            )?
            .query_row([id, agent_id], |r| {
                let reasons: String = r.get(2)?;
                let violations: Option<String> = r.get(3)?;
                let violations = violations.and_then(|v| serde_json::from_str(&v).ok()).unwrap_or_default();
                Ok((r.get(0)?, r.get(1)?, serde_json::from_str(&reasons).unwrap_or_default(), violations))
            })
            .optional()?)
    }

    /// `agent_id`'s payment requests that asked for a human, by approval request id.
    pub fn payment_requests_by_approval(
        &self,
        agent_id: &str,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT approval_request_id, id FROM payment_requests
             WHERE agent_id = ?1 AND approval_request_id IS NOT NULL",
        )?;
        let rows = stmt.query_map([agent_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn put_counterparty(&self, id: &str, doc: &Counterparty) -> Result<(), StoreError> {
        self.conn.prepare_cached(
            "INSERT OR REPLACE INTO counterparties (id, doc, seq) VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM counterparties))")?.execute(
            params![id, to_json(doc)],
        )?;
        Ok(())
    }

    pub fn counterparties(&self) -> Result<Vec<Counterparty>, StoreError> {
        self.docs("SELECT doc FROM counterparties ORDER BY seq", [])
    }

    pub fn delete_counterparty(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn.prepare_cached("DELETE FROM counterparties WHERE id = ?1")?.execute([id])? > 0)
    }

    pub fn put_wallet(&self, agent_id: &str, wallet_id: &str, doc: &AgentWallet) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO agent_wallets (agent_id, wallet_id, doc) VALUES (?1, ?2, ?3)")?
            .execute(params![agent_id, wallet_id, to_json(doc)])?;
        Ok(())
    }

    /// Wallet delegations, of one agent or of all.
    /// The agents `wallet_id` is delegated to.
    pub fn wallet_holders(&self, wallet_id: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT agent_id FROM agent_wallets WHERE wallet_id = ?1")?;
        let rows = stmt.query_map([wallet_id], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn wallets(&self, agent_id: Option<&str>) -> Result<Vec<AgentWallet>, StoreError> {
        self.docs(
            "SELECT doc FROM agent_wallets WHERE ?1 IS NULL OR agent_id = ?1 ORDER BY agent_id, wallet_id",
            [agent_id],
        )
    }

    /// Writes a budget request (a new one goes after every earlier one).
    pub fn put_budget_request(&self, doc: &BudgetRequest) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO budget_requests (id, agent_id, doc, seq)
                 VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM budget_requests))
                 ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
            )?
            .execute(params![doc.id, doc.agent_id, to_json(doc)])?;
        Ok(())
    }

    /// Budget requests, of one agent (through its index) or of all, newest first.
    pub fn budget_requests(&self, agent_id: Option<&str>) -> Result<Vec<BudgetRequest>, StoreError> {
        match agent_id {
            Some(agent) => self.docs("SELECT doc FROM budget_requests WHERE agent_id = ?1 ORDER BY seq DESC", [agent]),
            None => self.docs("SELECT doc FROM budget_requests ORDER BY seq DESC", []),
        }
    }

    /// `agent_id`'s latest budget request, or its latest as it was answered (`status`, as
    /// stored: `PENDING`, `APPROVED` or `REJECTED`), through the agent's index.
    pub fn latest_budget_request(
        &self,
        agent_id: &str,
        status: Option<&str>,
    ) -> Result<Option<BudgetRequest>, StoreError> {
        let sql = "SELECT doc FROM budget_requests WHERE agent_id = ?1
                   AND (?2 IS NULL OR json_extract(doc, '$.status') = ?2) ORDER BY seq DESC LIMIT 1";
        Ok(self.docs(sql, params![agent_id, status])?.into_iter().next())
    }

    /// One budget request, by id.
    pub fn budget_request(&self, id: &str) -> Result<Option<BudgetRequest>, StoreError> {
        Ok(self.docs("SELECT doc FROM budget_requests WHERE id = ?1", [id])?.into_iter().next())
    }

    /// What `agent_id` spent from `since` (included) to `until` (excluded): its recorded
    /// spends, summed. Times are written by jiff in UTC, so as text they sort by time to the
    /// second: the index narrows the read to the window's seconds, and the exact bounds are
    /// checked here.
    pub fn spent_between(
        &self,
        agent_id: &str,
        since: conto_core::jiff::Timestamp,
        until: conto_core::jiff::Timestamp,
    ) -> Result<conto_core::Decimal, StoreError> {
        let second = |t: conto_core::jiff::Timestamp| t.to_string().chars().take(19).collect::<String>();
        let mut stmt = self.conn.prepare_cached(
            "SELECT amount, recorded_at FROM spends WHERE agent_id = ?1 AND recorded_at >= ?2 AND recorded_at < ?3",
        )?;
        // The end's second is read whole (`:SS` sorts before `:SS.f` and `:SSZ` after it).
        let end = format!("{}~", second(until));
        let rows = stmt.query_map(params![agent_id, second(since), end], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut spent = conto_core::Decimal::ZERO;
        for row in rows {
            let (amount, at) = row?;
            let in_window = at.parse::<conto_core::jiff::Timestamp>().is_ok_and(|t| t >= since && t < until);
            if in_window && let Ok(amount) = amount.parse::<conto_core::Decimal>() {
                spent += amount;
            }
        }
        Ok(spent)
    }

    /// The approval `id`'s row, and whether the approval was taken (confirmed): its row says
    /// so, or, its row forgotten a week after it lapsed, its spend was recorded.
    pub fn approval_taken(&self, id: &str) -> Result<(Option<ApprovalRecord>, bool), StoreError> {
        let row = self.approval(id)?;
        let taken = match &row {
            Some(a) => a.state == "recorded",
            None => self.spend_exists(id)?,
        };
        Ok((row, taken))
    }

    /// Whether a spend is already stored under this id.
    pub fn spend_exists(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM spends WHERE authorization_id = ?1")?
            .query_row([id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Runs `f` in one transaction that commits whatever it wrote, even when `f` reports an
    /// error (its writes stand, as the in-memory engine's effects do): a request's writes
    /// commit once instead of once per statement. Batches and [`Store::all_or_nothing`] nest;
    /// only the outermost batch commits, and only its failure to commit runs the undos
    /// registered with [`Store::on_rollback`].
    pub fn batch<T>(&self, f: impl FnOnce(&Store) -> T) -> Result<T, StoreError> {
        let outermost = self.conn.is_autocommit();
        if outermost {
            // Left by a batch that unwound (its writes were committed): not this batch's to undo.
            self.undo.borrow_mut().clear();
        }
        self.conn.prepare_cached("SAVEPOINT batch")?.execute([])?;
        let open = Open(&self.conn);
        let out = f(self);
        std::mem::forget(open);
        if let Err(e) = self.conn.prepare_cached("RELEASE batch").and_then(|mut s| s.execute([])) {
            if outermost {
                // A commit that failed (a full disk) must not leave later writes in an open
                // transaction: end it, undo what went with the writes, and report the failure.
                let _ = self.conn.execute_batch("ROLLBACK");
                self.undo.take().into_iter().rev().for_each(|undo| undo());
            } else {
                let _ = self.conn.execute_batch("ROLLBACK TO batch; RELEASE batch");
            }
            return Err(e.into());
        }
        if outermost {
            self.undo.borrow_mut().clear();
        }
        Ok(out)
    }

    /// Runs `undo` if the open [`Store::batch`] does not commit: for an effect outside the
    /// database (an engine's reservation) that must not outlive the writes it went with.
    /// Outside a transaction there is nothing left to fail: `undo` is dropped.
    pub fn on_rollback(&self, undo: impl FnOnce() + Send + 'static) {
        if !self.conn.is_autocommit() {
            self.undo.borrow_mut().push(Box::new(undo));
        }
    }

    /// Runs `f`'s writes as one: all of them, or (when `f` fails) none, inside or outside a
    /// batch.
    pub fn all_or_nothing<T>(&self, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.conn.prepare_cached("SAVEPOINT writes")?.execute([])?;
        match f() {
            Ok(out) => {
                self.conn.prepare_cached("RELEASE writes")?.execute([])?;
                Ok(out)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK TO writes; RELEASE writes");
                Err(e)
            }
        }
    }

    /// Runs `sql` (tests that break the store on purpose).
    #[cfg(test)]
    pub fn execute_for_test(&self, sql: &str) {
        self.conn.execute_batch(sql).unwrap();
    }

    /// Makes the open batch's commit fail, as a full disk would: a deferred foreign key that
    /// does not hold is checked at commit. (Enforcement is on: the bundled SQLite is built
    /// with foreign keys on by default, and the pragma cannot change inside a transaction.)
    #[cfg(test)]
    pub fn fail_commit_for_test(&self) {
        let enforced: i64 = self.conn.query_row("PRAGMA foreign_keys", [], |r| r.get(0)).unwrap();
        assert_eq!(enforced, 1, "foreign keys must be enforced for a commit to fail on one");
        self.conn
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS test_parent (id INTEGER PRIMARY KEY);
                 CREATE TABLE IF NOT EXISTS test_child (p INTEGER REFERENCES test_parent (id) DEFERRABLE INITIALLY DEFERRED);
                 INSERT INTO test_child (p) VALUES (7);",
            )
            .unwrap();
    }

    /// Marks an approval recorded and stores the spend, both or neither.
    #[allow(clippy::too_many_arguments)]
    pub fn record_spend(
        &self,
        authorization_id: &str,
        agent_id: &str,
        intent: &str,
        amount: &str,
        reference: Option<&str>,
        transaction_id: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.all_or_nothing(|| {
            self.conn.prepare_cached("UPDATE approvals SET state = 'recorded' WHERE id = ?1")?.execute([authorization_id])?;
            self.conn
                .prepare_cached(
                    "INSERT INTO spends (authorization_id, agent_id, intent, amount, reference, transaction_id, recorded_at, seq)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, (SELECT COALESCE(MAX(seq), 0) + 1 FROM spends))",
                )?
                .execute(params![authorization_id, agent_id, intent, amount, reference, transaction_id, now])?;
            Ok(())
        })
    }

    /// Every recorded spend (`agent`'s only, when given), oldest first: `(intent, amount,
    /// recorded_at)`.
    pub fn spends(&self, agent_id: Option<&str>) -> Result<Vec<(String, String, String)>, StoreError> {
        const COLUMNS: &str = "SELECT intent, amount, recorded_at FROM spends";
        let (mut stmt, params) = match agent_id {
            Some(agent) => {
                (self.conn.prepare_cached(&format!("{COLUMNS} WHERE agent_id = ?1 ORDER BY seq"))?, vec![agent])
            }
            None => (self.conn.prepare_cached(&format!("{COLUMNS} ORDER BY seq"))?, vec![]),
        };
        let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The spend recorded against authorization `id`, if any.
    pub fn spend(&self, id: &str) -> Result<Option<SpendRow>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!("{SPEND_ROW} WHERE authorization_id = ?1"))?
            .query_row([id], spend_row)
            .optional()?)
    }

    /// `agent`'s recorded spends, oldest first.
    pub fn agent_spends(&self, agent_id: &str) -> Result<Vec<SpendRow>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!("{SPEND_ROW} WHERE agent_id = ?1 ORDER BY seq"))?;
        let rows = stmt.query_map([agent_id], spend_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// `agent`'s latest recorded spends, newest first, at most `limit`.
    pub fn transactions(&self, agent_id: &str, limit: usize) -> Result<Vec<SpendRow>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached(&format!("{SPEND_ROW} WHERE agent_id = ?1 ORDER BY seq DESC LIMIT ?2"))?;
        let rows = stmt.query_map(rusqlite::params![agent_id, limit as i64], spend_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many spends were recorded for `agent`.
    pub fn spend_count(&self, agent_id: &str) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM spends WHERE agent_id = ?1")?
            .query_row([agent_id], |r| r.get(0))?)
    }

    pub fn put_request(&self, r: &RequestRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO approval_requests (id, agent_id, intent, status, approval_id, approval_token, expires_at, reasons)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, approval_id = excluded.approval_id,
                approval_token = excluded.approval_token, reasons = excluded.reasons, expires_at = excluded.expires_at",
            )?
            .execute(params![
                r.id,
                r.agent_id,
                r.intent,
                r.status,
                r.approval_id,
                r.approval_token,
                r.expires_at,
                r.reasons
            ])?;
        Ok(())
    }

    /// Notes the human's decision on approval request `id` (`true`: approve).
    pub fn set_decision(&self, id: &str, approve: bool) -> Result<(), StoreError> {
        let decision = if approve { "approve" } else { "reject" };
        self.conn
            .prepare_cached("UPDATE approval_requests SET decision = ?2 WHERE id = ?1")?
            .execute([id, decision])?;
        Ok(())
    }

    /// The human's decision on approval request `id` (`Some(true)`: approved), if one was
    /// noted (earlier versions noted none).
    pub fn decision(&self, id: &str) -> Result<Option<bool>, StoreError> {
        let decision: Option<Option<String>> = self
            .conn
            .prepare_cached("SELECT decision FROM approval_requests WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?;
        Ok(decision.flatten().map(|d| d == "approve"))
    }

    pub fn requests(&self, agent_id: Option<&str>) -> Result<Vec<RequestRecord>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached(select_requests!("WHERE ?1 IS NULL OR agent_id = ?1 ORDER BY rowid"))?;
        let rows = stmt.query_map([agent_id], request_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The latest `limit` approval requests of `agent_id`, newest first.
    pub fn latest_requests(&self, agent_id: &str, limit: usize) -> Result<Vec<RequestRecord>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached(select_requests!("WHERE agent_id = ?1 ORDER BY rowid DESC LIMIT ?2"))?;
        let rows = stmt.query_map(params![agent_id, i64::try_from(limit).unwrap_or(i64::MAX)], request_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The approval request `id`, read by its key (not out of every request).
    pub fn request(&self, id: &str) -> Result<Option<RequestRecord>, StoreError> {
        Ok(self.conn.prepare_cached(select_requests!("WHERE id = ?1"))?.query_row([id], request_row).optional()?)
    }

    /// The answer remembered for `key` (its request's hash, status and body), if any and if
    /// remembered within [`ANSWER_RETENTION`] before `now` (an older one, not yet forgotten, no
    /// longer answers; nor does one whose time does not read).
    pub fn idempotent(
        &self,
        agent: &str,
        endpoint: &str,
        key: &str,
        now: conto_core::jiff::Timestamp,
    ) -> Result<Option<(String, u16, String)>, StoreError> {
        let Some(&id) = self.slots.borrow().get(&slot(&self.slot_keys, agent, endpoint, key)) else {
            return Ok(None);
        };
        type Row = (String, String, String, String, u16, String, String);
        let row: Option<Row> = self
            .conn
            .prepare_cached(
                "SELECT agent_id, endpoint, key, request_hash, status, response, created_at FROM answers WHERE id = ?1",
            )?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
            .optional()?;
        Ok(row
            .filter(|(a, e, k, ..)| (a.as_str(), e.as_str(), k.as_str()) == (agent, endpoint, key))
            .filter(|(.., at)| answers_at(at, now))
            .map(|(_, _, _, hash, status, response, _)| (hash, status, response)))
    }

    /// Remembers the answer to `key` (asked only once [`Store::idempotent`] found none). Of two
    /// keys that share a slot (one pair in 2⁶⁴, and not choosable: see [`slot`]), the earlier
    /// one is answered afresh on a repeat.
    #[allow(clippy::too_many_arguments)]
    pub fn remember(
        &self,
        agent: &str,
        endpoint: &str,
        key: &str,
        request_hash: &str,
        status: u16,
        response: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO answers (agent_id, endpoint, key, request_hash, status, response, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![agent, endpoint, key, request_hash, status, response, now])?;
        self.slots.borrow_mut().insert(slot(&self.slot_keys, agent, endpoint, key), self.conn.last_insert_rowid());
        self.remembered.set(self.remembered.get() + 1);
        if self.remembered.get() >= FORGET_EVERY {
            self.remembered.set(0);
            self.forget_old_answers(conto_core::jiff::Timestamp::now(), 2 * FORGET_EVERY)?;
        }
        Ok(())
    }

    /// Forgets up to `at_most` of the oldest answers remembered longer than
    /// [`ANSWER_RETENTION`] before `now` (one whose time does not read counts as old), with
    /// their entries in the map; says how many. Answers are appended in time order, so the old
    /// ones are the first rows: this reads only what it forgets, and one more.
    pub fn forget_old_answers(&self, now: conto_core::jiff::Timestamp, at_most: usize) -> Result<usize, StoreError> {
        let mut old: Vec<(i64, i64)> = Vec::new();
        {
            let mut first = self
                .conn
                .prepare_cached("SELECT id, agent_id, endpoint, key, created_at FROM answers ORDER BY id LIMIT ?1")?;
            let mut rows = first.query([at_most as i64 + 1])?;
            while let Some(r) = rows.next()? {
                if old.len() == at_most || answers_at(&r.get::<_, String>(4)?, now) {
                    break;
                }
                let (agent, endpoint, key): (String, String, String) = (r.get(1)?, r.get(2)?, r.get(3)?);
                old.push((r.get(0)?, slot(&self.slot_keys, &agent, &endpoint, &key)));
            }
        }
        let Some(&(last, _)) = old.last() else { return Ok(0) };
        self.conn.prepare_cached("DELETE FROM answers WHERE id <= ?1")?.execute([last])?;
        let mut slots = self.slots.borrow_mut();
        for (id, slot) in &old {
            if slots.get(slot) == Some(id) {
                slots.remove(slot);
            }
        }
        Ok(old.len())
    }

    /// How many idempotency keys are stored for `agent`.
    pub fn idempotency_count(&self, agent: &str) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM answers WHERE agent_id = ?1")?
            .query_row([agent], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    /// A remembered answer is found by its agent, endpoint and key (and by nothing else), after
    /// a restart too; an earlier version's `idempotency` table is carried over on open.
    #[test]
    fn remembered_answers_are_found_by_their_key_across_a_restart_and_an_upgrade() {
        use conto_core::jiff::Timestamp;
        let dir = std::env::temp_dir().join(format!("conto-local-answers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("local.db");
        let now = crate::now_text();
        {
            let store = super::Store::open(Some(&db)).unwrap();
            store.remember("agent-1", "payments/approve", "k1", "h1", 200, "{\"a\":1}", &now).unwrap();
            let found = store.idempotent("agent-1", "payments/approve", "k1", Timestamp::now()).unwrap();
            assert_eq!(found, Some(("h1".to_owned(), 200, "{\"a\":1}".to_owned())));
            for (agent, endpoint, key) in [
                ("agent-2", "payments/approve", "k1"),
                ("agent-1", "x402/pre-authorize", "k1"),
                ("agent-1", "payments/approve", "k2"),
            ] {
                assert_eq!(
                    store.idempotent(agent, endpoint, key, Timestamp::now()).unwrap(),
                    None,
                    "{agent} {endpoint} {key}"
                );
            }
            // An answer whose write did not commit is not found, and the key that reuses its
            // row is found as itself.
            let failed = store.batch(|s| {
                s.remember("agent-1", "payments/approve", "lost", "h4", 200, "{}", &now).unwrap();
                s.fail_commit_for_test();
            });
            assert!(failed.is_err(), "the commit failed");
            store.remember("agent-1", "payments/approve", "next", "h5", 200, "{}", &now).unwrap();
            assert_eq!(store.idempotent("agent-1", "payments/approve", "lost", Timestamp::now()).unwrap(), None);
            assert_eq!(
                store.idempotent("agent-1", "payments/approve", "next", Timestamp::now()).unwrap().unwrap().0,
                "h5"
            );
            // An earlier version's table, as it was written.
            store.execute_for_test(&format!(
                "CREATE TABLE idempotency (agent_id TEXT NOT NULL, endpoint TEXT NOT NULL, key TEXT NOT NULL,
                    request_hash TEXT NOT NULL, status INTEGER NOT NULL, response TEXT NOT NULL, created_at TEXT NOT NULL,
                    PRIMARY KEY (agent_id, endpoint, key));
                 INSERT INTO idempotency VALUES ('agent-3', 'cards/approve', 'old', 'h3', 409, '{{\"code\":\"X\"}}', '{now}');"
            ));
        }
        let store = super::Store::open(Some(&db)).unwrap();
        assert_eq!(
            store.idempotent("agent-1", "payments/approve", "k1", Timestamp::now()).unwrap().unwrap().0,
            "h1",
            "after a restart"
        );
        let old = store.idempotent("agent-3", "cards/approve", "old", Timestamp::now()).unwrap();
        assert_eq!(old, Some(("h3".to_owned(), 409, "{\"code\":\"X\"}".to_owned())), "carried over");
        assert_eq!(store.idempotency_count("agent-3").unwrap(), 1);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// An answer answers for a day: older, it no longer does (forgotten yet or not) and its key
    /// is new again; forgetting removes only those, at most as many as it is allowed to.
    #[test]
    fn answers_are_forgotten_after_a_day_and_no_sooner() {
        use conto_core::jiff::{SignedDuration, Timestamp};
        let store = super::Store::open(None).unwrap();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |hours: i64| (t0 + SignedDuration::from_hours(hours)).to_string();
        for (key, created) in
            [("a", at(0)), ("b", at(1)), ("garbled", "not a time".to_owned()), ("c", at(2)), ("d", at(30))]
        {
            store.remember("agent-1", "payments/approve", key, "h", 200, "{}", &created).unwrap();
        }
        // A day and half an hour after the second: the first two (and the one whose time does
        // not read) answer no longer, before they are forgotten too.
        let now = t0 + SignedDuration::from_mins(25 * 60 + 30);
        let found = |key: &str| store.idempotent("agent-1", "payments/approve", key, now).unwrap().is_some();
        assert!(!found("a") && !found("b") && !found("garbled") && found("c") && found("d"));
        let kept = || store.idempotency_count("agent-1").unwrap();
        assert_eq!((store.forget_old_answers(now, 1).unwrap(), kept()), (1, 4));
        assert_eq!(
            (store.forget_old_answers(now, 10).unwrap(), kept()),
            (2, 2),
            "b, and the one whose time does not read"
        );
        assert_eq!(store.forget_old_answers(now, 10).unwrap(), 0, "c is 23½ hours old");
        assert!(found("c") && found("d"));
        // Forgotten: the key is new again, and remembered anew.
        store.remember("agent-1", "payments/approve", "a", "h2", 200, "{}", &at(25)).unwrap();
        assert_eq!(store.idempotent("agent-1", "payments/approve", "a", now).unwrap().unwrap().0, "h2");
    }

    #[test]
    fn a_cached_key_is_refused_as_soon_as_it_is_revoked_or_its_agent_deleted() {
        let store = super::Store::open(None).unwrap();
        let key = "conto_agent_0123456789abcdef0123456789abcdef";
        let scopes = ["payments:request".to_owned()];
        store.add_agent("agent-1", "agent-1", "2026-01-01T00:00:00Z").unwrap();
        store.add_key("k1", "agent-1", key, "k", "standard", &scopes, "2099-01-01T00:00:00Z", "now").unwrap();
        assert_eq!(store.key(key).unwrap().unwrap().agent_id, "agent-1");
        assert!(store.key(key).unwrap().is_some(), "answered from the cache");
        assert!(store.revoke_key("agent-1", "k1", "now").unwrap());
        assert!(store.key(key).unwrap().is_none(), "revoked: refused at once");

        store.add_key("k2", "agent-1", key, "k", "standard", &scopes, "2099-01-01T00:00:00Z", "now").unwrap_err();
        let other = "conto_agent_fedcba9876543210fedcba9876543210";
        store.add_key("k3", "agent-1", other, "k", "standard", &scopes, "2099-01-01T00:00:00Z", "now").unwrap();
        assert!(store.key(other).unwrap().is_some());
        assert!(store.delete_agent("agent-1", "now").unwrap());
        assert!(store.key(other).unwrap().is_none(), "its agent deleted: refused at once");
    }

    #[test]
    fn a_secret_hashes_to_its_lower_hex_sha256_as_stored_by_earlier_versions() {
        assert_eq!(super::hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(super::hash(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    /// A request's writes commit together, nested spends included; a handler that panics
    /// mid-batch leaves its writes committed and no transaction open for later writes.
    #[test]
    fn a_batch_commits_once_and_never_stays_open() {
        let store = super::Store::open(None).unwrap();
        let now = "2026-01-01T00:00:00Z";
        let out = store
            .batch(|s| {
                assert!(!s.conn.is_autocommit(), "inside one transaction");
                s.add_agent("agent-1", "agent-1", now).unwrap();
                s.record_spend("a1", "agent-1", "{}", "1", None, "tx_1", now).unwrap();
                7
            })
            .unwrap();
        assert_eq!((out, store.conn.is_autocommit()), (7, true));
        assert_eq!(store.spend_count("agent-1").unwrap(), 1);

        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.batch(|s| {
                s.add_agent("agent-2", "agent-2", now).unwrap();
                panic!("a handler bug");
            })
        }));
        assert!(panicked.is_err());
        assert!(store.conn.is_autocommit(), "no transaction left open");
        assert!(store.agent_exists("agent-2").unwrap());
    }

    /// A batch whose commit fails leaves nothing: its writes are rolled back, what it changed
    /// in memory is undone (in reverse order), and no transaction stays open.
    #[test]
    fn a_batch_that_does_not_commit_undoes_what_went_with_it() {
        use std::sync::{Arc, Mutex};
        let store = super::Store::open(None).unwrap();
        let undone = Arc::new(Mutex::new(Vec::new()));
        let failed = store.batch(|s| {
            s.add_agent("agent-1", "agent-1", "2026-01-01T00:00:00Z").unwrap();
            for n in [1, 2] {
                let undone = undone.clone();
                s.on_rollback(move || undone.lock().unwrap().push(n));
            }
            s.fail_commit_for_test();
        });
        assert!(failed.is_err(), "the commit failed");
        assert_eq!(*undone.lock().unwrap(), [2, 1], "undone, last first");
        assert!(store.conn.is_autocommit(), "no transaction left open");
        assert!(!store.agent_exists("agent-1").unwrap(), "its writes rolled back");

        // A batch that commits undoes nothing, and forgets what it registered.
        let undone_later = undone.clone();
        store.batch(|s| s.on_rollback(move || undone_later.lock().unwrap().push(3))).unwrap();
        assert_eq!(*undone.lock().unwrap(), [2, 1]);
        assert!(store.undo.borrow().is_empty());
    }

    /// Undos registered in a nested batch belong to the outermost one: they run when it
    /// fails to commit, not when the inner one is released. Outside a batch, nothing is kept.
    #[test]
    fn undos_belong_to_the_outermost_batch() {
        use std::sync::{Arc, Mutex};
        let store = super::Store::open(None).unwrap();
        let undone = Arc::new(Mutex::new(Vec::new()));
        let outside = undone.clone();
        store.on_rollback(move || outside.lock().unwrap().push(0));
        assert!(store.undo.borrow().is_empty(), "no transaction: nothing to undo later");
        let failed = store.batch(|s| {
            let (first, second) = (undone.clone(), undone.clone());
            s.on_rollback(move || first.lock().unwrap().push(1));
            s.batch(|inner| inner.on_rollback(move || second.lock().unwrap().push(2))).unwrap();
            assert_eq!(s.undo.borrow().len(), 2, "the inner release is not a commit");
            s.fail_commit_for_test();
        });
        assert!(failed.is_err());
        assert_eq!(*undone.lock().unwrap(), [2, 1]);
    }

    /// Writes that go together stand together: a failure rolls back the ones before it, in
    /// a batch or not.
    #[test]
    fn all_or_nothing_keeps_none_of_a_failed_group() {
        let store = super::Store::open(None).unwrap();
        let now = "2026-01-01T00:00:00Z";
        let failed = store.batch(|s| {
            s.all_or_nothing(|| {
                s.add_agent("agent-1", "agent-1", now)?;
                s.add_agent("agent-1", "agent-1", now)
            })
        });
        assert!(failed.unwrap().is_err(), "the second write fails (a duplicate)");
        assert!(!store.agent_exists("agent-1").unwrap(), "the first write went with it");
        store.all_or_nothing(|| store.add_agent("agent-2", "agent-2", now)).unwrap();
        assert!(store.agent_exists("agent-2").unwrap());
    }

    /// Numbering a spend reads one index entry, not every spend: recording stays flat however
    /// long the history (it scanned the table, ~1 ms per record after 20 000 records).
    #[test]
    fn a_spend_is_numbered_from_the_index_not_a_scan() {
        let store = super::Store::open(None).unwrap();
        let plan = plan(&store, "SELECT COALESCE(MAX(seq), 0) + 1 FROM spends");
        assert!(plan.iter().any(|step| step.contains("USING COVERING INDEX spends_by_seq")), "{plan:?}");
    }

    /// A record without an authorization id looks among the agent's live approvals only.
    #[test]
    fn live_approvals_are_read_from_their_index() {
        let store = super::Store::open(None).unwrap();
        for filter in ["state = 'live' AND agent_id = 'a'", "state = 'live'"] {
            let plan = plan(&store, &format!("SELECT id, intent FROM approvals WHERE {filter}"));
            assert!(plan.iter().any(|step| step.contains("INDEX live_approvals")), "{filter}: {plan:?}");
        }
    }

    /// Approvals that lapsed more than a week ago are forgotten, settled or not; younger ones
    /// and live ones stay.
    #[test]
    fn lapsed_approvals_are_forgotten_after_a_week() {
        use conto_core::jiff::{SignedDuration, Timestamp};
        let store = super::Store::open(None).unwrap();
        let now = Timestamp::now();
        let ago = |hours: i64| now.saturating_sub(SignedDuration::from_hours(hours)).unwrap();
        // An engine id: `auth_`, the second it was made in, 16 more hex digits.
        let id = |made: Timestamp, n: u8| format!("auth_{:08x}{:016x}", made.as_second(), n);
        let row = |expires: Timestamp, state: &str| super::ApprovalRecord {
            agent_id: "agent-1".into(),
            token_hash: None,
            intent: "{}".into(),
            amount: "1".into(),
            expires_at: expires.to_string(),
            state: state.into(),
        };
        let (old_recorded, old_lapsed) = (id(ago(24 * 8), 1), id(ago(24 * 7 + 2), 2));
        let (recent, live, foreign) = (id(ago(24 * 6), 3), id(now, 4), "apr_from_elsewhere".to_owned());
        store.add_approval(&old_recorded, &row(ago(24 * 8 - 1), "recorded")).unwrap();
        store.add_approval(&old_lapsed, &row(ago(24 * 7 + 1), "live")).unwrap();
        store.add_approval(&recent, &row(ago(24 * 6 - 1), "recorded")).unwrap();
        store.add_approval(&live, &row(now.saturating_add(SignedDuration::from_mins(5)).unwrap(), "live")).unwrap();
        store.add_approval(&foreign, &row(ago(24 * 30), "recorded")).unwrap();
        assert_eq!(store.forget_old_approvals(now).unwrap(), 2);
        let kept = |id: &str| store.approval(id).unwrap().is_some();
        assert!(!kept(&old_recorded) && !kept(&old_lapsed));
        assert!(kept(&recent) && kept(&live) && kept(&foreign), "younger, live, and ids of another form stay");
        assert_eq!(store.forget_old_approvals(now).unwrap(), 0);
        let plan = plan(&store, "SELECT 1 FROM approvals WHERE id >= 'auth_' AND id < 'auth_1' AND expires_at < 'x'");
        assert!(plan.iter().any(|step| step.contains("PRIMARY KEY") || step.contains("INDEX")), "{plan:?}");
    }

    /// A spend's window is read through the spends' agent-and-time index, bounds exact.
    #[test]
    fn spend_in_a_window_is_summed_from_its_index_to_the_exact_instant() {
        use conto_core::jiff::{SignedDuration, Timestamp};
        let store = super::Store::open(None).unwrap();
        let t0: Timestamp = "2026-12-02T10:00:00Z".parse().unwrap();
        let at = |ms: i64| t0.saturating_add(SignedDuration::from_millis(ms)).unwrap().to_string();
        for (n, (agent, ms, amount)) in [
            ("agent-1", -1, "1"),
            ("agent-1", 0, "2"),
            ("agent-1", 500, "4"),
            ("agent-1", 1_000, "8"),
            ("agent-2", 200, "16"),
        ]
        .into_iter()
        .enumerate()
        {
            store.record_spend(&format!("auth_{n}"), agent, "{}", amount, None, &format!("tx_{n}"), &at(ms)).unwrap();
        }
        let since = t0;
        let until = t0.saturating_add(SignedDuration::from_millis(1_000)).unwrap();
        assert_eq!(
            store.spent_between("agent-1", since, until).unwrap(),
            "6".parse().unwrap(),
            "0 and 500 ms, not -1 or 1 000"
        );
        let plan =
            plan(&store, "SELECT amount FROM spends WHERE agent_id = 'a' AND recorded_at >= 'x' AND recorded_at < 'y'");
        assert!(plan.iter().any(|step| step.contains("spends_by_agent_time")), "{plan:?}");
    }

    /// The steps of SQLite's plan for `sql`.
    fn plan(store: &super::Store, sql: &str) -> Vec<String> {
        let mut stmt = store.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        stmt.query_map([], |r| r.get::<_, String>(3)).unwrap().collect::<Result<_, _>>().unwrap()
    }
}
