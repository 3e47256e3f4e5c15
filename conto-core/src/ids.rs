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
    let digits = digits.min(32);
    let mut buf = [0u8; 32];
    let (high, low) = buf.split_at_mut(16);
    high.copy_from_slice(&hex16((bits >> 64) as u64));
    low.copy_from_slice(&hex16(bits as u64));
    // Hex digits are ASCII: always valid UTF-8.
    out.push_str(std::str::from_utf8(&buf[32 - digits..]).unwrap_or_default());
}

/// The 16 lower-case hex digits of `v`, most significant first: each nibble spread to a byte
/// of its own, then mapped to its digit a whole word at a time (no table, no loop per digit).
fn hex16(v: u64) -> [u8; 16] {
    const NIBBLES: u128 = 0x0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f;
    const ONES: u128 = NIBBLES / 0x0f;
    let mut x = u128::from(v);
    x = (x | x << 32) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    x = (x | x << 16) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    x = (x | x << 4) & NIBBLES;
    // Byte k now holds nibble k (0..=15); a byte of 10 or more becomes a letter.
    let letters = ((x + 6 * ONES) >> 4) & ONES;
    (x + u128::from(b'0') * ONES + u128::from(b'a' - b'0' - 10) * letters).to_be_bytes()
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
