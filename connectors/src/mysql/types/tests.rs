use super::*;

fn table() -> TableName {
    TableName::new("db", "t")
}

fn info(data_type: &str, column_type: &str, unsigned: bool, charset: Option<&str>) -> ColumnInfo {
    ColumnInfo {
        name: "c".into(),
        data_type: data_type.into(),
        column_type: column_type.into(),
        unsigned,
        charset: charset.map(Into::into),
        nullable: true,
    }
}

fn decode(info: &ColumnInfo, binlog_type: u8, meta: &[u8], image: &[u8]) -> Value {
    let column = ColumnDecoder::new(&table(), info, binlog_type, meta).unwrap();
    let mut buf = image;
    let value = column.decode(&mut buf).unwrap();
    assert!(buf.is_empty(), "{} bytes left", buf.len());
    value
}

#[test]
fn signed_mediumint_is_sign_extended() {
    let i = info("mediumint", "mediumint(9)", false, None);
    assert_eq!(
        decode(&i, code::INT24, &[], &[0xff, 0xff, 0xff]),
        Value::Int(-1)
    );
    assert_eq!(
        decode(&i, code::INT24, &[], &[0, 0, 0x80]),
        Value::Int(-8_388_608)
    );
    assert_eq!(
        decode(&i, code::INT24, &[], &[0xff, 0xff, 0x7f]),
        Value::Int(8_388_607)
    );
    let u = info("mediumint", "mediumint(8) unsigned", true, None);
    assert_eq!(
        decode(&u, code::INT24, &[], &[0xff, 0xff, 0xff]),
        Value::UInt(16_777_215)
    );
}

#[test]
fn every_integer_width_keeps_its_extremes() {
    for (ty, code, width) in [
        ("tinyint", code::TINY, 1),
        ("smallint", code::SHORT, 2),
        ("int", code::LONG, 4),
        ("bigint", code::LONGLONG, 8),
    ] {
        let bits = 8 * width as u32;
        let max = vec![0xff; width];
        let mut min = vec![0; width];
        min[width - 1] = 0x80;
        let signed = info(ty, ty, false, None);
        assert_eq!(decode(&signed, code, &[], &max), Value::Int(-1));
        assert_eq!(
            decode(&signed, code, &[], &min),
            Value::Int(-(1i128 << (bits - 1)) as i64)
        );
        let unsigned = info(ty, ty, true, None);
        assert_eq!(
            decode(&unsigned, code, &[], &max),
            Value::UInt(((1u128 << bits) - 1) as u64)
        );
    }
}

#[test]
fn year_zero_stays_zero() {
    let y = info("year", "year(4)", false, None);
    assert_eq!(decode(&y, code::YEAR, &[], &[0]), Value::Int(0));
    assert_eq!(decode(&y, code::YEAR, &[], &[1]), Value::Int(1901));
    assert_eq!(decode(&y, code::YEAR, &[], &[255]), Value::Int(2155));
}

#[test]
fn binary_is_padded_back_to_its_length() {
    let b = info("binary", "binary(4)", false, Some("binary"));
    assert_eq!(
        decode(&b, code::STRING, &[0xfe, 4], &[2, 0, 1]),
        Value::Bytes(vec![0, 1, 0, 0])
    );
    let c = info("char", "char(4)", false, Some("latin1"));
    assert_eq!(
        decode(&c, code::STRING, &[0xfe, 4], &[2, b'a', 0xe9]),
        Value::Text("a\u{e9}".into())
    );
}

#[test]
fn timestamp_is_an_instant_and_zero_is_refused() {
    let t = info("timestamp", "timestamp(6)", false, None);
    let mut image = 1_700_000_000u32.to_be_bytes().to_vec();
    image.extend_from_slice(&[0x01, 0xe2, 0x40]); // 123456
    assert_eq!(
        decode(&t, code::TIMESTAMP2, &[6], &image),
        Value::TimestampTz(DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap())
    );
    let column = ColumnDecoder::new(&table(), &t, code::TIMESTAMP2, &[0]).unwrap();
    let err = column.decode(&mut &[0u8, 0, 0, 0][..]).unwrap_err();
    assert!(matches!(err, ValueError::Bad(m) if m.contains("zero timestamp")));
}

#[test]
fn negative_times_with_fractions() {
    let t = |fsp: u8, image: &[u8]| {
        decode(
            &info("time", "time", false, None),
            code::TIME2,
            &[fsp],
            image,
        )
    };
    assert_eq!(t(0, &[0x80, 0x00, 0x00]), Value::Time(0));
    assert_eq!(t(0, &[0x7f, 0xff, 0xff]), Value::Time(-1_000_000));
    // 838:59:59.000000
    let max = (838 << 12) | (59 << 6) | 59;
    let image = (0x80_0000u32 + max).to_be_bytes();
    assert_eq!(
        t(0, &image[1..]),
        Value::Time(((838 * 60 + 59) * 60 + 59) * 1_000_000)
    );
    // -00:00:01.5 with fsp 6: packed = -(1 << 24 | 500000)
    let packed = 0x8000_0000_0000i64 - ((1i64 << 24) | 500_000);
    assert_eq!(t(6, &packed.to_be_bytes()[2..]), Value::Time(-1_500_000));
    // -00:00:01.50 with fsp 2: int -2+1, frac 0x100-50
    let int = (0x80_0000i64 - 2) as u32;
    let mut image = int.to_be_bytes()[1..].to_vec();
    image.push((0x100 - 50) as u8);
    assert_eq!(t(2, &image), Value::Time(-1_500_000));
}

#[test]
fn decimals_are_exact() {
    let d = |p: u8, s: u8, image: &[u8]| {
        decode(
            &info("decimal", "decimal", false, None),
            code::NEWDECIMAL,
            &[p, s],
            image,
        )
    };
    // DECIMAL(5,2) 123.45: int 3 digits -> 2 bytes, frac 2 digits -> 1 byte.
    assert_eq!(
        d(5, 2, &[0x80, 0x7b, 0x2d]),
        Value::Decimal("123.45".parse().unwrap())
    );
    assert_eq!(
        d(5, 2, &[0x7f, 0x84, 0xd2]),
        Value::Decimal("-123.45".parse().unwrap())
    );
    assert_eq!(
        d(5, 2, &[0x80, 0x00, 0x00]),
        Value::Decimal("0.00".parse().unwrap())
    );
    assert_eq!(decimal_bin_size(65, 30), 30);
}

#[test]
fn enum_and_set_labels() {
    assert_eq!(
        parse_labels("enum('a','it''s','b,c','\\\\')"),
        Some(vec!["a".into(), "it's".into(), "b,c".into(), "\\".into()])
    );
    let e = info("enum", "enum('x','y')", false, Some("utf8mb4"));
    assert_eq!(
        decode(&e, code::STRING, &[0xf7, 1], &[2]),
        Value::Text("y".into())
    );
    assert_eq!(
        decode(&e, code::STRING, &[0xf7, 1], &[0]),
        Value::Text("".into())
    );
    let s = info("set", "set('x','y','z')", false, Some("utf8mb4"));
    assert_eq!(
        decode(&s, code::STRING, &[0xf8, 1], &[0b101]),
        Value::Text("x,z".into())
    );
}

#[test]
fn uuids_are_unswapped() {
    let v1: Uuid = "6ccd780c-baba-1026-9564-5b8c656024db".parse().unwrap();
    let m = *v1.as_bytes();
    let mut record = [0u8; 16];
    for (mem, rec, len) in [(0, 12, 4), (4, 10, 2), (6, 8, 2), (8, 6, 2), (10, 0, 6)] {
        record[rec..rec + len].copy_from_slice(&m[mem..mem + len]);
    }
    assert_eq!(uuid_from_record(record), v1);
    let plain: Uuid = "00000000-0000-0000-0000-000000000001".parse().unwrap();
    assert_eq!(uuid_from_record(*plain.as_bytes()), plain);
}

#[test]
fn bits_keep_their_length() {
    let b = |n: usize, meta: [u8; 2], image: &[u8]| {
        decode(
            &info("bit", &format!("bit({n})"), false, None),
            code::BIT,
            &meta,
            image,
        )
    };
    let bits = |s: &str| Value::Bits(s.parse().unwrap());
    assert_eq!(b(1, [1, 0], &[1]), bits("1"));
    assert_eq!(b(1, [1, 0], &[0]), bits("0"));
    assert_eq!(b(7, [7, 0], &[0b101_0101]), bits("1010101"));
    assert_eq!(b(8, [0, 1], &[0x80]), bits("10000000"));
    assert_eq!(b(10, [2, 1], &[0b10, 0x01]), bits("1000000001"));
    assert_eq!(b(64, [0, 8], &[0xff; 8]), bits(&"1".repeat(64)));
}

#[test]
fn latin1_is_windows_1252() {
    assert_eq!(decode_latin1(b"caf\xe9 \x80 \x81"), "café € \u{81}");
}

#[test]
fn unknown_types_name_table_and_column() {
    let err = ColumnDecoder::new(
        &table(),
        &info("geometry", "geometry", false, None),
        255,
        &[],
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("column c of table db.t has type geometry"),
        "{text}"
    );
}
