//! SQL Server through CDC: LSN positions, type conversions between tiberius values and
//! canonical values, the pure parts of the change-table reader and of `check`.
//!
//! Not yet wired: no link reads from or writes into SQL Server. The configuration refuses
//! `kind = "mssql"` with that message, so nothing fails deep in a run.

mod position;
pub mod preflight;
pub mod stream;
mod tls;
mod types;

pub use position::{CdcPosition, Lsn, LsnError};
pub use tls::{MssqlEncrypt, MssqlUrl, MssqlUrlError};
pub use types::{MssqlType, TypeError, to_param, to_value};
