//! `duplex check` for PostgreSQL: is the server ready for logical replication, and are the
//! mapped tables replicable?

use tokio_postgres::Client;

use crate::TableName;
use crate::preflight::{self, Finding, TableUse};

use super::{PgError, ReplicaIdentity, TableInfo, describe_table, quote_ident};

/// Whether the connection `client` (opened from `url`) is encrypted, and with which TLS version.
pub async fn check_encryption(client: &Client, url: &str) -> Result<Finding, PgError> {
    let row = client
        .query_one(
            "SELECT ssl, coalesce(version, '') FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(PgError::query(
            "reading the connection's encryption (pg_stat_ssl)",
        ))?;
    let (ssl, version): (bool, String) = (row.get(0), row.get(1));
    let (stripped, tls) = super::split_url(url)?;
    let host = stripped
        .parse::<tokio_postgres::Config>()
        .ok()
        .and_then(|c| {
            c.get_hosts().first().map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
        });
    let setting = match (tls.mode, url.contains("sslmode")) {
        (_, false) => "sslmode=prefer, the default".to_owned(),
        (super::PgSslMode::Disable, _) => "sslmode=disable".to_owned(),
        (super::PgSslMode::Prefer, _) => "sslmode=prefer".to_owned(),
        (super::PgSslMode::Require, _) => {
            "sslmode=require: the certificate is not verified".to_owned()
        }
        (super::PgSslMode::VerifyCa, _) => {
            "sslmode=verify-ca: chain verified, host name not".to_owned()
        }
        (super::PgSslMode::VerifyFull, _) => {
            "sslmode=verify-full: chain and host name verified".to_owned()
        }
    };
    let version = ssl.then_some(version.as_str());
    Ok(preflight::encryption(host.as_deref(), version, &setting))
}

/// Server-wide readiness: version, `wal_level`, free replication slots and WAL senders, and the
/// REPLICATION privilege of the connecting role.
pub async fn check_server(client: &Client) -> Result<Vec<Finding>, PgError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, \
                    current_setting('server_version'), \
                    current_setting('wal_level'), \
                    current_setting('max_replication_slots')::int, \
                    (SELECT count(*)::int FROM pg_replication_slots), \
                    current_setting('max_wal_senders')::int, \
                    (SELECT count(*)::int FROM pg_stat_replication), \
                    current_user::text, \
                    (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await
        .map_err(PgError::query("reading server settings"))?;
    let version_num: i32 = row.get(0);
    let version: String = row.get(1);
    let wal_level: String = row.get(2);
    let (max_slots, used_slots): (i32, i32) = (row.get(3), row.get(4));
    let (max_senders, used_senders): (i32, i32) = (row.get(5), row.get(6));
    let user: String = row.get(7);
    let can_replicate: bool = row.get::<_, Option<bool>>(8).unwrap_or(false);
    Ok(vec![
        Finding::require(
            version_num >= 100_000,
            format!("PostgreSQL version {version}"),
            "logical replication with pgoutput needs PostgreSQL 10 or newer: upgrade the server",
        ),
        Finding::require(
            wal_level == "logical",
            format!("wal_level = {wal_level}"),
            "set wal_level = logical (ALTER SYSTEM SET wal_level = logical, or in postgresql.conf) \
             and restart PostgreSQL",
        ),
        Finding::require(
            used_slots < max_slots,
            format!(
                "replication slots: {used_slots} of max_replication_slots = {max_slots} in use"
            ),
            format!(
                "duplex needs one free slot per PostgreSQL source: raise max_replication_slots \
                 (e.g. to {}) and restart PostgreSQL, or drop unused slots (SELECT \
                 pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active)",
                max_slots.max(used_slots) + 4
            ),
        ),
        Finding::require(
            used_senders < max_senders,
            format!("WAL senders: {used_senders} of max_wal_senders = {max_senders} in use"),
            format!(
                "duplex needs one free WAL sender per PostgreSQL source: raise max_wal_senders \
                 (e.g. to {}) and restart PostgreSQL",
                max_senders.max(used_senders) + 4
            ),
        ),
        Finding::require(
            can_replicate,
            format!("role {user} has the REPLICATION privilege"),
            format!(
                "as a superuser run: ALTER ROLE {} REPLICATION",
                quote_ident(&user)
            ),
        ),
    ])
}

/// Checks one mapped table: it exists, has a primary key, a replica identity that logs
/// updates and deletes, and the privileges duplex needs. Returns the findings and, when the
/// table exists, its description.
pub async fn check_table(
    client: &Client,
    table: &TableName,
    usage: TableUse,
) -> Result<(Vec<Finding>, Option<TableInfo>), PgError> {
    let Some(info) = describe_table(client, table).await? else {
        return Ok((vec![preflight::missing_table(table)], None));
    };
    let quoted = format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    );
    let mut findings = vec![preflight::primary_key(&info.schema, &quoted)];
    if usage.read {
        findings.push(match info.replica_identity {
            ReplicaIdentity::Nothing => Finding::fail(
                format!(
                    "table {table}: REPLICA IDENTITY NOTHING (updates and deletes are not logged)"
                ),
                format!("ALTER TABLE {quoted} REPLICA IDENTITY DEFAULT"),
            ),
            ReplicaIdentity::Index => Finding::warn(
                format!("table {table}: REPLICA IDENTITY USING INDEX"),
                format!(
                    "the WAL identifies rows by that index, not the primary key: prefer \
                     ALTER TABLE {quoted} REPLICA IDENTITY DEFAULT (or FULL)"
                ),
            ),
            ReplicaIdentity::Default => {
                Finding::ok(format!("table {table}: REPLICA IDENTITY DEFAULT"))
            }
            ReplicaIdentity::Full => Finding::ok(format!("table {table}: REPLICA IDENTITY FULL")),
        });
    }
    let mut needed = Vec::new();
    if usage.read {
        needed.push("SELECT");
    }
    if usage.write {
        needed.extend(["SELECT", "INSERT", "UPDATE", "DELETE"]);
    }
    needed.dedup();
    let mut missing = Vec::new();
    for privilege in needed.iter().copied() {
        let granted: bool = client
            .query_one(
                "SELECT has_table_privilege($1::oid, $2)",
                &[&info.oid, &privilege],
            )
            .await
            .map_err(PgError::query("checking table privileges"))?
            .get(0);
        if !granted {
            missing.push(privilege);
        }
    }
    if !needed.is_empty() {
        let user: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .map_err(PgError::query("checking table privileges"))?
            .get(0);
        findings.push(Finding::require(
            missing.is_empty(),
            format!("table {table}: {user} may {}", needed.join(", ")),
            format!(
                "GRANT {} ON {quoted} TO {}",
                missing.join(", "),
                quote_ident(&user)
            ),
        ));
    }
    Ok((findings, Some(info)))
}
