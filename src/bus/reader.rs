//! The reader role: one source's change stream published to its JetStream stream, the source
//! acknowledged only up to what JetStream confirmed storing (see the module doc of
//! `crate::bus`).

use std::cmp::Ordering;
use std::sync::Arc;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use duplex_connectors::{AnyStream, Position, StreamItem, StreamOptions};
use duplex_state::StateStore;
use tokio::sync::{mpsc, watch};

use super::progress::StreamProgress;
use super::{Bus, BusError, BusItem, Envelope, Kind};
use crate::backoff::Backoff;
use crate::link::feed::Feed;
use crate::link::{self, LinkError, LinkPlan};
use crate::report::chain;
use crate::shutdown::stop_requested;
use crate::telemetry::LinkTelemetry;

/// Publishes awaiting JetStream's confirmation at most.
const IN_FLIGHT: usize = 1024;

/// The state-store key of the newest position JetStream confirmed for `site`'s stream.
pub(crate) fn published_key(site: &str) -> String {
    format!("bus-published:{site}")
}

/// The same for `site`'s stream of `kind`.
fn published_key_of(site: &str, kind: Kind) -> String {
    match kind {
        Kind::OneWay => published_key(site),
        Kind::Merge => format!("bus-published-merge:{site}"),
    }
}

/// Runs the reader of `plan`'s source until shutdown (Ok) or a definite failure; `kind` says
/// which of the source's streams it publishes (for [`Kind::Merge`], `plan` names the site and
/// its tables of two-way mappings, and has no targets).
pub(super) async fn run(
    plan: LinkPlan,
    kind: Kind,
    bus: Bus,
    state: Arc<StateStore>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let site = plan.source.name.as_str();
    let (stream, _) = bus.names(site, kind);
    // A link without targets for `duplex status` (its state, how far it read) and the role's
    // progress (see `super::progress`).
    let telemetry = crate::telemetry::global().link(&format!("{site} -> {stream}"), site, &[]);
    let progress = crate::telemetry::global().role().stream(site, &stream);
    let mut backoff = Backoff::default();
    let outcome = loop {
        backoff.attempt_started();
        telemetry.attempt_started();
        let error = match attempt(
            &plan,
            kind,
            &bus,
            &state,
            &mut shutdown,
            &telemetry,
            &progress,
        )
        .await
        {
            Ok(()) => break Ok(()),
            Err(error) if error.is_transient() => error,
            Err(error) => break Err(error),
        };
        telemetry.retrying(chain(&error));
        let delay = backoff.failed();
        tracing::warn!(source = %site, error = %chain(&error), "bus reader interrupted; retrying in {delay:.1?}");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop_requested(&mut shutdown) => break Ok(()),
        }
    };
    telemetry.stopped(outcome.as_ref().err().map(|error| chain(error)));
    outcome
}

/// Where the stream ends: the position of the last transaction published to it, if any.
async fn last_published(
    bus: &Bus,
    site: &str,
    kind: Kind,
    state: &Arc<StateStore>,
) -> Result<Option<Position>, BusError> {
    let (name, subject) = bus.names(site, kind);
    let mut stream = bus.stream_of(site, kind, true).await?;
    let info = stream
        .info()
        .await
        .map_err(|e| BusError::jetstream(format!("reading stream {name}"), e))?;
    let last_sequence = info.state.last_sequence;
    let in_stream = match stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => {
            let envelope: Envelope = super::decode(&name, message.sequence, &message.payload)?;
            match envelope.item {
                BusItem::Transaction(tx) => Some(tx.position),
                BusItem::Part(_) | BusItem::Shape(_) => envelope.previous,
            }
        }
        Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => None,
        Err(error) => {
            return Err(BusError::jetstream(
                format!("reading the last message of stream {name}"),
                error,
            ));
        }
    };
    let recorded = state
        .position::<Position>(&published_key_of(site, kind))
        .map_err(|e| BusError::Link(Box::new(LinkError::State(e))))?;
    match (in_stream, recorded) {
        (Some(last), Some(recorded)) => Ok(Some(
            match last
                .compare(&recorded)
                .map_err(|source| BusError::Position {
                    stream: name,
                    source,
                })? {
                Ordering::Less => recorded,
                _ => last,
            },
        )),
        (Some(last), None) => Ok(Some(last)),
        (None, Some(recorded)) => Ok(Some(recorded)),
        (None, None) if last_sequence > 0 => Err(BusError::Emptied {
            stream: name,
            source_site: site.to_owned(),
        }),
        (None, None) => Ok(None),
    }
}

/// One run of the reader until shutdown or failure.
async fn attempt(
    plan: &LinkPlan,
    kind: Kind,
    bus: &Bus,
    state: &Arc<StateStore>,
    shutdown: &mut watch::Receiver<bool>,
    telemetry: &LinkTelemetry,
    progress: &Arc<StreamProgress>,
) -> Result<(), BusError> {
    let site = plan.source.name.as_str();
    let link_error = |e: LinkError| BusError::Link(Box::new(e));
    let (stream_name, subject) = bus.names(site, kind);
    let mut last = last_published(bus, site, kind, state).await?;
    let start = match &last {
        Some(last) => Some(last.clone()),
        None => state
            .position::<Position>(&link::start_key(site))
            .map_err(|e| link_error(LinkError::State(e)))?,
    };
    let acknowledged = state
        .position::<Position>(&link::acknowledged_key(site))
        .map_err(|e| link_error(LinkError::State(e)))?;
    let mut options = match kind {
        Kind::OneWay => {
            let mut options = StreamOptions::link(plan.tables.clone(), start.clone());
            options.source_key = Some(link::position_key(site, &bus.deployment()));
            options
        }
        // As the merge engine reads a site in one process (`crate::engine`, sites.rs).
        Kind::Merge => StreamOptions::merge(plan.tables.clone(), start.clone()),
    }
    .for_deployment(state.deployment_id());
    options.acknowledged = acknowledged.clone();
    options.timeout = plan.source.stream_timeout;
    let stream = AnyStream::start(&plan.source.connection(), options)
        .await
        .map_err(|source| {
            link_error(LinkError::Source {
                site: site.to_owned(),
                source,
            })
        })?;
    let mut feed = Feed::Source(stream);
    if start.is_none()
        && let Some(position) = feed.start_position()
    {
        save(state, link::start_key(site), position).await?;
    }
    if kind == Kind::OneWay
        && let Err(error) = link::check_table_identities(state, site, &feed).await
    {
        feed.shutdown().await;
        return Err(link_error(error));
    }
    if kind == Kind::Merge && last.is_none() {
        // The first message of a merge stream says where this reader started reading the
        // site (as its `previous`): a coordinator that decided less of the site than that
        // stops instead of skipping what lies in between (a new reader state directory, or
        // a switch from a one-process engine, whose slot was another).
        last = start
            .clone()
            .or_else(|| feed.start_position())
            .or_else(|| match &feed {
                Feed::Source(AnyStream::Postgres(stream)) => {
                    Some(Position::Postgres(stream.delivered()))
                }
                _ => None,
            });
    }
    tracing::info!(source = site, stream = %stream_name, after = %last.as_ref().map_or("nothing".to_owned(), ToString::to_string), "bus reader started");
    telemetry.streaming();

    // Publishes in order, each with the position acknowledged once it is stored (none for
    // parts and shapes); a task awaits JetStream's confirmations in order.
    let (publishes, mut confirmations) = confirm_in_order(progress.clone());
    let mut acker = link::Acker::new(site, acknowledged);
    let mut ack_tick = tokio::time::interval(link::ACK_EVERY);
    let mut part_offset: Option<(Position, u64)> = None;
    let deployment = state.deployment_id().to_owned();
    let publish = |envelope: &Envelope, id: Option<String>| {
        let payload = match duplex_state::codec::encode(envelope) {
            Ok(payload) => payload,
            Err(source) => {
                return Err(Box::new(BusError::Codec {
                    stream: stream_name.clone(),
                    sequence: 0,
                    source,
                }));
            }
        };
        let mut message = PublishMessage::build().payload(payload.into());
        if let Some(id) = id {
            message = message.message_id(id);
        }
        Ok(bus.context.send_publish(subject.clone(), message))
    };
    // The newest position confirmed, and the newest transaction's among them.
    let mut ready: Option<Position> = None;
    let mut ready_published: Option<Position> = None;
    let outcome = loop {
        tokio::select! {
            biased;
            _ = stop_requested(shutdown) => break Ok(()),
            confirmed = confirmations.recv() => match confirmed {
                Some(Ok(Some((position, published)))) => {
                    if published {
                        ready_published = Some(position.clone());
                    }
                    ready = Some(position);
                }
                Some(Ok(None)) => {}
                Some(Err(error)) => break Err(error),
                None => break Ok(()),
            },
            _ = ack_tick.tick() => {
                if let Some(position) = ready.take()
                    && let Err(error) = acknowledge(state, site, kind, &mut acker, &feed, position, ready_published.take(), progress).await
                {
                    break Err(error);
                }
            }
            item = feed.next(site) => {
                let item = match item {
                    Ok(item) => item,
                    Err(error) => break Err(link_error(error)),
                };
                let (envelope, id, position) = match item {
                    StreamItem::Heartbeat(position) => {
                        telemetry.read(&position);
                        if publishes.send(Pending::Passed(position)).await.is_err() {
                            break Ok(());
                        }
                        continue;
                    }
                    StreamItem::Transaction(tx) => {
                        if last.as_ref().is_some_and(|l| !matches!(tx.position.compare(l), Ok(Ordering::Greater))) {
                            // Published before the restart.
                            continue;
                        }
                        let offset = part_offset.take().map_or(0, |(_, offset)| offset);
                        telemetry.read(&tx.position);
                        let id = format!("{deployment}:{}", tx.position);
                        let position = tx.position.clone();
                        let previous = last.replace(position.clone());
                        (Envelope { previous, offset, item: BusItem::Transaction(tx) }, Some(id), Some(position))
                    }
                    StreamItem::Part(part) => {
                        let offset = match &mut part_offset {
                            Some((start, offset)) if *start == part.start => offset,
                            _ => &mut part_offset.insert((part.start.clone(), 0)).1,
                        };
                        let at = *offset;
                        *offset += part.events.len() as u64;
                        let id = format!("{deployment}:{}:{at}", part.start);
                        (Envelope { previous: last.clone(), offset: at, item: BusItem::Part(part) }, Some(id), None)
                    }
                    StreamItem::Shape(shape) => {
                        (Envelope { previous: last.clone(), offset: 0, item: BusItem::Shape(shape) }, None, None)
                    }
                };
                let sent = match publish(&envelope, id) {
                    Ok(future) => future.await.map_err(|e| {
                        if e.kind() == PublishErrorKind::MaxPayloadExceeded {
                            BusError::TooLarge { stream: stream_name.clone(), detail: e.to_string() }
                        } else {
                            BusError::jetstream(format!("publishing to {stream_name}"), e)
                        }
                    }),
                    Err(error) => Err(*error),
                };
                match sent {
                    Ok(future) => {
                        if publishes.send(Pending::Published(future, position)).await.is_err() {
                            break Ok(());
                        }
                    }
                    Err(error) => break Err(error),
                }
            }
        }
    };
    // Acknowledge what was confirmed before stopping.
    drop(publishes);
    let mut outcome = outcome;
    if outcome.is_ok() {
        while let Some(confirmed) = confirmations.recv().await {
            match confirmed {
                Ok(Some((position, published))) => {
                    if published {
                        ready_published = Some(position.clone());
                    }
                    ready = Some(position);
                }
                Ok(None) => {}
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
        }
    }
    if let Some(position) = ready.take()
        && let Err(error) = acknowledge(
            state,
            site,
            kind,
            &mut acker,
            &feed,
            position,
            ready_published.take(),
            progress,
        )
        .await
        && outcome.is_ok()
    {
        outcome = Err(error);
    }
    feed.shutdown().await;
    outcome
}

/// A publish awaiting JetStream's confirmation, or a source position past everything
/// published before it (a heartbeat).
enum Pending {
    /// Published; the transaction's position (none for parts and shapes).
    Published(PublishAckFuture, Option<Position>),
    /// The source log moved on without a transaction.
    Passed(Position),
}

/// What JetStream confirmed: a position, and whether it is a transaction's (published), or
/// nothing to acknowledge (a part, a shape).
type Confirmed = Result<Option<(Position, bool)>, BusError>;

/// A channel of publishes and one of their confirmations, in order.
/// JetStream's sequence of each stored message goes to `progress`.
fn confirm_in_order(
    progress: Arc<StreamProgress>,
) -> (mpsc::Sender<Pending>, mpsc::Receiver<Confirmed>) {
    let (publishes, mut pending) = mpsc::channel::<Pending>(IN_FLIGHT);
    let (confirm, confirmations) = mpsc::channel(IN_FLIGHT);
    tokio::spawn(async move {
        while let Some(next) = pending.recv().await {
            let confirmed = match next {
                Pending::Passed(position) => Ok(Some((position, false))),
                Pending::Published(future, position) => future
                    .await
                    .map(|ack| {
                        progress.stored(ack.sequence);
                        position.map(|p| (p, true))
                    })
                    .map_err(|e| BusError::jetstream("JetStream did not confirm a publish", e)),
            };
            let failed = confirmed.is_err();
            if confirm.send(confirmed).await.is_err() || failed {
                return;
            }
        }
    });
    (publishes, confirmations)
}

/// Records `published` (the newest transaction JetStream stored), then acknowledges
/// `position` to the source.
#[allow(clippy::too_many_arguments)]
async fn acknowledge(
    state: &Arc<StateStore>,
    site: &str,
    kind: Kind,
    acker: &mut link::Acker,
    feed: &Feed,
    position: Position,
    published: Option<Position>,
    progress: &StreamProgress,
) -> Result<(), BusError> {
    if let Some(published) = &published {
        save(state, published_key_of(site, kind), published.clone()).await?;
    }
    acker.ready = Some(position.clone());
    acker
        .flush(state, feed, true)
        .await
        .map_err(|e| BusError::Link(Box::new(e)))?;
    progress.acknowledged(published.as_ref(), &position);
    Ok(())
}

/// Saves `position` under `key` in the state store.
async fn save(state: &Arc<StateStore>, key: String, position: Position) -> Result<(), BusError> {
    let store = state.clone();
    tokio::task::spawn_blocking(move || store.save_position(&key, &position))
        .await
        .map_err(|panic| BusError::Link(Box::new(LinkError::Crashed(panic.to_string()))))?
        .map_err(|e| BusError::Link(Box::new(LinkError::State(e))))
}
