//! Foreign keys on target tables, and how duplex's own target sessions treat them.
//!
//! # The problem
//!
//! A backfill copies every table's ranges in parallel, in no order, and the merge engine writes
//! a site's rows as they are decided; a target that checks a foreign key at each statement
//! refuses an `order_lines` row whose `orders` row has not arrived yet. Referential *actions*
//! are a second trap: a target's `ON DELETE CASCADE` deleting the children of a replicated
//! parent delete makes the source's own deletes of those children find no row, which the
//! strict applier treats as divergence (see [`crate::apply`]).
//!
//! # What duplex does
//!
//! duplex's target sessions (appliers of `run`, the backfill's copy workers and catch-up, the
//! merge engine's writers: all open their connection through the kind's applier) turn the
//! checks off where the database lets the role do so:
//!
//! - MySQL/MariaDB: `SET SESSION foreign_key_checks = 0` (no privilege needed). InnoDB then
//!   neither checks nor runs referential actions in that session (checked on MariaDB 10.11: a
//!   parent deleted with the setting off leaves its `ON DELETE CASCADE` children).
//! - PostgreSQL: `SET session_replication_role = replica`, which a superuser may set, or on
//!   PostgreSQL 15+ a role granted `SET ON PARAMETER session_replication_role`. Foreign keys are
//!   enforced by system triggers, which do not fire in that role, so neither checks nor
//!   actions run. Ordinary triggers and rules of the target tables do not fire either (only
//!   triggers declared `ENABLE REPLICA` / `ENABLE ALWAYS` do): duplex writes what the source
//!   committed, including the effects the source's own triggers already had, so running the
//!   target's triggers again would apply them twice; a DBA who wants a trigger to run for
//!   replicated rows marks it `ENABLE ALWAYS`. duplex relies on no trigger: echoes are
//!   recognised by the `duplex.positions` row written in the same transaction, which the role
//!   does not affect.
//!
//! With checks and actions off the target receives exactly the row changes of the source's
//! log, and nothing else, which is the replica's contract: every row the source holds arrives
//! whatever the order, and a cascade the source ran arrives as the row changes it made (the
//! PostgreSQL WAL logs them). A MariaDB source is the exception: InnoDB runs referential
//! actions inside the storage engine and does not write the rows they change to the binlog, so
//! a source `ON DELETE CASCADE` / `SET NULL` is invisible to every reader; `check` warns about
//! such keys on MariaDB sources.
//!
//! # When a PostgreSQL role may not turn them off
//!
//! Then the constraints are checked in duplex's sessions as in any other ([`ForeignKeyChecks::On`]),
//! and duplex orders its writes so that checks pass:
//!
//! - *Streaming* writes each target transaction's changes in the source's commit order and,
//!   within a transaction, in the source's statement order (inserts into one table are only
//!   merged with the inserts right after them). That order satisfied the source's constraints
//!   at every statement, and the target held the same rows before it (exactly once), so a
//!   foreign key the source also enforces holds at every statement on the target too. For
//!   a key only the target has (the source never checked it), each target transaction starts
//!   with `SET CONSTRAINTS ALL DEFERRED`: a `DEFERRABLE` key is then checked at commit, after
//!   whole source transactions, the states the source committed. A non-deferrable key only the
//!   target has can refuse a row; the link then stops with the database's message, having
//!   lost nothing.
//! - *Backfill* copies tables in dependency order ([`dependency_levels`]): every range of a
//!   referenced table lands before any range of a table referencing it. Ranges of one table
//!   still go in parallel. A self-referencing key or a cycle cannot be ordered by table
//!   (a range may hold a child whose parent is in a later range), so the backfill refuses it
//!   with the fix (the grant) before it copies anything. Not covered: the catch-up of a
//!   resumed backfill applies each transaction only to the rows of ranges copied before it,
//!   so a child in an older range can arrive while its parent (in a range copied after the
//!   parent was deleted again) is absent, and the catch-up stops with the database's message;
//!   with the checks off it converges to the source's rows.
//! - *Referential actions* run in that mode: a target `ON DELETE CASCADE` deletes the children
//!   of a replicated parent delete, and the source's own child deletes that follow in the log
//!   then find no row and stop the link. `check` warns about every target key with an action
//!   in this mode.

use std::collections::{BTreeMap, BTreeSet};

use crate::load::AdminError;
use crate::{SiteConnection, SiteKind, TableName};

/// One foreign key of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    /// The constraint's name.
    pub name: String,
    /// The referencing (child) table.
    pub table: TableName,
    /// The referenced (parent) table.
    pub references: TableName,
    /// `ON DELETE` action as SQL spells it (`NO ACTION`, `RESTRICT`, `CASCADE`, `SET NULL`,
    /// `SET DEFAULT`).
    pub on_delete: String,
    /// `ON UPDATE` action, spelled the same way.
    pub on_update: String,
    /// Whether the constraint can be deferred (PostgreSQL `DEFERRABLE`).
    pub deferrable: bool,
}

impl ForeignKey {
    /// The referential actions of this key that change other rows, e.g. `ON DELETE CASCADE`.
    pub fn actions(&self) -> Vec<String> {
        let acts = |action: &str| !matches!(action, "NO ACTION" | "RESTRICT");
        let mut out = Vec::new();
        if acts(&self.on_delete) {
            out.push(format!("ON DELETE {}", self.on_delete));
        }
        if acts(&self.on_update) {
            out.push(format!("ON UPDATE {}", self.on_update));
        }
        out
    }
}

/// Whether foreign keys are checked in duplex's own sessions on a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForeignKeyChecks {
    /// Turned off (checks and referential actions) by the named session setting.
    Off {
        /// E.g. `session_replication_role = replica`.
        setting: &'static str,
    },
    /// Checked as in any session: duplex writes in an order that satisfies them (see the
    /// module docs).
    On,
}

/// The foreign keys of some tables on a target site and how duplex's sessions treat them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetForeignKeys {
    /// Whether duplex's sessions check them.
    pub checks: ForeignKeyChecks,
    /// Every foreign key declared on the tables asked about (the referencing side).
    pub keys: Vec<ForeignKey>,
}

/// Reads the foreign keys declared on `tables` of `site` and whether duplex's sessions there
/// can turn their checks off. Changes nothing on the server (PostgreSQL: the setting is tried
/// on a session of its own, which is closed again).
pub async fn target_foreign_keys(
    site: &SiteConnection,
    tables: &[TableName],
) -> Result<TargetForeignKeys, AdminError> {
    match site.kind {
        SiteKind::Postgres => crate::postgres::target_foreign_keys(site, tables).await,
        SiteKind::Mysql => crate::mysql::target_foreign_keys(site, tables).await,
        SiteKind::Mssql => crate::mssql::load::target_foreign_keys(site, tables).await,
    }
}

/// Reads the foreign keys declared on `tables` of a source `site` whose referential actions
/// the site's change log does not carry (MariaDB/MySQL: InnoDB does not binlog the rows a
/// cascade changes); empty for PostgreSQL, whose WAL logs them, and SQL Server, whose capture
/// job reads the rows a cascade changes from the transaction log like any other.
pub async fn unlogged_source_actions(
    site: &SiteConnection,
    tables: &[TableName],
) -> Result<Vec<ForeignKey>, AdminError> {
    match site.kind {
        SiteKind::Postgres | SiteKind::Mssql => Ok(Vec::new()),
        SiteKind::Mysql => Ok(crate::mysql::target_foreign_keys(site, tables)
            .await?
            .keys
            .into_iter()
            .filter(|k| !k.actions().is_empty())
            .collect()),
    }
}

/// Tables that reference each other in a cycle (or a table referencing itself): no table
/// order satisfies their keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyCycle {
    /// The constraints on the cycle (or the self-reference), by name with their table.
    pub keys: Vec<ForeignKey>,
}

/// The copy level of each of `tables`: a table's level is one more than the highest level of
/// the tables among `tables` it references (0 for a table referencing none of them), so
/// copying all of one level before the next satisfies every key between them. Keys
/// referencing tables not in `tables` are ignored (nothing duplex copies can satisfy them).
/// A self-reference or a cycle among `tables` is an error naming its keys.
pub fn dependency_levels(
    tables: &[TableName],
    keys: &[ForeignKey],
) -> Result<Vec<usize>, DependencyCycle> {
    let index: BTreeMap<&TableName, usize> =
        tables.iter().enumerate().map(|(i, t)| (t, i)).collect();
    // parents[i]: (parent index, key) for each key of table i within `tables`.
    let mut parents: Vec<Vec<(usize, &ForeignKey)>> = vec![Vec::new(); tables.len()];
    for key in keys {
        if let (Some(&child), Some(&parent)) = (index.get(&key.table), index.get(&key.references)) {
            if child == parent {
                return Err(DependencyCycle {
                    keys: vec![key.clone()],
                });
            }
            parents[child].push((parent, key));
        }
    }
    let mut levels: Vec<Option<usize>> = vec![None; tables.len()];
    // Depth-first with an explicit "on the path" set to find cycles.
    fn visit<'k>(
        i: usize,
        parents: &[Vec<(usize, &'k ForeignKey)>],
        levels: &mut Vec<Option<usize>>,
        path: &mut Vec<(usize, Option<&'k ForeignKey>)>,
    ) -> Result<usize, DependencyCycle> {
        if let Some(level) = levels[i] {
            return Ok(level);
        }
        let mut level = 0;
        for &(parent, key) in &parents[i] {
            if let Some(at) = path.iter().position(|(p, _)| *p == parent) {
                let mut cycle: Vec<ForeignKey> = path[at + 1..]
                    .iter()
                    .filter_map(|(_, k)| k.cloned())
                    .collect();
                cycle.push(key.clone());
                return Err(DependencyCycle { keys: cycle });
            }
            path.push((parent, Some(key)));
            let got = visit(parent, parents, levels, path);
            path.pop();
            level = level.max(got? + 1);
        }
        levels[i] = Some(level);
        Ok(level)
    }
    for i in 0..tables.len() {
        let mut path = vec![(i, None)];
        visit(i, &parents, &mut levels, &mut path)?;
    }
    Ok(levels.into_iter().map(|l| l.unwrap_or(0)).collect())
}

/// The tables among `keys`' referenced tables that are not in `carried`, with the keys that
/// reference them.
pub fn references_outside<'k>(
    keys: &'k [ForeignKey],
    carried: &BTreeSet<TableName>,
) -> Vec<&'k ForeignKey> {
    keys.iter()
        .filter(|k| !carried.contains(&k.references))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str) -> TableName {
        TableName::new("s", name)
    }

    fn fk(name: &str, child: &str, parent: &str) -> ForeignKey {
        ForeignKey {
            name: name.into(),
            table: t(child),
            references: t(parent),
            on_delete: "NO ACTION".into(),
            on_update: "NO ACTION".into(),
            deferrable: false,
        }
    }

    #[test]
    fn parents_come_before_children() {
        let tables = [t("order_lines"), t("orders"), t("customers"), t("notes")];
        let keys = [
            fk("lines_order", "order_lines", "orders"),
            fk("orders_customer", "orders", "customers"),
            fk("lines_product", "order_lines", "products"),
        ];
        assert_eq!(dependency_levels(&tables, &keys).unwrap(), vec![2, 1, 0, 0]);
    }

    #[test]
    fn self_references_and_cycles_are_named() {
        let tables = [t("a"), t("b"), t("c")];
        let err = dependency_levels(&tables, &[fk("a_self", "a", "a")]).unwrap_err();
        assert_eq!(err.keys[0].name, "a_self");
        let err = dependency_levels(
            &tables,
            &[
                fk("a_b", "a", "b"),
                fk("b_c", "b", "c"),
                fk("c_b", "c", "b"),
            ],
        )
        .unwrap_err();
        let mut names: Vec<&str> = err.keys.iter().map(|k| k.name.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["b_c", "c_b"]);
    }

    #[test]
    fn actions_name_what_changes_other_rows() {
        let mut key = fk("k", "a", "b");
        assert!(key.actions().is_empty());
        key.on_delete = "CASCADE".into();
        key.on_update = "SET NULL".into();
        assert_eq!(
            key.actions(),
            vec!["ON DELETE CASCADE", "ON UPDATE SET NULL"]
        );
    }

    #[test]
    fn keys_to_tables_nobody_carries_are_found() {
        let keys = [fk("a_b", "a", "b"), fk("a_x", "a", "x")];
        let carried: BTreeSet<TableName> = [t("a"), t("b")].into_iter().collect();
        let outside = references_outside(&keys, &carried);
        assert_eq!(outside.len(), 1);
        assert_eq!(outside[0].name, "a_x");
    }
}
