//! Values bound as parameters of the MySQL/MariaDB applier's statements, converted from
//! canonical [`Value`]s for one target column.
//!
//! Values go through the binary protocol of prepared statements as [`mysql_async::Value`]s
//! chosen for the target column: integers as `Int`/`UInt` after a range check for the
//! column's width and sign, `DECIMAL` as its exact text (after checking it is finite, not
//! negative for `UNSIGNED`, and would not be rounded to the column's scale), `FLOAT` as a
//! 32-bit float (refused unless exact) and `DOUBLE` as a 64-bit one (NaN and ±Infinity are
//! refused: MySQL cannot store them), text, JSON and UUIDs as UTF-8 bytes, binary data as
//! bytes, dates and datetimes as `Date`, and `Time` (signed microseconds) as a `TIME` of up
//! to ±838:59:59.999999. `BIT(n)` takes a bit string of exactly n bits (no silent padding or
//! truncation) or a boolean, bound as the unsigned number the bits spell; a text or JSON
//! column takes an array as its JSON array ([`crate::array_json`]).

use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};

use crate::apply::ApplyError;
use crate::{TableName, Value};

use super::apply::{MyColumn, MyKind};

/// Largest MySQL `TIME` magnitude: 838:59:59.999999.
const TIME_MAX_MICROS: i64 = (838 * 3600 + 59 * 60 + 59) * 1_000_000 + 999_999;

/// Converts a canonical value for a target column, refusing what the column cannot hold
/// exactly.
pub(super) fn to_param(
    value: &Value,
    column: &MyColumn,
    table: &TableName,
) -> Result<mysql_async::Value, ApplyError> {
    use mysql_async::Value as M;
    let refuse =
        |reason: &str| ApplyError::refuse(table, &column.target, value, &column.declared, reason);
    let integer = |i: i128, min: i128, max: i128| {
        if i < min || i > max {
            Err(refuse("out of the column's range"))
        } else if i < 0 {
            Ok(M::Int(i as i64))
        } else {
            Ok(M::UInt(i as u64))
        }
    };
    // Integers have scale 0, so only a Decimal can be rounded.
    let decimal_text = |text: String, scale: Option<usize>, unsigned: bool| {
        if unsigned && text.starts_with('-') {
            return Err(refuse("negative value in an UNSIGNED column"));
        }
        if let (Value::Decimal(d), Some(scale)) = (value, scale)
            && d.normalized().scale() > scale
        {
            return Err(refuse(&format!(
                "{d} has more than {scale} decimal places and would be rounded"
            )));
        }
        Ok(M::Bytes(text.into_bytes()))
    };
    use MyKind as K;
    match (column.kind, value) {
        (_, Value::Null) => Ok(M::NULL),
        (_, Value::Unchanged) => Err(refuse("an Unchanged value cannot be written")),
        (K::Int { min, max }, Value::Int(i)) => integer(i128::from(*i), min, max),
        (K::Int { min, max }, Value::UInt(u)) => integer(i128::from(*u), min, max),
        (K::Int { min, max }, Value::Bool(b)) => integer(i128::from(*b), min, max),
        (K::Decimal { scale, unsigned }, Value::Decimal(d)) => {
            if !d.is_finite() {
                return Err(refuse("MySQL DECIMAL cannot store NaN or ±Infinity"));
            }
            decimal_text(d.as_str().to_owned(), scale, unsigned)
        }
        (K::Decimal { scale, unsigned }, Value::Int(i)) => {
            decimal_text(i.to_string(), scale, unsigned)
        }
        (K::Decimal { scale, unsigned }, Value::UInt(u)) => {
            decimal_text(u.to_string(), scale, unsigned)
        }
        (K::Float | K::Double, Value::Float(f)) if !f.is_finite() => {
            Err(refuse("MySQL cannot store NaN or ±Infinity"))
        }
        (K::Float, Value::Float(f)) => {
            let narrow = *f as f32;
            if f64::from(narrow) != *f {
                return Err(refuse(&format!(
                    "{f} is not exactly a 32-bit float (use DOUBLE)"
                )));
            }
            Ok(M::Float(narrow))
        }
        (K::Double, Value::Float(f)) => Ok(M::Double(*f)),
        (K::Text, Value::Text(s) | Value::Json(s)) => Ok(M::Bytes(s.as_bytes().to_vec())),
        (K::Text | K::Uuid, Value::Uuid(u)) => Ok(M::Bytes(u.to_string().into_bytes())),
        (K::Uuid, Value::Text(s)) => match uuid::Uuid::parse_str(s) {
            Ok(u) => Ok(M::Bytes(u.to_string().into_bytes())),
            Err(_) => Err(refuse("not a UUID")),
        },
        (K::Text, Value::Array(elements)) => match crate::array_json(elements) {
            Ok(json) => Ok(M::Bytes(json.into_bytes())),
            Err(e) => Err(refuse(&e.to_string())),
        },
        (K::Bit { .. }, Value::Bool(b)) => Ok(M::UInt(u64::from(*b))),
        (K::Bit { len }, Value::Bits(bits)) => {
            if bits.len() != len {
                return Err(refuse(&format!(
                    "{bits} has {} bits, the column {len}: it would be padded or truncated",
                    bits.len()
                )));
            }
            bits.to_uint()
                .map(M::UInt)
                .ok_or_else(|| refuse("MySQL BIT holds at most 64 bits"))
        }
        (K::Bytes, Value::Bytes(b)) => Ok(M::Bytes(b.clone())),
        (K::Date, Value::Date(d)) => {
            date_value(*d, None).ok_or_else(|| refuse("MySQL dates span the years 0000-9999"))
        }
        (K::DateTime, Value::Timestamp(t)) => date_value(t.date(), Some(*t))
            .ok_or_else(|| refuse("MySQL datetimes span the years 0000-9999")),
        (K::DateTime, Value::TimestampTz(t)) => {
            let t = t.naive_utc();
            date_value(t.date(), Some(t))
                .ok_or_else(|| refuse("MySQL datetimes span the years 0000-9999"))
        }
        (K::Time, Value::Time(us)) => {
            if us.abs() > TIME_MAX_MICROS {
                return Err(refuse("outside -838:59:59.999999..=838:59:59.999999"));
            }
            let negative = *us < 0;
            let abs = us.unsigned_abs();
            let micros = (abs % 1_000_000) as u32;
            let secs = abs / 1_000_000;
            let days = (secs / 86_400) as u32;
            let hours = ((secs % 86_400) / 3600) as u8;
            let minutes = ((secs % 3600) / 60) as u8;
            let seconds = (secs % 60) as u8;
            Ok(M::Time(negative, days, hours, minutes, seconds, micros))
        }
        _ => Err(refuse("no conversion between these types")),
    }
}

/// A MySQL `Date` value; `None` for years outside 0..=9999.
fn date_value(date: NaiveDate, time: Option<NaiveDateTime>) -> Option<mysql_async::Value> {
    let year = u16::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
    let (h, m, s, us) = match time {
        Some(t) => (
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
            t.nanosecond() / 1000,
        ),
        None => (0, 0, 0, 0),
    };
    Some(mysql_async::Value::Date(
        year,
        date.month() as u8,
        date.day() as u8,
        h,
        m,
        s,
        us,
    ))
}
