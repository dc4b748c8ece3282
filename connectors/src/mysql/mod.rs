//! MySQL and MariaDB: binlog positions, catalog reading and preflight checks (the binlog
//! reader, snapshot and applier build on these).

mod apply;
mod binlog_error;
mod catalog;
mod ddl;
mod digest;
mod error;
pub(crate) mod head;
mod load;
mod param;
mod position;
mod positions;
mod preflight;
mod snapshot;
mod sql;
mod stream;
pub mod teardown;
mod tls;
mod types;
mod verify;

pub use apply::{MysqlApplier, MysqlSession};
pub use binlog_error::MysqlStreamError;
pub use catalog::{TableInfo, collations, describe_table, table_names};
pub use error::MysqlError;
pub use load::{
    delete_position, delete_positions_like, position_sources, rename_position, table_is_empty,
    target_foreign_keys,
};
pub use position::BinlogPosition;
pub use positions::{CLAIMS_DDL, POSITIONS_DDL};
pub use preflight::{check_encryption, check_server, check_table};
pub use snapshot::{MysqlSnapshot, MysqlSnapshotError};
pub use stream::{MysqlStream, MysqlStreamConfig, StartPosition};
pub use tls::{MysqlSslMode, MysqlTls, split_url};
pub use types::TypeError;
pub use verify::recorded_position;

use mysql_async::{Conn, Opts, OptsBuilder};

/// Connects with an ordinary session. `password`, when given, overrides any password in the
/// URL.
pub async fn connect(url: &str, password: Option<&str>) -> Result<Conn, MysqlError> {
    let (builder, tls_preferred) = options(url, password)?;
    open_conn(Opts::from(builder), tls_preferred).await
}

/// The driver options of `url` (TLS parameters applied, keepalives set) and whether its TLS
/// setting is PREFERRED (see [`open_conn`]). `password`, when given, overrides any password in
/// the URL.
pub(crate) fn options(
    url: &str,
    password: Option<&str>,
) -> Result<(OptsBuilder, bool), MysqlError> {
    let (url, tls) = split_url(url)?;
    let opts = Opts::from_url(&url).map_err(MysqlError::Url)?;
    let preferred = tls.preferred(&opts);
    let mut builder = tls.apply(with_keepalive(OptsBuilder::from_opts(opts)));
    if let Some(password) = password {
        builder = builder.pass(Some(password));
    }
    Ok((builder, preferred))
}

/// `user@host:port/database` for messages (never the password).
fn describe_target(opts: &Opts) -> String {
    format!(
        "{}@{}:{}/{}",
        opts.user().unwrap_or("?"),
        opts.ip_or_hostname(),
        opts.tcp_port(),
        opts.db_name().unwrap_or("")
    )
}

/// How long opening a connection may take (PostgreSQL connections have the same limit).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// TCP keepalives after 30 s of silence unless the URL chose (`tcp_keepalive=<ms>`): a peer gone
/// silently is noticed in about a minute instead of the kernel's two hours. Only the peer's
/// kernel answers them, so a long statement is never cut short.
pub(crate) fn with_keepalive(builder: OptsBuilder) -> OptsBuilder {
    if Opts::from(builder.clone()).tcp_keepalive().is_some() {
        return builder;
    }
    builder.tcp_keepalive(Some(std::time::Duration::from_secs(30)))
}

/// Opens a connection, giving up after [`CONNECT_TIMEOUT`] (an unreachable host that drops
/// packets would otherwise take the kernel's minutes). With `tls_preferred` (`ssl-mode`
/// PREFERRED), a server whose handshake offers no TLS is connected to again in plaintext; a
/// server that offers TLS is never.
pub(crate) async fn open_conn(opts: Opts, tls_preferred: bool) -> Result<Conn, MysqlError> {
    match open_once(opts.clone()).await {
        Err(MysqlError::Connect {
            source: mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer),
            ..
        }) if tls_preferred && opts.ssl_opts().is_some() => {
            open_once(OptsBuilder::from_opts(opts).ssl_opts(None).into()).await
        }
        other => other,
    }
}

async fn open_once(opts: Opts) -> Result<Conn, MysqlError> {
    let target = describe_target(&opts);
    match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
        Ok(conn) => conn.map_err(|source| MysqlError::Connect { target, source }),
        Err(_) => Err(MysqlError::Connect {
            target,
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {CONNECT_TIMEOUT:?}"),
            )
            .into(),
        }),
    }
}

/// Quotes an identifier for MySQL (`` `a``b` ``).
pub fn quote_ident(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(super::quote_ident("we`ird"), "`we``ird`");
    }
}
