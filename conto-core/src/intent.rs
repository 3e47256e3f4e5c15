//! What the app wants to pay for: a [`PaymentIntent`] with its [`Rail`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::money::{Amount, AmountError};

/// Why an intent (or one of its parts) is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    /// The amount is not a valid [`Amount`].
    #[error("invalid amount: {0}")]
    Amount(#[from] AmountError),
    /// An address (the recipient, a transfer's sender) is neither an EVM address nor a Solana
    /// address.
    #[error(
        "invalid address `{0}`: expected an EVM address (0x + 40 hex digits) or a Solana address (32-44 base58 characters)"
    )]
    Address(String),
    /// The rail needs a recipient address and none was given.
    #[error("the {0} rail needs a recipient address")]
    MissingRecipient(&'static str),
    /// No actor was named, and the handle has no default actor.
    #[error("no actor: pass `actor = ...` to #[paid_action] or set ContoBuilder::default_actor")]
    MissingActor,
    /// The actor (the Conto agent that pays) is empty.
    #[error("the actor must not be empty")]
    EmptyActor,
    /// The actor id breaks the rule in [`ActorId`]'s docs.
    #[error("invalid actor id `{id}`: {reason}")]
    Actor {
        /// The id as given (truncated to 64 characters).
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The idempotency key is empty or longer than 255 characters.
    #[error("idempotency key must be 1-255 characters, got {0}")]
    IdempotencyKey(usize),
    /// The caller's idempotency key names a payment this handle already has under way or has
    /// settled (within a day): the authority would answer it with that payment's approval, and
    /// the settlement would run, and pay, twice.
    #[error("idempotency key `{0}` names a payment already under way or settled: a new payment needs a new key")]
    IdempotencyKeyUsed(String),
    /// A rail field is empty or malformed.
    #[error("invalid {field}: {reason}")]
    Field {
        /// The field's name, as Conto spells it.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// A recipient wallet address: EVM (`0x` + 40 hex, compared case-insensitively) or Solana
/// (base58, 32–44 characters, case-sensitive).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Address(String);

impl Address {
    /// Validates an address.
    pub fn parse(s: &str) -> Result<Self, IntentError> {
        Self::parse_owned(s.to_owned())
    }

    /// [`Address::parse`] of text the caller already owns: an EVM address is lower-cased in
    /// place, so a valid address costs no allocation.
    pub(crate) fn parse_owned(mut s: String) -> Result<Self, IntentError> {
        let evm = s.len() == 42 && (s.starts_with("0x") || s.starts_with("0X")) && all_hex_digits(&s.as_bytes()[2..]);
        if evm {
            s.make_ascii_lowercase();
            return Ok(Self(s));
        }
        const BASE58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
        let solana = (32..=44).contains(&s.len()) && s.chars().all(|c| BASE58.contains(c));
        if solana {
            return Ok(Self(s));
        }
        Err(IntentError::Address(s))
    }

    /// The canonical text: EVM addresses lower-cased, Solana addresses as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is an EVM address.
    pub fn is_evm(&self) -> bool {
        self.0.starts_with("0x")
    }
}

/// Whether every byte is an ASCII hex digit (either case), checked eight bytes at a time.
fn all_hex_digits(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    // Each byte of `x` below 0x80 (no carry between bytes): its high bit set where `lo <= b <= hi`.
    let within = |x: u64, lo: u8, hi: u8| (x + ONES * u64::from(0x80 - lo)) & !(x + ONES * u64::from(0x7f - hi)) & HIGH;
    let word = |x: u64| x & HIGH == 0 && (within(x, b'0', b'9') | within(x | (ONES * 0x20), b'a', b'f')) == HIGH;
    let mut words = bytes.chunks_exact(8);
    words.all(|w| w.try_into().is_ok_and(|w| word(u64::from_le_bytes(w))))
        && words.remainder().iter().all(u8::is_ascii_hexdigit)
}

impl FromStr for Address {
    type Err = IntentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Address({})", self.0)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Address::parse_owned(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// The identity that pays: a Conto agent, or an app actor bound to one.
///
/// # The rule for actor ids
///
/// An actor id is 1 to [`ActorId::MAX_LEN`] bytes of ASCII letters, digits and `-_.:@+`. It is
/// taken **exactly as given**: no trimming, no case folding. `Agent-1` and `agent-1` are two
/// different actors, and ` agent-1` (with a space) is not an actor id at all, so no spelling of
/// a provisioned id can alias another one. Whitespace, control characters and non-ASCII text
/// are rejected rather than normalised.
///
/// An id being valid does not make it able to pay: an authority only approves actors that were
/// provisioned ([`Engine`](crate::Engine) keeps a registry; Conto issues SDK keys per agent).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ActorId(String);

impl ActorId {
    /// The longest actor id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Validates an actor id (see the rule above).
    pub fn new(id: impl Into<String>) -> Result<Self, IntentError> {
        let id = id.into();
        let bad = |reason| IntentError::Actor { id: id.chars().take(64).collect(), reason };
        if id.is_empty() {
            return Err(IntentError::EmptyActor);
        }
        if id.len() > Self::MAX_LEN {
            return Err(bad("longer than 128 bytes"));
        }
        // One pass over the bytes; the reason is worked out only for an id that fails it.
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@' | b'+')) {
            if id.chars().any(char::is_whitespace) {
                return Err(bad("contains whitespace (actor ids are never trimmed)"));
            }
            return Err(bad("only ASCII letters, digits and -_.:@+ are allowed"));
        }
        // In a URL (`/api/agents/{id}`) these are dot segments every client removes: the
        // request would reach another route.
        if id == "." || id == ".." {
            return Err(bad("`.` and `..` are not ids (URL clients remove them as path segments)"));
        }
        Ok(Self(id))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ActorId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        ActorId::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl FromStr for ActorId {
    type Err = IntentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ActorId({})", self.0)
    }
}

/// The key that identifies one payment attempt (not one HTTP try): 1–255 characters.
///
/// A drawn key ([`IdempotencyKey::random`]: `ck_` and 32 random hex digits) is held inline,
/// not allocated, so drawing one for every payment, and cloning it, costs no allocation.
#[derive(Clone)]
pub struct IdempotencyKey(Repr);

#[derive(Clone)]
enum Repr {
    /// `ck_` and 32 lower-case hex digits.
    Drawn([u8; DRAWN_LEN]),
    /// A caller's own key, or one read back.
    Named(String),
}

const DRAWN_LEN: usize = 3 + 32;

impl IdempotencyKey {
    /// Validates a caller-chosen key.
    pub fn new(key: impl Into<String>) -> Result<Self, IntentError> {
        let key = key.into();
        if key.is_empty() || key.len() > 255 {
            return Err(IntentError::IdempotencyKey(key.len()));
        }
        Ok(Self::read(key))
    }

    /// A key's text, kept as a drawn key when it has a drawn key's shape (one handed on, as an
    /// outbound payment's attempt key is), else as a named one.
    fn read(key: String) -> Self {
        let bytes = key.as_bytes();
        let drawn = bytes.len() == DRAWN_LEN
            && bytes.starts_with(b"ck_")
            && bytes[3..].iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
        match <[u8; DRAWN_LEN]>::try_from(bytes) {
            Ok(text) if drawn => Self(Repr::Drawn(text)),
            _ => Self(Repr::Named(key)),
        }
    }

    /// A fresh random key (for attempts the caller does not name): `ck_` and 32 hex digits of
    /// a draw from the thread's CSPRNG, so one key tells nothing of the next (an agent's keys
    /// share one space at the authority: a key that could be foreseen could be taken first).
    pub fn random() -> Self {
        let mut text = [0u8; DRAWN_LEN];
        text[..3].copy_from_slice(b"ck_");
        let bits: u128 = rand::random();
        // 16 bytes into 32 hex digits: the slice is exactly twice their length.
        let _ = const_hex::encode_to_slice(bits.to_le_bytes(), &mut text[3..]);
        Self(Repr::Drawn(text))
    }

    /// Whether the caller named this key (rather than it being drawn).
    pub(crate) fn is_named(&self) -> bool {
        matches!(self.0, Repr::Named(_))
    }

    /// Makes the key a fresh one, as [`IdempotencyKey::random`].
    pub(crate) fn renew(&mut self) {
        *self = Self::random();
    }

    /// The key's text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // ASCII by construction.
            Repr::Drawn(text) => std::str::from_utf8(text).unwrap_or_default(),
            Repr::Named(text) => text,
        }
    }
}

impl PartialEq for IdempotencyKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for IdempotencyKey {}

impl std::hash::Hash for IdempotencyKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Serialize for IdempotencyKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for IdempotencyKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::read(String::deserialize(d)?))
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({})", self.as_str())
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The [`PaymentIntent::context`] key of the contract a payment calls, an address (Conto's
/// request field `targetContractAddress`, what `CONTRACT_ALLOWLIST` checks).
pub const TARGET_CONTRACT: &str = "targetContractAddress";
/// The [`PaymentIntent::context`] key of the contract function a payment calls, a 4-byte
/// selector such as `0xa9059cbb` (Conto's `functionSelector`).
pub const FUNCTION_SELECTOR: &str = "functionSelector";

/// How the money moves. Each rail maps to one pair of Conto endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rail", rename_all = "camelCase")]
pub enum Rail {
    /// A transfer from the app's own wallet (`payments/approve` → `payments/{id}/confirm`).
    Transfer {
        /// The chain the transfer happens on (8453 Base, 1 Ethereum, …).
        #[serde(rename = "chainId")]
        chain_id: u64,
        /// The app's wallet that pays.
        #[serde(rename = "senderAddress")]
        sender: Address,
    },
    /// An x402 payment (`x402/pre-authorize` → `x402/record`).
    X402 {
        /// The paid resource's URL.
        #[serde(rename = "resourceUrl")]
        resource_url: String,
        /// The service's domain (derived from `resourceUrl` when not given).
        #[serde(rename = "serviceDomain")]
        service_domain: String,
        /// The facilitator that settles.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        facilitator: Option<String>,
        /// The x402 scheme, e.g. `exact`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scheme: Option<String>,
    },
    /// An MPP payment (`mpp/pre-authorize` → `mpp/record`).
    Mpp {
        /// The paid resource's URL.
        #[serde(rename = "resourceUrl")]
        resource_url: String,
        /// The service's domain (derived from `resourceUrl` when not given).
        #[serde(rename = "serviceDomain")]
        service_domain: String,
        /// The session this payment belongs to, if any.
        #[serde(rename = "sessionId", default, skip_serializing_if = "Option::is_none")]
        session_id: Option<String>,
        /// The MPP intent (`session`, `charge`, …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        intent: Option<String>,
        /// The deposit the session opens with.
        #[serde(rename = "depositAmount", default, skip_serializing_if = "Option::is_none")]
        deposit: Option<Amount>,
        /// The HTTP method of the paid request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        method: Option<String>,
    },
    /// A card payment (`cards/approve` → `cards/{id}/confirm`).
    Card {
        /// The card to charge.
        #[serde(rename = "cardId", default, skip_serializing_if = "Option::is_none")]
        card_id: Option<String>,
        /// The merchant's name.
        #[serde(rename = "merchantName")]
        merchant: String,
        /// The merchant category code (4 digits).
        #[serde(rename = "merchantCategory", default, skip_serializing_if = "Option::is_none")]
        mcc: Option<String>,
    },
    /// A payment request (`payments/request` with `autoExecute: false`): Conto decides, the app
    /// settles elsewhere — a card processor, a bank — as Conto's hybrid example does. Conto has
    /// no record step for it: recording is local only (see the client's docs).
    Request {
        /// The Conto wallet the request is evaluated against (`walletId`), if any.
        #[serde(rename = "walletId", default, skip_serializing_if = "Option::is_none")]
        wallet_id: Option<String>,
    },
}

impl Rail {
    /// The rail's name: `transfer`, `x402`, `mpp`, `card` or `request`.
    pub fn name(&self) -> &'static str {
        match self {
            Rail::Transfer { .. } => "transfer",
            Rail::X402 { .. } => "x402",
            Rail::Mpp { .. } => "mpp",
            Rail::Card { .. } => "card",
            Rail::Request { .. } => "request",
        }
    }

    /// A payment request (see [`Rail::Request`]), optionally against a Conto wallet.
    pub fn request(wallet_id: Option<&str>) -> Self {
        Rail::Request { wallet_id: wallet_id.map(str::to_owned) }
    }

    /// A transfer from the app's wallet on `chain_id`.
    pub fn transfer(chain_id: u64, sender: &str) -> Result<Self, IntentError> {
        Self::transfer_owned(chain_id, sender.to_owned())
    }

    /// [`Rail::transfer`] with a sender the caller already owns.
    pub(crate) fn transfer_owned(chain_id: u64, sender: String) -> Result<Self, IntentError> {
        Ok(Rail::Transfer { chain_id, sender: Address::parse_owned(sender)? })
    }

    /// An x402 payment for `resource_url`; the service domain is the URL's host.
    pub fn x402(resource_url: &str) -> Result<Self, IntentError> {
        let (resource_url, service_domain) = canonical_resource(resource_url)?;
        Ok(Rail::X402 { service_domain, resource_url, facilitator: None, scheme: Some("exact".to_owned()) })
    }

    /// An MPP payment for `resource_url`; the service domain is the URL's host.
    pub fn mpp(resource_url: &str) -> Result<Self, IntentError> {
        let (resource_url, service_domain) = canonical_resource(resource_url)?;
        Ok(Rail::Mpp { service_domain, resource_url, session_id: None, intent: None, deposit: None, method: None })
    }

    /// A card payment at `merchant`.
    pub fn card(merchant: &str) -> Result<Self, IntentError> {
        if merchant.trim().is_empty() {
            return Err(IntentError::Field { field: "merchantName", reason: "must not be empty".into() });
        }
        Ok(Rail::Card { card_id: None, merchant: merchant.to_owned(), mcc: None })
    }

    /// Whether a payment on this rail names its recipient's address (every rail but a card's).
    pub fn needs_recipient(&self) -> bool {
        !matches!(self, Rail::Card { .. })
    }

    fn validate(&self) -> Result<(), IntentError> {
        match self {
            Rail::Transfer { .. } => Ok(()),
            Rail::Request { wallet_id } => match wallet_id {
                Some(w) if w.trim().is_empty() => {
                    Err(IntentError::Field { field: "walletId", reason: "must not be empty".into() })
                }
                _ => Ok(()),
            },
            Rail::X402 { resource_url, service_domain, .. } | Rail::Mpp { resource_url, service_domain, .. } => {
                if !has_http_scheme(resource_url) {
                    return Err(IntentError::Field {
                        field: "resourceUrl",
                        reason: format!("`{resource_url}` is not an http(s) URL"),
                    });
                }
                // Not blank: at once when it starts with a visible ASCII character (it does).
                let starts_visible = service_domain.as_bytes().first().is_some_and(u8::is_ascii_graphic);
                if !starts_visible && service_domain.trim().is_empty() {
                    return Err(IntentError::Field { field: "serviceDomain", reason: "must not be empty".into() });
                }
                Ok(())
            }
            Rail::Card { merchant, mcc, .. } => {
                if merchant.trim().is_empty() {
                    return Err(IntentError::Field { field: "merchantName", reason: "must not be empty".into() });
                }
                if let Some(mcc) = mcc
                    && (mcc.len() != 4 || !mcc.bytes().all(|b| b.is_ascii_digit()))
                {
                    return Err(IntentError::Field {
                        field: "merchantCategory",
                        reason: format!("`{mcc}` is not a 4-digit merchant category code"),
                    });
                }
                Ok(())
            }
        }
    }
}

/// The service a paid `http(s)://` URL reaches: its host as a browser's URL parser (WHATWG,
/// the [`url`] crate) finds it, in canonical form: an internationalized name in its ASCII
/// (punycode) form, lower-cased, percent-escapes decoded, without a trailing dot; an IPv6
/// address without its brackets. Equivalent spellings of one host are one service, so a
/// list of services cannot be stepped around by spelling a host another way
/// (`https://API.example.com./` and `https://api%2Eexample.com/` reach `api.example.com`).
/// A URL with credentials (`user@`) or a backslash before its query is refused: HTTP clients that do not follow the WHATWG rules read its host differently, so
/// the host checked might not be the one paid.
pub fn service_domain_of(url: &str) -> Result<String, IntentError> {
    canonical_resource(url).map(|(_, host)| host)
}

/// A paid resource's URL in canonical form (as [`url::Url`] serializes it: scheme and host
/// lower-cased, the host as [`service_domain_of`] gives it, the default port and `.` / `..`
/// path segments gone, no fragment; and in its path, as RFC 3986 §6.2.2 normalizes, an
/// unreserved character written as a percent-escape (`%76`) written as itself and every other
/// escape's hex digits in upper case), and its service domain, from one parse. What an
/// x402/MPP rail holds, so that per-endpoint limits, and a record matched to its
/// pre-authorization, see one endpoint however it is spelled.
pub fn canonical_resource(url: &str) -> Result<(String, String), IntentError> {
    let bad = |reason: &str| IntentError::Field { field: "resourceUrl", reason: format!("`{url}` {reason}") };
    let mut parsed = url::Url::parse(url.trim()).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("is not an http(s) URL"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("carries credentials (`user@`); send the URL without them"));
    }
    if url.split(['?', '#']).next().unwrap_or_default().contains('\\') {
        return Err(bad("has a backslash before its query; write `/`"));
    }
    let host =
        parsed.host().ok_or_else(|| bad("has no host")).map(canonical_host)?.ok_or_else(|| bad("has no host"))?;
    if parsed.host_str().is_some_and(|h| h.ends_with('.')) {
        parsed.set_host(Some(&host)).map_err(|e| bad(&format!("has a host that cannot be written ({e})")))?;
    }
    parsed.set_fragment(None);
    if parsed.path().contains('%') {
        let path = normalized_escapes(parsed.path());
        parsed.set_path(&path);
    }
    Ok((parsed.into(), host))
}

/// `path` with each percent-escape of an unreserved character (RFC 3986 §2.3: letters,
/// digits, `-`, `.`, `_`, `~`) decoded and every other escape's hex digits upper-cased: the
/// same resource to every server (§6.2.2.1–2).
fn normalized_escapes(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => (*hi as char).to_digit(16).zip((*lo as char).to_digit(16)),
            _ => None,
        };
        match escaped {
            Some((hi, lo)) => {
                let byte = (hi * 16 + lo) as u8;
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    out.push(byte as char);
                } else {
                    out.push_str(&format!("%{byte:02X}"));
                }
                i += 3;
            }
            None => {
                // Not an escape: copied as it is (a path from `url` is ASCII).
                let next = path[i + 1..].find('%').map_or(path.len(), |at| i + 1 + at);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    out
}

/// The endpoint a canonical resource URL ([`canonical_resource`]) is counted under, by
/// per-endpoint limits and when a record is matched to its pre-authorization: its host and
/// path, without scheme, port or query, the path read as the servers that read paths most
/// loosely would: case ignored; `;` parameters dropped from each segment as sent (as Tomcat
/// does, before it decodes anything); then decoded once more (`%252F` is `%2F`) and an escaped
/// `.`, `/`, `\` or space read as itself (`/` for `\`); a segment's trailing dots and spaces
/// dropped (as Windows servers do); empty segments and a trailing `/` dropped; `.` and `..`
/// segments resolved. IIS's `%u` escapes and overlong UTF-8 are not read. Spellings some
/// server would route to one resource then share one per-endpoint limit; two endpoints that
/// differ only so (or only by scheme or port) share it too, which errs on the side of counting.
pub fn endpoint_key(resource_url: &str) -> String {
    let url = resource_url.split(['?', '#']).next().unwrap_or_default();
    let authority_at = url.find("://").map_or(0, |at| at + 3);
    let path_at = url[authority_at..].find('/').map_or(url.len(), |p| authority_at + p);
    let authority = &url[authority_at..path_at];
    // The host without its port (an IPv6 host keeps its brackets and colons).
    let host = match authority.rfind(':') {
        Some(colon) if !authority[colon..].contains(']') => &authority[..colon],
        _ => authority,
    };
    let mut segments: Vec<String> = Vec::new();
    let path = &url[path_at..];
    // Decoded once more (a chain of proxies may decode twice), the path ends at what a second
    // decoding makes a query or fragment (`%253F`, `%2523`).
    let lower = path.to_ascii_lowercase();
    let end = ["%253f", "%2523"].iter().filter_map(|m| lower.find(m)).min().unwrap_or(path.len());
    let path = &path[..end];
    for raw in path.split('/') {
        let kept = raw.split(';').next().unwrap_or_default();
        let kept = if kept.contains('%') {
            // Decoded once more: `%2563` is `c`, `%252f` is `%2F`, and a parameter a second
            // decoding makes (`%253B`) is dropped; then an escaped slash, backslash or space is
            // that character.
            let kept = normalized_escapes(&kept.replace("%25", "%"));
            let kept = kept.split("%3B").next().unwrap_or_default().to_ascii_lowercase();
            kept.replace("%2f", "/").replace("%5c", "/").replace("%20", " ")
        } else {
            kept.to_ascii_lowercase()
        };
        for segment in kept.split('/') {
            // Windows servers drop a segment's trailing dots and spaces.
            let segment =
                if segment == "." || segment == ".." { segment } else { segment.trim_end_matches(['.', ' ']) };
            match segment {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                segment => segments.push(segment.to_owned()),
            }
        }
    }
    let mut key = String::with_capacity(url.len());
    key.push_str(host);
    for segment in &segments {
        key.push('/');
        key.push_str(segment);
    }
    if segments.is_empty() {
        key.push('/');
    }
    key
}

/// A service domain written by hand (a policy's list entry, a request's `serviceDomain`) in
/// the canonical form [`service_domain_of`] gives a URL's host; `None` when it is not a host
/// name or address.
pub fn canonical_service_domain(domain: &str) -> Option<String> {
    let domain = domain.trim();
    // An IPv6 address as `service_domain_of` writes it (no brackets) or as a URL does.
    if domain.contains(':') && !domain.starts_with('[') {
        return domain.parse::<std::net::Ipv6Addr>().ok().map(|ip| ip.to_string());
    }
    canonical_host(url::Host::parse(domain).ok()?)
}

fn canonical_host<S: AsRef<str>>(host: url::Host<S>) -> Option<String> {
    match host {
        url::Host::Domain(d) => {
            let d = d.as_ref().trim_end_matches('.');
            (!d.is_empty()).then(|| d.to_ascii_lowercase())
        }
        url::Host::Ipv4(ip) => Some(ip.to_string()),
        url::Host::Ipv6(ip) => Some(ip.to_string()),
    }
}

/// Whether `named` (a service domain written by hand) is `host` (a canonical host, from
/// [`service_domain_of`]) or a domain above it: `example.com` covers `api.example.com`, never
/// `badexample.com`; a top-level domain alone (`com`) covers nothing but itself.
pub fn service_domain_covers(named: &str, host: &str) -> bool {
    canonical_service_domain(named).is_some_and(|n| {
        host == n || (n.contains('.') && host.strip_suffix(n.as_str()).is_some_and(|sub| sub.ends_with('.')))
    })
}

/// Whether `url` starts with an `http://` or `https://` scheme (in any case), and has
/// something after it: the cheap check an intent's validation makes on every decision (the
/// host itself is found once, when the rail is built, by [`service_domain_of`]).
fn has_http_scheme(url: &str) -> bool {
    let after = |scheme: &str| {
        url.get(..scheme.len()).is_some_and(|s| s.eq_ignore_ascii_case(scheme)) && url.len() > scheme.len()
    };
    after("https://") || after("http://")
}

/// One paid action the app is about to settle: amount, recipient, rail and context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentIntent {
    /// Who pays: the Conto agent (or the app actor bound to one).
    pub actor: ActorId,
    /// How much, in Conto's unit.
    pub amount: Amount,
    /// Where the money goes (absent for card payments).
    #[serde(rename = "recipientAddress", default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<Address>,
    /// How the money moves.
    #[serde(flatten)]
    pub rail: Rail,
    /// The recipient's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_name: Option<String>,
    /// Why the app pays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The spend category (a free string; `API_PROVIDER`, `CLOUD`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Free metadata sent along with the request.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub context: serde_json::Map<String, serde_json::Value>,
    /// The payment attempt's key; the same attempt always carries the same key.
    pub idempotency_key: IdempotencyKey,
}

impl PaymentIntent {
    /// Starts an intent for `actor` paying `amount` on `rail`.
    ///
    /// ```
    /// use conto::{PaymentIntent, Rail};
    /// let intent = PaymentIntent::builder("agent-1", "2.50", Rail::x402("https://api.example.com/v1/search")?)
    ///     .recipient("0x1111111111111111111111111111111111111111")
    ///     .category("API_PROVIDER")
    ///     .build()?;
    /// assert_eq!(intent.amount.to_string(), "2.5");
    /// # Ok::<(), conto::IntentError>(())
    /// ```
    pub fn builder<A>(actor: impl Into<String>, amount: A, rail: Rail) -> IntentBuilder
    where
        A: TryInto<Amount>,
        A::Error: Into<IntentError>,
    {
        IntentBuilder {
            actor: actor.into(),
            amount: amount.try_into().map_err(Into::into),
            rail,
            recipient: None,
            recipient_name: None,
            purpose: None,
            category: None,
            context: serde_json::Map::new(),
            idempotency_key: None,
        }
    }

    /// The most this payment can spend under one approval: its amount, or an MPP session's
    /// deposit when that is larger (the session pays its requests out of the deposit without
    /// asking again, so the deposit is what is at stake). What the embedded engine reserves,
    /// checks per-payment and period limits against, and approves; only the MPP price rules
    /// (`MPP_PRICE_CEILING`, `MPP_MAX_PER_REQUEST`) read the per-request `amount`.
    ///
    /// ```
    /// use conto::{PaymentIntent, Rail};
    /// let mut rail = Rail::mpp("https://api.example.com/v1/stream")?;
    /// if let Rail::Mpp { deposit, .. } = &mut rail {
    ///     *deposit = Some("5".parse()?);
    /// }
    /// let session = PaymentIntent::builder("agent-1", "0.10", rail)
    ///     .recipient("0x1111111111111111111111111111111111111111")
    ///     .build()?;
    /// assert_eq!(session.exposure().to_string(), "5");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn exposure(&self) -> Amount {
        match &self.rail {
            Rail::Mpp { deposit: Some(deposit), .. } => self.amount.max(*deposit),
            _ => self.amount,
        }
    }

    /// Makes `intent` the next attempt at the same payment: the same intent under a fresh
    /// idempotency key, changed in place when nothing else holds it, copied when something
    /// does (what holds the earlier attempt keeps it as it was).
    pub fn next_attempt(intent: &mut std::sync::Arc<PaymentIntent>) {
        match std::sync::Arc::get_mut(intent) {
            Some(unique) => unique.idempotency_key.renew(),
            None => {
                let mut copy = PaymentIntent::clone(intent);
                copy.idempotency_key.renew();
                *intent = std::sync::Arc::new(copy);
            }
        }
    }

    /// The same payment (rail, recipient, its name, purpose, category, context) by `actor`
    /// for `amount`, as a new attempt under a fresh idempotency key. Nothing is checked again
    /// (the actor was, as an [`ActorId`]): a route or call site that always pays on one rail
    /// to one recipient builds and checks that part once, and the pipeline checks every
    /// intent before deciding on it.
    ///
    /// ```
    /// use conto::{ActorId, Amount, PaymentIntent, Rail};
    /// let search = PaymentIntent::builder("agent-1", "0.01", Rail::x402("https://api.example.com/v1/search")?)
    ///     .recipient("0x1111111111111111111111111111111111111111")
    ///     .build()?;
    /// let theirs = search.again(ActorId::new("agent-2")?, "0.02".parse::<Amount>()?);
    /// assert_eq!((theirs.actor.as_str(), theirs.amount.to_string().as_str()), ("agent-2", "0.02"));
    /// assert_eq!((&theirs.rail, &theirs.recipient), (&search.rail, &search.recipient));
    /// assert_ne!(theirs.idempotency_key, search.idempotency_key, "its own attempt");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn again(&self, actor: ActorId, amount: Amount) -> PaymentIntent {
        PaymentIntent {
            actor,
            amount,
            recipient: self.recipient.clone(),
            rail: self.rail.clone(),
            recipient_name: self.recipient_name.clone(),
            purpose: self.purpose.clone(),
            category: self.category.clone(),
            context: self.context.clone(),
            idempotency_key: IdempotencyKey::random(),
        }
    }

    /// Checks the invariants a deserialized intent may not hold (recipient for the rail, rail fields).
    pub fn validate(&self) -> Result<(), IntentError> {
        self.rail.validate()?;
        if self.rail.needs_recipient() && self.recipient.is_none() {
            return Err(IntentError::MissingRecipient(self.rail.name()));
        }
        self.free_of_nul()
    }

    /// No text holds a NUL character: no store keeps one (PostgreSQL's `text` and `jsonb`
    /// refuse it), so an intent carrying one would be approved and its spend never recorded.
    fn free_of_nul(&self) -> Result<(), IntentError> {
        let nul =
            |field: &'static str| IntentError::Field { field, reason: "contains a NUL character (U+0000)".into() };
        let mut found = None;
        let mut check = |field: &'static str, text: Option<&str>| {
            if found.is_none() && text.is_some_and(has_nul) {
                found = Some(field);
            }
        };
        check("recipientName", self.recipient_name.as_deref());
        check("purpose", self.purpose.as_deref());
        check("category", self.category.as_deref());
        // A drawn key is `ck_` and hex digits: only a caller's own is read.
        if self.idempotency_key.is_named() {
            check("idempotencyKey", Some(self.idempotency_key.as_str()));
        }
        match &self.rail {
            Rail::Transfer { .. } => {}
            Rail::X402 { resource_url, service_domain, facilitator, scheme, .. } => {
                check("resourceUrl", Some(resource_url));
                check("serviceDomain", Some(service_domain));
                check("facilitator", facilitator.as_deref());
                check("scheme", scheme.as_deref());
            }
            Rail::Mpp { resource_url, service_domain, session_id, intent, method, .. } => {
                check("resourceUrl", Some(resource_url));
                check("serviceDomain", Some(service_domain));
                check("sessionId", session_id.as_deref());
                check("intent", intent.as_deref());
                check("method", method.as_deref());
            }
            Rail::Card { card_id, merchant, mcc } => {
                check("cardId", card_id.as_deref());
                check("merchantName", Some(merchant));
                check("merchantCategory", mcc.as_deref());
            }
            Rail::Request { wallet_id } => check("walletId", wallet_id.as_deref()),
        }
        if let Some(field) = found {
            return Err(nul(field));
        }
        if self.context.is_empty() {
            return Ok(());
        }
        // The context, keys and strings at any depth (walked without recursion).
        let mut stack: Vec<&serde_json::Value> = self.context.values().collect();
        if self.context.keys().any(|k| has_nul(k)) {
            return Err(nul("context"));
        }
        while let Some(value) = stack.pop() {
            match value {
                serde_json::Value::String(s) if has_nul(s) => return Err(nul("context")),
                serde_json::Value::Array(items) => stack.extend(items),
                serde_json::Value::Object(map) => {
                    if map.keys().any(|k| has_nul(k)) {
                        return Err(nul("context"));
                    }
                    stack.extend(map.values());
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Whether `text` holds a NUL character.
pub(crate) fn has_nul(text: &str) -> bool {
    memchr::memchr(0, text.as_bytes()).is_some()
}

impl From<std::convert::Infallible> for IntentError {
    fn from(value: std::convert::Infallible) -> Self {
        match value {}
    }
}

/// Builds a [`PaymentIntent`]; [`IntentBuilder::build`] validates everything at once.
#[derive(Debug)]
pub struct IntentBuilder {
    actor: String,
    amount: Result<Amount, IntentError>,
    rail: Rail,
    recipient: Option<String>,
    recipient_name: Option<String>,
    purpose: Option<String>,
    category: Option<String>,
    context: serde_json::Map<String, serde_json::Value>,
    idempotency_key: Option<String>,
}

impl IntentBuilder {
    /// The recipient's address.
    pub fn recipient(mut self, address: impl Into<String>) -> Self {
        self.recipient = Some(address.into());
        self
    }
    /// The recipient's display name.
    pub fn recipient_name(mut self, name: impl Into<String>) -> Self {
        self.recipient_name = Some(name.into());
        self
    }
    /// Why the app pays.
    pub fn purpose(mut self, purpose: impl Into<String>) -> Self {
        self.purpose = Some(purpose.into());
        self
    }
    /// The spend category.
    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.category = Some(category.into());
        self
    }
    /// Adds one context entry.
    pub fn context(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.context.insert(key.into(), value.into());
        self
    }
    /// The payment attempt's idempotency key (a random one when not set). A key the caller
    /// names is one payment to the pipeline: [`Conto`](crate::Conto) refuses a second run under
    /// it while the first is under way or, for a day, after it settled
    /// ([`IntentError::IdempotencyKeyUsed`]), since the authority would answer it with the
    /// first run's approval.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Validates and builds the intent.
    pub fn build(self) -> Result<PaymentIntent, IntentError> {
        let intent = PaymentIntent {
            actor: ActorId::new(self.actor)?,
            amount: self.amount?,
            recipient: self.recipient.map(Address::parse_owned).transpose()?,
            rail: self.rail,
            recipient_name: self.recipient_name,
            purpose: self.purpose,
            category: self.category,
            context: self.context,
            idempotency_key: match self.idempotency_key {
                Some(k) => IdempotencyKey::new(k)?,
                None => IdempotencyKey::random(),
            },
        };
        intent.validate()?;
        Ok(intent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drawn_key_is_fresh_each_time_and_reads_as_text() {
        let key = IdempotencyKey::random();
        assert!(key.as_str().starts_with("ck_") && key.as_str().len() == 35, "{key}");
        assert!(key.as_str()[3..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{key}");
        assert_eq!(key.clone(), key);
        assert_eq!(serde_json::to_string(&key).unwrap(), format!("\"{key}\""));
        let back: IdempotencyKey = serde_json::from_str(&serde_json::to_string(&key).unwrap()).unwrap();
        assert_eq!(back, key, "a key read back equals the drawn one");
        use std::hash::BuildHasher;
        let state = std::hash::RandomState::new();
        assert_eq!(state.hash_one(&back), state.hash_one(&key), "and hashes alike");
        assert_ne!(IdempotencyKey::random(), IdempotencyKey::random());
        let mut renewed = key.clone();
        renewed.renew();
        assert_ne!(renewed, key, "a renewed key is a fresh one");
    }

    #[test]
    fn keys_drawn_on_one_thread_and_across_threads_never_repeat() {
        let mine: Vec<_> = (0..10_000).map(|_| IdempotencyKey::random()).collect();
        let theirs: Vec<_> =
            std::thread::spawn(|| (0..10_000).map(|_| IdempotencyKey::random()).collect::<Vec<_>>()).join().unwrap();
        let all: std::collections::HashSet<_> = mine.iter().chain(&theirs).map(|k| k.as_str().to_owned()).collect();
        assert_eq!(all.len(), 20_000);
        assert!(all.iter().all(|k| k.len() == 35 && k[3..].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))));
    }

    #[test]
    fn actor_ids_take_letters_digits_and_six_marks_and_say_why_not() {
        assert_eq!(ActorId::new("a-b_c.d:e@f+9").unwrap().as_str(), "a-b_c.d:e@f+9");
        let reason = |id: &str| match ActorId::new(id) {
            Err(IntentError::Actor { reason, .. }) => reason,
            other => panic!("{id:?}: {other:?}"),
        };
        for spaced in [" agent-1", "agent-1\n", "agent\u{a0}1", "agent\t1"] {
            assert!(reason(spaced).contains("whitespace"), "{spaced:?}");
        }
        for odd in ["agent!1", "agent/1", "agént", "agent\u{0}1"] {
            assert!(reason(odd).contains("only ASCII letters"), "{odd:?}");
        }
        assert_eq!(ActorId::new(""), Err(IntentError::EmptyActor));
        assert!(reason(&"a".repeat(129)).contains("longer than 128"));
        // Dot segments: `/api/agents/..` is `/api` to every URL client.
        for dots in [".", ".."] {
            assert!(reason(dots).contains("path segments"), "{dots:?}");
        }
        assert_eq!(ActorId::new("...").unwrap().as_str(), "...");
    }

    #[test]
    fn addresses() {
        let a = Address::parse("0xABCDEFabcdef0123456789012345678901234567").unwrap();
        assert_eq!(a.as_str(), "0xabcdefabcdef0123456789012345678901234567");
        let upper = Address::parse("0XABCDEFABCDEF0123456789012345678901234567").unwrap();
        assert_eq!(upper, a, "the prefix is canonical too");
        assert!(matches!(Address::parse("0x123"), Err(IntentError::Address(s)) if s == "0x123"));
        assert!(Address::parse("0xZZCDEFabcdef0123456789012345678901234567").is_err());
        assert!(Address::parse("7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV").is_ok());
        assert!(Address::parse("0OIl0000000000000000000000000000000").is_err());
        assert!(Address::parse("").is_err());
    }

    proptest::proptest! {
        /// The eight-at-a-time check says what a byte-by-byte one says: hex digits of either
        /// case, with at most one byte of any value in any place.
        #[test]
        fn hex_digits_are_checked_as_byte_by_byte(
            digits in proptest::collection::vec(proptest::sample::select(b"0123456789abcdefABCDEF".to_vec()), 0..48),
            odd in proptest::option::of((proptest::num::usize::ANY, proptest::num::u8::ANY)),
        ) {
            let mut bytes = digits;
            if let Some((at, byte)) = odd.filter(|_| !bytes.is_empty()) {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            proptest::prop_assert_eq!(all_hex_digits(&bytes), bytes.iter().all(u8::is_ascii_hexdigit));
        }
    }

    #[test]
    fn domains() {
        assert_eq!(service_domain_of("https://API.example.com:8443/x?y").unwrap(), "api.example.com");
        assert_eq!(service_domain_of("http://[::1]:80/").unwrap(), "::1");
        assert_eq!(service_domain_of("HTTPS://api.example.com/").unwrap(), "api.example.com");
        assert!(service_domain_of("ftp://x").is_err());
        assert!(service_domain_of("https://").is_err());
        assert!(service_domain_of("https://:443/x").is_err());
        assert!(service_domain_of("not a url").is_err());
        // As a browser reads it: extra slashes before the host are skipped.
        assert_eq!(service_domain_of("https:///api.example.com/x").unwrap(), "api.example.com");
    }

    /// Spellings a browser takes to the same host are the same service: the host a list of
    /// services is checked against is the one the payment reaches.
    #[test]
    fn equivalent_spellings_of_a_host_are_one_service() {
        for url in [
            "https://api.openai.com/v1",
            "https://api.openai.com./v1",
            "https://API.OpenAI.com/v1",
            "https://api%2Eopenai.com/v1",
            "https://api.openai.com:443/v1?next=a\\b",
        ] {
            assert_eq!(service_domain_of(url).unwrap(), "api.openai.com", "{url}");
        }
        assert_eq!(service_domain_of("https://bücher.de/").unwrap(), "xn--bcher-kva.de");
        // Read differently by clients that do not follow WHATWG: refused.
        for url in [
            "https://api.openai.com\\@evil.com/v1",
            "https://evil.com\\@api.openai.com/",
            "https://user:pw@api.openai.com:443/v1",
            "https://user@api.openai.com/",
            "https://api.openai.com\\v1",
        ] {
            assert!(service_domain_of(url).is_err(), "{url}");
        }
        for (written, canonical) in [
            ("api.openai.com", "api.openai.com"),
            (" API.openai.com. ", "api.openai.com"),
            ("bücher.de", "xn--bcher-kva.de"),
            ("::1", "::1"),
            ("[::1]", "::1"),
            ("10.0.0.1", "10.0.0.1"),
        ] {
            assert_eq!(canonical_service_domain(written).as_deref(), Some(canonical), "{written}");
        }
        for bad in ["", "api.openai.com/v1", "a b.com", "https://api.openai.com"] {
            assert_eq!(canonical_service_domain(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_endpoint_is_counted_as_the_loosest_server_would_route_it() {
        let key = "api.example.com/v1/chat";
        for url in [
            "https://api.example.com/v1/chat",
            "https://api.example.com/v1/chat/",
            "https://api.example.com/V1/Chat",
            "https://api.example.com//v1///chat",
            "https://api.example.com/v1;v=2/chat;jsessionid=0a",
            "https://api.example.com/v1/chat?model=a#top",
            "https://api.example.com/zz/..;/v1/chat",
            "https://api.example.com/v1/x/..;/chat",
            "https://api.example.com/v1/chat/x/..;",
            "https://api.example.com/v1/.;x/chat",
            "https://api.example.com/v1%2Fchat",
            "https://api.example.com/v1/chat%2f",
            "https://api.example.com/v1%5Cchat",
            "https://api.example.com/../../v1/chat",
            // A parameter is dropped as sent, escaped slashes in it too (Tomcat's reading).
            "https://api.example.com/v1/chat;x%2F..%2F..%2Fk1",
            "https://api.example.com/v1;a%2Fb/chat",
            "https://api.example.com/v1/chat/;x=%2F..",
            // Scheme and port are not the endpoint.
            "http://api.example.com/v1/chat",
            "http://api.example.com:443/v1/chat",
            "https://api.example.com:8443/v1/chat",
            // Decoded twice by some proxy chains; trailing dots and spaces dropped by Windows.
            "https://api.example.com/v1%252Fchat",
            "https://api.example.com/v1/x/%252e%252e/chat",
            "https://api.example.com/v1/chat%255C",
            "https://api.example.com/v1./chat%2e",
            "https://api.example.com/v1/chat%20",
            "https://api.example.com/v1%20./chat. .",
            "https://api.example.com/v1/%2563hat",
            "https://api.example.com/%25761/%2563%2568at",
            "https://api.example.com/v1/chat%253Fq=1",
            "https://api.example.com/v1/chat%2523x",
            "https://api.example.com/v1/chat%253Bjsessionid=1",
        ] {
            assert_eq!(endpoint_key(url), key, "{url}");
        }
        for url in [
            "https://api.example.com/v1/chats",
            "https://api.example.com/v1",
            "https://api.example.org/v1/chat",
            "https://example.com/api.example.com/v1/chat",
        ] {
            assert_ne!(endpoint_key(url), key, "{url}");
        }
        assert_eq!(endpoint_key("https://api.example.com"), "api.example.com/");
        assert_eq!(endpoint_key("https://api.example.com/?a=1"), "api.example.com/");
        assert_eq!(endpoint_key("https://api.example.com/;x"), "api.example.com/");
        assert_eq!(endpoint_key("https://[::1]:8080/a"), "[::1]/a");
        assert_eq!(endpoint_key("https://[::1]/a"), "[::1]/a");
    }

    #[test]
    fn escapes_of_unreserved_characters_are_those_characters_in_a_resource_url() {
        for (url, canonical) in [
            ("https://api.example.com/%761/%63hat", "https://api.example.com/v1/chat"),
            ("https://api.example.com/%7e%2D%5F%2e/x", "https://api.example.com/~-_./x"),
            ("https://api.example.com/a%2fb%3a", "https://api.example.com/a%2Fb%3A"),
            ("https://api.example.com/v1/%2E%2E/x", "https://api.example.com/x"),
            ("https://api.example.com/100%/x%4", "https://api.example.com/100%/x%4"),
            ("https://api.example.com/caf%C3%A9?q=%76", "https://api.example.com/caf%C3%A9?q=%76"),
        ] {
            assert_eq!(canonical_resource(url).unwrap().0, canonical, "{url}");
        }
    }

    #[test]
    fn builder_validates() {
        let rail = Rail::transfer(8453, "0x2222222222222222222222222222222222222222").unwrap();
        let err = PaymentIntent::builder("a", "1", rail.clone()).build().unwrap_err();
        assert_eq!(err, IntentError::MissingRecipient("transfer"));
        let err = PaymentIntent::builder("", "1", rail.clone())
            .recipient("0x1111111111111111111111111111111111111111")
            .build()
            .unwrap_err();
        assert_eq!(err, IntentError::EmptyActor);
        let err = PaymentIntent::builder("a", "-2", rail).build().unwrap_err();
        assert!(matches!(err, IntentError::Amount(AmountError::Negative(_))));
        let card = Rail::Card { card_id: None, merchant: "Acme".into(), mcc: Some("54x1".into()) };
        assert!(matches!(
            PaymentIntent::builder("a", "1", card).build(),
            Err(IntentError::Field { field: "merchantCategory", .. })
        ));
    }

    #[test]
    fn actor_ids_are_taken_exactly_or_refused() {
        assert_eq!(ActorId::new("agent-1").unwrap().as_str(), "agent-1");
        assert_ne!(ActorId::new("Agent-1").unwrap(), ActorId::new("agent-1").unwrap());
        assert!(ActorId::new("user:42@acme.example+ops_1").is_ok());
        assert_eq!(ActorId::new(""), Err(IntentError::EmptyActor));
        for bad in [" agent-1", "agent-1 ", "agent 1", "agent\t1", "agent\u{0}", "agént", "a/b", "a\"b"] {
            assert!(matches!(ActorId::new(bad), Err(IntentError::Actor { .. })), "{bad:?} must be refused");
        }
        assert!(ActorId::new("a".repeat(128)).is_ok());
        assert!(matches!(ActorId::new("a".repeat(129)), Err(IntentError::Actor { .. })));
        assert!(serde_json::from_str::<ActorId>("\"bad id\"").is_err());
    }

    #[test]
    fn serde_uses_conto_names() {
        let intent = PaymentIntent::builder("agent", "5", Rail::x402("https://api.openai.com/v1").unwrap())
            .recipient("0x1111111111111111111111111111111111111111")
            .idempotency_key("k1")
            .build()
            .unwrap();
        let v = serde_json::to_value(&intent).unwrap();
        assert_eq!(v["recipientAddress"], "0x1111111111111111111111111111111111111111");
        assert_eq!(v["resourceUrl"], "https://api.openai.com/v1");
        assert_eq!(v["serviceDomain"], "api.openai.com");
        assert_eq!(v["rail"], "x402");
        assert_eq!(v["idempotencyKey"], "k1");
        let back: PaymentIntent = serde_json::from_value(v).unwrap();
        assert_eq!(back, intent);
    }
}
