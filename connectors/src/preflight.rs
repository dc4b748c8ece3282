//! Findings of `duplex check`: one line each, with the exact fix when something is not ready;
//! and [`check_site`], which probes one site of any kind (each kind's own checks are in its
//! `preflight.rs`).
//!
//! Nothing is changed on any server: every probe is a read of settings or catalogs.

use std::fmt;

use crate::mssql::MssqlError;
use crate::mysql::MysqlError;
use crate::postgres::PgError;
use crate::{SiteConnection, SiteKind, TableName, TableSchema};

/// How a checked item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Ready.
    Ok,
    /// Works, but the DBA should know (e.g. a converted type).
    Warn,
    /// Not ready: replication cannot start until it is fixed.
    Fail,
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Ok, warning or failure.
    pub status: Status,
    /// What was checked and what was found, e.g. `wal_level = replica`.
    pub what: String,
    /// What to do about it (for warnings and failures).
    pub fix: Option<String>,
}

impl Finding {
    /// A ready item.
    pub fn ok(what: impl Into<String>) -> Finding {
        Finding {
            status: Status::Ok,
            what: what.into(),
            fix: None,
        }
    }

    /// An item that works with a caveat.
    pub fn warn(what: impl Into<String>, note: impl Into<String>) -> Finding {
        Finding {
            status: Status::Warn,
            what: what.into(),
            fix: Some(note.into()),
        }
    }

    /// An item that is not ready, with its fix.
    pub fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            status: Status::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    /// `ok` when the condition holds, else a failure with its fix.
    pub fn require(ready: bool, what: impl Into<String>, fix: impl Into<String>) -> Finding {
        if ready {
            Finding::ok(what)
        } else {
            Finding::fail(what, fix)
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "{tag}  {}", self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n        -> {fix}")?;
        }
        Ok(())
    }
}

/// The finding for a mapped table that does not exist.
pub fn missing_table(table: &TableName) -> Finding {
    Finding::fail(
        format!("table {table} does not exist"),
        "create it, or correct the table name in the mapping",
    )
}

/// The finding on a mapped table's primary key; `quoted` is the table name as the kind's SQL
/// writes it, for the fix.
pub fn primary_key(schema: &TableSchema, quoted: &str) -> Finding {
    key_columns(&schema.name, &schema.primary_key, quoted)
}

/// The finding on the primary-key columns `key` of `table` (`quoted` as in [`primary_key`]).
pub fn key_columns(table: &TableName, key: &[String], quoted: &str) -> Finding {
    if key.is_empty() {
        Finding::fail(
            format!("table {table} has no primary key"),
            format!(
                "duplex identifies rows by primary key: ALTER TABLE {quoted} ADD PRIMARY KEY (<columns>)"
            ),
        )
    } else {
        Finding::ok(format!("table {table}: primary key ({})", key.join(", ")))
    }
}

/// The finding about a connection's encryption: `version` is the TLS protocol version the
/// server reports (`None` for plaintext), `host` the URL's host, `setting` the URL's TLS
/// parameter as written (e.g. `sslmode=verify-full`, or the default). Plaintext is a warning
/// unless the host is a loopback address or a unix socket (nothing crosses a network).
pub fn encryption(host: Option<&str>, version: Option<&str>, setting: &str) -> Finding {
    match version {
        Some(version) => Finding::ok(format!("connection encrypted ({version}, {setting})")),
        None => {
            let loopback = match host {
                None => true,
                Some(host) => {
                    let bare = host.trim_start_matches('[').trim_end_matches(']');
                    bare == "localhost"
                        || bare.starts_with('/')
                        || bare
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                }
            };
            if loopback {
                Finding::ok(format!(
                    "connection not encrypted ({setting}; loopback host, nothing crosses a network)"
                ))
            } else {
                Finding::warn(
                    format!(
                        "connection to {} is not encrypted ({setting})",
                        host.unwrap_or_default()
                    ),
                    "passwords and rows cross the network in plaintext: turn TLS on at the server and set the URL's sslmode=verify-full (PostgreSQL) or ssl-mode=VERIFY_IDENTITY (MySQL/MariaDB)",
                )
            }
        }
    }
}

/// What duplex does with a table on a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableUse {
    /// Changes are read from it (and it is copied by backfill).
    pub read: bool,
    /// Changes are written into it.
    pub write: bool,
}

/// A probe of a site failed.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// On PostgreSQL.
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// On MySQL/MariaDB.
    #[error(transparent)]
    Mysql(#[from] MysqlError),
    /// On SQL Server.
    #[error(transparent)]
    Mssql(#[from] MssqlError),
}

/// One item of a site's check: a finding, or a probe that could not finish.
pub type Probe = Result<Finding, PreflightError>;

/// Checks one site: its server settings and privileges, then each of `tables` (with how it is
/// used). Returns `Err` when the site cannot be reached (nothing else was checked); otherwise
/// the items in order. Each table found is added to `found` with its description as soon as
/// it is checked, so a caller that gives up waiting keeps what was read until then.
///
/// PostgreSQL: a server probe that fails ends the check (the table checks need the same
/// catalogs); MySQL/MariaDB and SQL Server: the tables are checked regardless (a SQL Server
/// table only written into needs no capture instance).
pub async fn check_site(
    site: &SiteConnection,
    tables: &[(TableName, TableUse)],
    found: &mut Vec<(TableName, TableSchema)>,
) -> Result<Vec<Probe>, PreflightError> {
    let password = site.password();
    let mut items = Vec::new();
    match site.kind {
        SiteKind::Postgres => {
            let client = crate::postgres::connect(&site.url, password).await?;
            items.push(
                crate::postgres::check_encryption(&client, &site.url)
                    .await
                    .map_err(Into::into),
            );
            match crate::postgres::check_server(&client).await {
                Ok(server) => items.extend(server.into_iter().map(Ok)),
                Err(error) => return Ok(vec![Err(error.into())]),
            }
            for (table, usage) in tables {
                match crate::postgres::check_table(&client, table, *usage).await {
                    Ok((findings, info)) => {
                        items.extend(findings.into_iter().map(Ok));
                        if let Some(info) = info {
                            found.push((table.clone(), info.schema));
                        }
                    }
                    Err(error) => items.push(Err(error.into())),
                }
            }
        }
        SiteKind::Mysql => {
            let mut conn = crate::mysql::connect(&site.url, password).await?;
            items.push(
                crate::mysql::check_encryption(&mut conn, &site.url)
                    .await
                    .map_err(Into::into),
            );
            match crate::mysql::check_server(&mut conn).await {
                Ok(server) => items.extend(server.into_iter().map(Ok)),
                Err(error) => items.push(Err(error.into())),
            }
            for (table, _) in tables {
                match crate::mysql::check_table(&mut conn, table).await {
                    Ok((findings, info)) => {
                        items.extend(findings.into_iter().map(Ok));
                        if let Some(info) = info {
                            found.push((table.clone(), info.schema));
                        }
                    }
                    Err(error) => items.push(Err(error.into())),
                }
            }
            if let Err(error) = conn.disconnect().await {
                tracing::debug!(%error, "closing the MySQL check connection");
            }
        }
        SiteKind::Mssql => {
            use crate::mssql::preflight as mssql;
            let mut client = crate::mssql::connect(&site.url, password).await?;
            match mssql::probe_server(&mut client).await {
                Ok(server) => items.extend(mssql::check_server(&server).into_iter().map(Ok)),
                Err(error) => items.push(Err(error.into())),
            }
            for (table, usage) in tables {
                match mssql::probe_table(&mut client, table).await {
                    Ok(None) => items.push(Ok(Finding::fail(
                        format!("table {table} does not exist"),
                        "create it, or correct the table name in the mapping",
                    ))),
                    Ok(Some(facts)) => {
                        let findings = if usage.read {
                            mssql::check_table(&facts)
                        } else {
                            mssql::check_target_table(&facts)
                        };
                        items.extend(findings.into_iter().map(Ok));
                        found.push((table.clone(), crate::mssql::route::schema_of(&facts)));
                    }
                    Err(error) => items.push(Err(error.into())),
                }
            }
            if tables.iter().any(|(_, usage)| usage.read && usage.write) {
                let positions = crate::apply::positions_table();
                match mssql::probe_table(&mut client, &positions).await {
                    Ok(facts) => items.push(Ok(mssql::check_echo_capture(facts.as_ref()))),
                    Err(error) => items.push(Err(error.into())),
                }
            }
        }
    }
    Ok(items)
}

#[cfg(test)]
mod encryption_tests {
    use super::{Status, encryption};

    #[test]
    fn plaintext_is_a_warning_only_off_the_loopback() {
        let setting = "sslmode=prefer, the default";
        assert_eq!(
            encryption(Some("db.example.com"), None, setting).status,
            Status::Warn
        );
        assert_eq!(
            encryption(Some("10.0.0.7"), None, setting).status,
            Status::Warn
        );
        for host in [
            "127.0.0.1",
            "::1",
            "[::1]",
            "localhost",
            "/var/run/postgresql",
        ] {
            assert_eq!(
                encryption(Some(host), None, setting).status,
                Status::Ok,
                "{host}"
            );
        }
        let encrypted = encryption(Some("db.example.com"), Some("TLSv1.3"), setting);
        assert_eq!(encrypted.status, Status::Ok);
        assert_eq!(
            encrypted.what,
            "connection encrypted (TLSv1.3, sslmode=prefer, the default)"
        );
    }
}
