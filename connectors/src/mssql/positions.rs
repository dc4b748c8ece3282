//! `duplex.positions` on SQL Server (schema `duplex` of the target database): the one place
//! that spells its SQL, and the calls that run it on an open session.
//!
//! # Exactly once (see [`crate::apply`])
//! The source's row is read with `UPDLOCK, HOLDLOCK`: the update lock is held to the end of
//! the target transaction, and `HOLDLOCK` (serializable) also locks the key range when the row
//! does not exist yet, so two appliers of one source serialise on it; a first position is
//! INSERTed, so the slower of two racing first writers fails on the primary key. Every target
//! transaction writes the row (`applied_at` changes even when the position text does not), so
//! with CDC enabled on `duplex.positions` ([`POSITIONS_CDC`]) the change tables mark each of
//! duplex's transactions as an echo (see [`super::stream`]).
//!
//! The position is stored as the JSON text of [`crate::Position`]; these calls carry the text.

use super::{MssqlClient, MssqlError};
use crate::SiteConnection;
use crate::load::AdminError;

/// Creates schema `duplex` and `duplex.positions` unless they exist (a DBA who does not grant
/// duplex CREATE runs this beforehand).
pub const POSITIONS_DDL: &str = "IF SCHEMA_ID(N'duplex') IS NULL EXEC(N'CREATE SCHEMA duplex'); \
     IF OBJECT_ID(N'duplex.positions', N'U') IS NULL \
     CREATE TABLE duplex.positions ( \
         source nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL PRIMARY KEY, \
         position nvarchar(max) NOT NULL, \
         applied_at datetime2(6) NOT NULL \
     )";

/// The capture instance [`POSITIONS_CDC`] creates.
pub const ECHO_INSTANCE: &str = "duplex_positions";

/// Captures `duplex.positions` with CDC, for two-way links reading this database (its rows
/// mark duplex's own transactions); needs `db_owner`.
pub const POSITIONS_CDC: &str = "IF NOT EXISTS (SELECT 1 FROM cdc.change_tables \
     WHERE source_object_id = OBJECT_ID(N'duplex.positions')) \
     EXEC sys.sp_cdc_enable_table @source_schema = N'duplex', @source_name = N'positions', \
     @role_name = NULL, @capture_instance = N'duplex_positions'";

/// The recorded position of source `@P1`, locked to the end of the open transaction.
pub const LOCKED_POSITION: &str =
    "SELECT position FROM duplex.positions WITH (UPDLOCK, HOLDLOCK) WHERE source = @P1";

/// The committed position of source `@P1`.
pub const COMMITTED_POSITION: &str = "SELECT position FROM duplex.positions WHERE source = @P1";

/// Records the first position `@P2` of source `@P1`.
pub const INSERT_POSITION: &str = "INSERT INTO duplex.positions (source, position, applied_at) \
     VALUES (@P1, @P2, SYSUTCDATETIME())";

/// Moves the position of source `@P1` to `@P2`.
pub const UPDATE_POSITION: &str = "UPDATE duplex.positions \
     SET position = @P2, applied_at = SYSUTCDATETIME() WHERE source = @P1";

/// The sources `duplex.positions` has rows of (none when the table does not exist).
pub const POSITION_SOURCES: &str = "IF OBJECT_ID(N'duplex.positions', N'U') IS NOT NULL \
     SELECT source FROM duplex.positions ORDER BY source";

/// Renames the row of source `@P1` to `@P2` unless `@P2` has one.
pub const RENAME_POSITION: &str = "UPDATE duplex.positions SET source = @P2 WHERE source = @P1 \
     AND NOT EXISTS (SELECT 1 FROM duplex.positions WITH (UPDLOCK, HOLDLOCK) WHERE source = @P2)";

/// The sources of the `duplex.positions` rows on `site` (none when the table does not exist).
pub async fn position_sources(site: &SiteConnection) -> Result<Vec<String>, AdminError> {
    const DOING: &str = "reading duplex.positions";
    let mut client = super::connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(DOING))?;
    let rows = client
        .simple_query(POSITION_SOURCES)
        .await
        .map_err(AdminError::doing(DOING))?
        .into_first_result()
        .await
        .map_err(AdminError::doing(DOING))?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get::<&str, _>(0).map(str::to_owned))
        .collect())
}

/// Renames the `duplex.positions` row of `from` on `site` to `to` unless `to` has one; true
/// when it did.
pub async fn rename_position(
    site: &SiteConnection,
    from: &str,
    to: &str,
) -> Result<bool, AdminError> {
    const DOING: &str = "renaming a row of duplex.positions";
    let mut client = super::connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(DOING))?;
    let result = client
        .execute(RENAME_POSITION, &[&from, &to])
        .await
        .map_err(AdminError::doing(DOING))?;
    Ok(result.total() == 1)
}

/// Creates schema `duplex` and `duplex.positions` unless they exist.
pub async fn ensure_positions(client: &mut MssqlClient) -> Result<(), MssqlError> {
    run_script(client, POSITIONS_DDL, "creating duplex.positions").await
}

/// Creates `duplex.positions` unless it exists and captures it with CDC unless it is (a
/// two-way site's reader reads it to recognise duplex's own transactions).
pub async fn ensure_positions_captured(client: &mut MssqlClient) -> Result<(), MssqlError> {
    ensure_positions(client).await?;
    run_script(
        client,
        POSITIONS_CDC,
        "enabling CDC on duplex.positions for two-way replication (needs db_owner; a DBA can \
         run the statements of README \"SQL Server sites\" beforehand instead)",
    )
    .await
}

/// Runs a batch of statements whose results are not needed.
async fn run_script(
    client: &mut MssqlClient,
    sql: &'static str,
    doing: &'static str,
) -> Result<(), MssqlError> {
    client
        .simple_query(sql)
        .await
        .map_err(MssqlError::query(doing))?
        .into_results()
        .await
        .map_err(MssqlError::query(doing))?;
    Ok(())
}

/// The recorded position text of `source`, locked to the end of the open transaction.
pub async fn locked_position(
    client: &mut MssqlClient,
    source: &str,
) -> Result<Option<String>, MssqlError> {
    read(client, LOCKED_POSITION, source, "reading duplex.positions").await
}

/// The committed position text of `source`.
pub async fn committed_position(
    client: &mut MssqlClient,
    source: &str,
) -> Result<Option<String>, MssqlError> {
    read(
        client,
        COMMITTED_POSITION,
        source,
        "reading duplex.positions",
    )
    .await
}

/// The one text column of the row `sql` finds for `key`, if any.
async fn read(
    client: &mut MssqlClient,
    sql: &'static str,
    key: &str,
    doing: &'static str,
) -> Result<Option<String>, MssqlError> {
    let row = client
        .query(sql, &[&key])
        .await
        .map_err(MssqlError::query(doing))?
        .into_row()
        .await
        .map_err(MssqlError::query(doing))?;
    Ok(row.and_then(|r| r.get::<&str, _>(0).map(str::to_owned)))
}

/// Records `position` of `source` in the open transaction: UPDATE when `update` (the row was
/// read under its lock), else INSERT; an error unless exactly one row was written.
pub async fn record_position(
    client: &mut MssqlClient,
    source: &str,
    position: &str,
    update: bool,
) -> Result<(), MssqlError> {
    let sql = if update {
        UPDATE_POSITION
    } else {
        INSERT_POSITION
    };
    write_one(
        client,
        sql,
        source,
        position,
        "recording the position in duplex.positions",
    )
    .await
}

/// Runs `sql` (an INSERT or UPDATE of the row `key`, value `value`); an error unless exactly
/// one row was written.
async fn write_one(
    client: &mut MssqlClient,
    sql: &'static str,
    key: &str,
    value: &str,
    doing: &'static str,
) -> Result<(), MssqlError> {
    let result = client
        .execute(sql, &[&key, &value])
        .await
        .map_err(MssqlError::query(doing))?;
    match result.total() {
        1 => Ok(()),
        rows => Err(MssqlError::PositionRow {
            site: key.to_owned(),
            rows,
        }),
    }
}

/// The table of engine claims (see [`crate::apply::WriterClaim`]): which deployment owns the
/// outbox counter named by `scope`.
pub const CLAIMS_DDL: &str = "IF SCHEMA_ID(N'duplex') IS NULL EXEC(N'CREATE SCHEMA duplex'); \
     IF OBJECT_ID(N'duplex.claims', N'U') IS NULL \
     CREATE TABLE duplex.claims ( \
         scope nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL PRIMARY KEY, \
         deployment nvarchar(255) COLLATE Latin1_General_100_BIN2 NOT NULL, \
         claimed_at datetime2(6) NOT NULL \
     )";

/// The deployment owning scope `@P1`, locked to the end of the open transaction.
pub const LOCKED_CLAIM: &str =
    "SELECT deployment FROM duplex.claims WITH (UPDLOCK, HOLDLOCK) WHERE scope = @P1";

/// Records deployment `@P2` as the first owner of scope `@P1`.
pub const INSERT_CLAIM: &str = "INSERT INTO duplex.claims (scope, deployment, claimed_at) \
     VALUES (@P1, @P2, SYSUTCDATETIME())";

/// Moves scope `@P1` to deployment `@P2`.
pub const UPDATE_CLAIM: &str = "UPDATE duplex.claims \
     SET deployment = @P2, claimed_at = SYSUTCDATETIME() WHERE scope = @P1";

/// Creates schema `duplex` and `duplex.claims` unless they exist.
pub async fn ensure_claims(client: &mut MssqlClient) -> Result<(), MssqlError> {
    run_script(client, CLAIMS_DDL, "creating duplex.claims").await
}

/// The deployment owning `scope`, locked to the end of the open transaction.
pub async fn locked_claim(
    client: &mut MssqlClient,
    scope: &str,
) -> Result<Option<String>, MssqlError> {
    read(client, LOCKED_CLAIM, scope, "reading duplex.claims").await
}

/// Records `deployment` as the owner of `scope` in the open transaction.
pub async fn record_claim(
    client: &mut MssqlClient,
    scope: &str,
    deployment: &str,
    update: bool,
) -> Result<(), MssqlError> {
    let sql = if update { UPDATE_CLAIM } else { INSERT_CLAIM };
    write_one(
        client,
        sql,
        scope,
        deployment,
        "recording the claim in duplex.claims",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_locked_for_the_transaction_and_written_with_the_target_time() {
        assert!(LOCKED_POSITION.contains("WITH (UPDLOCK, HOLDLOCK)"));
        assert!(!COMMITTED_POSITION.contains("UPDLOCK"));
        assert!(INSERT_POSITION.starts_with("INSERT INTO duplex.positions"));
        assert!(UPDATE_POSITION.contains("applied_at = SYSUTCDATETIME()"));
        assert!(POSITIONS_DDL.contains("COLLATE Latin1_General_100_BIN2 NOT NULL PRIMARY KEY"));
        assert!(POSITIONS_DDL.starts_with("IF SCHEMA_ID(N'duplex') IS NULL"));
        assert!(POSITIONS_CDC.contains("@capture_instance = N'duplex_positions'"));
        assert!(LOCKED_CLAIM.contains("WITH (UPDLOCK, HOLDLOCK)"));
        assert!(CLAIMS_DDL.contains("scope nvarchar(255) COLLATE Latin1_General_100_BIN2"));
        assert!(INSERT_CLAIM.starts_with("INSERT INTO duplex.claims"));
        assert!(UPDATE_CLAIM.contains("claimed_at = SYSUTCDATETIME()"));
    }
}
