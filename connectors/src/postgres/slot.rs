//! The server-side objects a PostgreSQL change stream reads through: the publication that
//! lists the mapped tables, the logical replication slot that keeps the position, and the
//! settings of the replication session that streams from them; and what the publication lists
//! and the mapped tables' oids, which a stream checks to notice a table re-created under it.

use pgwire_replication::{ReplicationConfig, TlsConfig};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::TableName;

use super::stream::{PgStreamConfig, PgStreamError};
use super::types;
use super::{Lsn, PgError, quote_ident};

/// Makes the publication `name` list exactly `tables` (creating it when missing). A
/// publication FOR ALL TABLES is refused: duplex would read more than it maps.
pub async fn ensure_publication(
    client: &Client,
    name: &str,
    tables: &[TableName],
) -> Result<(), PgStreamError> {
    let failed = |source| PgStreamError::Publication {
        name: name.to_owned(),
        source,
    };
    let list = tables
        .iter()
        .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let exists = client
        .query_opt(
            "SELECT puballtables FROM pg_publication WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(|e| failed(PgError::query("looking up the publication")(e)))?;
    let sql = match exists {
        Some(row) if row.get::<_, bool>(0) => {
            return Err(PgStreamError::PublicationForAllTables(name.to_owned()));
        }
        Some(_) => format!("ALTER PUBLICATION {} SET TABLE {list}", quote_ident(name)),
        None => format!("CREATE PUBLICATION {} FOR TABLE {list}", quote_ident(name)),
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| failed(PgError::query("creating or altering the publication")(e)))
}

/// Makes sure the logical slot exists in this database (creating it with `pgoutput` when
/// `create` allows) and returns its `confirmed_flush_lsn`.
pub(super) async fn ensure_slot(
    client: &Client,
    slot: &str,
    create: bool,
) -> Result<Lsn, PgStreamError> {
    let problem = |problem: String| PgStreamError::Slot {
        name: slot.to_owned(),
        problem,
    };
    for _ in 0..2 {
        let row = client
            .query_opt(
                "SELECT plugin::text, slot_type, database::text = current_database()::text, \
                        confirmed_flush_lsn::text \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(PgError::query("looking up the replication slot"))?;
        if let Some(row) = row {
            let plugin: Option<String> = row.get(0);
            let kind: String = row.get(1);
            let same_db: Option<bool> = row.get(2);
            let confirmed: Option<String> = row.get(3);
            if kind != "logical" || plugin.as_deref() != Some("pgoutput") {
                return Err(problem(format!(
                    "it is a {kind} slot with plugin {}; duplex needs a logical pgoutput slot: \
                     choose another slot name",
                    plugin.as_deref().unwrap_or("none")
                )));
            }
            if same_db != Some(true) {
                return Err(problem(
                    "it belongs to another database: choose another slot name".into(),
                ));
            }
            let confirmed = confirmed.ok_or_else(|| {
                problem("it has no confirmed position yet (still being created?)".into())
            })?;
            return confirmed
                .parse()
                .map_err(|_| problem(format!("unreadable confirmed_flush_lsn {confirmed:?}")));
        }
        if !create {
            return Err(PgStreamError::SlotLost {
                name: slot.to_owned(),
                problem: "does not exist, so the changes since the targets' positions cannot be \
                          read any more: the mapped tables must be copied again"
                    .into(),
            });
        }
        match client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await
        {
            Ok(_) => tracing::info!(%slot, "created replication slot"),
            // Someone created it meanwhile: look again.
            Err(e) if e.code() == Some(&SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(PgError::query("creating the replication slot")(e).into()),
        }
    }
    Err(problem(
        "created but not found; is another process dropping it?".into(),
    ))
}

/// The pgwire-replication settings for `config`, starting at `start` and reporting `ack` as
/// flushed until the caller acknowledges more. `ack` must be a position the slot already
/// holds (its confirmed position, or the start when that is lower): the start itself may be
/// beyond what some reader of the slot has (a backfill's catch-up starts at its snapshot,
/// possibly past a stopped link's position), and confirming it would let the server drop
/// what that reader still needs.
pub(super) fn replication_config(
    config: &PgStreamConfig,
    start: Lsn,
    ack: Lsn,
) -> Result<ReplicationConfig, PgStreamError> {
    let parsed: tokio_postgres::Config = config.url.parse().map_err(PgError::Url)?;
    let user = parsed
        .get_user()
        .ok_or(PgStreamError::Url("the URL names no user"))?;
    let database = parsed.get_dbname().unwrap_or(user);
    let password = match &config.password {
        Some(p) => p.clone(),
        None => parsed
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
    };
    let port = parsed.get_ports().first().copied().unwrap_or(5432);
    let (slot, publication) = (config.slot.as_str(), config.publication.as_str());
    let base = match parsed.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => {
            ReplicationConfig::new(host, user, password, database, slot, publication)
                .with_port(port)
        }
        Some(tokio_postgres::config::Host::Unix(dir)) => ReplicationConfig::unix(
            dir.to_string_lossy(),
            port,
            user,
            password,
            database,
            slot,
            publication,
        ),
        None => ReplicationConfig::new("localhost", user, password, database, slot, publication)
            .with_port(port),
    };
    Ok(base
        .with_tls(TlsConfig::disabled())
        .with_start_lsn(pgwire_replication::Lsn(start.0))
        .with_ack_lsn(pgwire_replication::Lsn(ack.0))
        .with_status_interval(config.status_interval)
        .with_wakeup_interval(config.status_interval)
        .with_buffer_size(config.buffer_events)
        .with_options(types::SESSION_OPTIONS)
        .with_application_name(format!("duplex {}", config.source)))
}

/// The oid of each table (`None`: no such table).
pub(super) async fn table_oids(
    client: &Client,
    tables: &[TableName],
) -> Result<Vec<(TableName, Option<u32>)>, PgStreamError> {
    let mut ids = Vec::with_capacity(tables.len());
    for table in tables {
        let row = client
            .query_opt(
                "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(PgError::query("looking up a mapped table's oid"))?;
        ids.push((table.clone(), row.map(|r| r.get::<_, u32>(0))));
    }
    Ok(ids)
}

/// The tables publication `name` lists (`None`: no such publication).
pub(super) async fn published_tables(
    client: &Client,
    name: &str,
) -> Result<Option<std::collections::HashSet<TableName>>, PgStreamError> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(PgError::query("looking up the publication"))?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&name],
        )
        .await
        .map_err(PgError::query("listing the publication's tables"))?;
    Ok(Some(
        rows.iter()
            .map(|r| TableName::new(r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect(),
    ))
}
