//! `duplex.positions` on PostgreSQL (schema `duplex`): the one place that spells its SQL. The
//! applier reads a source's row under a row lock and INSERTs or UPDATEs it in its target
//! transaction (see [`crate::apply`] for why that makes delivery exactly once), reads the
//! committed position, and creates the table on first use; a change stream with the echo
//! marker creates it too, to publish it (see the stream's module docs on echoes).
//!
//! The position is stored as the JSON text of [`Position`]; `applied_at` is the target's
//! `now()` of the transaction that recorded it.

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::Position;
use crate::apply::{ApplyError, parse_position, position_text};

use super::PgError;

/// The bookkeeping table, as the applier creates it on first use (a DBA who does not grant
/// duplex CREATE on the database runs this beforehand).
pub const POSITIONS_DDL: &str = "CREATE SCHEMA IF NOT EXISTS duplex; \
     CREATE TABLE IF NOT EXISTS duplex.positions ( \
         source text PRIMARY KEY, \
         position text NOT NULL, \
         applied_at timestamptz NOT NULL DEFAULT now())";

/// Creates schema `duplex` and `duplex.positions` unless they exist (appliers on first use,
/// change streams with the echo marker). A concurrent creation by another applier or stream
/// is not an error.
pub(super) async fn ensure_table(client: &Client) -> Result<(), PgError> {
    ensure(
        client,
        "duplex.positions",
        POSITIONS_DDL,
        "creating duplex.positions",
    )
    .await
}

/// Runs `ddl` unless `table` exists; a concurrent creation is not an error.
async fn ensure(
    client: &Client,
    table: &str,
    ddl: &str,
    creating: &'static str,
) -> Result<(), PgError> {
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(PgError::query("looking for a duplex bookkeeping table"))?
        .get(0);
    if exists {
        return Ok(());
    }
    match client.batch_execute(ddl).await {
        Ok(()) => {
            tracing::info!("created {table}");
            Ok(())
        }
        // `IF NOT EXISTS` still races: the loser of two concurrent creations fails on the
        // catalog's unique index.
        Err(e)
            if e.code().is_some_and(|c| {
                *c == SqlState::UNIQUE_VIOLATION
                    || *c == SqlState::DUPLICATE_SCHEMA
                    || *c == SqlState::DUPLICATE_TABLE
            }) =>
        {
            Ok(())
        }
        Err(e) => Err(PgError::query(creating)(e)),
    }
}

/// The recorded position of `site`, read under a row lock inside the open transaction.
pub(super) async fn locked(client: &Client, site: &str) -> Result<Option<Position>, ApplyError> {
    let row = client
        .query_opt(
            "SELECT position FROM duplex.positions WHERE source = $1 FOR UPDATE",
            &[&site],
        )
        .await
        .map_err(PgError::query("reading duplex.positions"))?;
    row.map(|row| parse_position(site, row.get(0))).transpose()
}

/// The committed position of `site`.
pub(super) async fn committed(client: &Client, site: &str) -> Result<Option<Position>, ApplyError> {
    let row = client
        .query_opt(
            "SELECT position FROM duplex.positions WHERE source = $1",
            &[&site],
        )
        .await
        .map_err(PgError::query("reading duplex.positions"))?;
    row.map(|row| parse_position(site, row.get(0))).transpose()
}

/// Records `position` of `site` in the open transaction. The first position of a source is
/// inserted, never upserted: of two appliers racing on a new source, the second fails here
/// instead of applying again.
pub(super) async fn record(
    client: &Client,
    site: &str,
    position: &Position,
    update: bool,
) -> Result<(), ApplyError> {
    let sql = if update {
        "UPDATE duplex.positions SET position = $2, applied_at = now() WHERE source = $1"
    } else {
        "INSERT INTO duplex.positions (source, position, applied_at) VALUES ($1, $2, now())"
    };
    client
        .execute(sql, &[&site, &position_text(position)])
        .await
        .map_err(PgError::query("recording the position in duplex.positions"))?;
    Ok(())
}

/// The table of engine claims (see [`crate::apply::WriterClaim`]): which deployment owns the
/// outbox counter named by `scope`.
pub const CLAIMS_DDL: &str = "CREATE SCHEMA IF NOT EXISTS duplex; \
     CREATE TABLE IF NOT EXISTS duplex.claims ( \
         scope text PRIMARY KEY, \
         deployment text NOT NULL, \
         claimed_at timestamptz NOT NULL DEFAULT now())";

/// Creates `duplex.claims` unless it exists (a concurrent creation is not an error).
pub(super) async fn ensure_claims(client: &Client) -> Result<(), ApplyError> {
    Ok(ensure(
        client,
        "duplex.claims",
        CLAIMS_DDL,
        "creating duplex.claims",
    )
    .await?)
}

/// The deployment owning `scope`, read under a row lock inside the open transaction.
pub(super) async fn locked_claim(
    client: &Client,
    scope: &str,
) -> Result<Option<String>, ApplyError> {
    let row = client
        .query_opt(
            "SELECT deployment FROM duplex.claims WHERE scope = $1 FOR UPDATE",
            &[&scope],
        )
        .await
        .map_err(PgError::query("reading duplex.claims"))?;
    Ok(row.map(|row| row.get(0)))
}

/// Records `deployment` as the owner of `scope` in the open transaction: UPDATE when
/// `update`, else INSERT.
pub(super) async fn record_claim(
    client: &Client,
    scope: &str,
    deployment: &str,
    update: bool,
) -> Result<(), ApplyError> {
    let sql = if update {
        "UPDATE duplex.claims SET deployment = $2, claimed_at = now() WHERE scope = $1"
    } else {
        "INSERT INTO duplex.claims (scope, deployment, claimed_at) VALUES ($1, $2, now())"
    };
    client
        .execute(sql, &[&scope, &deployment])
        .await
        .map_err(PgError::query("recording the claim in duplex.claims"))?;
    Ok(())
}
