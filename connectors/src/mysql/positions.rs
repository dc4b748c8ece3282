//! `duplex.positions` on MySQL/MariaDB (database `duplex`, shared by every database on the
//! server, so source site names must be unique per target server): the one place that spells
//! its SQL. The applier reads a source's row under a row lock and INSERTs or UPDATEs it in its
//! target transaction (see [`crate::apply`] for why that makes delivery exactly once), reads
//! the committed position, and creates the table on first use.
//!
//! The position is stored as the JSON text of [`Position`]; `applied_at` is the target's
//! `UTC_TIMESTAMP(6)` of the transaction that recorded it.

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::Position;
use crate::apply::{ApplyError, parse_position, position_text};

use super::MysqlError;

/// The bookkeeping database and table, as the applier creates them on first use (a DBA who
/// does not grant duplex CREATE runs this beforehand); two statements.
pub const POSITIONS_DDL: &str = "CREATE DATABASE IF NOT EXISTS duplex CHARACTER SET utf8mb4 COLLATE utf8mb4_bin; \
     CREATE TABLE IF NOT EXISTS duplex.positions ( \
         source VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
         position TEXT NOT NULL, \
         applied_at DATETIME(6) NOT NULL \
     ) ENGINE = InnoDB";

/// Creates database `duplex` and `duplex.positions` unless they exist.
pub(super) async fn ensure_table(conn: &mut Conn) -> Result<(), ApplyError> {
    ensure(
        conn,
        "positions",
        POSITIONS_DDL,
        "creating duplex.positions",
    )
    .await
}

/// Runs the statements of `ddl` unless `duplex.<table>` exists.
async fn ensure(
    conn: &mut Conn,
    table: &'static str,
    ddl: &str,
    creating: &'static str,
) -> Result<(), ApplyError> {
    // `table` is one of this module's names, never input.
    let exists: Option<u8> = conn
        .query_first(format!(
            "SELECT 1 FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = 'duplex' AND TABLE_NAME = '{table}'"
        ))
        .await
        .map_err(MysqlError::query("looking for a duplex bookkeeping table"))?;
    if exists.is_some() {
        return Ok(());
    }
    for statement in ddl.split(';') {
        conn.query_drop(statement)
            .await
            .map_err(MysqlError::query(creating))?;
    }
    Ok(())
}

/// The recorded position of `site`, read under a row lock inside the open transaction.
pub(super) async fn locked(conn: &mut Conn, site: &str) -> Result<Option<Position>, ApplyError> {
    let text: Option<String> = conn
        .exec_first(
            "SELECT position FROM duplex.positions WHERE source = ? FOR UPDATE",
            (site,),
        )
        .await
        .map_err(MysqlError::query("reading duplex.positions"))?;
    text.map(|t| parse_position(site, t)).transpose()
}

/// The committed position of `site`.
pub(super) async fn committed(conn: &mut Conn, site: &str) -> Result<Option<Position>, ApplyError> {
    let text: Option<String> = conn
        .exec_first(
            "SELECT position FROM duplex.positions WHERE source = ?",
            (site,),
        )
        .await
        .map_err(MysqlError::query("reading duplex.positions"))?;
    text.map(|text| parse_position(site, text)).transpose()
}

/// Records `position` of `site` in the open transaction. The first position of a source is
/// inserted, never upserted: of two appliers racing on a new source, the second fails here
/// instead of applying again.
pub(super) async fn record(
    conn: &mut Conn,
    site: &str,
    position: &Position,
    update: bool,
) -> Result<(), ApplyError> {
    let sql = if update {
        "UPDATE duplex.positions SET position = ?, applied_at = UTC_TIMESTAMP(6) \
         WHERE source = ?"
    } else {
        "INSERT INTO duplex.positions (position, source, applied_at) \
         VALUES (?, ?, UTC_TIMESTAMP(6))"
    };
    conn.exec_drop(sql, (position_text(position), site))
        .await
        .map_err(MysqlError::query(
            "recording the position in duplex.positions",
        ))?;
    Ok(())
}

/// The table of engine claims (see [`crate::apply::WriterClaim`]): which deployment owns the
/// outbox counter named by `scope`; two statements.
pub const CLAIMS_DDL: &str = "CREATE DATABASE IF NOT EXISTS duplex CHARACTER SET utf8mb4 COLLATE utf8mb4_bin; \
     CREATE TABLE IF NOT EXISTS duplex.claims ( \
         scope VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY, \
         deployment VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
         claimed_at DATETIME(6) NOT NULL \
     ) ENGINE = InnoDB";

/// Creates `duplex.claims` unless it exists.
pub(super) async fn ensure_claims(conn: &mut Conn) -> Result<(), ApplyError> {
    ensure(conn, "claims", CLAIMS_DDL, "creating duplex.claims").await
}

/// The deployment owning `scope`, read under a row lock inside the open transaction.
pub(super) async fn locked_claim(
    conn: &mut Conn,
    scope: &str,
) -> Result<Option<String>, ApplyError> {
    let owner: Option<String> = conn
        .exec_first(
            "SELECT deployment FROM duplex.claims WHERE scope = ? FOR UPDATE",
            (scope,),
        )
        .await
        .map_err(MysqlError::query("reading duplex.claims"))?;
    Ok(owner)
}

/// Records `deployment` as the owner of `scope` in the open transaction: UPDATE when
/// `update`, else INSERT.
pub(super) async fn record_claim(
    conn: &mut Conn,
    scope: &str,
    deployment: &str,
    update: bool,
) -> Result<(), ApplyError> {
    let sql = if update {
        "UPDATE duplex.claims SET deployment = ?, claimed_at = UTC_TIMESTAMP(6) WHERE scope = ?"
    } else {
        "INSERT INTO duplex.claims (deployment, scope, claimed_at) \
         VALUES (?, ?, UTC_TIMESTAMP(6))"
    };
    conn.exec_drop(sql, (deployment, scope))
        .await
        .map_err(MysqlError::query("recording the claim in duplex.claims"))?;
    Ok(())
}
