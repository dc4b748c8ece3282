//! What the engine runs: its sites, their routes, the two-way mappings, and where each site's
//! reader starts.
//!
//! [`plan`] reads the configuration and the mapped tables of every site once, before anything
//! runs: the canonical columns and key of each mapping come from its first site's table, and
//! every site gets a [`TableRoute`] per mapping from the canonical table to its own table. A
//! key column that is not replicated is refused here, so the coordinator can rely on every
//! canonical row carrying its key.
//!
//! [`start_positions`] decides where each reader starts. The engine's own record comes first: a
//! reader restarts exactly after what the coordinator committed, so nothing read is decided
//! twice or skipped. For a site the engine never read, a backfill from it recorded its handover
//! position on the other sites; the lowest of those is taken, so nothing committed after any of
//! the snapshots is missed (a change read twice is classified `Seen` by its vector). Otherwise
//! the stream starts at the site's current position, which the reader records first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use duplex_connectors::Position;
use duplex_connectors::TableName;
use duplex_connectors::apply::{Applier, TableRoute};

use super::EngineError;
use super::rows::{self, MergeMapping};
use super::sites::{SiteWriter, apply_error};
use crate::config::{Config, Direction, Site};

/// What the engine reads and writes.
#[derive(Debug, Clone)]
pub struct MergePlan {
    /// Every site of a two-way mapping, in configuration order.
    pub sites: Vec<MergeSite>,
    /// The two-way mappings.
    pub mappings: Vec<MergeMapping>,
    /// How long vectors of rows deleted everywhere are kept.
    pub deleted_rows_kept_for: Duration,
    /// `duplex run --take-over-from`: the deployment whose claims on the sites this engine
    /// takes over (see `duplex_connectors::apply::WriterClaim`).
    pub take_over_from: Option<String>,
    /// `duplex run --accept-schema-change`: per site, the tables whose next change of columns
    /// the engine follows in this run (the DBA made it on every site).
    pub accepted_shapes: BTreeSet<(String, TableName)>,
    /// `duplex run --role coordinator`: each site's changes are taken from its merge stream
    /// on this bus (published by `--role reader`) instead of from the site.
    pub bus: Option<crate::bus::Bus>,
}

/// One site of the engine.
#[derive(Debug, Clone)]
pub struct MergeSite {
    /// The site.
    pub site: Site,
    /// Its tables of two-way mappings.
    pub tables: BTreeSet<TableName>,
    /// Canonical table -> its table.
    pub routes: Vec<TableRoute>,
    /// The identity of the deployment running the engine (the state store's), claimed on
    /// the site's replication objects; set when the engine starts.
    pub deployment: String,
    /// The deployment whose claims on the site's replication objects are taken over
    /// ([`MergePlan::take_over_from`]).
    pub take_over_from: Option<String>,
}

impl MergePlan {
    /// The mapping `table` of `site` belongs to.
    pub(super) fn mapping_for(&self, site: &str, table: &TableName) -> Option<&MergeMapping> {
        self.mappings
            .iter()
            .find(|m| m.tables.get(site) == Some(table))
    }

    /// The mapping named `name`.
    pub(super) fn mapping(&self, name: &str) -> Option<&MergeMapping> {
        self.mappings.iter().find(|m| m.name == name)
    }

    /// The index of site `name` in [`MergePlan::sites`].
    pub(super) fn site_index(&self, name: &str) -> Option<usize> {
        self.sites.iter().position(|s| s.site.name == name)
    }
}

/// Builds the engine's plan from the two-way mappings of `config`; `None` when there are none.
pub async fn plan(config: &Config) -> Result<Option<MergePlan>, EngineError> {
    let two_way: Vec<_> = config
        .mappings
        .iter()
        .filter(|m| m.direction == Direction::Both)
        .collect();
    if two_way.is_empty() {
        return Ok(None);
    }
    let mut site_names: Vec<&str> = Vec::new();
    for name in config.sites.keys() {
        if two_way.iter().any(|m| m.tables.contains_key(name)) {
            site_names.push(name);
        }
    }
    let mut schemas = HashMap::new();
    for name in &site_names {
        let site = &config.sites[*name];
        let tables: BTreeSet<TableName> = two_way
            .iter()
            .filter_map(|m| m.tables.get(*name).cloned())
            .collect();
        let described = duplex_connectors::describe(&site.connection(), &tables)
            .await
            .map_err(|source| EngineError::Describe {
                site: site.name.clone(),
                source,
            })?;
        schemas.insert(name.to_string(), described);
    }
    let mut mappings = Vec::new();
    for mapping in two_way {
        let (first_site, first_table) = mapping.tables.first().expect("validated: two sites");
        let first = &schemas[first_site][first_table];
        let columns: Vec<String> = match &mapping.columns {
            Some(columns) => columns.clone(),
            None => first
                .columns
                .iter()
                .map(|c| mapping.canonical_column(first_site, &c.name).to_owned())
                .collect(),
        };
        let key: Vec<String> = first
            .primary_key
            .iter()
            .map(|c| mapping.canonical_column(first_site, c).to_owned())
            .collect();
        if let Some(missing) = key.iter().find(|k| !columns.contains(k)) {
            return Err(EngineError::Unsupported(format!(
                "mapping {}: key column {missing} is not among the replicated columns: add it to `columns`",
                mapping.name
            )));
        }
        let mut to_canonical = BTreeMap::new();
        for site in mapping.tables.keys() {
            let names: HashMap<String, String> = columns
                .iter()
                .map(|c| (mapping.site_column(site, c).to_owned(), c.clone()))
                .collect();
            to_canonical.insert(site.clone(), names);
        }
        let column_policies = mapping
            .column_conflict
            .iter()
            .filter(|(column, _)| columns.contains(column))
            .map(|(column, policy)| (column.clone(), policy.clone()))
            .collect();
        mappings.push(MergeMapping {
            name: mapping.name.clone(),
            canonical: TableName::new(rows::CANONICAL_SCHEMA, &mapping.name),
            sites: mapping.tables.keys().cloned().collect(),
            columns,
            key,
            policy: mapping.conflict.clone(),
            column_policies,
            values: mapping.values.clone(),
            filters: mapping.filters.clone(),
            tables: mapping.tables.clone().into_iter().collect(),
            to_canonical,
        });
    }
    let sites = site_names
        .iter()
        .map(|name| {
            let routes = mappings
                .iter()
                .filter_map(|m| {
                    let table = m.tables.get(*name)?;
                    let names = &m.to_canonical[*name];
                    let mut columns: Vec<(String, String)> = names
                        .iter()
                        .map(|(local, canonical)| (canonical.clone(), local.clone()))
                        .collect();
                    columns.sort_by_key(|(canonical, _)| {
                        m.columns.iter().position(|c| c == canonical)
                    });
                    Some(TableRoute {
                        source: m.canonical.clone(),
                        target: table.clone(),
                        columns,
                        key: m.key.clone(),
                    })
                })
                .collect();
            MergeSite {
                site: config.sites[*name].clone(),
                tables: mappings
                    .iter()
                    .filter_map(|m| m.tables.get(*name).cloned())
                    .collect(),
                routes,
                deployment: String::new(),
                take_over_from: None,
            }
        })
        .collect();
    Ok(Some(MergePlan {
        sites,
        mappings,
        deleted_rows_kept_for: config.deleted_rows_kept_for,
        take_over_from: None,
        accepted_shapes: BTreeSet::new(),
        bus: None,
    }))
}

/// Where each site's reader starts (plan order), given the positions the engine recorded
/// (`stored`, plan order): its own record; for a site it never read, the handover position a
/// backfill from it recorded on the other sites (the lowest, if they differ); or else `None`,
/// the site's current position.
pub(super) async fn start_positions(
    plan: &MergePlan,
    stored: Vec<Option<Position>>,
    writers: &mut [SiteWriter],
    deployment: &str,
) -> Result<Vec<Option<Position>>, EngineError> {
    let mut starts = Vec::new();
    for (site, stored) in plan.sites.iter().zip(stored) {
        let name = &site.site.name;
        let mut start: Option<Position> = stored;
        if start.is_none() {
            for (other, writer) in plan.sites.iter().zip(writers.iter_mut()) {
                if other.site.name == *name {
                    continue;
                }
                let key = crate::link::position_key(name, deployment);
                let mut handover = writer
                    .target
                    .position(&key)
                    .await
                    .map_err(|e| apply_error(&other.site.name, e))?;
                if handover.is_none() {
                    // Recorded before positions were kept per deployment.
                    handover = writer
                        .target
                        .position(name)
                        .await
                        .map_err(|e| apply_error(&other.site.name, e))?;
                }
                let Some(handover) = handover else {
                    continue;
                };
                let lower = match &start {
                    None => true,
                    Some(current) => handover
                        .compare(current)
                        .map_err(|e| EngineError::Unsupported(e.to_string()))?
                        .is_lt(),
                };
                if lower {
                    start = Some(handover);
                }
            }
            if let Some(handover) = &start {
                tracing::info!(site = %name, position = %handover, "starting at the handover position of a backfill");
            }
        }
        starts.push(start);
    }
    Ok(starts)
}
