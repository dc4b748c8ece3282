//! `duplex check`: connects to every site and reports, item by item with the exact fix, whether
//! the servers, privileges, mapped tables and column types are ready for replication.
//!
//! Nothing is changed on any server: every probe is a read of settings or catalogs.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use duplex_connectors::catalog::ColumnCollation;
use duplex_connectors::foreign_keys::{self, ForeignKeyChecks};
use duplex_connectors::preflight::{self, Finding, Status, TableUse};
use duplex_connectors::typemap::{self, ColumnVerdict};
use duplex_connectors::{SiteKind, TableName, TableSchema};

use crate::config::{Config, Direction, Mapping, Site};
use crate::report::chain;

/// How long one site may take to answer before it is reported unreachable.
const SITE_TIMEOUT: Duration = Duration::from_secs(20);

/// The findings of a check, grouped by site and mapping.
#[derive(Debug, Default)]
pub struct Report {
    /// Titled groups of findings, in order.
    pub sections: Vec<Section>,
}

/// The findings about one site or one mapping.
#[derive(Debug)]
pub struct Section {
    /// E.g. `site store (postgres, duplex@127.0.0.1:5432/shop)`.
    pub title: String,
    /// Its findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when nothing failed.
    pub fn ready(&self) -> bool {
        self.failures() == 0
    }

    /// Number of failed items.
    pub fn failures(&self) -> usize {
        self.sections
            .iter()
            .flat_map(|s| &s.findings)
            .filter(|f| f.status == Status::Fail)
            .count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for section in &self.sections {
            writeln!(f, "{}", section.title)?;
            for finding in &section.findings {
                for line in finding.to_string().lines() {
                    writeln!(f, "  {line}")?;
                }
            }
            writeln!(f)?;
        }
        match self.failures() {
            0 => writeln!(f, "ready: every site and mapping passed"),
            n => writeln!(f, "not ready: {n} problem(s) to fix (marked FAIL above)"),
        }
    }
}

/// Runs every check of the configuration.
pub async fn run(config: &Config) -> Report {
    let mut report = Report::default();
    // Schema-wide mappings are checked as the mappings of one table they stand for.
    let expanded;
    let config = match crate::expand::expand(config).await {
        Ok((config, expansions)) => {
            for expansion in expansions {
                report.sections.push(expansion_section(&expansion));
            }
            expanded = config;
            &expanded
        }
        Err(error) => {
            report.sections.push(Section {
                title: format!("mapping {} (schema-wide)", error.mapping),
                findings: vec![Finding::fail(
                    format!("cannot list its tables: {}", chain(&error)),
                    format!(
                        "check that site {} is up and reachable and that {} exists there",
                        error.site, error.schema
                    ),
                )],
            });
            return report;
        }
    };
    let mut schemas: HashMap<(String, TableName), TableSchema> = HashMap::new();
    for site in config.sites.values() {
        let title = format!(
            "site {} ({}, {})",
            site.name,
            site.kind,
            site.redacted_url()
        );
        // Tables read before a timeout keep their descriptions.
        let mut found = Vec::new();
        let findings =
            match tokio::time::timeout(SITE_TIMEOUT, check_site(site, config, &mut found)).await {
                Ok(findings) => findings,
                Err(_) => vec![Finding::fail(
                    format!("no answer within {}s", SITE_TIMEOUT.as_secs()),
                    format!(
                        "check that the server at {} is up and reachable",
                        site.redacted_url()
                    ),
                )],
            };
        for (table, schema) in found {
            schemas.insert((site.name.clone(), table), schema);
        }
        report.sections.push(Section { title, findings });
    }
    let collations = read_collations(config, &schemas).await;
    for mapping in &config.mappings {
        let mut findings = check_mapping(config, mapping, &schemas);
        findings.extend(key_collations(config, mapping, &schemas, &collations));
        report.sections.push(Section {
            title: format!("mapping {} ({})", mapping.name, describe_direction(mapping)),
            findings,
        });
    }
    for site in config.sites.values() {
        // A site that does not answer: its own section already says so.
        let findings = tokio::time::timeout(SITE_TIMEOUT, foreign_keys(config, site))
            .await
            .unwrap_or_default();
        if !findings.is_empty() {
            report.sections.push(Section {
                title: format!("foreign keys on site {}", site.name),
                findings,
            });
        }
    }
    for site in config.sites.values() {
        let findings = shared_positions(config, site).await;
        if !findings.is_empty() {
            report.sections.push(Section {
                title: format!("positions on site {}", site.name),
                findings,
            });
        }
    }
    for (site, findings) in idle_slots(config).await {
        report.sections.push(Section {
            title: format!("duplex replication slots on the server of site {site}"),
            findings,
        });
    }
    report
}

/// Warns about every inactive `duplex_%` replication slot on the configuration's PostgreSQL
/// servers (each server once): a slot nobody streams from keeps all WAL since its position, so
/// a forgotten one (a retired deployment, a demo's `--keep`) fills the disk. This
/// configuration's own slots are named with their site; the others with the way to drop them.
async fn idle_slots(config: &Config) -> Vec<(String, Vec<Finding>)> {
    let mut ours: HashMap<(String, String), &str> = HashMap::new();
    for site in config.sites.values() {
        let connection = site.connection();
        for name in duplex_connectors::teardown::slot_names(&connection) {
            ours.insert((connection.database(), name), &site.name);
        }
    }
    let mut servers = std::collections::BTreeSet::new();
    let mut sections = Vec::new();
    for site in config.sites.values() {
        let Ok(url) = url::Url::parse(&site.url) else {
            continue;
        };
        if !servers.insert((url.host_str().unwrap_or_default().to_owned(), url.port())) {
            continue;
        }
        let slots = match tokio::time::timeout(
            SITE_TIMEOUT,
            duplex_connectors::teardown::slots(&site.connection()),
        )
        .await
        {
            Ok(Ok(slots)) => slots,
            // The site's own section already says why it cannot be read.
            _ => continue,
        };
        let findings: Vec<Finding> = slots
            .iter()
            .filter(|slot| !slot.active)
            .map(|slot| {
                let retained = slot
                    .retained_bytes
                    .map(human_bytes)
                    .unwrap_or_else(|| "an unknown amount".to_owned());
                match ours.get(&(slot.database.clone(), slot.name.clone())) {
                    Some(owner) => Finding::warn(
                        format!(
                            "replication slot {} (site {owner}) is not active and retains {retained} of WAL",
                            slot.name
                        ),
                        format!(
                            "it is this configuration's: while duplex is stopped its source keeps every change for it; start `duplex run`, or if site {owner} is retired remove it with `duplex teardown --site {owner}`"
                        ),
                    ),
                    None => Finding::warn(
                        format!(
                            "replication slot {} (database {}) is not active and retains {retained} of WAL; no site of this configuration uses it",
                            slot.name, slot.database
                        ),
                        format!(
                            "if the duplex deployment it belongs to{} is retired, run `duplex teardown` with that deployment's configuration, or drop it: SELECT pg_drop_replication_slot('{}')",
                            slot.claimed_by
                                .as_deref()
                                .map(|d| format!(" ({d})"))
                                .unwrap_or_default(),
                            slot.name
                        ),
                    ),
                }
            })
            .collect();
        if !findings.is_empty() {
            sections.push((site.name.clone(), findings));
        }
    }
    sections
}

/// Bytes for people: `512 B`, `1.5 KiB`, `16.0 MiB`, `2.3 GiB`.
pub fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes.unsigned_abs() < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Warns when a target holds the progress of a source site of this configuration for more
/// than one duplex deployment (positions are kept per `<site>@<deployment>`): another duplex
/// names a source site alike and writes here, or a state directory of this one was replaced.
async fn shared_positions(config: &Config, target: &Site) -> Vec<Finding> {
    let sources: std::collections::BTreeSet<&str> = config
        .mappings
        .iter()
        .filter(|m| m.direction != Direction::Both)
        .flat_map(|m| m.edges())
        .filter(|(_, to)| *to == target.name)
        .map(|(from, _)| from)
        .collect();
    if sources.is_empty() {
        return Vec::new();
    }
    let rows = match tokio::time::timeout(
        SITE_TIMEOUT,
        duplex_connectors::load::position_sources(&target.connection()),
    )
    .await
    {
        Ok(Ok(rows)) => rows,
        // The site's own section already says why it cannot be read.
        _ => return Vec::new(),
    };
    let mut findings = Vec::new();
    for source in sources {
        let prefix = format!("{source}@");
        let deployments: Vec<&str> = rows
            .iter()
            .filter_map(|r| r.strip_prefix(&prefix))
            .collect();
        if deployments.len() > 1 {
            findings.push(Finding::warn(
                format!(
                    "positions of source site {source} for {} duplex deployments: {}",
                    deployments.len(),
                    deployments.join(", ")
                ),
                format!(
                    "another duplex (another state directory) names a source site {source} and writes into {t}; each keeps its own position, so nothing collides, but if one of them is an earlier state directory of this duplex, delete its row (DELETE FROM duplex.positions WHERE source = '{source}@<id>') once it is retired",
                    t = target.name
                ),
            ));
        }
    }
    findings
}

/// The collations of every mapped table that was read, by site and table (a table whose
/// collations cannot be read is left out: its site's section already says why).
async fn read_collations(
    config: &Config,
    schemas: &HashMap<(String, TableName), TableSchema>,
) -> HashMap<(String, TableName), Vec<ColumnCollation>> {
    let mut found = HashMap::new();
    for (site, table) in schemas.keys() {
        let read = tokio::time::timeout(
            SITE_TIMEOUT,
            duplex_connectors::catalog::collations(&config.sites[site].connection(), table),
        )
        .await;
        if let Ok(Ok(collations)) = read {
            found.insert((site.clone(), table.clone()), collations);
        }
    }
    found
}

/// Warns about primary-key columns compared differently on the two ends of a flow: a target
/// that ignores letter case or trailing spaces where the source does not makes distinct
/// source keys one key (`Duplicate entry 'ABC' for key 'PRIMARY'` stops `run` and `backfill`;
/// a two-way mapping holds such writes as conflicts), and the reverse makes keys one row on
/// the source but two on the target, so a two-way flow collides there.
fn key_collations(
    config: &Config,
    mapping: &Mapping,
    schemas: &HashMap<(String, TableName), TableSchema>,
    collations: &HashMap<(String, TableName), Vec<ColumnCollation>>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let both = mapping.direction == Direction::Both;
    for (from, to) in mapping.edges() {
        let (Some(from_table), Some(to_table)) = (mapping.tables.get(from), mapping.tables.get(to))
        else {
            continue;
        };
        let (Some(from_schema), Some(to_schema)) = (
            schemas.get(&(from.to_owned(), from_table.clone())),
            schemas.get(&(to.to_owned(), to_table.clone())),
        ) else {
            continue;
        };
        let from_collations = collations.get(&(from.to_owned(), from_table.clone()));
        let to_collations = collations.get(&(to.to_owned(), to_table.clone()));
        let (Some(from_collations), Some(to_collations)) = (from_collations, to_collations) else {
            continue;
        };
        for from_column in &from_schema.primary_key {
            let canonical = mapping.canonical_column(from, from_column);
            let to_column = mapping.site_column(to, canonical);
            let source = from_collations.iter().find(|c| &c.column == from_column);
            let target = to_collations.iter().find(|c| c.column == to_column);
            let (Some(source), Some(target)) = (source, target) else {
                continue;
            };
            let describe = |c: &ColumnCollation| match c.ignores() {
                Some(ignores) => format!("{} (ignores {ignores})", c.collation),
                None => format!("{} (exact)", c.collation),
            };
            let what = format!(
                "key column {from}:{from_table}.{from_column} collation {} -> {to}:{to_table}.{to_column} collation {}",
                describe(source),
                describe(target)
            );
            let target_loses = (target.case_insensitive && !source.case_insensitive)
                || (target.pads && !source.pads);
            let source_loses = (source.case_insensitive && !target.case_insensitive)
                || (source.pads && !target.pads);
            if target_loses {
                let fix = exact_key_fix(config.sites[to].kind, to_schema, to_column, target);
                findings.push(Finding::warn(
                    what,
                    format!(
                        "mapping {}: keys that differ on {from} only in {} are one key on {to}, so the second such row stops `duplex run` and `duplex backfill` with a duplicate key ({}); make the key exact on {to}: {fix}",
                        mapping.name,
                        target.ignores().unwrap_or_default(),
                        if both { "two-way: held as a conflict" } else { "nothing is lost, the link stops" },
                    ),
                ));
            } else if source_loses && !both {
                let fix = exact_key_fix(config.sites[from].kind, from_schema, from_column, source);
                findings.push(Finding::warn(
                    what,
                    format!(
                        "mapping {}: {from} holds keys differing only in {} as one row, {to} would hold them as two: nothing collides in this direction, but the sites disagree on which keys are equal (a mapping written back into {from} would collide); to compare alike: {fix}",
                        mapping.name,
                        source.ignores().unwrap_or_default(),
                    ),
                ));
            }
        }
    }
    findings
}

/// The statement that makes a key column compare exactly on a site of `kind`.
fn exact_key_fix(
    kind: SiteKind,
    schema: &TableSchema,
    column: &str,
    collation: &ColumnCollation,
) -> String {
    let declared = schema
        .column(column)
        .map_or("<its type>", |c| c.declared.as_str());
    match kind {
        SiteKind::Mysql => format!(
            "ALTER TABLE {}.{} MODIFY {} {declared} CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL (utf8mb4_bin still ignores trailing spaces)",
            duplex_connectors::mysql::quote_ident(&schema.name.schema),
            duplex_connectors::mysql::quote_ident(&schema.name.name),
            duplex_connectors::mysql::quote_ident(column),
        ),
        SiteKind::Postgres => {
            let ty = if collation.pads { "text" } else { declared };
            format!(
                "ALTER TABLE {}.{} ALTER COLUMN {} TYPE {ty} COLLATE \"C\"{}",
                duplex_connectors::postgres::quote_ident(&schema.name.schema),
                duplex_connectors::postgres::quote_ident(&schema.name.name),
                duplex_connectors::postgres::quote_ident(column),
                if collation.pads {
                    " (char(n) ignores trailing spaces under any collation)"
                } else {
                    ""
                },
            )
        }
        SiteKind::Mssql => {
            let quote = duplex_connectors::mssql::stream::quote;
            format!(
                "ALTER TABLE {}.{} ALTER COLUMN {} {declared}(<its length>) COLLATE Latin1_General_100_BIN2 NOT NULL (SQL Server still ignores trailing spaces under any collation)",
                quote(&schema.name.schema),
                quote(&schema.name.name),
                quote(column),
            )
        }
    }
}

/// Foreign keys on the tables of `site`: for a site written into, whether duplex's sessions
/// there turn checks off or write in dependency order, and the keys that reference a table no
/// mapping carries to it (or that this order cannot serve); for a MariaDB/MySQL source, the
/// keys whose referential actions its binlog does not carry.
async fn foreign_keys(config: &Config, site: &Site) -> Vec<Finding> {
    let on_site = tables_on(config, &site.name);
    let written: Vec<TableName> = on_site
        .iter()
        .filter(|(_, usage)| usage.write)
        .map(|(t, _)| (*t).clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let read: Vec<TableName> = on_site
        .iter()
        .filter(|(_, usage)| usage.read)
        .map(|(t, _)| (*t).clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let carried: std::collections::BTreeSet<TableName> =
        on_site.iter().map(|(t, _)| (*t).clone()).collect();
    let connection = site.connection();
    let mut findings = Vec::new();
    // Where duplex's sessions check foreign keys: why, and what would turn the checks off.
    let (why_checked, turn_off) = match site.kind {
        SiteKind::Mssql => (
            "SQL Server sessions always check them",
            "disable the key while copying (ALTER TABLE <table> NOCHECK CONSTRAINT <key>) and check it again afterwards (ALTER TABLE <table> WITH CHECK CHECK CONSTRAINT <key>)",
        ),
        _ => (
            "duplex's role may not set session_replication_role",
            "GRANT SET ON PARAMETER session_replication_role TO <duplex's role> (as a superuser)",
        ),
    };
    if !written.is_empty() {
        let found = match foreign_keys::target_foreign_keys(&connection, &written).await {
            Ok(found) => found,
            Err(error) => return vec![query_failed(&error)],
        };
        let count = format!(
            "{} foreign key(s) on the tables duplex writes here",
            found.keys.len()
        );
        match found.checks {
            ForeignKeyChecks::Off { setting } => findings.push(Finding::ok(format!(
                "foreign keys: checks off in duplex's sessions ({setting}); {count}"
            ))),
            ForeignKeyChecks::On if found.keys.is_empty() => findings.push(Finding::ok(format!(
                "foreign keys: dependency order ({why_checked}); {count}"
            ))),
            ForeignKeyChecks::On if site.kind == SiteKind::Mssql => findings.push(Finding::warn(
                format!("foreign keys: dependency order ({why_checked}); {count}"),
                "backfill copies referenced tables first and streaming writes in the source's order; a key only this site has can refuse a replicated row, which stops the link",
            )),
            ForeignKeyChecks::On => findings.push(Finding::warn(
                format!("foreign keys: dependency order ({why_checked}); {count}"),
                "backfill copies referenced tables first and streaming writes in the source's order (DEFERRABLE keys checked at commit); to turn the checks off in duplex's sessions instead (and not run referential actions and triggers for replicated rows), as a superuser: GRANT SET ON PARAMETER session_replication_role TO <duplex's role> (PostgreSQL 15+)",
            )),
        }
        for key in foreign_keys::references_outside(&found.keys, &carried) {
            findings.push(Finding::warn(
                format!(
                    "foreign key {} on {} references {}, which no mapping carries to site {}",
                    key.name, key.table, key.references, site.name
                ),
                match found.checks {
                    ForeignKeyChecks::Off { .. } => format!(
                        "duplex's sessions do not check it, so replicated rows are accepted even where {} lacks the row they reference (the table then breaks its own key); map {} too, or drop the constraint",
                        key.references, key.references
                    ),
                    ForeignKeyChecks::On => format!(
                        "a replicated row whose referenced row {} lacks is refused and stops the link: map {} too, or drop the constraint",
                        key.references, key.references
                    ),
                },
            ));
        }
        if found.checks == ForeignKeyChecks::On {
            let in_order: Vec<_> = found
                .keys
                .iter()
                .filter(|k| written.contains(&k.references))
                .cloned()
                .collect();
            if let Err(cycle) = foreign_keys::dependency_levels(&written, &in_order) {
                let names: Vec<String> = cycle
                    .keys
                    .iter()
                    .map(|k| format!("{} on {}", k.name, k.table))
                    .collect();
                findings.push(Finding::warn(
                    format!(
                        "foreign key(s) {}: a table referencing itself or tables referencing each other",
                        names.join(", ")
                    ),
                    format!(
                        "no table order satisfies them while duplex's sessions check foreign keys: `duplex backfill` refuses to copy these tables; to copy them, {turn_off}"
                    ),
                ));
            }
            for key in &found.keys {
                let actions = key.actions();
                if actions.is_empty() {
                    continue;
                }
                findings.push(Finding::warn(
                    format!(
                        "foreign key {} on {}: {} runs in duplex's sessions",
                        key.name,
                        key.table,
                        actions.join(", ")
                    ),
                    match site.kind {
                        SiteKind::Mssql => "a replicated parent delete or update also changes its children here, and the source's own changes of those children that follow then find no row and stop the link: drop the action on this target".to_owned(),
                        _ => format!(
                            "a replicated parent delete or update also changes its children here, and the source's own changes of those children that follow then find no row and stop the link: {turn_off}, or drop the action on this target"
                        ),
                    },
                ));
            }
        }
    }
    if !read.is_empty() {
        match foreign_keys::unlogged_source_actions(&connection, &read).await {
            Ok(keys) => {
                for key in keys {
                    findings.push(Finding::warn(
                        format!(
                            "foreign key {} on {} (read from {}): {}",
                            key.name,
                            key.table,
                            site.name,
                            key.actions().join(", ")
                        ),
                        format!(
                            "InnoDB does not write the rows a referential action changes to the binlog, so the targets never see them (a parent deleted on {} keeps its children on the targets): delete or update the children explicitly before the parent in the same transaction (the action then finds nothing to do and every change is in the binlog)",
                            site.name
                        ),
                    ));
                }
            }
            Err(error) => findings.push(query_failed(&error)),
        }
    }
    findings
}

fn describe_direction(mapping: &Mapping) -> String {
    match &mapping.direction {
        Direction::Both => mapping
            .tables
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(" <-> "),
        Direction::OneWay { from, to } => format!("{from} -> {to}"),
    }
}

fn unreachable(site: &Site, error: &dyn std::error::Error) -> Finding {
    Finding::fail(
        chain(error),
        format!(
            "check that the server is running and reachable at {}, and that the user and password \
             (sites.{}.url / password_env / password_file) are right",
            site.redacted_url(),
            site.name
        ),
    )
}

fn query_failed(error: &dyn std::error::Error) -> Finding {
    Finding::fail(
        chain(error),
        "the check could not finish: fix the error above and run it again",
    )
}

/// The mapped tables on a site with how they are used.
fn tables_on<'a>(config: &'a Config, site: &str) -> Vec<(&'a TableName, TableUse)> {
    config
        .mappings
        .iter()
        .filter_map(|m| {
            let table = m.tables.get(site)?;
            Some((
                table,
                TableUse {
                    read: m.reads_from(site),
                    write: m.writes_to(site),
                },
            ))
        })
        .collect()
}

async fn check_site(
    site: &Site,
    config: &Config,
    found: &mut Vec<(TableName, TableSchema)>,
) -> Vec<Finding> {
    let tables: Vec<(TableName, TableUse)> = tables_on(config, &site.name)
        .into_iter()
        .map(|(table, usage)| (table.clone(), usage))
        .collect();
    match preflight::check_site(&site.connection(), &tables, found).await {
        Ok(items) => items
            .into_iter()
            .map(|item| item.unwrap_or_else(|error| query_failed(&error)))
            .collect(),
        Err(error) => vec![unreachable(site, &error)],
    }
}

/// Column-level checks of one mapping: every mapped column exists on every site, the primary
/// keys correspond, and every column's type can be carried along each direction of flow.
fn check_mapping(
    config: &Config,
    mapping: &Mapping,
    schemas: &HashMap<(String, TableName), TableSchema>,
) -> Vec<Finding> {
    let mut found = Vec::new();
    for (site, table) in &mapping.tables {
        match schemas.get(&(site.clone(), table.clone())) {
            Some(schema) => found.push((site.as_str(), schema)),
            None => {
                return vec![Finding::fail(
                    format!("columns not checked: table {table} on site {site} could not be read"),
                    format!("fix the problems reported for site {site} above"),
                )];
            }
        }
    }
    let reference_site = match &mapping.direction {
        Direction::OneWay { from, .. } => from.as_str(),
        Direction::Both => found[0].0,
    };
    let reference = found
        .iter()
        .find(|(s, _)| *s == reference_site)
        .map(|(_, t)| *t)
        .unwrap_or(found[0].1);
    let columns: Vec<String> = match &mapping.columns {
        Some(columns) => columns.clone(),
        None => reference
            .columns
            .iter()
            .map(|c| mapping.canonical_column(reference_site, &c.name).to_owned())
            .collect(),
    };
    let mut findings = Vec::new();
    let mut complete = true;
    for (site, schema) in &found {
        for canonical in &columns {
            let local = mapping.site_column(site, canonical);
            if schema.column(local).is_none() {
                complete = false;
                findings.push(Finding::fail(
                    format!("column {local} is missing from {} on site {site}", schema.name),
                    format!(
                        "add the column, map it to another name with [mappings.rename.{site}], or list \
                         the replicated columns with columns = [...] in mapping {}",
                        mapping.name
                    ),
                ));
            }
        }
        let key: Vec<&str> = schema
            .primary_key
            .iter()
            .map(|c| mapping.canonical_column(site, c))
            .collect();
        for column in &key {
            if !columns.iter().any(|c| c == column) {
                findings.push(Finding::fail(
                    format!(
                        "primary-key column {column} of {} on site {site} is not replicated",
                        schema.name
                    ),
                    format!(
                        "add {column} to columns = [...] in mapping {}",
                        mapping.name
                    ),
                ));
            }
        }
    }
    let keys: Vec<(&str, Vec<&str>)> = found
        .iter()
        .map(|(site, schema)| {
            (
                *site,
                schema
                    .primary_key
                    .iter()
                    .map(|c| mapping.canonical_column(site, c))
                    .collect(),
            )
        })
        .collect();
    if keys.iter().any(|(_, k)| !k.is_empty() && *k != keys[0].1) {
        let listed: Vec<String> = keys
            .iter()
            .map(|(s, k)| format!("{s} ({})", k.join(", ")))
            .collect();
        findings.push(Finding::fail(
            format!("primary keys differ between sites: {}", listed.join(" vs ")),
            "give the tables the same primary-key columns (or map the names with [mappings.rename.<site>])",
        ));
    }
    findings.extend(crate::column_policy::check(mapping, &found));
    findings.extend(crate::value_map::check(mapping, &found));
    findings.extend(crate::filter::check(mapping, &found));
    if !complete {
        return findings;
    }
    for (from, to) in mapping.edges() {
        let (Some(from_schema), Some(to_schema)) = (
            found.iter().find(|(s, _)| *s == from).map(|(_, t)| *t),
            found.iter().find(|(s, _)| *s == to).map(|(_, t)| *t),
        ) else {
            continue;
        };
        let (from_kind, to_kind) = (config.sites[from].kind, config.sites[to].kind);
        let mut exact = 0;
        for canonical in &columns {
            let (Some(source), Some(target)) = (
                from_schema.column(mapping.site_column(from, canonical)),
                to_schema.column(mapping.site_column(to, canonical)),
            ) else {
                continue;
            };
            let what = format!(
                "{from}:{}.{} {} -> {to}:{}.{} {}",
                from_schema.name.name,
                source.name,
                source.declared,
                to_schema.name.name,
                target.name,
                target.declared
            );
            match typemap::judge(from_kind, source, to_kind, target) {
                ColumnVerdict::Exact => exact += 1,
                ColumnVerdict::Converted(how) => {
                    findings.push(Finding::warn(what.clone(), format!("converted: {how}")))
                }
                ColumnVerdict::Refused(why) => findings.push(Finding::fail(what.clone(), why)),
            }
            if source.nullable && !target.nullable {
                findings.push(Finding::warn(
                    format!("{what}: NULL allowed on {from} but not on {to}"),
                    format!("a NULL from {from} would be refused by {to}: make the target column nullable or the source NOT NULL"),
                ));
            }
        }
        findings.push(Finding::ok(format!(
            "{from} -> {to}: {exact} of {} columns map exactly",
            columns.len()
        )));
    }
    findings
}

/// What a schema-wide mapping stands for: its tables, and those only some sites have.
fn expansion_section(expansion: &crate::expand::Expanded) -> Section {
    let mut findings = Vec::new();
    if expansion.tables.is_empty() {
        findings.push(Finding::warn(
            "it matches no table present on all its sites",
            "create the tables, or correct the schema names and include / exclude globs",
        ));
    } else {
        findings.push(Finding::ok(format!(
            "expands to {} table(s), each its own mapping {}.<table>: {}",
            expansion.tables.len(),
            expansion.mapping,
            expansion.tables.join(", ")
        )));
    }
    for (table, sites) in &expansion.one_sided {
        findings.push(Finding::warn(
            format!(
                "table {table} is only on {}: not replicated",
                sites.join(", ")
            ),
            "create it on the other sites (then restart duplex run), or add it to `exclude`",
        ));
    }
    for table in &expansion.mapped_elsewhere {
        findings.push(Finding::ok(format!(
            "table {table} is left to the mapping that names it"
        )));
    }
    Section {
        title: format!("mapping {} (schema-wide)", expansion.mapping),
        findings,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_are_written_for_people() {
        assert_eq!(super::human_bytes(0), "0 B");
        assert_eq!(super::human_bytes(1023), "1023 B");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(16 * 1024 * 1024), "16.0 MiB");
        assert_eq!(super::human_bytes(5 * 1024 * 1024 * 1024 / 2), "2.5 GiB");
    }
}
