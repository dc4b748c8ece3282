//! Schema changes on a source, as its change log announces them ([`StreamItem::Shape`]):
//! which a link follows and which stop it.
//!
//! A link writes each mapped source table through a route per target (`crate::routes`). When
//! the stream announces a new shape of a table (the columns its following changes carry), the
//! route that shape calls for is worked out from the mappings, and the change is judged
//! against the previous shape the log announced (in this session, else the last one every
//! target committed changes of, kept in the state store) and against the target's table:
//!
//! - a column added to the source is followed when the mapping does not replicate it (a
//!   `columns` list without it) or the target table has the column it goes to; otherwise the
//!   link stops, naming the target column to add;
//! - a replicated column that disappeared (dropped, or renamed: the log cannot tell) stops the
//!   link while the target still has the column it was written to and nothing else writes it:
//!   following it would write NULL there, or lose the renamed column's values. Once the DBA
//!   made the same change on the target (or took the column out of the mapping), it is
//!   followed;
//! - a replicated column whose type changed stops the link: values of the new type may not
//!   fit the target column. `duplex run --accept-schema-change <table>` accepts the table's
//!   current shape once the target was changed to match;
//! - a replicated column that the shape does not carry and no earlier shape had is newer than
//!   the changes being read (added since): it is not written, and arrives with the shape that
//!   has it.
//!
//! The link stops *before* handing on the first change with the new shape, after every target
//! committed what came before, so after the fix it resumes exactly there.

use std::collections::{BTreeSet, HashMap};

use duplex_connectors::apply::TableRoute;
use duplex_connectors::{Column, TableName, TableSchema, TableShape};

use crate::config::Mapping;

/// The state-store key of the last shape of `table` on `source` that every target committed
/// changes of.
pub fn shape_key(source: &str, table: &TableName) -> String {
    format!("shape:{source}:{table}")
}

/// A schema change a link does not follow: the message says what changed and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeStop {
    /// A replicated column is gone from the source's changes.
    #[error(
        "column {column:?} of {source_site}.{table} is no longer in the source's changes (it was dropped or renamed{renamed}), but site {target_site} still has column {target_column:?} in {target_table}, which it was replicated into; nothing from this change on was applied. If it was dropped: drop {target_table}.{target_column} on {target_site} too, or take the column out of the mapping (a `columns` list without it). If it was renamed: rename {target_table}.{target_column} on {target_site} the same way (or map the new name to it with `rename`). Then start duplex again: it resumes at this change"
    )]
    Gone {
        /// Source site.
        source_site: String,
        /// Source table.
        table: TableName,
        /// The column gone.
        column: String,
        /// `, perhaps to "c2"` when columns appeared in the same change.
        renamed: String,
        /// Target site.
        target_site: String,
        /// Target table.
        target_table: TableName,
        /// The target column it was written to.
        target_column: String,
    },
    /// A column the mapping replicates was added on the source, and the target lacks it.
    #[error(
        "column {column:?} was added to {source_site}.{table}, and the mapping replicates it into {target_table}.{target_column} on site {target_site}, which has no such column; nothing from this change on was applied. Add the column on {target_site} (ALTER TABLE {target_table} ADD COLUMN {target_column} ...), or list the columns to replicate without it (`columns` in the mapping), then start duplex again: it resumes at this change"
    )]
    Added {
        /// Source site.
        source_site: String,
        /// Source table.
        table: TableName,
        /// The new column.
        column: String,
        /// Target site.
        target_site: String,
        /// Target table.
        target_table: TableName,
        /// The target column it would be written to.
        target_column: String,
    },
    /// A replicated column the changes carry has no column to go to on the target.
    #[error(
        "the source's changes of {source_site}.{table} carry column {column:?}, which the mapping replicates into {target_table}.{target_column} on site {target_site}, but that table has no such column; nothing from this change on was applied. If the target column was renamed or dropped to follow a change on the source that duplex has not reached yet, undo that until duplex stops at the change itself; otherwise restore the column on {target_site}. Then start duplex again: it resumes at this change"
    )]
    Missing {
        /// Source site.
        source_site: String,
        /// Source table.
        table: TableName,
        /// The column.
        column: String,
        /// Target site.
        target_site: String,
        /// Target table.
        target_table: TableName,
        /// The target column it would be written to.
        target_column: String,
    },
    /// A replicated column changed its type.
    #[error(
        "the type of column {column:?} of {source_site}.{table} changed from {from} to {to}; its values may not fit {target_table}.{target_column} on site {target_site}, so nothing from this change on was applied. Change the target column to hold the new type, then start duplex again with `duplex run --accept-schema-change {table}`: it resumes at this change"
    )]
    Retyped {
        /// Source site.
        source_site: String,
        /// Source table.
        table: TableName,
        /// The column.
        column: String,
        /// The type before.
        from: String,
        /// The type now.
        to: String,
        /// Target site.
        target_site: String,
        /// Target table.
        target_table: TableName,
        /// The target column.
        target_column: String,
    },
    /// A primary-key column is gone from the source's changes.
    #[error(
        "primary-key column {column:?} of {source_site}.{table} is no longer in the source's changes (dropped or renamed); rows cannot be matched on the targets. Restore the column, or change the mapping and backfill the table again (`duplex backfill --mapping <name> --restart`)"
    )]
    KeyGone {
        /// Source site.
        source_site: String,
        /// Source table.
        table: TableName,
        /// The key column.
        column: String,
    },
}

/// One target of a source table, as the judge sees it.
#[derive(Debug, Clone)]
pub struct TargetView<'a> {
    /// The target site.
    pub site: &'a str,
    /// The route the link writes this table with now (none when this target does not get it).
    pub route: Option<&'a TableRoute>,
    /// The columns of the target table (of `route`'s target, or of the table the new route
    /// goes to).
    pub columns: Option<&'a BTreeSet<String>>,
}

/// The source table as `shape` has it, with the catalog's primary key (for working out
/// routes, which use the names only).
pub fn schema_of(shape: &TableShape, catalog: &TableSchema) -> TableSchema {
    TableSchema {
        name: shape.table.clone(),
        columns: shape
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                declared: c.type_name.clone(),
                nullable: true,
            })
            .collect(),
        primary_key: catalog.primary_key.clone(),
    }
}

/// Judges a new `shape` of a source table: the route each target needs for the changes that
/// follow (in `targets`' order), or why the link must stop. `previous` is the last shape the
/// log announced before (`None` when none is known: only the current routes are compared).
pub fn judge(
    mappings: &[Mapping],
    source: &str,
    shape: &TableShape,
    previous: Option<&TableShape>,
    catalog: &TableSchema,
    targets: &[TargetView<'_>],
) -> Result<Vec<Option<TableRoute>>, Box<ShapeStop>> {
    let table = &shape.table;
    let carried: BTreeSet<&str> = shape.columns.iter().map(|c| c.name.as_str()).collect();
    for key in &catalog.primary_key {
        let known = previous.is_none_or(|p| p.column(key).is_some());
        if known && !carried.contains(key.as_str()) {
            return Err(Box::new(ShapeStop::KeyGone {
                source_site: source.to_owned(),
                table: table.clone(),
                column: key.clone(),
            }));
        }
    }
    let schemas = HashMap::from([(table.clone(), schema_of(shape, catalog))]);
    let mut routes = Vec::with_capacity(targets.len());
    for view in targets {
        let target_site = view.site;
        let new = crate::routes::routes_for(mappings, source, target_site, &schemas)
            .into_iter()
            .find(|r| &r.source == table);
        let has = |column: &str| view.columns.is_some_and(|c| c.contains(column));
        // Where the previous shape's columns were written.
        let old = previous.and_then(|previous| {
            let schemas = HashMap::from([(table.clone(), schema_of(previous, catalog))]);
            crate::routes::routes_for(mappings, source, target_site, &schemas)
                .into_iter()
                .find(|r| &r.source == table)
        });
        if let (Some(previous), Some(old)) = (previous, &old) {
            let appeared: Vec<&str> = shape
                .columns
                .iter()
                .filter(|c| previous.column(&c.name).is_none())
                .map(|c| c.name.as_str())
                .collect();
            for column in &previous.columns {
                if carried.contains(column.name.as_str()) {
                    continue;
                }
                let Some((_, target_column)) = old.columns.iter().find(|(s, _)| *s == column.name)
                else {
                    continue;
                };
                let still_written = new.as_ref().is_some_and(|r| {
                    r.columns
                        .iter()
                        .any(|(s, t)| t == target_column && carried.contains(s.as_str()))
                });
                if !still_written && has(target_column) {
                    return Err(Box::new(ShapeStop::Gone {
                        source_site: source.to_owned(),
                        table: table.clone(),
                        column: column.name.clone(),
                        renamed: match appeared.as_slice() {
                            [] => String::new(),
                            names => format!(", perhaps to {}", quoted_list(names)),
                        },
                        target_site: target_site.to_owned(),
                        target_table: old.target.clone(),
                        target_column: target_column.clone(),
                    }));
                }
            }
        }
        if let Some(new) = &new {
            for (source_column, target_column) in &new.columns {
                let Some(now) = shape.column(source_column) else {
                    // Not carried: added after these changes, or never there (`check` and the
                    // applier refuse a mapping naming a column that does not exist).
                    continue;
                };
                let before = match previous {
                    Some(previous) => previous.column(source_column).cloned(),
                    None => view
                        .route
                        .filter(|r| r.columns.iter().any(|(s, _)| s == source_column))
                        .map(|_| now.clone()),
                };
                match before {
                    Some(_) if !has(target_column) => {
                        return Err(Box::new(ShapeStop::Missing {
                            source_site: source.to_owned(),
                            table: table.clone(),
                            column: source_column.clone(),
                            target_site: target_site.to_owned(),
                            target_table: new.target.clone(),
                            target_column: target_column.clone(),
                        }));
                    }
                    None if !has(target_column) => {
                        return Err(Box::new(ShapeStop::Added {
                            source_site: source.to_owned(),
                            table: table.clone(),
                            column: source_column.clone(),
                            target_site: target_site.to_owned(),
                            target_table: new.target.clone(),
                            target_column: target_column.clone(),
                        }));
                    }
                    Some(before) if before.type_name != now.type_name => {
                        return Err(Box::new(ShapeStop::Retyped {
                            source_site: source.to_owned(),
                            table: table.clone(),
                            column: source_column.clone(),
                            from: before.type_name,
                            to: now.type_name.clone(),
                            target_site: target_site.to_owned(),
                            target_table: new.target.clone(),
                            target_column: target_column.clone(),
                        }));
                    }
                    _ => {}
                }
            }
        }
        routes.push(new);
    }
    Ok(routes)
}

/// `"a", "b"`.
fn quoted_list(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What differs between two shapes of a table, for messages: `column "c" gone, column "d"
/// added, column "a" int4 -> int8`.
pub fn describe_change(before: &TableShape, after: &TableShape) -> String {
    let mut parts = Vec::new();
    for column in &before.columns {
        match after.column(&column.name) {
            None => parts.push(format!("column {:?} gone", column.name)),
            Some(now) if now.type_name != column.type_name => parts.push(format!(
                "column {:?} {} -> {}",
                column.name, column.type_name, now.type_name
            )),
            Some(_) => {}
        }
    }
    for column in &after.columns {
        if before.column(&column.name).is_none() {
            parts.push(format!("column {:?} added", column.name));
        }
    }
    if parts.is_empty() {
        parts.push("columns reordered".to_owned());
    }
    parts.join(", ")
}

/// Whether changes of `shape` are written differently by `new` than by `current`: another
/// target table, or a column the shape carries written elsewhere or not at all (columns it
/// does not carry are not written by either).
pub fn reroutes(
    shape: &TableShape,
    current: Option<&TableRoute>,
    new: Option<&TableRoute>,
) -> bool {
    let (current, new) = match (current, new) {
        (None, None) => return false,
        (Some(current), Some(new)) => (current, new),
        _ => return true,
    };
    let written = |route: &TableRoute, column: &str| {
        route
            .columns
            .iter()
            .find(|(s, _)| s == column)
            .map(|(_, t)| t.clone())
    };
    current.target != new.target
        || current.key != new.key
        || shape
            .columns
            .iter()
            .any(|c| written(current, &c.name) != written(new, &c.name))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use duplex_connectors::ShapeColumn;
    use indexmap::IndexMap;

    use super::*;
    use crate::config::{ConflictPolicy, Direction};

    fn table() -> TableName {
        TableName::new("public", "evo")
    }

    fn shape(columns: &[(&str, &str)]) -> TableShape {
        TableShape {
            table: table(),
            columns: columns
                .iter()
                .map(|(name, ty)| ShapeColumn {
                    name: (*name).to_owned(),
                    type_name: (*ty).to_owned(),
                })
                .collect(),
        }
    }

    fn mapping(columns: Option<&[&str]>) -> Mapping {
        Mapping {
            name: "evo".into(),
            tables: IndexMap::from([
                ("store".to_owned(), table()),
                ("wms".to_owned(), TableName::new("public", "evo")),
            ]),
            direction: Direction::OneWay {
                from: "store".into(),
                to: "wms".into(),
            },
            conflict: ConflictPolicy::LastWriterWins,
            columns: columns.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
            column_conflict: IndexMap::new(),
            values: BTreeMap::new(),
            filters: BTreeMap::new(),
            rename: BTreeMap::new(),
            on_error: Default::default(),
            pattern: None,
        }
    }

    fn catalog(previous: &TableShape) -> TableSchema {
        TableSchema {
            primary_key: vec!["id".into()],
            ..schema_of(
                previous,
                &TableSchema {
                    name: table(),
                    columns: Vec::new(),
                    primary_key: Vec::new(),
                },
            )
        }
    }

    /// Judges `new` after `previous` for a target whose table has `target_columns`.
    fn judged(
        mapping: &Mapping,
        previous: &TableShape,
        new: &TableShape,
        target_columns: &[&str],
    ) -> Result<Option<TableRoute>, Box<ShapeStop>> {
        let mappings = [mapping.clone()];
        let catalog = catalog(previous);
        let schemas = HashMap::from([(table(), catalog.clone())]);
        let current = crate::routes::routes_for(&mappings, "store", "wms", &schemas)
            .into_iter()
            .next();
        let columns: BTreeSet<String> = target_columns.iter().map(|c| (*c).to_owned()).collect();
        let view = TargetView {
            site: "wms",
            route: current.as_ref(),
            columns: Some(&columns),
        };
        judge(&mappings, "store", new, Some(previous), &catalog, &[view])
            .map(|mut routes| routes.remove(0))
    }

    fn written(route: &TableRoute) -> Vec<&str> {
        route.columns.iter().map(|(s, _)| s.as_str()).collect()
    }

    #[test]
    fn an_added_column_is_followed_when_the_target_has_it_and_stops_otherwise() {
        let before = shape(&[("id", "int4"), ("c", "text")]);
        let after = shape(&[("id", "int4"), ("c", "text"), ("d", "text")]);
        let route = judged(&mapping(None), &before, &after, &["id", "c", "d"])
            .unwrap()
            .unwrap();
        assert_eq!(written(&route), ["id", "c", "d"]);
        let stop = judged(&mapping(None), &before, &after, &["id", "c"]).unwrap_err();
        assert!(matches!(*stop, ShapeStop::Added { ref column, .. } if column == "d"));
        // Not replicated: followed without it, whatever the target has.
        let route = judged(&mapping(Some(&["id", "c"])), &before, &after, &["id", "c"])
            .unwrap()
            .unwrap();
        assert_eq!(written(&route), ["id", "c"]);
    }

    #[test]
    fn a_replicated_column_gone_stops_while_the_target_still_has_it() {
        let before = shape(&[("id", "int4"), ("c", "text")]);
        let renamed = shape(&[("id", "int4"), ("c2", "text")]);
        let stop = judged(&mapping(None), &before, &renamed, &["id", "c", "c2"]).unwrap_err();
        assert!(
            matches!(*stop, ShapeStop::Gone { ref column, ref renamed, .. } if column == "c" && renamed.contains("\"c2\"")),
            "{stop}"
        );
        // The DBA renamed it on the target too: followed.
        let route = judged(&mapping(None), &before, &renamed, &["id", "c2"])
            .unwrap()
            .unwrap();
        assert_eq!(written(&route), ["id", "c2"]);
        // Dropped on both.
        let dropped = shape(&[("id", "int4")]);
        assert!(judged(&mapping(None), &before, &dropped, &["id"]).is_ok());
    }

    #[test]
    fn a_changed_type_or_a_gone_key_stops() {
        let before = shape(&[("id", "int4"), ("a", "int4")]);
        let retyped = shape(&[("id", "int4"), ("a", "int8")]);
        let stop = judged(&mapping(None), &before, &retyped, &["id", "a"]).unwrap_err();
        assert!(
            matches!(*stop, ShapeStop::Retyped { ref from, ref to, .. } if from == "int4" && to == "int8")
        );
        let keyless = shape(&[("a", "int4")]);
        let stop = judged(&mapping(None), &before, &keyless, &["id", "a"]).unwrap_err();
        assert!(matches!(*stop, ShapeStop::KeyGone { .. }));
    }

    #[test]
    fn only_columns_the_shape_carries_decide_a_reroute() {
        let shape = shape(&[("id", "int4"), ("c", "text")]);
        let both = TableRoute::same_names(table(), table(), &["id", "c", "d"], &["id"]);
        let carried = TableRoute::same_names(table(), table(), &["id", "c"], &["id"]);
        assert!(!reroutes(&shape, Some(&both), Some(&carried)));
        let without_c = TableRoute::same_names(table(), table(), &["id"], &["id"]);
        assert!(reroutes(&shape, Some(&carried), Some(&without_c)));
        assert!(reroutes(&shape, None, Some(&carried)));
    }
}
