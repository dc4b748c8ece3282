//! What a bus role process knows of its own progress, for `duplex status` through the role's
//! control socket (the same socket and [`crate::telemetry::Snapshot`] as a one-process `run`;
//! see `crate::engine::control`).
//!
//! This is the role's own view, as of its last step, beside what `status` reads from JetStream
//! itself (`crate::bus::backlog`):
//! - a reader, per source: the newest source position JetStream confirmed storing (and the
//!   stream sequence it was stored at), and the newest position acknowledged to the source
//!   (slot flushed, binlog position recorded);
//! - a writer: its site, whether it holds the site's lease (and since when), and per source
//!   stream the newest sequence its target committed and it acknowledged, and the messages
//!   after the newest one delivered to it (JetStream's `num_pending`, carried by every
//!   delivered message).
//!
//! The figures are atomics written once per confirmed publish, delivered message or
//! acknowledgement; the positions sit under uncontended locks written once per
//! acknowledgement (every `crate::link::ACK_EVERY` at most).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use duplex_connectors::Position;
use serde::{Deserialize, Serialize};

/// What a role process reports of itself (`None` outside a bus role).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum RoleReport {
    /// `duplex run --role reader`.
    Reader {
        /// Each source's stream.
        streams: Vec<PublishedStream>,
    },
    /// `duplex run --role writer --site S`.
    Writer {
        /// The target site.
        site: String,
        /// Whether this process holds the site's lease (and so applies); false while it
        /// waits for another writer's lease to expire.
        lease_held: bool,
        /// When it took the lease.
        lease_since: Option<DateTime<Utc>>,
        /// Each source stream it applies from.
        streams: Vec<AppliedStream>,
    },
}

/// A reader's source stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishedStream {
    /// The source site.
    pub source: String,
    /// The stream (`<stream_prefix>_<source>`).
    pub stream: String,
    /// The newest source transaction JetStream confirmed storing, as of the last
    /// acknowledgement to the source (at most `crate::link::ACK_EVERY` behind).
    pub published: Option<String>,
    /// The newest source position acknowledged to the source (everything up to it is stored).
    pub acknowledged: Option<String>,
    /// The stream sequence of the newest message JetStream confirmed (none since the start).
    pub last_sequence: Option<u64>,
}

/// A writer's source stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedStream {
    /// The source site.
    pub source: String,
    /// The stream (`<stream_prefix>_<source>`).
    pub stream: String,
    /// The newest stream sequence the target committed and this writer acknowledged (none
    /// since the start).
    pub applied_sequence: Option<u64>,
    /// The newest stream sequence delivered to this writer.
    pub delivered_sequence: Option<u64>,
    /// Messages of the stream after the newest one delivered, as JetStream said with it.
    pub pending: u64,
    /// Messages not applied yet: delivered and not committed, plus pending.
    pub lag_messages: u64,
}

/// The progress of one stream, written by the role (0: nothing yet).
#[derive(Debug, Default)]
pub struct StreamProgress {
    stream: String,
    /// Reader: the newest sequence confirmed; writer: the newest delivered.
    sequence: AtomicU64,
    /// Writer: the newest sequence acknowledged after the target committed it.
    applied: AtomicU64,
    /// Writer: messages after the newest delivered one.
    pending: AtomicU64,
    /// Reader: the newest transaction stored, and the newest position acknowledged.
    positions: Mutex<(Option<Position>, Option<Position>)>,
}

impl StreamProgress {
    /// Reader: JetStream confirmed storing a message at `sequence`.
    pub fn stored(&self, sequence: u64) {
        self.sequence.fetch_max(sequence, Ordering::Relaxed);
    }

    /// Reader: the source was acknowledged up to `acknowledged`, every transaction up to
    /// `published` (when one is newer) being stored.
    pub fn acknowledged(&self, published: Option<&Position>, acknowledged: &Position) {
        let mut positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(published) = published {
            positions.0 = Some(published.clone());
        }
        positions.1 = Some(acknowledged.clone());
    }

    /// Writer: message `sequence` was delivered, `pending` more following it.
    pub fn delivered(&self, sequence: u64, pending: u64) {
        self.sequence.fetch_max(sequence, Ordering::Relaxed);
        self.pending.store(pending, Ordering::Relaxed);
    }

    /// Writer: everything up to `sequence` is committed and acknowledged.
    pub fn applied(&self, sequence: u64) {
        self.applied.fetch_max(sequence, Ordering::Relaxed);
    }

    fn published(&self, source: &str) -> PublishedStream {
        let positions = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        PublishedStream {
            source: source.to_owned(),
            stream: self.stream.clone(),
            published: positions.0.as_ref().map(ToString::to_string),
            acknowledged: positions.1.as_ref().map(ToString::to_string),
            last_sequence: known(self.sequence.load(Ordering::Relaxed)),
        }
    }

    fn applied_stream(&self, source: &str) -> AppliedStream {
        let delivered = self.sequence.load(Ordering::Relaxed);
        let applied = self.applied.load(Ordering::Relaxed);
        let pending = self.pending.load(Ordering::Relaxed);
        AppliedStream {
            source: source.to_owned(),
            stream: self.stream.clone(),
            applied_sequence: known(applied),
            delivered_sequence: known(delivered),
            pending,
            lag_messages: delivered.saturating_sub(applied) + pending,
        }
    }
}

/// Sequences start at 1: 0 is "nothing yet".
fn known(sequence: u64) -> Option<u64> {
    (sequence > 0).then_some(sequence)
}

/// Which role this process plays.
#[derive(Debug, Clone)]
enum Playing {
    Reader,
    Writer {
        site: String,
        lease_since: Option<DateTime<Utc>>,
    },
}

/// The role of this process and its streams (part of [`crate::telemetry::Telemetry`]).
#[derive(Debug, Default)]
pub struct RoleProgress {
    playing: Mutex<Option<Playing>>,
    /// By source site.
    streams: Mutex<BTreeMap<String, Arc<StreamProgress>>>,
}

impl RoleProgress {
    /// This process reads the sources and publishes them.
    pub fn reader(&self) {
        *self.playing.lock().unwrap_or_else(|e| e.into_inner()) = Some(Playing::Reader);
    }

    /// This process writes into `site`; it does not hold the lease yet.
    pub fn writer(&self, site: &str) {
        *self.playing.lock().unwrap_or_else(|e| e.into_inner()) = Some(Playing::Writer {
            site: site.to_owned(),
            lease_since: None,
        });
    }

    /// The writer took its site's lease at `since` (`None`: it no longer holds it).
    pub fn lease(&self, since: Option<DateTime<Utc>>) {
        if let Some(Playing::Writer { lease_since, .. }) = self
            .playing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            *lease_since = since;
        }
    }

    /// The progress of `source`'s stream `stream`, made on first use.
    pub fn stream(&self, source: &str, stream: &str) -> Arc<StreamProgress> {
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(source.to_owned())
            .or_insert_with(|| {
                Arc::new(StreamProgress {
                    stream: stream.to_owned(),
                    ..StreamProgress::default()
                })
            })
            .clone()
    }

    /// What the role reports now (`None` outside a bus role).
    pub fn report(&self) -> Option<RoleReport> {
        let playing = self
            .playing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        Some(match playing {
            Playing::Reader => RoleReport::Reader {
                streams: streams
                    .iter()
                    .map(|(source, progress)| progress.published(source))
                    .collect(),
            },
            Playing::Writer { site, lease_since } => RoleReport::Writer {
                site,
                lease_held: lease_since.is_some(),
                lease_since,
                streams: streams
                    .iter()
                    .map(|(source, progress)| progress.applied_stream(source))
                    .collect(),
            },
        })
    }
}

/// The role's report as lines for people (`duplex status`).
pub fn lines(report: &RoleReport) -> String {
    let known = |n: Option<u64>| n.map_or_else(|| "none yet".to_owned(), |n| n.to_string());
    let mut text = String::new();
    match report {
        RoleReport::Reader { streams } => {
            text.push_str("\nbus reader\n");
            for stream in streams {
                text.push_str(&format!(
                    "  {} -> stream {}: published up to {} (last sequence {}), source acknowledged up to {}\n",
                    stream.source,
                    stream.stream,
                    stream.published.as_deref().unwrap_or("(nothing yet)"),
                    known(stream.last_sequence),
                    stream.acknowledged.as_deref().unwrap_or("(nothing yet)"),
                ));
            }
        }
        RoleReport::Writer {
            site,
            lease_held,
            lease_since,
            streams,
        } => {
            text.push_str(&format!(
                "\nbus writer of {site}: {}\n",
                match (lease_held, lease_since) {
                    (true, Some(since)) => format!("holds the lease since {since}"),
                    _ => "waiting for the lease (another writer holds it)".to_owned(),
                }
            ));
            for stream in streams {
                text.push_str(&format!(
                    "  stream {} (from {}): applied up to sequence {}, {} pending, {} behind\n",
                    stream.stream,
                    stream.source,
                    known(stream.applied_sequence),
                    stream.pending,
                    stream.lag_messages,
                ));
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_reports_its_lease_and_lag_in_messages() {
        let progress = RoleProgress::default();
        assert_eq!(progress.report(), None);
        progress.writer("wms");
        let stream = progress.stream("store", "duplex_store");
        stream.delivered(7, 3);
        stream.applied(5);
        let Some(RoleReport::Writer {
            lease_held,
            streams,
            ..
        }) = progress.report()
        else {
            panic!("not a writer");
        };
        assert!(!lease_held);
        assert_eq!(streams[0].applied_sequence, Some(5));
        assert_eq!(streams[0].lag_messages, 2 + 3);
        progress.lease(Some(Utc::now()));
        let report = progress.report().unwrap();
        assert!(matches!(
            report,
            RoleReport::Writer {
                lease_held: true,
                ..
            }
        ));
        assert!(lines(&report).contains("applied up to sequence 5, 3 pending, 5 behind"));
    }

    #[test]
    fn a_reader_reports_what_is_stored_and_acknowledged() {
        let progress = RoleProgress::default();
        progress.reader();
        let stream = progress.stream("store", "duplex_store");
        stream.stored(4);
        stream.stored(3);
        stream.acknowledged(Some(&Position::Outbox(9)), &Position::Outbox(11));
        stream.acknowledged(None, &Position::Outbox(12));
        let Some(RoleReport::Reader { streams }) = progress.report() else {
            panic!("not a reader");
        };
        assert_eq!(streams[0].last_sequence, Some(4));
        assert_eq!(streams[0].published, Some(Position::Outbox(9).to_string()));
        assert_eq!(
            streams[0].acknowledged,
            Some(Position::Outbox(12).to_string())
        );
    }
}
