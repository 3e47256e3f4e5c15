//! [`SqliteJournal`]: the embedded engine's ledger journal in a SQLite file.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::Connection;

use conto_core::journal::{Compaction, Entry, Journal, JournalError};

/// A [`Journal`] in a SQLite file (WAL, `synchronous = FULL`: an appended entry survives a
/// crash of the process and of the machine).
pub struct SqliteJournal {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteJournal").finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> JournalError {
    JournalError(e.to_string())
}

impl SqliteJournal {
    /// Opens (or creates, owner-only) the journal at `path`. The process keeps the file locked
    /// while the journal is open: a second process (or a second open in this one) is refused,
    /// never given a ledger of its own in the same file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let conn = crate::file::open_owned(
            path.as_ref(),
            &crate::file::JOURNAL,
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS ledger_journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL);",
        )
        .map_err(err)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    /// A journal in memory (tests).
    pub fn in_memory() -> Result<Self, JournalError> {
        let conn = Connection::open_in_memory().map_err(err)?;
        conn.execute_batch("CREATE TABLE ledger_journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL);")
            .map_err(err)?;
        Ok(Self { conn: Mutex::new(conn) })
    }
}

impl Journal for SqliteJournal {
    fn append(&self, entry: &Entry) -> Result<(), JournalError> {
        let text = serde_json::to_string(entry).map_err(err)?;
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.prepare_cached("INSERT INTO ledger_journal (entry) VALUES (?1)")
            .and_then(|mut s| s.execute([text]))
            .map_err(err)?;
        Ok(())
    }

    fn replay(&self) -> Result<Vec<Entry>, JournalError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        entries(&conn)
    }

    /// Reads every entry, folds them and writes what is kept in their place, in one
    /// transaction under the connection's lock (appends wait for it). The table's rows are
    /// deleted and the kept entries inserted anew, in order; a crash before the commit leaves
    /// the journal as it was. Freed pages are reused by later appends (the file does not
    /// shrink).
    fn compact(&self, fold: &mut dyn FnMut(Vec<Entry>) -> Vec<Entry>) -> Result<Option<Compaction>, JournalError> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let old = entries(&conn)?;
        let before = old.len();
        let kept = fold(old);
        if kept.len() == before {
            return Ok(Some(Compaction { before, after: before }));
        }
        let texts = kept.iter().map(serde_json::to_string).collect::<Result<Vec<_>, _>>().map_err(err)?;
        let tx = conn.transaction().map_err(err)?;
        tx.execute("DELETE FROM ledger_journal", []).map_err(err)?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO ledger_journal (entry) VALUES (?1)").map_err(err)?;
            for text in &texts {
                insert.execute([text]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(Some(Compaction { before, after: kept.len() }))
    }
}

/// Every entry in the journal, oldest first.
fn entries(conn: &Connection) -> Result<Vec<Entry>, JournalError> {
    let mut stmt = conn.prepare("SELECT seq, entry FROM ledger_journal ORDER BY seq").map_err(err)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))).map_err(err)?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, text) = row.map_err(err)?;
        out.push(serde_json::from_str(&text).map_err(|e| JournalError(format!("entry #{seq} is corrupt: {e}")))?);
    }
    Ok(out)
}
