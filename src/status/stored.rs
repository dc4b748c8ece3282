//! What `duplex status` reads from the state store when no `duplex run` answers: where each
//! link's source was last acknowledged, where the merge engine's readers resume, held
//! conflicts, dead letters and recorded backfills. The store is opened only briefly and only
//! when it exists (status never creates one); a store another duplex command holds is said so.

use std::time::{Duration, Instant};

use duplex_connectors::Position;
use duplex_state::{StateError, StateStore};
use serde::Serialize;

use crate::config::{Config, Direction};
use crate::telemetry::BackfillProgress;

/// The state store's account, while nothing runs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stored {
    /// Each source of one-way mappings.
    pub links: Vec<StoredLink>,
    /// Each site of two-way mappings: where the merge engine's reader resumes.
    pub merge_sites: Vec<StoredPosition>,
    /// Conflicts waiting for `duplex conflicts resolve`.
    pub held_conflicts: u64,
    /// Every recorded backfill.
    pub backfills: Vec<BackfillProgress>,
}

/// A one-way link's source, as the store last recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredLink {
    /// The source site.
    pub source: String,
    /// The newest position every target had committed when duplex last acknowledged it to
    /// the source (`None`: never acknowledged).
    pub acknowledged: Option<String>,
    /// Each target, with its dead letters.
    pub targets: Vec<StoredTarget>,
}

/// A target of a link, as the store knows it.
#[derive(Debug, Clone, Serialize)]
pub struct StoredTarget {
    /// The target site.
    pub site: String,
    /// Changes set aside for it, waiting for `duplex dead-letters retry`.
    pub dead_letters: u64,
}

/// A site and a position.
#[derive(Debug, Clone, Serialize)]
pub struct StoredPosition {
    /// The site.
    pub site: String,
    /// The position (`None`: none recorded).
    pub position: Option<String>,
}

/// How long `status` waits for a store another duplex command holds.
const IN_USE_WAIT: Duration = Duration::from_secs(2);

/// The state store's account of `config`'s links; `Ok(None)` when there is no store yet;
/// `Err` says why it could not be read (in use, damaged).
pub async fn read(config: &Config) -> Result<Option<Stored>, String> {
    if !config.state_dir.join(duplex_state::STATE_FILE).exists() {
        return Ok(None);
    }
    let deadline = Instant::now() + IN_USE_WAIT;
    loop {
        let dir = config.state_dir.clone();
        let owned = config.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let store = StateStore::open(&dir)?;
            let stored = account(&owned, &store);
            store.close()?;
            stored
        })
        .await
        .map_err(|panic| panic.to_string())?;
        match opened {
            Ok(stored) => return Ok(Some(stored)),
            Err(StateError::InUse { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(StateError::InUse { .. }) => {
                return Err(format!(
                    "the state store in {} is held by another duplex command (a `duplex backfill`, \
                     `dead-letters` or `conflicts` run without a control socket); try again when it ends",
                    config.state_dir.display()
                ));
            }
            Err(error) => return Err(crate::report::chain(&error)),
        }
    }
}

fn account(config: &Config, store: &StateStore) -> Result<Stored, StateError> {
    let mut stored = Stored {
        held_conflicts: store.held_conflict_count()?,
        backfills: crate::backfill::recorded_progress(store)?,
        ..Stored::default()
    };
    let mut sources: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut merge_sites: Vec<&str> = Vec::new();
    for mapping in &config.mappings {
        match &mapping.direction {
            Direction::OneWay { from, to } => {
                match sources.iter_mut().find(|(source, _)| source == from) {
                    Some((_, targets)) if !targets.contains(&to.as_str()) => targets.push(to),
                    Some(_) => {}
                    None => sources.push((from, vec![to])),
                }
            }
            Direction::Both => {
                for site in mapping.tables.keys() {
                    if !merge_sites.contains(&site.as_str()) {
                        merge_sites.push(site);
                    }
                }
            }
        }
    }
    for (source, targets) in sources {
        let acknowledged = store
            .position::<Position>(&crate::link::acknowledged_key(source))?
            .map(|p| p.to_string());
        let mut link = StoredLink {
            source: source.to_owned(),
            acknowledged,
            targets: Vec::new(),
        };
        for target in targets {
            link.targets.push(StoredTarget {
                site: target.to_owned(),
                dead_letters: store.pending_count(&crate::dead_letters::scope(source, target))?,
            });
        }
        stored.links.push(link);
    }
    for site in merge_sites {
        stored.merge_sites.push(StoredPosition {
            site: site.to_owned(),
            position: store.position::<Position>(site)?.map(|p| p.to_string()),
        });
    }
    Ok(stored)
}

/// The account as lines for people.
pub fn table(stored: &Stored) -> String {
    let mut text = String::from("\nfrom the state store (as the last duplex run left it):\n");
    for link in &stored.links {
        text.push_str(&format!(
            "  {} -> {}: acknowledged to the source up to {}\n",
            link.source,
            link.targets
                .iter()
                .map(|t| t.site.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            link.acknowledged.as_deref().unwrap_or("(never)")
        ));
        for target in link.targets.iter().filter(|t| t.dead_letters > 0) {
            text.push_str(&format!(
                "    {} dead letter(s) for {} (see `duplex dead-letters`)\n",
                target.dead_letters, target.site
            ));
        }
    }
    for site in &stored.merge_sites {
        text.push_str(&format!(
            "  merge engine reads {} from {}\n",
            site.site,
            site.position.as_deref().unwrap_or("(nothing recorded)")
        ));
    }
    if stored.held_conflicts > 0 {
        text.push_str(&format!(
            "  {} held conflict(s) (see `duplex conflicts --held`)\n",
            stored.held_conflicts
        ));
    }
    text.push_str(&backfills(&stored.backfills));
    text
}

/// Backfill progress lines.
pub fn backfills(backfills: &[BackfillProgress]) -> String {
    let mut text = String::new();
    for backfill in backfills {
        text.push_str(&format!(
            "  backfill of {} from {}: {} of about {} rows, {} of {} ranges{}\n",
            backfill.mapping,
            backfill.source,
            backfill.copied,
            backfill.planned,
            backfill.ranges_done,
            backfill.ranges,
            if backfill.complete {
                ", complete"
            } else {
                ", unfinished"
            }
        ));
    }
    text
}
