//! The merge engine's writes on the bus: one stream per two-way site, `<stream_prefix>-outbox_<site>`
//! (subject `<stream_prefix>.outbox.<site>`), filled by `run --role coordinator` with the
//! site's outbox entries and applied by `run --role writer --site S`.
//!
//! # What a message holds
//!
//! An [`OutboxMessage`]: the coordinator's deployment (its state store's identity, the claim
//! the site's writes are fenced with) and a run of outbox entries numbered `first`,
//! `first + 1`, ... (see `crate::engine::OutboxWrite`). Along a stream the numbers only grow
//! and follow each other with no gap: the coordinator appends with JetStream's
//! `Nats-Expected-Last-Sequence`, so a message is stored only where the stream's last message
//! is the one this coordinator last stored (a second publisher, or a retry of a message whose
//! acknowledgement was lost, is refused instead of stored twice or out of order), and at its
//! start it publishes only after the stream's last entry (see `crate::engine::remote`).
//! No message id is used: an id would drop a message published again after a purge inside the
//! duplicate window, and the expected sequence already makes every append exact.
//!
//! # Where a writer starts
//!
//! From the first message whose last entry the site does not hold (its `merge:<site>` row of
//! `duplex.positions`), found by a binary search on the numbers; the consumer's own
//! acknowledgements are not trusted, as for every other feed of the bus.

use std::collections::VecDeque;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::progress::StreamProgress;
use super::{Bus, BusError};
use crate::engine::OutboxWrite;

/// Publications awaiting JetStream's acknowledgement at most.
const IN_FLIGHT: usize = 64;
/// Outbox entries in one message at most (fewer where they exceed the server's max_payload).
pub(crate) const ENTRIES_PER_MESSAGE: usize = 256;

/// One message of an outbox stream: entries `first..=last()` of one site's outbox.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OutboxMessage {
    /// The deployment whose coordinator numbered them.
    pub(crate) deployment: String,
    /// The number of the first entry.
    pub(crate) first: u64,
    /// The entries, numbered from `first` (never empty).
    pub(crate) writes: Vec<OutboxWrite>,
}

/// An [`OutboxMessage`] as published, borrowing its entries (encoded exactly alike).
#[derive(Serialize)]
struct MessageOf<'a> {
    deployment: &'a str,
    first: u64,
    writes: &'a [&'a OutboxWrite],
}

impl OutboxMessage {
    /// The number of the last entry.
    pub(crate) fn last(&self) -> u64 {
        self.first + (self.writes.len() as u64).saturating_sub(1)
    }
}

/// What an outbox stream holds at its ends.
#[derive(Debug)]
pub(crate) struct Ends {
    /// The first entry of its oldest message.
    pub(crate) first_write: u64,
    /// The last entry of its newest message.
    pub(crate) last_write: u64,
    /// The deployment of its newest message.
    pub(crate) last_deployment: String,
}

/// A site's outbox stream.
pub(crate) struct OutboxStream {
    stream: stream::Stream,
    name: String,
    subject: String,
}

impl OutboxStream {
    /// The outbox stream of `site`, created with the retention of `[bus]` when missing (with
    /// `apply_limits`, the coordinator, an existing one's retention is brought in line).
    pub(crate) async fn open(
        bus: &Bus,
        site: &str,
        apply_limits: bool,
    ) -> Result<OutboxStream, BusError> {
        let (name, subject) = (bus.outbox_stream_name(site), bus.outbox_subject(site));
        let stream = bus
            .stream_named(name.clone(), subject.clone(), apply_limits)
            .await?;
        Ok(OutboxStream {
            stream,
            name,
            subject,
        })
    }

    /// The stream's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// (first sequence, last sequence, messages) of the stream now.
    async fn state(&mut self) -> Result<(u64, u64, u64), BusError> {
        let info = self
            .stream
            .info()
            .await
            .map_err(|e| BusError::jetstream(format!("reading stream {}", self.name), e))?;
        Ok((
            info.state.first_sequence,
            info.state.last_sequence,
            info.state.messages,
        ))
    }

    /// What the stream holds at its ends (`None`: nothing), and its last sequence.
    pub(crate) async fn ends(&mut self) -> Result<(Option<Ends>, u64), BusError> {
        let (first, last, messages) = self.state().await?;
        if messages == 0 {
            return Ok((None, last));
        }
        let oldest: OutboxMessage = Bus::message(&self.stream, &self.name, first).await?;
        let newest: OutboxMessage = Bus::message(&self.stream, &self.name, last).await?;
        Ok((
            Some(Ends {
                first_write: oldest.first,
                last_write: newest.last(),
                last_deployment: newest.deployment,
            }),
            last,
        ))
    }

    /// Removes every message (the sequence numbers go on); the new last sequence.
    pub(crate) async fn purge(&mut self) -> Result<u64, BusError> {
        self.stream
            .purge()
            .await
            .map_err(|e| BusError::jetstream(format!("purging stream {}", self.name), e))?;
        Ok(self.state().await?.1)
    }

    /// A publisher appending after the stream's message `last_sequence` (see the module doc).
    pub(crate) fn publisher(self, bus: &Bus, deployment: &str, last_sequence: u64) -> Publisher {
        Publisher {
            context: bus.context.clone(),
            stream: self.name,
            subject: self.subject,
            deployment: deployment.to_owned(),
            expected: last_sequence,
            in_flight: VecDeque::new(),
        }
    }
}

/// Appends a coordinator's entries to a site's outbox stream, in order, each message only
/// where the stream's last message is this publisher's previous one.
pub(crate) struct Publisher {
    context: jetstream::Context,
    stream: String,
    subject: String,
    deployment: String,
    /// The stream sequence the next message expects to follow.
    expected: u64,
    in_flight: VecDeque<PublishAckFuture>,
}

impl Publisher {
    /// Publishes entries `first, first + 1, ...` (`writes`, at most [`ENTRIES_PER_MESSAGE`]),
    /// in as few messages as the server's max_payload allows. JetStream's acknowledgements
    /// are awaited later ([`Publisher::confirmed`]), up to [`IN_FLIGHT`] at a time.
    pub(crate) async fn publish(
        &mut self,
        first: u64,
        writes: &[&OutboxWrite],
    ) -> Result<(), BusError> {
        let mut runs = vec![(first, writes)];
        while let Some((first, writes)) = runs.pop() {
            let message = MessageOf {
                deployment: &self.deployment,
                first,
                writes,
            };
            let payload =
                duplex_state::codec::encode(&message).map_err(|source| BusError::Codec {
                    stream: self.stream.clone(),
                    sequence: 0,
                    source,
                })?;
            let publish = PublishMessage::build()
                .payload(payload.into())
                .expected_last_sequence(self.expected);
            match self
                .context
                .send_publish(self.subject.clone(), publish)
                .await
            {
                Ok(ack) => {
                    self.expected += 1;
                    self.in_flight.push_back(ack);
                    if self.in_flight.len() >= IN_FLIGHT {
                        self.confirm_one().await?;
                    }
                }
                Err(error)
                    if error.kind() == PublishErrorKind::MaxPayloadExceeded
                        && message.writes.len() > 1 =>
                {
                    // Halves, the first one published first.
                    let (one, two) = writes.split_at(writes.len() / 2);
                    runs.push((first + one.len() as u64, two));
                    runs.push((first, one));
                }
                Err(error) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    return Err(BusError::TooLarge {
                        stream: self.stream.clone(),
                        detail: error.to_string(),
                    });
                }
                Err(error) => {
                    return Err(BusError::jetstream(
                        format!("publishing to stream {}", self.stream),
                        error,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Waits until JetStream stored every message published so far.
    pub(crate) async fn confirmed(&mut self) -> Result<(), BusError> {
        while !self.in_flight.is_empty() {
            self.confirm_one().await?;
        }
        Ok(())
    }

    async fn confirm_one(&mut self) -> Result<(), BusError> {
        let Some(ack) = self.in_flight.pop_front() else {
            return Ok(());
        };
        match ack.await {
            Ok(_) => Ok(()),
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                Err(BusError::OutboxRace {
                    stream: self.stream.clone(),
                })
            }
            Err(error) => Err(BusError::jetstream(
                format!("publishing to stream {}", self.stream),
                error,
            )),
        }
    }
}

/// A writer's feed of a site's outbox stream.
pub(crate) struct OutboxFeed {
    stream: String,
    messages: pull::Stream,
    /// The newest stream sequence delivered (a redelivery of an older one is dropped).
    last_sequence: u64,
    progress: std::sync::Arc<StreamProgress>,
}

impl OutboxFeed {
    /// The messages of `site`'s outbox stream from the first one holding an entry after
    /// `held`, through the durable consumer of the site's writer.
    pub(crate) async fn start(bus: &Bus, site: &str, held: u64) -> Result<OutboxFeed, BusError> {
        let mut outbox = OutboxStream::open(bus, site, false).await?;
        let (first, last, messages) = outbox.state().await?;
        let start = if messages == 0 {
            last + 1
        } else {
            super::feed::first_where(
                &outbox.stream,
                &outbox.name,
                first,
                last,
                |message: OutboxMessage| Ok(message.last() > held),
            )
            .await?
        };
        let consumer = super::feed::consumer_name(site);
        let messages =
            super::feed::consume_from(&mut outbox.stream, &outbox.name, &consumer, start).await?;
        tracing::info!(stream = %outbox.name, consumer = %consumer, start, held, "consuming the stream");
        Ok(OutboxFeed {
            progress: crate::telemetry::global().role().stream(site, &outbox.name),
            stream: outbox.name,
            messages,
            last_sequence: start.saturating_sub(1),
        })
    }

    /// The stream's name.
    pub(crate) fn name(&self) -> &str {
        &self.stream
    }

    /// The next message, decoded, with what acknowledges it.
    pub(crate) async fn next(&mut self) -> Result<(OutboxMessage, jetstream::Message), BusError> {
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
            let decoded: OutboxMessage = super::decode(&self.stream, sequence, &message.payload)?;
            if decoded.writes.is_empty() {
                continue;
            }
            return Ok((decoded, message));
        }
    }

    /// Acknowledges `message` and every one before it: the site committed them.
    pub(crate) fn ack(&self, message: jetstream::Message) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use duplex_connectors::{Op, Row, Value};
    use duplex_state::VersionVector;

    fn write(id: i64, qty: Option<i64>) -> OutboxWrite {
        let row = |pairs: &[(&str, i64)]| -> Row {
            pairs.iter().map(|(c, v)| (*c, Value::Int(*v))).collect()
        };
        let mut vector = VersionVector::new();
        vector.increment("shop");
        OutboxWrite {
            mapping: "items".into(),
            key: id.to_string(),
            op: if qty.is_some() {
                Op::Update
            } else {
                Op::Delete
            },
            key_row: row(&[("id", id)]),
            before: Some(row(&[("id", id), ("qty", 1)])),
            after: qty.map(|qty| row(&[("id", id), ("qty", qty)])),
            vector,
        }
    }

    #[test]
    fn a_message_published_borrowed_reads_back_owned() {
        let writes = [write(7, Some(3)), write(8, None)];
        let borrowed: Vec<&OutboxWrite> = writes.iter().collect();
        let published = MessageOf {
            deployment: "9b09996c",
            first: 41,
            writes: &borrowed,
        };
        let bytes = duplex_state::codec::encode(&published).unwrap();
        let back: OutboxMessage = super::super::decode("s", 1, &bytes).unwrap();
        assert_eq!(back.deployment, "9b09996c");
        assert_eq!((back.first, back.last()), (41, 42));
        assert_eq!(back.writes.len(), 2);
        assert_eq!(back.writes[0].key, "7");
        assert_eq!(back.writes[0].after, writes[0].after);
        assert_eq!(back.writes[1].op, Op::Delete);
        assert_eq!(back.writes[1].after, None);
        assert_eq!(back.writes[1].vector, writes[1].vector);
    }
}
