//! Exact money: an amount in integer minor units (cents for EUR/USD) and an ISO 4217 currency.
//!
//! Money never passes through `f64`. Decimal text such as `"12.50"` is parsed digit by digit,
//! and amounts are formatted with the currency's own number of decimals.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An ISO 4217 currency code: exactly three upper-case ASCII letters, e.g. `EUR`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

/// Why a currency code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "currency must be an ISO 4217 code of three upper-case letters, such as EUR or USD (got {0:?})"
)]
pub struct InvalidCurrency(pub String);

impl Currency {
    /// Euro, the demo's default currency.
    pub const EUR: Currency = Currency(*b"EUR");
    /// US dollar.
    pub const USD: Currency = Currency(*b"USD");

    /// The code as text, e.g. `"EUR"`.
    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// How many decimal places the currency's minor unit has (ISO 4217 exponent).
    ///
    /// Most currencies have two; the exceptions below are the ones in current use.
    pub fn minor_unit_exponent(&self) -> u32 {
        match &self.0 {
            b"BIF" | b"CLP" | b"DJF" | b"GNF" | b"ISK" | b"JPY" | b"KMF" | b"KRW" | b"PYG"
            | b"RWF" | b"UGX" | b"UYI" | b"VND" | b"VUV" | b"XAF" | b"XOF" | b"XPF" => 0,
            b"BHD" | b"IQD" | b"JOD" | b"KWD" | b"LYD" | b"OMR" | b"TND" => 3,
            b"CLF" | b"UYW" => 4,
            _ => 2,
        }
    }
}

impl FromStr for Currency {
    type Err = InvalidCurrency;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Currency([a, b, c])),
            _ => Err(InvalidCurrency(s.to_owned())),
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = InvalidCurrency;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

/// An exact amount of money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// The amount in the currency's minor unit (cents for EUR).
    pub minor_units: i64,
    /// The currency.
    pub currency: Currency,
}

/// Why a decimal amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidAmount {
    /// Not a plain decimal number (digits, at most one `.`, optional leading `-`).
    #[error("must be a decimal number such as 12.50")]
    NotADecimal,
    /// More decimal places than the currency's minor unit has.
    #[error("must have at most {0} decimal places")]
    TooPrecise(u32),
    /// Too large to be represented.
    #[error("is too large")]
    TooLarge,
}

impl Money {
    /// Money of `minor_units` in `currency`.
    pub fn new(minor_units: i64, currency: Currency) -> Self {
        Money {
            minor_units,
            currency,
        }
    }

    /// Parses decimal text in major units (`"12.5"` EUR is 1250 cents) without floating point.
    ///
    /// Accepts an optional leading `-`, digits, and at most the currency's number of decimals;
    /// exponents (`1e3`), signs on the fraction and empty parts (`"."`, `"1."`) are refused.
    pub fn parse_major(text: &str, currency: Currency) -> Result<Money, InvalidAmount> {
        let exponent = currency.minor_unit_exponent();
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match digits.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (digits, None),
        };
        let is_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !is_digits(whole) || fraction.is_some_and(|f| !is_digits(f)) {
            return Err(InvalidAmount::NotADecimal);
        }
        let fraction = fraction.unwrap_or("");
        // Trailing zeros carry no precision: "12.500" is a valid EUR amount.
        let fraction = fraction.trim_end_matches('0');
        if fraction.len() > exponent as usize {
            return Err(InvalidAmount::TooPrecise(exponent));
        }
        let scale = 10_i64.pow(exponent);
        let whole: i64 = whole.parse().map_err(|_| InvalidAmount::TooLarge)?;
        let mut frac_minor: i64 = if fraction.is_empty() {
            0
        } else {
            fraction.parse().map_err(|_| InvalidAmount::NotADecimal)?
        };
        for _ in fraction.len()..exponent as usize {
            frac_minor *= 10;
        }
        let magnitude = whole
            .checked_mul(scale)
            .and_then(|m| m.checked_add(frac_minor))
            .ok_or(InvalidAmount::TooLarge)?;
        Ok(Money::new(
            if negative { -magnitude } else { magnitude },
            currency,
        ))
    }

    /// The amount in major units as exact decimal text, e.g. `"12.50"`.
    pub fn to_decimal_string(&self) -> String {
        let exponent = self.currency.minor_unit_exponent();
        let sign = if self.minor_units < 0 { "-" } else { "" };
        let magnitude = self.minor_units.unsigned_abs();
        if exponent == 0 {
            return format!("{sign}{magnitude}");
        }
        let scale = 10_u64.pow(exponent);
        format!(
            "{sign}{}.{:0width$}",
            magnitude / scale,
            magnitude % scale,
            width = exponent as usize
        )
    }

    /// Multiplies by a quantity, `None` on overflow.
    pub fn checked_mul(&self, quantity: i64) -> Option<Money> {
        self.minor_units
            .checked_mul(quantity)
            .map(|m| Money::new(m, self.currency))
    }
}

impl fmt::Display for Money {
    /// `12.50 EUR`: unambiguous for every currency, with no locale guessing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.to_decimal_string(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(text: &str) -> Result<i64, InvalidAmount> {
        Money::parse_major(text, Currency::EUR).map(|m| m.minor_units)
    }

    #[test]
    fn parses_decimal_text_exactly() {
        assert_eq!(eur("12.5"), Ok(1250));
        assert_eq!(eur("12.50"), Ok(1250));
        assert_eq!(eur("12.500"), Ok(1250));
        assert_eq!(eur("0.1"), Ok(10));
        assert_eq!(eur("0.01"), Ok(1));
        assert_eq!(eur("7"), Ok(700));
        assert_eq!(eur("-3.25"), Ok(-325));
        assert_eq!(eur("0"), Ok(0));
    }

    #[test]
    fn refuses_what_is_not_a_plain_decimal() {
        for bad in [
            "", ".", "1.", ".5", "1e3", "+1", "1,5", " 1", "1.2.3", "--1", "abc", "1.-5",
        ] {
            assert_eq!(eur(bad), Err(InvalidAmount::NotADecimal), "{bad:?}");
        }
        assert_eq!(eur("1.234"), Err(InvalidAmount::TooPrecise(2)));
        assert_eq!(eur("99999999999999999999"), Err(InvalidAmount::TooLarge));
        assert_eq!(eur("92233720368547758.08"), Err(InvalidAmount::TooLarge));
        assert_eq!(eur("92233720368547758.07"), Ok(i64::MAX));
    }

    #[test]
    fn respects_each_currency_exponent() {
        let jpy: Currency = "JPY".parse().unwrap();
        let kwd: Currency = "KWD".parse().unwrap();
        assert_eq!(Money::parse_major("500", jpy).unwrap().minor_units, 500);
        assert_eq!(
            Money::parse_major("5.5", jpy),
            Err(InvalidAmount::TooPrecise(0))
        );
        assert_eq!(Money::parse_major("1.234", kwd).unwrap().minor_units, 1234);
        assert_eq!(Money::new(500, jpy).to_string(), "500 JPY");
        assert_eq!(Money::new(1234, kwd).to_string(), "1.234 KWD");
    }

    #[test]
    fn formats_with_all_minor_digits() {
        assert_eq!(Money::new(2500, Currency::EUR).to_string(), "25.00 EUR");
        assert_eq!(Money::new(5, Currency::USD).to_string(), "0.05 USD");
        assert_eq!(Money::new(-5, Currency::USD).to_string(), "-0.05 USD");
        assert_eq!(
            Money::new(i64::MIN, Currency::USD).to_decimal_string(),
            "-92233720368547758.08"
        );
    }

    #[test]
    fn currency_codes_are_three_upper_case_letters() {
        assert!("EUR".parse::<Currency>().is_ok());
        for bad in ["eur", "EU", "EURO", "E1R", "", "ÉUR"] {
            assert!(bad.parse::<Currency>().is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&Currency::EUR).unwrap();
        assert_eq!(json, "\"EUR\"");
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
    }
}
