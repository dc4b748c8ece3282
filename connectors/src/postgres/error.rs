//! PostgreSQL connector errors. The driver error is kept as the source: its SQLSTATE decides
//! whether an operation is retried.

use tokio_postgres::error::SqlState;

/// An error talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection URL does not parse.
    #[error("invalid PostgreSQL URL (expected postgres://user@host:port/dbname)")]
    Url(#[source] tokio_postgres::Error),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to PostgreSQL at {target}")]
    Connect {
        /// `user@host:port/dbname`.
        target: String,
        /// Driver error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The TLS parameters of the URL are wrong (the message names the parameter).
    #[error("invalid PostgreSQL TLS setting: {0}")]
    Tls(String),
    /// A statement failed.
    #[error("PostgreSQL query failed while {doing}")]
    Query {
        /// What duplex was doing.
        doing: &'static str,
        /// Driver error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl PgError {
    /// Wraps a query error with what duplex was doing.
    pub fn query(doing: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        move |source| PgError::Query { doing, source }
    }

    /// True when retrying later may succeed: the connection broke or could not be made, the
    /// server is starting or shutting down, or a serialization failure / deadlock. A server
    /// certificate the URL's TLS settings refuse, or a server without TLS under
    /// `sslmode=require` or stricter, is definite.
    pub fn is_transient(&self) -> bool {
        if let PgError::Connect { source, .. } = self
            && (crate::tls::certificate_refused(source)
                || std::error::Error::source(source)
                    .is_some_and(|e| e.to_string() == "server does not support TLS"))
        {
            return false;
        }
        let source = match self {
            PgError::Url(_) | PgError::Tls(_) => return false,
            PgError::Connect { source, .. } | PgError::Query { source, .. } => source,
        };
        match source.code() {
            None => source.is_closed() || matches!(self, PgError::Connect { .. }),
            Some(code) => {
                let class = &code.code()[..2];
                matches!(class, "08" | "53" | "57") && *code != SqlState::QUERY_CANCELED
                    || *code == SqlState::T_R_SERIALIZATION_FAILURE
                    || *code == SqlState::T_R_DEADLOCK_DETECTED
            }
        }
    }
}
