//! What a duplex deployment leaves on a site, and removing it (`duplex teardown`).
//!
//! A deployment (one state directory, identified by its UUID) leaves on its sites:
//! - PostgreSQL sources: a publication and a logical replication slot of one name each, the
//!   publication's comment `duplex deployment <uuid>` claiming both (see
//!   [`crate::postgres::claim`]);
//! - every target: rows of `duplex.positions` keyed `<site>@<uuid>`; two-way sites also a row
//!   `merge:<site>` (the merge engine's outbox position) and a row of `duplex.claims` for scope
//!   `merge:<site>` naming the deployment, which also tells whose that positions row is;
//! - the `duplex` schema (PostgreSQL) or database (MySQL/MariaDB) holding those tables, shared
//!   by every deployment writing into the database (PostgreSQL) or server (MariaDB).
//!
//! Only what is provably this deployment's is removed: a publication claimed by another
//! deployment or by none, or another deployment's rows, are left and listed, and the `duplex`
//! schema or database is dropped only when nothing but this deployment's rows was in it. A slot
//! being streamed from is never dropped: [`Leftovers::active_slots`] lets the caller refuse
//! before anything is removed. MySQL/MariaDB binlogs hold nothing of duplex's (a replica
//! connection registers nothing that outlives it), so there only bookkeeping is removed.

use crate::load::AdminError;
use crate::{SiteConnection, SiteKind};

/// A replication slot on a PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Its name.
    pub name: String,
    /// The database it decodes.
    pub database: String,
    /// A session streams from it now.
    pub active: bool,
    /// WAL it keeps from being removed (`pg_current_wal_lsn() - restart_lsn`), in bytes.
    pub retained_bytes: Option<i64>,
    /// WAL written since the position its reader confirmed (`pg_current_wal_lsn() -
    /// confirmed_flush_lsn`), in bytes: how far behind duplex's targets are.
    pub behind_bytes: Option<i64>,
    /// The deployment its publication (same name, same database) records, if any.
    pub claimed_by: Option<String>,
}

/// What one deployment left on one site.
#[derive(Debug, Clone, Default)]
pub struct Leftovers {
    /// Replication slots of this deployment (PostgreSQL).
    pub slots: Vec<Slot>,
    /// Publications of this deployment (PostgreSQL).
    pub publications: Vec<String>,
    /// Sources of this deployment's `duplex.positions` rows.
    pub positions: Vec<String>,
    /// Scopes of this deployment's `duplex.claims` rows.
    pub claims: Vec<String>,
    /// `schema duplex` / `database duplex` when it exists.
    pub bookkeeping: Option<String>,
    /// What else is in it (other deployments' rows, other tables): it is kept when any.
    pub others: Vec<String>,
    /// Objects named like this site's that record no deployment: left, and said.
    pub unclaimed: Vec<String>,
}

impl Leftovers {
    /// Whether the `duplex` schema or database goes too.
    pub fn drops_bookkeeping(&self) -> bool {
        self.bookkeeping.is_some() && self.others.is_empty()
    }

    /// Slots of this deployment that a session streams from now.
    pub fn active_slots(&self) -> Vec<&str> {
        self.slots
            .iter()
            .filter(|s| s.active)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Counts the `duplex.positions` rows whose source `ours` accepts as this deployment's too:
    /// rows written under another identity on its behalf (the writers of a bus key theirs by
    /// the bus, `<site>@bus-<prefix>`, whichever state directory each writer has).
    pub fn adopt_positions(&mut self, ours: impl Fn(&str) -> bool) {
        let mut kept = Vec::new();
        for other in std::mem::take(&mut self.others) {
            match other.strip_prefix(POSITIONS_ROW) {
                Some(source) if ours(source) => self.positions.push(source.to_owned()),
                _ => kept.push(other),
            }
        }
        self.others = kept;
    }

    /// Counts the `duplex.claims` rows whose scope `ours` accepts as this deployment's too
    /// (a bus's claim on its position row, scope `<site>@bus-<prefix>`, whichever state
    /// directory made it).
    pub fn adopt_claims(&mut self, ours: impl Fn(&str) -> bool) {
        let mut kept = Vec::new();
        for other in std::mem::take(&mut self.others) {
            let scope = other
                .strip_prefix(CLAIMS_ROW)
                .and_then(|rest| rest.split_once(" of deployment "))
                .map(|(scope, _)| scope);
            match scope {
                Some(scope) if ours(scope) => self.claims.push(scope.to_owned()),
                _ => kept.push(other),
            }
        }
        self.others = kept;
    }

    /// Whether nothing of this deployment is there.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
            && self.publications.is_empty()
            && self.positions.is_empty()
            && self.claims.is_empty()
            && !self.drops_bookkeeping()
    }
}

/// How [`Leftovers::others`] names another deployment's `duplex.positions` row.
const POSITIONS_ROW: &str = "duplex.positions row ";
/// How [`Leftovers::others`] names another deployment's `duplex.claims` row.
const CLAIMS_ROW: &str = "duplex.claims row ";

/// Sorts `duplex.positions` sources and `duplex.claims` rows into this deployment's and
/// others': a position is this deployment's when keyed `<site>@<deployment>`, when it is a
/// range marker of this deployment's interrupted backfill (`backfill:<mapping>@<deployment>:<n>`),
/// or when it is a merge engine's outbox row (`merge:<site>`) whose claim names the
/// deployment. Markers of earlier releases (`backfill:<mapping>:<n>`) name no deployment and
/// are another's.
pub fn sort_rows(
    positions: &[String],
    claims: &[(String, String)],
    deployment: &str,
    leftovers: &mut Leftovers,
) {
    let suffix = format!("@{deployment}");
    for (scope, owner) in claims {
        if owner == deployment {
            leftovers.claims.push(scope.clone());
        } else {
            leftovers
                .others
                .push(format!("{CLAIMS_ROW}{scope} of deployment {owner}"));
        }
    }
    for source in positions {
        let marker = source.starts_with("backfill:")
            && source.rsplit_once(':').is_some_and(|(head, range)| {
                head.ends_with(&suffix) && range.bytes().all(|b| b.is_ascii_digit())
            });
        let ours = source.ends_with(&suffix)
            || marker
            || (source.starts_with("merge:") && leftovers.claims.contains(source));
        if ours {
            leftovers.positions.push(source.clone());
        } else {
            leftovers.others.push(format!("{POSITIONS_ROW}{source}"));
        }
    }
}

/// Every replication slot duplex made (`duplex_%`) on the server of `site`, active or not, with
/// the WAL each keeps; none for kinds without slots (MySQL/MariaDB).
pub async fn slots(site: &SiteConnection) -> Result<Vec<Slot>, AdminError> {
    match site.kind {
        SiteKind::Postgres => crate::postgres::teardown::duplex_slots(site).await,
        SiteKind::Mysql | SiteKind::Mssql => Ok(Vec::new()),
    }
}

/// The names the slot of `site`'s stream has (current, and the one earlier releases gave it
/// when different); none for kinds without slots.
pub fn slot_names(site: &SiteConnection) -> Vec<String> {
    match site.kind {
        SiteKind::Postgres => std::iter::once(crate::postgres::slot_name(site))
            .chain(crate::postgres::legacy_slot_name(site))
            .collect(),
        SiteKind::Mysql | SiteKind::Mssql => Vec::new(),
    }
}

/// What `deployment` left on `site`.
pub async fn find(site: &SiteConnection, deployment: &str) -> Result<Leftovers, AdminError> {
    match site.kind {
        SiteKind::Postgres => crate::postgres::teardown::find(site, deployment).await,
        SiteKind::Mysql => crate::mysql::teardown::find(site)
            .await
            .map(|found| sorted(found, deployment)),
        SiteKind::Mssql => crate::mssql::teardown::find(site)
            .await
            .map(|found| sorted(found, deployment)),
    }
}

/// What a kind without slots finds in its bookkeeping: positions sources, claims (scope,
/// deployment), the bookkeeping itself (`schema duplex`, `database duplex`) when it exists, and
/// the other objects in it.
pub(crate) type Found = (
    Vec<String>,
    Vec<(String, String)>,
    Option<String>,
    Vec<String>,
);

/// The leftovers of `deployment` among what a kind without slots found in its bookkeeping:
/// positions sources, claims (scope, deployment), the bookkeeping itself when it exists, and
/// the other objects in it.
fn sorted((positions, claims, bookkeeping, others): Found, deployment: &str) -> Leftovers {
    let mut leftovers = Leftovers {
        bookkeeping,
        ..Leftovers::default()
    };
    sort_rows(&positions, &claims, deployment, &mut leftovers);
    leftovers.others.extend(others);
    leftovers
}

/// Removes `leftovers` (as [`find`] found them) from `site`; returns what was removed, one
/// line each, for people. The `duplex` schema or database is dropped only if, under a lock,
/// nothing but this deployment's rows is still in it.
pub async fn remove(
    site: &SiteConnection,
    leftovers: &Leftovers,
) -> Result<Vec<String>, AdminError> {
    match site.kind {
        SiteKind::Postgres => crate::postgres::teardown::remove(site, leftovers).await,
        SiteKind::Mysql => crate::mysql::teardown::remove(site, leftovers).await,
        SiteKind::Mssql => crate::mssql::teardown::remove(site, leftovers).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_this_deployments_only_by_key_or_claim() {
        let positions = [
            "store@me".to_owned(),
            "store@other".to_owned(),
            "merge:erp".to_owned(),
            "merge:wms".to_owned(),
            "backfill:orders:3".to_owned(),
            "backfill:orders@me:3".to_owned(),
            "backfill:orders@other:3".to_owned(),
            "store".to_owned(),
        ];
        let claims = [
            ("merge:erp".to_owned(), "me".to_owned()),
            ("merge:wms".to_owned(), "other".to_owned()),
        ];
        let mut leftovers = Leftovers {
            bookkeeping: Some("schema duplex".into()),
            ..Leftovers::default()
        };
        sort_rows(&positions, &claims, "me", &mut leftovers);
        assert_eq!(
            leftovers.positions,
            ["store@me", "merge:erp", "backfill:orders@me:3"]
        );
        assert_eq!(leftovers.claims, ["merge:erp"]);
        assert_eq!(leftovers.others.len(), 6, "{:?}", leftovers.others);
        assert!(!leftovers.drops_bookkeeping());
    }

    #[test]
    fn adopted_position_rows_count_as_this_deployments() {
        let positions = ["store@me".to_owned(), "store@bus-duplex".to_owned()];
        let mut leftovers = Leftovers {
            bookkeeping: Some("schema duplex".into()),
            ..Leftovers::default()
        };
        sort_rows(&positions, &[], "me", &mut leftovers);
        assert!(!leftovers.drops_bookkeeping());
        leftovers.adopt_positions(|source| source == "store@bus-duplex");
        assert_eq!(leftovers.positions, ["store@me", "store@bus-duplex"]);
        assert!(leftovers.others.is_empty());
        assert!(leftovers.drops_bookkeeping());
    }

    #[test]
    fn an_adopted_bus_claim_counts_as_this_deployments() {
        let positions = ["store@bus-duplex".to_owned()];
        let claims = [
            ("store@bus-duplex".to_owned(), "bus-duplex/1234".to_owned()),
            ("wms@bus-duplex".to_owned(), "bus-duplex/5678".to_owned()),
        ];
        let mut leftovers = Leftovers {
            bookkeeping: Some("schema duplex".into()),
            ..Leftovers::default()
        };
        sort_rows(&positions, &claims, "me", &mut leftovers);
        leftovers.adopt_positions(|source| source == "store@bus-duplex");
        leftovers.adopt_claims(|scope| scope == "store@bus-duplex");
        assert_eq!(leftovers.claims, ["store@bus-duplex"]);
        assert_eq!(
            leftovers.others,
            ["duplex.claims row wms@bus-duplex of deployment bus-duplex/5678"]
        );
        assert!(!leftovers.drops_bookkeeping(), "another bus's claim stays");
    }

    #[test]
    fn the_bookkeeping_goes_only_when_nothing_else_is_in_it() {
        let mut leftovers = Leftovers {
            bookkeeping: Some("schema duplex".into()),
            ..Leftovers::default()
        };
        sort_rows(&["a@me".to_owned()], &[], "me", &mut leftovers);
        assert!(leftovers.drops_bookkeeping());
        assert!(!leftovers.is_empty());
    }
}
