//! Canonical values: what every database's column values are translated into.
//!
//! The model is deliberately lossless for everything duplex replicates: exact decimals are kept
//! as their decimal text (never `f64`), JSON as its text (so `json` keeps key order and
//! duplicates), times as signed microseconds (MySQL `TIME` spans -838:59:59 to 838:59:59 and
//! PostgreSQL allows 24:00:00). A value the log did not carry is [`Value::Unchanged`], which an
//! applier must leave alone rather than write as NULL.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One column value in canonical form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Boolean.
    Bool(bool),
    /// Signed integer of any width up to 64 bits.
    Int(i64),
    /// Unsigned integer (MySQL `UNSIGNED` columns) up to 64 bits.
    UInt(u64),
    /// Binary floating point (`real`, `double precision`, `FLOAT`, `DOUBLE`), incl. NaN/±inf.
    Float(f64),
    /// Exact decimal number.
    Decimal(Decimal),
    /// Character data (valid UTF-8).
    Text(String),
    /// Binary data.
    Bytes(Vec<u8>),
    /// Calendar date.
    Date(NaiveDate),
    /// Time of day or duration, in microseconds; may be negative or past 24h (MySQL `TIME`).
    Time(i64),
    /// Date and time without time zone.
    Timestamp(NaiveDateTime),
    /// An instant, normalised to UTC.
    TimestampTz(DateTime<Utc>),
    /// UUID.
    Uuid(Uuid),
    /// JSON document, as its text.
    Json(String),
    /// A PostgreSQL TOASTed value the log did not carry: the applier must keep the target's
    /// current value of this column.
    Unchanged,
}

impl Value {
    /// The kind of canonical value this is, `None` for `Null` and `Unchanged`.
    pub fn kind(&self) -> Option<crate::ValueKind> {
        use crate::ValueKind as K;
        Some(match self {
            Value::Null | Value::Unchanged => return None,
            Value::Bool(_) => K::Bool,
            Value::Int(_) => K::Int,
            Value::UInt(_) => K::UInt,
            Value::Float(_) => K::Float,
            Value::Decimal(_) => K::Decimal,
            Value::Text(_) => K::Text,
            Value::Bytes(_) => K::Bytes,
            Value::Date(_) => K::Date,
            Value::Time(_) => K::Time,
            Value::Timestamp(_) => K::Timestamp,
            Value::TimestampTz(_) => K::TimestampTz,
            Value::Uuid(_) => K::Uuid,
            Value::Json(_) => K::Json,
        })
    }
}

/// An exact decimal number kept as normalised decimal text: an optional `-`, at least one
/// integer digit without redundant leading zeros, and an optional fraction whose digits (and so
/// the scale) are kept as given. PostgreSQL's `NaN`, `Infinity` and `-Infinity` are kept too;
/// [`Decimal::is_finite`] tells them apart, since most targets refuse them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decimal(String);

/// Text that is not a decimal number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a decimal number")]
pub struct DecimalError(String);

impl Decimal {
    /// The decimal text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// False for NaN and the infinities.
    pub fn is_finite(&self) -> bool {
        !matches!(self.0.as_str(), "NaN" | "Infinity" | "-Infinity")
    }

    /// Digits after the decimal point (0 for non-finite values).
    pub fn scale(&self) -> usize {
        self.0.split_once('.').map_or(0, |(_, f)| f.len())
    }

    /// Digits before the decimal point, without the sign (0 for non-finite values).
    pub fn integer_digits(&self) -> usize {
        if !self.is_finite() {
            return 0;
        }
        let int = self.0.split_once('.').map_or(self.0.as_str(), |(i, _)| i);
        let int = int.trim_start_matches('-');
        if int == "0" { 0 } else { int.len() }
    }

    /// The same number with trailing fractional zeros removed, for comparing values whose
    /// columns have different scales (`1.50` and `1.5`).
    pub fn normalized(&self) -> Decimal {
        let Some((int, frac)) = self.0.split_once('.') else {
            return self.clone();
        };
        let frac = frac.trim_end_matches('0');
        let text = match (int, frac.is_empty()) {
            ("-0", true) => "0".to_owned(),
            (_, true) => int.to_owned(),
            _ => format!("{int}.{frac}"),
        };
        Decimal(text)
    }
}

impl FromStr for Decimal {
    type Err = DecimalError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DecimalError(s.to_owned());
        match s {
            "NaN" | "Infinity" | "-Infinity" => return Ok(Decimal(s.to_owned())),
            "+Infinity" | "inf" | "+inf" => return Ok(Decimal("Infinity".into())),
            "-inf" => return Ok(Decimal("-Infinity".into())),
            _ => {}
        }
        let (negative, body) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (body, None),
        };
        let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
        if !digits(int)
            || !frac.is_none_or(digits)
            || (int.is_empty() && frac.is_none_or(str::is_empty))
        {
            return Err(bad());
        }
        let int = int.trim_start_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let zero = int == "0" && frac.is_none_or(|f| f.bytes().all(|b| b == b'0'));
        let mut text = String::with_capacity(s.len() + 1);
        if negative && !zero {
            text.push('-');
        }
        text.push_str(int);
        if let Some(f) = frac.filter(|f| !f.is_empty()) {
            text.push('.');
            text.push_str(f);
        }
        Ok(Decimal(text))
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn decimals_normalise_sign_and_leading_zeros_but_keep_scale() {
        assert_eq!(d("007.50").as_str(), "7.50");
        assert_eq!(d("-0.000").as_str(), "0.000");
        assert_eq!(d("+12").as_str(), "12");
        assert_eq!(d(".5").as_str(), "0.5");
        assert_eq!(d("5.").as_str(), "5");
        assert_eq!(d("-123456789012345678901234567890.123456789").scale(), 9);
        assert_eq!(d("-123.45").integer_digits(), 3);
        assert_eq!(d("0.45").integer_digits(), 0);
        assert_eq!(d("1.500").normalized(), d("1.5"));
        assert_eq!(d("-0.0").normalized(), d("0"));
    }

    #[test]
    fn decimals_refuse_what_is_not_a_number() {
        for bad in ["", "-", ".", "1e5", "1.2.3", "abc", "1 ", "--1", "0x10"] {
            assert!(bad.parse::<Decimal>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn special_decimals_are_kept_and_flagged() {
        assert!(!d("NaN").is_finite());
        assert!(!d("-Infinity").is_finite());
        assert_eq!(d("inf").as_str(), "Infinity");
        assert!(d("1").is_finite());
    }
}
