//! Where a site's change log ends now, for lag in bytes: the contract of the log head.
//!
//! A [`HeadReader`] keeps one connection to a site and reads, on request, the position the
//! site's log has reached ([`LogHead`]): PostgreSQL its current WAL position and what duplex's
//! slot keeps; MySQL/MariaDB the size of every binlog file it still has. [`LogHead::bytes_after`]
//! then says how many bytes of log lie after a position a target committed.
//!
//! The bytes count the whole log, changes of tables duplex does not replicate included: a
//! target that committed everything duplex read is as far as the reader got, which the caller
//! passes (the reader's last position, heartbeats included) rather than the target's last
//! committed transaction.

use crate::load::AdminError;
use crate::mysql::BinlogPosition;
use crate::postgres::Lsn;
use crate::{Position, SiteConnection, SiteKind};

/// A site's log at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogHead {
    /// PostgreSQL: the current WAL position, and duplex's slot of the site when it has one.
    Postgres {
        /// `pg_current_wal_lsn()`.
        current: Lsn,
        /// The slot, when it exists.
        slot: Option<SlotWal>,
    },
    /// MySQL/MariaDB: every binlog file the server still has, oldest first, with its size
    /// (the current file's size is the server's current write position).
    Mysql {
        /// (file name, size in bytes).
        files: Vec<(String, u64)>,
    },
}

/// What duplex's replication slot of a PostgreSQL site keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotWal {
    /// WAL the slot keeps from being removed (current position minus its restart position).
    pub retained_bytes: Option<i64>,
    /// WAL after the position duplex confirmed to it (current position minus its confirmed
    /// position).
    pub behind_bytes: Option<i64>,
    /// A session streams from it now.
    pub active: bool,
}

impl LogHead {
    /// Bytes of log written after `position`; `None` when the position is not of this log
    /// (another kind, or a binlog file the server no longer has). A position past the head
    /// (read a moment later than the head) counts 0.
    pub fn bytes_after(&self, position: &Position) -> Option<u64> {
        match (self, position) {
            (LogHead::Postgres { current, .. }, Position::Postgres(lsn)) => {
                Some(current.0.saturating_sub(lsn.0))
            }
            (LogHead::Mysql { files }, Position::Mysql(position)) => {
                binlog_bytes_after(files, position)
            }
            _ => None,
        }
    }

    /// The slot's WAL, for PostgreSQL sites with a duplex slot.
    pub fn slot(&self) -> Option<SlotWal> {
        match self {
            LogHead::Postgres { slot, .. } => *slot,
            LogHead::Mysql { .. } => None,
        }
    }
}

/// The rest of `position`'s file, and every later file whole.
fn binlog_bytes_after(files: &[(String, u64)], position: &BinlogPosition) -> Option<u64> {
    let at = files.iter().position(|(name, _)| *name == position.file)?;
    let rest = files[at].1.saturating_sub(position.offset);
    Some(rest + files[at + 1..].iter().map(|(_, size)| size).sum::<u64>())
}

/// One connection to a site, reading its log head on request; reconnects after a failure.
pub struct HeadReader {
    site: SiteConnection,
    connection: Option<Connection>,
}

enum Connection {
    Postgres(tokio_postgres::Client),
    Mysql(mysql_async::Conn),
}

impl HeadReader {
    /// A reader of `site`'s log head (connects on first use).
    pub fn new(site: SiteConnection) -> HeadReader {
        HeadReader {
            site,
            connection: None,
        }
    }

    /// The site's log head now.
    pub async fn read(&mut self) -> Result<LogHead, AdminError> {
        let result = self.read_once().await;
        if result.is_err() {
            // A broken connection is opened again next time.
            self.connection = None;
        }
        result
    }

    async fn read_once(&mut self) -> Result<LogHead, AdminError> {
        const DOING: &str = "reading where the site's log ends";
        if self.connection.is_none() {
            let password = self.site.password();
            self.connection = Some(match self.site.kind {
                SiteKind::Postgres => Connection::Postgres(
                    crate::postgres::connect(&self.site.url, password)
                        .await
                        .map_err(AdminError::doing(DOING))?,
                ),
                SiteKind::Mysql => Connection::Mysql(
                    crate::mysql::connect(&self.site.url, password)
                        .await
                        .map_err(AdminError::doing(DOING))?,
                ),
                SiteKind::Mssql => {
                    return Err(AdminError::new(
                        DOING,
                        crate::NotSupported {
                            what: "the lag in bytes (the log head)",
                            fix: "read the lag in time and transactions, which duplex status shows",
                        },
                    ));
                }
            });
        }
        match self.connection.as_mut() {
            Some(Connection::Postgres(client)) => {
                let slot = crate::postgres::slot_name(&self.site);
                crate::postgres::head::read(client, &slot)
                    .await
                    .map_err(AdminError::doing(DOING))
            }
            Some(Connection::Mysql(conn)) => crate::mysql::head::read(conn)
                .await
                .map_err(AdminError::doing(DOING)),
            None => unreachable!("connected above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_bytes_are_the_wal_between_the_position_and_the_head() {
        let head = LogHead::Postgres {
            current: Lsn(1000),
            slot: None,
        };
        assert_eq!(head.bytes_after(&Position::Postgres(Lsn(400))), Some(600));
        assert_eq!(head.bytes_after(&Position::Postgres(Lsn(1200))), Some(0));
        let binlog = Position::Mysql(BinlogPosition::new("binlog.000001", 4));
        assert_eq!(head.bytes_after(&binlog), None);
    }

    #[test]
    fn binlog_bytes_span_the_rest_of_the_file_and_every_later_file() {
        let head = LogHead::Mysql {
            files: vec![
                ("binlog.000001".into(), 1000),
                ("binlog.000002".into(), 500),
                ("binlog.000003".into(), 300),
            ],
        };
        let at = |file: &str, offset| Position::Mysql(BinlogPosition::new(file, offset));
        assert_eq!(head.bytes_after(&at("binlog.000003", 300)), Some(0));
        assert_eq!(head.bytes_after(&at("binlog.000003", 100)), Some(200));
        assert_eq!(
            head.bytes_after(&at("binlog.000001", 900)),
            Some(100 + 500 + 300)
        );
        // Purged, or not this server's.
        assert_eq!(head.bytes_after(&at("binlog.000000", 4)), None);
        assert_eq!(head.bytes_after(&Position::Postgres(Lsn(1))), None);
    }
}
