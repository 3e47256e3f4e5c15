//! Opening a SQLite file this process alone writes: owner-only, and locked.

use std::path::Path;

use rusqlite::Connection;

/// Why a file could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// Another connection (another process, or this one opened twice) holds the file.
    #[error("{path} is in use by another process (or opened twice in this one): one process owns it")]
    InUse { path: String },
    /// SQLite refused the file: not a database, unreadable, a directory that cannot be written.
    #[error("{path}: {source}")]
    Sqlite { path: String, source: rusqlite::Error },
    /// A database, but another's: another conto-rs file (a journal given as an outbox), or
    /// another application's.
    #[error("{path} is not {what}: {why}")]
    Foreign { path: String, what: &'static str, why: String },
    /// The file (or a SQLite side file beside it) belongs to another user, who could read
    /// everything written to it (and put it back as it likes): never used.
    #[error(
        "{path} belongs to another user (uid {owner}), who could read and change the spend history written to it: \
         remove it, or run as its owner"
    )]
    NotOwned { path: String, owner: u32 },
}

/// Which file a connection is for: its SQLite `application_id`, its table, what it is called.
pub(crate) struct Kind {
    pub application_id: i32,
    pub table: &'static str,
    pub what: &'static str,
}

/// The ledger journal.
pub(crate) const JOURNAL: Kind =
    Kind { application_id: 0x636f_6e6a, table: "ledger_journal", what: "a conto-rs ledger journal" };
/// The record outbox.
pub(crate) const OUTBOX: Kind = Kind { application_id: 0x636f_6e6f, table: "outbox", what: "a conto-rs outbox" };

/// Opens `path` (created `0600` if absent) with `EXCLUSIVE` locking and runs `schema`: its
/// first write takes the file's lock for as long as the connection lives, so a second process
/// on the same file (a replica on a shared volume, a deploy overlapping the old process) is
/// refused within a second instead of keeping a ledger of its own in the same file. `schema`
/// must not set `locking_mode` (set here, before WAL, so no shared-memory index is made).
///
/// The file must be `kind`'s: marked with its `application_id`, or (a file from before the
/// mark, or a new one) unmarked and holding no table but its own. Another conto-rs file (the
/// outbox given as the ledger's path) or another application's database is refused, never
/// given a table of ours beside its own and read as an empty history.
pub(crate) fn open_owned(path: &Path, kind: &Kind, schema: &str) -> Result<Connection, OpenError> {
    let shown = || path.display().to_string();
    let created = owner_only(path)?;
    let sqlite = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            OpenError::InUse { path: shown() }
        }
        _ => OpenError::Sqlite { path: shown(), source: e },
    };
    let conn = Connection::open(path).map_err(sqlite)?;
    conn.busy_timeout(std::time::Duration::from_secs(1)).map_err(sqlite)?;
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE;").map_err(sqlite)?;
    let id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(sqlite)?;
    let foreign = |why: String| OpenError::Foreign { path: shown(), what: kind.what, why };
    if id != 0 && id != kind.application_id {
        return Err(foreign(format!("its application_id is {id:#x}")));
    }
    if id == 0 {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
            .map_err(sqlite)?;
        let tables = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(sqlite)?;
        let tables: Vec<String> = tables.collect::<Result<_, _>>().map_err(sqlite)?;
        if let Some(other) = tables.iter().find(|t| *t != kind.table) {
            return Err(foreign(format!("it holds a table `{other}`")));
        }
    }
    conn.execute_batch(&format!("{schema}\nPRAGMA application_id = {};", kind.application_id)).map_err(sqlite)?;
    if created {
        let at = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        tracing::info!(path = %at.display(), "conto_store.created: {}, new and empty", kind.what);
    }
    Ok(conn)
}

/// Creates `path` readable and writable by its owner only when it does not exist (it holds the
/// spend history: actors, recipients, amounts), and narrows it and SQLite's side files when
/// they were left wider. A file another user owns is refused (unless this process runs as
/// root): its owner could read it, whatever its mode. Otherwise best effort: SQLite says why
/// a file it cannot open is refused. Returns whether it created the file.
#[cfg(unix)]
fn owner_only(path: &Path) -> Result<bool, OpenError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    if std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).is_ok() {
        return Ok(true);
    }
    let me = rustix::process::geteuid();
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let Ok(meta) = std::fs::metadata(&file) else { continue };
        if !meta.is_file() {
            continue;
        }
        if foreign_owner(meta.uid(), me.as_raw(), me.is_root()) {
            return Err(OpenError::NotOwned { path: Path::new(&file).display().to_string(), owner: meta.uid() });
        }
        if meta.permissions().mode() & 0o077 != 0
            && let Err(error) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(path = %Path::new(&file).display(), %error, "conto_store.file_mode: cannot make the file readable by its owner only");
        }
    }
    Ok(false)
}

/// Whether a file owned by `owner` is another user's to a process running as `me` (root may
/// use any: a volume its files were made on by another user id).
#[cfg(unix)]
fn foreign_owner(owner: u32, me: u32, root: bool) -> bool {
    !root && owner != me
}

/// Whether it created the file (SQLite creates it here).
#[cfg(not(unix))]
fn owner_only(path: &Path) -> Result<bool, OpenError> {
    Ok(!path.exists())
}

#[cfg(all(test, unix))]
mod tests {
    use super::foreign_owner;

    #[test]
    fn a_file_of_another_user_is_foreign_except_to_root() {
        assert!(!foreign_owner(1000, 1000, false), "its own");
        assert!(foreign_owner(1001, 1000, false), "another user's");
        assert!(foreign_owner(0, 1000, false), "root's, to a user");
        assert!(!foreign_owner(1001, 0, true), "root may use any");
    }
}
