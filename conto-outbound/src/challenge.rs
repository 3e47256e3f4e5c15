//! Reading a 402: the x402 v2 `PAYMENT-REQUIRED` header, then an x402 v1 body, then an MPP
//! `WWW-Authenticate: Payment` challenge. Nothing here panics on input: anything malformed is a
//! [`ChallengeError`], and a 402 nobody can read is never paid.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::Value;

/// What a paywall asked for, as read from its 402.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Challenge {
    /// An x402 challenge: the requirements it accepts, in the server's order.
    X402 {
        /// 1 (a JSON body) or 2 (the `PAYMENT-REQUIRED` header).
        version: u8,
        /// The paid resource's URL, as the challenge names it (else the request's URL).
        resource: Option<String>,
        /// The requirements the server accepts.
        accepts: Vec<Requirement>,
        /// The decoded challenge, whole (for a signer that needs more than is modelled here).
        raw: Value,
    },
    /// An MPP challenge (`WWW-Authenticate: Payment …`).
    Mpp(MppChallenge),
}

/// One x402 payment requirement (an `accepts` entry; v1's `maxAmountRequired` read as `amount`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Requirement {
    /// `exact`, `upto`, …
    pub scheme: String,
    /// CAIP-2 (`eip155:8453`) in v2, a name (`base-sepolia`) in v1.
    pub network: String,
    /// The amount in the asset's atomic units.
    #[serde(alias = "maxAmountRequired")]
    pub amount: String,
    /// The token contract (or an ISO-4217 code).
    pub asset: String,
    /// Who is paid.
    pub pay_to: String,
    /// The resource (v1 puts it in each requirement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// How long a signed payment stays valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout_seconds: Option<u64>,
    /// Scheme-specific data (e.g. the token's EIP-712 name and version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<Value>,
}

/// An MPP challenge: its auth-params, and the decoded `request`.
#[derive(Debug, Clone, PartialEq)]
pub struct MppChallenge {
    /// Every auth-param, in order, its name lower-cased (`id`, `realm`, `method`, `intent`,
    /// `request`, `expires`, …).
    pub params: Vec<(String, String)>,
    /// The decoded `request` (`amount` in base units, `currency`, `recipient`, …).
    pub request: Value,
}

impl MppChallenge {
    /// An auth-param by name.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Why a 402 could not be read as a payment challenge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChallengeError {
    /// No challenge in any form this crate reads.
    #[error("the 402 carries no x402 or MPP challenge")]
    Missing,
    /// A challenge is there but malformed.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// Which form (`PAYMENT-REQUIRED header`, `x402 v1 body`, `WWW-Authenticate`).
        what: &'static str,
        /// What is wrong.
        why: String,
    },
}

fn malformed(what: &'static str, why: impl ToString) -> ChallengeError {
    ChallengeError::Malformed { what, why: why.to_string() }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    x402_version: u8,
    #[serde(default)]
    resource: Option<Value>,
    accepts: Vec<Requirement>,
}

/// Base64 JSON (x402: standard alphabet, padded; MPP: URL-safe, padding optional).
fn b64_json(what: &'static str, text: &str, url_safe: bool) -> Result<Value, ChallengeError> {
    let text = text.trim();
    let bytes = if url_safe { URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')) } else { STANDARD.decode(text) };
    let bytes = bytes.map_err(|e| malformed(what, e))?;
    serde_json::from_slice(&bytes).map_err(|e| malformed(what, e))
}

/// A header's base64 JSON.
fn header_json(what: &'static str, value: &http::HeaderValue, url_safe: bool) -> Result<Value, ChallengeError> {
    b64_json(what, value.to_str().map_err(|e| malformed(what, e))?, url_safe)
}

fn x402(version_wanted: Option<u8>, what: &'static str, raw: Value) -> Result<Challenge, ChallengeError> {
    let env: Envelope = serde_json::from_value(raw.clone()).map_err(|e| malformed(what, e))?;
    if version_wanted.is_some_and(|v| v != env.x402_version) || !(1..=2).contains(&env.x402_version) {
        return Err(malformed(what, format!("x402Version {}", env.x402_version)));
    }
    if env.accepts.is_empty() {
        return Err(malformed(what, "no requirement in `accepts`"));
    }
    let resource = match env.resource {
        Some(Value::String(url)) => Some(url),
        Some(Value::Object(o)) => o.get("url").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    };
    Ok(Challenge::X402 { version: env.x402_version, resource, accepts: env.accepts, raw })
}

/// Reads a 402's challenge: the `PAYMENT-REQUIRED` header (x402 v2, base64 JSON) first, then
/// the body as x402 v1 JSON, then `WWW-Authenticate: Payment` (MPP).
pub fn read(headers: &http::HeaderMap, body: &[u8]) -> Result<Challenge, ChallengeError> {
    if let Some(value) = headers.get("payment-required") {
        const WHAT: &str = "PAYMENT-REQUIRED header";
        return x402(Some(2), WHAT, header_json(WHAT, value, false)?);
    }
    // Parsed once: a JSON body with an `x402Version` is an x402 v1 challenge.
    if let Ok(body) = serde_json::from_slice::<Value>(body)
        && body.get("x402Version").is_some()
    {
        return x402(Some(1), "x402 v1 body", body);
    }
    for value in headers.get_all(http::header::WWW_AUTHENTICATE) {
        let Ok(text) = value.to_str() else { continue };
        let trimmed = text.trim_start();
        if trimmed.len() >= 8 && trimmed[..8].eq_ignore_ascii_case("payment ") {
            return mpp(&trimmed[8..]);
        }
    }
    Err(ChallengeError::Missing)
}

/// `k=v, k="v", …` (RFC 9110 auth-params), then the `request` param decoded (base64url JSON).
fn mpp(params: &str) -> Result<Challenge, ChallengeError> {
    const WHAT: &str = "WWW-Authenticate: Payment challenge";
    let mut out = Vec::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or_else(|| malformed(WHAT, format!("no `=` in `{rest}`")))?;
        let key = rest[..eq].trim().to_owned();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(malformed(WHAT, format!("bad parameter name `{key}`")));
        }
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => v.push(c),
                        None => return Err(malformed(WHAT, "unterminated quoted value")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, c)) => v.push(c),
                    None => return Err(malformed(WHAT, "unterminated quoted value")),
                }
            };
            value = v;
            rest = quoted[end + 1..].trim_start();
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        // Names are case-insensitive (RFC 9110 §11.2): one given twice, however spelled, is
        // refused, or the policy and the payer could each read a different one.
        if out.iter().any(|(k, _): &(String, String)| k.eq_ignore_ascii_case(&key)) {
            return Err(malformed(WHAT, format!("parameter `{key}` given twice")));
        }
        out.push((key.to_ascii_lowercase(), value));
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    let request = out
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("request"))
        .ok_or_else(|| malformed(WHAT, "no `request` parameter"))?;
    let request = b64_json(WHAT, &request.1, true)?;
    if !request.is_object() {
        return Err(malformed(WHAT, "`request` is not a JSON object"));
    }
    Ok(Challenge::Mpp(MppChallenge { params: out, request }))
}

/// A settlement a paywall reported on its 2xx: `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`
/// (x402, base64 JSON) or `Payment-Receipt` (MPP, base64url JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementReport {
    /// Whether the paywall says it settled.
    pub success: bool,
    /// The transaction (x402) or receipt reference (MPP).
    pub reference: Option<String>,
    /// The amount settled, in atomic units, when the paywall says (x402 `upto`).
    pub amount: Option<String>,
}

/// The settlement report on a response, if any (a malformed one is an error).
pub fn settlement(headers: &http::HeaderMap) -> Result<Option<SettlementReport>, ChallengeError> {
    for name in ["payment-response", "x-payment-response"] {
        if let Some(value) = headers.get(name) {
            const WHAT: &str = "PAYMENT-RESPONSE header";
            let v = header_json(WHAT, value, false)?;
            let success = v.get("success").and_then(Value::as_bool).ok_or_else(|| malformed(WHAT, "no `success`"))?;
            let reference = v.get("transaction").and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_owned);
            let amount = v.get("amount").and_then(Value::as_str).map(str::to_owned);
            return Ok(Some(SettlementReport { success, reference, amount }));
        }
    }
    if let Some(value) = headers.get("payment-receipt") {
        const WHAT: &str = "Payment-Receipt header";
        let v = header_json(WHAT, value, true)?;
        let success = v.get("status").and_then(Value::as_str) == Some("success");
        let reference = v.get("reference").and_then(Value::as_str).map(str::to_owned);
        return Ok(Some(SettlementReport { success, reference, amount: None }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn www(value: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::WWW_AUTHENTICATE, value.parse().unwrap());
        headers
    }

    /// A parameter given twice, however its name is spelled, is refused: the policy and the
    /// payer (which may read names another way) would each see a different payment.
    #[test]
    fn an_mpp_parameter_given_twice_is_refused() {
        let cheap = URL_SAFE_NO_PAD.encode(r#"{"amount":"1","currency":"usd","recipient":"0x1"}"#);
        let dear = URL_SAFE_NO_PAD.encode(r#"{"amount":"900000","currency":"usd","recipient":"0x1"}"#);
        for header in [
            format!(r#"Payment id="c", method="tempo", intent="charge", request="{cheap}", REQUEST="{dear}""#),
            format!(r#"Payment id="c", method="tempo", Intent="charge", intent="session", request="{cheap}""#),
        ] {
            let err = read(&www(&header), b"").unwrap_err();
            assert!(matches!(&err, ChallengeError::Malformed { why, .. } if why.contains("given twice")), "{err}");
        }
        // Once, in any case, it is read, and passed on under its lower-case name.
        let one = format!(r#"Payment ID="c", Method="tempo", INTENT="charge", Request="{cheap}""#);
        let Challenge::Mpp(m) = read(&www(&one), b"").unwrap() else { panic!("not MPP") };
        assert_eq!(m.request["amount"], "1");
        assert!(m.params.iter().all(|(k, _)| k.chars().all(|c| !c.is_ascii_uppercase())), "{:?}", m.params);
    }
}
