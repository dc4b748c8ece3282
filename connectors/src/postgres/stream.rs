//! The PostgreSQL change stream: a publication plus a logical replication slot using the
//! built-in `pgoutput` plugin, streamed over the replication protocol and turned into whole
//! canonical [`Transaction`]s.
//!
//! # Protocol
//!
//! [`PgStream::start`] uses an ordinary connection to make sure the publication lists exactly
//! the mapped tables (`CREATE PUBLICATION … FOR TABLE` or `ALTER PUBLICATION … SET TABLE`;
//! plus `duplex.positions` with [`PgStreamConfig::echo_marker`], see [Echoes](#echoes))
//! and that the slot exists (`pg_create_logical_replication_slot(slot, 'pgoutput')`), then
//! opens a `replication=database` session through `pgwire-replication` and sends
//! `START_REPLICATION SLOT s LOGICAL <lsn> (proto_version '1', publication_names 'p')`.
//! The session pins how values are printed ([`super::types::SESSION_OPTIONS`]: ISO dates, UTC
//! time zone, hex bytea).
//!
//! The server decodes its WAL in commit order and sends each committed transaction as
//! `Begin`, changes, `Commit`, never interleaved (protocol version 1 does not stream
//! in-progress transactions). Changes refer to tables by relation id; a `Relation` message
//! describing the table's columns precedes the first change of each table in the session and
//! is sent again whenever the table's definition changed, so the relation cache here is
//! replaced on every `Relation` message (that is how an added column shows up; with
//! [`PgStreamConfig::shapes`] a changed column list or type is also yielded as a
//! [`StreamItem::Shape`] before the part or transaction holding the changes). Values are
//! converted by [`super::types`]; the primary key of each relation is read once from the
//! catalog ([`super::describe_table`]).
//!
//! # Ordering, positions and acknowledgement
//!
//! Every item [`PgStream::next`] yields carries a position, and positions never move
//! backwards:
//!
//! - [`StreamItem::Transaction`]: a transaction, its position the commit's end LSN. Changes
//!   are buffered from `Begin` to `Commit` and yielded at `Commit`; transactions are yielded
//!   in the order the server sends them, which is commit order.
//! - [`StreamItem::Part`]: with [`PgStreamConfig::part_events`] set, a transaction whose
//!   buffer reaches that many changes is yielded in pieces: each time the buffer is full, a
//!   part with the changes so far (the buffer is emptied), and at `Commit` the
//!   [`StreamItem::Transaction`] with the remaining changes (possibly none), which ends it.
//!   Every part carries the transaction's start, the LSN of its commit record (`Begin`'s
//!   `final_lsn`): at or after the end LSN of every earlier transaction and before the
//!   transaction's own end LSN, which is what an applier needs to tell whether it already
//!   holds the transaction (see `crate::apply`). Parts have no position of their own and are
//!   never acknowledged; they do not move [`PgStream::delivered`].
//! - [`StreamItem::Heartbeat`]: no transaction is open and the server has sent everything up
//!   to this LSN (a keepalive, or a transaction that touched none of the published tables).
//!   Acknowledging it lets a source whose mapped tables are idle release WAL, while other
//!   tables are written. It is the same rule PostgreSQL's own subscriber applies: with no
//!   transaction pending, the flush position is the last position received.
//!
//! On resume from position `P` the server skips every transaction whose commit record starts
//! before `P`. A commit's end LSN is past its own commit record and at or before the next
//! commit record, so resuming from the end LSN of the last transaction every target committed
//! delivers exactly the transactions after it: none repeated, none skipped. A transaction
//! whose end LSN is not past the newest position already yielded is dropped, so positions
//! stay monotonic even if the server repeats itself.
//!
//! [`PgStream::ack`] reports a position as flushed and applied; the slot's
//! `confirmed_flush_lsn` follows it and WAL before it may be removed. The caller passes only
//! positions of items this stream yielded that every target has committed. The standby status
//! updates themselves, including answers to keepalives that request a reply, are sent by
//! `pgwire-replication`'s background task whether or not the caller is polling, so a slow
//! consumer is never disconnected by `wal_sender_timeout`.
//!
//! # Memory
//!
//! Without [`PgStreamConfig::part_events`] a transaction is held in memory from `Begin` to
//! `Commit`, so a huge transaction needs memory in proportion to its size; with it the stream
//! holds at most that many changes (plus the replication buffer) whatever the transaction's
//! size. [`PgStreamConfig::new`] leaves it unset (whole transactions, as the stream always
//! delivered); the engine sets [`crate::stream::DEFAULT_PART_EVENTS`].
//!
//! # Dead connections
//!
//! A silent network partition or a frozen server sends no error: a read would wait forever.
//! So the replication session asks for a reply: whenever a third of
//! [`PgStreamConfig::inactivity_timeout`] passes without a message, the standby status update
//! it sends has the reply-requested byte set, and a live walsender answers it at once with a
//! keepalive (`ProcessStandbyReplyMessage`), even while it is busy decoding (it reads its
//! socket between WAL records). A healthy session therefore delivers some message at least
//! every third of the timeout; when none at all arrived for the whole timeout,
//! [`PgStream::next`] fails with [`PgStreamError::Silent`], which is transient: the caller
//! restarts from its last acknowledged position as after any broken connection, and the
//! exactly-once appliers make the restart neither lose nor repeat a transaction. Catalog
//! queries made while handling a message get the same limit. The caller's own pace does not
//! count: the time is measured from the last message received, and messages buffered while
//! the caller was busy are taken first. MySQL/MariaDB does the same with heartbeats of a
//! third of the same timeout (see `crate::mysql::stream`).
//!
//! One silence is legitimate: the server replays a committed transaction when it decodes its
//! commit, and while it replays a large one whose changes the publication filters out it sends
//! nothing and leaves the requested replies unanswered (seen on PostgreSQL 15 for a 3M-row
//! insert into another table). A restarted stream meets the same silence again, so callers
//! give each restart after a silence twice the timeout ([`crate::stream::SilenceTimeout`]).
//!
//! # Echoes
//!
//! duplex's applier (`super::apply`) writes every batch in one transaction that also upserts
//! the batch's row of `duplex.positions`, and nothing else writes that table. With
//! [`PgStreamConfig::echo_marker`] set, [`PgStream::start`] creates `duplex.positions` if it
//! is missing ([`super::POSITIONS_DDL`]) and adds it to the publication, so its changes are
//! decoded like those of a mapped table. A transaction is delivered with [`Origin::Duplex`]
//! iff it changed a row of `duplex.positions`: pgoutput sends every published change of a
//! transaction before its `Commit`, so at the commit the stream knows. The positions changes
//! stay in [`Transaction::events`] as ordinary events (the row names the outbox batch the
//! transaction carried), and a transaction that changed only `duplex.positions` is delivered
//! as a transaction, not a heartbeat. Parts are delivered before the commit, when the origin
//! is not yet known, so the flag cannot be combined with [`PgStreamConfig::part_events`].
//! Changes of `duplex.positions` before the publication listed it (the first start with the
//! flag) are not decoded: the server reads the publication as of each change's WAL position.
//! Creating the table needs CREATE on the database, unless the applier or a DBA created it
//! first; publishing it needs ownership of it, as for every mapped table.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use pgwire_replication::{ReplicationClient, ReplicationEvent};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::apply::{is_positions_table, positions_table};
use crate::stream::StreamItem;
use crate::{
    ChangeEvent, Op, Origin, Position, Row, ShapeColumn, TableName, TableShape, Transaction,
    TransactionPart, Value,
};

use super::pgoutput::{self, Message, OldTuple, Relation, TupleData, TupleValue};
use super::slot::{
    ensure_publication, ensure_slot, published_tables, replication_config, table_oids,
};
use super::types::{self, PgType};
use super::{Lsn, PgError, connect, describe_table};

mod config;
mod error;

pub use config::PgStreamConfig;
pub use error::PgStreamError;

/// Microseconds from the Unix epoch to PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// How often a stream checks that its mapped tables are still the ones it started with.
const TABLE_CHECK_EVERY: Duration = Duration::from_secs(5);

/// A table as the current `Relation` message describes it.
struct RelationEntry {
    table: TableName,
    columns: Vec<Arc<str>>,
    types: Vec<PgType>,
    /// Whether each column is part of the replica identity (carried by `K` old tuples).
    identity: Vec<bool>,
    /// Positions of the primary-key columns, in key order.
    key: Vec<usize>,
}

/// The transaction between `Begin` and `Commit`.
struct OpenTransaction {
    final_lsn: u64,
    events: Vec<ChangeEvent>,
    /// Already delivered before (its commit LSN is before [`PgStream::delivered`]): its
    /// changes are dropped.
    repeated: bool,
    /// Some of its changes were yielded as parts: the commit ends it even without changes.
    parted: bool,
    /// It changed `duplex.positions` (only noted with [`PgStreamConfig::echo_marker`]).
    echo: bool,
}

/// A PostgreSQL change stream reader. See the module documentation for the contract.
pub struct PgStream {
    replication: ReplicationClient,
    catalog: Client,
    source: String,
    relations: HashMap<u32, RelationEntry>,
    primary_keys: HashMap<u32, Vec<String>>,
    types: HashMap<u32, PgType>,
    open: Option<OpenTransaction>,
    part_events: Option<usize>,
    /// [`PgStreamConfig::echo_marker`].
    echo_marker: bool,
    /// The newest position yielded (the start position before the first item).
    delivered: Lsn,
    /// An event taken from the channel whose handling has not finished (so a cancelled
    /// `next` loses nothing).
    pending: Option<ReplicationEvent>,
    /// [`PgStreamConfig::shapes`].
    shapes: bool,
    /// The shape last announced per table (announced again only when it changes).
    announced: HashMap<TableName, TableShape>,
    /// Shapes to yield before the next part or transaction.
    shapes_ready: VecDeque<TableShape>,
    /// A part or transaction waiting for the shapes before it to be yielded.
    held: Option<StreamItem>,
    /// The mapped tables' oids when the stream started.
    table_ids: HashMap<TableName, u32>,
    /// Mapped tables the publication did not list when the stream started (it existed).
    unpublished: Vec<TableName>,
    /// The publication.
    publication: String,
    /// When the mapped tables were last checked against the catalog.
    checked: tokio::time::Instant,
    /// [`PgStreamConfig::inactivity_timeout`].
    inactivity: Duration,
    /// When the last message arrived from the server (or the stream started).
    heard: tokio::time::Instant,
}

impl std::fmt::Debug for PgStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStream")
            .field("source", &self.source)
            .field("delivered", &self.delivered)
            .field("relations", &self.relations.len())
            .finish_non_exhaustive()
    }
}

impl PgStream {
    /// Sets up the publication and slot and starts streaming from `config.start` (or the
    /// slot's confirmed position). Returns once the server accepted START_REPLICATION.
    pub async fn start(config: PgStreamConfig) -> Result<PgStream, PgStreamError> {
        config.validate()?;
        let catalog = connect(&config.url, config.password.as_deref()).await?;
        for table in &config.tables {
            if describe_table(&catalog, table).await?.is_none() {
                return Err(PgStreamError::TableMissing(table.clone()));
            }
        }
        let mut published = config.tables.clone();
        if config.echo_marker {
            super::positions::ensure_table(&catalog).await?;
            if !published.contains(&positions_table()) {
                published.push(positions_table());
            }
        }
        if let Some(deployment) = &config.deployment {
            if let Some(from) = &config.take_over_from {
                super::claim::take_over(&catalog, &config.publication, deployment, from).await?;
            }
            super::claim::check(&catalog, &config.publication, deployment).await?;
        }
        let table_ids = table_oids(&catalog, &config.tables).await?;
        let unpublished = match published_tables(&catalog, &config.publication).await? {
            Some(listed) => config
                .tables
                .iter()
                .filter(|t| !listed.contains(t))
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        ensure_publication(&catalog, &config.publication, &published).await?;
        if let Some(deployment) = &config.deployment {
            super::claim::record(&catalog, &config.publication, deployment).await?;
        }
        // Resuming from a position needs the slot that position belongs to: a new slot would
        // silently skip everything committed since.
        let confirmed = ensure_slot(&catalog, &config.slot, config.start.is_none()).await?;
        if let (Some(start), Some(acknowledged)) = (config.start, config.acknowledged) {
            // duplex never confirms beyond what it acknowledged (recorded before it is sent),
            // nor beyond what its targets hold: a slot further on was re-created or advanced by
            // someone else, and the changes in between are gone from it.
            let limit = start.max(acknowledged);
            if confirmed > limit {
                return Err(PgStreamError::SlotLost {
                    name: config.slot.clone(),
                    problem: format!(
                        "its confirmed position {confirmed} is beyond every position duplex confirmed to it ({limit}; the targets hold {start}): it was dropped and re-created, or advanced, outside duplex, and the changes committed between {start} and {confirmed} can no longer be read from it, so the mapped tables must be copied again; until then duplex refuses the slot. (If instead duplex's state directory was restored from an older backup, the slot is duplex's own: start once with `duplex run --trust-slot <site>`)"
                    ),
                });
            }
        }
        let start = config.start.unwrap_or(confirmed);

        // Until the caller acknowledges, only what the slot already holds is reported as
        // flushed (never `start`, which may be past another reader's position).
        let ack = start.min(confirmed);
        let mut replication = ReplicationClient::connect(replication_config(&config, start, ack)?)
            .await
            .map_err(PgStreamError::Replication)?;
        replication
            .wait_started()
            .await
            .map_err(PgStreamError::Replication)?;
        tracing::info!(
            source = %config.source,
            slot = %config.slot,
            %start,
            echo_marker = config.echo_marker,
            "PostgreSQL change stream started"
        );
        Ok(PgStream {
            replication,
            catalog,
            source: config.source,
            relations: HashMap::new(),
            primary_keys: HashMap::new(),
            types: HashMap::new(),
            open: None,
            part_events: config.part_events,
            echo_marker: config.echo_marker,
            delivered: start,
            pending: None,
            shapes: config.shapes,
            announced: HashMap::new(),
            shapes_ready: VecDeque::new(),
            held: None,
            table_ids: table_ids
                .into_iter()
                .filter_map(|(table, id)| Some((table, id?)))
                .collect(),
            unpublished,
            publication: config.publication,
            checked: tokio::time::Instant::now(),
            inactivity: config.inactivity_timeout,
            heard: tokio::time::Instant::now(),
        })
    }

    /// The next whole transaction or heartbeat. Cancellation safe: a future dropped before
    /// it completes loses nothing, the next call continues where it stopped. After an error
    /// the stream is unusable: shut it down and start again from the last acknowledged
    /// position (after a backoff when [`PgStreamError::is_transient`]).
    pub async fn next(&mut self) -> Result<StreamItem, PgStreamError> {
        loop {
            if let Some(item) = self.held.take() {
                // Shapes come before the changes that have them.
                if let Some(shape) = self.shapes_ready.pop_front() {
                    self.held = Some(item);
                    return Ok(StreamItem::Shape(shape));
                }
                return Ok(item);
            }
            let event = match self.pending.take() {
                Some(event) => event,
                None => {
                    // Measured from the last message, not from this call: a caller that
                    // polls in a select loop restarts its calls often. Buffered events are
                    // taken first, so a caller that was busy is not misled.
                    let received = tokio::time::timeout_at(
                        self.heard + self.inactivity,
                        self.replication.recv(),
                    )
                    .await
                    .map_err(|_| PgStreamError::Silent {
                        what: "replication connection",
                        after: self.inactivity,
                    })?;
                    let event = received
                        .map_err(PgStreamError::Replication)?
                        .ok_or(PgStreamError::Ended)?;
                    self.heard = tokio::time::Instant::now();
                    event
                }
            };
            self.pending = Some(event.clone());
            // Handling reads the catalog at times (tables, types, the table check): a catalog
            // connection to a dead server must not hang the stream either.
            let item = tokio::time::timeout(self.inactivity, self.handle(event))
                .await
                .map_err(|_| PgStreamError::Silent {
                    what: "catalog connection",
                    after: self.inactivity,
                })?;
            self.pending = None;
            match item? {
                None => {}
                Some(item @ StreamItem::Heartbeat(_)) => return Ok(item),
                // Returned at the top of the loop, after any shape it needs.
                Some(item) => self.held = Some(item),
            }
        }
    }

    /// Reports `lsn` to the server as flushed and applied, letting it release the WAL
    /// before it. Pass only the position of an item this stream yielded whose transaction
    /// (and everything before it) every target has committed. A position beyond what was
    /// yielded is a caller's bug, since confirming it could let the server skip a transaction
    /// no target has: debug builds panic, release builds ignore it with a warning. Cheap: the
    /// background task sends it within `status_interval`.
    pub fn ack(&self, lsn: Lsn) {
        debug_assert!(
            lsn <= self.delivered,
            "acknowledgement {lsn} beyond the delivered position {}",
            self.delivered
        );
        if lsn > self.delivered {
            tracing::warn!(%lsn, delivered = %self.delivered, "ignoring an acknowledgement beyond the delivered position");
            return;
        }
        self.replication
            .update_applied_lsn(pgwire_replication::Lsn(lsn.0));
    }

    /// The mapped tables' oids when the stream started.
    pub fn table_ids(&self) -> &HashMap<TableName, u32> {
        &self.table_ids
    }

    /// Mapped tables the publication did not list when the stream started (it existed then;
    /// the stream added them): changes made to them before are not in the stream.
    pub fn unpublished(&self) -> &[TableName] {
        &self.unpublished
    }

    /// Checks that every mapped table is still the one the stream started with and still in
    /// the publication.
    async fn check_tables(&mut self) -> Result<(), PgStreamError> {
        let tables: Vec<TableName> = self.table_ids.keys().cloned().collect();
        let now = table_oids(&self.catalog, &tables).await?;
        let listed = published_tables(&self.catalog, &self.publication)
            .await?
            .unwrap_or_default();
        for (table, id) in now {
            let what = match id {
                None => "was dropped".to_owned(),
                Some(id) if Some(&id) != self.table_ids.get(&table) => {
                    "was dropped and re-created".to_owned()
                }
                Some(_) if !listed.contains(&table) => {
                    format!("was removed from publication {}", self.publication)
                }
                Some(_) => continue,
            };
            return Err(PgStreamError::TableReplaced { table, what });
        }
        self.checked = tokio::time::Instant::now();
        Ok(())
    }

    /// The newest position yielded (the start position before the first item).
    pub fn delivered(&self) -> Lsn {
        self.delivered
    }

    /// Ends the replication session cleanly (CopyDone). An open transaction is dropped; it
    /// is delivered again after a restart, since it was never acknowledged.
    pub async fn shutdown(mut self) -> Result<(), PgStreamError> {
        // A dead connection may never answer: the session is then dropped without CopyDone
        // (the server ends it on its own wal_sender_timeout, or at once when it notices).
        match tokio::time::timeout(self.inactivity, self.replication.shutdown()).await {
            Ok(result) => result.map_err(PgStreamError::Replication),
            Err(_) => {
                self.replication.abort();
                Err(PgStreamError::Silent {
                    what: "replication connection",
                    after: self.inactivity,
                })
            }
        }
    }

    /// Drops a replication slot, waiting (up to `wait`) for a session that still holds it
    /// to let go. Returns false when there was no such slot. An abandoned slot keeps WAL
    /// forever, so whoever retires a source drops its slot.
    pub async fn drop_slot(
        url: &str,
        password: Option<&str>,
        slot: &str,
        wait: Duration,
    ) -> Result<bool, PgStreamError> {
        let client = connect(url, password).await?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let row = client
                .query_opt(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                    &[&slot],
                )
                .await
                .map_err(PgError::query("looking up a replication slot"))?;
            let Some(row) = row else {
                return Ok(false);
            };
            let active: bool = row.get(0);
            let in_use = if active {
                true
            } else {
                match client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                {
                    Ok(_) => return Ok(true),
                    Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) => true,
                    Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => return Ok(false),
                    Err(e) => {
                        return Err(PgError::query("dropping a replication slot")(e).into());
                    }
                }
            };
            if in_use && tokio::time::Instant::now() >= deadline {
                return Err(PgStreamError::Slot {
                    name: slot.to_owned(),
                    problem: "still in use by another session; stop that reader first".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn handle(
        &mut self,
        event: ReplicationEvent,
    ) -> Result<Option<StreamItem>, PgStreamError> {
        if self.checked.elapsed() >= TABLE_CHECK_EVERY {
            self.check_tables().await?;
        }
        match event {
            ReplicationEvent::KeepAlive { wal_end, .. } => Ok(self.heartbeat(Lsn(wal_end.0))),
            ReplicationEvent::Begin { final_lsn, .. } => {
                self.begin(final_lsn.0)?;
                Ok(None)
            }
            ReplicationEvent::Commit {
                lsn,
                end_lsn,
                commit_time_micros,
            } => self.commit(lsn.0, end_lsn.0, commit_time_micros),
            ReplicationEvent::Message { prefix, .. } => {
                tracing::trace!(%prefix, "ignoring a logical decoding message");
                Ok(None)
            }
            ReplicationEvent::StoppedAt { .. } => Err(PgStreamError::Ended),
            ReplicationEvent::XLogData { data, .. } => match pgoutput::decode(&data)? {
                Message::Begin(b) => {
                    self.begin(b.final_lsn)?;
                    Ok(None)
                }
                Message::Commit(c) => self.commit(c.commit_lsn, c.end_lsn, c.commit_time),
                Message::Relation(relation) => {
                    self.register(relation).await?;
                    Ok(None)
                }
                Message::Origin(_) | Message::Type(_) | Message::Message(_) => Ok(None),
                Message::Insert(insert) => {
                    let rel = self.relation(insert.relation)?;
                    let after = rel.row(&insert.new, false)?;
                    let event = ChangeEvent {
                        table: rel.table.clone(),
                        op: Op::Insert,
                        key: rel.key_row(&after)?,
                        before: None,
                        after: Some(after),
                    };
                    self.push(event)
                }
                Message::Update(update) => {
                    let rel = self.relation(update.relation)?;
                    let after = rel.row(&update.new, false)?;
                    let before = match &update.old {
                        Some(OldTuple::Key(t)) => rel.row(t, true)?,
                        Some(OldTuple::Full(t)) => rel.row(t, false)?,
                        // No old tuple: the key did not change, and the WAL carries nothing
                        // else of the old row.
                        None => rel.key_row(&after)?,
                    };
                    let event = ChangeEvent {
                        table: rel.table.clone(),
                        op: Op::Update,
                        key: rel.key_row(&before)?,
                        before: Some(before),
                        after: Some(after),
                    };
                    self.push(event)
                }
                Message::Delete(delete) => {
                    let rel = self.relation(delete.relation)?;
                    let before = match &delete.old {
                        OldTuple::Key(t) => rel.row(t, true)?,
                        OldTuple::Full(t) => rel.row(t, false)?,
                    };
                    let event = ChangeEvent {
                        table: rel.table.clone(),
                        op: Op::Delete,
                        key: rel.key_row(&before)?,
                        before: Some(before),
                        after: None,
                    };
                    self.push(event)
                }
                Message::Truncate(truncate) => {
                    let tables = truncate
                        .relations
                        .iter()
                        .map(|id| match self.relations.get(id) {
                            Some(rel) => rel.table.to_string(),
                            None => format!("relation {id}"),
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    Err(PgStreamError::Truncate {
                        tables,
                        commit_lsn: Lsn(self.open.as_ref().map_or(0, |t| t.final_lsn)),
                    })
                }
            },
        }
    }

    fn heartbeat(&mut self, lsn: Lsn) -> Option<StreamItem> {
        if self.open.is_some() || lsn <= self.delivered {
            return None;
        }
        self.delivered = lsn;
        Some(StreamItem::Heartbeat(Position::Postgres(lsn)))
    }

    fn begin(&mut self, final_lsn: u64) -> Result<(), PgStreamError> {
        if let Some(open) = &self.open {
            return Err(PgStreamError::Protocol(format!(
                "Begin of the transaction committing at {} inside the one committing at {}",
                Lsn(final_lsn),
                Lsn(open.final_lsn)
            )));
        }
        self.open = Some(OpenTransaction {
            final_lsn,
            events: Vec::new(),
            repeated: Lsn(final_lsn) < self.delivered,
            parted: false,
            echo: false,
        });
        Ok(())
    }

    fn commit(
        &mut self,
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    ) -> Result<Option<StreamItem>, PgStreamError> {
        let open = self.open.take().ok_or_else(|| {
            PgStreamError::Protocol(format!("Commit at {} without Begin", Lsn(commit_lsn)))
        })?;
        if open.final_lsn != commit_lsn {
            return Err(PgStreamError::Protocol(format!(
                "Commit at {} for the transaction announced to commit at {}",
                Lsn(commit_lsn),
                Lsn(open.final_lsn)
            )));
        }
        let end = Lsn(end_lsn);
        if open.repeated || end <= self.delivered {
            tracing::debug!(%end, delivered = %self.delivered, "skipping a transaction already delivered");
            return Ok(None);
        }
        if open.events.is_empty() && !open.parted {
            return Ok(self.heartbeat(end));
        }
        self.delivered = end;
        let commit_time =
            DateTime::<Utc>::from_timestamp_micros(commit_time.saturating_add(PG_EPOCH_MICROS))
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
        Ok(Some(StreamItem::Transaction(Transaction {
            source: self.source.clone(),
            position: Position::Postgres(end),
            commit_time,
            origin: if open.echo {
                Origin::Duplex
            } else {
                Origin::Local
            },
            events: open.events,
        })))
    }

    fn push(&mut self, event: ChangeEvent) -> Result<Option<StreamItem>, PgStreamError> {
        let open = self.open.as_mut().ok_or_else(|| {
            PgStreamError::Protocol(format!("a change of {} outside a transaction", event.table))
        })?;
        if open.repeated {
            return Ok(None);
        }
        if self.echo_marker && is_positions_table(&event.table) {
            open.echo = true;
        }
        open.events.push(event);
        if self
            .part_events
            .is_none_or(|limit| open.events.len() < limit)
        {
            return Ok(None);
        }
        open.parted = true;
        Ok(Some(StreamItem::Part(TransactionPart {
            source: self.source.clone(),
            start: Position::Postgres(Lsn(open.final_lsn)),
            origin: Origin::Local,
            events: std::mem::take(&mut open.events),
        })))
    }

    fn relation(&self, id: u32) -> Result<&RelationEntry, PgStreamError> {
        self.relations.get(&id).ok_or_else(|| {
            PgStreamError::Protocol(format!(
                "a change of relation {id} before its Relation message"
            ))
        })
    }

    /// Replaces the cached description of a relation. Everything awaited here only fills
    /// caches, so a cancelled call can simply be repeated.
    async fn register(&mut self, relation: Relation) -> Result<(), PgStreamError> {
        let schema = if relation.namespace.is_empty() {
            "pg_catalog".to_owned()
        } else {
            relation.namespace.clone()
        };
        let table = TableName::new(schema, relation.name.clone());
        if !self.primary_keys.contains_key(&relation.id) {
            let primary_key = match describe_table(&self.catalog, &table).await? {
                Some(info) if !info.schema.primary_key.is_empty() => info.schema.primary_key,
                // Renamed or dropped since: the replica identity is the primary key unless
                // the table uses FULL or an index.
                None if relation.replica_identity == b'd' => relation
                    .columns
                    .iter()
                    .filter(|c| c.key)
                    .map(|c| c.name.clone())
                    .collect(),
                _ => Vec::new(),
            };
            if primary_key.is_empty() {
                return Err(PgStreamError::NoPrimaryKey(table));
            }
            self.primary_keys.insert(relation.id, primary_key);
        }
        let mut column_types = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            let ty = match self.types.get(&column.type_oid) {
                Some(ty) => ty.clone(),
                None => {
                    let ty = types::resolve_type(&self.catalog, column.type_oid).await?;
                    self.types.insert(column.type_oid, ty.clone());
                    ty
                }
            };
            column_types.push(ty);
        }
        let primary_key = &self.primary_keys[&relation.id];
        let key = primary_key
            .iter()
            .map(|name| {
                relation
                    .columns
                    .iter()
                    .position(|c| &c.name == name)
                    .ok_or_else(|| PgStreamError::KeyNotCarried {
                        table: table.clone(),
                        column: name.clone(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(%table, id = relation.id, columns = relation.columns.len(), "relation");
        if self.shapes && !is_positions_table(&table) {
            let shape = TableShape {
                table: table.clone(),
                columns: relation
                    .columns
                    .iter()
                    .zip(&column_types)
                    .map(|(column, ty)| ShapeColumn {
                        name: column.name.clone(),
                        type_name: ty.name.clone(),
                    })
                    .collect(),
            };
            if self.announced.get(&table) != Some(&shape) {
                self.announced.insert(table.clone(), shape.clone());
                self.shapes_ready.push_back(shape);
            }
        }
        self.relations.insert(
            relation.id,
            RelationEntry {
                table,
                columns: relation
                    .columns
                    .iter()
                    .map(|c| Arc::from(c.name.as_str()))
                    .collect(),
                types: column_types,
                identity: relation.columns.iter().map(|c| c.key).collect(),
                key,
            },
        );
        Ok(())
    }
}

impl RelationEntry {
    /// A tuple as a row; with `identity_only` just the replica identity columns (a `K` tuple
    /// carries nothing else).
    fn row(&self, tuple: &TupleData, identity_only: bool) -> Result<Row, PgStreamError> {
        if tuple.len() != self.columns.len() {
            return Err(PgStreamError::Protocol(format!(
                "a row of {} with {} columns; its Relation message has {}",
                self.table,
                tuple.len(),
                self.columns.len()
            )));
        }
        let mut row = Row::with_capacity(if identity_only {
            self.key.len()
        } else {
            self.columns.len()
        });
        for (i, value) in tuple.iter().enumerate() {
            if identity_only && !self.identity[i] {
                continue;
            }
            let converted =
                types::column_value(&self.columns[i], &self.types[i], value).map_err(|source| {
                    PgStreamError::Value {
                        table: self.table.clone(),
                        key: self.describe_key(tuple),
                        source: Box::new(source),
                    }
                })?;
            row.push(self.columns[i].clone(), converted);
        }
        Ok(row)
    }

    /// The primary key of a tuple as `(a, b)=(1, x)` (the log's text of each key column), for
    /// messages.
    fn describe_key(&self, tuple: &TupleData) -> String {
        let names: Vec<&str> = self.key.iter().map(|&k| &*self.columns[k]).collect();
        let values: Vec<String> = self
            .key
            .iter()
            .map(|&k| match tuple.get(k) {
                Some(TupleValue::Text(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
                Some(TupleValue::Null) => "NULL".to_owned(),
                _ => "?".to_owned(),
            })
            .collect();
        format!("({})=({})", names.join(", "), values.join(", "))
    }

    /// The primary-key columns of `row`, which must carry them.
    fn key_row(&self, row: &Row) -> Result<Row, PgStreamError> {
        let mut key = Row::with_capacity(self.key.len());
        for &i in &self.key {
            let name = &self.columns[i];
            match row.get(name) {
                Some(value) if !matches!(value, Value::Null | Value::Unchanged) => {
                    key.push(name.clone(), value.clone());
                }
                _ => {
                    return Err(PgStreamError::KeyNotCarried {
                        table: self.table.clone(),
                        column: name.to_string(),
                    });
                }
            }
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests;
