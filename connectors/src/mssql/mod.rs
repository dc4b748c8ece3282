//! SQL Server through CDC: LSN positions, type conversions between tiberius values and
//! canonical values, the decisions of the change-table reader and of `check`, the polling
//! reader built on them ([`MssqlStream`]), the applier ([`MssqlApplier`]: the shared
//! exactly-once protocol over a SQL Server session), the URL and connecting.
//!
//! Wired as [`crate::SiteKind::Mssql`] with [`crate::Position::Mssql`]: a link or the merge
//! engine reads through [`MssqlLinkStream`] (the reader as a change stream, see [`link`];
//! for the engine it also reads `duplex.positions` to mark echoes) and writes
//! through [`MssqlApplier`] with routes resolved against the target table ([`route`]);
//! `duplex check` runs [`preflight`]; the catalog, collations and `duplex.positions` listing
//! the link needs are in [`route`] and [`positions`]; [`typemap`] holds the SQL Server <->
//! PostgreSQL rule tables; [`snapshot`] is the backfill's snapshot of a SQL Server source,
//! matched exactly to a CDC position; [`teardown`] removes schema `duplex` from a target
//! (never a capture instance); [`load`] is the target side of a backfill into SQL Server
//! (empty tables, markers, foreign keys); [`verify`] what `duplex verify` reads besides
//! ranges. Not built, and refused: writes that overwrite a SQL Server target's rows (upserts:
//! backfill's `--allow-nonempty` and `--resync`, a one-way `verify --repair`), the log head
//! and schema listing; the configuration also refuses mappings between SQL Server and
//! MySQL/MariaDB.
//!
//! Nothing here has run against a real SQL Server yet: no server can run on our machines.
//! The server tests in `connectors/tests/mssql.rs` and `tests/run_mssql*.rs` run only when
//! `DUPLEX_TEST_MSSQL_URL` is set.

mod apply;
mod error;
pub mod link;
pub mod load;
mod param;
mod position;
pub mod positions;
pub mod preflight;
mod reader;
pub mod route;
pub mod snapshot;
pub mod sql;
pub mod stream;
pub mod teardown;
mod tls;
pub mod typemap;
mod types;
pub mod verify;
pub mod write;

pub use apply::{MssqlApplier, MssqlSession, mssql_applier};
pub use error::MssqlError;
pub use link::MssqlLinkStream;
pub use param::Param;
pub use position::{CdcPosition, Lsn, LsnError};
pub use reader::{
    CdcItem, MssqlStream, MssqlStreamConfig, MssqlStreamError, decode_change, deliverable,
    heartbeat_after, start_position,
};
pub use tls::{MssqlEncrypt, MssqlUrl, MssqlUrlError};
pub use types::{MssqlType, TYPE_TABLE, TypeError, to_param, to_value};

use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

/// A logged-in SQL Server session.
pub type MssqlClient = tiberius::Client<Compat<TcpStream>>;

/// Connects to the database `url` names; `password`, when given, overrides any in the URL.
pub async fn connect(url: &str, password: Option<&str>) -> Result<MssqlClient, MssqlError> {
    let config = MssqlUrl::parse(url, password)?.config();
    let target = config.get_addr();
    let tcp = TcpStream::connect(&target)
        .await
        .map_err(|source| MssqlError::Reach {
            target: target.clone(),
            source,
        })?;
    tcp.set_nodelay(true).map_err(|source| MssqlError::Reach {
        target: target.clone(),
        source,
    })?;
    tiberius::Client::connect(config, tcp.compat_write())
        .await
        .map_err(|source| MssqlError::Connect { target, source })
}
