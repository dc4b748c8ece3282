//! `duplex status`: what the running `duplex run` (or `duplex backfill`) reports of each link,
//! asked through the control socket (`crate::engine::control`), or, when nothing runs, what the
//! state store recorded ([`stored`]).
//!
//! The numbers are the telemetry's ([`crate::telemetry::Snapshot`]), the same `/metrics`
//! exports. The exit code is for monitoring scripts: [`Health::code`].

pub mod stored;

use std::process::ExitCode;

use serde::Serialize;

use crate::bus::backlog::StreamBacklog;
use crate::config::Config;
use crate::engine::control::{self, Request, Response};
use crate::telemetry::{LinkState, Snapshot};

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The control socket exists but cannot be used.
    #[error(
        "cannot ask the running duplex through {path}: check that this user runs it (the socket answers only that user and root)"
    )]
    Socket {
        /// The socket.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The running process refused or answered something else.
    #[error("the running duplex refused: {0}")]
    Refused(String),
}

/// The overall state, as the exit code says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Every link streams (or is idle): exit 0.
    Healthy,
    /// Running, but some link starts, retries or stopped: exit 1.
    Degraded,
    /// Nothing runs, or every link stopped: exit 2.
    Stopped,
}

impl Health {
    /// 0 healthy, 1 degraded, 2 stopped.
    pub fn code(self) -> ExitCode {
        ExitCode::from(match self {
            Health::Healthy => 0,
            Health::Degraded => 1,
            Health::Stopped => 2,
        })
    }
}

/// What `duplex status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Healthy, degraded or stopped.
    pub health: Health,
    /// Why not healthy, for people.
    pub reason: Option<String>,
    /// Whether a `duplex run` answered.
    pub running: bool,
    /// The running process's report (`None` when nothing runs).
    pub report: Option<Snapshot>,
    /// What the state store recorded, when nothing runs (`None` while something runs or
    /// when there is no store yet).
    pub stored: Option<stored::Stored>,
    /// Why the state store could not be read, when nothing runs.
    pub stored_error: Option<String>,
    /// The replication slot of each PostgreSQL site, read from the sites by `status` itself
    /// (so it is shown whether or not `duplex run` runs).
    pub slots: Vec<SiteSlot>,
    /// The last `duplex verify`'s time and result (read from the state directory).
    pub last_verify: Option<crate::verify::last::LastVerify>,
    /// With a `[bus]`: each source's stream, each target's consumer and lease, read from
    /// JetStream by `status` itself (so shown whether or not the roles run, and from any
    /// machine).
    pub bus: Vec<StreamBacklog>,
    /// Why the bus could not be read.
    pub bus_error: Option<String>,
}

/// A PostgreSQL site's duplex replication slot.
#[derive(Debug, Clone, Serialize)]
pub struct SiteSlot {
    /// The site.
    pub site: String,
    /// The slot's name.
    pub slot: Option<String>,
    /// A session streams from it now.
    pub active: Option<bool>,
    /// WAL the slot keeps from being removed, in bytes (current WAL position minus the slot's
    /// restart position).
    pub retained_bytes: Option<i64>,
    /// The link's lag in bytes: WAL written since the position every target committed and
    /// duplex confirmed to the slot (current WAL position minus its confirmed position).
    pub behind_bytes: Option<i64>,
    /// Why it could not be read, or that the site has no slot yet.
    pub note: Option<String>,
}

/// How long `status` waits for a site's slot.
const SLOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long `status` waits for the bus.
const BUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The backlog of every stream of `config`'s bus: empty without a `[bus]`, an error when the
/// bus does not answer.
async fn bus(config: &Config) -> Result<Vec<StreamBacklog>, String> {
    let Some(bus) = &config.bus else {
        return Ok(Vec::new());
    };
    let flows: Vec<(String, Vec<String>)> = crate::run::flows(config)
        .into_iter()
        .map(|(source, targets)| (source, targets.into_iter().collect()))
        .collect();
    let merge_sites: Vec<String> = crate::run::merge_sites(config).into_iter().collect();
    let read = crate::bus::backlog::read(bus, &flows, &merge_sites);
    match tokio::time::timeout(BUS_TIMEOUT, read).await {
        Err(_) => Err(format!(
            "the bus at {} gave no answer within {BUS_TIMEOUT:?}",
            bus.url
        )),
        Ok(Err(error)) => Err(crate::report::chain(&error)),
        Ok(Ok(backlog)) => Ok(backlog),
    }
}

/// Whether duplex reads `site`'s change log: a source of a one-way mapping or a site of a
/// two-way one.
fn is_source(config: &Config, site: &str) -> bool {
    config.mappings.iter().any(|m| match &m.direction {
        crate::config::Direction::OneWay { from, .. } => from == site,
        crate::config::Direction::Both => m.tables.contains_key(site),
    })
}

/// The duplex slot of every PostgreSQL site of `config` duplex reads from.
async fn slots(config: &Config) -> Vec<SiteSlot> {
    let mut found = Vec::new();
    for site in config
        .sites
        .values()
        .filter(|site| is_source(config, &site.name))
    {
        let connection = site.connection();
        let names = duplex_connectors::teardown::slot_names(&connection);
        if names.is_empty() {
            continue;
        }
        let read = tokio::time::timeout(
            SLOT_TIMEOUT,
            duplex_connectors::teardown::slots(&connection),
        )
        .await;
        let mut slot = SiteSlot {
            site: site.name.clone(),
            slot: None,
            active: None,
            retained_bytes: None,
            behind_bytes: None,
            note: None,
        };
        match read {
            Err(_) => slot.note = Some(format!("no answer within {SLOT_TIMEOUT:?}")),
            Ok(Err(error)) => slot.note = Some(crate::report::chain(&error)),
            Ok(Ok(all)) => match all.into_iter().find(|s| names.contains(&s.name)) {
                None => slot.note = Some("no slot yet (created when its link first starts)".into()),
                Some(found) => {
                    slot.slot = Some(found.name);
                    slot.active = Some(found.active);
                    slot.retained_bytes = found.retained_bytes;
                    slot.behind_bytes = found.behind_bytes;
                }
            },
        }
        found.push(slot);
    }
    found
}

/// Asks the running `duplex run` of `config`'s state directory.
pub async fn status(config: &Config) -> Result<Status, StatusError> {
    let answer = control::ask(&config.state_dir, &Request::Status)
        .await
        .map_err(|source| StatusError::Socket {
            path: control::socket_path(&config.state_dir)
                .display()
                .to_string(),
            source,
        })?;
    let slots = slots(config).await;
    let bus = bus(config).await;
    let mut status = match answer {
        None => {
            let (stored, stored_error) = match stored::read(config).await {
                Ok(stored) => (stored, None),
                Err(error) => (None, Some(error)),
            };
            Status {
                health: Health::Stopped,
                reason: Some(format!(
                    "no duplex run is running on state directory {}",
                    config.state_dir.display()
                )),
                running: false,
                report: None,
                stored,
                stored_error,
                slots: Vec::new(),
                last_verify: None,
                bus: Vec::new(),
                bus_error: None,
            }
        }
        Some(Response::Status(snapshot)) => judge(snapshot),
        Some(Response::Refused(why)) => return Err(StatusError::Refused(why)),
        Some(
            Response::Done(_)
            | Response::Conflicts(_)
            | Response::Progress(_)
            | Response::Taken { .. },
        ) => {
            return Err(StatusError::Refused(
                "the engine answered something else".into(),
            ));
        }
    };
    status.slots = slots;
    (status.bus, status.bus_error) = match bus {
        Ok(bus) => (bus, None),
        Err(error) => (Vec::new(), Some(error)),
    };
    status.last_verify = crate::verify::last::read(&config.state_dir);
    Ok(status)
}

/// The health of a running process's report.
pub fn judge(snapshot: Snapshot) -> Status {
    let reason = snapshot.unhealthy();
    let all_stopped = !snapshot.links.is_empty()
        && snapshot
            .links
            .iter()
            .all(|l| matches!(l.state, LinkState::Stopped { .. }));
    let health = match (&reason, all_stopped) {
        (None, _) => Health::Healthy,
        (Some(_), true) => Health::Stopped,
        (Some(_), false) => Health::Degraded,
    };
    Status {
        health,
        reason,
        running: true,
        report: Some(snapshot),
        stored: None,
        stored_error: None,
        slots: Vec::new(),
        last_verify: None,
        bus: Vec::new(),
        bus_error: None,
    }
}

/// The status as a table for people.
pub fn table(status: &Status) -> String {
    let mut text = format!(
        "{}{}\n",
        match status.health {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Stopped => "stopped",
        },
        status
            .reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    for slot in &status.slots {
        text.push_str(&format!(
            "slot of {}: {}\n",
            slot.site,
            match (&slot.slot, &slot.note) {
                (Some(name), _) => format!(
                    "{name}, {}, retains {} of WAL, {} behind",
                    if slot.active == Some(true) {
                        "active"
                    } else {
                        "inactive"
                    },
                    slot.retained_bytes
                        .map_or_else(|| "?".to_owned(), |b| format!("{b} bytes")),
                    slot.behind_bytes
                        .map_or_else(|| "?".to_owned(), |b| format!("{b} bytes"))
                ),
                (None, Some(note)) => note.clone(),
                (None, None) => "?".to_owned(),
            }
        ));
    }
    if let Some(error) = &status.bus_error {
        text.push_str(&format!("bus: cannot read it: {error}\n"));
    }
    text.push_str(&bus_lines(&status.bus));
    if let Some(error) = &status.stored_error {
        text.push_str(&format!("\ncannot read the state store: {error}\n"));
    }
    if let Some(stored) = &status.stored {
        text.push_str(&stored::table(stored));
    }
    let Some(report) = &status.report else {
        return text;
    };
    if !report.backfills.is_empty() {
        text.push('\n');
        text.push_str(&stored::backfills(&report.backfills));
    }
    if let Some(role) = &report.role {
        text.push_str(&crate::bus::progress::lines(role));
    }
    if let Some(held) = report.held_conflicts {
        text.push_str(&format!(
            "\nmerge engine: {held} held conflict(s) (see `duplex conflicts --held`)\n"
        ));
        for conflict in &report.conflicts {
            text.push_str(&format!(
                "  mapping {}: {} conflict(s) {} by {}\n",
                conflict.mapping, conflict.count, conflict.outcome, conflict.policy
            ));
        }
    }
    for link in &report.links {
        let state = match &link.state {
            LinkState::Starting { since, error: None } => format!("starting since {since}"),
            LinkState::Starting {
                since,
                error: Some(e),
            } => format!("waiting for a site since {since}: {e}"),
            LinkState::Streaming { since } => format!("streaming since {since}"),
            LinkState::Retrying { since, error } => format!("retrying since {since}: {error}"),
            LinkState::Stopped { since, error: None } => format!("stopped at {since}"),
            LinkState::Stopped {
                since,
                error: Some(e),
            } => format!("stopped at {since}: {e}"),
        };
        text.push_str(&format!(
            "\n{}: {state} ({} retries)\n",
            link.name, link.retries
        ));
        text.push_str(&format!(
            "  source read up to {}\n",
            link.source_position.as_deref().unwrap_or("(nothing yet)")
        ));
        if let Some(error) = &link.head_error {
            text.push_str(&format!(
                "  lag in bytes unknown: cannot read where the source's log ends: {error}\n"
            ));
        }
        if link.targets.is_empty() {
            // A bus reader's link: its targets are the stream's writers.
            continue;
        }
        text.push_str(&format!(
            "  {:<20} {:>10} {:>10} {:>10} {:>12} {:>8} {:>10} {:>12} {:>12} {:>10} {:>8}\n",
            // The merge engine's targets are its sites, each written to from the others.
            if link.name == crate::engine::TELEMETRY_NAME {
                "site"
            } else {
                "target"
            },
            "inserts",
            "updates",
            "deletes",
            "transactions",
            "errors",
            "lag (s)",
            "lag (bytes)",
            "dead letters",
            "rows/s 1m",
            "queued"
        ));
        let unknown = || "?".to_owned();
        for target in &link.targets {
            text.push_str(&format!(
                "  {:<20} {:>10} {:>10} {:>10} {:>12} {:>8} {:>10.1} {:>12} {:>12} {:>10.1} {:>8}\n",
                target.site,
                target.inserts,
                target.updates,
                target.deletes,
                target.transactions,
                target.apply_errors,
                target.lag_seconds,
                target.lag_bytes.map_or_else(unknown, |n| n.to_string()),
                target.dead_letters.map_or_else(unknown, |n| n.to_string()),
                target.rows_per_second,
                target.queued_transactions
            ));
            text.push_str(&format!(
                "  {:<20} committed up to {}\n",
                "",
                target.position.as_deref().unwrap_or("(nothing yet)")
            ));
        }
    }
    if let Some(last) = &status.last_verify {
        text.push_str(&crate::verify::last::line(last));
    }
    text
}

/// The bus streams as lines for people.
fn bus_lines(bus: &[StreamBacklog]) -> String {
    let mut text = String::new();
    let known = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    for stream in bus {
        let from = if stream.merge {
            format!("two-way site {}, for the coordinator", stream.source)
        } else {
            format!("from {}", stream.source)
        };
        text.push_str(&format!(
            "bus stream {} ({from}): {}\n",
            stream.stream,
            match &stream.note {
                Some(note) => note.clone(),
                None => format!(
                    "{} messages, last sequence {}",
                    known(stream.messages),
                    known(stream.last_sequence)
                ),
            }
        ));
        for consumer in &stream.consumers {
            let lease = match (&consumer.lease_holder, &consumer.lease_since) {
                // The coordinator takes no lease: one process, refused twice by its claims.
                _ if stream.merge => String::new(),
                (Some(holder), Some(since)) => format!("; lease held by {holder} since {since}"),
                (Some(holder), None) => format!("; lease held by {holder}"),
                (None, _) => "; no writer holds the lease".to_owned(),
            };
            let figures = match (&consumer.note, consumer.pending) {
                (Some(note), _) => note.clone(),
                (None, _) => format!(
                    "{} pending, {} delivered unacknowledged, applied up to sequence {}, {} behind{}",
                    known(consumer.pending),
                    known(consumer.ack_pending),
                    known(consumer.applied_sequence),
                    known(consumer.lag_messages),
                    consumer
                        .oldest_unapplied_seconds
                        .filter(|age| *age > 0.0)
                        .map(|age| format!(" (oldest unapplied {age:.1} s old)"))
                        .unwrap_or_default()
                ),
            };
            text.push_str(&format!(
                "  {} ({}): {figures}{lease}\n",
                consumer.target, consumer.consumer
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Telemetry;

    #[test]
    fn health_is_healthy_degraded_or_stopped() {
        let telemetry = Telemetry::default();
        let one = telemetry.link("a -> b", "a", &["b".into()]);
        let two = telemetry.link("c -> d", "c", &["d".into()]);
        one.streaming();
        two.streaming();
        assert_eq!(judge(telemetry.snapshot()).health, Health::Healthy);
        two.retrying("site d is unreachable".into());
        assert_eq!(judge(telemetry.snapshot()).health, Health::Degraded);
        one.stopped(Some("a definite error".into()));
        two.stopped(None);
        let status = judge(telemetry.snapshot());
        assert_eq!(status.health, Health::Stopped);
        assert!(table(&status).contains("a definite error"));
    }
}
