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
}

/// Opens `path` (created `0600` if absent) with `EXCLUSIVE` locking and runs `schema`: its
/// first write takes the file's lock for as long as the connection lives, so a second process
/// on the same file (a replica on a shared volume, a deploy overlapping the old process) is
/// refused within a second instead of keeping a ledger of its own in the same file. `schema`
/// must not set `locking_mode` (set here, before WAL, so no shared-memory index is made).
pub(crate) fn open_owned(path: &Path, schema: &str) -> Result<Connection, OpenError> {
    let shown = || path.display().to_string();
    owner_only(path);
    let sqlite = |source| OpenError::Sqlite { path: shown(), source };
    let conn = Connection::open(path).map_err(sqlite)?;
    conn.busy_timeout(std::time::Duration::from_secs(1)).map_err(sqlite)?;
    conn.execute_batch(&format!("PRAGMA locking_mode = EXCLUSIVE;\n{schema}")).map_err(|e| {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                OpenError::InUse { path: shown() }
            }
            _ => sqlite(e),
        }
    })?;
    Ok(conn)
}

/// Creates `path` readable and writable by its owner only when it does not exist (it holds the
/// spend history: actors, recipients, amounts), and narrows it and SQLite's side files when
/// they were left wider. Best effort: SQLite says why a file it cannot open is refused.
#[cfg(unix)]
fn owner_only(path: &Path) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).is_ok() {
        return;
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        if let Ok(meta) = std::fs::metadata(&file)
            && meta.is_file()
            && meta.permissions().mode() & 0o077 != 0
            && let Err(error) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
        {
            tracing::warn!(path = %Path::new(&file).display(), %error, "conto_store.file_mode: cannot make the file readable by its owner only");
        }
    }
}

#[cfg(not(unix))]
fn owner_only(_: &Path) {}
