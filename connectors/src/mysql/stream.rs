//! The MySQL/MariaDB change stream: the row-based binlog, read as a replica would.
//!
//! # Protocol
//!
//! [`MysqlStream::start`] opens two connections. The *catalog* connection reads
//! `SHOW MASTER STATUS` (when starting at the server's current position), `BINLOG_GTID_POS`
//! and information_schema. The *dump* connection sets
//! `@master_binlog_checksum = @@global.binlog_checksum` (events then carry CRC32s, which
//! mysql_async checks), `@mariadb_slave_capability = 4` (MariaDB then sends its real GTID
//! events instead of BEGIN query events) and `@master_heartbeat_period`, registers as a
//! replica with a server id of its own, and asks for the binlog from a file and offset
//! (`COM_BINLOG_DUMP`). From then on the server pushes every event of every transaction in
//! commit order, and a heartbeat whenever it has had nothing to send for the period.
//!
//! A transaction in the binlog is `GTID` (MariaDB) or `BEGIN` (MySQL), then for each statement
//! `TABLE_MAP` events followed by `WRITE/UPDATE/DELETE_ROWS` events that refer to them by table
//! id, then `XID` (transactional engines) or a `COMMIT` query event (others). DDL is a
//! standalone GTID followed by one query event. The reader buffers the row events of the open
//! transaction and emits them, as one [`Transaction`], when its XID/COMMIT arrives; events of
//! tables that are not mapped are skipped without decoding.
//!
//! # Large transactions
//!
//! With [`MysqlStreamConfig::part_events`] set, a transaction whose buffer reaches that many
//! changes (checked after each rows event, so a part may exceed it by one rows event's rows)
//! is delivered in pieces: [`StreamItem::Part`]s with the changes so far (the buffer is
//! emptied each time), then at XID/COMMIT the [`StreamItem::Transaction`] with the rest
//! (possibly none), which ends it. A part's `start` is the binlog position where the
//! transaction's GTID/BEGIN event starts: the stream's position while the transaction is open,
//! which is the end of the previous transaction (or the start of the binlog file after a
//! ROTATE). It is at or after the position of every earlier transaction and before the
//! transaction's own position, which is what an applier needs to tell whether it already holds
//! the transaction (see `crate::apply`). Parts carry no position of their own and are never
//! acknowledged. Until the stream knows its file and offset (after a GTID start, before the
//! first heartbeat or commit) transactions are buffered whole.
//!
//! # Why the order and positions are right
//!
//! The binlog is written in commit order and the server sends it in file order, so emitting
//! each transaction at its commit event yields commit order. A transaction's position is the
//! file plus the commit event's `log_pos`, which is the offset just past that event: a dump
//! requested there starts with the next transaction, so resuming at a delivered position
//! neither repeats nor skips one. Within a file `log_pos` only grows; a ROTATE event moves to
//! the next file, whose name orders after the previous one. The stream checks this and fails
//! rather than ever report a position lower than one it already reported. Heartbeats report
//! the position of the last complete transaction (including ones that touched no mapped
//! table), never a point inside a transaction, so an engine may acknowledge them.
//!
//! The first ROTATE event of a dump is a "fake" one (its `log_pos` is 0) that names the file
//! the dump starts in. It arrives before the format description event, so mysql_common does
//! not yet know that events carry a CRC32 and leaves the 4 checksum bytes on the file name,
//! and its `is_fake()` does not recognise MariaDB's fake rotates. The reader recognises fake
//! rotates by `log_pos == 0` and strips a trailing CRC32 when it verifies.
//!
//! # Echoes
//!
//! duplex's applier runs `SET SESSION skip_replication = 1`, which makes MariaDB flag every
//! event of its transactions with `LOG_EVENT_SKIP_REPLICATION_F` (0x8000). Those transactions
//! come out with [`Origin::Duplex`].
//!
//! The applier also upserts its row of `duplex.positions` (database `duplex`) in every
//! transaction it writes; that row names the batch the transaction carried. With
//! `duplex.positions` listed in [`MysqlStreamConfig::tables`] its changes are delivered as
//! ordinary events, like those of any mapped table, and a transaction that changed only that
//! table is delivered too. The applier creates the table on first use, which may be after the
//! stream started: unlike any other mapped table, `duplex.positions` may be missing at
//! [`MysqlStream::start`]; its columns are then read from information_schema at its first
//! TABLE_MAP event, which follows its creation in the binlog. The table is shared by every
//! database on the server, so the stream delivers the position rows of every applier writing
//! to this server (each row's `source` says whose).
//!
//! # Schema changes
//!
//! Column names, types and keys come from information_schema (cached per table, and per table
//! id for the decoders), checked against every TABLE_MAP event's column types and, with
//! `binlog_row_metadata=FULL`, its column names. An `ALTER TABLE` on a mapped table refreshes
//! the cache: added nullable columns at the end are followed, anything else stops the stream
//! with [`MysqlStreamError::SchemaChanged`]; DROP, RENAME and TRUNCATE of a mapped table stop
//! it too. information_schema shows the table as it is now, not as it was when the ALTER was
//! written: a reader that is behind several DDL statements judges the first by the last, so it
//! may stop where waiting would have been enough; it never follows a change it should not. A
//! TABLE_MAP whose (FULL metadata) names are exactly the leading columns of a newer catalog
//! was written before columns were added at the end: its rows are decoded by those columns.
//! One whose names differ from the catalog's while the columns are as many, of the same binlog
//! types and signedness, was written before (or after) a rename: its rows are decoded by
//! position under the TABLE_MAP's names, so the shape announced shows the rename.
//! With [`MysqlStreamConfig::shapes`] each TABLE_MAP's columns are yielded as a
//! [`StreamItem::Shape`] whenever they differ from the last announced, so the caller judges a
//! rename or retype no statement parsed here saw (DDL in an executable comment, say). A
//! catalog is re-read on a new connection (see `reload_catalog`).
//!
//! # Limits
//!
//! Without [`MysqlStreamConfig::part_events`] transactions are held in memory until their
//! commit; [`MysqlStreamConfig::new`] leaves it unset, the engine sets
//! [`crate::stream::DEFAULT_PART_EVENTS`]. Compressed
//! binlog events (`log_bin_compress`) and MySQL's binary JSON are refused with an error.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use mysql_async::binlog::events::{Event, EventData, QueryEvent, RotateEvent, RowsEventData};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};

use crate::apply::is_positions_table;
use crate::stream::StreamItem;
use crate::{
    ChangeEvent, Op, Origin, Position, Row, TableName, TableShape, Transaction, TransactionPart,
};

use super::ddl::{DdlKind, ddl_targets, drops_partition_rows, executed_text, mentions};
use super::types::{ColumnDecoder, ColumnInfo, decode_row};
use super::{BinlogPosition, MysqlStreamError, connect};

mod config;
mod tables;

pub use config::{MysqlStreamConfig, StartPosition};
use tables::load_catalog;

/// Binlog event type codes the reader acts on.
mod event_type {
    pub const QUERY: u8 = 2;
    pub const ROTATE: u8 = 4;
    pub const XID: u8 = 16;
    pub const TABLE_MAP: u8 = 19;
    pub const WRITE_ROWS_V1: u8 = 23;
    pub const UPDATE_ROWS_V1: u8 = 24;
    pub const DELETE_ROWS_V1: u8 = 25;
    pub const HEARTBEAT: u8 = 27;
    pub const WRITE_ROWS: u8 = 30;
    pub const UPDATE_ROWS: u8 = 31;
    pub const DELETE_ROWS: u8 = 32;
    pub const MYSQL_GTID: u8 = 33;
    pub const MYSQL_ANONYMOUS_GTID: u8 = 34;
    pub const XA_PREPARE: u8 = 38;
    pub const MARIADB_GTID: u8 = 162;
    /// MariaDB's compressed query and rows events (`log_bin_compress`).
    pub const MARIADB_COMPRESSED: std::ops::RangeInclusive<u8> = 165..=172;
}

/// `LOG_EVENT_SKIP_REPLICATION_F`: set on events written with `skip_replication=1`.
const SKIP_REPLICATION_FLAG: u16 = 0x8000;
/// MariaDB GTID event flag: the transaction is a single statement without COMMIT (DDL).
const GTID_STANDALONE: u8 = 1;

/// What information_schema says about a mapped table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TableCatalog {
    columns: Vec<ColumnInfo>,
    primary_key: Vec<String>,
}

/// How to decode the rows of one table id, built from its TABLE_MAP event.
#[derive(Debug)]
struct TableDecoder {
    table: TableName,
    /// The TABLE_MAP body it was built from: a later identical one reuses it.
    table_map: Vec<u8>,
    columns: Vec<ColumnDecoder>,
    /// Primary-key column names, shared with the rows.
    key: Vec<Arc<str>>,
}

/// The transaction being read.
#[derive(Debug, Default)]
struct OpenTransaction {
    /// MariaDB GTID: (domain, server id, sequence number).
    gtid: Option<(u32, u32, u64)>,
    /// A standalone GTID: the next query event is the whole transaction.
    standalone: bool,
    echo: bool,
    events: Vec<ChangeEvent>,
    /// Some of its changes were yielded as parts: the commit ends it even without changes.
    parted: bool,
}

/// A reader of one server's binlog that yields whole transactions of the mapped tables, in
/// commit order, with positions that never move backwards.
///
/// [`MysqlStream::next`] is cancel-safe: an event is consumed only once it is fully handled,
/// so a `next()` future dropped in a `select!` loses nothing. After an error, drop the stream
/// and (for a transient error, after a backoff) start a new one at the last delivered position.
pub struct MysqlStream {
    source: String,
    tables: BTreeSet<TableName>,
    heartbeat: Duration,
    part_events: Option<usize>,
    binlog: BinlogStream,
    catalog_conn: Conn,
    catalogs: HashMap<TableName, Arc<TableCatalog>>,
    /// Per table id: `None` for tables that are not mapped.
    decoders: HashMap<u64, Option<Arc<TableDecoder>>>,
    /// Whether the server writes CRC32 checksums.
    checksums: bool,
    /// The binlog file being read.
    file: String,
    /// End of the last complete transaction.
    position: BinlogPosition,
    /// MariaDB GTID state: domain -> (server id, sequence number).
    gtid_state: BTreeMap<u32, (u32, u64)>,
    /// Whether `position` has a file and offset (false after a GTID start until the first
    /// heartbeat, real rotate or commit).
    located: bool,
    open: Option<OpenTransaction>,
    /// An event read but not yet fully handled (kept across a cancelled `next`).
    pending: Option<Event>,
    last_report: Instant,
    /// The source's URL and password, for a fresh catalog connection.
    url: String,
    password: Option<String>,
    /// [`MysqlStreamConfig::shapes`].
    shapes: bool,
    /// The shape last announced per table (announced again only when it changes).
    announced: HashMap<TableName, TableShape>,
    /// Shapes to yield before the next part or transaction.
    shapes_ready: VecDeque<TableShape>,
    /// A part or transaction waiting for the shapes before it to be yielded.
    held: Option<StreamItem>,
}

impl std::fmt::Debug for MysqlStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlStream")
            .field("source", &self.source)
            .field("position", &self.position)
            .field("tables", &self.tables.len())
            .finish_non_exhaustive()
    }
}

impl MysqlStream {
    /// Connects, checks the mapped tables and asks the server for its binlog from
    /// `config.start`.
    pub async fn start(config: MysqlStreamConfig) -> Result<MysqlStream, MysqlStreamError> {
        let password = config.password.as_deref();
        let mut catalog_conn = connect(&config.url, password).await?;
        let checksum: Option<String> = catalog_conn
            .query_first("SELECT @@global.binlog_checksum")
            .await
            .map_err(MysqlStreamError::setup("reading binlog_checksum"))?;
        let checksums = checksum.is_some_and(|c| !c.eq_ignore_ascii_case("NONE"));
        let connect_state = match &config.start {
            StartPosition::Gtid(gtid) => Some(gtid.clone()),
            _ => None,
        };
        let located = connect_state.is_none();
        let mut position = match config.start {
            StartPosition::At(position) => position,
            StartPosition::Gtid(gtid) => BinlogPosition {
                file: String::new(),
                offset: 0,
                gtid: Some(gtid),
            },
            StartPosition::Current => {
                let status: Option<mysql_async::Row> = catalog_conn
                    .query_first("SHOW MASTER STATUS")
                    .await
                    .map_err(MysqlStreamError::setup("reading SHOW MASTER STATUS"))?;
                let (file, offset) = status
                    .and_then(|mut row| Some((row.take::<String, _>(0)?, row.take::<u64, _>(1)?)))
                    .ok_or(MysqlStreamError::BinlogOff)?;
                BinlogPosition::new(file, offset)
            }
        };
        let gtid_state = match &position.gtid {
            Some(gtid) => parse_gtid_list(gtid),
            None if !located => BTreeMap::new(),
            None => {
                // MariaDB only; MySQL has no BINLOG_GTID_POS and streams without GTIDs.
                let gtid: Option<Option<String>> = catalog_conn
                    .exec_first(
                        "SELECT BINLOG_GTID_POS(?, ?)",
                        (&position.file, position.offset),
                    )
                    .await
                    .ok()
                    .flatten();
                gtid.flatten()
                    .map(|g| parse_gtid_list(&g))
                    .unwrap_or_default()
            }
        };
        position.gtid = gtid_string(&gtid_state);
        let mut catalogs = HashMap::new();
        for table in &config.tables {
            match load_catalog(&mut catalog_conn, table).await {
                Ok(catalog) => {
                    catalogs.insert(table.clone(), Arc::new(catalog));
                }
                // Created by the applier on first use: read at its first TABLE_MAP.
                Err(MysqlStreamError::TableNotFound(_)) if is_positions_table(table) => {
                    tracing::info!(%table, "not created yet; read once it appears in the binlog");
                }
                Err(e) => return Err(e),
            }
        }

        let mut dump_conn = connect(&config.url, password).await?;
        let heartbeat_ns = config.heartbeat.as_nanos().max(1_000_000);
        for (doing, sql) in [
            (
                "setting @master_binlog_checksum",
                "SET @master_binlog_checksum = @@global.binlog_checksum".to_owned(),
            ),
            (
                "setting @mariadb_slave_capability",
                "SET @mariadb_slave_capability = 4".to_owned(),
            ),
            (
                "setting @master_heartbeat_period",
                format!("SET @master_heartbeat_period = {heartbeat_ns}"),
            ),
        ] {
            dump_conn
                .query_drop(sql)
                .await
                .map_err(MysqlStreamError::setup(doing))?;
        }
        let mut request = BinlogStreamRequest::new(config.server_id);
        match &connect_state {
            Some(gtid) => dump_conn
                .exec_drop("SET @slave_connect_state = ?", (gtid,))
                .await
                .map_err(MysqlStreamError::setup("setting @slave_connect_state"))?,
            None => {
                request = request
                    .with_filename(position.file.as_bytes())
                    .with_pos(position.offset);
            }
        }
        let binlog = dump_conn
            .get_binlog_stream(request)
            .await
            .map_err(|e| MysqlStreamError::from_stream(e, &position))?;
        tracing::info!(source = %config.source, %position, server_id = config.server_id, "binlog stream started");
        Ok(MysqlStream {
            source: config.source,
            tables: config.tables,
            heartbeat: config.heartbeat,
            part_events: config.part_events,
            binlog,
            catalog_conn,
            catalogs,
            decoders: HashMap::new(),
            checksums,
            file: position.file.clone(),
            position,
            gtid_state,
            located,
            open: None,
            pending: None,
            last_report: Instant::now(),
            url: config.url.clone(),
            password: config.password.clone(),
            shapes: config.shapes,
            announced: HashMap::new(),
            shapes_ready: VecDeque::new(),
            held: None,
        })
    }

    /// The end of the last complete transaction read (delivered or skipped as unmapped).
    pub fn position(&self) -> &BinlogPosition {
        &self.position
    }

    /// The next whole transaction of the mapped tables, or a heartbeat when the server has been
    /// idle for the heartbeat period (or only changed unmapped tables for that long).
    pub async fn next(&mut self) -> Result<StreamItem, MysqlStreamError> {
        let silence = self.heartbeat * 3;
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
                None => match tokio::time::timeout(silence, self.binlog.next()).await {
                    Err(_) => return Err(MysqlStreamError::HeartbeatTimeout(silence)),
                    Ok(None) => return Err(MysqlStreamError::Ended),
                    Ok(Some(Err(e))) => {
                        return Err(MysqlStreamError::from_stream(e, &self.position));
                    }
                    Ok(Some(Ok(event))) => event,
                },
            };
            // Only TABLE_MAP and query events await (catalog reads), and they change no state
            // before their awaits: keep such an event until it is handled, so that a `next`
            // future dropped during the await handles it again on the next call.
            let kind = event.header().event_type_raw();
            let item = if matches!(kind, event_type::TABLE_MAP | event_type::QUERY) {
                self.pending = Some(event.clone());
                let item = self.handle(&event).await;
                self.pending = None;
                item?
            } else {
                self.handle(&event).await?
            };
            match item {
                None => {}
                Some(item @ StreamItem::Heartbeat(_)) => {
                    self.last_report = Instant::now();
                    return Ok(item);
                }
                // Returned at the top of the loop, after any shape it needs.
                Some(item) => {
                    self.last_report = Instant::now();
                    self.held = Some(item);
                }
            }
        }
    }

    /// Stops reading and closes both connections. Call it between `next` calls: a transaction
    /// not yet delivered is read again by the next stream started at [`MysqlStream::position`].
    pub async fn shutdown(self) {
        if let Err(e) = self.binlog.close().await {
            tracing::debug!(error = %e, "closing the binlog connection");
        }
        if let Err(e) = self.catalog_conn.disconnect().await {
            tracing::debug!(error = %e, "closing the catalog connection");
        }
    }

    async fn handle(&mut self, event: &Event) -> Result<Option<StreamItem>, MysqlStreamError> {
        let header = event.header();
        let kind = header.event_type_raw();
        let echo = header.flags_raw() & SKIP_REPLICATION_FLAG != 0;
        match kind {
            event_type::ROTATE => self.rotate(event)?,
            event_type::HEARTBEAT if self.open.is_none() => {
                if !self.located {
                    // The dump thread sends a heartbeat only once it has sent everything up to
                    // its position, which the header carries: that is where the stream is.
                    if header.log_pos() == 0 || self.file.is_empty() {
                        return Ok(None);
                    }
                    self.position = BinlogPosition {
                        file: self.file.clone(),
                        offset: u64::from(header.log_pos()),
                        gtid: gtid_string(&self.gtid_state),
                    };
                    self.located = true;
                }
                return Ok(Some(StreamItem::Heartbeat(Position::Mysql(
                    self.position.clone(),
                ))));
            }
            event_type::MARIADB_GTID => {
                let data = event.data();
                if data.len() < 13 {
                    return Err(decode_error("GTID", "body shorter than 13 bytes"));
                }
                self.check_no_open_rows()?;
                let seq = u64::from_le_bytes(data[0..8].try_into().unwrap_or_default());
                let domain = u32::from_le_bytes(data[8..12].try_into().unwrap_or_default());
                self.open = Some(OpenTransaction {
                    gtid: Some((domain, header.server_id(), seq)),
                    standalone: data[12] & GTID_STANDALONE != 0,
                    echo,
                    events: Vec::new(),
                    parted: false,
                });
            }
            event_type::MYSQL_GTID | event_type::MYSQL_ANONYMOUS_GTID => {
                self.check_no_open_rows()?;
                self.open = Some(OpenTransaction {
                    echo,
                    ..OpenTransaction::default()
                });
            }
            event_type::QUERY => {
                let query: QueryEvent<'_> = event
                    .read_event()
                    .map_err(|e| decode_error_io("QUERY", e))?;
                let sql = query.query();
                let statement = sql.trim();
                if statement.eq_ignore_ascii_case("BEGIN") {
                    if self.open.is_none() {
                        self.open = Some(OpenTransaction {
                            echo,
                            ..OpenTransaction::default()
                        });
                    }
                } else if statement.eq_ignore_ascii_case("COMMIT") {
                    return self.commit(event);
                } else if statement.eq_ignore_ascii_case("ROLLBACK") {
                    // Logged when a transaction that also changed a non-transactional table
                    // rolls back: its transactional rows never happened. Mapped tables are
                    // InnoDB (`duplex check` requires it), so none of its rows are delivered.
                    if let Some(open) = self.open.as_mut() {
                        if open.parted {
                            return Err(decode_error(
                                "QUERY",
                                "ROLLBACK of a transaction whose rows were already delivered in parts",
                            ));
                        }
                        open.events.clear();
                    }
                    return self.commit(event);
                } else if self.open.as_ref().is_none_or(|t| t.standalone) {
                    self.ddl(statement, &query.schema()).await?;
                    return self.commit(event);
                } else {
                    self.statement_in_transaction(statement, &query.schema())?;
                }
            }
            event_type::XID => return self.commit(event),
            event_type::TABLE_MAP => self.table_map(event).await?,
            event_type::WRITE_ROWS_V1
            | event_type::UPDATE_ROWS_V1
            | event_type::DELETE_ROWS_V1
            | event_type::WRITE_ROWS
            | event_type::UPDATE_ROWS
            | event_type::DELETE_ROWS => return self.rows(event, echo),
            event_type::XA_PREPARE => {
                return Err(MysqlStreamError::Unsupported(
                    "XA transactions (their rows are committed by a later XA COMMIT)",
                ));
            }
            k if event_type::MARIADB_COMPRESSED.contains(&k) => {
                return Err(MysqlStreamError::Unsupported(
                    "compressed binlog events: set log_bin_compress=OFF on the source",
                ));
            }
            _ => {}
        }
        Ok(None)
    }

    /// A new transaction must not start while row events of another are unfinished: that
    /// would drop them.
    fn check_no_open_rows(&self) -> Result<(), MysqlStreamError> {
        match &self.open {
            Some(open) if !open.events.is_empty() || open.parted => Err(decode_error(
                "GTID",
                "a transaction started before the previous one committed",
            )),
            _ => Ok(()),
        }
    }

    /// A ROTATE event names the file the following events belong to. A fake one (log_pos 0)
    /// just tells where the dump starts; a real one ends a file, so the stream's position moves
    /// to the start of the next file (keeping a reader that is idle from holding a purgeable
    /// file).
    fn rotate(&mut self, event: &Event) -> Result<(), MysqlStreamError> {
        let rotate: RotateEvent<'_> = event
            .read_event()
            .map_err(|e| decode_error_io("ROTATE", e))?;
        let header = event.header();
        let mut name = rotate.name_raw().to_vec();
        if header.log_pos() == 0 && self.checksums && has_trailing_crc(event) {
            name.truncate(name.len() - 4);
        }
        let name = String::from_utf8(name)
            .map_err(|_| decode_error("ROTATE", "file name is not UTF-8"))?;
        self.file = name;
        if header.log_pos() != 0 && self.open.is_none() {
            let next = BinlogPosition {
                file: self.file.clone(),
                offset: rotate.position(),
                gtid: self.position.gtid.clone(),
            };
            self.advance(next)?;
            self.located = true;
        }
        Ok(())
    }

    /// Moves the position forward, refusing to move it backwards.
    fn advance(&mut self, next: BinlogPosition) -> Result<(), MysqlStreamError> {
        if next.compare(&self.position).is_ok_and(|o| o.is_lt()) {
            return Err(MysqlStreamError::PositionBackwards {
                from: self.position.clone(),
                to: next,
            });
        }
        self.position = next;
        Ok(())
    }

    /// Ends the open transaction at `event` (XID, COMMIT or a standalone statement).
    fn commit(&mut self, event: &Event) -> Result<Option<StreamItem>, MysqlStreamError> {
        let header = event.header();
        let txn = self.open.take().unwrap_or_default();
        if let Some((domain, server, seq)) = txn.gtid {
            self.gtid_state.insert(domain, (server, seq));
        }
        let position = BinlogPosition {
            file: self.file.clone(),
            offset: u64::from(header.log_pos()),
            gtid: gtid_string(&self.gtid_state),
        };
        self.advance(position)?;
        self.located = true;
        if txn.events.is_empty() && !txn.parted {
            if self.last_report.elapsed() >= self.heartbeat {
                return Ok(Some(StreamItem::Heartbeat(Position::Mysql(
                    self.position.clone(),
                ))));
            }
            return Ok(None);
        }
        let commit_time =
            DateTime::<Utc>::from_timestamp(i64::from(header.timestamp()), 0).unwrap_or_default();
        Ok(Some(StreamItem::Transaction(Transaction {
            source: self.source.clone(),
            position: Position::Mysql(self.position.clone()),
            commit_time,
            origin: if txn.echo || header.flags_raw() & SKIP_REPLICATION_FLAG != 0 {
                Origin::Duplex
            } else {
                Origin::Local
            },
            events: txn.events,
        })))
    }

    /// Decodes a rows event of a mapped table into the open transaction; returns a part when
    /// the buffer is full.
    fn rows(&mut self, event: &Event, echo: bool) -> Result<Option<StreamItem>, MysqlStreamError> {
        let data = event.read_data().map_err(|e| decode_error_io("ROWS", e))?;
        let Some(EventData::RowsEvent(rows)) = data else {
            return Err(decode_error("ROWS", "not a rows event"));
        };
        let decoder = match self.decoders.get(&rows.table_id()) {
            Some(Some(decoder)) => decoder.clone(),
            Some(None) => return Ok(None),
            None => {
                return Err(decode_error(
                    "ROWS",
                    &format!("table id {} has no TABLE_MAP", rows.table_id()),
                ));
            }
        };
        let op = match &rows {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => Op::Insert,
            RowsEventData::UpdateRowsEvent(_)
            | RowsEventData::UpdateRowsEventV1(_)
            | RowsEventData::PartialUpdateRowsEvent(_) => Op::Update,
            RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => Op::Delete,
        };
        let width = rows.num_columns() as usize;
        let before_present = rows.columns_before_image().map(|bits| {
            (0..width)
                .map(|i| bits.get(i).is_some_and(|b| *b))
                .collect::<Vec<bool>>()
        });
        let after_present = rows.columns_after_image().map(|bits| {
            (0..width)
                .map(|i| bits.get(i).is_some_and(|b| *b))
                .collect::<Vec<bool>>()
        });
        let mut buf = rows.rows_data();
        let txn = self.open.get_or_insert_with(OpenTransaction::default);
        txn.echo |= echo;
        let table = &decoder.table;
        while !buf.is_empty() {
            let before = match &before_present {
                Some(p) => Some(decode_row(table, &decoder.columns, p, &mut buf)?),
                None => None,
            };
            let after = match &after_present {
                Some(p) => Some(decode_row(table, &decoder.columns, p, &mut buf)?),
                None => None,
            };
            let identity = before.as_ref().or(after.as_ref());
            let key = identity
                .map(|row| {
                    decoder
                        .key
                        .iter()
                        .filter_map(|k| row.get(k).map(|v| (k.clone(), v.clone())))
                        .collect::<Row>()
                })
                .unwrap_or_default();
            txn.events.push(ChangeEvent {
                table: table.clone(),
                op,
                key,
                before,
                after,
            });
        }
        let full = self
            .part_events
            .is_some_and(|limit| txn.events.len() >= limit);
        if !full || !self.located {
            return Ok(None);
        }
        txn.parted = true;
        Ok(Some(StreamItem::Part(TransactionPart {
            source: self.source.clone(),
            start: Position::Mysql(self.position.clone()),
            origin: if txn.echo {
                Origin::Duplex
            } else {
                Origin::Local
            },
            events: std::mem::take(&mut txn.events),
        })))
    }

    /// Follows DDL on mapped tables. A statement that names a mapped table (in its executed
    /// text: executable comments count) is looked at; whatever it is, the binlog carries no
    /// row events for what it does, so only an `ALTER TABLE` of the table's columns is
    /// followed (the cached definition is refreshed and the next TABLE_MAP is decoded by it).
    /// With [`MysqlStreamConfig::shapes`] the columns the TABLE_MAPs then carry are the
    /// caller's to judge; without, only nullable columns added at the end are followed.
    /// Everything else that names a mapped table stops the stream: DROP, TRUNCATE, RENAME,
    /// CREATE OR REPLACE, partition maintenance, and statements it cannot read.
    async fn ddl(&mut self, statement: &str, schema: &str) -> Result<(), MysqlStreamError> {
        let text = executed_text(statement);
        let Some(named) = self
            .tables
            .iter()
            .find(|t| !is_positions_table(t) && mentions(&text, t, schema))
            .cloned()
        else {
            return Ok(());
        };
        let stop = |table: &TableName| MysqlStreamError::SchemaChanged {
            table: table.clone(),
            statement: statement.chars().take(200).collect(),
        };
        let targets = match ddl_targets(&text, schema) {
            Some((DdlKind::Alter, targets)) if !drops_partition_rows(&text) => targets,
            _ => return Err(stop(&named)),
        };
        let mapped: Vec<TableName> = targets
            .into_iter()
            .filter(|t| self.tables.contains(t))
            .collect();
        for table in mapped {
            let fresh = match self.reload_catalog(&table).await {
                Ok(fresh) => fresh,
                Err(MysqlStreamError::TableNotFound(_)) => return Err(stop(&table)),
                Err(e) => return Err(e),
            };
            if let Some(old) = self.catalogs.get(&table) {
                let compatible = fresh.primary_key == old.primary_key
                    && fresh.columns.len() >= old.columns.len()
                    && fresh.columns[..old.columns.len()] == old.columns[..]
                    && fresh.columns[old.columns.len()..]
                        .iter()
                        .all(|c| c.nullable);
                if !compatible && (!self.shapes || fresh.primary_key != old.primary_key) {
                    return Err(stop(&table));
                }
                tracing::info!(%table, "a mapped table was altered; decoding its rows by its new definition");
            }
            // Else not decoded yet in this session (started between the last commit and this
            // ALTER): the next TABLE_MAP is checked against the catalog.
            self.catalogs.insert(table.clone(), Arc::new(fresh));
            self.decoders
                .retain(|_, d| d.as_ref().is_none_or(|d| d.table != table));
        }
        Ok(())
    }

    /// A statement logged as text inside a transaction (statement-format DML): its row changes
    /// are not in the binlog, so one that names a mapped table stops the stream.
    fn statement_in_transaction(
        &self,
        statement: &str,
        schema: &str,
    ) -> Result<(), MysqlStreamError> {
        let text = executed_text(statement);
        match self
            .tables
            .iter()
            .find(|t| !is_positions_table(t) && mentions(&text, t, schema))
        {
            Some(table) => Err(MysqlStreamError::StatementLogged {
                table: table.clone(),
                statement: statement.chars().take(200).collect(),
            }),
            None => Ok(()),
        }
    }
}

/// Whether the last 4 bytes of an event body are the CRC32 of the header and the rest.
fn has_trailing_crc(event: &Event) -> bool {
    let data = event.data();
    let Some(split) = data.len().checked_sub(4) else {
        return false;
    };
    let header = event.header();
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header.timestamp().to_le_bytes());
    hasher.update(&[header.event_type_raw()]);
    hasher.update(&header.server_id().to_le_bytes());
    hasher.update(&header.event_size().to_le_bytes());
    hasher.update(&header.log_pos().to_le_bytes());
    hasher.update(&header.flags_raw().to_le_bytes());
    hasher.update(&data[..split]);
    hasher.finalize().to_le_bytes() == data[split..]
}

/// `0-1-14,1-2-7` into domain -> (server, seq).
fn parse_gtid_list(list: &str) -> BTreeMap<u32, (u32, u64)> {
    list.split(',')
        .filter_map(|gtid| {
            let mut parts = gtid.trim().splitn(3, '-');
            let domain = parts.next()?.parse().ok()?;
            let server = parts.next()?.parse().ok()?;
            let seq = parts.next()?.parse().ok()?;
            Some((domain, (server, seq)))
        })
        .collect()
}

/// The MariaDB GTID position (`gtid_slave_pos` syntax) of a state, `None` when empty.
fn gtid_string(state: &BTreeMap<u32, (u32, u64)>) -> Option<String> {
    (!state.is_empty()).then(|| {
        state
            .iter()
            .map(|(d, (s, n))| format!("{d}-{s}-{n}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn decode_error(what: &str, detail: &str) -> MysqlStreamError {
    MysqlStreamError::Decode {
        what: what.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, detail.to_owned()),
    }
}

fn decode_error_io(what: &str, source: std::io::Error) -> MysqlStreamError {
    MysqlStreamError::Decode {
        what: what.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
