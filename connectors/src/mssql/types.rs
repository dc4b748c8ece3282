//! SQL Server values: tiberius's [`ColumnData`] to canonical [`Value`]s and back.
//!
//! Every conversion is exact or refused with a [`TypeError`] naming the column type and what
//! to change; none rounds silently:
//! - `money` and `smallmoney` arrive from tiberius as `f64`, which cannot hold every
//!   `money` value (19 digits). The reader selects them as `decimal(19,4)` (see
//!   [`super::stream::select_list`]); an `f64` for a money column is refused.
//! - `time`, `datetime2` and `datetimeoffset` carry up to 100 ns; canonical times carry
//!   microseconds, so a value with a non-zero seventh fractional digit is refused (declare the
//!   column with scale 6 or less). `datetime` counts 1/300 s and is read as the nearest
//!   microsecond, which converts back to the same 1/300 s; a timestamp written into a
//!   `datetime` or `smalldatetime` column that it cannot hold exactly is refused, not rounded.
//! - On the wire a `datetimeoffset` is its UTC date and time plus the offset in minutes
//!   (MS-TDS 2.2.5.5.1.8), so its canonical instant is that UTC value as it stands; the
//!   offset is not kept, as for PostgreSQL `timestamptz`. (tiberius's own chrono conversion
//!   subtracts the offset once more, which is why it is not used.)
//!
//! Canonical values are bound by the target column's type ([`MssqlType`]), so `Int(7)` is
//! sent as a `tinyint` to a `tinyint` column after a range check, never truncated.

use std::borrow::Cow;
use std::fmt;

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use tiberius::ColumnData;
use tiberius::numeric::Numeric;
use tiberius::time::{Date, DateTime, DateTime2, DateTimeOffset, SmallDateTime, Time};
use tiberius::xml::XmlData;

use crate::{Decimal, Value};

/// A SQL Server column type duplex replicates, as `sys.types` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MssqlType {
    /// `bit`.
    Bit,
    /// `tinyint` (0 to 255).
    TinyInt,
    /// `smallint`.
    SmallInt,
    /// `int`.
    Int,
    /// `bigint`.
    BigInt,
    /// `real` (4-byte float).
    Real,
    /// `float` (8-byte float).
    Float,
    /// `decimal` / `numeric`.
    Decimal,
    /// `money`.
    Money,
    /// `smallmoney`.
    SmallMoney,
    /// `char`, `varchar`, `nchar`, `nvarchar`, `text`, `ntext`.
    Text,
    /// `binary`, `varbinary`, `image`.
    Binary,
    /// `uniqueidentifier`.
    UniqueIdentifier,
    /// `date`.
    Date,
    /// `time`.
    Time,
    /// `datetime`.
    DateTime,
    /// `smalldatetime`.
    SmallDateTime,
    /// `datetime2`.
    DateTime2,
    /// `datetimeoffset`.
    DateTimeOffset,
    /// `xml`.
    Xml,
}

/// A value or column type that cannot be converted exactly.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TypeError {
    /// A column type duplex does not replicate.
    #[error(
        "SQL Server type {0} is not replicated (sql_variant, hierarchyid, geometry, geography, \
         timestamp/rowversion and user-defined CLR types are not): leave the column out of the mapping"
    )]
    Unsupported(String),
    /// The driver delivered a value of another shape than the column's type.
    #[error("a {column} column delivered {found}: the column's type changed; run duplex check")]
    Mismatch {
        /// The column's type.
        column: MssqlType,
        /// What tiberius delivered.
        found: String,
    },
    /// A money value read as a float, which would round it.
    #[error(
        "a {0} value arrived as a float, which can round it: select money columns as decimal(19,4)"
    )]
    MoneyAsFloat(MssqlType),
    /// A time with a 100 ns digit that microseconds cannot hold.
    #[error(
        "a {column} value has 100-nanosecond precision ({increments} increments at scale 7) that \
         duplex's microseconds cannot carry: declare the column {column}(6) or less"
    )]
    SubMicrosecond {
        /// The column's type.
        column: MssqlType,
        /// The value's 100 ns increments since midnight.
        increments: u64,
    },
    /// A value outside the range of the target column's type.
    #[error("{value} is out of the range of a {column} column: widen the column")]
    OutOfRange {
        /// The column's type.
        column: MssqlType,
        /// The value, as text.
        value: String,
    },
    /// A float a `real` column would round.
    #[error(
        "{0} is not exactly a 32-bit float, which a real column holds: map it to a float column"
    )]
    NotExactReal(f64),
    /// A canonical value of a kind the target column cannot take.
    #[error(
        "no conversion from a {kind} value into a {column} column: map it to a column of a matching type"
    )]
    Incompatible {
        /// The column's type.
        column: MssqlType,
        /// The kind of the canonical value.
        kind: String,
    },
}

impl MssqlType {
    /// The type `sys.types` calls `name`; an error naming it for a type duplex does not
    /// replicate.
    pub fn from_name(name: &str) -> Result<MssqlType, TypeError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "bit" => MssqlType::Bit,
            "tinyint" => MssqlType::TinyInt,
            "smallint" => MssqlType::SmallInt,
            "int" => MssqlType::Int,
            "bigint" => MssqlType::BigInt,
            "real" => MssqlType::Real,
            "float" => MssqlType::Float,
            "decimal" | "numeric" => MssqlType::Decimal,
            "money" => MssqlType::Money,
            "smallmoney" => MssqlType::SmallMoney,
            "char" | "varchar" | "nchar" | "nvarchar" | "text" | "ntext" | "sysname" => {
                MssqlType::Text
            }
            "binary" | "varbinary" | "image" => MssqlType::Binary,
            "uniqueidentifier" => MssqlType::UniqueIdentifier,
            "date" => MssqlType::Date,
            "time" => MssqlType::Time,
            "datetime" => MssqlType::DateTime,
            "smalldatetime" => MssqlType::SmallDateTime,
            "datetime2" => MssqlType::DateTime2,
            "datetimeoffset" => MssqlType::DateTimeOffset,
            "xml" => MssqlType::Xml,
            _ => return Err(TypeError::Unsupported(name.to_owned())),
        })
    }

    /// The type's T-SQL name (the first of its family).
    pub fn name(self) -> &'static str {
        match self {
            MssqlType::Bit => "bit",
            MssqlType::TinyInt => "tinyint",
            MssqlType::SmallInt => "smallint",
            MssqlType::Int => "int",
            MssqlType::BigInt => "bigint",
            MssqlType::Real => "real",
            MssqlType::Float => "float",
            MssqlType::Decimal => "decimal",
            MssqlType::Money => "money",
            MssqlType::SmallMoney => "smallmoney",
            MssqlType::Text => "nvarchar",
            MssqlType::Binary => "varbinary",
            MssqlType::UniqueIdentifier => "uniqueidentifier",
            MssqlType::Date => "date",
            MssqlType::Time => "time",
            MssqlType::DateTime => "datetime",
            MssqlType::SmallDateTime => "smalldatetime",
            MssqlType::DateTime2 => "datetime2",
            MssqlType::DateTimeOffset => "datetimeoffset",
            MssqlType::Xml => "xml",
        }
    }

    /// Whether tiberius would deliver this type rounded, so the reader selects it cast to
    /// `decimal(19,4)`.
    pub fn read_as_decimal(self) -> bool {
        matches!(self, MssqlType::Money | MssqlType::SmallMoney)
    }

    /// Whether the type holds decimal numbers with a fixed number of decimal places (its
    /// scale), to which the server rounds what it is given.
    pub fn has_scale(self) -> bool {
        matches!(
            self,
            MssqlType::Decimal | MssqlType::Money | MssqlType::SmallMoney
        )
    }
}

impl fmt::Display for MssqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The SQL Server types and what they become: (SQL Server type, canonical value, PostgreSQL
/// column, MariaDB column, fidelity), rendered into `docs/type-mapping.md`.
pub const TYPE_TABLE: &[(&str, &str, &str, &str, &str)] = &[
    ("bit", "Bool", "bool", "tinyint(1)", "exact"),
    ("tinyint", "Int", "int2", "tinyint unsigned", "exact"),
    ("smallint", "Int", "int2", "smallint", "exact"),
    ("int", "Int", "int4", "int", "exact"),
    ("bigint", "Int", "int8", "bigint", "exact"),
    (
        "real",
        "Float",
        "float4",
        "float",
        "exact; NaN and ±Infinity cannot occur in SQL Server and are refused when written",
    ),
    ("float", "Float", "float8", "double", "exact; as for real"),
    (
        "decimal / numeric",
        "Decimal",
        "numeric",
        "decimal",
        "exact up to 38 digits; wider values are refused when written",
    ),
    (
        "money",
        "Decimal",
        "numeric(19,4)",
        "decimal(19,4)",
        "exact: read as decimal(19,4) (tiberius would round it through a float)",
    ),
    (
        "smallmoney",
        "Decimal",
        "numeric(10,4)",
        "decimal(10,4)",
        "exact: read as decimal(10,4)",
    ),
    (
        "char / varchar / nchar / nvarchar / text / ntext",
        "Text",
        "text, varchar",
        "longtext, varchar",
        "exact (char padding is kept as SQL Server returns it)",
    ),
    (
        "binary / varbinary / image",
        "Bytes",
        "bytea",
        "longblob, varbinary",
        "exact",
    ),
    (
        "uniqueidentifier",
        "Uuid",
        "uuid",
        "uuid, char(36)",
        "exact",
    ),
    ("date", "Date", "date", "date", "exact (0001-9999)"),
    (
        "time(0-6)",
        "Time",
        "time",
        "time(6)",
        "exact; time(7) values with a non-zero seventh digit are refused when met (check warns)",
    ),
    (
        "datetime2(0-6)",
        "Timestamp",
        "timestamp",
        "datetime(6)",
        "exact; datetime2(7) as time(7)",
    ),
    (
        "datetimeoffset(0-6)",
        "TimestampTz",
        "timestamptz",
        "datetime(6) in UTC",
        "converted: the instant is kept, the offset is not (as PostgreSQL timestamptz)",
    ),
    (
        "datetime",
        "Timestamp",
        "timestamp(3)",
        "datetime(3)",
        "converted: 1/300 s read as the nearest microsecond; writing a timestamp that is not a whole 1/300 s is refused",
    ),
    (
        "smalldatetime",
        "Timestamp",
        "timestamp(0)",
        "datetime",
        "exact for whole minutes; writing seconds is refused",
    ),
    (
        "xml",
        "Text",
        "xml, text",
        "longtext",
        "converted: as its text",
    ),
    (
        "sql_variant, hierarchyid, geometry, geography, rowversion, CLR types",
        "—",
        "—",
        "—",
        "**refused** by check: leave the column out of the mapping",
    ),
];

/// `datetime` and `smalldatetime` count days from this date.
fn epoch_1900() -> NaiveDate {
    NaiveDate::from_ymd_opt(1900, 1, 1).expect("a valid date")
}

/// `date`, `datetime2` and `datetimeoffset` count days from this date.
fn epoch_0001() -> NaiveDate {
    NaiveDate::from_ymd_opt(1, 1, 1).expect("a valid date")
}

/// Microseconds since midnight of a `time` value, refusing a 100 ns remainder.
fn time_micros(column: MssqlType, time: Time) -> Result<i64, TypeError> {
    let increments = time.increments() * 10u64.pow(7 - u32::from(time.scale().min(7)));
    if !increments.is_multiple_of(10) {
        return Err(TypeError::SubMicrosecond { column, increments });
    }
    i64::try_from(increments / 10).map_err(|_| TypeError::OutOfRange {
        column,
        value: increments.to_string(),
    })
}

/// A `date` value as a calendar date.
fn date_of(date: Date) -> NaiveDate {
    epoch_0001() + Duration::days(i64::from(date.days()))
}

/// A `datetime2` value (also the UTC part of a `datetimeoffset`) as a date and time.
fn datetime2_of(column: MssqlType, value: DateTime2) -> Result<NaiveDateTime, TypeError> {
    let micros = time_micros(column, value.time())?;
    Ok(date_of(value.date()).and_time(NaiveTime::MIN) + Duration::microseconds(micros))
}

/// A `numeric` value as decimal text.
fn decimal_of(numeric: Numeric) -> Decimal {
    let scale = usize::from(numeric.scale());
    let digits = numeric.value().unsigned_abs().to_string();
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    let sign = if numeric.value() < 0 { "-" } else { "" };
    let text = if scale == 0 {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    };
    text.parse().expect("digits with a point are a decimal")
}

/// The canonical value of one column value of type `column`, as tiberius delivered it.
pub fn to_value(column: MssqlType, data: ColumnData<'_>) -> Result<Value, TypeError> {
    use MssqlType as T;
    let mismatch = |data: &ColumnData<'_>| TypeError::Mismatch {
        column,
        found: format!("{data:?}"),
    };
    Ok(match (column, data) {
        (T::Money | T::SmallMoney, ColumnData::F64(Some(_)) | ColumnData::F32(Some(_))) => {
            return Err(TypeError::MoneyAsFloat(column));
        }
        (_, ColumnData::U8(None))
        | (_, ColumnData::I16(None))
        | (_, ColumnData::I32(None))
        | (_, ColumnData::I64(None))
        | (_, ColumnData::F32(None))
        | (_, ColumnData::F64(None))
        | (_, ColumnData::Bit(None))
        | (_, ColumnData::String(None))
        | (_, ColumnData::Guid(None))
        | (_, ColumnData::Binary(None))
        | (_, ColumnData::Numeric(None))
        | (_, ColumnData::Xml(None))
        | (_, ColumnData::DateTime(None))
        | (_, ColumnData::SmallDateTime(None))
        | (_, ColumnData::Time(None))
        | (_, ColumnData::Date(None))
        | (_, ColumnData::DateTime2(None))
        | (_, ColumnData::DateTimeOffset(None)) => Value::Null,
        (T::Bit, ColumnData::Bit(Some(b))) => Value::Bool(b),
        (T::TinyInt, ColumnData::U8(Some(v))) => Value::Int(i64::from(v)),
        (T::SmallInt, ColumnData::I16(Some(v))) => Value::Int(i64::from(v)),
        (T::Int, ColumnData::I32(Some(v))) => Value::Int(i64::from(v)),
        (T::BigInt, ColumnData::I64(Some(v))) => Value::Int(v),
        (T::Real, ColumnData::F32(Some(v))) => Value::Float(f64::from(v)),
        (T::Float, ColumnData::F64(Some(v))) => Value::Float(v),
        (T::Decimal | T::Money | T::SmallMoney, ColumnData::Numeric(Some(n))) => {
            Value::Decimal(decimal_of(n))
        }
        (T::Text, ColumnData::String(Some(s))) => Value::Text(s.into_owned()),
        (T::Xml, ColumnData::Xml(Some(x))) => Value::Text(x.into_owned().into_string()),
        (T::Binary, ColumnData::Binary(Some(b))) => Value::Bytes(b.into_owned()),
        (T::UniqueIdentifier, ColumnData::Guid(Some(u))) => Value::Uuid(u),
        (T::Date, ColumnData::Date(Some(d))) => Value::Date(date_of(d)),
        (T::Time, ColumnData::Time(Some(t))) => Value::Time(time_micros(column, t)?),
        (T::DateTime, ColumnData::DateTime(Some(dt))) => {
            let micros = (i64::from(dt.seconds_fragments()) * 10_000 + 1) / 3;
            Value::Timestamp(
                (epoch_1900() + Duration::days(i64::from(dt.days()))).and_time(NaiveTime::MIN)
                    + Duration::microseconds(micros),
            )
        }
        (T::SmallDateTime, ColumnData::SmallDateTime(Some(dt))) => Value::Timestamp(
            (epoch_1900() + Duration::days(i64::from(dt.days()))).and_time(NaiveTime::MIN)
                + Duration::minutes(i64::from(dt.seconds_fragments())),
        ),
        (T::DateTime2, ColumnData::DateTime2(Some(dt))) => {
            Value::Timestamp(datetime2_of(column, dt)?)
        }
        (T::DateTimeOffset, ColumnData::DateTimeOffset(Some(dto))) => {
            Value::TimestampTz(datetime2_of(column, dto.datetime2())?.and_utc())
        }
        (_, data) => return Err(mismatch(&data)),
    })
}

/// The `numeric` of decimal text, refusing NaN, the infinities and more than 38 digits.
fn numeric_of(column: MssqlType, decimal: &Decimal) -> Result<Numeric, TypeError> {
    let out_of_range = || TypeError::OutOfRange {
        column,
        value: decimal.to_string(),
    };
    if !decimal.is_finite()
        || decimal.scale() > 37
        || decimal.integer_digits() + decimal.scale() > 38
    {
        return Err(out_of_range());
    }
    let digits: String = decimal.as_str().chars().filter(|c| *c != '.').collect();
    let value: i128 = digits.parse().map_err(|_| out_of_range())?;
    Ok(Numeric::new_with_scale(value, decimal.scale() as u8))
}

/// A `time` of microseconds since midnight, at scale 7.
fn time_of(column: MssqlType, micros: i64) -> Result<Time, TypeError> {
    if !(0..86_400_000_000).contains(&micros) {
        return Err(TypeError::OutOfRange {
            column,
            value: format!("{micros} µs after midnight"),
        });
    }
    Ok(Time::new(micros as u64 * 10, 7))
}

/// A `datetime2` at scale 7 of a date and time from 0001-01-01 on.
fn datetime2_from(column: MssqlType, at: NaiveDateTime) -> Result<DateTime2, TypeError> {
    let days = (at.date() - epoch_0001()).num_days();
    let days = u32::try_from(days).map_err(|_| TypeError::OutOfRange {
        column,
        value: at.to_string(),
    })?;
    let (_, micros) = since_1900(at);
    Ok(DateTime2::new(Date::new(days), time_of(column, micros)?))
}

/// Days since 1900-01-01 and microseconds since midnight of `at`.
fn since_1900(at: NaiveDateTime) -> (i64, i64) {
    let days = (at.date() - epoch_1900()).num_days();
    let micros = i64::from(at.time().num_seconds_from_midnight()) * 1_000_000
        + i64::from(at.time().nanosecond() / 1_000);
    (days, micros)
}

/// A `datetime` (1753 to 9999, in 1/300 s) holding exactly `at`; an error when its
/// microseconds are not a whole 1/300 s as [`to_value`] reads one back.
fn datetime_from(at: NaiveDateTime) -> Result<DateTime, TypeError> {
    let refused = || TypeError::OutOfRange {
        column: MssqlType::DateTime,
        value: format!("{at} (datetime holds 1753-9999 in steps of 1/300 s; use datetime2)"),
    };
    let (days, micros) = since_1900(at);
    let fragments = (micros * 3 + 5_000) / 10_000;
    if (fragments * 10_000 + 1) / 3 != micros || at.date().year_ce().1 < 1753 {
        return Err(refused());
    }
    Ok(DateTime::new(
        i32::try_from(days).map_err(|_| refused())?,
        u32::try_from(fragments).map_err(|_| refused())?,
    ))
}

/// A `smalldatetime` (1900-01-01 to 2079-06-06, in whole minutes) holding exactly `at`.
fn smalldatetime_from(at: NaiveDateTime) -> Result<SmallDateTime, TypeError> {
    let refused = || TypeError::OutOfRange {
        column: MssqlType::SmallDateTime,
        value: format!("{at} (smalldatetime holds whole minutes from 1900 to 2079; use datetime2)"),
    };
    let (days, micros) = since_1900(at);
    if micros % 60_000_000 != 0 {
        return Err(refused());
    }
    Ok(SmallDateTime::new(
        u16::try_from(days).map_err(|_| refused())?,
        (micros / 60_000_000) as u16,
    ))
}

/// The parameter that writes `value` into a column of type `column`.
pub fn to_param(column: MssqlType, value: &Value) -> Result<ColumnData<'static>, TypeError> {
    use MssqlType as T;
    let out_of_range = || TypeError::OutOfRange {
        column,
        value: format!("{value:?}"),
    };
    let integer = |i: i128| -> Result<ColumnData<'static>, TypeError> {
        Ok(match column {
            T::TinyInt => ColumnData::U8(Some(u8::try_from(i).map_err(|_| out_of_range())?)),
            T::SmallInt => ColumnData::I16(Some(i16::try_from(i).map_err(|_| out_of_range())?)),
            T::Int => ColumnData::I32(Some(i32::try_from(i).map_err(|_| out_of_range())?)),
            T::BigInt => ColumnData::I64(Some(i64::try_from(i).map_err(|_| out_of_range())?)),
            T::Bit if i == 0 || i == 1 => ColumnData::Bit(Some(i == 1)),
            T::Decimal | T::Money | T::SmallMoney => {
                ColumnData::Numeric(Some(Numeric::new_with_scale(i, 0)))
            }
            _ => return Err(incompatible(column, value)),
        })
    };
    Ok(match (column, value) {
        (_, Value::Null) => null_of(column),
        (T::Bit, Value::Bool(b)) => ColumnData::Bit(Some(*b)),
        (_, Value::Int(i)) => integer(i128::from(*i))?,
        (_, Value::UInt(u)) => integer(i128::from(*u))?,
        (T::Float, Value::Float(f)) if f.is_finite() => ColumnData::F64(Some(*f)),
        (T::Real, Value::Float(f)) if f.is_finite() && f64::from(*f as f32) == *f => {
            ColumnData::F32(Some(*f as f32))
        }
        (T::Real, Value::Float(f)) if f.is_finite() => return Err(TypeError::NotExactReal(*f)),
        (T::Float | T::Real, Value::Float(_)) => return Err(out_of_range()),
        (T::Decimal | T::Money | T::SmallMoney, Value::Decimal(d)) => {
            ColumnData::Numeric(Some(numeric_of(column, d)?))
        }
        (T::Text, Value::Text(s) | Value::Json(s)) => {
            ColumnData::String(Some(Cow::Owned(s.clone())))
        }
        (T::Xml, Value::Text(s)) => ColumnData::Xml(Some(Cow::Owned(XmlData::new(s)))),
        (T::Binary, Value::Bytes(b)) => ColumnData::Binary(Some(Cow::Owned(b.clone()))),
        (T::UniqueIdentifier, Value::Uuid(u)) => ColumnData::Guid(Some(*u)),
        (T::Date, Value::Date(d)) => ColumnData::Date(Some(Date::new(
            u32::try_from((*d - epoch_0001()).num_days()).map_err(|_| out_of_range())?,
        ))),
        (T::Time, Value::Time(us)) => ColumnData::Time(Some(time_of(column, *us)?)),
        (T::DateTime2, Value::Timestamp(t)) => {
            ColumnData::DateTime2(Some(datetime2_from(column, *t)?))
        }
        (T::DateTime, Value::Timestamp(t)) => ColumnData::DateTime(Some(datetime_from(*t)?)),
        (T::SmallDateTime, Value::Timestamp(t)) => {
            ColumnData::SmallDateTime(Some(smalldatetime_from(*t)?))
        }
        (T::DateTimeOffset, Value::TimestampTz(t)) => ColumnData::DateTimeOffset(Some(
            DateTimeOffset::new(datetime2_from(column, t.naive_utc())?, 0),
        )),
        (T::DateTime2, Value::TimestampTz(t)) => {
            ColumnData::DateTime2(Some(datetime2_from(column, t.naive_utc())?))
        }
        _ => return Err(incompatible(column, value)),
    })
}

/// The error for a canonical value a column of type `column` cannot take.
fn incompatible(column: MssqlType, value: &Value) -> TypeError {
    TypeError::Incompatible {
        column,
        kind: value
            .kind()
            .map_or_else(|| "unchanged (TOASTed)".to_owned(), |k| format!("{k:?}")),
    }
}

/// A typed NULL for a column of type `column`.
fn null_of(column: MssqlType) -> ColumnData<'static> {
    use MssqlType as T;
    match column {
        T::Bit => ColumnData::Bit(None),
        T::TinyInt => ColumnData::U8(None),
        T::SmallInt => ColumnData::I16(None),
        T::Int => ColumnData::I32(None),
        T::BigInt => ColumnData::I64(None),
        T::Real => ColumnData::F32(None),
        T::Float => ColumnData::F64(None),
        T::Decimal | T::Money | T::SmallMoney => ColumnData::Numeric(None),
        T::Text => ColumnData::String(None),
        T::Binary => ColumnData::Binary(None),
        T::UniqueIdentifier => ColumnData::Guid(None),
        T::Date => ColumnData::Date(None),
        T::Time => ColumnData::Time(None),
        T::DateTime | T::SmallDateTime | T::DateTime2 => ColumnData::DateTime2(None),
        T::DateTimeOffset => ColumnData::DateTimeOffset(None),
        T::Xml => ColumnData::Xml(None),
    }
}

#[cfg(test)]
mod tests;
