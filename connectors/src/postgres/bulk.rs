//! PostgreSQL's side of the bulk pass-through (see [`crate::bulk`]): binary `COPY` out of the
//! source snapshot, binary `COPY` into the target, the rows never decoded in between.
//!
//! # Why the bytes mean the same value on both sides
//!
//! A field of the binary format is the output of the column type's `send` function, read back
//! by the target type's `receive` function. The target takes a shape only when every column
//! has, on both servers, the same built-in type OID (below `FirstNormalObjectId`, 16384: the
//! OIDs fixed at initdb, so the same type on every server of any version duplex supports) and
//! the same declared type with its modifiers (`numeric(12,2)`, `varchar(20)`,
//! `timestamp(3) with time zone`). User-defined types, domains, enums and arrays of them fall
//! back to canonical rows: their OIDs differ between servers and arrays carry their element
//! type's OID in the data. Text is sent and received in the session's client encoding (UTF8 on
//! both connections), so server encodings may differ.
//!
//! # Counting
//!
//! The reader walks the data's framing (signature, flags, header extension, then per tuple a
//! field count and per field a length, then the trailer) and counts the tuples; the target's
//! `COPY` must report the same count, or the target transaction fails and rolls back. A short
//! or malformed stream is an error, never a smaller range.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};

use crate::apply::ApplyError;
use crate::bulk::{BulkColumn, BulkFormat, BulkRows, BulkShape};
use crate::snapshot::KeyRange;
use crate::{Column, Op, TableName};

use super::PgError;
use super::apply::{PgRoute, Writer, write_error};
use super::quote_ident;
use super::snapshot::{PgSnapshotError, PgSnapshotReader, condition, qualified};

/// The first OID initdb leaves to user objects; every built-in type's OID is below it.
const FIRST_NORMAL_OID: u32 = 16384;

/// The binary COPY signature.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// The tuples in binary COPY `data` with `fields` fields each, checked end to end.
pub(super) fn count_tuples(data: &[u8], fields: usize) -> Result<u64, String> {
    let mut buf = data;
    if buf.len() < SIGNATURE.len() + 8 || &buf[..SIGNATURE.len()] != SIGNATURE {
        return Err("the data does not start with the binary COPY signature".into());
    }
    buf.advance(SIGNATURE.len());
    let flags = buf.get_u32();
    if flags & (1 << 16) != 0 {
        return Err("the data carries OIDs".into());
    }
    let extension = buf.get_u32() as usize;
    if buf.len() < extension {
        return Err("the header extension is cut short".into());
    }
    buf.advance(extension);
    let mut tuples = 0u64;
    loop {
        if buf.len() < 2 {
            return Err(format!(
                "the data ends after {tuples} tuples without a trailer"
            ));
        }
        let count = buf.get_i16();
        if count == -1 {
            break;
        }
        if count as usize != fields {
            return Err(format!(
                "tuple {} has {count} fields, not {fields}",
                tuples + 1
            ));
        }
        for _ in 0..fields {
            if buf.len() < 4 {
                return Err(format!("tuple {} is cut short", tuples + 1));
            }
            let length = buf.get_i32();
            if length < -1 {
                return Err(format!(
                    "tuple {} has a field of length {length}",
                    tuples + 1
                ));
            }
            if length > 0 {
                if buf.len() < length as usize {
                    return Err(format!("tuple {} is cut short", tuples + 1));
                }
                buf.advance(length as usize);
            }
        }
        tuples += 1;
    }
    if !buf.is_empty() {
        return Err(format!("{} bytes follow the trailer", buf.len()));
    }
    Ok(tuples)
}

/// The column list of a read of `columns`.
fn column_list(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PgSnapshotReader {
    /// The shape of a bulk read of `columns` of `table`: each column's type OID as the server
    /// reports it for the read, and its declared type.
    pub async fn bulk_shape(
        &mut self,
        table: &TableName,
        columns: &[Column],
    ) -> Result<BulkShape, PgSnapshotError> {
        let sql = format!(
            "SELECT {} FROM {} LIMIT 0",
            column_list(columns),
            qualified(table)
        );
        let statement = self
            .client
            .prepare(&sql)
            .await
            .map_err(PgError::query("describing a bulk read"))?;
        Ok(BulkShape {
            format: BulkFormat::PostgresBinary,
            table: table.clone(),
            columns: columns
                .iter()
                .zip(statement.columns())
                .map(|(column, read)| BulkColumn {
                    name: column.name.clone(),
                    type_id: read.type_().oid(),
                    declared: column.declared.clone(),
                })
                .collect(),
        })
    }

    /// The rows of `range` in `shape`'s columns, in binary COPY format, counted.
    pub async fn bulk_rows(
        &mut self,
        shape: &Arc<BulkShape>,
        key: &KeyRange,
    ) -> Result<BulkRows, PgSnapshotError> {
        let list = shape
            .columns
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "COPY (SELECT {list} FROM {} WHERE {}) TO STDOUT (FORMAT binary)",
            qualified(&shape.table),
            condition(key)?
        );
        let stream = self
            .client
            .copy_out(&sql)
            .await
            .map_err(PgError::query("reading a key range with COPY"))?;
        let mut stream = std::pin::pin!(stream);
        let mut data = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            data.extend_from_slice(
                &chunk.map_err(PgError::query("reading a key range with COPY"))?,
            );
        }
        let data = data.freeze();
        let rows = count_tuples(&data, shape.columns.len()).map_err(|problem| {
            PgSnapshotError::Key(format!("COPY from {}: {problem}", shape.table))
        })?;
        Ok(BulkRows {
            shape: shape.clone(),
            rows,
            data,
        })
    }
}

impl Writer<'_> {
    /// Whether `shape` can be copied into its route's table unread (see the module docs).
    pub(super) async fn takes_bulk(&mut self, shape: &BulkShape) -> Result<bool, ApplyError> {
        if shape.format != BulkFormat::PostgresBinary
            || self.options.upsert
            || self.options.conditional
        {
            return Ok(false);
        }
        let Some(route) = self.routes.get(&shape.table) else {
            return Ok(false);
        };
        let Some(targets) = target_columns(route, shape) else {
            return Ok(false);
        };
        if shape.columns.iter().zip(&targets).any(|(source, &c)| {
            source.type_id >= FIRST_NORMAL_OID || source.declared != route.columns[c].declared
        }) {
            return Ok(false);
        }
        let names = quoted(route, &targets);
        let probe = self
            .statement(format!("SELECT {names} FROM {} LIMIT 0", route.quoted))
            .await
            .map_err(|source| write_error(route, Op::Insert, source))?;
        Ok(probe
            .columns()
            .iter()
            .zip(&shape.columns)
            .all(|(target, source)| target.type_().oid() == source.type_id))
    }

    /// One `COPY ... FROM STDIN (FORMAT binary)` of `rows`, which must write exactly
    /// `rows.rows` rows.
    pub(super) async fn load_bulk(&mut self, rows: &BulkRows) -> Result<(), ApplyError> {
        let shape = &rows.shape;
        let route = self
            .routes
            .get(&shape.table)
            .ok_or_else(|| ApplyError::NoRoute(shape.table.clone()))?;
        let targets = target_columns(route, shape).ok_or_else(|| ApplyError::Route {
            source_table: shape.table.clone(),
            target: route.target.clone(),
            reason: "the route does not write exactly the columns of the bulk rows".into(),
        })?;
        let wrap = |source| write_error(route, Op::Insert, source);
        let sink = self
            .session
            .copy_in::<_, Bytes>(&format!(
                "COPY {} ({}) FROM STDIN (FORMAT binary)",
                route.quoted,
                quoted(route, &targets)
            ))
            .await
            .map_err(wrap)?;
        let mut sink = std::pin::pin!(sink);
        sink.send(rows.data.clone()).await.map_err(wrap)?;
        let written = sink.as_mut().finish().await.map_err(wrap)?;
        if written != rows.rows {
            return Err(ApplyError::Malformed {
                table: shape.table.clone(),
                op: Op::Insert,
                reason: format!(
                    "COPY into {} wrote {written} rows of {}",
                    route.target, rows.rows
                ),
            });
        }
        Ok(())
    }
}

/// For each column of `shape`, the index of the route column writing it; `None` unless the
/// route writes exactly those columns.
fn target_columns(route: &PgRoute, shape: &BulkShape) -> Option<Vec<usize>> {
    if route.columns.len() != shape.columns.len() {
        return None;
    }
    shape
        .columns
        .iter()
        .map(|c| route.columns.iter().position(|r| r.source == c.name))
        .collect()
}

/// The quoted target names of `columns` (indexes into the route's columns).
fn quoted(route: &PgRoute, columns: &[usize]) -> String {
    columns
        .iter()
        .map(|&c| route.columns[c].quoted.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary COPY stream of `tuples`, each a list of fields (`None`: NULL).
    fn stream(tuples: &[Vec<Option<&[u8]>>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        for tuple in tuples {
            out.extend_from_slice(&(tuple.len() as i16).to_be_bytes());
            for field in tuple {
                match field {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(bytes) => {
                        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        out.extend_from_slice(bytes);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    #[test]
    fn tuples_are_counted_with_nulls_and_empty_fields() {
        let data = stream(&[
            vec![Some(&[0, 0, 0, 1]), None],
            vec![Some(&[0, 0, 0, 2]), Some(b"")],
            vec![Some(&[0, 0, 0, 3]), Some(b"abc")],
        ]);
        assert_eq!(count_tuples(&data, 2), Ok(3));
        assert_eq!(count_tuples(&stream(&[]), 2), Ok(0));
    }

    #[test]
    fn every_truncation_of_a_stream_is_an_error() {
        let data = stream(&[
            vec![Some(&[0, 0, 0, 1]), None],
            vec![Some(b"xy"), Some(b"z")],
        ]);
        for end in 0..data.len() {
            assert!(
                count_tuples(&data[..end], 2).is_err(),
                "a stream cut at {end} of {} bytes was accepted",
                data.len()
            );
        }
    }

    #[test]
    fn wrong_field_counts_oids_and_trailing_bytes_are_errors() {
        let data = stream(&[vec![Some(&[1]), None]]);
        assert!(count_tuples(&data, 3).is_err());
        let mut with_oids = data.clone();
        with_oids[SIGNATURE.len() + 1] = 1;
        assert!(count_tuples(&with_oids, 2).is_err());
        let mut trailing = data.clone();
        trailing.push(0);
        assert!(count_tuples(&trailing, 2).is_err());
    }
}
