//! MySQL/MariaDB binlog positions.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::PositionError;

/// A binlog position: file name and byte offset, plus the server's GTID (MariaDB
/// `domain-server-seq` list or a MySQL GTID set) at that point where it has one. Order is by
/// file sequence number, then offset; the GTID is carried for resuming, not ordering.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BinlogPosition {
    /// Binlog file name, e.g. `binlog.000042`.
    pub file: String,
    /// Byte offset within the file.
    pub offset: u64,
    /// GTID position/set at this point, if the server uses GTIDs.
    pub gtid: Option<String>,
}

impl BinlogPosition {
    /// A position without GTID.
    pub fn new(file: impl Into<String>, offset: u64) -> BinlogPosition {
        BinlogPosition {
            file: file.into(),
            offset,
            gtid: None,
        }
    }

    /// Splits `base.000042` into (`base`, 42); files without a numeric suffix sort as 0.
    fn file_parts(&self) -> (&str, u64) {
        match self.file.rsplit_once('.') {
            Some((base, seq)) if !seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()) => {
                (base, seq.parse().unwrap_or(u64::MAX))
            }
            _ => (self.file.as_str(), 0),
        }
    }

    /// Orders two positions of the same server.
    pub fn compare(&self, other: &BinlogPosition) -> Result<Ordering, PositionError> {
        let (base_a, seq_a) = self.file_parts();
        let (base_b, seq_b) = other.file_parts();
        if base_a != base_b {
            return Err(PositionError::BinlogBaseMismatch {
                left: self.file.clone(),
                right: other.file.clone(),
            });
        }
        Ok(seq_a.cmp(&seq_b).then(self.offset.cmp(&other.offset)))
    }
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.offset)?;
        if let Some(gtid) = &self.gtid {
            write!(f, " (gtid {gtid})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binlog_positions_order_by_file_sequence_then_offset() {
        let p = BinlogPosition::new;
        assert_eq!(
            p("binlog.000009", 900).compare(&p("binlog.000010", 4)),
            Ok(Ordering::Less)
        );
        assert_eq!(
            p("binlog.000010", 5).compare(&p("binlog.000010", 4)),
            Ok(Ordering::Greater)
        );
        assert_eq!(
            p("binlog.999999", 4).compare(&p("binlog.1000000", 4)),
            Ok(Ordering::Less)
        );
        assert!(p("a.000001", 4).compare(&p("b.000001", 4)).is_err());
    }
}
