//! Canonical values: what every database's column values are translated into.
//!
//! The model is deliberately lossless for everything duplex replicates: exact decimals are kept
//! as their decimal text (never `f64`), JSON as its text (so `json` keeps key order and
//! duplicates), times as signed microseconds (MySQL `TIME` spans -838:59:59 to 838:59:59 and
//! PostgreSQL allows 24:00:00), bit strings with their length (`BIT(7)` keeps its leading
//! zeros), intervals as PostgreSQL's three separate fields, arrays as their elements. A value
//! the log did not carry is [`Value::Unchanged`], which an applier must leave alone rather than
//! write as NULL.

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
    /// A bit string of a known length (MySQL `BIT(n)`, PostgreSQL `bit(n)` / `varbit`).
    Bits(Bits),
    /// A one-dimensional array (PostgreSQL arrays with lower bound 1) of canonical values;
    /// elements are never arrays, `Unchanged` or of mixed kinds.
    Array(Vec<Value>),
    /// A PostgreSQL `interval`: months, days and microseconds kept apart, as PostgreSQL does.
    Interval(Interval),
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
            Value::Bits(_) => K::Bits,
            Value::Array(_) => K::Array,
            Value::Interval(_) => K::Interval,
        })
    }
}

impl Value {
    /// The text a scalar value is written as inside a PostgreSQL array literal and as a JSON
    /// string element: PostgreSQL's own input forms (`t`/`f`, `2024-01-31`, `13:45:07.5`,
    /// `2024-01-31 13:45:07.5`, `…+00` for instants, `\x00ff`, bit digits, an interval in
    /// ISO 8601). `None` for NULL, `Unchanged` and arrays, which have no element text.
    pub fn element_text(&self) -> Option<String> {
        let micros = |us: u32| {
            if us == 0 {
                String::new()
            } else {
                format!(".{us:06}").trim_end_matches('0').to_owned()
            }
        };
        Some(match self {
            Value::Null | Value::Unchanged | Value::Array(_) => return None,
            Value::Bool(b) => (if *b { "t" } else { "f" }).to_owned(),
            Value::Int(i) => i.to_string(),
            Value::UInt(u) => u.to_string(),
            Value::Float(f) => float_text(*f),
            Value::Decimal(d) => d.to_string(),
            Value::Text(s) | Value::Json(s) => s.clone(),
            Value::Bytes(b) => {
                let mut out = String::with_capacity(2 + 2 * b.len());
                out.push_str("\\x");
                for byte in b {
                    out.push_str(&format!("{byte:02x}"));
                }
                out
            }
            Value::Date(d) => d.format("%Y-%m-%d").to_string(),
            Value::Time(us) => {
                let sign = if *us < 0 { "-" } else { "" };
                let abs = us.unsigned_abs();
                let secs = abs / 1_000_000;
                format!(
                    "{sign}{:02}:{:02}:{:02}{}",
                    secs / 3600,
                    secs / 60 % 60,
                    secs % 60,
                    micros((abs % 1_000_000) as u32)
                )
            }
            Value::Timestamp(t) => format!(
                "{}{}",
                t.format("%Y-%m-%d %H:%M:%S"),
                micros(t.and_utc().timestamp_subsec_micros())
            ),
            Value::TimestampTz(t) => format!(
                "{}{}+00",
                t.format("%Y-%m-%d %H:%M:%S"),
                micros(t.timestamp_subsec_micros())
            ),
            Value::Uuid(u) => u.to_string(),
            Value::Bits(b) => b.as_str().to_owned(),
            Value::Interval(i) => i.to_string(),
        })
    }
}

/// A float as PostgreSQL reads it back exactly: the shortest text that round-trips, or
/// `NaN`, `Infinity`, `-Infinity`.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        format!("{f:?}")
    }
}

/// An element that has no JSON form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArrayJsonError(String);

/// The JSON array of an array's elements, how arrays are stored in MySQL/MariaDB `JSON`
/// columns: NULL as `null`, booleans as `true`/`false`, integers and finite decimals as JSON
/// numbers with every digit kept (`1.50` stays `1.50`), finite floats as the shortest number
/// that reads back exactly, JSON elements as themselves, everything else as a JSON string of
/// its [`Value::element_text`]. NaN and ±Infinity (JSON has no such numbers) and nested
/// arrays are refused.
pub fn array_json(elements: &[Value]) -> Result<String, ArrayJsonError> {
    let mut out = String::from("[");
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match element {
            Value::Null | Value::Unchanged => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => out.push_str(&i.to_string()),
            Value::UInt(u) => out.push_str(&u.to_string()),
            Value::Decimal(d) if d.is_finite() => out.push_str(d.as_str()),
            Value::Float(f) if f.is_finite() => out.push_str(&float_text(*f)),
            Value::Decimal(_) | Value::Float(_) => {
                return Err(ArrayJsonError(format!(
                    "element {} is {}, which JSON cannot hold",
                    i + 1,
                    element.element_text().unwrap_or_default()
                )));
            }
            Value::Json(text) => out.push_str(text.trim()),
            Value::Array(_) => {
                return Err(ArrayJsonError(format!(
                    "element {} is an array: multi-dimensional arrays are not replicated",
                    i + 1
                )));
            }
            other => {
                let text = other.element_text().unwrap_or_default();
                out.push_str(&serde_json::to_string(&text).map_err(|e| {
                    ArrayJsonError(format!("element {} cannot be written as JSON: {e}", i + 1))
                })?);
            }
        }
    }
    out.push(']');
    Ok(out)
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

/// A bit string: its bits in order, first bit first, as the characters `0` and `1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bits(String);

/// Text that is not a bit string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a bit string (only the digits 0 and 1)")]
pub struct BitsError(String);

impl Bits {
    /// The bits as `0`/`1` characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Number of bits.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty bit string (`varbit` allows it).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `len` low bits of `value`, most significant first (MySQL `BIT(len)`); `None` when
    /// `len` is over 64 or `value` does not fit in `len` bits.
    pub fn from_uint(value: u64, len: usize) -> Option<Bits> {
        if len > 64 || (len < 64 && value >> len != 0) {
            return None;
        }
        Some(Bits(
            (0..len)
                .rev()
                .map(|i| if value >> i & 1 == 1 { '1' } else { '0' })
                .collect(),
        ))
    }

    /// The bits as an unsigned number, first bit most significant; `None` past 64 bits.
    pub fn to_uint(&self) -> Option<u64> {
        (self.len() <= 64).then(|| {
            self.0
                .bytes()
                .fold(0u64, |acc, b| acc << 1 | u64::from(b == b'1'))
        })
    }
}

impl FromStr for Bits {
    type Err = BitsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.bytes().all(|b| b == b'0' || b == b'1') {
            Ok(Bits(s.to_owned()))
        } else {
            Err(BitsError(s.to_owned()))
        }
    }
}

impl fmt::Display for Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "B'{}'", self.0)
    }
}

/// A PostgreSQL `interval`: its three fields, which PostgreSQL keeps apart (a month is not
/// a fixed number of days, a day not always 24 hours), so `1 mon`, `30 days` and `720:00:00`
/// are three different values here as there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Interval {
    /// Months (a year is 12).
    pub months: i32,
    /// Days.
    pub days: i32,
    /// Microseconds.
    pub micros: i64,
}

impl fmt::Display for Interval {
    /// The ISO 8601 form PostgreSQL prints with `IntervalStyle = iso_8601`
    /// (`P1Y2M3DT4H5M6.5S`, `PT0S`, each field with its own sign).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.months == 0 && self.days == 0 && self.micros == 0 {
            return f.write_str("PT0S");
        }
        f.write_str("P")?;
        let (years, months) = (self.months / 12, self.months % 12);
        for (n, unit) in [(years, 'Y'), (months, 'M'), (self.days, 'D')] {
            if n != 0 {
                write!(f, "{n}{unit}")?;
            }
        }
        if self.micros != 0 {
            f.write_str("T")?;
            let sign = if self.micros < 0 { "-" } else { "" };
            let abs = self.micros.unsigned_abs();
            let (hours, minutes) = (abs / 3_600_000_000, abs / 60_000_000 % 60);
            let (seconds, fraction) = (abs / 1_000_000 % 60, abs % 1_000_000);
            if hours != 0 {
                write!(f, "{sign}{hours}H")?;
            }
            if minutes != 0 {
                write!(f, "{sign}{minutes}M")?;
            }
            if seconds != 0 || fraction != 0 {
                write!(f, "{sign}{seconds}")?;
                if fraction != 0 {
                    let digits = format!("{fraction:06}");
                    write!(f, ".{}", digits.trim_end_matches('0'))?;
                }
                f.write_str("S")?;
            }
        }
        Ok(())
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

    #[test]
    fn bit_strings_to_and_from_numbers() {
        let b = |s: &str| s.parse::<Bits>().unwrap();
        assert_eq!(Bits::from_uint(5, 7), Some(b("0000101")));
        assert_eq!(Bits::from_uint(1, 1), Some(b("1")));
        assert_eq!(Bits::from_uint(0, 1), Some(b("0")));
        assert_eq!(Bits::from_uint(u64::MAX, 64), Some(b(&"1".repeat(64))));
        assert_eq!(Bits::from_uint(2, 1), None);
        assert_eq!(Bits::from_uint(0, 65), None);
        assert_eq!(b(&"1".repeat(64)).to_uint(), Some(u64::MAX));
        assert_eq!(b("0000101").to_uint(), Some(5));
        assert_eq!(b("").to_uint(), Some(0));
        assert_eq!(b(&"0".repeat(65)).to_uint(), None);
        assert!("012".parse::<Bits>().is_err());
        assert_eq!(b("0101").to_string(), "B'0101'");
    }

    #[test]
    fn arrays_as_json_keep_every_digit_and_quote_text() {
        let json = array_json(&[
            Value::Int(-1),
            Value::Null,
            Value::Decimal(d("1.50")),
            Value::Float(0.1),
            Value::Bool(true),
            Value::Text("say \"hi\", \\ 🙂".into()),
            Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
            Value::Timestamp(
                NaiveDate::from_ymd_opt(2024, 2, 29)
                    .unwrap()
                    .and_hms_micro_opt(1, 2, 3, 500_000)
                    .unwrap(),
            ),
            Value::Bytes(vec![0, 255]),
            Value::Json(r#"{"a": 1}"#.into()),
        ])
        .unwrap();
        assert_eq!(
            json,
            r#"[-1, null, 1.50, 0.1, true, "say \"hi\", \\ 🙂", "2024-02-29", "2024-02-29 01:02:03.5", "\\x00ff", {"a": 1}]"#
        );
        assert_eq!(array_json(&[]).unwrap(), "[]");
        assert!(array_json(&[Value::Float(f64::NAN)]).is_err());
        assert!(array_json(&[Value::Decimal(d("Infinity"))]).is_err());
        assert!(array_json(&[Value::Array(vec![])]).is_err());
        assert_eq!(
            Value::Time(-1_500_000).element_text().unwrap(),
            "-00:00:01.5"
        );
        assert_eq!(Value::Float(1e300).element_text().unwrap(), "1e300");
    }

    #[test]
    fn intervals_print_as_iso_8601() {
        let i = |months, days, micros| {
            Interval {
                months,
                days,
                micros,
            }
            .to_string()
        };
        assert_eq!(i(0, 0, 0), "PT0S");
        assert_eq!(i(14, 3, 14_706_500_000), "P1Y2M3DT4H5M6.5S");
        assert_eq!(i(-1, -2, -3_600_000_001), "P-1M-2DT-1H-0.000001S");
        assert_eq!(i(0, 0, 60_000_000), "PT1M");
    }
}
