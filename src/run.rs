//! `duplex run`: starts one link per source site of the one-way mappings and the merge engine
//! for the two-way ones, and keeps them running until Ctrl-C or SIGTERM, resuming from where
//! each got to.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{Config, Direction};
use crate::link::{self, LinkPlan, TargetPlan};
use crate::report::chain;
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
    /// `--trust-slot` names no site.
    #[error("--trust-slot {0}: there is no such site in the configuration")]
    UnknownSite(String),
    /// `--accept-schema-change` names a table no mapping has.
    #[error(
        "--accept-schema-change {0}: no mapping has this table; give it as schema.table (or site.schema.table) as the mapping lists it"
    )]
    UnknownTable(String),
    /// One or more links stopped on a definite error (each was logged).
    #[error("{0} link(s) stopped on errors (see the log above)")]
    LinksFailed(usize),
}

/// Builds one link plan per source site of the one-way mappings; `state` says which mappings
/// have a backfill record.
pub async fn plan(
    config: &Config,
    state: &duplex_state::StateStore,
) -> Result<Vec<LinkPlan>, RunError> {
    let mut flows: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for mapping in &config.mappings {
        if mapping.direction == Direction::Both {
            // The merge engine's (see crate::engine).
            continue;
        }
        for (from, to) in mapping.edges() {
            flows.entry(from).or_default().insert(to);
        }
    }
    let mut plans = Vec::new();
    let mappings = std::sync::Arc::new(config.mappings.clone());
    for (source, targets) in flows {
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
            .into_iter()
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
        plans.push(LinkPlan {
            source: site.clone(),
            tables,
            targets,
            unbackfilled,
            mappings: mappings.clone(),
            schemas,
        });
    }
    Ok(plans)
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
}

/// Runs every link until a shutdown signal; returns an error when a link stopped on a
/// definite error.
pub async fn run(config: &Config, options: &RunOptions) -> Result<(), RunError> {
    let state = std::sync::Arc::new(open_state(config).await?);
    accept_shapes(config, &state, &options.accept_schema_change)?;
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
    let plans = plan(config, &state).await?;
    let mut merge_plan = crate::engine::plan(config)
        .await
        .map_err(RunError::Engine)?;
    if let Some(plan) = &mut merge_plan {
        plan.take_over_from = options.take_over_from.clone();
    }
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown::wait_for_signal().await;
        tracing::info!("shutdown requested: finishing the transactions being applied");
        let _ = stop.send(true);
    });
    let mut links = JoinSet::new();
    for plan in plans {
        let name = link::link_name(&plan);
        let stopped = stopped.clone();
        let state = state.clone();
        links.spawn(async move {
            let outcome = link::run(plan, state, stopped).await;
            (name, outcome.map_err(|error| chain(&error)))
        });
    }
    if let Some(merge_plan) = merge_plan {
        let stopped = stopped.clone();
        let state = state.clone();
        links.spawn(async move {
            let outcome = crate::engine::run(merge_plan, state, stopped).await;
            (
                "merge engine".to_owned(),
                outcome.map_err(|error| chain(&error)),
            )
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
) -> Result<(), RunError> {
    for name in tables {
        let mut known = false;
        for mapping in &config.mappings {
            for (site, table) in &mapping.tables {
                if table.to_string() == *name || format!("{site}.{table}") == *name {
                    known = true;
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
    Ok(())
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
