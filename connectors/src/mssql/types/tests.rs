//! The conversions of every supported type, both ways, and what is refused.

use super::*;
use chrono::{TimeZone, Utc};
use uuid::Uuid;

use MssqlType as T;

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn at(y: i32, m: u32, d: u32, h: u32, min: u32, s: u32, us: u32) -> NaiveDateTime {
    date(y, m, d).and_hms_micro_opt(h, min, s, us).unwrap()
}

fn days_0001(d: NaiveDate) -> u32 {
    (d - epoch_0001()).num_days() as u32
}

/// Converts `value` into a parameter for `column` and reads that back as the reader would.
fn round_trip(column: MssqlType, value: Value) {
    let param = to_param(column, &value).unwrap();
    assert_eq!(to_value(column, param).unwrap(), value, "{column}");
}

#[test]
fn every_type_the_table_lists_as_replicated_parses() {
    for (names, canonical, ..) in TYPE_TABLE {
        for name in names.split(" / ") {
            let base = name.split('(').next().unwrap();
            assert_eq!(
                MssqlType::from_name(base).is_ok(),
                *canonical != "—",
                "{name}"
            );
        }
    }
}

#[test]
fn type_names_parse_case_insensitively_and_unsupported_ones_are_named() {
    assert_eq!(MssqlType::from_name("NVARCHAR").unwrap(), T::Text);
    assert_eq!(MssqlType::from_name("numeric").unwrap(), T::Decimal);
    assert_eq!(
        MssqlType::from_name("datetimeoffset").unwrap(),
        T::DateTimeOffset
    );
    let error = MssqlType::from_name("hierarchyid").unwrap_err();
    assert_eq!(error, TypeError::Unsupported("hierarchyid".into()));
    assert!(error.to_string().contains("leave the column out"));
    assert!(T::Money.read_as_decimal() && !T::Decimal.read_as_decimal());
}

#[test]
fn integers_bits_and_floats_read_exactly() {
    assert_eq!(
        to_value(T::Bit, ColumnData::Bit(Some(true))),
        Ok(Value::Bool(true))
    );
    assert_eq!(
        to_value(T::TinyInt, ColumnData::U8(Some(255))),
        Ok(Value::Int(255))
    );
    assert_eq!(
        to_value(T::SmallInt, ColumnData::I16(Some(i16::MIN))),
        Ok(Value::Int(-32768))
    );
    assert_eq!(
        to_value(T::Int, ColumnData::I32(Some(-7))),
        Ok(Value::Int(-7))
    );
    assert_eq!(
        to_value(T::BigInt, ColumnData::I64(Some(i64::MAX))),
        Ok(Value::Int(i64::MAX))
    );
    assert_eq!(
        to_value(T::Real, ColumnData::F32(Some(0.1))),
        Ok(Value::Float(f64::from(0.1f32)))
    );
    assert_eq!(
        to_value(T::Float, ColumnData::F64(Some(0.1))),
        Ok(Value::Float(0.1))
    );
    for column in [T::Bit, T::Int, T::Text, T::DateTimeOffset] {
        assert_eq!(to_value(column, null_of(column)), Ok(Value::Null));
    }
}

#[test]
fn decimals_and_money_read_as_exact_decimal_text() {
    let n = |v, s| ColumnData::Numeric(Some(Numeric::new_with_scale(v, s)));
    let d = |t: &str| Value::Decimal(t.parse().unwrap());
    assert_eq!(to_value(T::Decimal, n(12345, 2)), Ok(d("123.45")));
    assert_eq!(to_value(T::Decimal, n(-5, 3)), Ok(d("-0.005")));
    assert_eq!(to_value(T::Decimal, n(0, 4)), Ok(d("0.0000")));
    assert_eq!(to_value(T::Decimal, n(42, 0)), Ok(d("42")));
    let max = 10i128.pow(38) - 1;
    assert_eq!(
        to_value(T::Decimal, n(max, 10)),
        Ok(d("9999999999999999999999999999.9999999999"))
    );
    assert_eq!(
        to_value(T::Money, n(-9_223_372_036_854_775_808, 4)),
        Ok(d("-922337203685477.5808"))
    );
    assert_eq!(
        to_value(T::Money, ColumnData::F64(Some(1.5))),
        Err(TypeError::MoneyAsFloat(T::Money))
    );
    assert_eq!(
        to_value(T::SmallMoney, ColumnData::F64(None)),
        Ok(Value::Null)
    );
}

#[test]
fn text_xml_binary_and_guids_read_as_they_are() {
    assert_eq!(
        to_value(T::Text, ColumnData::String(Some("Grüße 🙂".into()))),
        Ok(Value::Text("Grüße 🙂".into()))
    );
    assert_eq!(
        to_value(
            T::Xml,
            ColumnData::Xml(Some(Cow::Owned(XmlData::new("<a>1</a>"))))
        ),
        Ok(Value::Text("<a>1</a>".into()))
    );
    assert_eq!(
        to_value(T::Binary, ColumnData::Binary(Some(vec![0, 255].into()))),
        Ok(Value::Bytes(vec![0, 255]))
    );
    let id = Uuid::parse_str("6f9619ff-8b86-d011-b42d-00c04fc964ff").unwrap();
    assert_eq!(
        to_value(T::UniqueIdentifier, ColumnData::Guid(Some(id))),
        Ok(Value::Uuid(id))
    );
}

#[test]
fn dates_and_times_read_from_their_epochs_and_scales() {
    let d = date(2024, 2, 29);
    assert_eq!(
        to_value(T::Date, ColumnData::Date(Some(Date::new(days_0001(d))))),
        Ok(Value::Date(d))
    );
    assert_eq!(
        to_value(T::Date, ColumnData::Date(Some(Date::new(0)))),
        Ok(Value::Date(date(1, 1, 1)))
    );
    assert_eq!(
        to_value(T::Time, ColumnData::Time(Some(Time::new(1234, 3)))),
        Ok(Value::Time(1_234_000))
    );
    assert_eq!(
        to_value(
            T::Time,
            ColumnData::Time(Some(Time::new(863_999_999_990, 7)))
        ),
        Ok(Value::Time(86_399_999_999))
    );
    let dt2 = DateTime2::new(Date::new(days_0001(d)), Time::new(45_296_123_456, 6));
    assert_eq!(
        to_value(T::DateTime2, ColumnData::DateTime2(Some(dt2))),
        Ok(Value::Timestamp(at(2024, 2, 29, 12, 34, 56, 123_456)))
    );
    let dto = DateTimeOffset::new(dt2, -300);
    assert_eq!(
        to_value(T::DateTimeOffset, ColumnData::DateTimeOffset(Some(dto))),
        Ok(Value::TimestampTz(
            Utc.from_utc_datetime(&at(2024, 2, 29, 12, 34, 56, 123_456))
        ))
    );
    assert_eq!(
        to_value(T::DateTime, ColumnData::DateTime(Some(DateTime::new(0, 1)))),
        Ok(Value::Timestamp(at(1900, 1, 1, 0, 0, 0, 3_333)))
    );
    assert_eq!(
        to_value(
            T::DateTime,
            ColumnData::DateTime(Some(DateTime::new(-53_690, 2)))
        ),
        Ok(Value::Timestamp(at(1753, 1, 1, 0, 0, 0, 6_667)))
    );
    assert_eq!(
        to_value(
            T::SmallDateTime,
            ColumnData::SmallDateTime(Some(SmallDateTime::new(1, 61)))
        ),
        Ok(Value::Timestamp(at(1900, 1, 2, 1, 1, 0, 0)))
    );
}

#[test]
fn a_seventh_fractional_digit_is_refused_not_dropped() {
    let error = to_value(T::Time, ColumnData::Time(Some(Time::new(12_345_671, 7)))).unwrap_err();
    assert_eq!(
        error,
        TypeError::SubMicrosecond {
            column: T::Time,
            increments: 12_345_671
        }
    );
    assert!(error.to_string().contains("time(6)"));
    let dt2 = DateTime2::new(Date::new(0), Time::new(1, 7));
    assert!(matches!(
        to_value(T::DateTime2, ColumnData::DateTime2(Some(dt2))),
        Err(TypeError::SubMicrosecond { .. })
    ));
}

#[test]
fn a_value_of_another_shape_than_the_column_is_a_mismatch() {
    assert!(matches!(
        to_value(T::Int, ColumnData::String(Some("7".into()))),
        Err(TypeError::Mismatch { column: T::Int, .. })
    ));
}

#[test]
fn every_supported_type_round_trips_through_a_parameter() {
    round_trip(T::Bit, Value::Bool(false));
    round_trip(T::TinyInt, Value::Int(200));
    round_trip(T::SmallInt, Value::Int(-300));
    round_trip(T::Int, Value::Int(i64::from(i32::MAX)));
    round_trip(T::BigInt, Value::Int(i64::MIN));
    round_trip(T::Real, Value::Float(0.5));
    round_trip(T::Float, Value::Float(-1.0e300));
    round_trip(T::Decimal, Value::Decimal("-123.4500".parse().unwrap()));
    round_trip(
        T::Decimal,
        Value::Decimal("99999999999999999999999999999999999999".parse().unwrap()),
    );
    round_trip(
        T::Money,
        Value::Decimal("922337203685477.5807".parse().unwrap()),
    );
    round_trip(T::Text, Value::Text("ü".into()));
    round_trip(T::Xml, Value::Text("<x/>".into()));
    round_trip(T::Binary, Value::Bytes(vec![1, 2, 3]));
    round_trip(T::UniqueIdentifier, Value::Uuid(Uuid::from_u128(0x1234)));
    round_trip(T::Date, Value::Date(date(9999, 12, 31)));
    round_trip(T::Time, Value::Time(86_399_999_999));
    round_trip(T::DateTime2, Value::Timestamp(at(1, 1, 1, 0, 0, 0, 1)));
    round_trip(
        T::DateTime,
        Value::Timestamp(at(2024, 5, 6, 7, 8, 9, 3_333)),
    );
    round_trip(
        T::SmallDateTime,
        Value::Timestamp(at(2079, 6, 6, 23, 59, 0, 0)),
    );
    round_trip(
        T::DateTimeOffset,
        Value::TimestampTz(Utc.from_utc_datetime(&at(2024, 1, 31, 23, 0, 0, 5))),
    );
    for column in [T::Int, T::Text, T::Money, T::DateTime] {
        round_trip(column, Value::Null);
    }
}

#[test]
fn values_a_column_cannot_hold_are_refused_not_rounded() {
    let refused = |column, value: Value| {
        assert!(
            matches!(to_param(column, &value), Err(TypeError::OutOfRange { .. })),
            "{column} {value:?}"
        )
    };
    refused(T::TinyInt, Value::Int(256));
    refused(T::TinyInt, Value::Int(-1));
    refused(T::SmallInt, Value::Int(40_000));
    refused(T::Int, Value::UInt(u64::from(u32::MAX)));
    refused(T::BigInt, Value::UInt(u64::MAX));
    refused(T::Float, Value::Float(f64::NAN));
    assert!(matches!(
        to_param(T::Real, &Value::Float(0.1)),
        Err(TypeError::NotExactReal(f)) if f == 0.1
    ));
    refused(T::Real, Value::Float(f64::INFINITY));
    refused(T::Decimal, Value::Decimal("NaN".parse().unwrap()));
    refused(
        T::Decimal,
        Value::Decimal("123456789012345678901234567890123456789".parse().unwrap()),
    );
    refused(T::Time, Value::Time(86_400_000_000));
    refused(T::Time, Value::Time(-1));
    refused(T::DateTime, Value::Timestamp(at(2024, 1, 1, 0, 0, 0, 1)));
    refused(T::DateTime, Value::Timestamp(at(1700, 1, 1, 0, 0, 0, 0)));
    refused(
        T::SmallDateTime,
        Value::Timestamp(at(2024, 1, 1, 0, 0, 30, 0)),
    );
    refused(
        T::SmallDateTime,
        Value::Timestamp(at(1899, 12, 31, 0, 0, 0, 0)),
    );
    assert!(matches!(
        to_param(T::Int, &Value::Text("7".into())),
        Err(TypeError::Incompatible { column: T::Int, .. })
    ));
    assert!(matches!(
        to_param(T::Text, &Value::Unchanged),
        Err(TypeError::Incompatible { .. })
    ));
}
