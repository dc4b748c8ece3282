//! One active writer per target: a lease in the JetStream stream `<stream_prefix>_leases`
//! (the shape of a key-value bucket: one message per subject `<stream_prefix>_leases.<site>`,
//! a [`LeaseRecord`]: the holder's name and when it took the lease), whose messages expire after `lease_ttl` unless renewed (every third of
//! it); a waiting writer takes the lease once the message expired. Taking and renewing are
//! compare-and-set publishes (`Nats-Expected-Last-Subject-Sequence`: none, or the one this
//! writer published last), so two writers never both believe they took it (the exactly-once
//! record on the target does not depend on this; see the module doc of `crate::bus`).
//!
//! (A plain stream rather than async-nats' key-value API: creating a bucket through that API
//! fails against nats-server 2.9, the version Debian ships.)

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use tokio::sync::watch;

use super::{Bus, BusError};
use crate::shutdown::stop_requested;

/// A lease held.
pub(super) struct Lease {
    bus: Bus,
    stream: stream::Stream,
    site: String,
    record: LeaseRecord,
    revision: u64,
    ttl: Duration,
}

/// What a lease message says (JSON): who holds the lease and since when. Renewals publish the
/// same record, so `since` is when the holder took it, not when it last renewed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseRecord {
    /// The writer: host, pid and state store.
    pub(crate) holder: String,
    /// When it took the lease (`None` in a message of an older duplex: the holder only).
    pub(crate) since: Option<DateTime<Utc>>,
}

impl LeaseRecord {
    fn payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a lease record is JSON")
    }

    fn parse(payload: &[u8]) -> LeaseRecord {
        serde_json::from_slice(payload).unwrap_or_else(|_| LeaseRecord {
            holder: String::from_utf8_lossy(payload).into_owned(),
            since: None,
        })
    }
}

/// The name of the lease stream.
pub(crate) fn stream_name(bus: &Bus) -> String {
    format!("{}_leases", bus.config.stream_prefix)
}

/// The lease stream, created when missing.
async fn lease_stream(bus: &Bus) -> Result<stream::Stream, BusError> {
    let name = stream_name(bus);
    bus.context
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.*")],
            max_messages_per_subject: 1,
            max_age: bus.config.lease_ttl,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::jetstream(format!("opening the lease stream {name}"), e))
}

/// The subject of `site`'s lease.
fn subject(bus: &Bus, site: &str) -> String {
    format!("{}_leases.{site}", bus.config.stream_prefix)
}

/// Publishes `record` as the lease of `site` if the subject's last message is `expected`
/// (0: none); its sequence, or `None` when someone else's is there.
async fn publish(
    bus: &Bus,
    site: &str,
    record: &LeaseRecord,
    expected: u64,
) -> Result<Option<u64>, BusError> {
    let message = PublishMessage::build()
        .payload(record.payload().into())
        .expected_last_subject_sequence(expected);
    let failed =
        |e| BusError::jetstream(format!("taking or renewing the writer lease of {site}"), e);
    let ack = match bus.context.send_publish(subject(bus, site), message).await {
        Ok(future) => future.await,
        Err(error) => Err(error),
    };
    match ack {
        Ok(ack) => Ok(Some(ack.sequence)),
        Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
        Err(error) => Err(failed(error)),
    }
}

/// Waits until this writer (`holder`) holds the lease of `site`; `None` when shutdown came
/// first.
pub(super) async fn take(
    bus: &Bus,
    site: &str,
    holder: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Lease>, BusError> {
    let stream = lease_stream(bus).await?;
    let ttl = bus.config.lease_ttl;
    let mut told = false;
    loop {
        let record = LeaseRecord {
            holder: holder.to_owned(),
            since: Some(Utc::now()),
        };
        match publish(bus, site, &record, 0).await? {
            Some(revision) => {
                tracing::info!(site, holder, "took the writer lease");
                return Ok(Some(Lease {
                    bus: bus.clone(),
                    stream,
                    site: site.to_owned(),
                    record,
                    revision,
                    ttl,
                }));
            }
            None => {
                if !std::mem::replace(&mut told, true) {
                    let current = current_holder(bus, &stream, site).await;
                    tracing::info!(site, holder = %current, "another writer holds the lease of this site; waiting until it expires");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(ttl / 4) => {}
            _ = stop_requested(shutdown) => return Ok(None),
        }
    }
}

/// The lease of `site` in the lease stream (`None`: nobody holds it).
pub(crate) async fn read(
    bus: &Bus,
    stream: &stream::Stream,
    site: &str,
) -> Result<Option<LeaseRecord>, BusError> {
    match stream
        .get_last_raw_message_by_subject(&subject(bus, site))
        .await
    {
        Ok(message) => Ok(Some(LeaseRecord::parse(&message.payload))),
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(error) => Err(BusError::jetstream(
            format!("reading the writer lease of {site}"),
            error,
        )),
    }
}

/// Who holds the lease of `site` now, as far as the lease stream says.
pub(super) async fn current_holder(bus: &Bus, stream: &stream::Stream, site: &str) -> String {
    match read(bus, stream, site).await {
        Ok(Some(record)) => record.holder,
        Ok(None) => "nobody".into(),
        Err(error) => format!("unknown ({})", crate::report::chain(&error)),
    }
}

impl Lease {
    /// When this writer took the lease.
    pub(super) fn since(&self) -> Option<DateTime<Utc>> {
        self.record.since
    }

    /// Renews the lease until it is lost (returns why) or `stop` turns true (returns `None`
    /// after giving it up, so a waiting writer takes over at once).
    pub(super) async fn keep(mut self, mut stop: watch::Receiver<bool>) -> Option<BusError> {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.ttl / 3) => {}
                _ = stop_requested(&mut stop) => {
                    // Given up only while still ours: a later holder's message stays.
                    if current_holder(&self.bus, &self.stream, &self.site).await == self.record.holder {
                        let _ = self.stream.purge().filter(subject(&self.bus, &self.site)).await;
                    }
                    return None;
                }
            }
            match publish(&self.bus, &self.site, &self.record, self.revision).await {
                Ok(Some(revision)) => {
                    self.revision = revision;
                    renewed = Instant::now();
                }
                Ok(None) => {
                    return Some(BusError::LeaseLost {
                        site: self.site.clone(),
                        holder: current_holder(&self.bus, &self.stream, &self.site).await,
                    });
                }
                Err(error) => {
                    tracing::warn!(site = %self.site, %error, "renewing the writer lease failed; trying again");
                    if renewed.elapsed() >= self.ttl {
                        return Some(BusError::LeaseLost {
                            site: self.site.clone(),
                            holder: current_holder(&self.bus, &self.stream, &self.site).await,
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_record_round_trips_and_an_older_plain_holder_still_reads() {
        let record = LeaseRecord {
            holder: "host (pid 7, state d1)".into(),
            since: Some(DateTime::from_timestamp(1_700_000_000, 0).unwrap()),
        };
        assert_eq!(LeaseRecord::parse(&record.payload()), record);
        assert_eq!(
            LeaseRecord::parse(b"host (pid 7, state d1)"),
            LeaseRecord {
                holder: "host (pid 7, state d1)".into(),
                since: None,
            }
        );
    }
}
