//! MySQL/MariaDB connector errors. The driver error is kept as the source: its error code
//! decides whether an operation is retried.

/// An error talking to MySQL or MariaDB.
#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    /// The connection URL does not parse.
    #[error("invalid MySQL URL (expected mysql://user@host:port/database)")]
    Url(#[source] mysql_async::UrlError),
    /// The server could not be reached or refused the login.
    #[error("cannot connect to MySQL/MariaDB at {target}")]
    Connect {
        /// `user@host:port/database`.
        target: String,
        /// Driver error.
        #[source]
        source: mysql_async::Error,
    },
    /// The TLS parameters of the URL are wrong (the message names the parameter).
    #[error("invalid MySQL/MariaDB TLS setting: {0}")]
    Tls(String),
    /// A statement failed.
    #[error("MySQL/MariaDB query failed while {doing}")]
    Query {
        /// What duplex was doing.
        doing: &'static str,
        /// Driver error.
        #[source]
        source: mysql_async::Error,
    },
}

impl MysqlError {
    /// Wraps a query error with what duplex was doing.
    pub fn query(doing: &'static str) -> impl FnOnce(mysql_async::Error) -> MysqlError {
        move |source| MysqlError::Query { doing, source }
    }

    /// True when retrying later may succeed: I/O and driver-level connection failures,
    /// deadlocks and lock wait timeouts, the server going away or shutting down.
    pub fn is_transient(&self) -> bool {
        let source = match self {
            MysqlError::Url(_) | MysqlError::Tls(_) => return false,
            // A server certificate the URL's TLS settings refuse, or a server without TLS
            // under ssl-mode=REQUIRED or stricter: the same on every attempt.
            MysqlError::Connect { source, .. }
                if crate::tls::certificate_refused(source)
                    || matches!(
                        source,
                        mysql_async::Error::Driver(
                            mysql_async::DriverError::NoClientSslFlagFromServer
                        )
                    ) =>
            {
                return false;
            }
            MysqlError::Connect { source, .. } | MysqlError::Query { source, .. } => source,
        };
        match source {
            mysql_async::Error::Io(_) | mysql_async::Error::Driver(_) => true,
            // 1205 lock wait timeout, 1213 deadlock, 1053 server shutdown, 2006/2013 gone away,
            // 1040 too many connections.
            mysql_async::Error::Server(e) => {
                matches!(e.code, 1205 | 1213 | 1053 | 2006 | 2013 | 1040)
            }
            _ => false,
        }
    }
}
