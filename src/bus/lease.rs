//! One active writer per target: a lease in the JetStream stream `<stream_prefix>_leases`
//! (the shape of a key-value bucket: one message per subject `<stream_prefix>_leases.<site>`,
//! the holder's name), whose messages expire after `lease_ttl` unless renewed (every third of
//! it); a waiting writer takes the lease once the message expired. Taking and renewing are
//! compare-and-set publishes (`Nats-Expected-Last-Subject-Sequence`: none, or the one this
//! writer published last), so two writers never both believe they took it (the exactly-once
//! record on the target does not depend on this; see the module doc of `crate::bus`).
//!
//! (A plain stream rather than async-nats' key-value API: creating a bucket through that API
//! fails against nats-server 2.9, the version Debian ships.)

use std::time::{Duration, Instant};

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
    holder: String,
    revision: u64,
    ttl: Duration,
}

/// The lease stream, created when missing.
async fn lease_stream(bus: &Bus) -> Result<stream::Stream, BusError> {
    let name = format!("{}_leases", bus.config.stream_prefix);
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

/// Publishes `holder` as the lease of `site` if the subject's last message is `expected`
/// (0: none); its sequence, or `None` when someone else's is there.
async fn publish(
    bus: &Bus,
    site: &str,
    holder: &str,
    expected: u64,
) -> Result<Option<u64>, BusError> {
    let message = PublishMessage::build()
        .payload(holder.to_owned().into())
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
        match publish(bus, site, holder, 0).await? {
            Some(revision) => {
                tracing::info!(site, holder, "took the writer lease");
                return Ok(Some(Lease {
                    bus: bus.clone(),
                    stream,
                    site: site.to_owned(),
                    holder: holder.to_owned(),
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

/// Who holds the lease of `site` now, as far as the bucket says.
pub(super) async fn current_holder(bus: &Bus, stream: &stream::Stream, site: &str) -> String {
    match stream
        .get_last_raw_message_by_subject(&subject(bus, site))
        .await
    {
        Ok(message) => String::from_utf8_lossy(&message.payload).into_owned(),
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => "nobody".into(),
        Err(error) => format!("unknown ({error})"),
    }
}

impl Lease {
    /// Renews the lease until it is lost (returns why) or `stop` turns true (returns `None`
    /// after giving it up, so a waiting writer takes over at once).
    pub(super) async fn keep(mut self, mut stop: watch::Receiver<bool>) -> Option<BusError> {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.ttl / 3) => {}
                _ = stop_requested(&mut stop) => {
                    // Given up only while still ours: a later holder's message stays.
                    if current_holder(&self.bus, &self.stream, &self.site).await == self.holder {
                        let _ = self.stream.purge().filter(subject(&self.bus, &self.site)).await;
                    }
                    return None;
                }
            }
            match publish(&self.bus, &self.site, &self.holder, self.revision).await {
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
