//! `duplex run --role reader`, `duplex run --role writer --site S` and `duplex run --role
//! coordinator`: the links of the configuration split at the bus, and the merge engine's
//! readers split from its coordinator (see the module doc of `crate::bus`).

use std::sync::Arc;
use std::time::Duration;

use duplex_state::StateStore;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Bus, BusError, Kind, lease, reader};
use crate::backoff::Backoff;
use crate::config::BusConfig;
use crate::engine::MergePlan;
use crate::link::{self, LinkPlan};
use crate::report::chain;
use crate::shutdown::stop_requested;

/// The part of the work a `duplex run` process does when the configuration has a `[bus]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Read every source and publish its transactions.
    Reader,
    /// Apply what the bus holds for this target site.
    Writer(String),
    /// The merge engine's coordinator, fed by the bus, publishing its writes to it.
    Coordinator,
}

/// How often a role reads its streams' backlog for `/metrics`.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Runs `role` for the one-way links `plans` and the merge engine's `merge` until a shutdown
/// signal or a definite failure; with `metrics` (the process serves `/metrics`) the backlog of
/// the role's streams is read every few seconds into the telemetry.
pub async fn run_role(
    role: &Role,
    config: &BusConfig,
    plans: Vec<LinkPlan>,
    merge: Option<MergePlan>,
    state: Arc<StateStore>,
    metrics: bool,
) -> Result<(), BusError> {
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(async move {
        crate::shutdown::wait_for_signal().await;
        tracing::info!("shutdown requested: finishing what is in flight");
        let _ = stop.send(true);
    });
    let Some(bus) = connect(config, &mut stopped).await? else {
        return Ok(());
    };
    if *role == Role::Coordinator {
        // The engine serves the control socket and its own telemetry.
        let Some(mut merge) = merge else {
            return Err(BusError::NoMergeMapping);
        };
        merge.bus = Some(bus);
        return crate::engine::run(merge, state, stopped)
            .await
            .map_err(|error| BusError::Engine(Box::new(error)));
    }
    // A reader also publishes the merge streams of the two-way sites.
    let merge_sites: Vec<String> = match (role, &merge) {
        (Role::Reader, Some(merge)) => merge.sites.iter().map(|s| s.site.name.clone()).collect(),
        _ => Vec::new(),
    };
    let watcher =
        metrics.then(|| tokio::spawn(watch_backlog(bus.clone(), flows(role, &plans), merge_sites)));
    // `duplex status` asks the role through the same socket as a one-process `run`; the
    // role's own progress is in the telemetry it answers from (see `super::progress`).
    let control = crate::engine::control::serve_without_engine(state.dir());
    let outcome = match role {
        Role::Reader => {
            crate::telemetry::global().role().reader();
            let mut readers: Vec<(LinkPlan, Kind)> =
                plans.into_iter().map(|plan| (plan, Kind::OneWay)).collect();
            readers.extend(
                merge
                    .iter()
                    .flat_map(|merge| merge.sites.iter())
                    .map(|site| (merge_reader_plan(site), Kind::Merge)),
            );
            read(bus, readers, state, stopped).await
        }
        Role::Writer(site) => {
            crate::telemetry::global().role().writer(site);
            let merge = merge.filter(|merge| merge.sites.iter().any(|s| s.site.name == *site));
            write(bus, site, plans, merge, state, stopped).await
        }
        Role::Coordinator => unreachable!("the coordinator returned above"),
    };
    for task in [watcher, control].into_iter().flatten() {
        task.abort();
    }
    outcome
}

/// The bus, once it answers: a role started while NATS is down or restarting waits for it
/// (as `duplex run` waits for an unreachable site) instead of exiting; `None` when shutdown
/// was requested meanwhile. A definite error (not a connection) is returned at once.
async fn connect(
    config: &BusConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Bus>, BusError> {
    let mut backoff = Backoff::default();
    loop {
        backoff.attempt_started();
        let error = match Bus::connect(config).await {
            Ok(bus) => return Ok(Some(bus)),
            Err(error) if error.is_transient() => error,
            Err(error) => return Err(error),
        };
        let delay = backoff.failed();
        tracing::warn!(error = %chain(&error), "the bus does not answer yet; retrying in {delay:.1?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(shutdown) => return Ok(None),
        }
    }
}

/// The streams a role works on, each with the targets whose consumers it reports: a reader
/// every target of its sources, a writer its own site.
fn flows(role: &Role, plans: &[LinkPlan]) -> Vec<(String, Vec<String>)> {
    plans
        .iter()
        .filter_map(|plan| {
            let targets: Vec<String> = plan
                .targets
                .iter()
                .map(|target| target.site.name.clone())
                .filter(|target| match role {
                    Role::Reader => true,
                    Role::Writer(site) => target == site,
                    Role::Coordinator => false,
                })
                .collect();
            (!targets.is_empty()).then(|| (plan.source.name.clone(), targets))
        })
        .collect()
}

/// Reads the backlog of `flows` into the telemetry every [`BACKLOG_EVERY`], until aborted.
async fn watch_backlog(bus: Bus, flows: Vec<(String, Vec<String>)>, merge_sites: Vec<String>) {
    let mut every = tokio::time::interval(BACKLOG_EVERY);
    loop {
        every.tick().await;
        match super::backlog::read_with(&bus, &flows, &merge_sites).await {
            Ok(backlog) => crate::telemetry::global().bus_backlog(backlog),
            Err(error) => {
                tracing::debug!(error = %chain(&error), "reading the bus backlog for /metrics")
            }
        }
    }
}

/// What a reader of the merge engine's stream of `site` reads: its tables of two-way
/// mappings (the stream adds `duplex.positions`); no targets.
fn merge_reader_plan(site: &crate::engine::MergeSite) -> LinkPlan {
    LinkPlan {
        source: site.site.clone(),
        tables: site.tables.clone(),
        targets: Vec::new(),
        unbackfilled: Vec::new(),
        mappings: Arc::new(Vec::new()),
        schemas: Default::default(),
        bus: None,
    }
}

/// One reader per source stream; the first definite failure stops them all.
async fn read(
    bus: Bus,
    plans: Vec<(LinkPlan, Kind)>,
    state: Arc<StateStore>,
    stopped: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let (stop_readers, readers_stopped) = watch::channel(false);
    let mut forward = stopped.clone();
    let relay = stop_readers.clone();
    tokio::spawn(async move {
        stop_requested(&mut forward).await;
        let _ = relay.send(true);
    });
    let mut readers = JoinSet::new();
    for (plan, kind) in plans {
        readers.spawn(reader::run(
            plan,
            kind,
            bus.clone(),
            state.clone(),
            readers_stopped.clone(),
        ));
    }
    let mut outcome = Ok(());
    while let Some(joined) = readers.join_next().await {
        let result = match joined {
            Ok(result) => result,
            Err(panic) => Err(BusError::Link(Box::new(link::LinkError::Crashed(
                panic.to_string(),
            )))),
        };
        if let Err(error) = result {
            tracing::error!(error = %chain(&error), "a bus reader stopped");
            let _ = stop_readers.send(true);
            if outcome.is_ok() {
                outcome = Err(error);
            }
        }
    }
    outcome
}

/// The links into `site`, fed by the bus, and the merge engine's writes into it when it is a
/// site of two-way mappings (`merge`), while this writer holds the site's lease.
async fn write(
    bus: Bus,
    site: &str,
    plans: Vec<LinkPlan>,
    merge: Option<MergePlan>,
    state: Arc<StateStore>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let plans: Vec<LinkPlan> = plans
        .into_iter()
        .filter_map(|mut plan| {
            plan.targets.retain(|target| target.site.name == site);
            plan.unbackfilled.retain(|(_, target)| target == site);
            plan.bus = Some(bus.clone());
            (!plan.targets.is_empty()).then_some(plan)
        })
        .collect();
    if plans.is_empty() && merge.is_none() {
        return Err(BusError::NoMapping {
            site: site.to_owned(),
        });
    }
    let holder = format!(
        "{} (pid {}, state {})",
        hostname(),
        std::process::id(),
        state.deployment_id()
    );
    let Some(lease) = take_lease(&bus, site, &holder, &mut stopped).await? else {
        return Ok(());
    };
    crate::telemetry::global().role().lease(lease.since());
    let (release, released) = watch::channel(false);
    let mut keep = tokio::spawn(lease.keep(released));
    let (stop_links, links_stopped) = watch::channel(false);
    let mut links: JoinSet<Result<(), BusError>> = JoinSet::new();
    for plan in plans {
        let (state, stopped) = (state.clone(), links_stopped.clone());
        links.spawn(async move {
            link::run(plan, state, stopped)
                .await
                .map_err(|error| BusError::Link(Box::new(error)))
        });
    }
    if let Some(merge) = merge {
        let (bus, site, stopped) = (bus.clone(), site.to_owned(), links_stopped.clone());
        links.spawn(async move {
            crate::engine::write_site(&merge, &site, &bus, stopped)
                .await
                .map_err(|error| BusError::Engine(Box::new(error)))
        });
    }
    let mut outcome = Ok(());
    let mut lease_running = true;
    while !links.is_empty() {
        tokio::select! {
            _ = stop_requested(&mut stopped) => {
                let _ = stop_links.send(true);
            }
            lost = &mut keep, if lease_running => {
                lease_running = false;
                crate::telemetry::global().role().lease(None);
                let _ = stop_links.send(true);
                if let Ok(Some(error)) = lost {
                    tracing::error!(error = %chain(&error), "this writer lost its lease; stopping");
                    outcome = Err(error);
                }
            }
            Some(joined) = links.join_next() => {
                let result = match joined {
                    Ok(result) => result,
                    Err(panic) => Err(BusError::Link(Box::new(link::LinkError::Crashed(
                        panic.to_string(),
                    )))),
                };
                if let Err(error) = result {
                    let _ = stop_links.send(true);
                    if outcome.is_ok() {
                        outcome = Err(error);
                    }
                }
            }
        }
    }
    let _ = release.send(true);
    if lease_running {
        let _ = keep.await;
    }
    crate::telemetry::global().role().lease(None);
    outcome
}

/// [`lease::take`], retrying transient failures (the NATS server restarting, or writers
/// starting together while the lease stream is being created) with the engine's backoff.
async fn take_lease(
    bus: &Bus,
    site: &str,
    holder: &str,
    stopped: &mut watch::Receiver<bool>,
) -> Result<Option<lease::Lease>, BusError> {
    let mut backoff = Backoff::default();
    loop {
        backoff.attempt_started();
        match lease::take(bus, site, holder, stopped).await {
            Err(error) if error.is_transient() => {
                let delay = backoff.failed();
                tracing::warn!(site, error = %chain(&error), "cannot take the writer lease yet; retrying in {delay:.1?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop_requested(stopped) => return Ok(None),
                }
            }
            taken => return taken,
        }
    }
}

/// This machine's name, for the lease holder.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown host".into())
}
