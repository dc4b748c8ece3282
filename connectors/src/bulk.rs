//! Bulk pass-through: a backfill range read in the source kind's own bulk format and written
//! into a target of the same kind without being decoded.
//!
//! The ordinary backfill path reads each range as canonical [`Value`](crate::Value)s and
//! encodes them again for the target. Between two sites of the same kind whose columns have
//! exactly the same types, that round trip changes nothing but costs most of the copy's CPU.
//! PostgreSQL's binary `COPY` format is such a bulk format: `COPY (SELECT ...) TO STDOUT
//! (FORMAT binary)` on the source and `COPY ... FROM STDIN (FORMAT binary)` on the target
//! move the server's own binary representation of every value.
//!
//! # Contract
//!
//! - A snapshot reader describes the columns it would read as a [`BulkShape`]
//!   ([`crate::AnySnapshot::bulk_shape`]; `None` when its kind has no bulk format), and reads
//!   a range as [`BulkRows`] in the same snapshot as its ordinary reads, counting the rows.
//! - An applier says whether it can write that shape unread ([`crate::AnyApplier::takes_bulk`]):
//!   only when its kind reads the format, it neither upserts nor writes conditionally, the
//!   route writes exactly the shape's columns, and every target column has the very same type
//!   as the source column (the kind decides what "the very same" is: on PostgreSQL the same
//!   built-in type OID and the same declared type with its modifiers, so that the binary
//!   representation means the same value on both sides).
//! - [`crate::AnyApplier::load_bulk`] writes the rows with the same exactly-once protocol as
//!   [`crate::AnyApplier::load`]: one target transaction holding the rows and the range's
//!   position row, a range already held is not written again, and the target must report
//!   writing exactly [`BulkRows::rows`] rows or the transaction is rolled back.
//!
//! So a range goes either wholly through the bulk path or wholly through the canonical one;
//! the caller asks before it reads and falls back to canonical rows whenever a target says no.

use std::sync::Arc;

use crate::TableName;

/// A kind's bulk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BulkFormat {
    /// PostgreSQL's binary `COPY` format (header, tuples, trailer).
    PostgresBinary,
}

/// One column of a bulk read, in read order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkColumn {
    /// The source column's name.
    pub name: String,
    /// The kind's own type identifier (PostgreSQL: the type's OID).
    pub type_id: u32,
    /// The declared type with its modifiers, as the catalog spells it (`numeric(12,2)`).
    pub declared: String,
}

/// What a bulk read of one table carries: its format and columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkShape {
    /// The format of the data.
    pub format: BulkFormat,
    /// The source table.
    pub table: TableName,
    /// The columns, in the order the data holds them.
    pub columns: Vec<BulkColumn>,
}

/// One range of rows in a bulk format.
#[derive(Debug, Clone)]
pub struct BulkRows {
    /// What the data holds.
    pub shape: Arc<BulkShape>,
    /// How many rows the data holds (counted by the reader from the data's framing).
    pub rows: u64,
    /// The data, a whole and well-framed unit of the format.
    pub data: bytes::Bytes,
}
