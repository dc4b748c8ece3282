//! `duplex run`: starts one link per source site of the one-way mappings and the merge engine
//! for the two-way ones, and keeps them running until Ctrl-C or SIGTERM, resuming from where
//! each got to.
//!
//! # Sites down at start
//!
//! Starting a link or the merge engine first reads the mapped tables of its sources (sites).
//! When that fails on a definite error (a missing table, a wrong password) `run` stops at once
//! with the message. When it fails on a transient one (the site is unreachable: refused, no
//! route, a timeout, a server starting up; [`RunError::is_transient`]), only that link or the
//! merge engine waits: it tries again with the engine's one backoff, logging each failure,
//! while everything else streams. The merge engine starts once every site of its two-way
//! mappings is reachable: its decisions compare a row's versions at all sites, and a site it
//! cannot read may hold the newer version, so merging the others alone could write back what
//! that site has already replaced (and it would need a plan per subset of sites). Once
//! started, links and the engine retry transient failures themselves (see `crate::link`).

use std::collections::{BTreeMap, BTreeSet};
use tracing::Instrument;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::config::{Config, Direction};
use crate::link::{self, LinkPlan, TargetPlan};
use crate::report::chain;
use crate::shutdown::stop_requested;
use duplex_connectors::DescribeError;

/// Why `duplex run` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The merge engine could not start.
    #[error("starting the merge engine (two-way mappings)")]
    Engine(#[source] crate::engine::EngineError),
    /// The state directory cannot be used.
    #[error("cannot use the state directory")]
    State(#[from] duplex_state::StateError),
    /// A source's tables cannot be read.
    #[error("reading the mapped tables of site {site}")]
    Describe {
        /// The site.
        site: String,
        /// Cause.
        #[source]
        source: DescribeError,
    },
    /// A mapping's backfill started but did not finish; the message names the command.
    #[error("{0}")]
    UnfinishedBackfill(String),
    /// `--role` without a `[bus]` section.
    #[error(
        "--role needs a [bus] section in the configuration (kind = \"nats\", url = ...); without it duplex runs in one process: leave out --role"
    )]
    NoBus,
    /// A bus role stopped.
    #[error("bus role")]
    Bus(#[source] Box<crate::bus::BusError>),
    /// `--trust-slot` names no site.
    #[error("--trust-slot {0}: there is no such site in the configuration")]
    UnknownSite(String),
    /// `--accept-schema-change` names a table no mapping has.
    #[error(
        "--accept-schema-change {0}: no mapping has this table; give it as schema.table (or site.schema.table) as the mapping lists it"
    )]
    UnknownTable(String),
    /// The metrics endpoint cannot listen.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::ListenError),
    /// One or more links stopped on a definite error (each was logged).
    #[error("{0} link(s) stopped on errors (see the log above)")]
    LinksFailed(usize),
}

impl RunError {
    /// True when starting again later may succeed: a site was unreachable.
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Describe { source, .. } => source.is_transient(),
            RunError::Engine(error) => error.is_transient(),
            _ => false,
        }
    }
}

/// The source sites of the one-way mappings, each with its target sites.
pub fn flows(config: &Config) -> BTreeMap<String, BTreeSet<String>> {
    let mut flows: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for mapping in &config.mappings {
        if mapping.direction == Direction::Both {
            // The merge engine's (see crate::engine).
            continue;
        }
        for (from, to) in mapping.edges() {
            flows
                .entry(from.to_owned())
                .or_default()
                .insert(to.to_owned());
        }
    }
    flows
}

/// The sites of the two-way mappings (the merge engine's).
pub fn merge_sites(config: &Config) -> BTreeSet<String> {
    config
        .mappings
        .iter()
        .filter(|m| m.direction == Direction::Both)
        .flat_map(|m| m.tables.keys().cloned())
        .collect()
}

/// Builds the link plan of one source site of the one-way mappings (reading its mapped
/// tables); `state` says which mappings have a backfill record.
pub async fn plan(
    config: &Config,
    state: &duplex_state::StateStore,
    source: &str,
    targets: &BTreeSet<String>,
) -> Result<LinkPlan, RunError> {
    let mappings = std::sync::Arc::new(config.mappings.clone());
    let tables: BTreeSet<_> = config
        .mappings
        .iter()
        .filter(|m| m.reads_from(source))
        .filter_map(|m| m.tables.get(source).cloned())
        .collect();
    let site = &config.sites[source];
    let schemas = duplex_connectors::describe(&site.connection(), &tables)
        .await
        .map_err(|source| RunError::Describe {
            site: site.name.clone(),
            source,
        })?;
    let targets = targets
        .iter()
        .map(|target| TargetPlan {
            site: config.sites[target].clone(),
            routes: crate::routes::routes_for(&config.mappings, source, target, &schemas),
        })
        .collect();
    let unbackfilled = config
        .mappings
        .iter()
        .filter(|m| m.direction != Direction::Both && m.reads_from(source))
        .filter(|m| !crate::backfill::has_record(state, &m.name))
        .flat_map(|m| {
            m.edges()
                .into_iter()
                .map(|(_, to)| (m.name.clone(), to.to_owned()))
        })
        .collect();
    Ok(LinkPlan {
        bus: None,
        source: site.clone(),
        tables,
        targets,
        unbackfilled,
        mappings,
        schemas,
    })
}

/// After a start failed on a transient error, tries `again` with the engine's backoff until it
/// succeeds (`Some`), fails on a definite error, or shutdown is requested (`None`). Every
/// failure is logged (at the backoff's pace, at most one line per 30 s once it has grown).
async fn retry_start<T, F, Fut>(
    name: &str,
    first: RunError,
    shutdown: &mut watch::Receiver<bool>,
    mut again: F,
) -> Result<Option<T>, RunError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, RunError>>,
{
    let mut backoff = Backoff::default();
    let mut error = first;
    loop {
        let delay = backoff.failed();
        tracing::warn!(link = %name, error = %chain(&error), "cannot start yet (a site is unreachable); the other links run meanwhile; retrying in {delay:.1?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(shutdown) => return Ok(None),
        }
        backoff.attempt_started();
        match again().await {
            Ok(planned) => {
                tracing::info!(link = %name, "the unreachable site answers: starting");
                return Ok(Some(planned));
            }
            Err(next) if next.is_transient() => error = next,
            Err(next) => return Err(next),
        }
    }
}

/// What `duplex run` is told to accept on this start.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--accept-schema-change`: source tables whose current columns (or re-created table)
    /// are accepted.
    pub accept_schema_change: Vec<String>,
    /// `--trust-slot`: PostgreSQL source sites whose slot is used although confirmed beyond
    /// what duplex recorded acknowledging.
    pub trust_slot: Vec<String>,
    /// `--take-over-from`: the deployment whose merge engine claims this one takes over.
    pub take_over_from: Option<String>,
    /// `--role`: this process's part of the work on the bus (`None`: all of it, no bus).
    pub role: Option<crate::bus::Role>,
}

/// Runs every link until a shutdown signal; returns an error when a link stopped on a
/// definite error.
pub async fn run(config: &Config, options: &RunOptions) -> Result<(), RunError> {
    let state = std::sync::Arc::new(open_state(config).await?);
    crate::telemetry::global().attach_store(state.clone());
    tokio::spawn(async {
        let mut every = tokio::time::interval(crate::telemetry::SAMPLE_EVERY);
        loop {
            every.tick().await;
            crate::telemetry::global().sample();
        }
    });
    let accepted_shapes = accept_shapes(config, &state, &options.accept_schema_change)?;
    for site in &options.trust_slot {
        if !config.sites.contains_key(site) {
            return Err(RunError::UnknownSite(site.clone()));
        }
        if state.remove_position(&crate::link::acknowledged_key(site))? {
            tracing::warn!(site = %site, "trusting the slot of this site as it is (--trust-slot)");
        }
    }
    // A mapping whose backfill did not finish is never streamed as if it had: the stream would
    // start past the rows not yet copied.
    let unfinished = crate::backfill::unfinished(config, &state)?;
    if !unfinished.is_empty() {
        return Err(RunError::UnfinishedBackfill(
            crate::backfill::unfinished_refusal(&unfinished),
        ));
    }
    // Streaming into tables that were never loaded is legitimate (both sides start empty),
    // so this is said, not enforced: here for two-way mappings, by each link for its one-way
    // mappings once it has read its targets' positions.
    let missing = crate::backfill::never_backfilled_two_way(config, &state);
    if !missing.is_empty() {
        tracing::warn!("{}", crate::backfill::never_backfilled_warning(&missing));
    }
    // Every plan is tried once before anything starts, so a definite error stops `run` at once;
    // what failed on a transient error is retried by its own task (see the module docs).
    let mut plans = Vec::new();
    for (source, targets) in flows(config) {
        match plan(config, &state, &source, &targets).await {
            Ok(planned) => plans.push(Ok(planned)),
            Err(error) if error.is_transient() => plans.push(Err((source, targets, error))),
            Err(error) => return Err(error),
        }
    }
    let merge_plan = match crate::engine::plan(config).await {
        Ok(planned) => planned.map(Ok),
        Err(error) if error.is_transient() => Some(Err(RunError::Engine(error))),
        Err(error) => return Err(RunError::Engine(error)),
    };
    if let Some(listen) = config.metrics_listen {
        crate::metrics::serve(listen).await?;
    }
    if let Some(role) = &options.role {
        let Some(bus) = &config.bus else {
            return Err(RunError::NoBus);
        };
        let merge_plan = match merge_plan {
            None => None,
            Some(Ok(mut planned)) => {
                planned.take_over_from = options.take_over_from.clone();
                planned.accepted_shapes = accepted_shapes.clone();
                Some(planned)
            }
            Some(Err(error)) => return Err(error),
        };
        let mut ready = Vec::new();
        for planned in plans {
            match planned {
                Ok(planned) => ready.push(planned),
                Err((_, _, error)) => return Err(error),
            }
        }
        let plans = ready;
        return crate::bus::run_role(
            role,
            bus,
            plans,
            merge_plan,
            state,
            config.metrics_listen.is_some(),
        )
        .await
        .map_err(|error| RunError::Bus(Box::new(error)));
    }
    // The merge engine serves the control socket itself once it starts (conflicts too).
    let control = merge_plan
        .is_none()
        .then(|| crate::engine::control::serve_without_engine(&config.state_dir))
        .flatten();
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown::wait_for_signal().await;
        tracing::info!("shutdown requested: finishing the transactions being applied");
        let _ = stop.send(true);
    });
    let shared = std::sync::Arc::new(config.clone());
    let mut links = JoinSet::new();
    for planned in plans {
        let mut stopped = stopped.clone();
        let state = state.clone();
        let config = shared.clone();
        links.spawn(async move {
            let planned = match planned {
                Ok(planned) => planned,
                Err((source, targets, error)) => {
                    let name = format!(
                        "{source} -> {}",
                        targets.iter().cloned().collect::<Vec<_>>().join(", ")
                    );
                    let telemetry = crate::telemetry::global().link(
                        &name,
                        &source,
                        &targets.iter().cloned().collect::<Vec<_>>(),
                    );
                    telemetry.waiting(chain(&error));
                    let again = || {
                        let (config, state) = (config.clone(), state.clone());
                        let (source, targets) = (source.clone(), targets.clone());
                        async move { plan(&config, &state, &source, &targets).await }
                    };
                    match retry_start(&name, error, &mut stopped, again).await {
                        Ok(Some(planned)) => planned,
                        Ok(None) => return (name, Ok(())),
                        Err(error) => return (name, Err(chain(&error))),
                    }
                }
            };
            let name = link::link_name(&planned);
            let span = tracing::info_span!("link", link = %name, source = %planned.source.name);
            let outcome = link::run(planned, state, stopped).instrument(span).await;
            (name, outcome.map_err(|error| chain(&error)))
        });
    }
    if let Some(merge_plan) = merge_plan {
        let mut stopped = stopped.clone();
        let state = state.clone();
        let config = shared.clone();
        let take_over_from = options.take_over_from.clone();
        links.spawn(async move {
            let name = "merge engine".to_owned();
            let mut merge_plan = match merge_plan {
                Ok(planned) => planned,
                Err(error) => {
                    let sites: Vec<String> = config
                        .sites
                        .keys()
                        .filter(|site| {
                            config
                                .mappings
                                .iter()
                                .any(|m| m.direction == Direction::Both && m.reads_from(site))
                        })
                        .cloned()
                        .collect();
                    crate::engine::telemetry(&sites).waiting(chain(&error));
                    let again = || {
                        let config = config.clone();
                        async move {
                            match crate::engine::plan(&config).await {
                                Ok(planned) => {
                                    Ok(planned.expect("the configuration has two-way mappings"))
                                }
                                Err(error) => Err(RunError::Engine(error)),
                            }
                        }
                    };
                    match retry_start(&name, error, &mut stopped, again).await {
                        Ok(Some(planned)) => planned,
                        Ok(None) => return (name, Ok(())),
                        Err(error) => return (name, Err(chain(&error))),
                    }
                }
            };
            merge_plan.take_over_from = take_over_from;
            merge_plan.accepted_shapes = accepted_shapes;
            let outcome = crate::engine::run(merge_plan, state, stopped)
                .instrument(tracing::info_span!("merge_engine"))
                .await;
            (name, outcome.map_err(|error| chain(&error)))
        });
    }
    let mut failed = 0;
    while let Some(joined) = links.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(error))) => {
                failed += 1;
                report_stopped(&name, &error);
            }
            Err(panic) => {
                failed += 1;
                tracing::error!(%panic, "a link crashed");
            }
        }
    }
    if let Some(control) = control {
        control.abort();
    }
    if failed > 0 {
        Err(RunError::LinksFailed(failed))
    } else {
        Ok(())
    }
}

/// Forgets the recorded shapes of the source tables named by `--accept-schema-change`, so
/// their links take the columns the log announces next as they are (see `crate::shape`).
fn accept_shapes(
    config: &Config,
    state: &duplex_state::StateStore,
    tables: &[String],
) -> Result<BTreeSet<(String, duplex_connectors::TableName)>, RunError> {
    let mut accepted = BTreeSet::new();
    for name in tables {
        let mut known = false;
        for mapping in &config.mappings {
            for (site, table) in &mapping.tables {
                if table.to_string() == *name || format!("{site}.{table}") == *name {
                    known = true;
                    if mapping.direction == crate::config::Direction::Both {
                        // The merge engine keeps the recorded shape and follows the next
                        // change of it (see `engine::coordinator`).
                        tracing::info!(site = %site, %table, "accepting the next change of the table's columns");
                        accepted.insert((site.clone(), table.clone()));
                        continue;
                    }
                    if state.remove_position(&crate::shape::shape_key(site, table))? {
                        tracing::info!(site = %site, %table, "accepting the table's current columns as the source's change log announces them");
                    }
                    if state.remove_position(&crate::link::table_id_key(site, table))? {
                        tracing::info!(site = %site, %table, "accepting the table as it is now on the source (re-created or put back into the publication)");
                    }
                }
            }
        }
        if !known {
            return Err(RunError::UnknownTable(name.clone()));
        }
    }
    Ok(accepted)
}

/// Opens the state store; a store in use is waited for a few seconds, because `duplex
/// conflicts` reads it briefly when no `run` answers on the control socket.
async fn open_state(config: &Config) -> Result<duplex_state::StateStore, RunError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match duplex_state::StateStore::open(&config.state_dir) {
            Err(duplex_state::StateError::InUse { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => return Ok(other?),
        }
    }
}

fn report_stopped(name: &str, error: &str) {
    tracing::error!(link = %name, error = %error, "link stopped: fix the cause and start duplex run again (it resumes where each target got to)");
}
