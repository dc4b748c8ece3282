//! The CDC change-table reader's decisions, without I/O: the query text, which LSN window a
//! poll reads, turning change rows into whole source transactions, and how long to wait
//! while idle. The polling loop around them is [`super::MssqlStream`].
//!
//! # Protocol
//! SQL Server's capture job copies committed changes of each CDC-enabled table from the log
//! into that table's change table (one per *capture instance*). A poll:
//! 1. reads `sys.fn_cdc_get_max_lsn()` (the capture job's high-water mark: every commit at or
//!    below it is in the change tables, for every instance) and, per instance,
//!    `sys.fn_cdc_get_min_lsn(instance)`;
//! 2. decides its window with [`read_window`]: from the stored position's
//!    [`CdcPosition::resume_from`] up to the max LSN, or a clear stop when cleanup removed
//!    changes the position has not delivered;
//! 3. reads each instance with [`changes_query`] (`all update old`, so updates carry both
//!    images), at most `limit` rows per instance, and cuts the window with [`poll_window`] so
//!    that only commits read whole on every instance are delivered;
//! 4. reads commit times ([`COMMIT_TIMES_QUERY`]) and merges the rows of all instances into
//!    transactions with [`group_transactions`]: one transaction per commit LSN
//!    (`__$start_lsn`), transactions in commit-LSN order, changes in `__$seqval` order.
//!
//! Why this is exact: a transaction's changes all carry its commit LSN, in every change table
//! it touched, and the max LSN is only advanced past a commit once all of its changes are
//! written, so a window ending at the max LSN holds whole transactions. Commit LSNs order
//! commits, so delivering by commit LSN across instances is the source's commit order, and
//! the position after a delivered commit `c` resumes at `next(c)`, so nothing is read twice
//! or skipped. A transaction that wrote `duplex.positions` (captured like any table) was
//! written by duplex's applier: its origin is [`Origin::Duplex`] (an echo).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::position::{CdcPosition, Lsn};
use super::types::MssqlType;
use crate::apply::is_positions_table;
use crate::{ChangeEvent, Op, Origin, Row, TableName};

/// One capture instance as the reader reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureInstance {
    /// The instance's name (`cdc.change_tables.capture_instance`).
    pub name: String,
    /// The source table it captures.
    pub table: TableName,
    /// The captured columns and their types, in column order.
    pub columns: Vec<(String, MssqlType)>,
    /// The primary-key columns.
    pub key: Vec<String>,
    /// The captured columns CDC leaves out of some images, and how (see [`Large`]).
    pub large: Vec<(String, Large)>,
}

/// A large column, which CDC leaves out of some images as NULL (SQL Server documentation,
/// "Change data capture: large object data types"). The reader reads such a NULL as
/// [`crate::Value::Unchanged`] (not carried), never as a NULL the row held: one-way appliers
/// use before-images only for keys, and the merge engine compares a not-carried value with
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Large {
    /// `varchar(max)`, `nvarchar(max)`, `varbinary(max)`, `xml`: NULL in an update's
    /// before-image unless the update changed the column (whether it held NULL cannot be
    /// told apart without the update mask).
    Max,
    /// `text`, `ntext`, `image`: NULL in every before-image, of updates and deletes.
    Legacy,
}

impl Large {
    /// How CDC carries column `type_name` (`sys.types`), `unbounded` when declared `(max)`
    /// or `xml`; `None` for a column every image carries.
    pub fn of(type_name: &str, unbounded: bool) -> Option<Large> {
        match type_name.to_ascii_lowercase().as_str() {
            "text" | "ntext" | "image" => Some(Large::Legacy),
            _ if unbounded => Some(Large::Max),
            _ => None,
        }
    }

    /// Whether a NULL of this column in a row of `op` may be one CDC left out.
    pub fn left_out(self, op: CdcOp) -> bool {
        matches!(
            (self, op),
            (_, CdcOp::UpdateBefore) | (Large::Legacy, CdcOp::Delete)
        )
    }
}

/// A stop the reader cannot recover from by retrying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CdcError {
    /// A new two-way reader waited in vain for the capture job to start capturing
    /// `duplex.positions` (see [`echo_capture_ready`]).
    #[error(
        "the capture job has not started capturing duplex.positions (capture instance \
         duplex_positions, which two-way replication reads to recognise duplex's own writes) \
         within {0:?}: make sure SQL Server Agent runs this database's cdc capture job \
         (EXEC sys.sp_cdc_help_jobs), then start duplex again"
    )]
    EchoNotCaptured(Duration),
    /// The capture instance does not exist (its minimum LSN is zero).
    #[error(
        "capture instance {instance} does not exist: enable CDC on its table \
         (EXEC sys.sp_cdc_enable_table ...) and run duplex check"
    )]
    NoCaptureInstance {
        /// The instance.
        instance: String,
    },
    /// A new reader found no change recorded by CDC in the whole database (max LSN zero), so
    /// it has no end of the log to start after: starting at its first poll could skip the
    /// commits made before that poll.
    #[error(
        "CDC has recorded no change in this database yet (sys.fn_cdc_get_max_lsn() is 0), so a \
         new link has no exact place to start: make sure the capture job runs, change a row of \
         a CDC-enabled table (or wait until an application does) and start duplex again"
    )]
    NothingCaptured,
    /// Cleanup removed changes the position has not delivered.
    #[error(
        "capture instance {instance} keeps changes from {min_lsn} on, but duplex stands at \
         {position}: CDC cleanup ran (or the instance was re-created) and changes in between are \
         gone; run duplex backfill for its table, and raise the cleanup job's retention"
    )]
    CleanupRan {
        /// The instance.
        instance: String,
        /// Its minimum LSN.
        min_lsn: Lsn,
        /// The stored position.
        position: CdcPosition,
    },
    /// An `__$operation` code other than 1 to 4.
    #[error("capture instance {instance} returned __$operation {code}, which is not 1 to 4")]
    UnknownOperation {
        /// The instance.
        instance: String,
        /// The code.
        code: i32,
    },
    /// An update image without its other half.
    #[error(
        "table {table}: the update at {commit_lsn} (change {seqval}) has only one of its two \
         images; the change table is inconsistent"
    )]
    UnpairedUpdate {
        /// The table.
        table: TableName,
        /// The commit.
        commit_lsn: Lsn,
        /// The change.
        seqval: Lsn,
    },
    /// A commit without a row in `cdc.lsn_time_mapping`.
    #[error("commit {0} has no row in cdc.lsn_time_mapping: is the capture job running?")]
    NoCommitTime(Lsn),
}

/// What one change row did, from its `__$operation` code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CdcOp {
    /// 1: a deleted row (its before-image).
    Delete,
    /// 2: an inserted row.
    Insert,
    /// 3: an updated row's before-image.
    UpdateBefore,
    /// 4: an updated row's after-image.
    UpdateAfter,
}

impl CdcOp {
    /// The operation of `__$operation = code` of capture instance `instance`.
    pub fn from_code(instance: &str, code: i32) -> Result<CdcOp, CdcError> {
        Ok(match code {
            1 => CdcOp::Delete,
            2 => CdcOp::Insert,
            3 => CdcOp::UpdateBefore,
            4 => CdcOp::UpdateAfter,
            _ => {
                return Err(CdcError::UnknownOperation {
                    instance: instance.to_owned(),
                    code,
                });
            }
        })
    }
}

/// One row of a change table, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRow {
    /// The table the change is of.
    pub table: TableName,
    /// `__$start_lsn`: the commit LSN of its transaction.
    pub commit_lsn: Lsn,
    /// `__$seqval`: its order within the transaction.
    pub seqval: Lsn,
    /// `__$operation`.
    pub op: CdcOp,
    /// The captured columns' values.
    pub row: Row,
}

/// One source transaction read from the change tables; [`super::link`] makes it a
/// [`crate::Transaction`] at `CdcPosition::after_commit(commit_lsn)`.
#[derive(Debug, Clone, PartialEq)]
pub struct CdcTransaction {
    /// Its commit LSN.
    pub commit_lsn: Lsn,
    /// When it committed.
    pub commit_time: DateTime<Utc>,
    /// An application's change or duplex's own.
    pub origin: Origin,
    /// Its row changes in the order it made them.
    pub events: Vec<ChangeEvent>,
}

/// `ident` as a bracketed T-SQL identifier.
pub fn quote(ident: &str) -> String {
    format!("[{}]", ident.replace(']', "]]"))
}

/// The captured columns as selected from a change function: `money` and `smallmoney` cast to
/// `decimal(19,4)` (tiberius would round them through `f64`), every name bracketed.
pub fn select_list(columns: &[(String, MssqlType)]) -> String {
    columns
        .iter()
        .map(|(name, ty)| {
            if ty.read_as_decimal() {
                format!("CAST({0} AS decimal(19,4)) AS {0}", quote(name))
            } else {
                quote(name)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The query reading at most `@P3` change rows of `instance` from `@P1` to `@P2` (both
/// `binary(10)`, inclusive), both images of updates, in commit then change order.
pub fn changes_query(instance: &CaptureInstance) -> String {
    format!(
        "SELECT TOP (@P3) __$start_lsn, __$seqval, __$operation, {} \
         FROM cdc.{}(@P1, @P2, N'all update old') \
         ORDER BY __$start_lsn, __$seqval, __$operation",
        select_list(&instance.columns),
        quote(&format!("fn_cdc_get_all_changes_{}", instance.name)),
    )
}

/// The capture job's high-water mark.
pub const MAX_LSN_QUERY: &str = "SELECT sys.fn_cdc_get_max_lsn()";

/// The lowest LSN capture instance `@P1` still holds (zero when it does not exist).
pub const MIN_LSN_QUERY: &str = "SELECT sys.fn_cdc_get_min_lsn(@P1)";

/// The commit times of the commits from `@P1` to `@P2`, in UTC. `cdc.lsn_time_mapping`
/// holds the server's local time; it is moved to UTC by the server's offset now, which is an
/// hour off for commits on the other side of a daylight-saving change.
pub const COMMIT_TIMES_QUERY: &str = "SELECT start_lsn, \
     DATEADD(minute, DATEDIFF(minute, SYSDATETIME(), SYSUTCDATETIME()), CAST(tran_end_time AS datetime2)) \
     FROM cdc.lsn_time_mapping WHERE start_lsn BETWEEN @P1 AND @P2";

/// Whether a new two-way reader may start at the max LSN: the capture instance of
/// `duplex.positions` exists (`min_lsn` not zero) and the capture job has processed the log up
/// to where it begins, so every transaction after the start that wrote `duplex.positions`
/// (every write of duplex's applier) is in its change table and read as an echo.
pub fn echo_capture_ready(min_lsn: Lsn, max_lsn: Lsn) -> bool {
    min_lsn != Lsn::ZERO && max_lsn >= min_lsn
}

/// Which LSNs one poll of one capture instance reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadWindow {
    /// Nothing committed after the position yet.
    Idle,
    /// From `from` to `to`, both inclusive.
    Read {
        /// First LSN.
        from: Lsn,
        /// Last LSN (the max LSN).
        to: Lsn,
    },
}

/// The window to read capture instance `instance` in, given the stored position (`None`:
/// start at the current end, like a new MySQL or PostgreSQL source), its minimum LSN and the
/// max LSN; a stop when cleanup removed changes not yet delivered.
pub fn read_window(
    instance: &str,
    position: Option<&CdcPosition>,
    min_lsn: Lsn,
    max_lsn: Lsn,
) -> Result<ReadWindow, CdcError> {
    if min_lsn == Lsn::ZERO {
        return Err(CdcError::NoCaptureInstance {
            instance: instance.to_owned(),
        });
    }
    let Some(position) = position else {
        return Ok(ReadWindow::Idle);
    };
    let Some(from) = position.resume_from() else {
        return Ok(ReadWindow::Idle);
    };
    if from < min_lsn {
        return Err(CdcError::CleanupRan {
            instance: instance.to_owned(),
            min_lsn,
            position: *position,
        });
    }
    Ok(if from > max_lsn {
        ReadWindow::Idle
    } else {
        ReadWindow::Read { from, to: max_lsn }
    })
}

/// What a poll delivers after reading every instance with a row limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollWindow {
    /// Every row read: no instance hit its limit.
    All,
    /// Only commits below this LSN: an instance hit its limit there, so that commit may be
    /// cut (deliver the rest; the next poll starts at it).
    Below(Lsn),
    /// The first commit alone fills an instance's limit: read just that commit again
    /// (`@P1 = @P2 =` it) without a limit, and deliver it in parts if it is that large.
    ReadWhole(Lsn),
}

/// The poll window, given the last commit LSN of each instance that returned as many rows as
/// its limit, and the first commit LSN read on any instance.
pub fn poll_window(cut: impl IntoIterator<Item = Lsn>, first_commit: Option<Lsn>) -> PollWindow {
    match (cut.into_iter().min(), first_commit) {
        (None, _) => PollWindow::All,
        (Some(cut), Some(first)) if first < cut => PollWindow::Below(cut),
        (Some(cut), _) => PollWindow::ReadWhole(cut),
    }
}

/// The order change rows are applied in: by commit, then change, then before-image first.
fn change_order(a: &ChangeRow, b: &ChangeRow) -> Ordering {
    (a.commit_lsn, a.seqval, a.op).cmp(&(b.commit_lsn, b.seqval, b.op))
}

/// The key columns of `row`.
fn key_of(row: &Row, key: &[String]) -> Row {
    row.iter()
        .filter(|(c, _)| key.iter().any(|k| k == c))
        .map(|(c, v)| (c, v.clone()))
        .collect()
}

/// Merges the change rows of all instances into transactions in commit order. `keys` gives
/// each table's primary-key columns; `commit_times` the commit time of each commit LSN.
pub fn group_transactions(
    mut rows: Vec<ChangeRow>,
    keys: &HashMap<TableName, Vec<String>>,
    commit_times: &HashMap<Lsn, DateTime<Utc>>,
) -> Result<Vec<CdcTransaction>, CdcError> {
    rows.sort_by(change_order);
    let mut transactions: Vec<CdcTransaction> = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while let Some(change) = rows.next() {
        let no_key = Vec::new();
        let key = keys.get(&change.table).unwrap_or(&no_key);
        let unpaired = || CdcError::UnpairedUpdate {
            table: change.table.clone(),
            commit_lsn: change.commit_lsn,
            seqval: change.seqval,
        };
        let event = match change.op {
            CdcOp::Insert => ChangeEvent {
                table: change.table.clone(),
                op: Op::Insert,
                key: key_of(&change.row, key),
                before: None,
                after: Some(change.row.clone()),
            },
            CdcOp::Delete => ChangeEvent {
                table: change.table.clone(),
                op: Op::Delete,
                key: key_of(&change.row, key),
                before: Some(change.row.clone()),
                after: None,
            },
            CdcOp::UpdateAfter => return Err(unpaired()),
            CdcOp::UpdateBefore => {
                let after = rows
                    .next_if(|next| {
                        next.op == CdcOp::UpdateAfter
                            && next.table == change.table
                            && (next.commit_lsn, next.seqval) == (change.commit_lsn, change.seqval)
                    })
                    .ok_or_else(unpaired)?;
                ChangeEvent {
                    table: change.table.clone(),
                    op: Op::Update,
                    key: key_of(&change.row, key),
                    before: Some(change.row.clone()),
                    after: Some(after.row),
                }
            }
        };
        let echo = is_positions_table(&event.table);
        match transactions.last_mut() {
            Some(last) if last.commit_lsn == change.commit_lsn => {
                if echo {
                    last.origin = Origin::Duplex;
                }
                last.events.push(event);
            }
            _ => transactions.push(CdcTransaction {
                commit_lsn: change.commit_lsn,
                commit_time: *commit_times
                    .get(&change.commit_lsn)
                    .ok_or(CdcError::NoCommitTime(change.commit_lsn))?,
                origin: if echo { Origin::Duplex } else { Origin::Local },
                events: vec![event],
            }),
        }
    }
    Ok(transactions)
}

/// How long an idle reader waits before polling again: `min` after a poll that found
/// changes, doubling after each empty poll up to `max`, and no wait at all after a poll that
/// hit its row limit (more is waiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleWait {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl IdleWait {
    /// Waits from `min` up to `max`.
    pub fn new(min: Duration, max: Duration) -> IdleWait {
        IdleWait {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The wait after a poll that delivered `rows` rows and did (`full`) or did not fill its
    /// row limit.
    pub fn after_poll(&mut self, rows: usize, full: bool) -> Duration {
        if full {
            self.next = self.min;
            return Duration::ZERO;
        }
        if rows > 0 {
            self.next = self.min;
            return self.min;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Value;
    use crate::apply::positions_table;
    use chrono::TimeZone;

    fn lsn(n: u64) -> Lsn {
        let mut bytes = [0u8; 10];
        bytes[2..].copy_from_slice(&n.to_be_bytes());
        Lsn(bytes)
    }

    fn orders() -> TableName {
        TableName::new("dbo", "orders")
    }

    fn lines() -> TableName {
        TableName::new("dbo", "lines")
    }

    fn change(table: TableName, commit: u64, seq: u64, op: CdcOp, id: i64, qty: i64) -> ChangeRow {
        ChangeRow {
            table,
            commit_lsn: lsn(commit),
            seqval: lsn(seq),
            op,
            row: [("id", Value::Int(id)), ("qty", Value::Int(qty))]
                .into_iter()
                .collect(),
        }
    }

    fn keys() -> HashMap<TableName, Vec<String>> {
        [orders(), lines(), positions_table()]
            .into_iter()
            .map(|t| (t, vec!["id".to_owned()]))
            .collect()
    }

    fn times(commits: &[u64]) -> HashMap<Lsn, DateTime<Utc>> {
        commits
            .iter()
            .map(|&c| {
                (
                    lsn(c),
                    Utc.timestamp_opt(1_700_000_000 + c as i64, 0).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn operation_codes_map_to_what_they_did() {
        assert_eq!(CdcOp::from_code("i", 1), Ok(CdcOp::Delete));
        assert_eq!(CdcOp::from_code("i", 2), Ok(CdcOp::Insert));
        assert_eq!(CdcOp::from_code("i", 3), Ok(CdcOp::UpdateBefore));
        assert_eq!(CdcOp::from_code("i", 4), Ok(CdcOp::UpdateAfter));
        assert_eq!(
            CdcOp::from_code("dbo_orders", 5),
            Err(CdcError::UnknownOperation {
                instance: "dbo_orders".into(),
                code: 5
            })
        );
    }

    #[test]
    fn the_changes_query_reads_both_update_images_in_order_with_money_as_decimal() {
        let instance = CaptureInstance {
            name: "dbo_order]s".into(),
            table: orders(),
            columns: vec![
                ("id".into(), MssqlType::Int),
                ("price".into(), MssqlType::Money),
                ("odd]name".into(), MssqlType::Text),
            ],
            key: vec!["id".into()],
            large: vec![],
        };
        assert_eq!(
            changes_query(&instance),
            "SELECT TOP (@P3) __$start_lsn, __$seqval, __$operation, [id], \
             CAST([price] AS decimal(19,4)) AS [price], [odd]]name] \
             FROM cdc.[fn_cdc_get_all_changes_dbo_order]]s](@P1, @P2, N'all update old') \
             ORDER BY __$start_lsn, __$seqval, __$operation"
        );
        assert!(COMMIT_TIMES_QUERY.contains("cdc.lsn_time_mapping"));
        assert!(MIN_LSN_QUERY.contains("fn_cdc_get_min_lsn(@P1)"));
    }

    #[test]
    fn the_window_starts_after_the_position_and_stops_when_cleanup_passed_it() {
        let at = CdcPosition::after_commit(lsn(100));
        assert_eq!(
            read_window("i", Some(&at), lsn(50), lsn(200)),
            Ok(ReadWindow::Read {
                from: lsn(101),
                to: lsn(200)
            })
        );
        assert_eq!(
            read_window("i", Some(&at), lsn(101), lsn(200)),
            Ok(ReadWindow::Read {
                from: lsn(101),
                to: lsn(200)
            })
        );
        assert_eq!(
            read_window("i", Some(&at), lsn(50), lsn(100)),
            Ok(ReadWindow::Idle)
        );
        assert_eq!(
            read_window("i", None, lsn(50), lsn(100)),
            Ok(ReadWindow::Idle)
        );
        let cleaned = read_window("i", Some(&at), lsn(102), lsn(200)).unwrap_err();
        assert_eq!(
            cleaned,
            CdcError::CleanupRan {
                instance: "i".into(),
                min_lsn: lsn(102),
                position: at
            }
        );
        assert!(cleaned.to_string().contains("run duplex backfill"));
        let inside = CdcPosition {
            commit_lsn: lsn(100),
            seqval: Some(lsn(90)),
        };
        assert_eq!(
            read_window("i", Some(&inside), lsn(100), lsn(100)),
            Ok(ReadWindow::Read {
                from: lsn(100),
                to: lsn(100)
            })
        );
        assert!(matches!(
            read_window("gone", Some(&at), Lsn::ZERO, lsn(200)),
            Err(CdcError::NoCaptureInstance { .. })
        ));
    }

    #[test]
    fn a_poll_delivers_only_commits_read_whole_on_every_instance() {
        assert_eq!(poll_window([], Some(lsn(5))), PollWindow::All);
        assert_eq!(poll_window([], None), PollWindow::All);
        assert_eq!(
            poll_window([lsn(30), lsn(20)], Some(lsn(5))),
            PollWindow::Below(lsn(20))
        );
        assert_eq!(
            poll_window([lsn(30), lsn(5)], Some(lsn(5))),
            PollWindow::ReadWhole(lsn(5))
        );
    }

    #[test]
    fn rows_of_two_instances_merge_into_transactions_in_commit_then_change_order() {
        use CdcOp::*;
        let rows = vec![
            change(lines(), 20, 3, Insert, 7, 1),
            change(orders(), 10, 1, Insert, 1, 5),
            change(orders(), 20, 2, UpdateAfter, 1, 6),
            change(lines(), 10, 2, Insert, 9, 2),
            change(orders(), 20, 2, UpdateBefore, 1, 5),
            change(orders(), 30, 1, Delete, 1, 6),
        ];
        let transactions = group_transactions(rows, &keys(), &times(&[10, 20, 30])).unwrap();
        let shape: Vec<(Lsn, Vec<(TableName, Op)>)> = transactions
            .iter()
            .map(|t| {
                (
                    t.commit_lsn,
                    t.events.iter().map(|e| (e.table.clone(), e.op)).collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                (lsn(10), vec![(orders(), Op::Insert), (lines(), Op::Insert)]),
                (lsn(20), vec![(orders(), Op::Update), (lines(), Op::Insert)]),
                (lsn(30), vec![(orders(), Op::Delete)]),
            ]
        );
        let update = &transactions[1].events[0];
        assert_eq!(
            update.before.as_ref().unwrap().get("qty"),
            Some(&Value::Int(5))
        );
        assert_eq!(
            update.after.as_ref().unwrap().get("qty"),
            Some(&Value::Int(6))
        );
        assert_eq!(update.key, [("id", Value::Int(1))].into_iter().collect());
        let delete = &transactions[2].events[0];
        assert_eq!(delete.key, [("id", Value::Int(1))].into_iter().collect());
        assert_eq!(delete.after, None);
        assert_eq!(
            transactions[1].commit_time,
            Utc.timestamp_opt(1_700_000_020, 0).unwrap()
        );
        assert!(transactions.iter().all(|t| t.origin == Origin::Local));
    }

    #[test]
    fn a_two_way_reader_starts_once_the_positions_table_is_captured() {
        // No instance yet, or the capture job has not established it.
        assert!(!echo_capture_ready(Lsn::ZERO, lsn(50)));
        // The instance begins after what the capture job has processed.
        assert!(!echo_capture_ready(lsn(60), lsn(50)));
        assert!(!echo_capture_ready(lsn(60), Lsn::ZERO));
        assert!(echo_capture_ready(lsn(60), lsn(60)));
        assert!(echo_capture_ready(lsn(60), lsn(70)));
    }

    #[test]
    fn a_transaction_that_wrote_the_positions_table_is_an_echo() {
        let rows = vec![
            change(orders(), 10, 1, CdcOp::Insert, 1, 5),
            change(positions_table(), 10, 2, CdcOp::Insert, 1, 0),
            change(orders(), 11, 1, CdcOp::Insert, 2, 5),
        ];
        let transactions = group_transactions(rows, &keys(), &times(&[10, 11])).unwrap();
        assert_eq!(transactions[0].origin, Origin::Duplex);
        assert_eq!(transactions[1].origin, Origin::Local);
    }

    #[test]
    fn a_half_update_or_a_missing_commit_time_stops_the_reader() {
        let half = vec![change(orders(), 10, 1, CdcOp::UpdateBefore, 1, 5)];
        assert!(matches!(
            group_transactions(half, &keys(), &times(&[10])),
            Err(CdcError::UnpairedUpdate { .. })
        ));
        let after_only = vec![change(orders(), 10, 1, CdcOp::UpdateAfter, 1, 5)];
        assert!(matches!(
            group_transactions(after_only, &keys(), &times(&[10])),
            Err(CdcError::UnpairedUpdate { .. })
        ));
        let other_table = vec![
            change(orders(), 10, 1, CdcOp::UpdateBefore, 1, 5),
            change(lines(), 10, 1, CdcOp::UpdateAfter, 1, 6),
        ];
        assert!(matches!(
            group_transactions(other_table, &keys(), &times(&[10])),
            Err(CdcError::UnpairedUpdate { .. })
        ));
        let untimed = vec![change(orders(), 10, 1, CdcOp::Insert, 1, 5)];
        assert_eq!(
            group_transactions(untimed, &keys(), &times(&[])),
            Err(CdcError::NoCommitTime(lsn(10)))
        );
    }

    #[test]
    fn an_idle_reader_backs_off_and_a_busy_one_polls_at_once() {
        let ms = Duration::from_millis;
        let mut wait = IdleWait::new(ms(100), ms(1000));
        assert_eq!(wait.after_poll(0, false), ms(100));
        assert_eq!(wait.after_poll(0, false), ms(200));
        assert_eq!(wait.after_poll(0, false), ms(400));
        assert_eq!(wait.after_poll(0, false), ms(800));
        assert_eq!(wait.after_poll(0, false), ms(1000));
        assert_eq!(wait.after_poll(0, false), ms(1000));
        assert_eq!(wait.after_poll(500, true), Duration::ZERO);
        assert_eq!(wait.after_poll(0, false), ms(100));
        assert_eq!(wait.after_poll(0, false), ms(200));
        assert_eq!(wait.after_poll(3, false), ms(100));
        assert_eq!(wait.after_poll(0, false), ms(100));
    }
}
