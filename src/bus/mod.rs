//! Scale-out on NATS JetStream: `duplex run --role reader` reads each source once and publishes
//! its transactions to a JetStream stream; `duplex run --role writer --site S` applies them to
//! target S, on any machine. JetStream is the replicated log; duplex adds no cluster protocol.
//!
//! # What is published
//!
//! One stream per source site, `<stream_prefix>_<site>`, subject `<stream_prefix>.<site>`.
//! Each message is one [`Envelope`] encoded through the state store's codec: a transaction, a
//! part of a large transaction (with the number of the transaction's changes before it), or a
//! table shape the source log announced, together with `previous`, the position of the last
//! transaction published before it. `Nats-Msg-Id` is the deployment, the source position and,
//! for a part, its offset: a re-publish after a crash inside the stream's duplicate window is
//! dropped by JetStream.
//!
//! # Reader: nothing acknowledged before JetStream stored it
//!
//! The reader acknowledges a source position (PostgreSQL slot flushed, MariaDB position
//! recorded) only after JetStream confirmed storing every message up to it (the publish ack),
//! and records that position in its state store first. On start it reads the stream's last
//! message: the source is read from the last transaction published, and a transaction at or
//! before it is not published again, so positions along the stream never go backwards. When
//! the stream holds nothing the reader uses the position it recorded; a stream that was
//! emptied (purged, or everything aged out) while the reader's state is gone too is a stop
//! naming `duplex backfill --resync`: nothing could tell the writers what they missed.
//!
//! # Writer: the target's own record decides
//!
//! A writer is an ordinary link (`crate::link`) whose feed is the stream instead of the
//! source: the same workers, appliers, refusals and shape checks. Exactly once rests on the
//! same record as in one process: each target transaction records the *source position* of
//! what it applied in `duplex.positions`, under a key that names the bus
//! (`<site>@bus-<stream_prefix>`), not one writer's state directory, so any writer on any
//! machine reads the same record. The source position rather than the stream sequence: a
//! transaction published twice (a re-publish outside the duplicate window, a stream
//! re-created) has two sequences but one position, and the applier skips a position the
//! target already holds, so it is not applied twice.
//!
//! On start the writer reads the target's position `p` and starts its durable consumer at
//! the first message whose `previous` is at or past `p` (messages are ordered by `previous`,
//! so a binary search by sequence finds it); the consumer's own acknowledgement state is not
//! trusted (it may have been deleted, or the target restored from a backup). When that first
//! message says the transaction before it is past `p`, the transactions in between were
//! dropped by the stream's retention: the writer stops, naming `duplex backfill`. So does a
//! later message that follows a transaction past the last one delivered: the consumer skips
//! what the limits removed while the writer was reading (a writer paused or slow), and every
//! message is checked against the one before it for that reason. Messages
//! are acknowledged to JetStream (ack-all) once the target committed them. A part received
//! twice (re-published outside the duplicate window) is trimmed by its offset.
//!
//! # One writer per target: a lease
//!
//! Writers of one target take a lease in the key-value bucket `<stream_prefix>_leases` (key:
//! the target site) whose entries expire after `lease_ttl` unless renewed. A second writer
//! waits and takes over when the first stops renewing. The lease is for efficiency, not for
//! correctness: two writers overlapping briefly (a paused holder) both read the target's
//! position row under a lock in their target transaction, so the second skips what the
//! first committed.
//!
//! # What `status` and `/metrics` show
//!
//! Per stream and per target's consumer: pending messages, lag and the lease holder, read
//! from JetStream itself (`backlog`), so any machine with the configuration can ask. A role
//! process also serves the control socket in its state directory, as a one-process `run`
//! does, and answers with its own progress (`progress`): a reader what JetStream confirmed
//! storing and what it acknowledged to each source, a writer its lease and what its target
//! applied of each stream.
//!
//! # The merge engine on the bus: readers publish, one coordinator decides
//!
//! `run --role reader` also reads every site of a two-way mapping exactly as the merge
//! engine's in-process reader does (`StreamOptions::merge`: its two-way tables plus the
//! `duplex.positions` echo markers, whole transactions, claimed for the reader's deployment)
//! and publishes it to `<stream_prefix>-merge_<site>` (subject `<stream_prefix>.merge.<site>`)
//! with the same guarantees as a one-way stream: the site is acknowledged only after
//! JetStream stored, the message id is the deployment and the position. The name differs from
//! every one-way stream `<stream_prefix>_<site>` at the character after the prefix, so a site
//! read one way and later two-way (or the reverse) never mixes both kinds of items in a stream;
//! and its subject from every one-way subject of any prefix (see [`Bus::merge_subject`]).
//!
//! `run --role coordinator` runs the merge engine (`crate::engine`) with each site's reader
//! fed by [`BusFeed::start_merge`] instead of the site: the same items, from just after the
//! position the engine's state store committed with its last batch (binary search by
//! `previous`, as a writer's feed; the durable consumer `coordinator` is re-created at every
//! start and its acknowledgements are not trusted). A message whose `previous` is past that
//! position (or, later, past the last transaction delivered) means the stream's retention dropped what the coordinator had not decided: a
//! stop ([`BusError::MergeRetention`]). The first message a merge reader ever publishes to a
//! stream carries, as its `previous`, where the reader started reading the site (the slot's
//! confirmed position, the binlog position): a coordinator that decided less of the site than
//! that stops the same way, instead of skipping what no stream holds (a replaced reader state
//! directory, a switch from a one-process engine that read another slot). Everything else —
//! batches committed in one state-store transaction, the outbox, echoes, claims, conditional
//! writes — is the engine's, unchanged, except where its writes go: the coordinator publishes
//! each site's outbox entries, after the state-store transaction that made them committed, to
//! the site's outbox stream `<stream_prefix>-outbox_<site>` (subject
//! `<stream_prefix>.outbox.<site>`), and `run --role writer --site S` applies them to S under
//! the site's lease, next to the one-way links into S (see [`outbox`] and
//! `crate::engine::remote`). A writer down for a while no longer holds the coordinator up: its
//! entries wait in the stream.
//!
//! The coordinator stays one process: it is the only task that decides, and its state store
//! orders every decision (row versions, conflict records, outbox numbers and every site's
//! read position commit together). Splitting it would need that order across processes,
//! which is what the engine's start refuses (the sites hold another engine's writes; the
//! claims in `duplex.claims`): a second coordinator with another state directory stops at
//! start, before it opens a stream.

use std::cmp::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use duplex_connectors::{Position, PositionError, TableShape, Transaction, TransactionPart};
use serde::{Deserialize, Serialize};

use crate::config::BusConfig;

pub mod backlog;
mod feed;
pub(crate) mod identity;
mod lease;
pub(crate) mod outbox;
pub mod progress;
mod reader;
mod role;
pub mod teardown;

pub use feed::BusFeed;
pub use role::{Role, run_role};

/// How long JetStream drops a message whose `Nats-Msg-Id` it already stored.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why a bus role stopped or retries.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Connecting to the NATS server failed.
    #[error("connecting to the bus at {url}")]
    Connect {
        /// The server.
        url: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A JetStream request failed.
    #[error("{what}")]
    JetStream {
        /// What was asked.
        what: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A message could not be encoded or decoded.
    #[error("message {sequence} of stream {stream} cannot be decoded")]
    Codec {
        /// The stream.
        stream: String,
        /// The sequence.
        sequence: u64,
        /// Cause.
        #[source]
        source: duplex_state::CodecError,
    },
    /// Positions of a stream that cannot be ordered.
    #[error("positions in stream {stream} cannot be compared")]
    Position {
        /// The stream.
        stream: String,
        /// Cause.
        #[source]
        source: PositionError,
    },
    /// The stream's retention dropped messages the target has not applied.
    #[error(
        "stream {stream} no longer holds what site {target} needs: it holds up to {held}, and the stream's oldest message follows {previous}; the transactions in between were dropped by the stream's retention (max_age / max_bytes). Copy the mappings into {target} again with `duplex backfill --resync --from {source_site}` (with the writer of {target} stopped), then start the writer again"
    )]
    Retention {
        /// The stream.
        stream: String,
        /// The source site.
        source_site: String,
        /// The target site.
        target: String,
        /// What the target holds.
        held: String,
        /// The transaction before the stream's oldest message.
        previous: Box<Position>,
    },
    /// The stream lost what the reader published and nothing records what that was.
    #[error(
        "stream {stream} was emptied (purged, or re-created) and this reader's state directory has no record of what it published: writers cannot tell what they missed. Copy the mappings again with `duplex backfill --resync --from {source_site}`, then start the reader"
    )]
    Emptied {
        /// The stream.
        stream: String,
        /// The source site.
        source_site: String,
    },
    /// The merge engine's stream of a site dropped what the coordinator has not decided.
    #[error(
        "stream {stream} no longer holds what the merge engine needs of site {site}: the coordinator decided up to {held}, and the stream's oldest message follows {previous}; the transactions in between are not in the stream: dropped by its retention (max_age / max_bytes), or never published (the reader started reading the site after them: a new reader state directory, or a switch from a one-process run), so the sites can no longer be merged from the bus (`duplex backfill --resync` is for one-way mappings and does not apply). Start the two-way mappings over, as after a lost state directory: with the coordinator stopped, delete the merge:<site> rows from duplex.positions and duplex.claims on every site, move the coordinator's state directory away, and copy the mappings again from the site whose rows are to be kept into the others, their tables emptied first (`duplex backfill --from <site>`); then start the coordinator. Raise max_age / max_bytes of [bus] so a stopped coordinator has time to come back"
    )]
    MergeRetention {
        /// The stream.
        stream: String,
        /// The site read.
        site: String,
        /// What the coordinator committed.
        held: String,
        /// The transaction before the stream's oldest message.
        previous: Box<Position>,
    },
    /// A stream of duplex's name that carries other subjects.
    #[error(
        "JetStream stream {stream} exists with subjects [{subjects}], not {subject}: it was made by something else (or another duplex with the same stream_prefix); choose another bus.stream_prefix or remove that stream"
    )]
    Foreign {
        /// The stream.
        stream: String,
        /// Its subjects.
        subjects: String,
        /// The subject duplex publishes on.
        subject: String,
    },
    /// `--role coordinator` without two-way mappings.
    #[error(
        "--role coordinator runs the merge engine of two-way mappings, and the configuration has none"
    )]
    NoMergeMapping,
    /// The merge engine stopped.
    #[error(transparent)]
    Engine(Box<crate::engine::EngineError>),
    /// A message is larger than the NATS server accepts.
    #[error(
        "a message for stream {stream} is larger than the NATS server's max_payload ({detail}): raise max_payload in the nats-server configuration (e.g. `max_payload: 8MB`; the reader sends large source transactions in parts of up to 10,000 changes), restart it, then start the reader again"
    )]
    TooLarge {
        /// The stream.
        stream: String,
        /// What the client said.
        detail: String,
    },
    /// Parts of a large transaction arrived out of order (a bug or a stream edited by hand).
    #[error("stream {stream}: {what}")]
    Parts {
        /// The stream.
        stream: String,
        /// What is wrong.
        what: String,
    },
    /// Another writer took this writer's lease.
    #[error(
        "the lease of site {site} was taken by {holder} (this writer stopped renewing it in time)"
    )]
    LeaseLost {
        /// The target site.
        site: String,
        /// Who holds it now.
        holder: String,
    },
    /// `--role writer --site S` where no mapping writes into S.
    #[error(
        "no mapping writes into site {site}: give --site a target of a one-way mapping or a site of a two-way mapping"
    )]
    NoMapping {
        /// The site.
        site: String,
    },
    /// The reader's source stream failed.
    #[error(transparent)]
    Link(Box<crate::link::LinkError>),
    /// An outbox stream lacks writes a site needs (dropped by the stream's retention).
    #[error(
        "stream {stream} no longer holds the merge engine's writes {from} to {to} for site {site} (the site holds up to {held}): they were dropped by the stream's retention (max_age / max_bytes) while this writer was away. Restart the coordinator (`duplex run --role coordinator`): at its start it publishes again every write a site lacks, from its state directory. This writer tries again meanwhile and goes on by itself once the stream holds them. Raise max_age / max_bytes of [bus] so a stopped writer has time to come back"
    )]
    OutboxGap {
        /// The stream.
        stream: String,
        /// The site written.
        site: String,
        /// The last write the site holds.
        held: u64,
        /// The first write missing.
        from: u64,
        /// The last write missing.
        to: u64,
    },
    /// Something else appended to an outbox stream while this coordinator published to it.
    #[error(
        "another process published into stream {stream} while this coordinator did (JetStream refused a write that expected the stream's last message to be this coordinator's): two coordinators of these two-way mappings are running; the one whose claim on the sites was taken over stops at its restart"
    )]
    OutboxRace {
        /// The stream.
        stream: String,
    },
}

impl BusError {
    /// True when retrying after a backoff may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            // A gap is filled by the coordinator's next start: the writer waits for it.
            BusError::Connect { .. }
            | BusError::JetStream { .. }
            | BusError::OutboxRace { .. }
            | BusError::OutboxGap { .. } => true,
            BusError::Link(error) => error.is_transient(),
            _ => false,
        }
    }

    fn jetstream(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> BusError {
        BusError::JetStream {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// Which of a site's streams: what one-way links read, or what the merge engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The one-way mappings' tables, in parts.
    OneWay,
    /// The two-way mappings' tables and `duplex.positions`, whole transactions.
    Merge,
}

/// One message on a stream.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    /// The position of the last transaction published before this message.
    pub(crate) previous: Option<Position>,
    /// Changes of this message's transaction published before it (in parts); 0 for a
    /// whole transaction, a first part and a shape.
    pub(crate) offset: u64,
    /// What it carries.
    pub(crate) item: BusItem,
}

/// What a message carries.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum BusItem {
    /// A whole transaction (or the final piece of a large one).
    Transaction(Transaction),
    /// A part of a large transaction.
    Part(TransactionPart),
    /// A mapped table's columns as the source log announced them.
    Shape(TableShape),
}

/// A connected bus.
#[derive(Clone)]
pub struct Bus {
    /// JetStream.
    pub(crate) context: jetstream::Context,
    /// The configuration.
    pub(crate) config: BusConfig,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("url", &self.config.url)
            .finish()
    }
}

impl Bus {
    /// Connects to the NATS server of `config`.
    pub async fn connect(config: &BusConfig) -> Result<Bus, BusError> {
        let failed = |source: Box<dyn std::error::Error + Send + Sync>| BusError::Connect {
            url: config.url.clone(),
            source,
        };
        let mut options = async_nats::ConnectOptions::new()
            .name("duplex")
            .connection_timeout(Duration::from_secs(5));
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.expose().to_owned());
        }
        if let Some(file) = &config.creds_file {
            options = options
                .credentials_file(file)
                .await
                .map_err(|e| failed(Box::new(e)))?;
        }
        if let Some(ca) = &config.tls_ca_file {
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        let client = options
            .connect(config.url.as_str())
            .await
            .map_err(|e| failed(Box::new(e)))?;
        Ok(Bus {
            context: jetstream::new(client),
            config: config.clone(),
        })
    }

    /// The stream of `site`'s transactions.
    pub fn stream_name(&self, site: &str) -> String {
        format!("{}_{}", self.config.stream_prefix, site)
    }

    /// The subject `site`'s transactions are published on.
    pub fn subject(&self, site: &str) -> String {
        format!("{}.{}", self.config.stream_prefix, site)
    }

    /// The stream of `site`'s transactions as the merge engine reads them (its two-way
    /// tables and the echo markers): `<prefix>-merge_<site>`, which no one-way stream
    /// `<prefix>_<site>` of the same prefix can be (they differ at the character after the
    /// prefix).
    pub fn merge_stream_name(&self, site: &str) -> String {
        format!("{}-merge_{}", self.config.stream_prefix, site)
    }

    /// The subject of [`Bus::merge_stream_name`]: `<prefix>.merge.<site>`, three tokens where
    /// a one-way subject `<prefix>.<site>` has two (neither prefix nor site may hold a `.`).
    /// So a merge stream can never carry the subject of a one-way stream of another
    /// deployment on the same server, even where the stream names meet (prefix `shop`, site
    /// `erp`, two-way, and prefix `shop-merge`, site `erp`, one-way, both name
    /// `shop-merge_erp`): the second to come finds the stream's subjects are not its own and
    /// stops ([`BusError::Foreign`]) instead of mixing the two deployments' items.
    pub fn merge_subject(&self, site: &str) -> String {
        format!("{}.merge.{}", self.config.stream_prefix, site)
    }

    /// The stream of the merge engine's writes for `site` (its outbox, see `outbox`):
    /// `<prefix>-outbox_<site>`.
    pub fn outbox_stream_name(&self, site: &str) -> String {
        format!("{}-outbox_{}", self.config.stream_prefix, site)
    }

    /// The subject of [`Bus::outbox_stream_name`]: `<prefix>.outbox.<site>`, three tokens like
    /// a merge subject, whose middle token differs (see [`Bus::merge_subject`]).
    pub fn outbox_subject(&self, site: &str) -> String {
        format!("{}.outbox.{}", self.config.stream_prefix, site)
    }

    /// The stream `name` of `kind` for `site`.
    pub(crate) fn names(&self, site: &str, kind: Kind) -> (String, String) {
        match kind {
            Kind::OneWay => (self.stream_name(site), self.subject(site)),
            Kind::Merge => (self.merge_stream_name(site), self.merge_subject(site)),
        }
    }

    /// The key `duplex.positions` records a source's progress under on targets of this bus.
    pub fn deployment(&self) -> String {
        self.config.deployment()
    }

    /// The stream of `site` of `kind`, created with the configured retention when missing;
    /// with `apply_limits` (the reader) an existing stream's retention is brought in line
    /// with `[bus]`. A stream of that name on other subjects (made by something else) is
    /// refused.
    pub(crate) async fn stream_of(
        &self,
        site: &str,
        kind: Kind,
        apply_limits: bool,
    ) -> Result<stream::Stream, BusError> {
        let (name, subject) = self.names(site, kind);
        self.stream_named(name, subject, apply_limits).await
    }

    /// The stream `name` on `subject`, as [`Bus::stream_of`] says.
    pub(crate) async fn stream_named(
        &self,
        name: String,
        subject: String,
        apply_limits: bool,
    ) -> Result<stream::Stream, BusError> {
        // JetStream refuses a duplicate window longer than the messages are kept.
        let duplicate_window = self
            .config
            .max_age
            .map_or(DUPLICATE_WINDOW, |age| age.min(DUPLICATE_WINDOW));
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            max_age: self.config.max_age.unwrap_or_default(),
            max_bytes: self.config.max_bytes.unwrap_or(-1),
            duplicate_window,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let stream = self
            .context
            .get_or_create_stream(config.clone())
            .await
            .map_err(|e| BusError::jetstream(format!("opening stream {name}"), e))?;
        let current = &stream.cached_info().config;
        if current.subjects != [subject.clone()] {
            return Err(BusError::Foreign {
                stream: name,
                subjects: current.subjects.join(", "),
                subject,
            });
        }
        if apply_limits
            && (current.max_age != config.max_age
                || current.max_bytes != config.max_bytes
                || current.duplicate_window != config.duplicate_window)
        {
            let mut wanted = current.clone();
            wanted.max_age = config.max_age;
            wanted.max_bytes = config.max_bytes;
            wanted.duplicate_window = config.duplicate_window;
            self.context.update_stream(&wanted).await.map_err(|e| {
                BusError::jetstream(
                    format!("applying the retention of [bus] to stream {name}"),
                    e,
                )
            })?;
            tracing::info!(stream = %name, "applied the retention limits of [bus] to the stream");
        }
        Ok(stream)
    }

    /// The message `sequence` of `stream`, decoded as `M` (an [`Envelope`], or an outbox
    /// stream's message).
    pub(crate) async fn message<M: serde::de::DeserializeOwned>(
        stream: &stream::Stream,
        name: &str,
        sequence: u64,
    ) -> Result<M, BusError> {
        let message = stream.get_raw_message(sequence).await.map_err(|e| {
            BusError::jetstream(format!("reading message {sequence} of stream {name}"), e)
        })?;
        decode(name, sequence, &message.payload)
    }
}

impl Envelope {
    /// Whether a target holding `held` needs this message: a transaction past it, a part of
    /// one (whose start is not before it, see [`TransactionPart::start`]), a shape announced
    /// after it. False, then true along a stream.
    pub(crate) fn needed(&self, held: &Position) -> Result<bool, PositionError> {
        let (position, when) = match &self.item {
            BusItem::Transaction(tx) => (&tx.position, Ordering::Greater),
            BusItem::Part(part) => (&part.start, Ordering::Equal),
            BusItem::Shape(_) => match &self.previous {
                Some(previous) => (previous, Ordering::Equal),
                None => return Ok(false),
            },
        };
        Ok(position.compare(held)? >= when)
    }
}

/// Decodes message `sequence` of `stream`.
pub(crate) fn decode<M: serde::de::DeserializeOwned>(
    stream: &str,
    sequence: u64,
    payload: &[u8],
) -> Result<M, BusError> {
    duplex_state::codec::decode(payload).map_err(|source| BusError::Codec {
        stream: stream.to_owned(),
        sequence,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use duplex_connectors::Origin;

    fn at(n: u64) -> Position {
        Position::Outbox(n)
    }

    fn transaction(position: u64, previous: Option<u64>) -> Envelope {
        Envelope {
            previous: previous.map(at),
            offset: 0,
            item: BusItem::Transaction(Transaction {
                source: "store".into(),
                position: at(position),
                commit_time: chrono::DateTime::UNIX_EPOCH,
                origin: Origin::Local,
                events: Vec::new(),
            }),
        }
    }

    fn part(start: u64, previous: Option<u64>, offset: u64) -> Envelope {
        Envelope {
            previous: previous.map(at),
            offset,
            item: BusItem::Part(TransactionPart {
                source: "store".into(),
                start: at(start),
                origin: Origin::Local,
                events: Vec::new(),
            }),
        }
    }

    #[test]
    fn a_target_needs_what_follows_its_position_and_nothing_before() {
        // Transaction at 10, a large one starting at 12 in two parts with its final piece at
        // 20, a transaction at 30.
        let stream = [
            transaction(10, None),
            part(12, Some(10), 0),
            part(12, Some(10), 5),
            transaction(20, Some(10)),
            transaction(30, Some(20)),
        ];
        let needed = |held: u64| -> Vec<bool> {
            stream
                .iter()
                .map(|m| m.needed(&at(held)).unwrap())
                .collect()
        };
        assert_eq!(needed(10), [false, true, true, true, true]);
        // A backfill's snapshot between transactions: the large one started after it.
        assert_eq!(needed(11), [false, true, true, true, true]);
        // The snapshot at the large transaction's start: it is not held (start is not before).
        assert_eq!(needed(12), [false, true, true, true, true]);
        assert_eq!(needed(20), [false, false, false, false, true]);
        assert_eq!(needed(30), [false; 5]);
        // False, then true along the stream, for every position: the binary search holds.
        for held in 0..40 {
            let flags = needed(held);
            assert!(flags.windows(2).all(|w| w[0] <= w[1]), "{held}: {flags:?}");
        }
    }

    #[test]
    fn an_envelope_survives_the_codec() {
        let envelope = part(12, Some(10), 5);
        let bytes = duplex_state::codec::encode(&envelope).unwrap();
        let back: Envelope = decode("s", 1, &bytes).unwrap();
        assert_eq!(back.previous, Some(at(10)));
        assert_eq!(back.offset, 5);
        assert!(matches!(back.item, BusItem::Part(p) if p.start == at(12)));
    }
}
