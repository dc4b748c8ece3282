//! Schema-wide mappings: `tables = { store = "public.*", erp = "erp.*" }` stands for one
//! mapping per table present under the same name in the named schema (database) of every site
//! of the mapping, filtered by the mapping's `include` / `exclude` globs.
//!
//! The expansion reads each site's catalog, so it runs where duplex connects anyway (`run`,
//! `backfill`, `check`, `dead-letters retry`), before anything else reads the mappings: the
//! rest of duplex only ever sees mappings of one table. Each expanded mapping is named
//! `<mapping>.<table>` (the name `backfill --mapping` and the state directory use) and keeps
//! the mapping's direction, conflict policy, renames and `on_error`. A table some sites have
//! and others lack is not replicated and is reported (`check` lists it, `run` warns). A table
//! another (explicit) mapping already maps on one of the sites is left to that mapping, so one
//! table can have its own settings. Tables created later are picked up at the next start.

use std::collections::{BTreeMap, BTreeSet};

use duplex_connectors::{DescribeError, TableName};

use crate::config::{Config, Mapping};

/// What a schema-wide mapping stood for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    /// The schema-wide mapping's name.
    pub mapping: String,
    /// The tables it replicates (each its own mapping `<mapping>.<table>`).
    pub tables: Vec<String>,
    /// Tables matching its globs that only some of its sites have: `(table, the sites that
    /// have it)`.
    pub one_sided: Vec<(String, Vec<String>)>,
    /// Tables left to an explicit mapping of the same table.
    pub mapped_elsewhere: Vec<String>,
}

/// Why the expansion failed.
#[derive(Debug, thiserror::Error)]
#[error("listing the tables of {schema} on site {site} for schema-wide mapping {mapping}")]
pub struct ExpandError {
    /// The mapping.
    pub mapping: String,
    /// The site.
    pub site: String,
    /// The schema (database).
    pub schema: String,
    /// Cause.
    #[source]
    pub source: DescribeError,
}

impl ExpandError {
    /// True when retrying may succeed (the site was unreachable).
    pub fn is_transient(&self) -> bool {
        self.source.is_transient()
    }
}

/// The configuration with every schema-wide mapping replaced by its mappings of one table, and
/// what each stood for. A configuration without one is returned as it is.
pub async fn expand(config: &Config) -> Result<(Config, Vec<Expanded>), ExpandError> {
    if config.mappings.iter().all(|m| m.pattern.is_none()) {
        return Ok((config.clone(), Vec::new()));
    }
    // Tables explicit mappings map, per site.
    let explicit: BTreeSet<(&str, &TableName)> = config
        .mappings
        .iter()
        .filter(|m| m.pattern.is_none())
        .flat_map(|m| m.tables.iter().map(|(site, table)| (site.as_str(), table)))
        .collect();
    let mut expanded_config = config.clone();
    expanded_config.mappings.clear();
    let mut report = Vec::new();
    for mapping in &config.mappings {
        let Some(pattern) = &mapping.pattern else {
            expanded_config.mappings.push(mapping.clone());
            continue;
        };
        // Table name -> the sites that have it.
        let mut present: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (site, table) in &mapping.tables {
            let names =
                duplex_connectors::table_names(&config.sites[site].connection(), &table.schema)
                    .await
                    .map_err(|source| ExpandError {
                        mapping: mapping.name.clone(),
                        site: site.clone(),
                        schema: table.schema.clone(),
                        source,
                    })?;
            for name in names.into_iter().filter(|n| pattern.matches(n)) {
                present.entry(name).or_default().push(site.clone());
            }
        }
        let mut expanded = Expanded {
            mapping: mapping.name.clone(),
            tables: Vec::new(),
            one_sided: Vec::new(),
            mapped_elsewhere: Vec::new(),
        };
        for (name, sites) in present {
            if sites.len() < mapping.tables.len() {
                expanded.one_sided.push((name, sites));
                continue;
            }
            let tables: indexmap::IndexMap<String, TableName> = mapping
                .tables
                .iter()
                .map(|(site, t)| (site.clone(), TableName::new(&t.schema, &name)))
                .collect();
            if tables
                .iter()
                .any(|(site, t)| explicit.contains(&(site.as_str(), t)))
            {
                expanded.mapped_elsewhere.push(name);
                continue;
            }
            expanded_config
                .mappings
                .push(one_table(mapping, &name, tables));
            expanded.tables.push(name);
        }
        report.push(expanded);
    }
    Ok((expanded_config, report))
}

/// The mapping of one table a schema-wide mapping stands for.
fn one_table(
    mapping: &Mapping,
    table: &str,
    tables: indexmap::IndexMap<String, TableName>,
) -> Mapping {
    Mapping {
        name: format!("{}.{table}", mapping.name),
        tables,
        pattern: None,
        ..mapping.clone()
    }
}
