//! `duplex check` for MySQL/MariaDB: is the row binlog on with full images and metadata, may
//! the user read it, and are the mapped tables replicable?

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::TableName;
use crate::preflight::{self, Finding};

use super::{MysqlError, TableInfo, describe_table, quote_ident};

/// Whether the connection `conn` (opened from `url`) is encrypted, and with which TLS version.
pub async fn check_encryption(conn: &mut Conn, url: &str) -> Result<Finding, MysqlError> {
    let row: Option<(String, String)> = conn
        .query_first("SHOW SESSION STATUS LIKE 'Ssl_version'")
        .await
        .map_err(MysqlError::query(
            "reading the connection's encryption (Ssl_version)",
        ))?;
    let version = row.map(|(_, v)| v).filter(|v| !v.is_empty());
    let (_, tls) = super::split_url(url)?;
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned));
    let setting = match tls.mode {
        None if url.contains("require_ssl=true") => "require_ssl=true".to_owned(),
        None => "ssl-mode=PREFERRED, the default".to_owned(),
        Some(super::MysqlSslMode::Disabled) => "ssl-mode=DISABLED".to_owned(),
        Some(super::MysqlSslMode::Preferred) => "ssl-mode=PREFERRED".to_owned(),
        Some(super::MysqlSslMode::Required) => {
            "ssl-mode=REQUIRED: the certificate is not verified".to_owned()
        }
        Some(super::MysqlSslMode::VerifyCa) => {
            "ssl-mode=VERIFY_CA: chain verified, host name not".to_owned()
        }
        Some(super::MysqlSslMode::VerifyIdentity) => {
            "ssl-mode=VERIFY_IDENTITY: chain and host name verified".to_owned()
        }
    };
    Ok(preflight::encryption(
        host.as_deref(),
        version.as_deref(),
        &setting,
    ))
}

/// Server-wide readiness: binlog on, ROW format, FULL row image and metadata, a server id,
/// and the replication privileges of the connecting user.
pub async fn check_server(conn: &mut Conn) -> Result<Vec<Finding>, MysqlError> {
    let variables: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN \
             ('version', 'log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata', 'server_id')",
        )
        .await
        .map_err(MysqlError::query("reading server variables"))?;
    let var = |name: &str| {
        variables
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let version = var("version").unwrap_or("unknown");
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let restart_note = if mariadb { "MariaDB" } else { "MySQL" };
    let mut findings = vec![Finding::ok(format!("server version {version}"))];
    let log_bin = var("log_bin").unwrap_or("OFF");
    findings.push(Finding::require(
        log_bin.eq_ignore_ascii_case("ON") || log_bin == "1",
        format!("log_bin = {log_bin}"),
        format!(
            "enable the binary log: add log_bin = mysql-bin and a unique server_id under [mysqld] \
             in the server's configuration and restart {restart_note}"
        ),
    ));
    for (name, want) in [
        ("binlog_format", "ROW"),
        ("binlog_row_image", "FULL"),
        ("binlog_row_metadata", "FULL"),
    ] {
        let fix = format!(
            "SET GLOBAL {name} = {want}; and put {name} = {want} under [mysqld] in the server's \
             configuration so it survives a restart"
        );
        findings.push(match var(name) {
            Some(value) => Finding::require(value.eq_ignore_ascii_case(want), format!("{name} = {value}"), fix),
            None => Finding::fail(
                format!("{name} is not known to this server"),
                "duplex needs MariaDB 10.5+ or MySQL 8.0+ (for binlog_row_metadata): upgrade the server",
            ),
        });
    }
    let server_id = var("server_id").unwrap_or("0");
    findings.push(Finding::require(
        server_id != "0",
        format!("server_id = {server_id}"),
        "set a non-zero server_id under [mysqld] and restart",
    ));
    let grants: Vec<String> = conn
        .query("SHOW GRANTS")
        .await
        .map_err(MysqlError::query("reading the user's grants"))?;
    let global: Vec<String> = grants
        .iter()
        .map(|g| g.to_ascii_uppercase())
        .filter(|g| g.contains(" ON *.* "))
        .collect();
    let has = |privilege: &str| {
        global
            .iter()
            .any(|g| g.contains("ALL PRIVILEGES") || g.contains(privilege))
    };
    let user: String = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .map_err(MysqlError::query("reading the current user"))?
        .unwrap_or_default();
    let quoted_user = match user.rsplit_once('@') {
        Some((name, host)) => format!("'{name}'@'{host}'"),
        None => format!("'{user}'"),
    };
    let monitor = if mariadb {
        "BINLOG MONITOR"
    } else {
        "REPLICATION CLIENT"
    };
    let mut missing = Vec::new();
    if !has("REPLICATION SLAVE") {
        missing.push("REPLICATION SLAVE");
    }
    if !has("BINLOG MONITOR") && !has("REPLICATION CLIENT") {
        missing.push(monitor);
    }
    findings.push(Finding::require(
        missing.is_empty(),
        format!("user {user} may read the binlog (REPLICATION SLAVE, {monitor})"),
        format!("GRANT {} ON *.* TO {quoted_user}", missing.join(", ")),
    ));
    Ok(findings)
}

/// Checks one mapped table: it exists, has a primary key and is transactional (InnoDB).
pub async fn check_table(
    conn: &mut Conn,
    table: &TableName,
) -> Result<(Vec<Finding>, Option<TableInfo>), MysqlError> {
    let Some(info) = describe_table(conn, table).await? else {
        return Ok((vec![preflight::missing_table(table)], None));
    };
    let quoted = format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    );
    let mut findings = vec![preflight::primary_key(&info.schema, &quoted)];
    findings.push(Finding::require(
        info.engine.eq_ignore_ascii_case("InnoDB"),
        format!("table {table}: engine {}", info.engine),
        format!(
            "duplex needs a transactional engine for consistent snapshots and atomic applies: \
             ALTER TABLE {quoted} ENGINE = InnoDB"
        ),
    ));
    Ok((findings, Some(info)))
}
