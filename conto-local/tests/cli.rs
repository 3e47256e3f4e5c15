//! `conto-local` as a newcomer runs it: keys go to an owner-only credentials file, never to the
//! terminal, and what that file holds works against the server.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the binary and returns it with everything it printed up to "listening".
fn start(env_file: &std::path::Path) -> (Server, String) {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/example.json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_conto-local"))
        .args(["--in-memory", "--port", "0", "--agent", "agent-1", "--policies", policies, "--env-file"])
        .arg(env_file)
        .env_remove("CONTO_ORG_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("conto-local starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut printed = String::new();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines.next().expect("conto-local printed its address").expect("utf-8");
        printed.push_str(&line);
        printed.push('\n');
        if line.starts_with("keys written to") {
            // The line after it (`source ...`) is printed at once; keep it too.
            printed.push_str(&lines.next().expect("source line").expect("utf-8"));
            break;
        }
    }
    (Server(child), printed)
}

fn exported<'a>(file: &'a str, name: &str) -> &'a str {
    file.lines()
        .find_map(|l| l.strip_prefix("export ")?.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{name} in {file}"))
}

#[tokio::test]
async fn keys_are_written_owner_only_never_printed_and_they_work() {
    let dir = std::env::temp_dir().join(format!("conto-local-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let env_file = dir.join("conto-local.env");
    let (_server, printed) = start(&env_file);

    let file = std::fs::read_to_string(&env_file).expect("the credentials file");
    let sdk_key = exported(&file, "CONTO_SDK_KEY");
    let org_key = exported(&file, "CONTO_ORG_API_KEY");
    let url = exported(&file, "CONTO_API_URL");
    assert_eq!(exported(&file, "CONTO_ACTOR"), "agent-1");
    assert!(sdk_key.starts_with("conto_agent_") && org_key.starts_with("conto_org_"), "{file}");
    for secret in [sdk_key, org_key] {
        assert!(!printed.contains(secret), "a key was printed:\n{printed}");
    }
    assert!(printed.contains(&format!("source {}", env_file.display())), "{printed}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&env_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the credentials file is readable by its owner only");
    }

    // What the file holds is what the server accepts: the agent's key on the SDK, the org key on
    // the org API.
    let http = reqwest::Client::new();
    let sdk = http.get(format!("{url}/api/sdk/x402/budget")).bearer_auth(sdk_key).send().await.unwrap();
    assert_eq!(sdk.status(), 200, "{}", sdk.text().await.unwrap());
    let org = http.get(format!("{url}/api/agents")).bearer_auth(org_key).send().await.unwrap();
    assert_eq!(org.status(), 200, "{}", org.text().await.unwrap());
    let wrong = http.get(format!("{url}/api/sdk/x402/budget")).bearer_auth("conto_agent_wrong").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    std::fs::remove_dir_all(dir).ok();
}

/// Values that would leave the operator locked out, or every approval lapsed when issued, are
/// refused at start with what is wrong, before anything is served.
#[test]
fn an_org_key_that_cannot_be_one_or_a_zero_approval_lifetime_is_refused_at_start() {
    let env_file = std::env::temp_dir().join(format!("conto-local-cli-refused-{}.env", std::process::id()));
    for (args, says) in [
        (vec!["--org-key", "conto_agent_0123456789abcdef"], "agent SDK key"),
        (vec!["--org-key", " "], "empty"),
        (vec!["--approval-ttl-secs", "0"], "approval-ttl-secs"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_conto-local"))
            .args(["--in-memory", "--port", "0", "--env-file"])
            .arg(&env_file)
            .args(&args)
            .env_remove("CONTO_ORG_API_KEY")
            .output()
            .expect("conto-local runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(says), "{args:?}: {stderr}");
    }
    assert!(!env_file.exists(), "nothing was written");
}

/// The library refuses an approval lifetime under a second as the binary does.
#[tokio::test]
async fn the_library_refuses_an_approval_lifetime_under_a_second() {
    for ttl in [conto_core::jiff::SignedDuration::ZERO, conto_core::jiff::SignedDuration::from_millis(999)] {
        let config = conto_local::Config { port: 0, approval_ttl: Some(ttl), ..conto_local::Config::default() };
        let Err(err) = conto_local::start(config).await else { panic!("an approval lifetime of {ttl} was taken") };
        assert!(matches!(err, conto_local::LocalError::InvalidApprovalTtl(_)), "{err}");
    }
}
