//! Random identifiers and tokens.

/// `prefix` then the low `digits` hex digits of `bits` (at most 32), in one allocation.
pub(crate) fn hex_id(prefix: &str, bits: u128, digits: usize) -> String {
    let mut out = String::with_capacity(prefix.len() + digits);
    out.push_str(prefix);
    push_hex(&mut out, bits, digits);
    out
}

/// `prefix` then `n` random bytes as lower-case hex, in one allocation (`apr_…`, `ck_…`).
pub(crate) fn random_id(prefix: &str, n: usize) -> String {
    let mut out = String::with_capacity(prefix.len() + n * 2);
    out.push_str(prefix);
    let mut left = n;
    while left > 0 {
        let chunk = left.min(16);
        push_hex(&mut out, rand::random(), chunk * 2);
        left -= chunk;
    }
    out
}

/// Appends the low `digits` hex digits of `bits` (at most 32), most significant first.
pub(crate) fn push_hex(out: &mut String, bits: u128, digits: usize) {
    let mut buffer = const_hex::Buffer::<16>::new();
    let hex = buffer.format(&bits.to_be_bytes());
    out.push_str(&hex[32 - digits.min(32)..]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn lengths_and_alphabet() {
        for n in [1, 12, 16, 32, 33] {
            let h = super::random_id("", n);
            assert_eq!(h.len(), n * 2);
            assert!(h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert_ne!(super::random_id("", 32), super::random_id("", 32));
        let key = super::random_id("ck_", 16);
        assert!(key.starts_with("ck_") && key.len() == 3 + 32, "{key}");
        let id = super::random_id("auth_", 12);
        assert!(id.starts_with("auth_") && id.len() == 5 + 24, "{id}");
        assert_eq!(super::hex_id("tx_", 0x0123_4567_89ab_cdef, 16), "tx_0123456789abcdef");
        assert_eq!(super::hex_id("", 0xabc, 6), "000abc");
        assert_eq!(super::hex_id("", u128::MAX, 40), "f".repeat(32));
    }

    proptest::proptest! {
        /// `hex_id` writes what `format!` writes: the low digits, zero-padded.
        #[test]
        fn hex_id_writes_what_format_writes(bits: u128, digits in 0usize..=40) {
            let full = format!("{bits:032x}");
            let want = &full[32 - digits.min(32)..];
            proptest::prop_assert_eq!(super::hex_id("p_", bits, digits), format!("p_{want}"));
        }
    }
}
