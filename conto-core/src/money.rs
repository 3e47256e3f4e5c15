//! Exact money in Conto's unit: USDC-equivalent, at most 6 decimal places.
//!
//! [`Amount`] is always strictly positive, has at most [`Amount::SCALE`] decimal places and is at
//! most [`Amount::MAX`]. On the wire it is a JSON number (as Conto spells it); it also accepts a
//! decimal string. Every value this type can hold has at most 15 significant digits, so it survives
//! a trip through a JSON number (an `f64`) without losing a digit.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value is not a valid [`Amount`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// The text is not a decimal number.
    #[error("`{0}` is not a decimal number")]
    NotANumber(String),
    /// Zero is not an amount of money to authorize.
    #[error("amount must be greater than zero, got {0}")]
    Zero(Decimal),
    /// Negative amounts are never valid.
    #[error("amount must not be negative, got {0}")]
    Negative(Decimal),
    /// More than six decimal places.
    #[error("amount {0} has more than 6 decimal places (Conto's unit is 0.000001)")]
    TooPrecise(Decimal),
    /// Larger than [`Amount::MAX`].
    #[error("amount {0} exceeds the maximum of 1000000000")]
    TooLarge(Decimal),
}

/// A strictly positive amount of money in Conto's unit (USDC-equivalent), exact to 6 decimals.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(Decimal);

impl Amount {
    /// The number of decimal places Conto keeps.
    pub const SCALE: u32 = 6;
    /// The largest amount accepted: one billion.
    pub const MAX: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);

    /// Validates a decimal as an amount.
    ///
    /// ```
    /// use conto::Amount;
    /// use rust_decimal::Decimal;
    /// assert!(Amount::new(Decimal::new(150, 2)).is_ok()); // 1.50
    /// assert!(Amount::new(Decimal::ZERO).is_err());
    /// assert!(Amount::new(Decimal::new(1, 7)).is_err()); // 0.0000001
    /// ```
    pub fn new(value: Decimal) -> Result<Self, AmountError> {
        Self::checked(value)
    }

    /// [`Amount::new`], but a value with more than six decimal places is rounded **up** to six
    /// instead of refused: the smallest amount not below it, so a budget never counts less than
    /// was asked. For amounts written by others (a client converting a swap to USDC may send
    /// `1728.3945615`): compared with a limit of six places, the rounded amount passes exactly
    /// when the written one does.
    ///
    /// ```
    /// use conto::Amount;
    /// use rust_decimal::Decimal;
    /// assert_eq!(Amount::rounded_up(Decimal::new(17_283_945_615, 7))?.to_string(), "1728.394562");
    /// assert_eq!(Amount::rounded_up(Decimal::new(1, 7))?.to_string(), "0.000001");
    /// assert!(Amount::rounded_up(Decimal::new(-1, 7)).is_err());
    /// # Ok::<(), conto::AmountError>(())
    /// ```
    pub fn rounded_up(value: Decimal) -> Result<Self, AmountError> {
        if value.is_sign_negative() || value.is_zero() {
            return Self::checked(value);
        }
        Self::checked(value.round_dp_with_strategy(Self::SCALE, rust_decimal::RoundingStrategy::AwayFromZero))
    }

    /// Reads an optional amount from a JSON number or decimal string as
    /// [`Amount::rounded_up`] does: for `#[serde(deserialize_with = ...)]` on wire bodies.
    pub fn deserialize_rounded_up<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        opt_decimal::deserialize(d)?.map(|v| Self::rounded_up(v).map_err(de::Error::custom)).transpose()
    }

    fn checked(value: Decimal) -> Result<Self, AmountError> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(AmountError::Negative(value));
        }
        if value.is_zero() {
            return Err(AmountError::Zero(value));
        }
        if value > Self::MAX {
            return Err(AmountError::TooLarge(value));
        }
        let normalized = value.normalize();
        if normalized.scale() > Self::SCALE {
            return Err(AmountError::TooPrecise(value));
        }
        Ok(Self(normalized))
    }

    /// Builds an amount from an integer number of micro-units (0.000001).
    pub fn from_micros(micros: i64) -> Result<Self, AmountError> {
        // Checked on the integer: the decimal is then normalized and whole micro-units already.
        const MAX_MICROS: i64 = 1_000_000_000 * 1_000_000;
        match micros {
            1..=MAX_MICROS => Ok(Self(crate::micros::Micros(micros).to_decimal())),
            _ => Self::new(Decimal::new(micros, Self::SCALE)),
        }
    }

    /// The exact decimal value.
    pub fn get(self) -> Decimal {
        self.0
    }

    /// `self + other`, or an error past [`Amount::MAX`].
    ///
    /// ```
    /// use conto::Amount;
    /// let total = Amount::try_from("1.25")?.checked_add(Amount::try_from("0.75")?)?;
    /// assert_eq!(total.to_string(), "2");
    /// # Ok::<(), conto::AmountError>(())
    /// ```
    pub fn checked_add(self, other: Amount) -> Result<Amount, AmountError> {
        Self::new(self.0.checked_add(other.0).ok_or(AmountError::TooLarge(Self::MAX))?)
    }

    /// `self - other`, or an error when nothing (or less) is left.
    pub fn checked_sub(self, other: Amount) -> Result<Amount, AmountError> {
        Self::new(self.0 - other.0)
    }

    /// `self × n` (a quantity), or an error past [`Amount::MAX`].
    pub fn checked_mul(self, n: u64) -> Result<Amount, AmountError> {
        Self::new(self.0.checked_mul(Decimal::from(n)).ok_or(AmountError::TooLarge(Self::MAX))?)
    }

    /// `percent` % of this amount, rounded half-even to Conto's 6 decimals; an error when that
    /// is zero or less (a free price is `None`, not a zero amount).
    ///
    /// ```
    /// use conto::Amount;
    /// let settled = Amount::try_from("2.50")?.percent(80)?; // the provider kept 80 %
    /// assert_eq!(settled.to_string(), "2");
    /// assert!(Amount::try_from("0.000001")?.percent(10).is_err());
    /// # Ok::<(), conto::AmountError>(())
    /// ```
    pub fn percent(self, percent: impl Into<Decimal>) -> Result<Amount, AmountError> {
        let value = self
            .0
            .checked_mul(percent.into())
            .ok_or(AmountError::TooLarge(Self::MAX))?
            .checked_div(Decimal::ONE_HUNDRED)
            .ok_or(AmountError::TooLarge(Self::MAX))?;
        Self::new(value.round_dp(Self::SCALE))
    }
}

/// A decimal number written as text (`"12.50"`, `"1e3"`, surrounding spaces ignored). Digit
/// separators (`"1_0"`), which `rust_decimal` would read, are refused: no JSON or Conto client
/// writes them, and a typo must not become a different amount.
pub(crate) fn decimal_text(text: &str) -> Option<Decimal> {
    let t = text.trim();
    if t.contains('_') {
        return None;
    }
    Decimal::from_str_exact(t).or_else(|_| Decimal::from_scientific(t)).ok()
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = decimal_text(s).ok_or_else(|| AmountError::NotANumber(s.to_owned()))?;
        Self::new(value)
    }
}

impl TryFrom<Decimal> for Amount {
    type Error = AmountError;
    fn try_from(value: Decimal) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for Amount {
    type Error = AmountError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl TryFrom<u64> for Amount {
    type Error = AmountError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::new(Decimal::from(value))
    }
}

impl TryFrom<u32> for Amount {
    type Error = AmountError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::new(Decimal::from(value))
    }
}

impl TryFrom<i64> for Amount {
    type Error = AmountError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(Decimal::from(value))
    }
}

impl TryFrom<i32> for Amount {
    type Error = AmountError;
    fn try_from(value: i32) -> Result<Self, Self::Error> {
        Self::new(Decimal::from(value))
    }
}

impl From<Amount> for Decimal {
    fn from(value: Amount) -> Self {
        value.0
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({})", self.0)
    }
}

/// Writes a decimal as a JSON number, exactly: the decimal's own digits, never an `f64` rounding.
pub(crate) fn serialize_decimal<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    // Whole numbers go out as JSON integers, as Conto writes them (`"limit": 1000`).
    if value.fract().is_zero()
        && let Ok(i) = i64::try_from(value.trunc())
    {
        return s.serialize_i64(i);
    }
    // Values handled here have at most 15 significant digits, so the f64 nearest to the decimal
    // prints back as the same digits (shortest round-trip formatting).
    let f: f64 = value.to_string().parse().map_err(serde::ser::Error::custom)?;
    s.serialize_f64(f)
}

/// Reads a decimal from a JSON number or a decimal string, exactly.
pub(crate) fn deserialize_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    struct DecimalVisitor;
    impl Visitor<'_> for DecimalVisitor {
        type Value = Decimal;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a decimal number or a decimal string")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
            Ok(Decimal::from(v))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
            if !v.is_finite() {
                return Err(E::custom(format!("{v} is not a finite number")));
            }
            // `{}` prints the shortest text that reads back as the same f64: the digits the sender wrote.
            let text = format!("{v}");
            Decimal::from_str_exact(&text)
                .or_else(|_| Decimal::from_scientific(&text))
                .map_err(|_| E::custom(format!("{v} is out of range for an amount")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
            decimal_text(v).ok_or_else(|| E::custom(format!("`{v}` is not a decimal number")))
        }
    }
    d.deserialize_any(DecimalVisitor)
}

/// serde helpers for an optional decimal as a JSON number.
pub(crate) mod opt_decimal {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => serialize_decimal(v, s),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(deserialize_with = "deserialize_decimal")] Decimal);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_decimal(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = deserialize_decimal(d)?;
        Amount::new(value).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// `from_micros` answers what `new` answers for the same decimal, to the scale.
        #[test]
        fn from_micros_is_new_of_the_decimal(m in proptest::prop_oneof![
            proptest::prelude::any::<i64>(),
            -2i64..=2,
            999_999_999_999_990i64..=1_000_000_000_000_010,
        ]) {
            let (ours, theirs) = (Amount::from_micros(m), Amount::new(Decimal::new(m, Amount::SCALE)));
            proptest::prop_assert_eq!(&ours, &theirs);
            if let (Ok(a), Ok(b)) = (ours, theirs) {
                proptest::prop_assert_eq!((a.get().mantissa(), a.get().scale()), (b.get().mantissa(), b.get().scale()));
            }
        }
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!("1.5".parse::<Amount>().unwrap().to_string(), "1.5");
        assert_eq!("0.000001".parse::<Amount>().unwrap().get(), Decimal::new(1, 6));
        assert!(matches!("0".parse::<Amount>(), Err(AmountError::Zero(_))));
        assert!(matches!("-1".parse::<Amount>(), Err(AmountError::Negative(_))));
        assert!(matches!("0.0000001".parse::<Amount>(), Err(AmountError::TooPrecise(_))));
        assert!(matches!("1000000000.01".parse::<Amount>(), Err(AmountError::TooLarge(_))));
        assert!(matches!("NaN".parse::<Amount>(), Err(AmountError::NotANumber(_))));
        assert!(matches!("inf".parse::<Amount>(), Err(AmountError::NotANumber(_))));
        assert!(matches!("".parse::<Amount>(), Err(AmountError::NotANumber(_))));
        // Digit separators, which rust_decimal alone would read as 10 and 1000.
        for separated in ["1_0", "1_000.5", "_1"] {
            assert!(matches!(separated.parse::<Amount>(), Err(AmountError::NotANumber(_))), "{separated}");
        }
        assert_eq!(" 1e3 ".parse::<Amount>().unwrap().to_string(), "1000");
        // Trailing zeros beyond six places are not extra precision.
        assert_eq!("1.50000000".parse::<Amount>().unwrap().to_string(), "1.5");
    }

    #[test]
    fn json_round_trip_is_exact() {
        for text in ["0.000001", "999999999.999999", "0.1", "123.456789", "1000000000"] {
            let a: Amount = text.parse().unwrap();
            let json = serde_json::to_string(&a).unwrap();
            let back: Amount = serde_json::from_str(&json).unwrap();
            assert_eq!(a, back, "{text} -> {json}");
        }
        let from_str: Amount = serde_json::from_str("\"2.25\"").unwrap();
        assert_eq!(from_str.to_string(), "2.25");
        assert!(serde_json::from_str::<Amount>("-3").is_err());
        assert!(serde_json::from_str::<Amount>("0.1234567").is_err());
        assert!(serde_json::from_str::<Amount>("1e400").is_err());
        assert!(serde_json::from_str::<Amount>("true").is_err());
    }
}

#[cfg(test)]
mod arithmetic {
    use super::*;

    fn a(s: &str) -> Amount {
        s.parse().unwrap()
    }

    #[test]
    fn checked_arithmetic_stays_in_range_and_exact() {
        assert_eq!(a("0.1").checked_add(a("0.2")).unwrap(), a("0.3"));
        assert!(matches!(a("999999999").checked_add(a("2")), Err(AmountError::TooLarge(_))));
        assert_eq!(a("5").checked_sub(a("1.5")).unwrap(), a("3.5"));
        assert!(matches!(a("1").checked_sub(a("1")), Err(AmountError::Zero(_))));
        assert!(matches!(a("1").checked_sub(a("2")), Err(AmountError::Negative(_))));
        assert_eq!(a("0.25").checked_mul(4).unwrap(), a("1"));
        assert!(a("1000").checked_mul(u64::MAX).is_err());
        assert_eq!(a("3").percent(50).unwrap(), a("1.5"));
        assert_eq!(a("0.000003").percent(50).unwrap(), a("0.000002"), "half-even rounding to 6 dp");
        assert!(a("1").percent(0).is_err());
        assert!(a("1").percent(-5).is_err());
    }
}
