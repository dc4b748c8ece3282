//! What each bus stream holds and how far each writer got, for `duplex status` and
//! `/metrics`: read from JetStream itself (stream and consumer info, the lease stream), never
//! from a process's memory, so any machine with the configuration can ask, whether or not a
//! writer runs.
//!
//! Per stream (one per source site, and one per site of a two-way mapping, read by the merge
//! engine's coordinator) and per consumer (`writer-<target>`, one per target; `coordinator`):
//! - pending: messages the consumer has not been delivered yet (JetStream's `num_pending`);
//! - applied sequence: the consumer's acknowledgement floor. A writer acknowledges a message
//!   only after the target committed it (see `feed.rs`), so this is the newest stream
//!   sequence the target holds (as of its writer's last acknowledgement);
//! - lag: the stream's last sequence minus the applied sequence, in messages, and the age of
//!   the oldest message not yet applied (one message read, only when there is a lag);
//! - the writer holding the target's lease and since when.
//!
//! Nothing here creates a stream, a consumer or a lease: a missing one is shown as such.

use async_nats::jetstream::consumer;
use async_nats::jetstream::stream;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::lease::{self, LeaseRecord};
use super::{Bus, BusError};
use crate::config::BusConfig;

/// One source's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamBacklog {
    /// The stream (`<stream_prefix>_<source>`, or `<stream_prefix>-merge_<site>`).
    pub stream: String,
    /// The source site.
    pub source: String,
    /// A two-way site's merge stream, read by the merge engine's coordinator (its one
    /// consumer, `coordinator`, takes no lease).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub merge: bool,
    /// Messages the stream holds (after retention).
    pub messages: Option<u64>,
    /// The sequence of the newest message published.
    pub last_sequence: Option<u64>,
    /// Each target of the source.
    pub consumers: Vec<ConsumerBacklog>,
    /// Why the stream could not be read, or that it does not exist yet.
    pub note: Option<String>,
}

/// One target's consumer of a stream, and its lease.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerBacklog {
    /// The target site.
    pub target: String,
    /// The durable consumer (`writer-<target>`).
    pub consumer: String,
    /// Messages not delivered to the consumer yet.
    pub pending: Option<u64>,
    /// Messages delivered to the writer and not acknowledged (not committed) yet.
    pub ack_pending: Option<u64>,
    /// The newest stream sequence the writer acknowledged after the target committed it.
    pub applied_sequence: Option<u64>,
    /// The stream's last sequence minus the applied sequence.
    pub lag_messages: Option<u64>,
    /// Seconds since the oldest message not applied yet was published (0 without a lag).
    pub oldest_unapplied_seconds: Option<f64>,
    /// The writer holding the target's lease (`None`: nobody).
    pub lease_holder: Option<String>,
    /// When that writer took the lease.
    pub lease_since: Option<DateTime<Utc>>,
    /// Why the consumer could not be read, or that it does not exist yet.
    pub note: Option<String>,
}

/// The backlog of every `(source, targets)` of `flows` and of the merge stream of each of
/// `merge_sites` (the sites of two-way mappings) on the bus of `config`.
pub async fn read(
    config: &BusConfig,
    flows: &[(String, Vec<String>)],
    merge_sites: &[String],
) -> Result<Vec<StreamBacklog>, BusError> {
    let bus = Bus::connect(config).await?;
    read_with(&bus, flows, merge_sites).await
}

/// [`read`] over a connected bus.
pub async fn read_with(
    bus: &Bus,
    flows: &[(String, Vec<String>)],
    merge_sites: &[String],
) -> Result<Vec<StreamBacklog>, BusError> {
    let leases = match bus.context.get_stream(lease::stream_name(bus)).await {
        Ok(stream) => Some(stream),
        Err(error) if error.to_string().contains("not found") => None,
        Err(error) => return Err(BusError::jetstream("reading the lease stream", error)),
    };
    let mut all = Vec::new();
    for (source, targets) in flows {
        let readers: Vec<Reader> = targets
            .iter()
            .map(|target| Reader {
                label: target.clone(),
                consumer: super::feed::consumer_name(target),
                lease: true,
            })
            .collect();
        let name = bus.stream_name(source);
        all.push(stream_backlog(bus, leases.as_ref(), name, source, &readers).await);
    }
    for site in merge_sites {
        let coordinator = Reader {
            label: super::feed::COORDINATOR_CONSUMER.to_owned(),
            consumer: super::feed::COORDINATOR_CONSUMER.to_owned(),
            lease: false,
        };
        let (name, _) = bus.names(site, super::Kind::Merge);
        let mut backlog = stream_backlog(bus, None, name, site, &[coordinator]).await;
        backlog.merge = true;
        all.push(backlog);
        // The engine's writes for the site, applied by the site's writer (under its lease).
        let writer = Reader {
            label: site.clone(),
            consumer: super::feed::consumer_name(site),
            lease: true,
        };
        let name = bus.outbox_stream_name(site);
        let mut backlog = stream_backlog(bus, leases.as_ref(), name, site, &[writer]).await;
        backlog.merge = true;
        all.push(backlog);
    }
    Ok(all)
}

/// Who reads a stream through a consumer: a target's writer (with the target's lease) or the
/// merge engine's coordinator.
struct Reader {
    /// The target site, or `coordinator`.
    label: String,
    /// The durable consumer's name.
    consumer: String,
    /// Whether a lease (the label's) says who reads.
    lease: bool,
}

async fn stream_backlog(
    bus: &Bus,
    leases: Option<&stream::Stream>,
    name: String,
    source: &str,
    readers: &[Reader],
) -> StreamBacklog {
    let mut backlog = StreamBacklog {
        stream: name.clone(),
        source: source.to_owned(),
        merge: false,
        messages: None,
        last_sequence: None,
        consumers: Vec::new(),
        note: None,
    };
    let mut stream = match bus.context.get_stream(&name).await {
        Ok(stream) => Some(stream),
        Err(error) => {
            backlog.note = Some(if error.to_string().contains("not found") {
                "no stream yet (created when its reader first starts)".into()
            } else {
                format!("cannot read the stream: {error}")
            });
            None
        }
    };
    let mut first_sequence = 0;
    if let Some(stream) = stream.as_mut() {
        match stream.info().await {
            Ok(info) => {
                backlog.messages = Some(info.state.messages);
                backlog.last_sequence = Some(info.state.last_sequence);
                first_sequence = info.state.first_sequence;
            }
            Err(error) => backlog.note = Some(format!("cannot read the stream: {error}")),
        }
    }
    for reader in readers {
        let mut consumer = ConsumerBacklog {
            target: reader.label.clone(),
            consumer: reader.consumer.clone(),
            pending: None,
            ack_pending: None,
            applied_sequence: None,
            lag_messages: None,
            oldest_unapplied_seconds: None,
            lease_holder: None,
            lease_since: None,
            note: None,
        };
        if let Some(leases) = leases.filter(|_| reader.lease) {
            match lease::read(bus, leases, &reader.label).await {
                Ok(Some(LeaseRecord { holder, since })) => {
                    consumer.lease_holder = Some(holder);
                    consumer.lease_since = since;
                }
                Ok(None) => {}
                Err(error) => consumer.note = Some(format!("cannot read the lease: {error}")),
            }
        }
        if let (Some(stream), Some(last)) = (stream.as_ref(), backlog.last_sequence) {
            match stream.consumer_info(&consumer.consumer).await {
                Ok(info) => {
                    fill(&mut consumer, &info, last);
                    if let Some(lag) = consumer.lag_messages {
                        consumer.oldest_unapplied_seconds =
                            oldest_age(stream, lag, last, first_sequence).await;
                    }
                }
                Err(error) => {
                    consumer.note = Some(if error.to_string().contains("not found") {
                        let by = if reader.lease {
                            "its writer"
                        } else {
                            "the coordinator"
                        };
                        format!("no consumer yet (created when {by} first starts)")
                    } else {
                        format!("cannot read the consumer: {error}")
                    });
                }
            }
        }
        backlog.consumers.push(consumer);
    }
    backlog
}

/// The consumer's figures against the stream's last sequence.
fn fill(consumer: &mut ConsumerBacklog, info: &consumer::Info, last: u64) {
    let applied = info.ack_floor.stream_sequence;
    consumer.pending = Some(info.num_pending);
    consumer.ack_pending = Some(info.num_ack_pending as u64);
    consumer.applied_sequence = Some(applied);
    consumer.lag_messages = Some(last.saturating_sub(applied));
}

/// Seconds since the oldest message after the applied one was published (0 without a lag;
/// `None` when it cannot be read).
async fn oldest_age(stream: &stream::Stream, lag: u64, last: u64, first: u64) -> Option<f64> {
    if lag == 0 {
        return Some(0.0);
    }
    let sequence = (last - lag + 1).max(first);
    let message = stream.get_raw_message(sequence).await.ok()?;
    let published =
        DateTime::<Utc>::from_timestamp(message.time.unix_timestamp(), message.time.nanosecond())?;
    Some(((Utc::now() - published).num_milliseconds().max(0) as f64) / 1000.0)
}
