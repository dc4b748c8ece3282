//! duplex-connectors: the canonical change model every database is translated to and from,
//! and one module per database kind.
//!
//! A reader turns a database's own change log into [`Transaction`]s of [`ChangeEvent`]s over
//! canonical [`Value`]s; an applier writes them into another database. Nothing here knows about
//! merging or version vectors: that is the engine's business.
//!
//! Each kind lives in its own folder with the same rooms (`position.rs`, `types.rs`,
//! `catalog.rs`, `preflight.rs`, `error.rs`, and as the streams land `stream.rs`, `snapshot.rs`,
//! `apply.rs`).

pub mod apply;
pub mod catalog;
pub mod change;
pub mod load;
pub mod mysql;
pub mod position;
pub mod postgres;
pub mod preflight;
pub mod schema;
pub mod site;
pub mod snapshot;
pub mod stream;
pub mod target;
pub mod typemap;
pub mod value;

pub use apply::{Applier, ApplyError, ApplyOptions, SkippedWrite, TableRoute};
pub use catalog::{DescribeError, describe};
pub use change::{ChangeEvent, Op, Origin, Row, Transaction, TransactionPart};
pub use load::AdminError;
pub use position::{Position, PositionError, PositionKind};
pub use schema::{Column, TableName, TableSchema, ValueKind};
pub use site::{SiteConnection, SiteKind};
pub use snapshot::{AnySnapshot, KeyRange, SnapshotError, SnapshotRead, SourceSnapshot};
pub use stream::{AnyStream, StreamError, StreamItem, StreamOptions};
pub use target::AnyApplier;
pub use value::{Decimal, DecimalError, Value};
