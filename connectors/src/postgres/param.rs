//! Values bound as parameters of the PostgreSQL applier's statements (and written by its binary
//! COPY), converted from canonical [`Value`]s for one target column.
//!
//! Every value is bound as a parameter of a prepared statement, in PostgreSQL's *binary*
//! format, encoded for the target column's actual type ([`PgParam`]): `int2`/`int4`/`int8`
//! from `Int`/`UInt` with range checks, `numeric` in its binary base-10000 form written here
//! from the exact decimal text (tokio-postgres has no numeric encoder; the encoding is exact
//! by construction, including NaN and ±Infinity, and keeps the scale), `float4`/`float8`
//! bit-exact (NaN and ±Infinity included; a `float4` column refuses a value that is not
//! exactly a 32-bit float), `bytea` as raw bytes (0x00 included), `time` / `interval` as
//! microseconds (so 24:00:00 fits `time` and any duration fits `interval`), `timestamptz` as
//! UTC microseconds, `jsonb` as version 1 plus the text, `json` and text types as the text
//! (key order and duplicates kept). Binary was chosen over "bind everything as text and
//! cast" because nothing is parsed or printed on the way, so there is no float formatting,
//! `DateStyle`, `bytea_output` or time zone setting that could change a value. Target types
//! duplex has no binary encoder for (e.g. `inet`, `macaddr`, `xml`, `citext`) are bound as
//! text with an explicit `$n::text::<type>` cast: their text form is their canonical form.
//! Bit strings are bound as their digits cast to `varbit` (the column's assignment cast then
//! refuses a wrong length; duplex checks it first to say so clearly). Arrays are bound as their
//! array literal ([`array_literal`]) cast to the array of the element type *without* its
//! modifiers (`varbit[]`, `bpchar[]`, `varchar[]`, `numeric[]`: an explicit cast to
//! `bit(3)[]` or `varchar(8)[]` would pad or truncate elements), so the assignment to the
//! column refuses what does not fit: from a canonical array, or from a JSON array (how arrays
//! are stored in MySQL/MariaDB, see [`json_array_literal`]).
//! `interval` is written in binary with its three fields (months, days, microseconds).
//!
//! Before binding, each value is checked against the target column: out-of-range integers,
//! a `numeric(p,s)` value that would be rounded, text with a 0x00 character (PostgreSQL
//! refuses it), a time outside 00:00:00..=24:00:00 are refused with an error naming table,
//! column, value kind and column type.

use std::borrow::Cow;
use std::error::Error;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use uuid::Uuid;

use crate::apply::ApplyError;
use crate::{TableName, Value};

use super::apply::{PgColumn, PgKind};

/// A value encoded for one target column, in PostgreSQL's binary format.
#[derive(Debug, Clone)]
pub(super) enum PgParam<'a> {
    Null,
    Bool(bool),
    I16(i16),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Numeric(Cow<'a, str>),
    Text(Cow<'a, str>),

    Jsonb(&'a str),
    Bytes(&'a [u8]),
    Date(NaiveDate),
    /// Microseconds since midnight.
    Time(i64),
    /// Microseconds, days, months.
    Interval(i64, i32, i32),
    Timestamp(NaiveDateTime),
    TimestampTz(DateTime<Utc>),
    Uuid(Uuid),
}

impl PgParam<'_> {
    /// Approximate encoded size, for sizing multi-row INSERTs.
    pub(super) fn size(&self) -> usize {
        match self {
            PgParam::Numeric(s) | PgParam::Text(s) => s.len(),
            PgParam::Jsonb(s) => s.len(),
            PgParam::Bytes(b) => b.len(),
            _ => 8,
        }
    }
}

/// Microseconds in a day: PostgreSQL `time` goes up to and including 24:00:00.
const DAY_MICROS: i64 = 86_400_000_000;

/// Converts a canonical value for a target column, refusing what the column cannot hold
/// exactly.
pub(super) fn to_param<'a>(
    value: &'a Value,
    column: &PgColumn,
    table: &TableName,
) -> Result<PgParam<'a>, ApplyError> {
    let refuse =
        |reason: &str| ApplyError::refuse(table, &column.target, value, &column.declared, reason);
    let int_range = || refuse("out of the column's range");
    let text = |s: &'a str| {
        if s.contains('\0') {
            Err(refuse("PostgreSQL text cannot contain the character 0x00"))
        } else {
            Ok(s)
        }
    };
    use PgKind as K;
    Ok(match (column.kind, value) {
        (_, Value::Null) => PgParam::Null,
        (_, Value::Unchanged) => return Err(refuse("an Unchanged value cannot be written")),
        (K::Bool, Value::Bool(b)) => PgParam::Bool(*b),
        (K::Bool, Value::Int(i @ (0 | 1))) => PgParam::Bool(*i == 1),
        (K::Bool, Value::UInt(u @ (0 | 1))) => PgParam::Bool(*u == 1),
        (K::Int2 | K::Int4 | K::Int8, Value::Bool(b)) => bool_as_int(column.kind, *b),
        (K::Int2, Value::Int(i)) => PgParam::I16(i16::try_from(*i).map_err(|_| int_range())?),
        (K::Int2, Value::UInt(u)) => PgParam::I16(i16::try_from(*u).map_err(|_| int_range())?),
        (K::Int4, Value::Int(i)) => PgParam::I32(i32::try_from(*i).map_err(|_| int_range())?),
        (K::Int4, Value::UInt(u)) => PgParam::I32(i32::try_from(*u).map_err(|_| int_range())?),
        (K::Int8, Value::Int(i)) => PgParam::I64(*i),
        (K::Int8, Value::UInt(u)) => PgParam::I64(i64::try_from(*u).map_err(|_| int_range())?),
        (K::Numeric, Value::Int(i)) => PgParam::Numeric(Cow::Owned(i.to_string())),
        (K::Numeric, Value::UInt(u)) => PgParam::Numeric(Cow::Owned(u.to_string())),
        (K::Numeric, Value::Decimal(d)) => {
            if let Some(scale) = column.scale
                && d.normalized().scale() > scale
            {
                return Err(refuse(&format!(
                    "{d} has more than {scale} decimal places and would be rounded"
                )));
            }
            PgParam::Numeric(Cow::Borrowed(d.as_str()))
        }
        (K::Float4, Value::Float(f)) => {
            let narrow = *f as f32;
            if !f.is_nan() && f64::from(narrow) != *f {
                return Err(refuse(&format!(
                    "{f} is not exactly a 32-bit float (use float8)"
                )));
            }
            PgParam::F32(narrow)
        }
        (K::Float8, Value::Float(f)) => PgParam::F64(*f),
        (K::Text | K::Json | K::Cast, Value::Text(s) | Value::Json(s)) => {
            PgParam::Text(Cow::Borrowed(text(s)?))
        }
        (K::Text | K::Cast, Value::Uuid(u)) => PgParam::Text(Cow::Owned(u.to_string())),
        (K::Cast, Value::Int(i)) => PgParam::Text(Cow::Owned(i.to_string())),
        (K::Cast, Value::UInt(u)) => PgParam::Text(Cow::Owned(u.to_string())),
        (K::Cast, Value::Decimal(d)) => PgParam::Text(Cow::Borrowed(d.as_str())),
        (K::Cast, Value::Bool(b)) => {
            PgParam::Text(Cow::Borrowed(if *b { "true" } else { "false" }))
        }
        (K::Jsonb, Value::Text(s) | Value::Json(s)) => PgParam::Jsonb(text(s)?),
        (K::Bytea, Value::Bytes(b)) => PgParam::Bytes(b),
        (K::Date, Value::Date(d)) => PgParam::Date(*d),
        (K::Time, Value::Time(us)) => {
            if !(0..=DAY_MICROS).contains(us) {
                return Err(refuse("outside 00:00:00..=24:00:00 (use interval)"));
            }
            PgParam::Time(*us)
        }
        (K::Interval, Value::Time(us)) => PgParam::Interval(*us, 0, 0),
        (K::Interval, Value::Interval(i)) => PgParam::Interval(i.micros, i.days, i.months),
        (K::Bool, Value::Bits(b)) if b.len() == 1 => PgParam::Bool(b.as_str() == "1"),
        (K::Bits { len, varying }, Value::Bits(_) | Value::Bool(_)) => {
            let digits = match value {
                Value::Bits(b) => b.as_str(),
                Value::Bool(true) => "1",
                _ => "0",
            };
            match len {
                Some(n) if !varying && digits.len() != n => {
                    return Err(refuse(&format!(
                        "{} bits do not fit bit({n}), which holds exactly {n}",
                        digits.len()
                    )));
                }
                Some(n) if varying && digits.len() > n => {
                    return Err(refuse(&format!(
                        "{} bits do not fit bit varying({n})",
                        digits.len()
                    )));
                }
                _ => PgParam::Text(Cow::Borrowed(digits)),
            }
        }
        (K::Array, Value::Array(elements)) => PgParam::Text(Cow::Owned(
            array_literal(elements, column.scale).map_err(|e| refuse(&e))?,
        )),
        (K::Array, Value::Json(s) | Value::Text(s)) => PgParam::Text(Cow::Owned(
            json_array_literal(s, column.scale).map_err(|e| refuse(&e))?,
        )),
        (K::Timestamp, Value::Timestamp(t)) => PgParam::Timestamp(*t),
        (K::Timestamp, Value::TimestampTz(t)) => PgParam::Timestamp(t.naive_utc()),
        (K::TimestampTz, Value::TimestampTz(t)) => PgParam::TimestampTz(*t),
        (K::TimestampTz, Value::Timestamp(t)) => PgParam::TimestampTz(t.and_utc()),
        (K::Uuid, Value::Uuid(u)) => PgParam::Uuid(*u),
        (K::Uuid, Value::Text(s)) => {
            PgParam::Uuid(Uuid::parse_str(s).map_err(|_| refuse("not a UUID"))?)
        }
        _ => return Err(refuse("no conversion between these types")),
    })
}

/// A one-dimensional array literal (`{"1",NULL,"a \\"b\\""}`) of canonical elements: every
/// non-null element quoted, with `"` and `\\` escaped, as its [`Value::element_text`].
/// Refuses nested arrays, text with 0x00 and, for `numeric(p,s)[]` (`scale`), decimals the
/// column would round.
pub(super) fn array_literal(elements: &[Value], scale: Option<usize>) -> Result<String, String> {
    let mut out = String::from("{");
    for (i, element) in elements.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match element {
            Value::Null => out.push_str("NULL"),
            Value::Array(_) => {
                return Err(format!(
                    "element {} is an array: multi-dimensional arrays are not replicated",
                    i + 1
                ));
            }
            Value::Decimal(d) if scale.is_some_and(|s| d.normalized().scale() > s) => {
                return Err(format!(
                    "element {} ({d}) has more decimal places than the column and would be rounded",
                    i + 1
                ));
            }
            other => {
                let text = other
                    .element_text()
                    .ok_or_else(|| format!("element {} has no value", i + 1))?;
                quote_element(&text, &mut out).map_err(|e| format!("element {}: {e}", i + 1))?;
            }
        }
    }
    out.push('}');
    Ok(out)
}

/// The array literal of a JSON array of scalars (a MySQL/MariaDB JSON column): `null` is the
/// NULL element, strings their text, numbers their exact digits, `true`/`false` themselves,
/// objects their JSON text (for `json[]`/`jsonb[]`); the column's element type reads them.
/// Anything but an array, and nested arrays, are refused.
pub(super) fn json_array_literal(json: &str, scale: Option<usize>) -> Result<String, String> {
    use serde_json::value::RawValue;
    let items: Vec<&RawValue> = serde_json::from_str(json).map_err(|_| {
        format!(
            "{} is not a JSON array: an array column takes a JSON array of scalars",
            shorten(json)
        )
    })?;
    let mut out = String::from("{");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let raw = item.get().trim();
        let text = match raw.as_bytes().first() {
            Some(b'n') => {
                out.push_str("NULL");
                continue;
            }
            Some(b'[') => {
                return Err(format!(
                    "element {} is an array: multi-dimensional arrays are not replicated",
                    i + 1
                ));
            }
            Some(b'"') => serde_json::from_str::<String>(raw)
                .map_err(|e| format!("element {}: {e}", i + 1))?,
            Some(b'-' | b'0'..=b'9') => {
                if let (Some(s), Ok(d)) = (scale, raw.parse::<crate::Decimal>())
                    && d.normalized().scale() > s
                {
                    return Err(format!(
                        "element {} ({raw}) has more decimal places than the column and would be rounded",
                        i + 1
                    ));
                }
                raw.to_owned()
            }
            _ => raw.to_owned(),
        };
        quote_element(&text, &mut out).map_err(|e| format!("element {}: {e}", i + 1))?;
    }
    out.push('}');
    Ok(out)
}

/// Appends `"text"` with `"` and `\\` escaped.
fn quote_element(text: &str, out: &mut String) -> Result<(), &'static str> {
    if text.contains('\0') {
        return Err("PostgreSQL text cannot contain the character 0x00");
    }
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(())
}

/// At most 64 characters of a value, for messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A boolean written into an integer column, as 0 or 1.
fn bool_as_int(kind: PgKind, b: bool) -> PgParam<'static> {
    match kind {
        PgKind::Int2 => PgParam::I16(i16::from(b)),
        PgKind::Int4 => PgParam::I32(i32::from(b)),
        _ => PgParam::I64(i64::from(b)),
    }
}

impl ToSql for PgParam<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match self {
            PgParam::Null => return Ok(IsNull::Yes),
            PgParam::Bool(b) => out.put_u8(u8::from(*b)),
            PgParam::I16(i) => out.put_i16(*i),
            PgParam::I32(i) => out.put_i32(*i),
            PgParam::I64(i) => out.put_i64(*i),
            PgParam::F32(f) => out.put_f32(*f),
            PgParam::F64(f) => out.put_f64(*f),
            PgParam::Numeric(text) => encode_numeric(text, out)?,
            PgParam::Text(s) => out.put_slice(s.as_bytes()),
            PgParam::Jsonb(s) => {
                out.put_u8(1);
                out.put_slice(s.as_bytes());
            }
            PgParam::Bytes(b) => out.put_slice(b),
            PgParam::Date(d) => return d.to_sql(ty, out),
            PgParam::Time(us) => out.put_i64(*us),
            PgParam::Interval(us, days, months) => {
                out.put_i64(*us);
                out.put_i32(*days);
                out.put_i32(*months);
            }
            PgParam::Timestamp(t) => return t.to_sql(ty, out),
            PgParam::TimestampTz(t) => return t.to_sql(ty, out),
            PgParam::Uuid(u) => out.put_slice(u.as_bytes()),
        }
        Ok(IsNull::No)
    }

    /// The conversion to the column's type was decided (and checked) by [`to_param`] from the
    /// target schema, so any server-inferred parameter type is accepted here.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Writes decimal text as PostgreSQL's binary `numeric`: digit count, weight (of the first
/// base-10000 digit), sign, display scale, then the base-10000 digits.
fn encode_numeric(text: &str, out: &mut BytesMut) -> Result<(), Box<dyn Error + Sync + Send>> {
    const POSITIVE: u16 = 0x0000;
    const NEGATIVE: u16 = 0x4000;
    let special = match text {
        "NaN" => Some(0xC000),
        "Infinity" => Some(0xD000),
        "-Infinity" => Some(0xF000),
        _ => None,
    };
    if let Some(sign) = special {
        out.put_i16(0);
        out.put_i16(0);
        out.put_u16(sign);
        out.put_u16(0);
        return Ok(());
    }
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a decimal number").into());
    }
    let int = int.trim_start_matches('0');
    let scale = u16::try_from(frac.len()).map_err(|_| "numeric scale too large")?;
    let mut digits: Vec<i16> = Vec::with_capacity(int.len() / 4 + frac.len() / 4 + 2);
    let lead = (4 - int.len() % 4) % 4;
    let padded_int: String = "0".repeat(lead) + int;
    for group in padded_int.as_bytes().chunks(4) {
        digits.push(group_value(group));
    }
    let int_groups = digits.len();
    let trail = (4 - frac.len() % 4) % 4;
    let padded_frac: String = frac.to_owned() + &"0".repeat(trail);
    for group in padded_frac.as_bytes().chunks(4) {
        digits.push(group_value(group));
    }
    let mut weight = i32::try_from(int_groups).map_err(|_| "numeric too large")? - 1;
    let leading_zeros = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading_zeros);
    weight -= i32::try_from(leading_zeros).map_err(|_| "numeric too large")?;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let sign = if negative && !digits.is_empty() {
        NEGATIVE
    } else {
        POSITIVE
    };
    if digits.is_empty() {
        weight = 0;
    }
    out.put_i16(i16::try_from(digits.len()).map_err(|_| "numeric too long")?);
    out.put_i16(i16::try_from(weight).map_err(|_| "numeric out of range")?);
    out.put_u16(sign);
    out.put_u16(scale);
    for d in digits {
        out.put_i16(d);
    }
    Ok(())
}

fn group_value(group: &[u8]) -> i16 {
    group
        .iter()
        .fold(0i16, |acc, b| acc * 10 + i16::from(b - b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numeric(text: &str) -> (i16, i16, u16, u16, Vec<i16>) {
        let mut out = BytesMut::new();
        encode_numeric(text, &mut out).unwrap();
        let w: Vec<i16> = out
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect();
        (w[0], w[1], w[2] as u16, w[3] as u16, w[4..].to_vec())
    }

    #[test]
    fn array_literals_quote_every_element() {
        let elements = [
            Value::Int(1),
            Value::Null,
            Value::Text(r#"a "b", \c {} NULL 🙂"#.into()),
            Value::Text("NULL".into()),
            Value::Text(String::new()),
        ];
        assert_eq!(
            array_literal(&elements, None).unwrap(),
            r#"{"1",NULL,"a \"b\", \\c {} NULL 🙂","NULL",""}"#
        );
        assert_eq!(array_literal(&[], None).unwrap(), "{}");
        assert!(array_literal(&[Value::Array(vec![])], None).is_err());
        assert!(array_literal(&[Value::Decimal("1.505".parse().unwrap())], Some(2)).is_err());
        assert!(array_literal(&[Value::Decimal("1.500".parse().unwrap())], Some(2)).is_ok());
        assert!(array_literal(&[Value::Text("a\0b".into())], None).is_err());
    }

    #[test]
    fn json_arrays_become_literals_with_exact_numbers() {
        assert_eq!(
            json_array_literal(r#"[1, null, 1.50, "x\"y", true, {"a": [1]}, 1e400]"#, None)
                .unwrap(),
            r#"{"1",NULL,"1.50","x\"y","true","{\"a\": [1]}","1e400"}"#
        );
        assert_eq!(json_array_literal("[]", None).unwrap(), "{}");
        assert!(json_array_literal("[[1], [2]]", None).is_err());
        assert!(json_array_literal(r#"{"a": 1}"#, None).is_err());
        assert!(json_array_literal("[1.505]", Some(2)).is_err());
    }

    #[test]
    fn numerics_encode_in_base_10000() {
        assert_eq!(numeric("0"), (0, 0, 0, 0, vec![]));
        assert_eq!(numeric("0.000"), (0, 0, 0, 3, vec![]));
        assert_eq!(numeric("0.5"), (1, -1, 0, 1, vec![5000]));
        assert_eq!(numeric("12345.678"), (3, 1, 0, 3, vec![1, 2345, 6780]));
        assert_eq!(numeric("-10000"), (1, 1, 0x4000, 0, vec![1]));
        assert_eq!(numeric("0.00001"), (1, -2, 0, 5, vec![1000]));
        assert_eq!(numeric("NaN"), (0, 0, 0xC000, 0, vec![]));
    }
}
