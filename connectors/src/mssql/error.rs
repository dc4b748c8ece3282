//! SQL Server connector errors. The driver error is kept as the source: its SQL Server error
//! number decides whether an operation is retried.

use super::MssqlUrlError;

/// An error talking to SQL Server.
#[derive(Debug, thiserror::Error)]
pub enum MssqlError {
    /// The URL is wrong (the message says what to write).
    #[error(transparent)]
    Url(#[from] MssqlUrlError),
    /// The server's port could not be reached.
    #[error("cannot reach SQL Server at {target}")]
    Reach {
        /// `host:port`.
        target: String,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The server refused the TLS handshake or the login.
    #[error("cannot log in to SQL Server at {target}")]
    Connect {
        /// `host:port`.
        target: String,
        /// Driver error.
        #[source]
        source: tiberius::error::Error,
    },
    /// A statement failed.
    #[error("SQL Server query failed while {doing}")]
    Query {
        /// What duplex was doing.
        doing: &'static str,
        /// Driver error.
        #[source]
        source: tiberius::error::Error,
    },
    /// Recording a position wrote another number of rows than one.
    #[error(
        "recording the position of {site} wrote {rows} rows of duplex.positions instead of \
         one: its row was changed or removed outside duplex"
    )]
    PositionRow {
        /// The source site.
        site: String,
        /// Rows written.
        rows: u64,
    },
}

impl MssqlError {
    /// Wraps a query error with what duplex was doing.
    pub fn query(doing: &'static str) -> impl FnOnce(tiberius::error::Error) -> MssqlError {
        move |source| MssqlError::Query { doing, source }
    }
}
