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
    /// Recording a position or claim wrote another number of rows than one.
    #[error(
        "recording {site} in duplex.positions or duplex.claims wrote {rows} rows instead of \
         one: its row was changed or removed outside duplex"
    )]
    PositionRow {
        /// The source site or claim scope.
        site: String,
        /// Rows written.
        rows: u64,
    },
}

/// SQL Server error numbers after which the same work may succeed later: deadlock victim
/// (1205), lock request timeout (1222), snapshot update conflict (3960), and Azure SQL's
/// transient service errors (40197, 40501, 40613, 49918, 49919, 49920).
pub const TRANSIENT_ERRORS: &[u32] = &[1205, 1222, 3960, 40197, 40501, 40613, 49918, 49919, 49920];

/// Whether the driver error `e` is worth retrying after a backoff.
fn transient(e: &tiberius::error::Error) -> bool {
    use tiberius::error::Error as E;
    match e {
        E::Io { .. } | E::Routing { .. } => true,
        E::Server(token) => TRANSIENT_ERRORS.contains(&token.code()),
        _ => false,
    }
}

impl MssqlError {
    /// True when retrying may succeed: the server unreachable, a lost connection, a deadlock
    /// or lock timeout; false for definite refusals (constraint violations, permissions).
    pub fn is_transient(&self) -> bool {
        match self {
            MssqlError::Reach { .. } => true,
            MssqlError::Connect { source, .. } | MssqlError::Query { source, .. } => {
                transient(source)
            }
            MssqlError::Url(_) | MssqlError::PositionRow { .. } => false,
        }
    }

    /// Wraps a query error with what duplex was doing.
    pub fn query(doing: &'static str) -> impl FnOnce(tiberius::error::Error) -> MssqlError {
        move |source| MssqlError::Query { doing, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(source: tiberius::error::Error) -> MssqlError {
        MssqlError::Query {
            doing: "testing",
            source,
        }
    }

    #[test]
    fn lost_connections_are_retried_and_refusals_are_not() {
        let reset = tiberius::error::Error::Io {
            kind: std::io::ErrorKind::ConnectionReset,
            message: "reset".into(),
        };
        assert!(query(reset).is_transient());
        let protocol = tiberius::error::Error::Protocol("bad packet".into());
        assert!(!query(protocol).is_transient());
        let unreachable = MssqlError::Reach {
            target: "db:1433".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        };
        assert!(unreachable.is_transient());
        let row = MssqlError::PositionRow {
            site: "pg".into(),
            rows: 0,
        };
        assert!(!row.is_transient());
        assert!(row.to_string().contains("outside duplex"));
        assert!(TRANSIENT_ERRORS.contains(&1205));
    }
}
