//! `duplex teardown [--site S] [--dry-run]`: removes what this deployment created on the sites
//! of the configuration, so that nothing keeps WAL or clutters the databases once duplex is
//! retired (or one site leaves it).
//!
//! What belongs to the deployment is decided by the connectors (see
//! [`duplex_connectors::teardown`]): publications and slots its claim names, its rows of
//! `duplex.positions` and `duplex.claims`, and the `duplex` schema or database when nothing of
//! another deployment is in it. The deployment is the state store's identity, so teardown needs
//! the state directory `run` used, and holds it open throughout: a `run` or `backfill` using it
//! makes teardown refuse, and none can start meanwhile. A slot being streamed from (by anything)
//! is refused before anything is removed, naming the slot.
//!
//! With a `[bus]`, the `duplex.positions` rows its writers recorded (`<source>@bus-<prefix>`,
//! for the sources of the configuration) are the deployment's too: any writer's state
//! directory may have written them. So are the JetStream streams, consumers and lease stream
//! the configuration's bus created (see [`crate::bus::teardown`]: only the names this
//! configuration yields). Both are removed only while no writer holds the lease of a site
//! concerned (asked of the bus first; teardown refuses, removing nothing, when it cannot ask):
//! a writer of another state directory is not kept out by this one's lock.
//!
//! The state directory itself is left: it holds the conflict log, which may still be wanted;
//! the summary says how to remove it.

use std::fmt::Write as _;
use std::path::PathBuf;

use duplex_connectors::teardown::{self, Leftovers};
use duplex_state::{StateError, StateStore};

use crate::config::Config;

/// What `duplex teardown` is asked.
#[derive(Debug, Clone, Default)]
pub struct TeardownOptions {
    /// Only this site; every site of the configuration when `None`.
    pub site: Option<String>,
    /// Say what would be removed, remove nothing.
    pub dry_run: bool,
}

/// Why teardown refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum TeardownError {
    /// No state store: the deployment is unknown.
    #[error(
        "there is no state store in {0}: teardown removes only what this deployment created, and \
         without its state directory duplex cannot tell which slots, publications and rows are \
         its own. Set [state] dir to the directory `duplex run` used"
    )]
    NoState(PathBuf),
    /// The state store is in use or unreadable.
    #[error(
        "cannot use the state store (a `duplex run` or `duplex backfill` using it must be stopped \
         first)"
    )]
    State(#[from] StateError),
    /// `--site` names no site.
    #[error("--site {0}: there is no such site in the configuration")]
    UnknownSite(String),
    /// A slot to drop is being streamed from.
    #[error(
        "site {site}: replication slot {slots} is being streamed from (a `duplex run` of this \
         deployment, or another client of the slot): stop it first; nothing was removed"
    )]
    Active {
        /// The site.
        site: String,
        /// The active slots, comma-separated.
        slots: String,
    },
    /// A bus writer still applies into a site whose bus position rows would go.
    #[error(
        "site {site}: the bus writer {holder} holds the lease of this site and applies into it: \
         stop it first (`duplex run --role writer --site {site}`); nothing was removed"
    )]
    BusWriter {
        /// The site.
        site: String,
        /// The lease holder.
        holder: String,
    },
    /// The bus could not be asked whether a writer runs, or what it holds.
    #[error(
        "the bus at {url} cannot tell whether a writer still applies, nor list its streams: \
         start the NATS server of [bus] and try again; nothing was removed"
    )]
    Bus {
        /// The NATS server.
        url: String,
        /// Cause.
        #[source]
        source: Box<crate::bus::BusError>,
    },
    /// Removing the bus's streams or consumers failed.
    #[error("removing the bus's streams and consumers at {url}")]
    BusRemove {
        /// The NATS server.
        url: String,
        /// Cause.
        #[source]
        source: Box<crate::bus::BusError>,
    },
    /// A site could not be read or changed.
    #[error("site {site}")]
    Site {
        /// The site.
        site: String,
        /// Cause.
        #[source]
        source: duplex_connectors::AdminError,
    },
}

/// Finds, and unless `dry_run` removes, what this deployment created on the selected sites;
/// returns the report for people.
pub async fn teardown(config: &Config, options: &TeardownOptions) -> Result<String, TeardownError> {
    if !config.state_dir.join(duplex_state::STATE_FILE).exists() {
        return Err(TeardownError::NoState(config.state_dir.clone()));
    }
    let store = StateStore::open(&config.state_dir)?;
    let deployment = store.deployment_id().to_owned();
    let sites: Vec<_> = match &options.site {
        Some(name) => vec![
            config
                .sites
                .get(name)
                .ok_or_else(|| TeardownError::UnknownSite(name.clone()))?,
        ],
        None => config.sites.values().collect(),
    };
    // The position rows the bus's writers recorded (keyed by the bus, not by any one state
    // directory) belong to every deployment of this configuration's bus.
    let bus_keys: Vec<String> = match &config.bus {
        Some(bus) => crate::run::flows(config)
            .into_keys()
            .map(|source| crate::link::position_key(&source, &format!("bus-{}", bus.stream_prefix)))
            .collect(),
        None => Vec::new(),
    };
    let mut found = Vec::new();
    let mut bus_rows = Vec::new();
    for site in &sites {
        let mut leftovers = teardown::find(&site.connection(), &deployment)
            .await
            .map_err(|source| TeardownError::Site {
                site: site.name.clone(),
                source,
            })?;
        leftovers.adopt_positions(|source| bus_keys.iter().any(|key| key == source));
        // The bus's claims on its rows (see crate::bus::identity) go with them.
        leftovers.adopt_claims(|scope| bus_keys.iter().any(|key| key == scope));
        if leftovers
            .positions
            .iter()
            .chain(&leftovers.claims)
            .any(|p| bus_keys.contains(p))
        {
            bus_rows.push(site.name.clone());
        }
        let active = leftovers.active_slots();
        if !active.is_empty() {
            return Err(TeardownError::Active {
                site: site.name.clone(),
                slots: active.join(", "),
            });
        }
        found.push((site, leftovers));
    }
    // What the bus holds for the sites concerned, and whether a writer still applies into
    // one of them or into a site holding the bus's position rows.
    let bus = match &config.bus {
        Some(bus) => {
            let flows = crate::run::flows(config);
            let merge_sites = crate::run::merge_sites(config);
            let leftovers = crate::bus::teardown::find(
                bus,
                &flows,
                &merge_sites,
                options.site.as_deref(),
                &bus_rows,
            )
            .await
            .map_err(|source| TeardownError::Bus {
                url: bus.url.clone(),
                source: Box::new(source),
            })?;
            if let Some((site, holder)) = leftovers.held.first() {
                return Err(TeardownError::BusWriter {
                    site: site.clone(),
                    holder: holder.clone(),
                });
            }
            Some((bus, leftovers))
        }
        None => None,
    };
    let mut report = String::new();
    let _ = writeln!(
        report,
        "deployment {deployment} (state directory {}){}",
        config.state_dir.display(),
        if options.dry_run {
            ": dry run, nothing is removed"
        } else {
            ""
        }
    );
    let mut removed = 0;
    let verb = if options.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for (site, leftovers) in &found {
        let _ = writeln!(report, "site {}:", site.name);
        let items = if options.dry_run {
            planned(leftovers)
        } else {
            teardown::remove(&site.connection(), leftovers)
                .await
                .map_err(|source| TeardownError::Site {
                    site: site.name.clone(),
                    source,
                })?
        };
        removed += list(&mut report, verb, &items, "nothing of this deployment");
        if let Some(bookkeeping) = &leftovers.bookkeeping
            && !leftovers.others.is_empty()
        {
            let _ = writeln!(
                report,
                "  kept {bookkeeping}: it still holds {}",
                leftovers.others.join(", ")
            );
        } else if let Some(bookkeeping) = &leftovers.bookkeeping
            && !options.dry_run
            && !items.iter().any(|i| i == bookkeeping)
        {
            let _ = writeln!(
                report,
                "  kept {bookkeeping}: another deployment wrote into it meanwhile"
            );
        }
        for note in &leftovers.unclaimed {
            let _ = writeln!(report, "  left {note}");
        }
    }
    if let Some((config, leftovers)) = &bus {
        let _ = writeln!(
            report,
            "bus {} (stream prefix {}):",
            config.url, config.stream_prefix
        );
        let items = if options.dry_run {
            leftovers.planned()
        } else {
            leftovers
                .remove()
                .await
                .map_err(|source| TeardownError::BusRemove {
                    url: config.url.clone(),
                    source: Box::new(source),
                })?
        };
        removed += list(&mut report, verb, &items, "nothing of this configuration");
        for stream in &leftovers.foreign {
            let _ = writeln!(
                report,
                "  left JetStream stream {stream}: its subjects are not the ones duplex gives it"
            );
        }
    }
    let _ = writeln!(
        report,
        "{} {removed} object(s) and row(s).",
        if options.dry_run {
            "Would remove"
        } else {
            "Removed"
        }
    );
    if options.dry_run {
        let _ = writeln!(report, "Run without --dry-run to remove them.");
    } else if options.site.is_none() {
        let _ = writeln!(
            report,
            "Next: the state directory {dir} still holds this deployment's positions, row \
             versions and conflict log, which nothing on the sites matches any more; keep it only \
             as long as you need the conflict log, then remove it (rm -r {dir}). Do not start \
             `duplex run` with it again: start a new deployment with a fresh state directory \
             and `duplex backfill`.",
            dir = config.state_dir.display()
        );
    } else {
        let _ = writeln!(
            report,
            "Next: remove site {} from the configuration before the next `duplex run` (it would \
             otherwise create its slot and rows again).",
            options.site.as_deref().unwrap_or_default()
        );
    }
    store.close()?;
    Ok(report)
}

/// Adds `items` to `report`, one line each after `verb` (`none` when there is none); their
/// number.
fn list(report: &mut String, verb: &str, items: &[String], none: &str) -> usize {
    if items.is_empty() {
        let _ = writeln!(report, "  {none}");
    }
    for item in items {
        let _ = writeln!(report, "  {verb} {item}");
    }
    items.len()
}

/// What [`teardown::remove`] would remove, one line each.
fn planned(leftovers: &Leftovers) -> Vec<String> {
    let mut items: Vec<String> = leftovers
        .slots
        .iter()
        .map(|s| format!("replication slot {}", s.name))
        .collect();
    items.extend(
        leftovers
            .publications
            .iter()
            .map(|p| format!("publication {p}")),
    );
    items.extend(
        leftovers
            .positions
            .iter()
            .map(|p| format!("duplex.positions row {p}")),
    );
    items.extend(
        leftovers
            .claims
            .iter()
            .map(|c| format!("duplex.claims row {c}")),
    );
    if leftovers.drops_bookkeeping() {
        items.extend(leftovers.bookkeeping.clone());
    }
    items
}
