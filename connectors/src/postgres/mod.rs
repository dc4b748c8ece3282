//! PostgreSQL: positions, catalog reading and preflight checks (the change stream, snapshot and
//! applier build on these).

mod apply;
mod catalog;
pub mod claim;
mod copy;
mod error;
mod load;
mod param;
pub mod pgoutput;
mod position;
mod positions;
mod preflight;
mod slot;
mod snapshot;
mod stream;
pub mod types;

pub use apply::{PgApplier, PgSession};
pub use catalog::{ReplicaIdentity, TableInfo, describe_table};
pub use error::PgError;
pub use load::{
    delete_position, delete_positions_like, position_sources, rename_position, table_is_empty,
};
pub use position::{Lsn, LsnParseError};
pub use positions::{CLAIMS_DDL, POSITIONS_DDL};
pub use preflight::{check_server, check_table};
pub use slot::ensure_publication;
pub(crate) use snapshot::backfill_snapshot;
pub use snapshot::{PgExportedSnapshot, PgSnapshotError, PgSnapshotReader};
pub use stream::{PgStream, PgStreamConfig, PgStreamError};

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

/// Connects as an ordinary (non-replication) session. `password`, when given, overrides any
/// password in the URL. The connection task runs on the current tokio runtime.
pub async fn connect(url: &str, password: Option<&str>) -> Result<Client, PgError> {
    let mut config: tokio_postgres::Config = url.parse().map_err(PgError::Url)?;
    if let Some(password) = password {
        config.password(password);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("duplex");
    let target = describe_target(&config);
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|source| PgError::Connect {
            target: target.clone(),
            source,
        })?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%target, %error, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

/// `user@host:port/dbname` for messages (never the password).
fn describe_target(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

/// The replication slot and publication names duplex uses for a PostgreSQL site:
/// `duplex_<database>_<site>`, every character that is not a lower-case letter or digit
/// written as `_`, at most 63 characters. Slot names are global to a PostgreSQL server, so
/// the database keeps two deployments reading different databases apart.
pub fn slot_name(site: &crate::SiteConnection) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("duplex_{}_{}", clean(&site.database()), clean(&site.name));
    name.truncate(63);
    name
}

/// Quotes an identifier for PostgreSQL (`"a""b"`).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(super::quote_ident(r#"we"ird"#), r#""we""ird""#);
    }
}
