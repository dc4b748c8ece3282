//! The order tables are copied in: every table at once where duplex's sessions on every
//! target turn foreign-key checks off, otherwise referenced tables before the tables
//! referencing them (the argument is in [`duplex_connectors::foreign_keys`]).
//!
//! Only targets whose duplex sessions check foreign keys (a PostgreSQL role that may not set
//! `session_replication_role`, and SQL Server, which has no such setting) constrain the order, and only through keys between tables this
//! backfill copies there: a key referencing a table the backfill does not copy cannot be helped
//! by any order (`duplex check` warns about it). A self-reference or a cycle among copied
//! tables on such a target is refused before anything is copied, with what lifts it.

use std::collections::BTreeMap;

use duplex_connectors::foreign_keys::{
    ForeignKey, ForeignKeyChecks, dependency_levels, target_foreign_keys,
};
use duplex_connectors::{SiteKind, TableName, TableRoute};

use super::{BackfillError, admin_error};
use crate::config::Site;

/// A job's targets with their routes.
pub(super) type Targets = [(Site, Vec<TableRoute>)];

/// The copy level of each job (same order as `jobs`: the mapping's name and its targets with
/// their routes): all ranges of level `n` land on every target before any range of level
/// `n + 1` is written.
pub(super) async fn copy_levels(jobs: &[(&str, &Targets)]) -> Result<Vec<usize>, BackfillError> {
    // Per target site: the site, and which job writes which of its tables.
    let mut targets: BTreeMap<String, (Site, Vec<(usize, TableName)>)> = BTreeMap::new();
    for (index, (_, job_targets)) in jobs.iter().enumerate() {
        for (site, routes) in job_targets.iter() {
            let entry = targets
                .entry(site.name.clone())
                .or_insert_with(|| (site.clone(), Vec::new()));
            for route in routes {
                entry.1.push((index, route.target.clone()));
            }
        }
    }
    // Every key between copied tables on a target that checks them, as a key between jobs.
    let node = |index: usize| TableName::new("job", index.to_string());
    let mut keys = Vec::new();
    let mut checked_kinds = Vec::new();
    for (site, written) in targets.values() {
        let tables: Vec<TableName> = written.iter().map(|(_, t)| t.clone()).collect();
        let found = target_foreign_keys(&site.connection(), &tables)
            .await
            .map_err(admin_error(site))?;
        if let ForeignKeyChecks::Off { .. } = found.checks {
            continue;
        }
        checked_kinds.push(site.kind);
        for key in &found.keys {
            for (child, _) in written.iter().filter(|(_, t)| *t == key.table) {
                for (parent, _) in written.iter().filter(|(_, t)| *t == key.references) {
                    keys.push(ForeignKey {
                        name: format!(
                            "{} on {}:{} (references {})",
                            key.name, site.name, key.table, key.references
                        ),
                        table: node(*child),
                        references: node(*parent),
                        ..key.clone()
                    });
                }
            }
        }
    }
    let nodes: Vec<TableName> = (0..jobs.len()).map(node).collect();
    let levels = dependency_levels(&nodes, &keys).map_err(|cycle| {
        let named: Vec<String> = cycle.keys.iter().map(|k| k.name.clone()).collect();
        let mut fixes = Vec::new();
        if checked_kinds.contains(&SiteKind::Postgres) {
            fixes.push(
                "on PostgreSQL, let duplex's role turn the checks off (as a superuser: GRANT SET ON \
                 PARAMETER session_replication_role TO <duplex's role>, PostgreSQL 15+, or run duplex \
                 as a superuser)",
            );
        }
        if checked_kinds.contains(&SiteKind::Mssql) {
            fixes.push(
                "on SQL Server, whose sessions always check them, disable the key while copying \
                 (ALTER TABLE <table> NOCHECK CONSTRAINT <key>) and check it again afterwards \
                 (ALTER TABLE <table> WITH CHECK CHECK CONSTRAINT <key>)",
            );
        }
        BackfillError::Refused(format!(
            "cannot copy in an order that satisfies the foreign key(s) {}: a table referencing itself (or tables referencing each other) \
             cannot be copied range by range while the target checks foreign keys; {}, and run the backfill again",
            named.join(", "),
            fixes.join("; ")
        ))
    })?;
    if levels.iter().any(|&l| l > 0) {
        for (index, (mapping, _)) in jobs.iter().enumerate() {
            tracing::info!(mapping = %mapping, level = levels[index], "a target checks foreign keys in duplex's sessions: copying referenced tables first");
        }
    }
    Ok(levels)
}
