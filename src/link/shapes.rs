//! Following the source's table shapes (see `crate::shape`): the routes each attempt writes
//! with, the target tables' columns, judging each shape the stream announces, and recording
//! the shapes every target committed changes of.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use duplex_connectors::apply::TableRoute;
use duplex_connectors::{TableName, TableShape};
use duplex_state::StateStore;

use super::{LinkError, LinkPlan};
use crate::shape::{ShapeStop, TargetView, shape_key};

/// The routes of every target: a source table is routed by the shape its changes will have
/// next: the one `followed` in this run, else the last one recorded in the state store, else
/// the catalog's. A column gone from the source (not in the catalog) that the target no
/// longer has either is left out (the DBA made the same change on the target). For a table
/// routed by a known shape, every column the target does not have is left out: the changes may
/// no longer carry it (renamed since, the target renamed to follow), and the stream announces
/// the shape of the changes before the first of them, which is judged against that known shape
/// and stops the link ([`ShapeStop::Missing`]) when they still carry it.
pub(super) fn current_routes(
    plan: &LinkPlan,
    followed: &HashMap<TableName, TableShape>,
    stored: &HashMap<TableName, TableShape>,
    target_columns: &[HashMap<TableName, BTreeSet<String>>],
) -> Vec<Vec<TableRoute>> {
    let mut schemas = plan.schemas.clone();
    for (table, catalog) in &plan.schemas {
        if let Some(shape) = followed.get(table).or_else(|| stored.get(table)) {
            schemas.insert(table.clone(), crate::shape::schema_of(shape, catalog));
        }
    }
    plan.targets
        .iter()
        .zip(target_columns)
        .map(|(t, columns)| {
            let mut routes = crate::routes::routes_for(
                &plan.mappings,
                &plan.source.name,
                &t.site.name,
                &schemas,
            );
            for route in &mut routes {
                let (Some(catalog), Some(on_target)) =
                    (plan.schemas.get(&route.source), columns.get(&route.target))
                else {
                    continue;
                };
                let shaped =
                    followed.contains_key(&route.source) || stored.contains_key(&route.source);
                route.columns.retain(|(source, target)| {
                    on_target.contains(target) || !shaped && catalog.column(source).is_some()
                });
            }
            routes
        })
        .collect()
}

/// The columns of every target table of the plan's routes, per target.
pub(super) async fn target_columns(
    plan: &LinkPlan,
) -> Result<Vec<HashMap<TableName, BTreeSet<String>>>, LinkError> {
    let mut all = Vec::with_capacity(plan.targets.len());
    for target in &plan.targets {
        let routes = &target.routes;
        let tables: BTreeSet<TableName> = routes.iter().map(|r| r.target.clone()).collect();
        let schemas = duplex_connectors::describe(&target.site.connection(), &tables)
            .await
            .map_err(|source| LinkError::Schema {
                site: target.site.name.clone(),
                transient: source.is_transient(),
                source: Box::new(source),
            })?;
        all.push(
            schemas
                .into_iter()
                .map(|(table, schema)| {
                    (table, schema.columns.into_iter().map(|c| c.name).collect())
                })
                .collect(),
        );
    }
    Ok(all)
}

/// Source tables' shapes as this attempt knows them (see `crate::shape`).
pub(super) struct Shapes {
    /// The last shape every target committed changes of, per table (from the state store).
    pub(super) stored: HashMap<TableName, TableShape>,
    /// The last shape announced in this attempt, per table.
    pub(super) session: HashMap<TableName, TableShape>,
    /// Shapes to record once every target committed the item with this sequence number.
    pub(super) to_record: VecDeque<(u64, TableShape)>,
    /// Columns of the target tables, per target.
    pub(super) target_columns: Vec<HashMap<TableName, BTreeSet<String>>>,
}

/// Judges a shape the stream announced (see `crate::shape`): `None` when the routes stay,
/// the shape when they change (the attempt ends and the next one routes by it), or why the
/// link stops. `next` is the sequence number of the item the shape comes before.
pub(super) fn follow_shape(
    plan: &LinkPlan,
    routes: &[Vec<TableRoute>],
    shapes: &mut Shapes,
    shape: TableShape,
    next: u64,
) -> Result<Option<TableShape>, Box<ShapeStop>> {
    let table = &shape.table;
    let Some(catalog) = plan.schemas.get(table) else {
        return Ok(None);
    };
    let previous = shapes
        .session
        .get(table)
        .or_else(|| shapes.stored.get(table));
    let views: Vec<TargetView<'_>> = plan
        .targets
        .iter()
        .zip(routes)
        .zip(&shapes.target_columns)
        .map(|((target, routes), columns)| {
            let route = routes.iter().find(|r| &r.source == table);
            TargetView {
                site: &target.site.name,
                route,
                columns: route.and_then(|r| columns.get(&r.target)),
            }
        })
        .collect();
    let new = crate::shape::judge(
        &plan.mappings,
        &plan.source.name,
        &shape,
        previous,
        catalog,
        &views,
    )?;
    let rerouted = views
        .iter()
        .zip(&new)
        .any(|(view, new)| crate::shape::reroutes(&shape, view.route, new.as_ref()));
    shapes.session.insert(table.clone(), shape.clone());
    if rerouted {
        return Ok(Some(shape));
    }
    if shapes.stored.get(table) != Some(&shape) {
        shapes.to_record.push_back((next, shape));
    }
    Ok(None)
}

/// Records in the state store the shapes whose following item every target committed (so a
/// restart compares what it reads with them).
pub(super) async fn record_shapes(
    state: &Arc<StateStore>,
    source: &str,
    to_record: &mut VecDeque<(u64, TableShape)>,
    low_water: u64,
) -> Result<(), LinkError> {
    while to_record.front().is_some_and(|(seq, _)| *seq <= low_water) {
        let Some((_, shape)) = to_record.pop_front() else {
            break;
        };
        let store = state.clone();
        let key = shape_key(source, &shape.table);
        tokio::task::spawn_blocking(move || store.save_position(&key, &shape))
            .await
            .map_err(|panic| LinkError::Crashed(panic.to_string()))?
            .map_err(LinkError::State)?;
    }
    Ok(())
}
