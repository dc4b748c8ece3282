//! The server-side objects a PostgreSQL change stream reads through: the publication that
//! lists the mapped tables, the logical replication slot that keeps the position, and the
//! settings of the replication session that streams from them; and what the publication lists
//! and the mapped tables' oids, which a stream checks to notice a table re-created under it.

use pgwire_replication::ReplicationConfig;
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
    let (url, tls) = super::split_url(&config.url)?;
    let parsed: tokio_postgres::Config = url.parse().map_err(PgError::Url)?;
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
        .with_tls(tls.replication())
        .with_start_lsn(pgwire_replication::Lsn(start.0))
        .with_ack_lsn(pgwire_replication::Lsn(ack.0))
        .with_status_interval(config.status_interval)
        // Every third of the inactivity timeout without a message, the status update asks
        // for a reply: a live server always answers within the timeout.
        .with_wakeup_interval(config.inactivity_timeout / 3)
        .with_reply_requested_when_idle(true)
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

/// Which slot name a site's stream uses (see [`super::slot_name`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NameChoice {
    /// The current name.
    Current,
    /// The name an earlier release gave it: a slot of that name is this deployment's.
    Legacy,
    /// A slot of the earlier name exists and claims no deployment: nobody can tell whose it is.
    Unclaimed,
}

/// Decides between the current and the legacy name of a site's slot. The current name wins
/// once a slot or publication of that name exists (the site moved to it already), when another
/// site of the configuration uses the legacy name now (sites `a-b` and `a_b`: the slot is
/// `a_b`'s), or when no slot of the legacy name exists (nothing to keep); a legacy slot is used only when its
/// publication names `deployment`: a slot claimed by another deployment is theirs (possibly of
/// a site whose clean name is the legacy name), and an unclaimed one, made by a release before
/// claims, may belong to either of the sites that shared it.
pub(super) fn choose(
    current_exists: bool,
    legacy_taken: bool,
    legacy_slot_exists: bool,
    legacy_owner: Option<&str>,
    deployment: &str,
) -> NameChoice {
    if current_exists || legacy_taken || !legacy_slot_exists {
        NameChoice::Current
    } else {
        match legacy_owner {
            Some(owner) if owner == deployment => NameChoice::Legacy,
            Some(_) => NameChoice::Current,
            None => NameChoice::Unclaimed,
        }
    }
}

/// The slot (and publication) name the stream of `site` uses for `deployment`: the current
/// one, or the one an earlier release gave it when that slot is this deployment's (see
/// [`choose`]), so that a site whose name needed escaping never silently starts from a new
/// empty slot. An unclaimed legacy slot is refused with the statements that settle it.
pub async fn choose_slot_name(
    site: &crate::SiteConnection,
    deployment: &str,
) -> Result<String, PgStreamError> {
    let current = super::slot_name(site);
    let Some(legacy) = super::legacy_slot_name(site) else {
        return Ok(current);
    };
    let client = &super::connect(&site.url, site.password()).await?;
    let exists = |sql: &'static str, name: String| async move {
        client
            .query_opt(sql, &[&name])
            .await
            .map(|row| row.is_some())
            .map_err(PgError::query("looking up a replication slot"))
    };
    let slot = "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1";
    let publication = "SELECT 1 FROM pg_publication WHERE pubname = $1";
    let current_exists =
        exists(slot, current.clone()).await? || exists(publication, current.clone()).await?;
    let taken = site.slot_names_taken.contains(&legacy);
    let legacy_exists = !current_exists && !taken && exists(slot, legacy.clone()).await?;
    let owner = if legacy_exists {
        super::claim::recorded(client, &legacy).await?
    } else {
        None
    };
    match choose(
        current_exists,
        taken,
        legacy_exists,
        owner.as_deref(),
        deployment,
    ) {
        NameChoice::Current => Ok(current),
        NameChoice::Legacy => {
            tracing::info!(site = %site.name, slot = %legacy, "keeping the replication slot and publication named as earlier releases of duplex named them (this deployment's)");
            Ok(legacy)
        }
        NameChoice::Unclaimed => Err(PgStreamError::Slot {
            name: legacy.clone(),
            problem: format!(
                "it is named as earlier releases of duplex named the slot of site {site} (now \
                 {current}, since names that needed escaping could collide), and its publication \
                 records no deployment, so duplex cannot tell whether it holds this site's \
                 position or that of another site whose name escapes alike. If it is site \
                 {site}'s, claim it for this deployment and start again: COMMENT ON PUBLICATION \
                 {legacy} IS 'duplex deployment {deployment}'; if it is not, start again after \
                 claiming it for its own deployment the same way (this site then gets a new slot \
                 {current}: copy its tables with `duplex backfill`)",
                site = site.name,
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{NameChoice, choose};

    #[test]
    fn the_legacy_name_is_kept_only_for_this_deployments_slot() {
        assert_eq!(
            choose(true, false, true, Some("me"), "me"),
            NameChoice::Current
        );
        assert_eq!(choose(false, false, false, None, "me"), NameChoice::Current);
        assert_eq!(
            choose(false, false, true, Some("me"), "me"),
            NameChoice::Legacy
        );
        assert_eq!(
            choose(false, true, true, Some("me"), "me"),
            NameChoice::Current
        );
        assert_eq!(
            choose(false, false, true, Some("other"), "me"),
            NameChoice::Current
        );
        assert_eq!(
            choose(false, false, true, None, "me"),
            NameChoice::Unclaimed
        );
        assert_eq!(choose(false, true, true, None, "me"), NameChoice::Current);
    }
}
