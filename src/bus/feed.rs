//! A writer's feed: the messages of one source's stream from the first one the target needs,
//! as the link's stream items (see the module doc of `crate::bus`); and the merge engine
//! coordinator's feed of a site's merge stream, from just after what it committed.

use std::cmp::Ordering;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::{self, stream};
use duplex_connectors::{Position, StreamItem};
use futures_util::StreamExt;

use super::progress::StreamProgress;
use super::{Bus, BusError, BusItem, Kind};

/// How long JetStream waits for an acknowledgement before it delivers a message again (the
/// feed drops what it has seen, so this only bounds how long a dead writer's messages wait).
const ACK_WAIT: Duration = Duration::from_secs(600);
/// Messages delivered and not yet acknowledged at most.
const MAX_ACK_PENDING: i64 = 100_000;

/// The messages of a source's stream for one target, from the first one it needs.
pub struct BusFeed {
    kind: Kind,
    stream: String,
    source_site: String,
    target: String,
    /// The last transaction the target holds: what it held at the start, then the last one
    /// delivered. Every message is checked against it: one that follows a later transaction
    /// means the stream's retention dropped messages in between, at the start or while this
    /// feed was reading.
    held: Option<Position>,
    messages: pull::Stream,
    /// The newest stream sequence delivered (a redelivery of an older one is dropped).
    last_sequence: u64,
    /// Transactions delivered and not yet acknowledged, in order.
    delivered: Arc<Mutex<VecDeque<(Position, jetstream::Message)>>>,
    /// The large transaction being delivered in parts: its start and changes delivered.
    open: Option<(Position, u64)>,
    /// The key the target records this source's position under (set on every transaction
    /// and part, whatever the reader wrote there); `None`: as published.
    source_key: Option<String>,
    /// What `duplex status` asks of this writer (see `super::progress`).
    progress: Arc<StreamProgress>,
}

impl BusFeed {
    /// Starts the durable consumer of `target` on `source_site`'s stream at the first message
    /// after the transaction at `held` (the stream's first message when `None`); transactions
    /// are recorded under `source_key`.
    pub async fn start(
        bus: &Bus,
        source_site: &str,
        target: &str,
        held: Option<Position>,
        source_key: String,
    ) -> Result<BusFeed, BusError> {
        let consumer = consumer_name(target);
        let kind = Kind::OneWay;
        Self::open(
            bus,
            source_site,
            kind,
            target,
            consumer,
            held,
            Some(source_key),
        )
        .await
    }

    /// The merge engine coordinator's feed of `site`'s merge stream, from the first message
    /// after the transaction at `held` (what the coordinator's state store committed; the
    /// stream's first message when `None`): the items the site's own merge stream would yield.
    pub async fn start_merge(
        bus: &Bus,
        site: &str,
        held: Option<Position>,
    ) -> Result<BusFeed, BusError> {
        let consumer = COORDINATOR_CONSUMER.to_owned();
        Self::open(
            bus,
            site,
            Kind::Merge,
            "the merge engine",
            consumer,
            held,
            None,
        )
        .await
    }

    async fn open(
        bus: &Bus,
        source_site: &str,
        kind: Kind,
        target: &str,
        consumer_name: String,
        held: Option<Position>,
        source_key: Option<String>,
    ) -> Result<BusFeed, BusError> {
        let (name, _) = bus.names(source_site, kind);
        let mut stream = bus.stream_of(source_site, kind, false).await?;
        let info = stream
            .info()
            .await
            .map_err(|e| BusError::jetstream(format!("reading stream {name}"), e))?;
        let (first, last, messages) = (
            info.state.first_sequence,
            info.state.last_sequence,
            info.state.messages,
        );
        let start = match &held {
            _ if messages == 0 => last + 1,
            None => first,
            Some(held) => {
                first_where(&stream, &name, first, last, |envelope: super::Envelope| {
                    envelope.needed(held).map_err(|source| BusError::Position {
                        stream: name.clone(),
                        source,
                    })
                })
                .await?
            }
        };
        let messages = consume_from(&mut stream, &name, &consumer_name, start).await?;
        tracing::info!(stream = %name, consumer = %consumer_name, start, "consuming the stream");
        Ok(BusFeed {
            kind,
            progress: crate::telemetry::global().role().stream(source_site, &name),
            stream: name,
            source_site: source_site.to_owned(),
            target: target.to_owned(),
            held,
            messages,
            last_sequence: start.saturating_sub(1),
            delivered: Arc::new(Mutex::new(VecDeque::new())),
            open: None,
            source_key,
        })
    }

    /// The next transaction, part or shape.
    pub async fn next(&mut self) -> Result<StreamItem, BusError> {
        loop {
            let message = match self.messages.next().await {
                Some(Ok(message)) => message,
                Some(Err(error)) => {
                    return Err(BusError::jetstream(
                        format!("consuming stream {}", self.stream),
                        error,
                    ));
                }
                None => {
                    return Err(BusError::jetstream(
                        format!("consuming stream {}", self.stream),
                        std::io::Error::other("the consumer ended"),
                    ));
                }
            };
            let info = message.info().map_err(|e| BusError::JetStream {
                what: format!("reading a message of {}", self.stream),
                source: e,
            })?;
            let sequence = info.stream_sequence;
            if sequence <= self.last_sequence {
                continue;
            }
            self.progress.delivered(sequence, info.pending);
            self.last_sequence = sequence;
            let envelope: super::Envelope =
                super::decode(&self.stream, sequence, &message.payload)?;
            let done = match (&self.open, &envelope.item) {
                (Some((start, done)), BusItem::Part(part)) if *start == part.start => *done,
                (Some((_, done)), BusItem::Transaction(_)) => *done,
                _ => 0,
            };
            let dropped = envelope.offset > done
                || envelope
                    .previous
                    .as_ref()
                    .zip(self.held.as_ref())
                    .is_some_and(|(previous, held)| {
                        matches!(previous.compare(held), Ok(Ordering::Greater))
                    });
            if dropped && let Some(held) = &self.held {
                if self.kind == Kind::Merge {
                    return Err(BusError::MergeRetention {
                        stream: self.stream.clone(),
                        site: self.source_site.clone(),
                        held: held.to_string(),
                        previous: Box::new(envelope.previous.unwrap_or_else(|| held.clone())),
                    });
                }
                return Err(BusError::Retention {
                    stream: self.stream.clone(),
                    source_site: self.source_site.clone(),
                    target: self.target.clone(),
                    held: held.to_string(),
                    previous: Box::new(envelope.previous.unwrap_or_else(|| held.clone())),
                });
            }
            if envelope.offset > done {
                return Err(BusError::Parts {
                    stream: self.stream.clone(),
                    what: format!(
                        "message {sequence} follows {} changes of its transaction, but only {done} came before it",
                        envelope.offset
                    ),
                });
            }
            match envelope.item {
                BusItem::Transaction(mut tx) => {
                    self.open = None;
                    if let Some(key) = &self.source_key {
                        tx.source.clone_from(key);
                    }
                    // Changes of the final piece published again after a crash.
                    tx.events
                        .drain(..(done - envelope.offset).min(tx.events.len() as u64) as usize);
                    self.held = Some(tx.position.clone());
                    self.delivered
                        .lock()
                        .expect("delivered messages")
                        .push_back((tx.position.clone(), message));
                    return Ok(StreamItem::Transaction(tx));
                }
                BusItem::Shape(shape) => return Ok(StreamItem::Shape(shape)),
                BusItem::Part(mut part) => {
                    if let Some(key) = &self.source_key {
                        part.source.clone_from(key);
                    }
                    let end = envelope.offset + part.events.len() as u64;
                    self.open = Some((part.start.clone(), done.max(end)));
                    if end <= done {
                        // Published again after a crash: delivered already.
                        continue;
                    }
                    part.events.drain(..(done - envelope.offset) as usize);
                    return Ok(StreamItem::Part(part));
                }
            }
        }
    }

    /// Acknowledges to JetStream every transaction up to `position` (ack-all: the newest one
    /// acknowledges those before it).
    pub fn ack(&self, position: &Position) {
        let newest = {
            let mut delivered = self.delivered.lock().expect("delivered messages");
            let mut newest = None;
            while delivered
                .front()
                .is_some_and(|(p, _)| !matches!(p.compare(position), Ok(Ordering::Greater)))
            {
                newest = delivered.pop_front().map(|(_, message)| message);
            }
            newest
        };
        if let Some(message) = newest {
            // The target committed it, whether or not the acknowledgement arrives.
            if let Ok(info) = message.info() {
                self.progress.applied(info.stream_sequence);
            }
            tokio::spawn(async move {
                if let Err(error) = message.ack().await {
                    tracing::debug!(%error, "acknowledging to JetStream (the next one covers it)");
                }
            });
        }
    }

    /// Ends the feed (the consumer stays for the next start and for `status`).
    pub async fn shutdown(self) {}
}

/// The durable consumer of the merge engine's coordinator on each merge stream.
pub(crate) const COORDINATOR_CONSUMER: &str = "coordinator";

/// The durable consumer of `target`'s writer on each source stream.
pub(crate) fn consumer_name(target: &str) -> String {
    format!("writer-{target}")
}

/// Replaces the durable consumer `consumer_name` of `stream` (`name`) with one that delivers
/// from sequence `start` on, acknowledged all up to a message; its messages. The consumer's
/// own state is never trusted: every start says where to begin.
pub(super) async fn consume_from(
    stream: &mut stream::Stream,
    name: &str,
    consumer_name: &str,
    start: u64,
) -> Result<pull::Stream, BusError> {
    match stream.delete_consumer(consumer_name).await {
        Ok(_) => {}
        Err(error) if error.to_string().contains("not found") => {}
        Err(error) => {
            return Err(BusError::jetstream(
                format!("replacing consumer {consumer_name} of stream {name}"),
                error,
            ));
        }
    }
    let consumer: jetstream::consumer::Consumer<pull::Config> = stream
        .create_consumer(pull::Config {
            durable_name: Some(consumer_name.to_owned()),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ack_policy: AckPolicy::All,
            ack_wait: ACK_WAIT,
            max_ack_pending: MAX_ACK_PENDING,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            BusError::jetstream(
                format!("creating consumer {consumer_name} of stream {name}"),
                e,
            )
        })?;
    consumer
        .messages()
        .await
        .map_err(|e| BusError::jetstream(format!("consuming stream {name} ({consumer_name})"), e))
}

/// The first sequence in `first..=last` whose message (decoded as `M`) is `needed` (`last + 1`
/// when none); `needed` must be false, then true along the stream (a binary search).
pub(super) async fn first_where<M: serde::de::DeserializeOwned>(
    stream: &stream::Stream,
    name: &str,
    first: u64,
    last: u64,
    needed: impl Fn(M) -> Result<bool, BusError>,
) -> Result<u64, BusError> {
    let (mut low, mut high) = (first, last + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        if needed(Bus::message(stream, name, middle).await?)? {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    Ok(low)
}
