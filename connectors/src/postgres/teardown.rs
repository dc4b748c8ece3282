//! `duplex teardown` on PostgreSQL (see [`crate::teardown`]): this deployment's publications and
//! slots, its rows of `duplex.positions` and `duplex.claims`, and schema `duplex` when nothing
//! else is in it; and the list of duplex's slots that `duplex check` reports.

use tokio_postgres::Client;

use crate::SiteConnection;
use crate::load::AdminError;
use crate::teardown::{Leftovers, Slot, sort_rows};

use super::{connect, quote_ident};

const FIND: &str = "looking for what duplex created on a PostgreSQL site";
const REMOVE: &str = "removing what duplex created on a PostgreSQL site";
const SLOTS: &str = "listing duplex's replication slots";

/// The comment prefix of a claimed publication (see [`super::claim`]).
const CLAIM: &str = "duplex deployment ";

/// Every replication slot named `duplex_%` on the server of `site`, with the WAL each keeps and,
/// for slots of `site`'s database, the deployment their publication claims.
pub async fn duplex_slots(site: &SiteConnection) -> Result<Vec<Slot>, AdminError> {
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(SLOTS))?;
    slots(&client, None).await.map_err(AdminError::doing(SLOTS))
}

/// Slots named `duplex_%` (only `name` when given).
async fn slots(client: &Client, name: Option<&str>) -> Result<Vec<Slot>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT s.slot_name::text, s.database::text, s.active, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint, \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint, \
                    CASE WHEN s.database = current_database() THEN \
                        (SELECT obj_description(p.oid, 'pg_publication') FROM pg_publication p \
                         WHERE p.pubname = s.slot_name) END \
             FROM pg_replication_slots s \
             WHERE s.slot_name LIKE 'duplex\\_%' AND ($1::text IS NULL OR s.slot_name = $1) \
             ORDER BY 1",
            &[&name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Slot {
            name: row.get(0),
            database: row.get::<_, Option<String>>(1).unwrap_or_default(),
            active: row.get(2),
            retained_bytes: row.get(3),
            behind_bytes: row.get(4),
            claimed_by: row
                .get::<_, Option<String>>(5)
                .and_then(|c| c.strip_prefix(CLAIM).map(str::to_owned)),
        })
        .collect())
}

/// What `deployment` left on `site`.
pub(crate) async fn find(site: &SiteConnection, deployment: &str) -> Result<Leftovers, AdminError> {
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(FIND))?;
    find_with(&client, site, deployment)
        .await
        .map_err(AdminError::doing(FIND))
}

async fn find_with(
    client: &Client,
    site: &SiteConnection,
    deployment: &str,
) -> Result<Leftovers, tokio_postgres::Error> {
    let mut leftovers = Leftovers::default();
    let names: Vec<String> = std::iter::once(super::slot_name(site))
        .chain(super::legacy_slot_name(site))
        .collect();
    let publications = client
        .query(
            "SELECT pubname::text, obj_description(oid, 'pg_publication') FROM pg_publication \
             WHERE pubname LIKE 'duplex\\_%' ORDER BY 1",
            &[],
        )
        .await?;
    for row in publications {
        let name: String = row.get(0);
        let owner = row
            .get::<_, Option<String>>(1)
            .and_then(|c| c.strip_prefix(CLAIM).map(str::to_owned));
        match owner {
            Some(owner) if owner == deployment => {
                leftovers.slots.extend(slots(client, Some(&name)).await?);
                leftovers.publications.push(name);
            }
            None if names.contains(&name) => leftovers.unclaimed.push(format!(
                "publication {name} (and the slot of that name) records no deployment: if it is \
                 this site's, drop them by hand (DROP PUBLICATION {name}; SELECT \
                 pg_drop_replication_slot('{name}'))"
            )),
            _ => {}
        }
    }
    let schema: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'duplex')",
            &[],
        )
        .await?
        .get(0);
    if !schema {
        return Ok(leftovers);
    }
    leftovers.bookkeeping = Some("schema duplex".to_owned());
    let (positions, claims) = rows(client).await?;
    sort_rows(&positions, &claims, deployment, &mut leftovers);
    let others = client
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'duplex' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') \
             AND c.relname NOT IN ('positions', 'claims') ORDER BY 1",
            &[],
        )
        .await?;
    leftovers.others.extend(
        others
            .iter()
            .map(|r| format!("duplex.{}", r.get::<_, String>(0))),
    );
    Ok(leftovers)
}

/// The sources of `duplex.positions` and the (scope, deployment) rows of `duplex.claims`.
async fn rows(
    client: &impl tokio_postgres::GenericClient,
) -> Result<(Vec<String>, Vec<(String, String)>), tokio_postgres::Error> {
    let mut positions = Vec::new();
    let mut claims = Vec::new();
    let exists = |table: &'static str| async move {
        client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
            .await
            .map(|r| r.get::<_, bool>(0))
    };
    if exists("duplex.positions").await? {
        for row in client
            .query("SELECT source FROM duplex.positions ORDER BY 1", &[])
            .await?
        {
            positions.push(row.get(0));
        }
    }
    if exists("duplex.claims").await? {
        for row in client
            .query(
                "SELECT scope, deployment FROM duplex.claims ORDER BY 1",
                &[],
            )
            .await?
        {
            claims.push((row.get(0), row.get(1)));
        }
    }
    Ok((positions, claims))
}

/// Removes `leftovers` from `site`.
pub(crate) async fn remove(
    site: &SiteConnection,
    leftovers: &Leftovers,
) -> Result<Vec<String>, AdminError> {
    let mut client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(REMOVE))?;
    let mut done = Vec::new();
    for slot in &leftovers.slots {
        client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot.name],
            )
            .await
            .map_err(AdminError::doing("dropping a replication slot"))?;
        done.push(format!("replication slot {}", slot.name));
    }
    for publication in &leftovers.publications {
        client
            .batch_execute(&format!(
                "DROP PUBLICATION IF EXISTS {}",
                quote_ident(publication)
            ))
            .await
            .map_err(AdminError::doing("dropping a publication"))?;
        done.push(format!("publication {publication}"));
    }
    if leftovers.bookkeeping.is_none() {
        return Ok(done);
    }
    let txn = client
        .transaction()
        .await
        .map_err(AdminError::doing(REMOVE))?;
    let (positions, claims) = rows(&txn).await.map_err(AdminError::doing(REMOVE))?;
    if positions.iter().any(|p| leftovers.positions.contains(p)) {
        txn.execute(
            "DELETE FROM duplex.positions WHERE source = ANY($1)",
            &[&leftovers.positions],
        )
        .await
        .map_err(AdminError::doing("deleting rows of duplex.positions"))?;
    }
    if claims
        .iter()
        .any(|(scope, _)| leftovers.claims.contains(scope))
    {
        txn.execute(
            "DELETE FROM duplex.claims WHERE scope = ANY($1)",
            &[&leftovers.claims],
        )
        .await
        .map_err(AdminError::doing("deleting rows of duplex.claims"))?;
    }
    done.extend(
        leftovers
            .positions
            .iter()
            .map(|p| format!("duplex.positions row {p}")),
    );
    done.extend(
        leftovers
            .claims
            .iter()
            .map(|c| format!("duplex.claims row {c}")),
    );
    if leftovers.drops_bookkeeping() {
        // Under an exclusive lock, so no other deployment's row can arrive between this check
        // and the drop.
        let mut tables = Vec::new();
        for table in ["duplex.positions", "duplex.claims"] {
            let exists: bool = txn
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
                .await
                .map_err(AdminError::doing(REMOVE))?
                .get(0);
            if exists {
                tables.push(table);
            }
        }
        let mut empty = true;
        for table in &tables {
            txn.batch_execute(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
                .await
                .map_err(AdminError::doing(REMOVE))?;
            let any: bool = txn
                .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[])
                .await
                .map_err(AdminError::doing(REMOVE))?
                .get(0);
            empty &= !any;
        }
        if empty {
            let mut sql = String::new();
            if !tables.is_empty() {
                sql.push_str(&format!("DROP TABLE {}; ", tables.join(", ")));
            }
            sql.push_str("DROP SCHEMA duplex");
            txn.batch_execute(&sql).await.map_err(AdminError::doing(
                "dropping schema duplex (RESTRICT: is something else in it?)",
            ))?;
            done.push("schema duplex".to_owned());
        }
    }
    txn.commit().await.map_err(AdminError::doing(REMOVE))?;
    Ok(done)
}
