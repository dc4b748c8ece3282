//! Source positions: where in a source's change log a transaction ends.
//!
//! Each kind has its own position type (`postgres::Lsn`, `mysql::BinlogPosition`); the
//! [`Position`] enum carries any of them. Positions of one source are totally ordered and a
//! reader's positions never move backwards. Comparing positions of two different kinds is a
//! programming or configuration error, so [`Position::compare`] returns an error for it rather
//! than an arbitrary answer.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::SiteKind;
use crate::mssql::CdcPosition;
use crate::mysql::BinlogPosition;
use crate::postgres::Lsn;

/// A position in some source's change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    /// PostgreSQL WAL position (the commit's end LSN).
    Postgres(Lsn),
    /// MySQL/MariaDB binlog file and offset, with the GTID where the server has one.
    Mysql(BinlogPosition),
    /// SQL Server CDC: the commit LSN (and, inside a transaction delivered in parts, the
    /// sequence value) of the last change delivered.
    Mssql(CdcPosition),
    /// A sequence number of the merge engine's outbox for one site: the writes duplex queued
    /// for that site, numbered from 1 in the order they are written.
    Outbox(u64),
}

/// What a [`Position`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionKind {
    /// A database's change log.
    Log(SiteKind),
    /// The merge engine's outbox of one site.
    Outbox,
}

impl fmt::Display for PositionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PositionKind::Log(kind) => write!(f, "{kind}"),
            PositionKind::Outbox => f.write_str("merge outbox"),
        }
    }
}

/// Two positions that cannot be ordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    /// The positions belong to different kinds of log.
    #[error("cannot compare a {left} position with a {right} position")]
    KindMismatch {
        /// Kind of the left-hand position.
        left: PositionKind,
        /// Kind of the right-hand position.
        right: PositionKind,
    },
    /// Two binlog positions whose file names have different base names (the server's
    /// `log_bin_basename` changed, so the order of the files is unknown).
    #[error("cannot order binlog files {left:?} and {right:?}: their base names differ")]
    BinlogBaseMismatch {
        /// Left-hand file name.
        left: String,
        /// Right-hand file name.
        right: String,
    },
}

impl Position {
    /// What this position counts: a kind of database's log, or the merge engine's outbox.
    pub fn kind(&self) -> PositionKind {
        match self {
            Position::Postgres(_) => PositionKind::Log(SiteKind::Postgres),
            Position::Mysql(_) => PositionKind::Log(SiteKind::Mysql),
            Position::Mssql(_) => PositionKind::Log(SiteKind::Mssql),
            Position::Outbox(_) => PositionKind::Outbox,
        }
    }

    /// Orders two positions of the same source kind.
    pub fn compare(&self, other: &Position) -> Result<Ordering, PositionError> {
        match (self, other) {
            (Position::Postgres(a), Position::Postgres(b)) => Ok(a.cmp(b)),
            (Position::Mysql(a), Position::Mysql(b)) => a.compare(b),
            (Position::Mssql(a), Position::Mssql(b)) => Ok(a.cmp(b)),
            (Position::Outbox(a), Position::Outbox(b)) => Ok(a.cmp(b)),
            _ => Err(PositionError::KindMismatch {
                left: self.kind(),
                right: other.kind(),
            }),
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Postgres(lsn) => write!(f, "{lsn}"),
            Position::Mysql(pos) => write!(f, "{pos}"),
            Position::Mssql(pos) => write!(f, "{pos}"),
            Position::Outbox(seq) => write!(f, "outbox #{seq}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_different_kinds_do_not_compare() {
        let pg = Position::Postgres(Lsn(10));
        let my = Position::Mysql(BinlogPosition::new("binlog.000001", 4));
        assert_eq!(
            pg.compare(&my),
            Err(PositionError::KindMismatch {
                left: PositionKind::Log(SiteKind::Postgres),
                right: PositionKind::Log(SiteKind::Mysql)
            })
        );
        assert_eq!(pg.compare(&Position::Postgres(Lsn(11))), Ok(Ordering::Less));
    }

    fn cdc(commit: &str, seqval: Option<&str>) -> Position {
        Position::Mssql(CdcPosition {
            commit_lsn: commit.parse().unwrap(),
            seqval: seqval.map(|s| s.parse().unwrap()),
        })
    }

    #[test]
    fn sql_server_positions_order_by_commit_then_change_and_refuse_other_kinds() {
        let whole = cdc("0000002A:000001B8:0003", None);
        let part = cdc("0000002A:000001B8:0003", Some("0000002A:000001B0:0001"));
        let later = cdc("0000002B:00000010:0001", None);
        assert_eq!(part.compare(&whole), Ok(Ordering::Less));
        assert_eq!(whole.compare(&later), Ok(Ordering::Less));
        assert_eq!(
            whole.compare(&Position::Postgres(Lsn(1))),
            Err(PositionError::KindMismatch {
                left: PositionKind::Log(SiteKind::Mssql),
                right: PositionKind::Log(SiteKind::Postgres)
            })
        );
        assert_eq!(whole.to_string(), "0000002A:000001B8:0003");
    }

    #[test]
    fn sql_server_positions_round_trip_through_json() {
        for position in [
            cdc("0000002A:000001B8:0003", None),
            cdc("FFFFFFFF:FFFFFFFF:FFFF", Some("00000000:00000000:0001")),
        ] {
            let json = serde_json::to_string(&position).unwrap();
            assert_eq!(serde_json::from_str::<Position>(&json).unwrap(), position);
        }
    }
}
