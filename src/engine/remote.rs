//! The engine's writers on the bus: `run --role coordinator` publishes each site's outbox
//! entries to the site's outbox stream (`crate::bus::outbox`) instead of writing them, and
//! `run --role writer --site S` applies them to S, on any machine.
//!
//! Nothing of the engine's exactly-once changes: each entry is still one target transaction
//! recording its outbox position under `merge:<site>` in `duplex.positions`, written
//! conditionally and fenced by the coordinator's claim on the site; the site's reader still
//! reports the echo, which is what takes an entry out of the outbox. The stream only carries
//! the entries between the coordinator's state store and the site.
//!
//! # Coordinator: what it publishes at start ([`prepare`])
//!
//! After it claimed every site and read how far each outbox got (`written`, exact under the
//! claim), the coordinator looks at the ends of each outbox stream:
//!
//! - empty: it publishes every entry after `written` from its state store;
//! - newest message of another deployment (this coordinator took the sites over): those
//!   entries can never be written (every writer transaction checks the claim, which names this
//!   deployment now), so the stream is emptied and the entries after `written` published;
//! - oldest message after `written + 1` (retention dropped entries the site lacks): emptied and
//!   published again from `written + 1` (the state store holds every entry not yet echoed,
//!   and an entry the site holds meanwhile is skipped by its position);
//! - newest entry past everything this state store and the site know of: the stream holds
//!   entries of a state this directory no longer has (restored from an older copy). A writer
//!   may still apply them, and this coordinator would number its own entries over them, so it
//!   stops and says how to clear them with the writer stopped;
//! - otherwise it publishes the entries after the stream's newest one.
//!
//! Every append expects the stream's last message to be this coordinator's previous one
//! (`crate::bus::outbox`): a second publisher makes both stop their attempt, and the one whose
//! claim was taken over is refused at its restart.
//!
//! # Writer ([`write_site`])
//!
//! Reads the site's `merge:<site>` position, starts its feed at the first message holding an
//! entry after it, and for each message fences its writes with the claim of the message's
//! deployment, which it never records itself (a message of a deployment that does not hold the
//! site's claim, moved or removed, can never be written, and is passed over), checks there is
//! no gap, and applies the entries as the in-process writer does, acknowledging the message once
//! the site committed them. Any interruption starts over from the site's position.

use std::sync::Arc;

use duplex_connectors::apply::{Applier, ApplyError, WriterClaim};
use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};

use super::EngineError;
use super::coordinator::Input;
use super::outbox::{OutboxWrite, outbox_name};
use super::plan::{MergePlan, MergeSite};
use super::sites::{
    Canonical, WRITE_BATCH, apply_error, canonical, connect_writer, log_skipped,
    outbox_transactions, refused_write, written,
};
use crate::backoff::Backoff;
use crate::bus::outbox::{ENTRIES_PER_MESSAGE, Ends, OutboxFeed, OutboxStream, Publisher};
use crate::bus::{Bus, BusError};
use crate::report::chain;
use crate::shutdown::stop_requested;

/// How often at most a writer looks again for writes its outbox stream lacks.
const GAP_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// A site's outbox stream, ready to be appended to, and the last entry it holds already.
pub(super) struct Prepared {
    publisher: Publisher,
    /// Entries up to this number are in the stream or at the site: not published again.
    skip: u64,
}

fn bus_error(site: &str, source: BusError) -> EngineError {
    EngineError::Bus {
        site: site.to_owned(),
        source: Box::new(source),
    }
}

/// Readies `site`'s outbox stream for this coordinator (`deployment`) at the start of an
/// attempt: the site holds the entries up to `written`, and this state store and the site know
/// of entries up to `known` (see the module doc).
pub(super) async fn prepare(
    bus: &Bus,
    site: &str,
    deployment: &str,
    written: u64,
    known: u64,
) -> Result<Prepared, EngineError> {
    let failed = |error| bus_error(site, error);
    let mut stream = OutboxStream::open(bus, site, true).await.map_err(failed)?;
    let (ends, mut last_sequence) = stream.ends().await.map_err(failed)?;
    let skip = match start_of(ends.as_ref(), deployment, written, known) {
        Start::After(skip) => skip,
        Start::Foreign(previous) => {
            last_sequence = stream.purge().await.map_err(failed)?;
            tracing::warn!(stream = %stream.name(), %previous, "emptied the outbox stream of writes numbered by another deployment, whose claim on the site this coordinator holds now: they can no longer be written");
            written
        }
        Start::Short(oldest) => {
            last_sequence = stream.purge().await.map_err(failed)?;
            tracing::warn!(stream = %stream.name(), site, held = written, oldest, "the outbox stream no longer holds writes the site lacks (its retention dropped them): publishing again every write after the ones the site holds");
            written
        }
        Start::Ahead(last) => {
            return Err(EngineError::StateLost(format!(
                "stream {stream} holds writes of this deployment into site {site} numbered up to {last}, past the {known} that site {site} and this state directory know of: they were published from a state this directory no longer has (restored from an older copy?). The writer of {site} may still apply them, and this coordinator would number its own writes over them. Stop the writer of site {site} (`duplex run --role writer --site {site}`), empty the stream (`nats stream purge {stream}`), then start the coordinator and the writer again: the coordinator numbers after what the site holds then",
                stream = stream.name(),
            )));
        }
    };
    Ok(Prepared {
        publisher: stream.publisher(bus, deployment, last_sequence),
        skip,
    })
}

/// What a coordinator does with a site's outbox stream at its start (see the module doc).
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// Publish the entries after this number.
    After(u64),
    /// Empty it (its newest writes are of this other deployment), then publish after what the
    /// site holds.
    Foreign(String),
    /// Empty it (its oldest entry is this one, after the first the site lacks), then publish
    /// after what the site holds.
    Short(u64),
    /// Stop: it holds entries of this deployment up to this one, past what is known.
    Ahead(u64),
}

/// [`Start`] for a stream holding `ends` (`None`: nothing), for the coordinator of
/// `deployment`, the site holding the entries up to `written`, this state store and the site
/// knowing of entries up to `known`.
fn start_of(ends: Option<&Ends>, deployment: &str, written: u64, known: u64) -> Start {
    match ends {
        None => Start::After(written),
        Some(ends) if ends.last_deployment != deployment => {
            Start::Foreign(ends.last_deployment.clone())
        }
        Some(ends) if ends.last_write > known => Start::Ahead(ends.last_write),
        Some(ends) if ends.first_write > written + 1 => Start::Short(ends.first_write),
        Some(ends) => Start::After(ends.last_write.max(written)),
    }
}

/// Publishes the entries queued for `site`, in order, to its outbox stream until the queue
/// closes; a failure is reported to the coordinator, which ends the attempt (the next one
/// publishes again what the stream lacks).
pub(super) async fn publish(
    site: String,
    prepared: Prepared,
    mut queue: mpsc::Receiver<(u64, Arc<OutboxWrite>)>,
    report: mpsc::Sender<Input>,
) {
    let Prepared {
        mut publisher,
        skip,
    } = prepared;
    let failure = loop {
        let first = match queue.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Disconnected) => {
                break publisher.confirmed().await.err();
            }
            Err(mpsc::error::TryRecvError::Empty) => {
                // Nothing queued: make sure what was published is stored, then wait.
                if let Err(error) = publisher.confirmed().await {
                    break Some(error);
                }
                match queue.recv().await {
                    Some(item) => item,
                    None => break None,
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < ENTRIES_PER_MESSAGE {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        batch.retain(|(seq, _)| *seq > skip);
        let Some(&(first, _)) = batch.first() else {
            continue;
        };
        let writes: Vec<&OutboxWrite> = batch.iter().map(|(_, write)| write.as_ref()).collect();
        if let Err(error) = publisher.publish(first, &writes).await {
            break Some(error);
        }
    };
    if let Some(error) = failure {
        drop(queue);
        let _ = report.send(Input::Failed(bus_error(&site, error))).await;
    }
}

/// `run --role writer --site S` for a site of two-way mappings: applies the merge engine's
/// writes from the site's outbox stream until `stopped` (Ok) or a definite failure (Err);
/// every interruption starts over, after a backoff, from what the site holds.
pub async fn write_site(
    plan: &MergePlan,
    site: &str,
    bus: &Bus,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let Some(merge_site) = plan.sites.iter().find(|s| s.site.name == site) else {
        return Ok(());
    };
    let canonical = canonical(plan, site);
    let mut backoff = Backoff::default();
    loop {
        backoff.attempt_started();
        let error = match write_attempt(merge_site, &canonical, bus, &mut stopped).await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_transient() => error,
            Err(error) => return Err(error),
        };
        let mut delay = backoff.failed();
        if let EngineError::Bus { source, .. } = &error
            && matches!(**source, BusError::OutboxGap { .. })
        {
            // Filled by the coordinator's next start: looked for often, as it costs little.
            delay = delay.min(GAP_POLL);
        }
        tracing::warn!(site, error = %chain(&error), "writing the merge engine's writes interrupted; starting again in {delay:.1?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(&mut stopped) => return Ok(()),
        }
    }
}

/// One feed of the site's outbox stream, from what the site holds, until `stopped` (Ok) or a
/// failure (Err).
async fn write_attempt(
    site: &MergeSite,
    canonical: &Canonical,
    bus: &Bus,
    stopped: &mut watch::Receiver<bool>,
) -> Result<(), EngineError> {
    let name = &site.site.name;
    let mut target = connect_writer(site)
        .await
        .map_err(|e| apply_error(name, e))?;
    let mut held = written(&mut target, name).await?;
    let mut feed = OutboxFeed::start(bus, name, held)
        .await
        .map_err(|e| bus_error(name, e))?;
    tracing::info!(site = %name, held, "writing the merge engine's writes from the bus");
    // The deployment whose claim fences the applier's transactions.
    let mut fence: Option<String> = None;
    // A message read while gathering a batch that belongs to the next one.
    let mut kept = None;
    loop {
        let (message, raw) = match kept.take() {
            Some(kept) => kept,
            None => tokio::select! {
                next = feed.next() => next.map_err(|e| bus_error(name, e))?,
                _ = stop_requested(stopped) => return Ok(()),
            },
        };
        if message.last() <= held {
            feed.ack(raw);
            continue;
        }
        if fence.as_deref() != Some(message.deployment.as_str()) {
            let claim = WriterClaim {
                scope: outbox_name(name),
                deployment: message.deployment.clone(),
            };
            // Never recorded where missing: only the coordinator claims a site.
            match target.fence(claim).await {
                Ok(()) => {}
                Err(error @ (ApplyError::Claimed { .. } | ApplyError::Unclaimed { .. })) => {
                    tracing::warn!(site = %name, deployment = %message.deployment, first = message.first, last = message.last(), reason = %error, "passing over writes numbered by a deployment that does not hold the site's claim: they can never be written");
                    feed.ack(raw);
                    continue;
                }
                Err(error) => return Err(apply_error(name, error)),
            }
            fence = Some(message.deployment.clone());
            // Exact under the claim (see WriterClaim).
            held = written(&mut target, name).await?;
            if message.last() <= held {
                feed.ack(raw);
                continue;
            }
        }
        if message.first > held + 1 {
            return Err(bus_error(
                name,
                BusError::OutboxGap {
                    stream: feed.name().to_owned(),
                    site: name.clone(),
                    held,
                    from: held + 1,
                    to: message.first - 1,
                },
            ));
        }
        let mut last = message.last();
        let mut batch: Vec<(u64, Arc<OutboxWrite>)> = (message.first..)
            .zip(message.writes)
            .filter(|(seq, _)| *seq > held)
            .map(|(seq, write)| (seq, Arc::new(write)))
            .collect();
        // The messages already delivered that follow on, of the same deployment, go into the
        // same target transaction, as the in-process writer batches its queue (acknowledging
        // the last one acknowledges them all).
        let mut raw = raw;
        while batch.len() < WRITE_BATCH {
            let Some(next) = feed.next().now_or_never() else {
                break;
            };
            let (more, more_raw) = next.map_err(|e| bus_error(name, e))?;
            if fence.as_deref() != Some(more.deployment.as_str()) || more.first != last + 1 {
                kept = Some((more, more_raw));
                break;
            }
            last = more.last();
            batch.extend((more.first..).zip(more.writes.into_iter().map(Arc::new)));
            raw = more_raw;
        }
        let transactions = outbox_transactions(name, canonical, &batch)?;
        match target.apply(&transactions).await {
            Ok(()) => {}
            Err(error) if error.is_transient() => return Err(apply_error(name, error)),
            Err(ApplyError::ClaimTaken { owner, .. }) => {
                // The message's deployment lost its claim while this writer wrote: its
                // writes are void; starting over passes them over.
                tracing::warn!(site = %name, %owner, "the merge engine's claim on the site moved while writing");
                return Err(EngineError::WriterStopped(name.clone()));
            }
            Err(error) => {
                return Err(
                    refused_write(name, &mut target, &batch, &transactions, error, None).await,
                );
            }
        }
        log_skipped(name, &target.take_skipped());
        held = last;
        feed.ack(raw);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(first_write: u64, last_write: u64, deployment: &str) -> Ends {
        Ends {
            first_write,
            last_write,
            last_deployment: deployment.into(),
        }
    }

    #[test]
    fn a_coordinator_publishes_after_what_the_stream_or_the_site_holds() {
        // Empty: everything after what the site holds.
        assert_eq!(start_of(None, "d", 7, 12), Start::After(7));
        // The stream holds 3..=10, the site 7, the store knows up to 12: after 10.
        assert_eq!(
            start_of(Some(&ends(3, 10, "d")), "d", 7, 12),
            Start::After(10)
        );
        // The site is ahead of the stream's newest entry (it was written before a purge).
        assert_eq!(
            start_of(Some(&ends(3, 5, "d")), "d", 7, 12),
            Start::After(7)
        );
        // The oldest entry is the first the site lacks: nothing is missing.
        assert_eq!(
            start_of(Some(&ends(8, 10, "d")), "d", 7, 12),
            Start::After(10)
        );
    }

    #[test]
    fn a_stream_of_another_deployment_or_short_of_what_the_site_lacks_is_emptied() {
        assert_eq!(
            start_of(Some(&ends(1, 50, "old")), "d", 7, 12),
            Start::Foreign("old".into())
        );
        // Retention dropped 8: the site lacks it and the stream starts at 9.
        assert_eq!(
            start_of(Some(&ends(9, 10, "d")), "d", 7, 12),
            Start::Short(9)
        );
    }

    #[test]
    fn a_stream_ahead_of_what_the_store_and_the_site_know_stops_the_coordinator() {
        // A state directory restored from an older copy: it knows up to 12, the stream holds
        // writes of this deployment up to 20 the site has not applied.
        assert_eq!(
            start_of(Some(&ends(3, 20, "d")), "d", 7, 12),
            Start::Ahead(20)
        );
        // Checked before the shortness: these writes may still be applied.
        assert_eq!(
            start_of(Some(&ends(15, 20, "d")), "d", 7, 12),
            Start::Ahead(20)
        );
    }
}
