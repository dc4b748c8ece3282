//! MySQL and MariaDB: binlog positions, catalog reading and preflight checks (the binlog
//! reader, snapshot and applier build on these).

mod apply;
mod binlog_error;
mod catalog;
mod ddl;
mod error;
mod load;
mod param;
mod position;
mod positions;
mod preflight;
mod snapshot;
mod stream;
mod types;

pub use apply::{MysqlApplier, MysqlSession};
pub use binlog_error::MysqlStreamError;
pub use catalog::{TableInfo, describe_table};
pub use error::MysqlError;
pub use load::{
    delete_position, delete_positions_like, position_sources, rename_position, table_is_empty,
};
pub use position::BinlogPosition;
pub use positions::{CLAIMS_DDL, POSITIONS_DDL};
pub use preflight::{check_server, check_table};
pub use snapshot::{MysqlSnapshot, MysqlSnapshotError};
pub use stream::{MysqlStream, MysqlStreamConfig, StartPosition};
pub use types::TypeError;

use mysql_async::{Conn, Opts, OptsBuilder};

/// Connects with an ordinary session. `password`, when given, overrides any password in the
/// URL.
pub async fn connect(url: &str, password: Option<&str>) -> Result<Conn, MysqlError> {
    let opts = Opts::from_url(url).map_err(MysqlError::Url)?;
    let target = format!(
        "{}@{}:{}/{}",
        opts.user().unwrap_or("?"),
        opts.ip_or_hostname(),
        opts.tcp_port(),
        opts.db_name().unwrap_or("")
    );
    let mut builder = OptsBuilder::from_opts(opts);
    if let Some(password) = password {
        builder = builder.pass(Some(password));
    }
    Conn::new(builder)
        .await
        .map_err(|source| MysqlError::Connect { target, source })
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
