//! What a [`super::MysqlStream`] reads and from where.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::TableName;
use crate::mysql::BinlogPosition;

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
pub(super) fn random_server_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    (hasher.finish() as u32) | 0x4000_0000
}
