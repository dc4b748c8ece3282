//! `duplex verify`: proves that each target of a one-way mapping holds exactly the source's
//! rows, and every site of a two-way mapping the same rows as its first site (so all hold the
//! same), while `duplex run` keeps replicating, and with `--repair` makes it so.
//!
//! Each mapping's source table is cut into key ranges ([`scan::plan`]: about 10,000 rows each,
//! cut at every 10,000th key in the source's order on any key whose columns both sides can cut
//! on, integer, text or composite; the whole table otherwise); `--jobs` workers read each
//! range from the source and the target in parallel, each side in a fresh snapshot of its own
//! (no lock), bring both into one form through the mapping's column renames and compare them
//! by meaning ([`compare`]): first a digest of each range computed where the rows are
//! ([`duplex_connectors::digest`]: by PostgreSQL itself, on MariaDB as the rows stream in, the
//! same for the same rows on any kind), when both sides' column types allow it; where digests
//! differ or cannot be taken, the rows, a fingerprint per range, then row by row only where
//! fingerprints differ. A key that differs may be a change in flight; it is read again, by its key value,
//! after the target has applied past the source's position ([`scan`] argues why what is then
//! still different is real). Only that is reported ([`report`]). For a two-way mapping each
//! other site is compared with the first the same way; a key that differs is read again once
//! the merge engine has carried every change of both sites up to the moment of the read
//! ([`engine`] argues it).
//!
//! `--repair` writes, for each difference still found, the source's row (or the delete of a
//! row the source does not have) into the target through the target's applier, in one target
//! transaction that records its position in `duplex.positions` like every write of duplex (so
//! a two-way or chained setup recognises it as duplex's own and does not echo it). For a
//! two-way mapping `--repair --take SITE` has the running merge engine write SITE's rows
//! ([`take`] argues why the engine and not verify writes them).

pub mod compare;
pub mod engine;
pub mod last;
pub mod report;
pub mod scan;
pub mod split;
pub mod take;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duplex_connectors::{
    AnyApplier, AnySnapshot, Applier, ApplyOptions, ChangeEvent, Op, Origin, Position, TableRoute,
    Transaction, Value,
};
use tokio::task::JoinSet;

use crate::config::{Config, Direction, Mapping};
use compare::{Difference, KeyDifference};
use report::MappingReport;
use scan::{Carrier, Progress, Side};

/// Rows per key range.
pub const DEFAULT_CHUNK_ROWS: u64 = 10_000;

/// How often `--repair` writes a key that still differs after its repair.
const REPAIR_ATTEMPTS: usize = 3;

/// What `duplex verify` was asked.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Only these mappings (all when empty).
    pub mappings: Vec<String>,
    /// Parallel range readers per mapping.
    pub jobs: usize,
    /// Rows per key range.
    pub chunk_rows: u64,
    /// Re-check rounds for differing keys.
    pub rounds: u32,
    /// How long each re-check round waits for the target to apply past the source's position.
    pub wait: Duration,
    /// Write the source's rows over what differs (two-way: `take`'s rows).
    pub repair: bool,
    /// With `repair` of two-way mappings: the site whose rows every site is made to hold.
    pub take: Option<String>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            mappings: Vec::new(),
            jobs: 4,
            chunk_rows: DEFAULT_CHUNK_ROWS,
            rounds: 4,
            wait: Duration::from_secs(30),
            repair: false,
            take: None,
        }
    }
}

/// Why verify could not compare.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The request does not fit the configuration (exit code 2).
    #[error("{0}")]
    Invalid(String),
    /// A table could not be described.
    #[error("describing the tables of site {site}")]
    Describe {
        /// The site.
        site: String,
        /// Cause.
        #[source]
        source: duplex_connectors::DescribeError,
    },
    /// Reading rows failed.
    #[error("reading site {site}")]
    Read {
        /// The site.
        site: String,
        /// Cause.
        #[source]
        source: duplex_connectors::SnapshotError,
    },
    /// Reading a position failed.
    #[error("reading positions on site {site}")]
    Admin {
        /// The site.
        site: String,
        /// Cause.
        #[source]
        source: duplex_connectors::AdminError,
    },
    /// Writing a repair failed.
    #[error("repairing site {site}")]
    Repair {
        /// The site.
        site: String,
        /// Cause.
        #[source]
        source: Box<duplex_connectors::ApplyError>,
    },
    /// A worker crashed.
    #[error("a verify worker failed: {0}")]
    Crashed(String),
    /// The merge engine refused or did not answer a `--take` repair.
    #[error("{0}")]
    Engine(String),
    /// A schema-wide mapping could not be expanded.
    #[error(transparent)]
    Expand(#[from] Box<crate::expand::ExpandError>),
}

impl VerifyError {
    /// Whether this is a configuration problem (exit code 2) rather than a failure.
    pub fn is_config(&self) -> bool {
        matches!(self, VerifyError::Invalid(_))
    }
}

/// `duplex verify`: prints each mapping's report (`json`: one object per line) and returns the
/// exit code: 0 when every mapping is equal (or was repaired), 1 when something differs or
/// could not be compared, 2 when the request does not fit the configuration.
pub async fn command(config: &Config, options: &VerifyOptions, json: bool) -> ExitCode {
    match verify(config, options).await {
        Ok(reports) => {
            if let Err(error) = last::record(&config.state_dir, &last::LastVerify::of(&reports)) {
                tracing::warn!(dir = %config.state_dir.display(), %error, "cannot record the verify's result in the state directory");
            }
            for report in &reports {
                crate::output::stdout(&if json { report.json() } else { report.text() });
            }
            if reports.iter().all(MappingReport::settled) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            tracing::error!("{}", crate::report::chain(&error));
            if error.is_config() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Verifies (and with `options.repair` repairs) the selected mappings; one report per mapping.
pub async fn verify(
    config: &Config,
    options: &VerifyOptions,
) -> Result<Vec<MappingReport>, VerifyError> {
    let (expanded, report) = crate::expand::expand(config).await.map_err(Box::new)?;
    for expansion in report {
        for (table, sites) in &expansion.one_sided {
            tracing::warn!(mapping = %expansion.mapping, %table, present_on = ?sites, "a table only some sites of a schema-wide mapping have is not replicated, and not verified");
        }
    }
    let selected = select(
        config,
        &expanded,
        &options.mappings,
        options.repair,
        options.take.as_deref(),
    )?;
    let config = &expanded;
    let deployment = deployment(config);
    let mut reports = Vec::new();
    for mapping in selected {
        let pairs: Vec<(&str, &str)> = match &mapping.direction {
            Direction::OneWay { from, to } => vec![(from, to)],
            // Every site against the first: equal to it is equal to each other.
            Direction::Both => {
                let mut sites = mapping.tables.keys().map(String::as_str);
                let first = sites.next().unwrap_or_default();
                sites.map(|other| (first, other)).collect()
            }
        };
        let two_way = matches!(mapping.direction, Direction::Both);
        for (from, to) in pairs {
            let deployment = deployment.as_deref();
            reports.push(
                verify_mapping(config, mapping, from, to, options, deployment, two_way).await?,
            );
        }
    }
    Ok(reports)
}

/// The mappings of `expanded` (`config` with its schema-wide mappings expanded) that `names`
/// select, all when empty: a mapping by its name, a schema-wide mapping by its name (all its
/// tables) or one of its tables as `<mapping>.<table>`. Refused: unknown names; two-way
/// mappings with `repair`, or with value maps or row filters.
fn select<'a>(
    config: &Config,
    expanded: &'a Config,
    names: &[String],
    repair: bool,
    take: Option<&str>,
) -> Result<Vec<&'a Mapping>, VerifyError> {
    if take.is_some() && !repair {
        return Err(VerifyError::Invalid(
            "--take SITE goes with --repair: it names the site whose rows a repair writes everywhere".into(),
        ));
    }
    let schema_wide = |name: &str| {
        config
            .mappings
            .iter()
            .any(|m| m.name == name && m.pattern.is_some())
    };
    let chosen = |m: &Mapping| {
        names.is_empty()
            || names.contains(&m.name)
            || m.name
                .split_once('.')
                .is_some_and(|(parent, _)| names.iter().any(|n| n == parent) && schema_wide(parent))
    };
    for name in names {
        let known = config.mappings.iter().any(|m| &m.name == name)
            || expanded.mappings.iter().any(|m| &m.name == name);
        if !known {
            return Err(VerifyError::Invalid(format!(
                "no mapping named {name} in the configuration"
            )));
        }
    }
    let selected: Vec<&Mapping> = expanded.mappings.iter().filter(|m| chosen(m)).collect();
    // A one-way repair writes through an upserting applier, which SQL Server does not have
    // (a two-way one goes through the merge engine's conditional writes).
    if repair
        && let Some((mapping, site)) = selected.iter().find_map(|m| match &m.direction {
            Direction::OneWay { from, to } => expanded
                .sql_server_site_except(m, Some(from))
                .filter(|site| site == to)
                .map(|site| (m, site)),
            Direction::Both => None,
        })
    {
        return Err(VerifyError::Invalid(format!(
            "mapping {} writes into the SQL Server site {site}: duplex verify --repair of a \
             one-way mapping into SQL Server is not supported yet (it writes through upserts, \
             which are not built for SQL Server): run duplex verify without --repair and \
             correct the rows it lists, or name the other mappings with --mapping",
            mapping.name
        )));
    }
    if let Some(one_way) = selected
        .iter()
        .find(|m| take.is_some() && !matches!(m.direction, Direction::Both))
    {
        return Err(VerifyError::Invalid(format!(
            "--take applies to two-way mappings; mapping {} is one-way (repaired from its source): name the two-way mappings with --mapping",
            one_way.name
        )));
    }
    for two_way in selected
        .iter()
        .filter(|m| matches!(m.direction, Direction::Both))
    {
        match take {
            None if repair => {
                return Err(VerifyError::Invalid(format!(
                    "mapping {} is two-way: name the site whose rows every site is to hold with --take SITE (one of {})",
                    two_way.name,
                    site_list(two_way)
                )));
            }
            Some(site) if !two_way.tables.contains_key(site) => {
                return Err(VerifyError::Invalid(format!(
                    "--take {site}: not a site of mapping {} (one of {})",
                    two_way.name,
                    site_list(two_way)
                )));
            }
            _ => {}
        }
        if !two_way.values.is_empty() || !two_way.filters.is_empty() {
            return Err(VerifyError::Invalid(format!(
                "mapping {} translates values or filters rows per site, which verify does not follow yet (it would report them as differences); \
                 name the other mappings with --mapping",
                two_way.name
            )));
        }
    }
    Ok(selected)
}

/// A mapping's sites, for messages.
fn site_list(mapping: &Mapping) -> String {
    mapping
        .tables
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The deployment's identity from the state store, when it can be opened (not while `duplex
/// run` holds it; then the targets' rows tell, see [`position_key`]).
fn deployment(config: &Config) -> Option<String> {
    if !config.state_dir.join(duplex_state::STATE_FILE).exists() {
        return None;
    }
    let store = duplex_state::StateStore::open(&config.state_dir).ok()?;
    let id = store.deployment_id().to_owned();
    let _ = store.close();
    Some(id)
}

/// The name `target`'s `duplex.positions` records `source` under: this deployment's when
/// known, else the only `<source>@...` row there (none when there are several).
async fn position_key(
    target: &crate::config::Site,
    source: &str,
    deployment: Option<&str>,
) -> Result<Option<String>, VerifyError> {
    if let Some(deployment) = deployment {
        return Ok(Some(crate::link::position_key(source, deployment)));
    }
    let rows = duplex_connectors::load::position_sources(&target.connection())
        .await
        .map_err(|source| VerifyError::Admin {
            site: target.name.clone(),
            source,
        })?;
    let prefix = format!("{source}@");
    let mut ours = rows.into_iter().filter(|r| r.starts_with(&prefix));
    Ok(match (ours.next(), ours.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    })
}

async fn verify_mapping(
    config: &Config,
    mapping: &Mapping,
    from: &str,
    to: &str,
    options: &VerifyOptions,
    deployment: Option<&str>,
    two_way: bool,
) -> Result<MappingReport, VerifyError> {
    let started = Instant::now();
    let (source_site, target_site) = (&config.sites[from], &config.sites[to]);
    let source_schema = describe(source_site, mapping).await?;
    let target_schema = describe(target_site, mapping).await?;
    let route = route(mapping, from, to, &source_schema)?;
    if route.key.is_empty() {
        return Err(VerifyError::Invalid(format!(
            "mapping {}: table {} has no primary key; verify compares rows by key",
            mapping.name, source_schema.name
        )));
    }
    let source = Side::new(from, source_site.connection(), source_schema, &route, true);
    let mut target = Side::new(to, target_site.connection(), target_schema, &route, false);
    target.as_json = source
        .columns
        .iter()
        .map(|c| matches!(c.type_name.as_str(), "json" | "jsonb"))
        .collect();
    let open = |side: &Side| {
        let connection = side.connection.clone();
        let site = side.site.clone();
        async move {
            AnySnapshot::open(&connection)
                .await
                .map_err(|source| VerifyError::Read { site, source })
        }
    };
    // The workers' connections open while the ranges are planned, all at once.
    let pair = || async { Ok::<_, VerifyError>((open(&source).await?, open(&target).await?)) };
    let planned = async {
        let (mut planner, target_planner) = pair().await?;
        let plan = scan::plan(
            (&mut planner, &target_planner),
            &source,
            &target,
            options.chunk_rows.max(1),
        )
        .await;
        planner.close().await;
        target_planner.close().await;
        plan
    };
    let (planned, readers) = tokio::join!(
        planned,
        futures_util::future::join_all((0..options.jobs.max(1)).map(|_| pair()))
    );
    let mut readers = readers.into_iter().collect::<Result<Vec<_>, _>>()?;
    let (ranges, lookup) = planned?;
    for (source_reader, target_reader) in readers.split_off(ranges.len().clamp(1, readers.len())) {
        source_reader.close().await;
        target_reader.close().await;
    }
    // First pass: every range, in parallel; a range halved goes back into the queue as two.
    let queue = Arc::new(std::sync::Mutex::new(ranges));
    let shared = Arc::new((source.clone(), target.clone(), route.clone()));
    let chunk = options.chunk_rows.max(1);
    let mut workers = JoinSet::new();
    for (mut source_reader, mut target_reader) in readers {
        let (queue, shared) = (queue.clone(), shared.clone());
        workers.spawn(async move {
            let mut rows = 0u64;
            let mut found = Vec::new();
            let result = loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some(range) = next else { break Ok(()) };
                let (source, target, route) = &*shared;
                match scan::compare_range(
                    (&mut source_reader, &mut target_reader),
                    (source, target),
                    route,
                    &range,
                    chunk,
                )
                .await
                {
                    Ok(result) => {
                        rows += result.rows;
                        found.extend(result.differences);
                        queue
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .extend(result.halves);
                    }
                    Err(error) => break Err(error),
                }
            };
            source_reader.close().await;
            target_reader.close().await;
            result.map(|()| (rows, found))
        });
    }
    let mut rows = 0u64;
    // A key read in two ranges (one on each side, see [`scan::plan`]) is one candidate: the
    // re-check reads it by key.
    let mut found: BTreeMap<String, KeyDifference> = BTreeMap::new();
    while let Some(joined) = workers.join_next().await {
        let (r, f) = joined.map_err(|e| VerifyError::Crashed(e.to_string()))??;
        rows += r;
        for difference in f {
            found.insert(difference.key.clone(), difference);
        }
    }
    let scanned = started.elapsed();
    tracing::debug!(mapping = %mapping.name, rows, differing = found.len(), seconds = scanned.as_secs_f64(), "compared every range");
    let key = match two_way {
        false => position_key(target_site, from, deployment).await?,
        true => None,
    };
    let progress = Progress {
        source: &source.connection,
        target: &target.connection,
        carrier: match two_way {
            false => Carrier::Link(key.as_deref()),
            true => Carrier::Engine(&config.state_dir),
        },
        wait: options.wait,
    };
    let mut source_reader = open(&source).await?;
    let mut target_reader = open(&target).await?;
    let rechecked = scan::recheck(
        (&mut source_reader, &mut target_reader),
        (&source, &target),
        &route,
        lookup,
        found,
        options.rounds,
        &progress,
    )
    .await?;
    tracing::debug!(mapping = %mapping.name, still = rechecked.differences.len(), confirmed = rechecked.confirmed, seconds = started.elapsed().as_secs_f64(), "re-checked the differing keys");
    let mut repaired = BTreeSet::new();
    let mut unrepaired = Vec::new();
    if options.repair && !rechecked.differences.is_empty() {
        // A change replicated between the last read and the repair's commit would be
        // overwritten by an older version: the repaired keys are checked again like any
        // difference, and repaired again from a fresh read while they differ (a bounded number
        // of times; what still differs is reported).
        let mut pending = rechecked.differences.clone();
        for _ in 0..REPAIR_ATTEMPTS {
            match options.take.as_deref().filter(|_| two_way) {
                Some(take) => {
                    let sides = (&source, &target);
                    take::repair(config, mapping, take, sides, &route, lookup, &pending).await?;
                }
                None => {
                    repair(
                        target_site,
                        key.as_deref().unwrap_or(from),
                        &route,
                        &pending,
                    )
                    .await?;
                }
            }
            repaired.extend(pending.iter().map(|d| d.key.clone()));
            let found = pending.into_iter().map(|d| (d.key.clone(), d)).collect();
            let again = scan::recheck(
                (&mut source_reader, &mut target_reader),
                (&source, &target),
                &route,
                lookup,
                found,
                2,
                &progress,
            )
            .await?;
            pending = again.differences;
            if pending.is_empty() || !again.confirmed {
                break;
            }
        }
        unrepaired = pending.into_iter().map(|d| d.key).collect();
    }
    source_reader.close().await;
    target_reader.close().await;
    let mut report = MappingReport::new(
        &mapping.name,
        from,
        to,
        rows,
        scanned,
        rechecked,
        options.repair.then_some((repaired.len(), unrepaired)),
    );
    report.two_way = two_way;
    Ok(report)
}

/// The table of `mapping` on `site`.
async fn describe(
    site: &crate::config::Site,
    mapping: &Mapping,
) -> Result<duplex_connectors::TableSchema, VerifyError> {
    let table = mapping.tables[&site.name].clone();
    let mut schemas =
        duplex_connectors::describe(&site.connection(), &BTreeSet::from([table.clone()]))
            .await
            .map_err(|source| VerifyError::Describe {
                site: site.name.clone(),
                source,
            })?;
    schemas.remove(&table).ok_or_else(|| {
        VerifyError::Invalid(format!(
            "mapping {}: table {table} does not exist on site {}",
            mapping.name, site.name
        ))
    })
}

/// The route of `mapping` from `from` (whose table is `schema`) to `to`.
fn route(
    mapping: &Mapping,
    from: &str,
    to: &str,
    schema: &duplex_connectors::TableSchema,
) -> Result<TableRoute, VerifyError> {
    let schemas = HashMap::from([(schema.name.clone(), schema.clone())]);
    crate::routes::routes_for(std::slice::from_ref(mapping), from, to, &schemas)
        .into_iter()
        .next()
        .ok_or_else(|| VerifyError::Invalid(format!("mapping {} has no route", mapping.name)))
}

/// Writes the source's version of every difference into the target in one target
/// transaction through its applier (inserts overwrite a row with the same key; rows the
/// source does not have are deleted); returns the rows changed. The transaction records a
/// repair number (microseconds since the epoch, above the last one recorded) under
/// `verify:<source>` in `duplex.positions`, which marks it as duplex's own write; `source` is
/// the source's position key (`<site>@<deployment>`) when known, so `duplex teardown` removes
/// the row with the deployment's others.
async fn repair(
    target: &crate::config::Site,
    source: &str,
    route: &TableRoute,
    differences: &[KeyDifference],
) -> Result<usize, VerifyError> {
    let failed = |source| VerifyError::Repair {
        site: target.name.clone(),
        source: Box::new(source),
    };
    let key_of = |row: &duplex_connectors::Row| -> duplex_connectors::Row {
        route
            .key
            .iter()
            .map(|k| (k.as_str(), row.get(k).cloned().unwrap_or(Value::Null)))
            .collect()
    };
    let mut events = Vec::new();
    for difference in differences {
        match (
            &difference.difference,
            &difference.source,
            &difference.target,
        ) {
            (Difference::Extra, _, Some(row)) => {
                let row = row.row();
                events.push(ChangeEvent {
                    table: route.source.clone(),
                    op: Op::Delete,
                    key: key_of(&row),
                    before: Some(row),
                    after: None,
                });
            }
            (_, Some(row), _) => {
                let row = row.row();
                events.push(ChangeEvent {
                    table: route.source.clone(),
                    op: Op::Insert,
                    key: key_of(&row),
                    before: None,
                    after: Some(row),
                });
            }
            _ => {}
        }
    }
    let count = events.len();
    let options = ApplyOptions {
        upsert: true,
        ..ApplyOptions::default()
    };
    let mut applier = AnyApplier::connect(&target.connection(), vec![route.clone()], options)
        .await
        .map_err(failed)?;
    // Repairs are numbered by time, after the last one this target recorded: a repair is never
    // taken for one already applied.
    let name = format!("verify:{source}");
    let last = match applier.position(&name).await.map_err(failed)? {
        Some(Position::Outbox(n)) => n,
        _ => 0,
    };
    let now = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0);
    let txn = Transaction {
        source: name,
        position: Position::Outbox(now.max(last + 1)),
        commit_time: chrono::Utc::now(),
        origin: Origin::Local,
        events,
    };
    applier
        .apply(std::slice::from_ref(&txn))
        .await
        .map_err(failed)?;
    Ok(count)
}
