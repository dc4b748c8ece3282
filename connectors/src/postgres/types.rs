//! PostgreSQL column values, as `pgoutput` sends them in text format, into canonical
//! [`Value`]s, chosen by the column's type oid.
//!
//! The text a type's output function prints depends on session settings, so the replication
//! session pins them (see [`SESSION_OPTIONS`]): `DateStyle=ISO` (dates as `YYYY-MM-DD`),
//! `TimeZone=UTC` (`timestamptz` printed in UTC; other offsets are still parsed correctly),
//! `bytea_output=hex` (`\x…`) and `extra_float_digits=3` (floats printed so they round-trip).
//!
//! Builtin types are known by oid ([`builtin_type`]); any other oid is resolved through the
//! catalog ([`resolve_type`]): enum types carry their label as [`Value::Text`], domains take
//! their base type's conversion, one-dimensional arrays of a supported element type become
//! [`Value::Array`] (see [`parse_array`]). Bit strings (`bit(n)`, `varbit`) become
//! [`Value::Bits`], `interval` (printed with `IntervalStyle=postgres`) [`Value::Interval`]
//! with its three fields. Types duplex does not replicate (timetz, money, composites, arrays
//! of unsupported elements, extension types) convert NULL but refuse any other value with an
//! error naming the column and the type, never a guess. So do values no target can hold
//! faithfully: BC dates and `±infinity` dates and timestamps, arrays of more than one
//! dimension or with a lower bound other than 1.
//!
//! `money` is refused on purpose: its text is printed in the session's `lc_monetary`, and
//! PostgreSQL would read it back in the target session's, so no text form is exact.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::{Decimal, Value};

use super::PgError;
use super::pgoutput::TupleValue;

/// Startup `options` for the replication session that fix how values are printed.
pub const SESSION_OPTIONS: &str = "-c DateStyle=ISO,MDY -c TimeZone=UTC -c bytea_output=hex \
                                   -c extra_float_digits=3 -c IntervalStyle=postgres";

/// How a column's text is converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conversion {
    /// `bool`: `t` / `f` into [`Value::Bool`].
    Bool,
    /// `int2`, `int4`, `int8`, `oid` into [`Value::Int`].
    Int,
    /// `numeric` into [`Value::Decimal`] (incl. `NaN`, `±Infinity`).
    Numeric,
    /// `float4` into [`Value::Float`]: the exact single-precision value, widened.
    Float4,
    /// `float8` into [`Value::Float`] (incl. `NaN`, `±Infinity`).
    Float8,
    /// Character types, enum labels and types replicated as their text form (`inet`, `cidr`,
    /// `macaddr`, `xml`) into [`Value::Text`].
    Text,
    /// `bytea` (hex format) into [`Value::Bytes`].
    Bytea,
    /// `date` into [`Value::Date`].
    Date,
    /// `time` into [`Value::Time`] (microseconds; `24:00:00` allowed).
    Time,
    /// `timestamp` into [`Value::Timestamp`].
    Timestamp,
    /// `timestamptz` into [`Value::TimestampTz`], normalised to UTC.
    TimestampTz,
    /// `uuid` into [`Value::Uuid`].
    Uuid,
    /// `json`, `jsonb` into [`Value::Json`] (the text as the server prints it).
    Json,
    /// `bit`, `varbit` into [`Value::Bits`].
    Bits,
    /// `interval` into [`Value::Interval`].
    Interval,
    /// A one-dimensional array of elements converted as given, into [`Value::Array`].
    Array(&'static Conversion),
    /// A type duplex does not replicate: values other than NULL are refused.
    Unsupported,
}

/// A column type: its name (for messages) and how its values are converted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PgType {
    /// Type name (`int4`, `timestamptz`, `public.mood`).
    pub name: String,
    /// Conversion of its values.
    pub conversion: Conversion,
}

impl PgType {
    fn new(name: impl Into<String>, conversion: Conversion) -> PgType {
        PgType {
            name: name.into(),
            conversion,
        }
    }
}

/// The builtin types duplex converts, by oid (`pg_type.oid`, fixed across versions).
pub fn builtin_type(oid: u32) -> Option<PgType> {
    use Conversion as C;
    let (name, conversion) = match oid {
        16 => ("bool", C::Bool),
        17 => ("bytea", C::Bytea),
        18 => ("char", C::Text),
        19 => ("name", C::Text),
        20 => ("int8", C::Int),
        21 => ("int2", C::Int),
        23 => ("int4", C::Int),
        25 => ("text", C::Text),
        26 => ("oid", C::Int),
        114 => ("json", C::Json),
        142 => ("xml", C::Text),
        650 => ("cidr", C::Text),
        700 => ("float4", C::Float4),
        701 => ("float8", C::Float8),
        829 => ("macaddr", C::Text),
        869 => ("inet", C::Text),
        1042 => ("bpchar", C::Text),
        1043 => ("varchar", C::Text),
        1082 => ("date", C::Date),
        1186 => ("interval", C::Interval),
        1560 => ("bit", C::Bits),
        1562 => ("varbit", C::Bits),
        1083 => ("time", C::Time),
        1114 => ("timestamp", C::Timestamp),
        1184 => ("timestamptz", C::TimestampTz),
        1700 => ("numeric", C::Numeric),
        2950 => ("uuid", C::Uuid),
        3802 => ("jsonb", C::Json),
        _ => return None,
    };
    Some(PgType::new(name, conversion))
}

/// Resolves any type oid: builtin types directly, others through `pg_type` (enums become
/// text, domains take their base type's conversion, arrays of a supported element type
/// convert their elements, everything else is unsupported).
pub async fn resolve_type(client: &Client, oid: u32) -> Result<PgType, PgError> {
    if let Some(ty) = builtin_type(oid) {
        return Ok(ty);
    }
    let row = client
        .query_opt(
            "SELECT format_type(t.oid, NULL), t.typcategory = 'A' AND t.typelem <> 0, t.typelem \
             FROM pg_type t WHERE t.oid = $1",
            &[&oid],
        )
        .await
        .map_err(PgError::query("looking up a column type"))?;
    if let Some(row) = row
        && row.get::<_, bool>(1)
    {
        let name: String = row.get(0);
        let element = resolve_scalar(client, row.get(2)).await?;
        let conversion = match element.conversion {
            Conversion::Unsupported | Conversion::Array(_) => Conversion::Unsupported,
            scalar => Conversion::Array(element_ref(scalar)),
        };
        return Ok(PgType::new(name, conversion));
    }
    resolve_scalar(client, oid).await
}

/// The `'static` reference an array's element conversion is kept as.
fn element_ref(conversion: Conversion) -> &'static Conversion {
    use Conversion as C;
    match conversion {
        C::Bool => &C::Bool,
        C::Int => &C::Int,
        C::Numeric => &C::Numeric,
        C::Float4 => &C::Float4,
        C::Float8 => &C::Float8,
        C::Text => &C::Text,
        C::Bytea => &C::Bytea,
        C::Date => &C::Date,
        C::Time => &C::Time,
        C::Timestamp => &C::Timestamp,
        C::TimestampTz => &C::TimestampTz,
        C::Uuid => &C::Uuid,
        C::Json => &C::Json,
        C::Bits => &C::Bits,
        C::Interval => &C::Interval,
        C::Array(_) | C::Unsupported => &C::Unsupported,
    }
}

/// Resolves a type that is not an array.
async fn resolve_scalar(client: &Client, oid: u32) -> Result<PgType, PgError> {
    if let Some(ty) = builtin_type(oid) {
        return Ok(ty);
    }
    let mut current = oid;
    let mut declared: Option<String> = None;
    // Domains may stack; each step follows typbasetype, which ends at a non-domain type.
    loop {
        let row = client
            .query_opt(
                "SELECT format_type(t.oid, NULL), t.typtype::text, t.typbasetype \
                 FROM pg_type t WHERE t.oid = $1",
                &[&current],
            )
            .await
            .map_err(PgError::query("looking up a column type"))?;
        let Some(row) = row else {
            let name = declared.unwrap_or_else(|| format!("type oid {oid}"));
            return Ok(PgType::new(name, Conversion::Unsupported));
        };
        let name: String = row.get(0);
        let name = declared.get_or_insert(name).clone();
        if let Some(base) = builtin_type(current) {
            return Ok(PgType::new(name, base.conversion));
        }
        match row.get::<_, &str>(1) {
            "e" => return Ok(PgType::new(name, Conversion::Text)),
            "d" => current = row.get(2),
            _ => return Ok(PgType::new(name, Conversion::Unsupported)),
        }
    }
}

/// A column value that cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column} of type {type_name}: {problem}")]
pub struct ValueError {
    /// Column name.
    pub column: String,
    /// Type name.
    pub type_name: String,
    /// What is wrong.
    pub problem: ValueProblem,
}

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueProblem {
    /// The type is not replicated.
    #[error(
        "duplex does not replicate this type: leave the column out of the publication or change its type"
    )]
    UnsupportedType,
    /// A BC date or timestamp.
    #[error("BC dates are not replicated ({0:?})")]
    BeforeChrist(String),
    /// `infinity` or `-infinity` date or timestamp.
    #[error("{0:?} dates and timestamps are not replicated")]
    Infinite(String),
    /// A year beyond what duplex can represent (262143).
    #[error("{0:?} is out of the supported date range")]
    OutOfRange(String),
    /// The text is not what the type's output function prints.
    #[error("cannot read {0:?} as a value of this type")]
    Malformed(String),
    /// The value is not valid UTF-8.
    #[error("the value is not valid UTF-8")]
    NotUtf8,
    /// The value arrived in binary format, which the reader does not request.
    #[error("the value arrived in binary format; the reader expects text format")]
    Binary,
    /// An array of arrays.
    #[error(
        "multi-dimensional arrays are not replicated ({0}): store one dimension per column \
         or leave the column out of the mapping"
    )]
    MultiDimensional(String),
    /// An array whose lower bound is not 1.
    #[error(
        "arrays with a lower bound other than 1 are not replicated ({0}): renumber it from 1 \
         (UPDATE ... SET c = array(SELECT unnest(c)))"
    )]
    ArrayBounds(String),
}

/// Converts one `pgoutput` column value of a column of type `ty`.
pub fn column_value(column: &str, ty: &PgType, value: &TupleValue) -> Result<Value, ValueError> {
    let fail = |problem| ValueError {
        column: column.to_owned(),
        type_name: ty.name.clone(),
        problem,
    };
    match value {
        TupleValue::Null => Ok(Value::Null),
        TupleValue::UnchangedToast => Ok(Value::Unchanged),
        TupleValue::Binary(_) => Err(fail(ValueProblem::Binary)),
        TupleValue::Text(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(|_| fail(ValueProblem::NotUtf8))?;
            text_value(ty.conversion, text).map_err(fail)
        }
    }
}

/// Converts a value's text output (as printed with [`SESSION_OPTIONS`]).
pub fn text_value(conversion: Conversion, text: &str) -> Result<Value, ValueProblem> {
    let malformed = || ValueProblem::Malformed(shorten(text));
    Ok(match conversion {
        Conversion::Bool => match text {
            "t" => Value::Bool(true),
            "f" => Value::Bool(false),
            _ => return Err(malformed()),
        },
        Conversion::Int => Value::Int(text.parse().map_err(|_| malformed())?),
        Conversion::Numeric => Value::Decimal(Decimal::from_str(text).map_err(|_| malformed())?),
        Conversion::Float4 => {
            Value::Float(f64::from(parse_float::<f32>(text).ok_or_else(malformed)?))
        }
        Conversion::Float8 => Value::Float(parse_float::<f64>(text).ok_or_else(malformed)?),
        Conversion::Text => Value::Text(text.to_owned()),
        Conversion::Bytea => Value::Bytes(parse_bytea(text).ok_or_else(malformed)?),
        Conversion::Date => Value::Date(parse_date(text)?),
        Conversion::Time => Value::Time(parse_time(text).ok_or_else(malformed)?),
        Conversion::Timestamp => Value::Timestamp(parse_timestamp(text)?),
        Conversion::TimestampTz => Value::TimestampTz(parse_timestamptz(text)?),
        Conversion::Uuid => Value::Uuid(Uuid::parse_str(text).map_err(|_| malformed())?),
        Conversion::Json => Value::Json(text.to_owned()),
        Conversion::Bits => Value::Bits(text.parse().map_err(|_| malformed())?),
        Conversion::Interval => Value::Interval(parse_interval(text).ok_or_else(malformed)?),
        Conversion::Array(element) => Value::Array(parse_array(text, *element)?),
        Conversion::Unsupported => return Err(ValueProblem::UnsupportedType),
    })
}

/// An array's text output (`{1,NULL,"a \"b\""}`) into its elements. Elements are separated
/// by `,` (the delimiter of every type duplex converts), unquoted ones are trimmed and `NULL`
/// (any case) is the null element; quoted ones keep everything, with `\` escaping the next
/// character. A nested `{` (an array of arrays) and a leading `[lo:hi]=` (a lower bound other
/// than 1) are refused.
pub fn parse_array(text: &str, element: Conversion) -> Result<Vec<Value>, ValueProblem> {
    let malformed = || ValueProblem::Malformed(shorten(text));
    if text.starts_with('[') {
        return Err(ValueProblem::ArrayBounds(shorten(text)));
    }
    let inner = text
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or_else(malformed)?;
    let mut values = Vec::new();
    if inner.trim().is_empty() {
        return Ok(values);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        let mut item = String::new();
        let quoted = chars.next_if_eq(&'"').is_some();
        if quoted {
            loop {
                match chars.next().ok_or_else(malformed)? {
                    '\\' => item.push(chars.next().ok_or_else(malformed)?),
                    '"' => break,
                    c => item.push(c),
                }
            }
            while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        } else {
            if chars.peek() == Some(&'{') {
                return Err(ValueProblem::MultiDimensional(shorten(text)));
            }
            while let Some(c) = chars.next_if(|c| *c != ',') {
                match c {
                    '\\' => item.push(chars.next().ok_or_else(malformed)?),
                    '"' | '{' | '}' => return Err(malformed()),
                    c => item.push(c),
                }
            }
            let trimmed = item.trim_end_matches(|c: char| c.is_ascii_whitespace());
            item.truncate(trimmed.len());
        }
        values.push(if !quoted && item.eq_ignore_ascii_case("NULL") {
            Value::Null
        } else if !quoted && item.is_empty() {
            return Err(malformed());
        } else {
            text_value(element, &item)?
        });
        match chars.next() {
            None => return Ok(values),
            Some(',') => {}
            Some(_) => return Err(malformed()),
        }
    }
}

/// `interval` as printed with `IntervalStyle=postgres`: `[N year[s]] [N mon[s]] [N day[s]]
/// [[+|-]H:MM:SS[.ffffff]]`, each part with its own sign (`-1 years +2 mons -3 days
/// +04:05:06.5`), or `00:00:00`.
pub fn parse_interval(text: &str) -> Option<crate::Interval> {
    let mut months: i64 = 0;
    let mut days: i64 = 0;
    let mut micros: Option<i64> = None;
    let mut words = text.split(' ');
    while let Some(word) = words.next() {
        if word.contains(':') {
            if micros.is_some() {
                return None;
            }
            let (negative, body) = match word.as_bytes().first()? {
                b'-' => (true, &word[1..]),
                b'+' => (false, &word[1..]),
                _ => (false, word),
            };
            let (hms, frac) = body.split_once('.').unwrap_or((body, ""));
            let mut parts = hms.split(':');
            let (Some(h), Some(m), Some(s), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
            if !digits(h) || m.len() != 2 || s.len() != 2 || !digits(m) || !digits(s) {
                return None;
            }
            if !frac.is_empty() && (frac.len() > 6 || !digits(frac)) {
                return None;
            }
            let fraction = if frac.is_empty() {
                0
            } else {
                frac.parse::<i64>().ok()? * 10_i64.pow(6 - frac.len() as u32)
            };
            let total = i128::from(h.parse::<i64>().ok()?) * 3_600_000_000
                + i128::from(m.parse::<i64>().ok()?) * 60_000_000
                + i128::from(s.parse::<i64>().ok()?) * 1_000_000
                + i128::from(fraction);
            micros = Some(i64::try_from(if negative { -total } else { total }).ok()?);
            continue;
        }
        let n: i64 = word.parse().ok()?;
        let unit = words.next()?;
        match unit {
            "year" | "years" => months = months.checked_add(n.checked_mul(12)?)?,
            "mon" | "mons" => months = months.checked_add(n)?,
            "day" | "days" => days = days.checked_add(n)?,
            _ => return None,
        }
    }
    Some(crate::Interval {
        months: i32::try_from(months).ok()?,
        days: i32::try_from(days).ok()?,
        micros: micros.unwrap_or(0),
    })
}

/// At most 64 characters of a value, for messages.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// PostgreSQL float text: digits, `NaN`, `Infinity`, `-Infinity`.
fn parse_float<F: FromStr>(text: &str) -> Option<F> {
    let ok = matches!(text, "NaN" | "Infinity" | "-Infinity")
        || text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    if ok { text.parse().ok() } else { None }
}

/// `\x` followed by hex digit pairs.
fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let digit = |b: u8| char::from(b).to_digit(16).map(|d| d as u8);
    hex.chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Splits off a trailing ` BC` and refuses `±infinity`.
fn era(text: &str) -> Result<&str, ValueProblem> {
    if matches!(text, "infinity" | "-infinity") {
        return Err(ValueProblem::Infinite(text.to_owned()));
    }
    if text.ends_with(" BC") {
        return Err(ValueProblem::BeforeChrist(text.to_owned()));
    }
    Ok(text)
}

/// `YYYY-MM-DD` (the year may have more than four digits).
fn parse_date(text: &str) -> Result<NaiveDate, ValueProblem> {
    let body = era(text)?;
    let malformed = || ValueProblem::Malformed(shorten(text));
    let mut parts = body.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    let digits = |s: &str, max: usize| {
        (!s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let (Some(year), Some(month), Some(day)) = (digits(y, 7), digits(m, 2), digits(d, 2)) else {
        return Err(malformed());
    };
    let year = i32::try_from(year).map_err(|_| malformed())?;
    NaiveDate::from_ymd_opt(year, month, day).ok_or_else(|| {
        if year > 9999 {
            ValueProblem::OutOfRange(text.to_owned())
        } else {
            malformed()
        }
    })
}

/// `HH:MM:SS[.ffffff]` into microseconds since midnight (`24:00:00` included).
fn parse_time(text: &str) -> Option<i64> {
    let (hms, frac) = match text.split_once('.') {
        Some((hms, frac)) => (hms, Some(frac)),
        None => (text, None),
    };
    let mut parts = hms.split(':');
    let (Some(h), Some(m), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let two = |s: &str| {
        (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<i64>().ok())
            .flatten()
    };
    let (h, m, s) = (two(h)?, two(m)?, two(s)?);
    let micros = match frac {
        None => 0,
        Some(f) if !f.is_empty() && f.len() <= 6 && f.bytes().all(|b| b.is_ascii_digit()) => {
            f.parse::<i64>().ok()? * 10_i64.pow(6 - f.len() as u32)
        }
        Some(_) => return None,
    };
    let total = ((h * 60 + m) * 60 + s) * 1_000_000 + micros;
    (m < 60 && s < 60 && total <= 24 * 3_600_000_000).then_some(total)
}

/// `<date> <time>`.
fn parse_timestamp(text: &str) -> Result<NaiveDateTime, ValueProblem> {
    let body = era(text)?;
    let malformed = || ValueProblem::Malformed(shorten(text));
    let (date, time) = body.split_once(' ').ok_or_else(malformed)?;
    timestamp_from_parts(text, date, time)
}

fn timestamp_from_parts(text: &str, date: &str, time: &str) -> Result<NaiveDateTime, ValueProblem> {
    let malformed = || ValueProblem::Malformed(shorten(text));
    let date = parse_date(date).map_err(|e| match e {
        ValueProblem::OutOfRange(_) => ValueProblem::OutOfRange(text.to_owned()),
        _ => malformed(),
    })?;
    let micros = parse_time(time).ok_or_else(malformed)?;
    // 24:00:00 is not a valid time of a timestamp; PostgreSQL never prints it there.
    let time = NaiveTime::from_num_seconds_from_midnight_opt(
        u32::try_from(micros / 1_000_000).map_err(|_| malformed())?,
        u32::try_from(micros % 1_000_000 * 1000).map_err(|_| malformed())?,
    )
    .ok_or_else(malformed)?;
    Ok(date.and_time(time))
}

/// `<date> <time><offset>` where the offset is `±HH`, `±HH:MM` or `±HH:MM:SS`.
fn parse_timestamptz(text: &str) -> Result<DateTime<Utc>, ValueProblem> {
    let body = era(text)?;
    let malformed = || ValueProblem::Malformed(shorten(text));
    let (date, rest) = body.split_once(' ').ok_or_else(malformed)?;
    let sign_at = rest.find(['+', '-']).ok_or_else(malformed)?;
    let (time, offset) = rest.split_at(sign_at);
    let local = timestamp_from_parts(text, date, time)?;
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let mut fields = offset[1..].split(':');
    let mut seconds = 0_i64;
    for (i, scale) in [3600, 60, 1].into_iter().enumerate() {
        match fields.next() {
            Some(f) if f.len() == 2 && f.bytes().all(|b| b.is_ascii_digit()) => {
                seconds += f.parse::<i64>().map_err(|_| malformed())? * scale;
            }
            None if i > 0 => break,
            _ => return Err(malformed()),
        }
    }
    if fields.next().is_some() {
        return Err(malformed());
    }
    let utc = local
        .checked_sub_signed(TimeDelta::seconds(sign * seconds))
        .ok_or_else(|| ValueProblem::OutOfRange(text.to_owned()))?;
    Ok(utc.and_utc())
}

#[cfg(test)]
mod tests;
