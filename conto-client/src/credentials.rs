//! Per-actor Conto bindings with their SDK keys encrypted at rest.
//!
//! [`CredentialStore`] maps an app actor (a user, workspace, bot or run) to its Conto agent id
//! and SDK key. The file holds each key sealed with XChaCha20-Poly1305 under a 256-bit master
//! key, with the actor and agent id as associated data (so entries cannot be swapped). The master
//! key comes from a [`KeyProvider`] (for example [`EnvKey`], `CONTO_MASTER_KEY` as 64 hex
//! characters). In memory, keys are [`SecretString`]s.
//!
//! # Rotating the master key without downtime
//!
//! [`CredentialStore::open_with_previous`] opens a store with a primary key, used for every
//! write, and previous keys, still accepted for reading. Roll out a new key in three steps, so
//! every running instance can read every entry at every moment:
//!
//! 1. deploy every instance with the **old** key as primary and the **new** one as previous;
//! 2. deploy every instance with the **new** key as primary and the **old** one as previous
//!    (entries written from now on are sealed with the new key; both stay readable);
//! 3. call [`CredentialStore::rotate`] once (every entry is re-sealed with the new key), then
//!    deploy without the old key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};

/// Why the credential store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The file could not be read or written.
    #[error("credential file {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The file is not a credential file.
    #[error("credential file {path} is malformed: {message}")]
    Malformed {
        /// The file.
        path: String,
        /// What the parser saw.
        message: String,
    },
    /// An entry did not decrypt: the master key is wrong or the file was tampered with.
    #[error("cannot decrypt the credentials of actor `{actor}`: wrong master key, or the file was tampered with")]
    Decrypt {
        /// The actor whose entry failed.
        actor: String,
    },
    /// No binding for this actor (there is never a fallback to a shared key).
    #[error("no Conto binding for actor `{0}`")]
    UnknownActor(String),
    /// The master key is missing or malformed.
    #[error("master key: {0}")]
    MasterKey(String),
}

/// Supplies the 256-bit master key.
pub trait KeyProvider: Send + Sync {
    /// The master key.
    fn master_key(&self) -> Result<SecretBox<[u8; 32]>, CredentialError>;
}

/// The master key from an environment variable holding 64 hex characters.
#[derive(Debug, Clone)]
pub struct EnvKey(pub String);

impl Default for EnvKey {
    fn default() -> Self {
        Self("CONTO_MASTER_KEY".into())
    }
}

impl KeyProvider for EnvKey {
    fn master_key(&self) -> Result<SecretBox<[u8; 32]>, CredentialError> {
        let text = std::env::var(&self.0).map_err(|_| CredentialError::MasterKey(format!("{} is not set", self.0)))?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key)
            .map_err(|_| CredentialError::MasterKey(format!("{} must be 64 hex characters", self.0)))?;
        Ok(SecretBox::new(Box::new(key)))
    }
}

/// A fixed master key (tests, or keys fetched by the app itself).
pub struct StaticKey(SecretBox<[u8; 32]>);

impl StaticKey {
    /// Wraps a key.
    pub fn new(key: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(key)))
    }
}

impl KeyProvider for StaticKey {
    fn master_key(&self) -> Result<SecretBox<[u8; 32]>, CredentialError> {
        Ok(SecretBox::new(Box::new(*self.0.expose_secret())))
    }
}

/// Seals the approval tokens an outbox stores (`Outbox::seal_tokens`, `PgOutbox::seal_tokens`)
/// with XChaCha20-Poly1305 under the master key, each bound to its authorization id, so a
/// stolen outbox file or table holds no usable token.
pub struct TokenSealer {
    cipher: XChaCha20Poly1305,
    /// Earlier keys, tried in turn to open what they sealed (a key rotation).
    previous: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for TokenSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSealer([redacted])")
    }
}

impl TokenSealer {
    /// A sealer under `provider`'s master key (e.g. `EnvKey::default()`, `CONTO_MASTER_KEY`).
    pub fn new(provider: &dyn KeyProvider) -> Result<Self, CredentialError> {
        let key = provider.master_key()?;
        Ok(Self { cipher: XChaCha20Poly1305::new(key.expose_secret().into()), previous: Vec::new() })
    }

    /// Also opens what `provider`'s key sealed before a rotation (new tokens are sealed under
    /// the current key only): records queued under the old key are still delivered. Drop it
    /// once no record sealed under it is left.
    pub fn with_previous(mut self, provider: &dyn KeyProvider) -> Result<Self, CredentialError> {
        let key = provider.master_key()?;
        self.previous.push(XChaCha20Poly1305::new(key.expose_secret().into()));
        Ok(self)
    }
}

impl conto_core::sink::TokenSeal for TokenSealer {
    fn seal(&self, token: &str, aad: &str) -> Result<String, conto_core::sink::SinkError> {
        let nonce: [u8; 24] = rand::random();
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: token.as_bytes(), aad: aad.as_bytes() })
            .map_err(|_| conto_core::sink::SinkError("sealing the approval token failed".into()))?;
        Ok(format!("{}{}", hex::encode(nonce), hex::encode(ciphertext)))
    }

    fn open(&self, sealed: &str, aad: &str) -> Result<String, conto_core::sink::SinkError> {
        let fail = || conto_core::sink::SinkError("the approval token does not open under this key".into());
        let bytes = hex::decode(sealed).map_err(|_| fail())?;
        if bytes.len() < 24 {
            return Err(fail());
        }
        let (nonce, ciphertext) = bytes.split_at(24);
        let plain = std::iter::once(&self.cipher)
            .chain(&self.previous)
            .find_map(|cipher| {
                cipher.decrypt(XNonce::from_slice(nonce), Payload { msg: ciphertext, aad: aad.as_bytes() }).ok()
            })
            .ok_or_else(fail)?;
        String::from_utf8(plain).map_err(|_| fail())
    }
}

/// One actor's binding.
#[derive(Clone)]
pub struct Binding {
    /// The Conto agent the actor pays as.
    pub agent_id: String,
    /// The agent's SDK key.
    pub sdk_key: SecretString,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding").field("agent_id", &self.agent_id).field("sdk_key", &"[redacted]").finish()
    }
}

#[derive(Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    entries: Vec<Sealed>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sealed {
    actor: String,
    agent_id: String,
    nonce: String,
    ciphertext: String,
}

/// A file-backed store of actor → (agent id, SDK key), keys encrypted at rest.
pub struct CredentialStore {
    path: PathBuf,
    key: RwLock<SecretBox<[u8; 32]>>,
    entries: RwLock<BTreeMap<String, Binding>>,
    /// Held from reading the entries to using what was saved: two changes at once would each
    /// save without the other's.
    saving: std::sync::Mutex<()>,
}

impl std::fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialStore").field("path", &self.path).finish_non_exhaustive()
    }
}

fn aad(actor: &str, agent_id: &str) -> Vec<u8> {
    format!("conto-rs/credentials/v1\0{actor}\0{agent_id}").into_bytes()
}

impl CredentialStore {
    /// Opens the store at `path` (an absent file is an empty store), decrypting every entry.
    pub fn open(path: impl AsRef<Path>, provider: &dyn KeyProvider) -> Result<Self, CredentialError> {
        Self::open_with_previous(path, provider, &[])
    }

    /// Opens the store with `provider` as the primary key (every write) and `previous` keys
    /// still accepted for reading, for a rotation without downtime (see the module docs).
    pub fn open_with_previous(
        path: impl AsRef<Path>,
        provider: &dyn KeyProvider,
        previous: &[&dyn KeyProvider],
    ) -> Result<Self, CredentialError> {
        let path = path.as_ref().to_path_buf();
        let key = provider.master_key()?;
        let previous = previous.iter().map(|p| p.master_key()).collect::<Result<Vec<_>, _>>()?;
        let shown = path.display().to_string();
        let entries = match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: FileFormat = serde_json::from_str(&text)
                    .map_err(|e| CredentialError::Malformed { path: shown.clone(), message: e.to_string() })?;
                if file.version != 1 {
                    return Err(CredentialError::Malformed {
                        path: shown,
                        message: format!("unknown version {}", file.version),
                    });
                }
                let ciphers: Vec<XChaCha20Poly1305> = std::iter::once(&key)
                    .chain(previous.iter())
                    .map(|k| XChaCha20Poly1305::new(k.expose_secret().into()))
                    .collect();
                let mut out = BTreeMap::new();
                for e in file.entries {
                    let fail = || CredentialError::Decrypt { actor: e.actor.clone() };
                    let nonce = hex::decode(&e.nonce).map_err(|_| fail())?;
                    let ciphertext = hex::decode(&e.ciphertext).map_err(|_| fail())?;
                    if nonce.len() != 24 {
                        return Err(fail());
                    }
                    // The AEAD tag authenticates: only the key that sealed the entry opens it.
                    let aad = aad(&e.actor, &e.agent_id);
                    let plain = ciphers
                        .iter()
                        .find_map(|c| {
                            c.decrypt(XNonce::from_slice(&nonce), Payload { msg: &ciphertext, aad: &aad }).ok()
                        })
                        .ok_or_else(fail)?;
                    let sdk_key = String::from_utf8(plain).map_err(|_| fail())?;
                    out.insert(e.actor, Binding { agent_id: e.agent_id, sdk_key: SecretString::from(sdk_key) });
                }
                out
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(CredentialError::Io { path: shown, message: e.to_string() }),
        };
        Ok(Self { path, key: RwLock::new(key), entries: RwLock::new(entries), saving: std::sync::Mutex::new(()) })
    }

    /// Binds `actor` to `agent_id` and its SDK key, and saves the file. The binding is used
    /// only once it is saved: a save that fails changes nothing.
    pub fn bind(&self, actor: &str, agent_id: &str, sdk_key: &str) -> Result<(), CredentialError> {
        let binding = Binding { agent_id: agent_id.to_owned(), sdk_key: SecretString::from(sdk_key.to_owned()) };
        self.change(|entries| {
            entries.insert(actor.to_owned(), binding);
        })
    }

    /// Removes `actor`'s binding, and saves the file (a save that fails changes nothing).
    pub fn unbind(&self, actor: &str) -> Result<bool, CredentialError> {
        let mut removed = false;
        self.change(|entries| removed = entries.remove(actor).is_some())?;
        Ok(removed)
    }

    /// Applies `edit` to a copy of the entries, saves the copy, and only then uses it.
    fn change(&self, edit: impl FnOnce(&mut BTreeMap<String, Binding>)) -> Result<(), CredentialError> {
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = self.entries.read().unwrap_or_else(|e| e.into_inner()).clone();
        edit(&mut next);
        self.write(&self.key.read().unwrap_or_else(|e| e.into_inner()), &next)?;
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    /// `actor`'s binding; an unknown actor is an error, never a shared fallback.
    pub fn get(&self, actor: &str) -> Result<Binding, CredentialError> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(actor)
            .cloned()
            .ok_or_else(|| CredentialError::UnknownActor(actor.to_owned()))
    }

    /// The bound actors.
    pub fn actors(&self) -> Vec<String> {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Re-encrypts every entry under the new master key, and saves the file.
    /// The new key is used only once the file is saved under it.
    pub fn rotate(&self, provider: &dyn KeyProvider) -> Result<(), CredentialError> {
        let key = provider.master_key()?;
        let _saving = self.saving.lock().unwrap_or_else(|e| e.into_inner());
        self.write(&key, &self.entries.read().unwrap_or_else(|e| e.into_inner()))?;
        *self.key.write().unwrap_or_else(|e| e.into_inner()) = key;
        Ok(())
    }

    /// Writes `entries` sealed under `key`: to a temporary sibling first (readable by its owner
    /// only, synced), then renamed over the old one. The caller holds `saving`: one save at a
    /// time.
    fn write(&self, key: &SecretBox<[u8; 32]>, entries: &BTreeMap<String, Binding>) -> Result<(), CredentialError> {
        let cipher = XChaCha20Poly1305::new(key.expose_secret().into());
        let mut sealed = Vec::new();
        for (actor, b) in entries {
            let nonce: [u8; 24] = rand::random();
            let ciphertext = cipher
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload { msg: b.sdk_key.expose_secret().as_bytes(), aad: &aad(actor, &b.agent_id) },
                )
                .map_err(|_| CredentialError::MasterKey("encryption failed".into()))?;
            sealed.push(Sealed {
                actor: actor.clone(),
                agent_id: b.agent_id.clone(),
                nonce: hex::encode(nonce),
                ciphertext: hex::encode(ciphertext),
            });
        }
        let text = serde_json::to_string_pretty(&FileFormat { version: 1, entries: sealed }).map_err(|e| {
            CredentialError::Malformed { path: self.path.display().to_string(), message: e.to_string() }
        })?;
        let io =
            |e: std::io::Error| CredentialError::Io { path: self.path.display().to_string(), message: e.to_string() };
        let name = self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A name no one can have made ahead (a file or a link someone else owns would
        // otherwise be written through): drawn, and created only if it does not exist.
        let tmp = self.path.with_file_name(format!(".{name}.{}.tmp", hex::encode(rand::random::<[u8; 8]>())));
        let written = owner_only(&tmp).and_then(|mut file| {
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            file.sync_all()
        });
        match written.and_then(|()| std::fs::rename(&tmp, &self.path)) {
            Ok(()) => {
                // The rename itself made durable: a revoked key does not come back after a
                // power loss.
                #[cfg(unix)]
                {
                    let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
                        tracing::warn!(path = %self.path.display(), error = %e,
                            "conto.credentials.dir_sync_failed: the save may not survive a power loss");
                    }
                }
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(io(e))
            }
        }
    }
}

/// A new file, readable and writable by its owner only on Unix; an error if `path` exists.
fn owner_only(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

#[cfg(test)]
mod tests {
    use conto_core::sink::TokenSeal;

    use super::*;

    #[test]
    fn a_sealed_token_opens_only_under_its_key_and_for_its_authorization() {
        let token = "ab".repeat(32);
        let sealer = TokenSealer::new(&StaticKey::new([7; 32])).unwrap();
        let sealed = sealer.seal(&token, "auth_1").unwrap();
        assert!(!sealed.contains(&token), "not readable at rest");
        assert_eq!(sealer.open(&sealed, "auth_1").unwrap(), token);
        assert!(sealer.open(&sealed, "auth_2").is_err(), "bound to its authorization");
        let other = TokenSealer::new(&StaticKey::new([8; 32])).unwrap();
        assert!(other.open(&sealed, "auth_1").is_err(), "another key opens nothing");
        assert!(sealer.open("zz", "auth_1").is_err());
        assert_ne!(sealer.seal(&token, "auth_1").unwrap(), sealed, "a fresh nonce each time");
    }

    /// A key rotation: the new sealer, given the old key as previous, opens what the old one
    /// sealed and seals under the new key only.
    #[test]
    fn a_rotated_sealer_opens_what_its_previous_key_sealed() {
        let token = "cd".repeat(32);
        let old = TokenSealer::new(&StaticKey::new([1; 32])).unwrap();
        let sealed_before = old.seal(&token, "auth_1").unwrap();
        let rotated =
            TokenSealer::new(&StaticKey::new([2; 32])).unwrap().with_previous(&StaticKey::new([1; 32])).unwrap();
        assert_eq!(rotated.open(&sealed_before, "auth_1").unwrap(), token);
        assert!(rotated.open(&sealed_before, "auth_2").is_err(), "still bound to its authorization");
        let sealed_after = rotated.seal(&token, "auth_1").unwrap();
        assert!(old.open(&sealed_after, "auth_1").is_err(), "new tokens are sealed under the new key");
        assert_eq!(TokenSealer::new(&StaticKey::new([2; 32])).unwrap().open(&sealed_after, "auth_1").unwrap(), token);
    }

    #[test]
    fn a_binding_whose_save_failed_is_not_used() {
        // A key kept only in memory would be used now and lost at the next start, while the
        // lifecycle believed it sealed.
        let dir = std::env::temp_dir().join(format!("conto-cred-save-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        let store = CredentialStore::open(&path, &StaticKey::new([7; 32])).unwrap();
        store.bind("ws-1", "agent_1", "conto_agent_one").unwrap();
        // The file replaced by a directory that is not empty: the next save cannot land.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir_all(path.join("in-the-way")).unwrap();
        assert!(matches!(store.bind("ws-2", "agent_2", "conto_agent_two"), Err(CredentialError::Io { .. })));
        assert!(matches!(store.get("ws-2"), Err(CredentialError::UnknownActor(_))), "not in use");
        assert!(store.unbind("ws-1").is_err());
        assert_eq!(store.get("ws-1").unwrap().agent_id, "agent_1", "still bound");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
