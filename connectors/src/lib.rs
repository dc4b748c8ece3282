//! duplex-connectors: the canonical change model every database is translated to and from,
//! and one module per database kind.
//!
//! A reader turns a database's own change log into [`Transaction`]s of [`ChangeEvent`]s over
//! canonical [`Value`]s; an applier writes them into another database. Nothing here knows about
//! merging or version vectors: that is the engine's business.
//!
//! # One contract per database kind
//!
//! The engine, links, backfill and `check` in the `duplex` crate speak only to the contracts
//! here; none of them names a driver or matches on [`SiteKind`]. Each role has a documented
//! contract and one enum that chooses the kind, in one place:
//!
//! | role | contract | chooses the kind |
//! |---|---|---|
//! | catalog | [`catalog`]: tables, columns, keys | [`describe`] |
//! | preflight | [`preflight`]: server settings, privileges, tables | [`preflight::check_site`] |
//! | change stream | [`stream`]: whole transactions in commit order, positions never backwards | [`AnyStream`] |
//! | snapshot | [`snapshot`]: a consistent snapshot and its stream position, read-only ranges | [`snapshot::SourceSnapshot`], [`snapshot::AnySnapshot`] |
//! | applier | [`apply`]: exactly once, written once as [`apply::ExactlyOnce`] over a per-kind [`apply::TargetSession`] | [`AnyApplier`] |
//! | bookkeeping | `duplex.positions`, named once in [`apply::positions`]; each kind's `positions.rs` owns its DDL, locked read and record | (through the applier) |
//! | initial load target side | [`load`] | its functions |
//! | foreign keys on targets | [`foreign_keys`]: how duplex's sessions treat them | [`foreign_keys::target_foreign_keys`] |
//! | log head | [`head`]: where the log ends now, bytes after a position, the slot's WAL | [`head::HeadReader`] |
//! | leftovers | [`teardown`]: what a deployment created on a site, removing it, duplex's slots | [`teardown::find`], [`teardown::remove`], [`teardown::slots`] |
//!
//! Each kind lives in its own folder with the same rooms: `stream.rs`, `snapshot.rs`,
//! `apply.rs` (the kind's [`apply::TargetSession`]), `positions.rs`, `position.rs`, `types.rs`,
//! `param.rs`, `catalog.rs`, `preflight.rs`, `head.rs`, `error.rs`.
//!
//! **Adding a database kind** is adding one folder under `connectors/src/` that implements
//! these contracts, one variant (a line) per enum above and in [`SiteKind`] and [`Position`],
//! and passing the applier conformance suite (`connectors/tests/apply_conformance/`: one fixture
//! file under `target/` and one line in its `kinds:` list).

pub mod apply;
pub mod bulk;
pub mod catalog;
pub mod change;
pub mod digest;
pub mod foreign_keys;
pub mod head;
pub mod load;
pub mod mssql;
pub mod mysql;
pub mod position;
pub mod postgres;
pub mod preflight;
pub mod schema;
pub mod site;
pub mod snapshot;
pub mod stream;
pub mod target;
pub mod teardown;
mod tls;
pub mod typemap;
pub mod value;
pub mod verify;

pub use apply::{Applier, ApplyError, ApplyOptions, SkippedWrite, TableRoute};
pub use catalog::{DescribeError, describe, table_names};
pub use change::{ChangeEvent, Op, Origin, Row, Transaction, TransactionPart};
pub use load::AdminError;
pub use position::{Position, PositionError, PositionKind};
pub use schema::{Column, ShapeColumn, TableName, TableSchema, TableShape, ValueKind};
pub use site::{NotSupported, SiteConnection, SiteKind};
pub use snapshot::{
    AnySnapshot, IntegerSpan, KeyRange, SnapshotError, SnapshotRead, SourceSnapshot,
};
pub use stream::{AnyStream, SilenceTimeout, StreamError, StreamItem, StreamOptions};
pub use target::AnyApplier;
pub use value::{
    ArrayJsonError, Bits, BitsError, Decimal, DecimalError, Interval, Value, array_json,
};
