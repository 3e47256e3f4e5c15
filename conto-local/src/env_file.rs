//! The credentials file `cargo run -p conto-local` writes instead of printing keys: shell
//! `export` lines, readable by its owner only, so a generated key never reaches a terminal's
//! scrollback or a log collecting the server's output.

use std::io::Write;
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

/// What the credentials file holds.
#[derive(Debug)]
pub struct Credentials<'a> {
    /// The server's base URL (`CONTO_API_URL`).
    pub url: &'a str,
    /// The org API key (`CONTO_ORG_API_KEY`), generated or given: a file sourced before the
    /// next run hands the same key back to it.
    pub org_key: &'a SecretString,
    /// The agent the server was asked to create (`CONTO_ACTOR`), with its SDK key when it was
    /// created now (`CONTO_SDK_KEY`). When the agent already existed, the key a previous run
    /// wrote for the same agent is kept, since the server stores keys hashed and cannot show it
    /// again.
    pub agent: Option<(&'a str, Option<&'a SecretString>)>,
}

/// Writes `credentials` to `path` as `export NAME=value` lines, replacing the file atomically
/// (a temporary file beside it, renamed over it). On Unix the file is created readable and
/// writable by its owner only (`0600`), whatever the umask.
///
/// No SDK key a previous file held is dropped, since the server cannot show it again: a key
/// not exported now is kept as a comment line (`# earlier key of agent-1: ...`). A run without
/// a new key exports the agent's key that `live` accepts (one of this server's store: the same
/// file may have served runs on other databases), and a run naming no agent the file's agent.
pub fn write(path: &Path, credentials: &Credentials<'_>, live: &dyn Fn(&str, &str) -> bool) -> std::io::Result<()> {
    // The previous file, read once (none, or unreadable: nothing to keep).
    let previous = std::fs::read_to_string(path).unwrap_or_default();
    let mut known = previous_keys(&previous);
    let mut text = String::from("# conto-local credentials: `source` this file; keep it private\n");
    text.push_str(&format!("export CONTO_API_URL={}\n", credentials.url));
    text.push_str(&format!("export CONTO_ORG_API_KEY={}\n", credentials.org_key.expose_secret()));
    let agent = match credentials.agent {
        Some((agent, key)) => Some((agent.to_owned(), key.map(|k| k.expose_secret().to_owned()))),
        None => exported(&previous, "CONTO_ACTOR").map(|agent| (agent.to_owned(), None)),
    };
    if let Some((agent, key)) = agent {
        // The newest first: the exported key, then the earlier lines from the last.
        let key = key.or_else(|| known.iter().rev().find(|(a, k)| *a == agent && live(a, k)).map(|(_, k)| k.clone()));
        text.push_str(&format!("export CONTO_ACTOR={agent}\n"));
        if let Some(key) = key {
            known.retain(|(a, k)| !(*a == agent && *k == key));
            text.push_str(&format!("export CONTO_SDK_KEY={key}\n"));
        }
    }
    for (agent, key) in known {
        text.push_str(&format!("{EARLIER}{agent}: {key}\n"));
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = owner_only(&temp).and_then(|mut file| {
        file.write_all(text.as_bytes())?;
        file.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&temp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// How a comment line holding an agent's earlier key starts.
const EARLIER: &str = "# earlier key of ";

/// The value of `export NAME=` in a previous file's text.
fn exported<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    text.lines().find_map(|line| line.strip_prefix("export ")?.strip_prefix(name)?.strip_prefix('='))
}

/// Every agent's SDK key a previous file holds, oldest first: the earlier lines, then the
/// exported one; each pair once.
fn previous_keys(text: &str) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = Vec::new();
    let earlier = text.lines().filter_map(|line| line.strip_prefix(EARLIER)?.split_once(": "));
    let exported = exported(text, "CONTO_ACTOR").zip(exported(text, "CONTO_SDK_KEY"));
    for (agent, key) in earlier.chain(exported) {
        keys.retain(|(a, k)| !(a == agent && k == key));
        keys.push((agent.to_owned(), key.to_owned()));
    }
    keys
}

#[cfg(unix)]
fn owner_only(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

#[cfg(not(unix))]
fn owner_only(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("conto-env-file-{}-{}", std::process::id(), crate::random_hex(4)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_new_key_is_written_and_kept_for_the_same_agent_on_the_next_run() {
        let dir = dir();
        let path = dir.join("conto-local.env");
        let org = SecretString::from("conto_org_first");
        let sdk = SecretString::from("conto_agent_secret");
        let url = "http://127.0.0.1:3006";
        write(&path, &Credentials { url, org_key: &org, agent: Some(("agent-1", Some(&sdk))) }, &|_, _| true).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        assert!(first.contains("export CONTO_SDK_KEY=conto_agent_secret\n"), "{first}");
        assert!(first.contains("export CONTO_ACTOR=agent-1\n"));
        assert!(first.contains("export CONTO_ORG_API_KEY=conto_org_first\n"));

        // Next run: the agent exists (no key to show), the org key is new.
        let org = SecretString::from("conto_org_second");
        write(&path, &Credentials { url, org_key: &org, agent: Some(("agent-1", None)) }, &|_, _| true).unwrap();
        let second = std::fs::read_to_string(&path).unwrap();
        assert!(second.contains("export CONTO_SDK_KEY=conto_agent_secret\n"), "{second}");
        assert!(second.contains("export CONTO_ORG_API_KEY=conto_org_second\n"));
        assert!(!second.contains("conto_org_first"));

        // A run naming no agent keeps the file's agent and key.
        write(&path, &Credentials { url, org_key: &org, agent: None }, &|_, _| true).unwrap();
        let unnamed = std::fs::read_to_string(&path).unwrap();
        assert!(unnamed.contains("export CONTO_ACTOR=agent-1\nexport CONTO_SDK_KEY=conto_agent_secret\n"), "{unnamed}");

        // Another agent does not inherit it, and it is not lost: it comes back with its agent.
        let other = SecretString::from("conto_agent_other");
        write(&path, &Credentials { url, org_key: &org, agent: Some(("agent-2", Some(&other))) }, &|_, _| true)
            .unwrap();
        let third = std::fs::read_to_string(&path).unwrap();
        assert!(third.contains("export CONTO_ACTOR=agent-2\nexport CONTO_SDK_KEY=conto_agent_other\n"), "{third}");
        assert!(!third.contains("export CONTO_SDK_KEY=conto_agent_secret"), "{third}");
        write(&path, &Credentials { url, org_key: &org, agent: Some(("agent-1", None)) }, &|_, _| true).unwrap();
        let back = std::fs::read_to_string(&path).unwrap();
        assert!(back.contains("export CONTO_ACTOR=agent-1\nexport CONTO_SDK_KEY=conto_agent_secret\n"), "{back}");
        assert!(back.contains("# earlier key of agent-2: conto_agent_other\n"), "{back}");
        assert_eq!(back.matches("conto_agent_").count(), 2, "each key once: {back}");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
        std::fs::remove_dir_all(dir).ok();
    }

    /// One file serving runs on two databases: each database's agent-1 has its own key. A run
    /// creating agent-1 afresh (another database, or in memory) keeps the first key as an
    /// earlier line, and a run back on the first database exports the key that database holds,
    /// not the newest one (which would be refused there).
    #[test]
    fn a_file_serving_two_databases_exports_the_key_each_holds() {
        let dir = dir();
        let path = dir.join("conto-local.env");
        let org = SecretString::from("conto_org_x");
        let url = "http://127.0.0.1:3006";
        let (first, second) = (SecretString::from("conto_agent_first"), SecretString::from("conto_agent_second"));
        write(&path, &Credentials { url, org_key: &org, agent: Some(("agent-1", Some(&first))) }, &|_, _| true)
            .unwrap();
        write(&path, &Credentials { url, org_key: &org, agent: Some(("agent-1", Some(&second))) }, &|_, _| true)
            .unwrap();
        let both = std::fs::read_to_string(&path).unwrap();
        assert!(both.contains("export CONTO_SDK_KEY=conto_agent_second\n"), "{both}");
        assert!(both.contains("# earlier key of agent-1: conto_agent_first\n"), "{both}");
        // Back on the first database, which holds only the first key.
        let first_db = |agent: &str, key: &str| agent == "agent-1" && key == "conto_agent_first";
        write(&path, &Credentials { url, org_key: &org, agent: Some(("agent-1", None)) }, &first_db).unwrap();
        let back = std::fs::read_to_string(&path).unwrap();
        assert!(back.contains("export CONTO_SDK_KEY=conto_agent_first\n"), "{back}");
        assert!(back.contains("# earlier key of agent-1: conto_agent_second\n"), "{back}");
        // A database holding neither: no key is exported, none is lost.
        write(&path, &Credentials { url, org_key: &org, agent: None }, &|_, _| false).unwrap();
        let neither = std::fs::read_to_string(&path).unwrap();
        assert!(!neither.contains("export CONTO_SDK_KEY"), "{neither}");
        assert_eq!(neither.matches("# earlier key of agent-1: ").count(), 2, "{neither}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_readable_by_its_owner_only_even_when_it_was_not_before() {
        use std::os::unix::fs::PermissionsExt;
        let dir = dir();
        let path = dir.join("conto-local.env");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let org = SecretString::from("conto_org_x");
        write(&path, &Credentials { url: "http://127.0.0.1:1", org_key: &org, agent: None }, &|_, _| true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::remove_dir_all(dir).ok();
    }
}
