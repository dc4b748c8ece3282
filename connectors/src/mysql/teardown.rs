//! `duplex teardown` on MySQL/MariaDB (see [`crate::teardown`]): the binlog holds nothing of
//! duplex's, so only this deployment's rows of `duplex.positions` and `duplex.claims` go, and
//! database `duplex` with them when nothing else is in it. The database is server-wide: every
//! deployment writing into any database of the server shares it.

use mysql_async::prelude::Queryable;

use crate::SiteConnection;
use crate::load::AdminError;
use crate::teardown::{Found, Leftovers};

use super::connect;

const FIND: &str = "looking for what duplex created on a MySQL/MariaDB site";
const REMOVE: &str = "removing what duplex created on a MySQL/MariaDB site";

/// What is in database `duplex` on the server of `site`.
pub(crate) async fn find(site: &SiteConnection) -> Result<Found, AdminError> {
    let mut conn = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(FIND))?;
    let found = find_with(&mut conn)
        .await
        .map_err(AdminError::doing(FIND))?;
    let _ = conn.disconnect().await;
    Ok(found)
}

async fn find_with(conn: &mut mysql_async::Conn) -> Result<Found, mysql_async::Error> {
    let database: Option<String> = conn
        .query_first(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'duplex'",
        )
        .await?;
    if database.is_none() {
        return Ok((Vec::new(), Vec::new(), None, Vec::new()));
    }
    let tables: Vec<String> = conn
        .query(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'duplex' \
             ORDER BY 1",
        )
        .await?;
    let positions = if tables.iter().any(|t| t == "positions") {
        conn.query("SELECT source FROM duplex.positions ORDER BY 1")
            .await?
    } else {
        Vec::new()
    };
    let claims = if tables.iter().any(|t| t == "claims") {
        conn.query("SELECT scope, deployment FROM duplex.claims ORDER BY 1")
            .await?
    } else {
        Vec::new()
    };
    let others = tables
        .into_iter()
        .filter(|t| t != "positions" && t != "claims")
        .map(|t| format!("duplex.{t}"))
        .collect();
    Ok((
        positions,
        claims,
        Some("database duplex".to_owned()),
        others,
    ))
}

/// Removes `leftovers` from `site`.
pub(crate) async fn remove(
    site: &SiteConnection,
    leftovers: &Leftovers,
) -> Result<Vec<String>, AdminError> {
    let mut conn = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(REMOVE))?;
    let mut done = Vec::new();
    for source in &leftovers.positions {
        conn.exec_drop("DELETE FROM duplex.positions WHERE source = ?", (source,))
            .await
            .map_err(AdminError::doing("deleting rows of duplex.positions"))?;
        done.push(format!("duplex.positions row {source}"));
    }
    for scope in &leftovers.claims {
        conn.exec_drop("DELETE FROM duplex.claims WHERE scope = ?", (scope,))
            .await
            .map_err(AdminError::doing("deleting rows of duplex.claims"))?;
        done.push(format!("duplex.claims row {scope}"));
    }
    if leftovers.drops_bookkeeping() {
        // DDL commits by itself in MySQL, so there is no lock to hold across the check and the
        // drop; the check is repeated right before it. A deployment starting to write into this
        // server at this very moment recreates the database on its next write (the appliers
        // create it on first use).
        let (positions, claims, _, others) = find_with(&mut conn)
            .await
            .map_err(AdminError::doing(REMOVE))?;
        if positions.is_empty() && claims.is_empty() && others.is_empty() {
            conn.query_drop("DROP DATABASE duplex")
                .await
                .map_err(AdminError::doing("dropping database duplex"))?;
            done.push("database duplex".to_owned());
        }
    }
    let _ = conn.disconnect().await;
    Ok(done)
}
