//! Random identifiers and tokens.

use std::fmt::Write;

/// `n` random bytes as lower-case hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut out = String::with_capacity(n * 2);
    for _ in 0..n {
        let b: u8 = rand::random();
        let _ = write!(out, "{b:02x}");
    }
    out
}
