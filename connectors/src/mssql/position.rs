//! SQL Server CDC positions: log sequence numbers and where in a commit a reader stands.
//!
//! An LSN is SQL Server's `binary(10)`: the virtual log file's sequence number (4 bytes), the
//! log block's offset in it (4 bytes) and the record's slot in the block (2 bytes), all
//! big-endian. SQL Server compares `binary` values byte by byte, so the order of LSNs is the
//! order of their bytes, which is what the derived `Ord` on `[u8; 10]` gives. Two text forms
//! are read: `0x0000002A000001B80003` (what `CONVERT(varchar(22), lsn, 1)` prints) and
//! `0000002A:000001B8:0003` (the log's own display form, which [`Lsn`]'s `Display` writes).
//!
//! [`Lsn::next`] is `sys.fn_cdc_increment_lsn`: the smallest LSN greater than the given one,
//! the 80-bit number plus one. A reader that has delivered every change of the commit at LSN
//! `c` asks the change functions for `@from_lsn = next(c)`, so that commit is never read
//! twice and no later commit is skipped (no LSN lies strictly between `c` and `next(c)`).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A SQL Server log sequence number (`binary(10)`), ordered as SQL Server orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lsn(pub [u8; 10]);

/// Text that is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a SQL Server LSN: write it as 0x followed by 20 hex digits \
     (0x0000002A000001B80003) or as VLF:block:slot in hex (0000002A:000001B8:0003)"
)]
pub struct LsnError {
    /// The text given.
    pub text: String,
}

impl Lsn {
    /// The zero LSN (before every change).
    pub const ZERO: Lsn = Lsn([0; 10]);

    /// The next LSN, as `sys.fn_cdc_increment_lsn` gives it; `None` past the largest one.
    pub fn next(self) -> Option<Lsn> {
        let mut bytes = self.0;
        for byte in bytes.iter_mut().rev() {
            let (sum, carry) = byte.overflowing_add(1);
            *byte = sum;
            if !carry {
                return Some(Lsn(bytes));
            }
        }
        None
    }

    /// The LSN from the bytes a `binary(10)` column holds; `None` for another length.
    pub fn from_slice(bytes: &[u8]) -> Option<Lsn> {
        bytes.try_into().ok().map(Lsn)
    }

    /// The virtual log file's sequence number.
    pub fn vlf(self) -> u32 {
        u32::from_be_bytes([self.0[0], self.0[1], self.0[2], self.0[3]])
    }

    /// The log block's offset in its virtual log file.
    pub fn block(self) -> u32 {
        u32::from_be_bytes([self.0[4], self.0[5], self.0[6], self.0[7]])
    }

    /// The record's slot in its log block.
    pub fn slot(self) -> u16 {
        u16::from_be_bytes([self.0[8], self.0[9]])
    }

    /// The T-SQL literal of this LSN (`0x` and 20 hex digits), for query text and messages.
    pub fn literal(self) -> String {
        let mut out = String::with_capacity(22);
        out.push_str("0x");
        for byte in self.0 {
            out.push_str(&format!("{byte:02X}"));
        }
        out
    }
}

impl FromStr for Lsn {
    type Err = LsnError;

    fn from_str(text: &str) -> Result<Lsn, LsnError> {
        let error = || LsnError {
            text: text.to_owned(),
        };
        let digits: String =
            if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                (hex.len() == 20)
                    .then(|| hex.to_owned())
                    .ok_or_else(error)?
            } else {
                let parts: Vec<&str> = text.split(':').collect();
                match parts[..] {
                    [vlf, block, slot] if vlf.len() == 8 && block.len() == 8 && slot.len() == 4 => {
                        format!("{vlf}{block}{slot}")
                    }
                    _ => return Err(error()),
                }
            };
        if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(error());
        }
        let mut bytes = [0u8; 10];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| error())?;
        }
        Ok(Lsn(bytes))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:08X}:{:08X}:{:04X}",
            self.vlf(),
            self.block(),
            self.slot()
        )
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.literal())
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Lsn, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a CDC reader stands: the commit LSN (`__$start_lsn`) of the last transaction it
/// delivered and, while inside a transaction delivered in parts, the sequence value
/// (`__$seqval`) of the last change delivered. Ordered by commit, then by change; a commit
/// delivered whole (`seqval = None`) is after every change of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CdcPosition {
    /// The commit LSN of the transaction.
    pub commit_lsn: Lsn,
    /// The last change delivered of a transaction delivered in parts; `None` when all of it was.
    pub seqval: Option<Lsn>,
}

impl CdcPosition {
    /// The position after the whole commit at `commit_lsn`.
    pub fn after_commit(commit_lsn: Lsn) -> CdcPosition {
        CdcPosition {
            commit_lsn,
            seqval: None,
        }
    }

    /// The `@from_lsn` to read on from: the same commit when it was delivered in part (its
    /// changes up to `seqval` are then skipped by [`CdcPosition::delivered`]), the next LSN
    /// when it was delivered whole; `None` past the largest LSN.
    pub fn resume_from(&self) -> Option<Lsn> {
        match self.seqval {
            Some(_) => Some(self.commit_lsn),
            None => self.commit_lsn.next(),
        }
    }

    /// Whether the change `(commit_lsn, seqval)` was delivered already at this position.
    pub fn delivered(&self, commit_lsn: Lsn, seqval: Lsn) -> bool {
        match commit_lsn.cmp(&self.commit_lsn) {
            Ordering::Less => true,
            Ordering::Greater => false,
            Ordering::Equal => self.seqval.is_none_or(|last| seqval <= last),
        }
    }
}

impl Ord for CdcPosition {
    fn cmp(&self, other: &CdcPosition) -> Ordering {
        self.commit_lsn
            .cmp(&other.commit_lsn)
            .then_with(|| match (self.seqval, other.seqval) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => a.cmp(&b),
            })
    }
}

impl PartialOrd for CdcPosition {
    fn partial_cmp(&self, other: &CdcPosition) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for CdcPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.commit_lsn)?;
        if let Some(seqval) = self.seqval {
            write!(f, " (through change {seqval})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    #[test]
    fn both_text_forms_parse_to_the_same_lsn_and_print_back() {
        let a = lsn("0x0000002A000001B80003");
        assert_eq!(a, lsn("0000002A:000001B8:0003"));
        assert_eq!(a, lsn("0x0000002a000001b80003"));
        assert_eq!((a.vlf(), a.block(), a.slot()), (0x2A, 0x1B8, 3));
        assert_eq!(a.to_string(), "0000002A:000001B8:0003");
        assert_eq!(a.literal(), "0x0000002A000001B80003");
        assert_eq!(lsn(&a.literal()), a);
        assert_eq!(lsn(&a.to_string()), a);
    }

    #[test]
    fn malformed_lsns_are_refused_with_the_forms_to_use() {
        for bad in [
            "",
            "0x",
            "0x0000002A000001B8000",
            "0x0000002A000001B800030",
            "0x0000002A000001B8000G",
            "2A:1B8:3",
            "0000002A:000001B8",
            "0000002A:000001B8:0003:0",
            "+0x000002A000001B80003",
        ] {
            let error = bad.parse::<Lsn>().unwrap_err();
            assert!(error.to_string().contains("VLF:block:slot"), "{bad}");
        }
    }

    #[test]
    fn lsns_order_by_vlf_then_block_then_slot() {
        let ordered = [
            "00000000:00000000:0000",
            "00000000:00000000:FFFF",
            "00000000:00000001:0000",
            "00000000:FFFFFFFF:FFFF",
            "00000001:00000000:0000",
            "FFFFFFFF:FFFFFFFF:FFFF",
        ];
        for pair in ordered.windows(2) {
            assert!(lsn(pair[0]) < lsn(pair[1]), "{} < {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn next_is_the_smallest_greater_lsn_carrying_into_block_and_vlf() {
        assert_eq!(
            lsn("0000002A:000001B8:0003").next(),
            Some(lsn("0000002A:000001B8:0004"))
        );
        assert_eq!(
            lsn("0000002A:000001B8:FFFF").next(),
            Some(lsn("0000002A:000001B9:0000"))
        );
        assert_eq!(
            lsn("0000002A:FFFFFFFF:FFFF").next(),
            Some(lsn("0000002B:00000000:0000"))
        );
        assert_eq!(Lsn([0xFF; 10]).next(), None);
        assert_eq!(Lsn::ZERO.next(), Some(lsn("00000000:00000000:0001")));
    }

    #[test]
    fn a_whole_commit_is_after_every_change_of_it_and_resumes_past_it() {
        let c = lsn("0000002A:000001B8:0003");
        let s1 = lsn("0000002A:000001B0:0002");
        let s2 = lsn("0000002A:000001B0:0005");
        let part = |s| CdcPosition {
            commit_lsn: c,
            seqval: Some(s),
        };
        let whole = CdcPosition::after_commit(c);
        assert!(part(s1) < part(s2));
        assert!(part(s2) < whole);
        assert!(whole < CdcPosition::after_commit(c.next().unwrap()));
        assert_eq!(whole.resume_from(), c.next());
        assert_eq!(part(s1).resume_from(), Some(c));
        assert!(part(s1).delivered(c, s1));
        assert!(!part(s1).delivered(c, s2));
        assert!(whole.delivered(c, s2));
        assert!(!whole.delivered(c.next().unwrap(), s1));
        assert!(whole.delivered(s1, s1));
    }

    #[test]
    fn a_position_round_trips_through_its_json_with_readable_lsns() {
        let position = CdcPosition {
            commit_lsn: lsn("0000002A:000001B8:0003"),
            seqval: Some(lsn("0000002A:000001B0:0002")),
        };
        let text = serde_json::to_string(&position).unwrap();
        assert_eq!(
            text,
            r#"{"commit_lsn":"0x0000002A000001B80003","seqval":"0x0000002A000001B00002"}"#
        );
        assert_eq!(
            serde_json::from_str::<CdcPosition>(&text).unwrap(),
            position
        );
        assert!(
            serde_json::from_str::<CdcPosition>(r#"{"commit_lsn":"42","seqval":null}"#).is_err()
        );
    }
}
