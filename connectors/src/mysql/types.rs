//! Binlog row images to canonical [`Value`]s.
//!
//! A rows event carries each row as the server's packed field images, laid out by the column
//! types and type metadata of the TABLE_MAP event it refers to. duplex decodes those bytes
//! itself instead of going through mysql_common's `BinlogRow`, because mysql_common 0.37.3
//! mis-decodes several MariaDB columns (checked against MariaDB 10.11; each case has a test
//! here and against a real server in `tests/mysql_stream.rs`):
//!
//! - signed MEDIUMINT is not sign-extended (`-1` comes out as 16777215);
//! - TIMESTAMP(n) comes out as a string of epoch seconds;
//! - YEAR 0 (the "zero year") comes out as 1900;
//! - BINARY(n) and UUID lose trailing 0x00 bytes: the server strips the pad character of
//!   fixed-length strings, and for `binary` that is 0x00, so the image must be padded back;
//! - UNSIGNED needs the SIGNEDNESS optional metadata, which mysql_common matches to the wrong
//!   columns on MariaDB;
//! - ENUM and SET arrive as an index and a bitmask, JSON (MariaDB's LONGTEXT) as bytes.
//!
//! BIT(n) arrives as ceil(n/8) big-endian bytes; its TABLE_MAP metadata gives n (bits beyond
//! whole bytes, then whole bytes), and it becomes a [`Value::Bits`] of exactly n bits, so
//! BIT(1) can be written as a boolean and BIT(7) keeps its leading zeros.
//!
//! Which bytes belong to which column comes from the TABLE_MAP event, which describes the table
//! as it was when the row was written. What the bytes *mean* — signedness, character set, ENUM
//! and SET labels, whether a BINARY(16) is a MariaDB `UUID` — comes from information_schema
//! ([`ColumnInfo`]). The two are checked against each other when a [`ColumnDecoder`] is built,
//! so a table whose definition changed under the reader is an error, never misread data.
//!
//! Values duplex cannot represent faithfully are errors naming the table and column, never
//! silently changed: the zero date `0000-00-00`, zero DATETIME/TIMESTAMP, dates with zero
//! parts, text that is not valid in its declared character set.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};
use uuid::Uuid;

use crate::{Decimal, Row, TableName, Value};

/// What information_schema says about one column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// `DATA_TYPE`, lower case (`int`, `varchar`, `uuid`).
    pub data_type: String,
    /// `COLUMN_TYPE` as the server prints it (`int(10) unsigned`, `enum('a','b')`).
    pub column_type: String,
    /// Whether the column is an UNSIGNED number.
    pub unsigned: bool,
    /// `CHARACTER_SET_NAME`; `None` for non-character columns.
    pub charset: Option<String>,
    /// Whether the column accepts NULL.
    pub nullable: bool,
}

/// A column that cannot be decoded, or a value that cannot be represented.
#[derive(Debug, thiserror::Error)]
pub enum TypeError {
    /// duplex has no canonical form for this column type.
    #[error(
        "column {column} of table {table} has type {type_name}, which duplex does not support \
         ({detail}); remove the table from the mapping or change the column's type"
    )]
    Unsupported {
        /// The table.
        table: TableName,
        /// The column.
        column: String,
        /// The declared type.
        type_name: String,
        /// Why it is not supported.
        detail: &'static str,
    },
    /// The binlog's column type does not fit information_schema's: the table changed since the
    /// row was written.
    #[error(
        "column {column} of table {table} is {type_name} in information_schema but binlog column \
         type {binlog_type} in the row event: the table was altered after this row was written"
    )]
    Mismatch {
        /// The table.
        table: TableName,
        /// The column.
        column: String,
        /// information_schema's type.
        type_name: String,
        /// The binlog type code.
        binlog_type: u8,
    },
    /// A value duplex will not silently change.
    #[error("column {column} of table {table}: {reason}")]
    BadValue {
        /// The table.
        table: TableName,
        /// The column.
        column: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The row image ended before the column's bytes.
    #[error("row event data of table {table} ends inside column {column}")]
    Truncated {
        /// The table.
        table: TableName,
        /// The column.
        column: String,
    },
}

/// How a column's text is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    /// Not text: `Value::Bytes`.
    Binary,
    /// utf8mb4, utf8mb3, ascii: valid UTF-8.
    Utf8,
    /// MySQL's latin1, which is Windows-1252.
    Latin1,
}

/// The layout and meaning of one column's binlog image.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Int {
        width: usize,
        unsigned: bool,
    },
    Float,
    Double,
    Decimal {
        precision: usize,
        scale: usize,
    },
    Year,
    Date,
    Time {
        fsp: u8,
    },
    DateTime {
        fsp: u8,
    },
    Timestamp {
        fsp: u8,
    },
    /// VARCHAR/VARBINARY (1 or 2 length bytes) and TEXT/BLOB (1 to 4 length bytes).
    Var {
        len_bytes: usize,
        charset: Charset,
        json: bool,
    },
    /// CHAR/BINARY: 1 or 2 length bytes; BINARY is padded back to `pad_to` with 0x00.
    Fixed {
        len_bytes: usize,
        charset: Charset,
        pad_to: Option<usize>,
    },
    Uuid,
    Enum {
        pack: usize,
        labels: Vec<String>,
    },
    Set {
        pack: usize,
        labels: Vec<String>,
    },
    Bit {
        bytes: usize,
        len: usize,
    },
}

/// Decodes one column of a table's row images.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDecoder {
    name: Arc<str>,
    kind: Kind,
}

/// Binlog column type codes (`enum_field_types`).
/// Binlog column type codes.
pub(super) mod code {
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
}

impl ColumnDecoder {
    /// A decoder for a column whose TABLE_MAP entry has binlog type `binlog_type` and type
    /// metadata `meta`, and which information_schema describes as `info`.
    pub fn new(
        table: &TableName,
        info: &ColumnInfo,
        binlog_type: u8,
        meta: &[u8],
    ) -> Result<ColumnDecoder, TypeError> {
        let unsupported = |detail| TypeError::Unsupported {
            table: table.clone(),
            column: info.name.clone(),
            type_name: info.column_type.clone(),
            detail,
        };
        let mismatch = || TypeError::Mismatch {
            table: table.clone(),
            column: info.name.clone(),
            type_name: info.column_type.clone(),
            binlog_type,
        };
        let meta_byte = |i: usize| meta.get(i).copied().ok_or_else(mismatch);
        let expect = |want: &[u8]| {
            if want.contains(&binlog_type) {
                Ok(())
            } else {
                Err(mismatch())
            }
        };
        let charset = || -> Result<Charset, TypeError> {
            match info
                .charset
                .as_deref()
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                None | Some("binary") => Ok(Charset::Binary),
                Some("utf8mb4" | "utf8mb3" | "utf8" | "ascii") => Ok(Charset::Utf8),
                Some("latin1") => Ok(Charset::Latin1),
                Some(_) => Err(unsupported(
                    "only utf8mb4, utf8mb3, ascii, latin1 and binary character sets are supported",
                )),
            }
        };
        // CHAR/BINARY/ENUM/SET/UUID share binlog type STRING; the real type and the length are
        // packed into its two metadata bytes.
        let string_meta = || -> Result<(u8, usize), TypeError> {
            let (b0, b1) = (meta_byte(0)?, meta_byte(1)?);
            Ok(if b0 & 0x30 != 0x30 {
                (
                    b0 | 0x30,
                    usize::from(b1) | (usize::from((b0 & 0x30) ^ 0x30) << 4),
                )
            } else {
                (b0, usize::from(b1))
            })
        };
        let int = |width: usize, code: u8| -> Result<Kind, TypeError> {
            expect(&[code])?;
            Ok(Kind::Int {
                width,
                unsigned: info.unsigned,
            })
        };
        let kind = match info.data_type.as_str() {
            "tinyint" => int(1, code::TINY)?,
            "smallint" => int(2, code::SHORT)?,
            "mediumint" => int(3, code::INT24)?,
            "int" | "integer" => int(4, code::LONG)?,
            "bigint" => int(8, code::LONGLONG)?,
            "float" => {
                expect(&[code::FLOAT])?;
                Kind::Float
            }
            "double" | "real" => {
                expect(&[code::DOUBLE])?;
                Kind::Double
            }
            "decimal" | "numeric" => {
                expect(&[code::NEWDECIMAL])?;
                Kind::Decimal {
                    precision: usize::from(meta_byte(0)?),
                    scale: usize::from(meta_byte(1)?),
                }
            }
            "year" => {
                expect(&[code::YEAR])?;
                Kind::Year
            }
            "date" => {
                expect(&[code::DATE, code::NEWDATE])?;
                Kind::Date
            }
            "time" => {
                if binlog_type != code::TIME2 {
                    return Err(unsupported(
                        "pre-5.6 TIME format; rebuild the table with ALTER TABLE ... FORCE",
                    ));
                }
                Kind::Time { fsp: meta_byte(0)? }
            }
            "datetime" => {
                if binlog_type != code::DATETIME2 {
                    return Err(unsupported(
                        "pre-5.6 DATETIME format; rebuild the table with ALTER TABLE ... FORCE",
                    ));
                }
                Kind::DateTime { fsp: meta_byte(0)? }
            }
            "timestamp" => {
                if binlog_type != code::TIMESTAMP2 {
                    return Err(unsupported(
                        "pre-5.6 TIMESTAMP format; rebuild the table with ALTER TABLE ... FORCE",
                    ));
                }
                Kind::Timestamp { fsp: meta_byte(0)? }
            }
            "varchar" | "varbinary" => {
                expect(&[code::VARCHAR, code::VAR_STRING])?;
                let max = usize::from(u16::from_le_bytes([meta_byte(0)?, meta_byte(1)?]));
                Kind::Var {
                    len_bytes: if max < 256 { 1 } else { 2 },
                    charset: charset()?,
                    json: false,
                }
            }
            "tinytext" | "text" | "mediumtext" | "longtext" | "tinyblob" | "blob"
            | "mediumblob" | "longblob" | "json" => {
                if binlog_type == code::JSON {
                    return Err(unsupported("MySQL's binary JSON is not decoded yet"));
                }
                expect(&[code::BLOB])?;
                Kind::Var {
                    len_bytes: usize::from(meta_byte(0)?),
                    charset: charset()?,
                    json: info.data_type == "json",
                }
            }
            "char" | "binary" => {
                expect(&[code::STRING])?;
                let (real, max) = string_meta()?;
                if real != code::STRING {
                    return Err(mismatch());
                }
                let charset = charset()?;
                Kind::Fixed {
                    len_bytes: if max < 256 { 1 } else { 2 },
                    charset,
                    pad_to: (charset == Charset::Binary).then_some(max),
                }
            }
            "uuid" => {
                expect(&[code::STRING])?;
                if string_meta()? != (code::STRING, 16) {
                    return Err(mismatch());
                }
                Kind::Uuid
            }
            "enum" | "set" => {
                expect(&[code::STRING, code::ENUM, code::SET])?;
                let (real, pack) = if binlog_type == code::STRING {
                    string_meta()?
                } else {
                    (binlog_type, usize::from(meta_byte(1)?))
                };
                let labels =
                    parse_labels(&info.column_type).ok_or_else(|| TypeError::BadValue {
                        table: table.clone(),
                        column: info.name.clone(),
                        reason: format!("cannot read the labels of {}", info.column_type),
                    })?;
                match (info.data_type.as_str(), real) {
                    ("enum", code::ENUM) => Kind::Enum { pack, labels },
                    ("set", code::SET) => Kind::Set { pack, labels },
                    _ => return Err(mismatch()),
                }
            }
            "bit" => {
                expect(&[code::BIT])?;
                // Metadata: bits beyond whole bytes, then whole bytes.
                let (bits, bytes) = (usize::from(meta_byte(0)?), usize::from(meta_byte(1)?));
                Kind::Bit {
                    bytes: bytes + usize::from(bits > 0),
                    len: bytes * 8 + bits,
                }
            }
            _ => return Err(unsupported("no canonical mapping for this type")),
        };
        Ok(ColumnDecoder {
            name: Arc::from(info.name.as_str()),
            kind,
        })
    }

    /// The column name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Decodes this column's image at the start of `buf` and advances `buf` past it. On error
    /// the caller adds the table (see [`decode_row`]).
    fn decode(&self, buf: &mut &[u8]) -> Result<Value, ValueError> {
        let mut take = |n: usize| -> Result<&[u8], ValueError> {
            if buf.len() < n {
                return Err(ValueError::Truncated);
            }
            let (head, rest) = buf.split_at(n);
            *buf = rest;
            Ok(head)
        };
        Ok(match &self.kind {
            Kind::Int { width, unsigned } => {
                let raw = le_uint(take(*width)?);
                if *unsigned {
                    Value::UInt(raw)
                } else {
                    let shift = 64 - 8 * *width as u32;
                    Value::Int(((raw << shift) as i64) >> shift)
                }
            }
            Kind::Float => Value::Float(f64::from(f32::from_le_bytes(
                take(4)?.try_into().map_err(|_| ValueError::Truncated)?,
            ))),
            Kind::Double => Value::Float(f64::from_le_bytes(
                take(8)?.try_into().map_err(|_| ValueError::Truncated)?,
            )),
            Kind::Decimal { precision, scale } => {
                let size = decimal_bin_size(*precision, *scale);
                Value::Decimal(decode_decimal(take(size)?, *precision, *scale)?)
            }
            Kind::Year => match take(1)?[0] {
                0 => Value::Int(0),
                y => Value::Int(1900 + i64::from(y)),
            },
            Kind::Date => Value::Date(decode_date(le_uint(take(3)?))?),
            Kind::Time { fsp } => {
                let bytes = take(3 + frac_bytes(*fsp))?;
                Value::Time(decode_time2(bytes, *fsp))
            }
            Kind::DateTime { fsp } => {
                let int = be_uint(take(5)?);
                let micros = frac_micros(take(frac_bytes(*fsp))?);
                Value::Timestamp(decode_datetime2(int, micros)?)
            }
            Kind::Timestamp { fsp } => {
                let secs = be_uint(take(4)?);
                let micros = frac_micros(take(frac_bytes(*fsp))?);
                if secs == 0 && micros == 0 {
                    return Err(ValueError::Bad(
                        "the zero timestamp 0000-00-00 00:00:00 has no canonical form; \
                         set the column to NULL or a real time at the source"
                            .into(),
                    ));
                }
                let ts = DateTime::from_timestamp(secs as i64, (micros * 1000) as u32)
                    .ok_or_else(|| ValueError::Bad(format!("timestamp {secs} out of range")))?;
                Value::TimestampTz(ts)
            }
            Kind::Var {
                len_bytes,
                charset,
                json,
            } => {
                let len = le_uint(take(*len_bytes)?) as usize;
                let bytes = take(len)?;
                let value = text_value(bytes, *charset)?;
                match (json, value) {
                    (true, Value::Text(text)) => Value::Json(text),
                    (true, Value::Bytes(bytes)) => {
                        Value::Json(String::from_utf8(bytes).map_err(|_| {
                            ValueError::Bad("JSON document is not valid UTF-8".into())
                        })?)
                    }
                    (_, value) => value,
                }
            }
            Kind::Fixed {
                len_bytes,
                charset,
                pad_to,
            } => {
                let len = le_uint(take(*len_bytes)?) as usize;
                let bytes = take(len)?;
                match pad_to {
                    Some(n) if bytes.len() < *n => {
                        let mut padded = bytes.to_vec();
                        padded.resize(*n, 0);
                        Value::Bytes(padded)
                    }
                    _ => text_value(bytes, *charset)?,
                }
            }
            Kind::Uuid => {
                let len = usize::from(take(1)?[0]);
                let mut record = [0u8; 16];
                let bytes = take(len)?;
                record
                    .get_mut(..bytes.len())
                    .ok_or(ValueError::Truncated)?
                    .copy_from_slice(bytes);
                Value::Uuid(uuid_from_record(record))
            }
            Kind::Enum { pack, labels } => match le_uint(take(*pack)?) {
                0 => Value::Text(String::new()),
                i => Value::Text(
                    labels
                        .get(i as usize - 1)
                        .ok_or_else(|| ValueError::Bad(format!("ENUM index {i} has no label")))?
                        .clone(),
                ),
            },
            Kind::Set { pack, labels } => {
                let mask = le_uint(take(*pack)?);
                if labels.len() < 64 && mask >> labels.len() != 0 {
                    return Err(ValueError::Bad(format!(
                        "SET bitmask {mask:#x} has no label"
                    )));
                }
                let chosen: Vec<&str> = labels
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, l)| l.as_str())
                    .collect();
                Value::Text(chosen.join(","))
            }
            Kind::Bit { bytes, len } => {
                let number = be_uint(take(*bytes)?);
                Value::Bits(crate::Bits::from_uint(number, *len).ok_or_else(|| {
                    ValueError::Bad(format!("{number:#x} does not fit BIT({len})"))
                })?)
            }
        })
    }
}

/// A value error before the table and column are known.
#[derive(Debug)]
enum ValueError {
    Truncated,
    Bad(String),
}

/// Decodes one row image: the null bitmap of the present columns, then each present, non-null
/// column. `present[i]` says whether column `i` is in the image (all are, with
/// `binlog_row_image=FULL`). Advances `buf` past the row.
pub fn decode_row(
    table: &TableName,
    columns: &[ColumnDecoder],
    present: &[bool],
    buf: &mut &[u8],
) -> Result<Row, TypeError> {
    let count = present.iter().filter(|p| **p).count();
    let null_len = count.div_ceil(8);
    let truncated = |column: &str| TypeError::Truncated {
        table: table.clone(),
        column: column.to_owned(),
    };
    if buf.len() < null_len {
        return Err(truncated("(null bitmap)"));
    }
    let (nulls, rest) = buf.split_at(null_len);
    *buf = rest;
    let mut row = Row::new();
    let in_image = columns.iter().zip(present).filter(|(_, p)| **p);
    for (image_index, (column, _)) in in_image.enumerate() {
        let is_null = nulls[image_index / 8] & (1 << (image_index % 8)) != 0;
        let value = if is_null {
            Value::Null
        } else {
            column.decode(buf).map_err(|e| match e {
                ValueError::Truncated => truncated(&column.name),
                ValueError::Bad(reason) => TypeError::BadValue {
                    table: table.clone(),
                    column: column.name.to_string(),
                    reason,
                },
            })?
        };
        row.push(column.name.clone(), value);
    }
    Ok(row)
}

fn le_uint(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

fn be_uint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Bytes of the fractional-seconds part of TIME2/DATETIME2/TIMESTAMP2 with `fsp` digits.
fn frac_bytes(fsp: u8) -> usize {
    usize::from(fsp).div_ceil(2)
}

/// Microseconds from an unsigned fractional-seconds part of 0 to 3 bytes.
fn frac_micros(bytes: &[u8]) -> u64 {
    let raw = be_uint(bytes);
    match bytes.len() {
        1 => raw * 10_000,
        2 => raw * 100,
        _ => raw,
    }
}

fn decode_date(raw: u64) -> Result<NaiveDate, ValueError> {
    let (day, month, year) = (raw & 31, (raw >> 5) & 15, raw >> 9);
    if raw == 0 {
        return Err(ValueError::Bad(
            "the zero date 0000-00-00 has no canonical form; set the column to NULL or a real \
             date at the source (and enable NO_ZERO_DATE)"
                .into(),
        ));
    }
    NaiveDate::from_ymd_opt(year as i32, month as u32, day as u32).ok_or_else(|| {
        ValueError::Bad(format!(
            "{year:04}-{month:02}-{day:02} is not a calendar date; fix the row at the source \
             (and enable NO_ZERO_IN_DATE)"
        ))
    })
}

/// DATETIME2: 40 bits big-endian, offset by 2^39: year*13+month (17 bits), day (5), hour (5),
/// minute (6), second (6).
fn decode_datetime2(int: u64, micros: u64) -> Result<NaiveDateTime, ValueError> {
    let value = int.wrapping_sub(0x80_0000_0000);
    let ymd = value >> 17;
    let hms = value & ((1 << 17) - 1);
    let (ym, day) = (ymd >> 5, ymd & 31);
    let (year, month) = (ym / 13, ym % 13);
    if value == 0 && micros == 0 {
        return Err(ValueError::Bad(
            "the zero datetime 0000-00-00 00:00:00 has no canonical form; set the column to \
             NULL or a real time at the source"
                .into(),
        ));
    }
    let date = decode_date((year << 9) | (month << 5) | day)?;
    let time = NaiveTime::from_hms_micro_opt(
        (hms >> 12) as u32,
        ((hms >> 6) & 63) as u32,
        (hms & 63) as u32,
        micros as u32,
    )
    .ok_or_else(|| ValueError::Bad(format!("bad time of day in DATETIME {value:#x}")))?;
    Ok(date.and_time(time))
}

/// TIME2 as signed microseconds. The image is a big-endian number offset by 2^23 (3 integer
/// bytes) whose fraction, for 1 to 4 digits, is stored as a separate two's-complement-like
/// part that borrows from the integer part for negative times (MySQL's
/// `my_time_packed_from_binary`).
fn decode_time2(bytes: &[u8], fsp: u8) -> i64 {
    let mut int = be_uint(&bytes[..3]) as i64 - 0x80_0000;
    let packed = match fsp {
        1 | 2 => {
            let mut frac = i64::from(bytes[3]);
            if int < 0 && frac != 0 {
                int += 1;
                frac -= 0x100;
            }
            (int << 24) + frac * 10_000
        }
        3 | 4 => {
            let mut frac = be_uint(&bytes[3..5]) as i64;
            if int < 0 && frac != 0 {
                int += 1;
                frac -= 0x1_0000;
            }
            (int << 24) + frac * 100
        }
        5 | 6 => be_uint(&bytes[..6]) as i64 - 0x8000_0000_0000,
        _ => int << 24,
    };
    let magnitude = packed.abs();
    let hms = magnitude >> 24;
    let hours = (hms >> 12) & 1023;
    let minutes = (hms >> 6) & 63;
    let seconds = hms & 63;
    let micros = ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + (magnitude & 0xff_ffff);
    if packed < 0 { -micros } else { micros }
}

const DIG2BYTES: [usize; 10] = [0, 1, 1, 2, 2, 3, 3, 4, 4, 4];

/// Bytes of a DECIMAL(precision, scale) binary image.
fn decimal_bin_size(precision: usize, scale: usize) -> usize {
    let int = precision.saturating_sub(scale);
    int / 9 * 4 + DIG2BYTES[int % 9] + scale / 9 * 4 + DIG2BYTES[scale % 9]
}

/// MySQL's binary DECIMAL: groups of 9 digits in 4 big-endian bytes (fewer for a leading or
/// trailing partial group), the first bit flipped to mark the sign, all bits inverted for
/// negative numbers.
fn decode_decimal(bytes: &[u8], precision: usize, scale: usize) -> Result<Decimal, ValueError> {
    let mut buf = bytes.to_vec();
    let negative = buf.first().is_some_and(|b| b & 0x80 == 0);
    if let Some(first) = buf.first_mut() {
        *first ^= 0x80;
    }
    if negative {
        buf.iter_mut().for_each(|b| *b = !*b);
    }
    let int_digits = precision.saturating_sub(scale);
    let mut pos = 0;
    let mut group = |len: usize| {
        let v = be_uint(&buf[pos..pos + len]);
        pos += len;
        v
    };
    let mut text = String::with_capacity(precision + 3);
    if negative {
        text.push('-');
    }
    let lead = int_digits % 9;
    if lead > 0 {
        text.push_str(&group(DIG2BYTES[lead]).to_string());
    }
    for _ in 0..int_digits / 9 {
        text.push_str(&format!("{:09}", group(4)));
    }
    if int_digits == 0 {
        text.push('0');
    }
    if scale > 0 {
        text.push('.');
        for _ in 0..scale / 9 {
            text.push_str(&format!("{:09}", group(4)));
        }
        let tail = scale % 9;
        if tail > 0 {
            text.push_str(&format!("{:0tail$}", group(DIG2BYTES[tail])));
        }
    }
    text.parse()
        .map_err(|_| ValueError::Bad(format!("bad DECIMAL image {text:?}")))
}

/// Text in the column's character set as a `Value`.
fn text_value(bytes: &[u8], charset: Charset) -> Result<Value, ValueError> {
    match charset {
        Charset::Binary => Ok(Value::Bytes(bytes.to_vec())),
        Charset::Utf8 => String::from_utf8(bytes.to_vec())
            .map(Value::Text)
            .map_err(|_| ValueError::Bad("text is not valid in the column's character set".into())),
        Charset::Latin1 => Ok(Value::Text(decode_latin1(bytes))),
    }
}

/// MySQL's latin1 is Windows-1252, with the five bytes 1252 leaves undefined mapped to the
/// C1 controls of the same value (as MySQL's own conversion to utf8 does).
pub fn decode_latin1(bytes: &[u8]) -> String {
    const HIGH: [char; 32] = [
        '\u{20AC}', '\u{81}', '\u{201A}', '\u{192}', '\u{201E}', '\u{2026}', '\u{2020}',
        '\u{2021}', '\u{2C6}', '\u{2030}', '\u{160}', '\u{2039}', '\u{152}', '\u{8D}', '\u{17D}',
        '\u{8F}', '\u{90}', '\u{2018}', '\u{2019}', '\u{201C}', '\u{201D}', '\u{2022}', '\u{2013}',
        '\u{2014}', '\u{2DC}', '\u{2122}', '\u{161}', '\u{203A}', '\u{153}', '\u{9D}', '\u{17E}',
        '\u{178}',
    ];
    bytes
        .iter()
        .map(|&b| match b {
            0x80..=0x9F => HIGH[usize::from(b - 0x80)],
            _ => char::from(b),
        })
        .collect()
}

/// MariaDB stores a UUID whose version is 1 to 5 with a set variant bit in index-friendly
/// order (node, clock-seq, time-high, time-mid, time-low); other UUIDs as they are. This is
/// the inverse of its `memory_to_record` (`plugin/type_uuid/sql_type_uuid.h`).
fn uuid_from_record(record: [u8; 16]) -> Uuid {
    let swapped = record[6] & 0x80 != 0 && (1..=0x80).contains(&record[8]);
    if !swapped {
        return Uuid::from_bytes(record);
    }
    let mut memory = [0u8; 16];
    // (memory offset, record offset, length) of each segment.
    for (mem, rec, len) in [(0, 12, 4), (4, 10, 2), (6, 8, 2), (8, 6, 2), (10, 0, 6)] {
        memory[mem..mem + len].copy_from_slice(&record[rec..rec + len]);
    }
    Uuid::from_bytes(memory)
}

/// The labels of `enum('a','b')` / `set('a','b')` as information_schema prints them (quotes
/// doubled, backslashes escaped).
pub fn parse_labels(column_type: &str) -> Option<Vec<String>> {
    let open = column_type.find('(')?;
    let inner = column_type[open + 1..].strip_suffix(')')?;
    let mut labels = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        if chars.next()? != '\'' {
            return None;
        }
        let mut label = String::new();
        loop {
            match chars.next()? {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    label.push('\'');
                }
                '\'' => break,
                '\\' => label.push(chars.next()?),
                c => label.push(c),
            }
        }
        labels.push(label);
        match chars.next() {
            None => return Some(labels),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests;
