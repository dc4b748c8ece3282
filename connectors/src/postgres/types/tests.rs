use bytes::Bytes;

use super::*;

fn conv(oid: u32, text: &str) -> Result<Value, ValueProblem> {
    text_value(builtin_type(oid).expect("builtin").conversion, text)
}

fn ok(oid: u32, text: &str) -> Value {
    conv(oid, text).unwrap_or_else(|e| panic!("{text:?} as oid {oid}: {e}"))
}

fn ts(text: &str) -> NaiveDateTime {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").unwrap()
}

#[test]
fn booleans() {
    assert_eq!(ok(16, "t"), Value::Bool(true));
    assert_eq!(ok(16, "f"), Value::Bool(false));
    assert!(conv(16, "true").is_err());
}

#[test]
fn integers_at_their_extremes() {
    assert_eq!(ok(21, "-32768"), Value::Int(-32768));
    assert_eq!(ok(21, "32767"), Value::Int(32767));
    assert_eq!(ok(23, "-2147483648"), Value::Int(i64::from(i32::MIN)));
    assert_eq!(ok(23, "2147483647"), Value::Int(i64::from(i32::MAX)));
    assert_eq!(ok(20, "-9223372036854775808"), Value::Int(i64::MIN));
    assert_eq!(ok(20, "9223372036854775807"), Value::Int(i64::MAX));
    assert_eq!(ok(26, "4294967295"), Value::Int(4_294_967_295));
    assert_eq!(ok(20, "0"), Value::Int(0));
    assert!(conv(20, "9223372036854775808").is_err());
    assert!(conv(23, "1.0").is_err());
}

#[test]
fn numerics_keep_every_digit_and_the_specials() {
    let forty = "-1234567890123456789012345678901234567890.0123456789";
    assert_eq!(ok(1700, forty), Value::Decimal(forty.parse().unwrap()));
    assert_eq!(ok(1700, "0.00"), Value::Decimal("0.00".parse().unwrap()));
    assert_eq!(ok(1700, "NaN"), Value::Decimal("NaN".parse().unwrap()));
    assert_eq!(
        ok(1700, "Infinity"),
        Value::Decimal("Infinity".parse().unwrap())
    );
    assert_eq!(
        ok(1700, "-Infinity"),
        Value::Decimal("-Infinity".parse().unwrap())
    );
    let Value::Decimal(d) = ok(1700, "-0.5") else {
        panic!("not a decimal")
    };
    assert_eq!(d.as_str(), "-0.5");
    assert!(conv(1700, "1e5").is_err());
}

#[test]
fn floats_incl_specials_and_extremes() {
    assert_eq!(ok(701, "1.5"), Value::Float(1.5));
    assert_eq!(ok(701, "-0.1"), Value::Float(-0.1));
    assert_eq!(ok(701, "1.7976931348623157e+308"), Value::Float(f64::MAX));
    assert_eq!(ok(701, "5e-324"), Value::Float(5e-324));
    assert_eq!(ok(701, "Infinity"), Value::Float(f64::INFINITY));
    assert_eq!(ok(701, "-Infinity"), Value::Float(f64::NEG_INFINITY));
    let Value::Float(nan) = ok(701, "NaN") else {
        panic!("not a float")
    };
    assert!(nan.is_nan());
    assert_eq!(ok(700, "1.1"), Value::Float(f64::from(1.1_f32)));
    assert_eq!(ok(700, "3.4028235e+38"), Value::Float(f64::from(f32::MAX)));
    assert_eq!(ok(700, "-Infinity"), Value::Float(f64::NEG_INFINITY));
    assert!(conv(701, "inf").is_err());
    assert!(conv(701, "").is_err());
}

#[test]
fn text_types_keep_their_text() {
    for oid in [25, 1043, 1042, 19, 18, 142, 869, 650, 829] {
        assert_eq!(ok(oid, "héllo 🙂 "), Value::Text("héllo 🙂 ".into()));
    }
    assert_eq!(ok(25, ""), Value::Text(String::new()));
    assert_eq!(
        ok(3802, r#"{"a": [1, "🙂"]}"#),
        Value::Json(r#"{"a": [1, "🙂"]}"#.into())
    );
    assert_eq!(
        ok(114, r#"{"b":1, "b":2}"#),
        Value::Json(r#"{"b":1, "b":2}"#.into())
    );
}

#[test]
fn bytea_in_hex_with_zero_bytes() {
    assert_eq!(ok(17, "\\x00ff00"), Value::Bytes(vec![0, 0xff, 0]));
    assert_eq!(ok(17, "\\x"), Value::Bytes(Vec::new()));
    assert_eq!(
        ok(17, "\\xDEADbeef"),
        Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef])
    );
    assert!(conv(17, "\\x0").is_err());
    assert!(conv(17, "\\xzz").is_err());
    assert!(conv(17, "\\000").is_err(), "escape format is refused");
}

#[test]
fn dates() {
    let date = |y, m, d| Value::Date(NaiveDate::from_ymd_opt(y, m, d).unwrap());
    assert_eq!(ok(1082, "2024-02-29"), date(2024, 2, 29));
    assert_eq!(ok(1082, "0001-01-01"), date(1, 1, 1));
    assert_eq!(ok(1082, "9999-12-31"), date(9999, 12, 31));
    assert_eq!(ok(1082, "10000-01-01"), date(10000, 1, 1));
    assert_eq!(
        conv(1082, "0001-12-31 BC"),
        Err(ValueProblem::BeforeChrist("0001-12-31 BC".into()))
    );
    assert_eq!(
        conv(1082, "infinity"),
        Err(ValueProblem::Infinite("infinity".into()))
    );
    assert_eq!(
        conv(1082, "-infinity"),
        Err(ValueProblem::Infinite("-infinity".into()))
    );
    assert_eq!(
        conv(1082, "5874897-12-31"),
        Err(ValueProblem::OutOfRange("5874897-12-31".into()))
    );
    assert!(conv(1082, "2023-02-29").is_err());
    assert!(conv(1082, "02/03/2024").is_err());
}

#[test]
fn times_with_fractions_and_midnight_24() {
    assert_eq!(ok(1083, "00:00:00"), Value::Time(0));
    assert_eq!(ok(1083, "13:45:07.5"), Value::Time(49_507_500_000));
    assert_eq!(ok(1083, "23:59:59.999999"), Value::Time(86_399_999_999));
    assert_eq!(ok(1083, "24:00:00"), Value::Time(86_400_000_000));
    assert_eq!(ok(1083, "00:00:00.000001"), Value::Time(1));
    assert!(conv(1083, "24:00:01").is_err());
    assert!(conv(1083, "12:60:00").is_err());
    assert!(conv(1083, "12:00:00.1234567").is_err());
    assert!(conv(1083, "12:00").is_err());
}

#[test]
fn timestamps() {
    assert_eq!(
        ok(1114, "2024-03-01 12:34:56.789012"),
        Value::Timestamp(ts("2024-03-01 12:34:56.789012"))
    );
    assert_eq!(
        ok(1114, "0001-01-01 00:00:00"),
        Value::Timestamp(ts("0001-01-01 00:00:00"))
    );
    assert_eq!(
        ok(1114, "9999-12-31 23:59:59.999999"),
        Value::Timestamp(ts("9999-12-31 23:59:59.999999"))
    );
    assert_eq!(
        conv(1114, "infinity"),
        Err(ValueProblem::Infinite("infinity".into()))
    );
    assert_eq!(
        conv(1114, "2000-01-01 00:00:00 BC"),
        Err(ValueProblem::BeforeChrist("2000-01-01 00:00:00 BC".into()))
    );
    assert!(conv(1114, "2024-03-01T12:00:00").is_err());
    assert!(conv(1114, "2024-03-01 24:00:00").is_err());
}

#[test]
fn timestamptz_is_normalised_to_utc_from_any_offset() {
    let utc = |s: &str| Value::TimestampTz(ts(s).and_utc());
    assert_eq!(
        ok(1184, "2024-03-01 12:34:56.5+00"),
        utc("2024-03-01 12:34:56.5")
    );
    assert_eq!(
        ok(1184, "2024-03-01 12:34:56+05:30"),
        utc("2024-03-01 07:04:56")
    );
    assert_eq!(
        ok(1184, "2024-01-01 01:00:00.000001-03"),
        utc("2024-01-01 04:00:00.000001")
    );
    assert_eq!(
        ok(1184, "1900-01-01 00:00:00+00:19:32"),
        utc("1899-12-31 23:40:28")
    );
    assert_eq!(
        conv(1184, "-infinity"),
        Err(ValueProblem::Infinite("-infinity".into()))
    );
    assert!(conv(1184, "2024-03-01 12:34:56").is_err());
    assert!(conv(1184, "2024-03-01 12:34:56+5").is_err());
    assert!(conv(1184, "2024-03-01 12:34:56+05:30:00:00").is_err());
}

#[test]
fn uuids() {
    assert_eq!(
        ok(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        Value::Uuid(Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap())
    );
    assert!(conv(2950, "not-a-uuid").is_err());
}

#[test]
fn markers_nulls_and_refusals_name_the_column_and_type() {
    let int4 = builtin_type(23).unwrap();
    assert_eq!(column_value("n", &int4, &TupleValue::Null), Ok(Value::Null));
    assert_eq!(
        column_value("n", &int4, &TupleValue::UnchangedToast),
        Ok(Value::Unchanged)
    );
    assert_eq!(
        column_value("n", &int4, &TupleValue::Text(Bytes::from_static(b"7"))),
        Ok(Value::Int(7))
    );
    let interval = PgType::new("interval", Conversion::Unsupported);
    assert_eq!(
        column_value("n", &interval, &TupleValue::Null),
        Ok(Value::Null)
    );
    let err = column_value(
        "waited",
        &interval,
        &TupleValue::Text(Bytes::from_static(b"1 day")),
    )
    .unwrap_err();
    assert_eq!(err.problem, ValueProblem::UnsupportedType);
    assert!(
        err.to_string()
            .starts_with("column waited of type interval: "),
        "{err}"
    );
    let err = column_value(
        "n",
        &int4,
        &TupleValue::Binary(Bytes::from_static(&[0, 0, 0, 7])),
    )
    .unwrap_err();
    assert_eq!(err.problem, ValueProblem::Binary);
    let err = column_value(
        "t",
        &builtin_type(25).unwrap(),
        &TupleValue::Text(Bytes::from_static(&[0xff])),
    )
    .unwrap_err();
    assert_eq!(err.problem, ValueProblem::NotUtf8);
    let long = "9".repeat(100);
    let err = conv(16, &long).unwrap_err();
    assert_eq!(err, ValueProblem::Malformed(format!("{}…", &long[..64])));
}

#[test]
fn unknown_oids_are_not_builtin() {
    assert_eq!(builtin_type(790), None, "money");
    assert_eq!(builtin_type(16_384), None);
}

#[test]
fn bit_strings() {
    assert_eq!(ok(1560, "0101"), Value::Bits("0101".parse().unwrap()));
    assert_eq!(ok(1562, ""), Value::Bits("".parse().unwrap()));
    assert!(conv(1560, "0102").is_err());
}

#[test]
fn intervals_keep_months_days_and_microseconds_apart() {
    let i = |months, days, micros| {
        Value::Interval(crate::Interval {
            months,
            days,
            micros,
        })
    };
    assert_eq!(ok(1186, "00:00:00"), i(0, 0, 0));
    assert_eq!(
        ok(1186, "1 year 2 mons 3 days 04:05:06.5"),
        i(14, 3, 14_706_500_000)
    );
    assert_eq!(
        ok(1186, "-1 years +2 mons -3 days -00:00:00.000001"),
        i(-10, -3, -1)
    );
    assert_eq!(ok(1186, "1 mon"), i(1, 0, 0));
    assert_eq!(ok(1186, "30 days"), i(0, 30, 0));
    assert_eq!(ok(1186, "720:00:00"), i(0, 0, 720 * 3_600_000_000));
    assert_eq!(
        ok(
            1186,
            "-178956970 years -8 mons -2147483648 days -2562047788:00:54.775808"
        ),
        i(i32::MIN, i32::MIN, i64::MIN)
    );
    assert_eq!(
        ok(
            1186,
            "178956970 years 7 mons 2147483647 days 2562047788:00:54.775807"
        ),
        i(i32::MAX, i32::MAX, i64::MAX)
    );
    for bad in [
        "1 week",
        "1 day 2 days 3",
        "12:00",
        "1:2:3",
        "1 day 01:00:00 02:00:00",
    ] {
        assert!(conv(1186, bad).is_err(), "{bad:?}");
    }
}

#[test]
fn arrays_of_any_element_with_nulls_quotes_and_unicode() {
    let text = |s: &str| Value::Text(s.into());
    assert_eq!(parse_array("{}", Conversion::Int), Ok(vec![]));
    assert_eq!(
        parse_array("{1,NULL,-3}", Conversion::Int),
        Ok(vec![Value::Int(1), Value::Null, Value::Int(-3)])
    );
    assert_eq!(
        parse_array(
            r#"{"a,b","say \"hi\"","back\\slash",NULL,"NULL",plain,"",🙂,"{x}"," sp "}"#,
            Conversion::Text
        ),
        Ok(vec![
            text("a,b"),
            text("say \"hi\""),
            text("back\\slash"),
            Value::Null,
            text("NULL"),
            text("plain"),
            text(""),
            text("🙂"),
            text("{x}"),
            text(" sp "),
        ])
    );
    assert_eq!(
        parse_array(r#"{"2024-01-01 00:00:00+00"}"#, Conversion::TimestampTz),
        Ok(vec![Value::TimestampTz(
            ts("2024-01-01 00:00:00").and_utc()
        )])
    );
    assert_eq!(
        parse_array("{{1,2},{3,4}}", Conversion::Int),
        Err(ValueProblem::MultiDimensional("{{1,2},{3,4}}".into()))
    );
    assert_eq!(
        parse_array("[0:1]={1,2}", Conversion::Int),
        Err(ValueProblem::ArrayBounds("[0:1]={1,2}".into()))
    );
    for bad in ["1,2", "{1,,2}", "{\"a}", "{a\"b}", "{1}x"] {
        assert!(parse_array(bad, Conversion::Int).is_err(), "{bad:?}");
    }
    assert!(parse_array("{x}", Conversion::Int).is_err());
}
