//! Money on the decision's hot path: whole micro-units (0.000001, Conto's unit) as an `i64`.
//!
//! Every [`Amount`] is a whole number of micro-units no larger than 10¹⁵, so it converts to
//! [`Micros`] and back exactly. Policy limits may be written with any precision; a [`Bound`]
//! keeps the limit's exact decimal (for explanations) and the two integers around it, so a
//! comparison of whole micro-units against it answers exactly what the decimal comparison
//! would. Decimal stays at the edges: parsing, storage, explanations, the public API.

use std::ops::{Add, AddAssign, Sub, SubAssign};

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::money::Amount;
use crate::policy::rules::Cmp;

/// Whole micro-units. Arithmetic saturates (a counter can never wrap into a small number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Micros(pub i64);

const PER_UNIT: i64 = 1_000_000;

impl Micros {
    pub const ZERO: Micros = Micros(0);

    /// An amount, exactly.
    pub fn of(amount: Amount) -> Self {
        let d = amount.get();
        // An amount has at most 6 decimal places and is at most 10⁹: the product fits.
        let scaled = d.mantissa() * 10i128.pow(Amount::SCALE - d.scale().min(Amount::SCALE));
        Micros(i64::try_from(scaled).unwrap_or(i64::MAX))
    }

    /// A decimal from storage (a sum of amounts), rounded up to whole micro-units so a value
    /// that is not whole is never counted as less than it is.
    pub fn of_decimal(d: Decimal) -> Self {
        let scaled = d.checked_mul(Decimal::from(PER_UNIT)).map(|d| d.ceil());
        match scaled.and_then(|d| d.to_i64()) {
            Some(m) => Micros(m),
            None if d.is_sign_negative() => Micros(i64::MIN),
            None => Micros(i64::MAX),
        }
    }

    /// The exact decimal value.
    pub fn to_decimal(self) -> Decimal {
        // Normalized by stripping trailing zeros from the integer (at most six divisions of
        // an `i64`), not from the decimal's 96-bit mantissa.
        let (mut units, mut scale) = (self.0, Amount::SCALE);
        while scale > 0 && units % 10 == 0 {
            units /= 10;
            scale -= 1;
        }
        Decimal::new(units, scale)
    }
}

impl Add for Micros {
    type Output = Micros;
    fn add(self, rhs: Micros) -> Micros {
        Micros(self.0.saturating_add(rhs.0))
    }
}

impl Sub for Micros {
    type Output = Micros;
    fn sub(self, rhs: Micros) -> Micros {
        Micros(self.0.saturating_sub(rhs.0))
    }
}

impl AddAssign for Micros {
    fn add_assign(&mut self, rhs: Micros) {
        *self = *self + rhs;
    }
}

impl SubAssign for Micros {
    fn sub_assign(&mut self, rhs: Micros) {
        *self = *self - rhs;
    }
}

/// A policy limit: its exact decimal, and the whole micro-units just below and above it
/// (equal when the limit is itself whole micro-units).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bound {
    pub exact: Decimal,
    floor: i64,
    ceil: i64,
}

impl Bound {
    /// `limit` (not negative, as the policy compiler guarantees).
    pub fn new(limit: Decimal) -> Self {
        let scaled = limit.checked_mul(Decimal::from(PER_UNIT));
        let to = |d: Option<Decimal>| d.and_then(|d| d.to_i64()).unwrap_or(i64::MAX);
        Bound { exact: limit, floor: to(scaled.map(|d| d.floor())), ceil: to(scaled.map(|d| d.ceil())) }
    }

    /// Whether this limit is below `other`, exactly as in decimals, comparing decimals only
    /// when both lie strictly between the same two micro-units (or beyond them all).
    pub fn is_below(&self, other: &Bound) -> bool {
        match (self.floor, self.ceil).cmp(&(other.floor, other.ceil)) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => {
                (self.floor != self.ceil || self.floor == i64::MAX) && self.exact < other.exact
            }
        }
    }

    /// The micro-unit amounts `x` for which `x cmp limit` holds, as an inclusive range
    /// `(lo, hi)`: a half-line for `<`, `<=`, `>`, `>=` (exactly where [`Bound::holds`] holds);
    /// `None` for `=` and `!=`.
    pub fn holding(&self, cmp: Cmp) -> Option<(i128, i128)> {
        let (floor, ceil) = (i128::from(self.floor), i128::from(self.ceil));
        Some(match cmp {
            Cmp::Le => (i128::MIN, floor),
            Cmp::Lt => (i128::MIN, ceil - 1),
            Cmp::Ge => (ceil, i128::MAX),
            Cmp::Gt => (floor + 1, i128::MAX),
            Cmp::Eq | Cmp::Ne => return None,
        })
    }

    /// Whether `x cmp limit` holds, exactly as it would in decimals.
    pub fn holds(&self, x: Micros, cmp: Cmp) -> bool {
        let x = x.0;
        match cmp {
            Cmp::Le => x <= self.floor,
            Cmp::Lt => x < self.ceil,
            Cmp::Ge => x >= self.ceil,
            Cmp::Gt => x > self.floor,
            Cmp::Eq => self.floor == self.ceil && x == self.floor,
            Cmp::Ne => !(self.floor == self.ceil && x == self.floor),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn amount() -> impl Strategy<Value = Amount> {
        (1i64..=1_000_000_000_000_000, 0u32..=6)
            .prop_filter_map("an amount", |(m, s)| Amount::new(Decimal::new(m / 10i64.pow(6 - s), s)).ok())
    }

    fn cmp() -> impl Strategy<Value = Cmp> {
        prop_oneof![Just(Cmp::Eq), Just(Cmp::Ne), Just(Cmp::Gt), Just(Cmp::Ge), Just(Cmp::Lt), Just(Cmp::Le)]
    }

    proptest! {
        #[test]
        fn every_amount_round_trips_exactly(a in amount()) {
            let m = Micros::of(a);
            prop_assert_eq!(m.to_decimal(), a.get());
            prop_assert_eq!(Amount::from_micros(m.0).unwrap(), a);
            prop_assert_eq!(Micros::of_decimal(a.get()), m);
        }

        #[test]
        fn a_bound_compares_exactly_as_decimals_do(
            x in 0i64..=2_000_000_000_000_000,
            mantissa in 0i64..=i64::MAX,
            scale in 0u32..=12,
            cmp in cmp(),
        ) {
            let limit = Decimal::new(mantissa, scale);
            let decimal = Decimal::new(x, 6);
            prop_assert_eq!(Bound::new(limit).holds(Micros(x), cmp), cmp.holds(decimal, limit), "{} {:?} {}", decimal, cmp, limit);
        }

        #[test]
        fn a_bound_on_whole_micros_is_exact_at_the_edge(m in 0i64..=1_000_000_000_000_000, cmp in cmp()) {
            let limit = Decimal::new(m, 6);
            for x in [m - 1, m, m + 1] {
                prop_assert_eq!(Bound::new(limit).holds(Micros(x), cmp), cmp.holds(Decimal::new(x, 6), limit));
            }
        }

        #[test]
        fn bounds_order_as_their_decimals_do(
            a in 0i64..=i64::MAX, b in 0i64..=i64::MAX, sa in 0u32..=12, sb in 0u32..=12, near in any::<bool>(),
        ) {
            let x = Decimal::new(a, sa);
            // Often a neighbour: the same micro-unit, or the next decimal digit.
            let y = if near { x + Decimal::new(b % 1000, 9) } else { Decimal::new(b, sb) };
            prop_assert_eq!(Bound::new(x).is_below(&Bound::new(y)), x < y, "{} {}", x, y);
            prop_assert_eq!(Bound::new(y).is_below(&Bound::new(x)), y < x, "{} {}", y, x);
        }

        #[test]
        fn to_decimal_is_the_normalized_decimal(x in prop_oneof![any::<i64>(), (-1_000_000i64..=1_000_000).prop_map(|x| x * 1000)]) {
            let (ours, theirs) = (Micros(x).to_decimal(), Decimal::new(x, 6).normalize());
            prop_assert_eq!((ours.mantissa(), ours.scale(), ours.to_string()), (theirs.mantissa(), theirs.scale(), theirs.to_string()));
        }

        #[test]
        fn sums_saturate_instead_of_wrapping(a in any::<i64>(), b in any::<i64>()) {
            let s = Micros(a) + Micros(b);
            prop_assert_eq!(s.0, a.saturating_add(b));
        }
    }

    #[test]
    fn a_limit_beyond_the_integer_range_holds_everything_below_it() {
        let huge = Bound::new(Decimal::MAX);
        assert!(huge.holds(Micros(i64::MAX - 1), Cmp::Le));
        assert!(!huge.holds(Micros(1), Cmp::Ge));
        let sub_micro = Bound::new(Decimal::new(5, 7)); // 0.0000005
        assert!(sub_micro.holds(Micros(0), Cmp::Le) && !sub_micro.holds(Micros(1), Cmp::Le));
        assert!(sub_micro.holds(Micros(1), Cmp::Gt) && !sub_micro.holds(Micros(0), Cmp::Eq));
    }
}
