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
use mysql_async::binlog::events::{
    Event, EventData, OptionalMetadataField, QueryEvent, RotateEvent, RowsEventData, TableMapEvent,
};
use mysql_async::prelude::Queryable;
use mysql_async::{BinlogStream, BinlogStreamRequest, Conn};

use crate::apply::is_positions_table;
use crate::stream::StreamItem;
use crate::{
    ChangeEvent, Op, Origin, Position, Row, ShapeColumn, TableName, TableShape, Transaction,
    TransactionPart,
};

use super::ddl::{DdlKind, ddl_targets, drops_partition_rows, executed_text, mentions};
use super::types::{ColumnDecoder, ColumnInfo, decode_row};
use super::{BinlogPosition, MysqlError, MysqlStreamError, connect, describe_table};

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

/// Where a stream starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPosition {
    /// The server's current binlog position (`SHOW MASTER STATUS`): only changes committed
    /// after the start are read.
    Current,
    /// Just after a position an earlier stream reported (a transaction's end), by file and
    /// offset.
    At(BinlogPosition),
    /// Just after a MariaDB GTID position (`0-1-14,1-2-7`, the `gtid` of a reported position),
    /// the MariaDB way (`SET @slave_connect_state`): it survives the source's binlog files being
    /// renamed or a failover to a replica with the same GTIDs. The file and offset are learnt
    /// from the stream: [`MysqlStream::position`] has an empty file until the first heartbeat
    /// or transaction.
    Gtid(String),
}

/// How to connect and what to read.
#[derive(Debug, Clone)]
pub struct MysqlStreamConfig {
    /// The site name put into each [`Transaction::source`].
    pub source: String,
    /// `mysql://user@host:port/database` of a user with REPLICATION SLAVE and BINLOG MONITOR
    /// (MariaDB) / REPLICATION CLIENT (MySQL) and SELECT on information_schema.
    pub url: String,
    /// Overrides any password in the URL.
    pub password: Option<String>,
    /// The replica server id to register with; must differ from every server's and every
    /// other replica's id (a second replica with the same id disconnects the first).
    pub server_id: u32,
    /// Where to start.
    pub start: StartPosition,
    /// The tables whose changes are emitted (`database.table`). Each must exist at start,
    /// except `duplex.positions` (see the module docs on echoes).
    pub tables: BTreeSet<TableName>,
    /// How often an idle server sends a heartbeat; a silence of three periods is an error.
    pub heartbeat: Duration,
    /// Deliver a transaction in [`StreamItem::Part`]s of about this many changes once it has
    /// that many; `None` buffers every transaction whole until its commit.
    pub part_events: Option<usize>,
    /// Yield [`StreamItem::Shape`]s (see the contract in [`crate::stream`]).
    pub shapes: bool,
}

impl MysqlStreamConfig {
    /// A configuration starting at the server's current position, with a random replica server
    /// id and a 5 s heartbeat.
    pub fn new(
        source: impl Into<String>,
        url: impl Into<String>,
        tables: impl IntoIterator<Item = TableName>,
    ) -> MysqlStreamConfig {
        MysqlStreamConfig {
            source: source.into(),
            url: url.into(),
            password: None,
            server_id: random_server_id(),
            start: StartPosition::Current,
            tables: tables.into_iter().collect(),
            heartbeat: Duration::from_secs(5),
            part_events: None,
            shapes: false,
        }
    }
}

/// A replica server id from 2^30 to 2^32-1, unlikely to meet a DBA's own ids.
fn random_server_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    (hasher.finish() as u32) | 0x4000_0000
}

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

    /// Builds (or reuses) the decoder for a TABLE_MAP's table id.
    async fn table_map(&mut self, event: &Event) -> Result<(), MysqlStreamError> {
        let tme: TableMapEvent<'_> = event
            .read_event()
            .map_err(|e| decode_error_io("TABLE_MAP", e))?;
        let table_id = tme.table_id();
        if let Some(Some(decoder)) = self.decoders.get(&table_id)
            && decoder.table_map == event.data()
        {
            return Ok(());
        }
        let table = TableName::new(tme.database_name(), tme.table_name());
        if !self.tables.contains(&table) {
            self.decoders.insert(table_id, None);
            return Ok(());
        }
        let mut layout = Vec::with_capacity(tme.columns_count() as usize);
        for i in 0..tme.columns_count() as usize {
            let column_type = tme
                .get_raw_column_type(i)
                .map_err(|e| decode_error("TABLE_MAP", &format!("column {i}: {e}")))?
                .ok_or_else(|| decode_error("TABLE_MAP", "column type missing"))?;
            let meta = tme.get_column_metadata(i).unwrap_or_default().to_vec();
            layout.push((column_type as u8, meta));
        }
        let names = full_metadata_names(&tme);
        let catalog = match self.catalogs.get(&table) {
            Some(catalog) if fits(catalog, &layout, names.as_deref()) => catalog.clone(),
            _ => {
                let fresh = Arc::new(self.reload_catalog(&table).await?);
                if let Some(older) = names
                    .as_deref()
                    .and_then(|names| leading_columns(&fresh, names))
                {
                    // Rows written before columns were added at the end (the catalog is
                    // newer than this part of the binlog): decoded by the columns they have.
                    Arc::new(older)
                } else if let Some(renamed) = names.as_deref().and_then(|names| {
                    renamed_columns(&fresh, &layout, names, full_metadata_signedness(&tme))
                }) {
                    // The same columns (by position, binlog type and signedness) under the
                    // names they had when these rows were written: decoded by the log's own
                    // names, so the shape they announce shows the rename to the caller.
                    Arc::new(renamed)
                } else if !fits(&fresh, &layout, names.as_deref()) {
                    return Err(MysqlStreamError::SchemaMismatch {
                        table,
                        detail: format!(
                            "{} columns{} in the binlog, {} in information_schema",
                            layout.len(),
                            names
                                .map(|n| format!(" ({})", n.join(", ")))
                                .unwrap_or_default(),
                            fresh.columns.len()
                        ),
                    });
                } else {
                    fresh
                }
            }
        };
        let columns = catalog
            .columns
            .iter()
            .zip(&layout)
            .map(|(info, (code, meta))| ColumnDecoder::new(&table, info, *code, meta))
            .collect::<Result<Vec<_>, _>>()?;
        let key = catalog
            .primary_key
            .iter()
            .filter_map(|k| columns.iter().find(|c| &**c.name() == k))
            .map(|c| c.name().clone())
            .collect();
        if self.shapes && !is_positions_table(&table) {
            // The columns as this TABLE_MAP has them: its types, and with
            // `binlog_row_metadata=FULL` its names, were checked against the catalog above.
            let shape = TableShape {
                table: table.clone(),
                columns: catalog
                    .columns
                    .iter()
                    .map(|c| ShapeColumn {
                        name: c.name.clone(),
                        type_name: if c.unsigned {
                            format!("{} unsigned", c.data_type)
                        } else {
                            c.data_type.clone()
                        },
                    })
                    .collect(),
            };
            if self.announced.get(&table) != Some(&shape) {
                self.announced.insert(table.clone(), shape.clone());
                self.shapes_ready.push_back(shape);
            }
        }
        self.catalogs.insert(table.clone(), catalog);
        self.decoders.insert(
            table_id,
            Some(Arc::new(TableDecoder {
                table,
                table_map: event.data().to_vec(),
                columns,
                key,
            })),
        );
        Ok(())
    }

    /// Reads a mapped table's definition again, on a new catalog connection: on MariaDB 10.11 a
    /// prepared information_schema statement cached on the old connection, executed again
    /// after DDL changed the table, failed every time ("can't parse: buf doesn't have enough
    /// data").
    async fn reload_catalog(
        &mut self,
        table: &TableName,
    ) -> Result<TableCatalog, MysqlStreamError> {
        let mut conn = connect(&self.url, self.password.as_deref()).await?;
        let catalog = load_catalog(&mut conn, table).await?;
        let old = std::mem::replace(&mut self.catalog_conn, conn);
        tokio::spawn(async move {
            let _ = old.disconnect().await;
        });
        Ok(catalog)
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

/// Whether a catalog fits a TABLE_MAP's column count and (with FULL metadata) names.
fn fits(catalog: &TableCatalog, layout: &[(u8, Vec<u8>)], names: Option<&[String]>) -> bool {
    catalog.columns.len() == layout.len()
        && names.is_none_or(|names| {
            names.len() == catalog.columns.len()
                && names
                    .iter()
                    .zip(&catalog.columns)
                    .all(|(n, c)| *n == c.name)
        })
}

/// The catalog cut to a TABLE_MAP's columns when those (by their names from
/// `binlog_row_metadata=FULL`) are exactly its leading columns, fewer than all, and hold the
/// primary key: the TABLE_MAP was written before the others were added. The caller still
/// checks each column's type against the TABLE_MAP's.
fn leading_columns(catalog: &TableCatalog, names: &[String]) -> Option<TableCatalog> {
    let n = names.len();
    if n == 0 || n >= catalog.columns.len() {
        return None;
    }
    let leading = &catalog.columns[..n];
    if !names.iter().zip(leading).all(|(name, c)| *name == c.name) {
        return None;
    }
    if !catalog
        .primary_key
        .iter()
        .all(|k| leading.iter().any(|c| c.name == *k))
    {
        return None;
    }
    Some(TableCatalog {
        columns: leading.to_vec(),
        primary_key: catalog.primary_key.clone(),
    })
}

/// The catalog under the TABLE_MAP's column names, when those differ from today's but the
/// columns are otherwise the same: as many, each of the binlog type the catalog's type is
/// written as (checked again by the column decoders) and, where FULL metadata gives it, of the
/// same signedness. The rows were written before columns were renamed (or after, by a reader
/// whose catalog is older): their bytes decode by the types, which the log itself carries, and
/// the names are the log's, so the shape announced for them shows the rename and the caller
/// judges it. The primary key is named by position.
fn renamed_columns(
    catalog: &TableCatalog,
    layout: &[(u8, Vec<u8>)],
    names: &[String],
    signedness: Option<Vec<bool>>,
) -> Option<TableCatalog> {
    if names.len() != catalog.columns.len() || layout.len() != names.len() {
        return None;
    }
    if let Some(signedness) = signedness {
        let numeric: Vec<&ColumnInfo> = catalog
            .columns
            .iter()
            .zip(layout)
            .filter(|(_, (code, _))| is_numeric_code(*code))
            .map(|(c, _)| c)
            .collect();
        // One bit per numeric column, padded to whole bytes.
        if signedness.len() < numeric.len()
            || signedness.len() >= numeric.len() + 8
            || numeric
                .iter()
                .zip(&signedness)
                .any(|(c, unsigned)| c.unsigned != *unsigned)
        {
            return None;
        }
    }
    let columns: Vec<ColumnInfo> = catalog
        .columns
        .iter()
        .zip(names)
        .map(|(c, name)| ColumnInfo {
            name: name.clone(),
            ..c.clone()
        })
        .collect();
    let primary_key = catalog
        .primary_key
        .iter()
        .map(|k| {
            let i = catalog.columns.iter().position(|c| c.name == *k)?;
            Some(names[i].clone())
        })
        .collect::<Option<Vec<_>>>()?;
    Some(TableCatalog {
        columns,
        primary_key,
    })
}

/// The binlog column types FULL metadata's signedness bits are given for, in column order.
fn is_numeric_code(code: u8) -> bool {
    use super::types::code;
    matches!(
        code,
        code::TINY
            | code::SHORT
            | code::INT24
            | code::LONG
            | code::LONGLONG
            | code::FLOAT
            | code::DOUBLE
            | code::NEWDECIMAL
    )
}

/// Per numeric column, whether it is UNSIGNED, from the TABLE_MAP's optional metadata.
fn full_metadata_signedness(tme: &TableMapEvent<'_>) -> Option<Vec<bool>> {
    tme.iter_optional_meta().find_map(|field| match field {
        Ok(OptionalMetadataField::Signedness(bits)) => Some(bits.iter().map(|b| *b).collect()),
        _ => None,
    })
}

/// Column names from the TABLE_MAP's optional metadata (`binlog_row_metadata=FULL`).
fn full_metadata_names(tme: &TableMapEvent<'_>) -> Option<Vec<String>> {
    tme.iter_optional_meta().find_map(|field| match field {
        Ok(OptionalMetadataField::ColumnName(names)) => Some(
            names
                .iter_names()
                .filter_map(Result::ok)
                .map(|n| n.name().into_owned())
                .collect(),
        ),
        _ => None,
    })
}

/// Reads a mapped table's columns (with character sets) and primary key.
async fn load_catalog(
    conn: &mut Conn,
    table: &TableName,
) -> Result<TableCatalog, MysqlStreamError> {
    let info = describe_table(conn, table)
        .await?
        .ok_or_else(|| MysqlStreamError::TableNotFound(table.clone()))?;
    let charsets: Vec<(String, Option<String>)> = conn
        .exec(
            "SELECT COLUMN_NAME, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            (&table.schema, &table.name),
        )
        .await
        .map_err(MysqlError::query("reading a mapped table's character sets"))?;
    // MariaDB's JSON is LONGTEXT with a `json_valid(`col`)` CHECK constraint; MySQL has a
    // real JSON type and no TABLE_NAME in CHECK_CONSTRAINTS (the query fails: nothing to mark).
    let checks: Vec<String> = conn
        .exec(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS \
             WHERE CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?",
            (&table.schema, &table.name),
        )
        .await
        .unwrap_or_default();
    let columns = info
        .schema
        .columns
        .into_iter()
        .map(|c| {
            let charset = charsets
                .iter()
                .find(|(name, _)| *name == c.name)
                .and_then(|(_, cs)| cs.clone());
            let unsigned = c.type_name.ends_with(" unsigned");
            let json_check = format!("json_valid({})", super::quote_ident(&c.name));
            let data_type = if c.type_name == "longtext" && checks.contains(&json_check) {
                "json"
            } else {
                c.type_name.trim_end_matches(" unsigned")
            };
            ColumnInfo {
                data_type: data_type.to_owned(),
                name: c.name,
                column_type: c.declared,
                unsigned,
                charset,
                nullable: c.nullable,
            }
        })
        .collect();
    Ok(TableCatalog {
        columns,
        primary_key: info.schema.primary_key,
    })
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
mod tests {
    use super::*;

    #[test]
    fn renamed_columns_keep_positions_types_and_signedness() {
        use super::super::types::code;
        let column = |name: &str, data_type: &str, unsigned: bool| ColumnInfo {
            name: name.into(),
            data_type: data_type.into(),
            column_type: data_type.into(),
            unsigned,
            charset: None,
            nullable: true,
        };
        let catalog = TableCatalog {
            columns: vec![column("id", "int", false), column("c2", "int", true)],
            primary_key: vec!["id".into()],
        };
        let layout = vec![(code::LONG, vec![]), (code::LONG, vec![])];
        let names = vec!["key".to_owned(), "c".to_owned()];
        let renamed = renamed_columns(&catalog, &layout, &names, None).unwrap();
        assert_eq!(renamed.columns[1].name, "c");
        assert!(renamed.columns[1].unsigned);
        assert_eq!(renamed.primary_key, vec!["key".to_owned()]);
        // Signedness bits come padded to whole bytes.
        let bits = |b: [bool; 8]| Some(b.to_vec());
        let signed_unsigned = [false, true, false, false, false, false, false, false];
        let unsigned_signed = [true, false, false, false, false, false, false, false];
        assert!(renamed_columns(&catalog, &layout, &names, bits(signed_unsigned)).is_some());
        assert!(renamed_columns(&catalog, &layout, &names, bits(unsigned_signed)).is_none());
        assert!(renamed_columns(&catalog, &layout, &names[..1], None).is_none());
    }

    #[test]
    fn statements_mention_tables_of_their_database_only() {
        use super::super::ddl::{executed_text, mentions};
        let evo = TableName::new("erp", "evo");
        for (text, schema, expected) in [
            ("TRUNCATE evo", "erp", true),
            ("TRUNCATE evo", "other", false),
            ("TRUNCATE evo", "", true),
            ("TRUNCATE `erp`.`evo`", "other", true),
            ("truncate ERP . EVO", "other", true),
            ("TRUNCATE other.evo", "erp", false),
            ("DROP TABLE evolution", "erp", false),
            ("DROP TABLE evo_old", "erp", false),
            ("/*!100000 DROP TABLE evo */", "erp", true),
            ("/* DROP TABLE evo */ SELECT 1", "erp", false),
        ] {
            assert_eq!(
                mentions(&executed_text(text), &evo, schema),
                expected,
                "{text} in {schema}"
            );
        }
    }

    #[test]
    fn ddl_statements_name_their_tables() {
        let t = |s: &str, n: &str| TableName::new(s, n);
        assert_eq!(
            ddl_targets("ALTER TABLE `we``ird` ADD c int", "db"),
            Some((DdlKind::Alter, vec![t("db", "we`ird")]))
        );
        assert_eq!(
            ddl_targets("/* x */ alter online table other.t1 drop c", "db"),
            Some((DdlKind::Alter, vec![t("other", "t1")]))
        );
        assert_eq!(
            ddl_targets(
                "DROP TABLE IF EXISTS a, `b`.c /* generated by server */",
                "db"
            ),
            Some((DdlKind::Drop, vec![t("db", "a"), t("b", "c")]))
        );
        assert_eq!(
            ddl_targets("RENAME TABLE a TO b, c TO d", "db"),
            Some((DdlKind::Rename, vec![t("db", "a"), t("db", "c")]))
        );
        assert_eq!(
            ddl_targets("truncate x", "db"),
            Some((DdlKind::Truncate, vec![t("db", "x")]))
        );
        assert_eq!(ddl_targets("CREATE TABLE a (id int)", "db"), None);
        assert_eq!(ddl_targets("DROP DATABASE db", "db"), None);
    }

    #[test]
    fn gtid_lists_round_trip() {
        let state = parse_gtid_list("0-1-14, 3-2-7");
        assert_eq!(gtid_string(&state).as_deref(), Some("0-1-14,3-2-7"));
        assert_eq!(gtid_string(&BTreeMap::new()), None);
    }
}
