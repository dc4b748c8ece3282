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
use crate::mysql::BinlogPosition;
use crate::postgres::Lsn;

/// A position in some source's change log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Position {
    /// PostgreSQL WAL position (the commit's end LSN).
    Postgres(Lsn),
    /// MySQL/MariaDB binlog file and offset, with the GTID where the server has one.
    Mysql(BinlogPosition),
}

/// Two positions that cannot be ordered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PositionError {
    /// The positions belong to different kinds of database.
    #[error("cannot compare a {left} position with a {right} position")]
    KindMismatch {
        /// Kind of the left-hand position.
        left: SiteKind,
        /// Kind of the right-hand position.
        right: SiteKind,
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
    /// The kind of database this position belongs to.
    pub fn kind(&self) -> SiteKind {
        match self {
            Position::Postgres(_) => SiteKind::Postgres,
            Position::Mysql(_) => SiteKind::Mysql,
        }
    }

    /// Orders two positions of the same source kind.
    pub fn compare(&self, other: &Position) -> Result<Ordering, PositionError> {
        match (self, other) {
            (Position::Postgres(a), Position::Postgres(b)) => Ok(a.cmp(b)),
            (Position::Mysql(a), Position::Mysql(b)) => a.compare(b),
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
                left: SiteKind::Postgres,
                right: SiteKind::Mysql
            })
        );
        assert_eq!(pg.compare(&Position::Postgres(Lsn(11))), Ok(Ordering::Less));
    }
}
