//! [`MssqlStream`]: the polling CDC reader around the decisions of [`super::stream`].
//!
//! One poll (see [`super::stream`] for why each step is exact):
//! 1. reads the max LSN; a reader without a position starts at it ([`start_position`]);
//! 2. per capture instance, reads its minimum LSN and decides the window with
//!    [`read_window`] (a clear stop naming `duplex backfill` when cleanup passed the
//!    position);
//! 3. reads each instance's change rows with at most `limit` rows, decodes them with
//!    [`decode_change`], cuts the poll with [`poll_window`] (re-reading a single commit
//!    without a limit when it alone fills one) and keeps the rows not yet delivered
//!    ([`deliverable`]);
//! 4. reads commit times, groups the rows into transactions in commit-LSN order, and queues
//!    them followed by a heartbeat at the max LSN when the whole window was delivered
//!    ([`heartbeat_after`]), so a position keeps up with the log even when only unmapped
//!    tables change and cleanup never overtakes it.
//!
//! Cancellation safety: a poll changes the stream's state only after it has read everything,
//! in one synchronous step, so a dropped [`MssqlStream::next`] loses nothing; the next call
//! reads the same window again. Between polls that found nothing the stream waits with
//! [`IdleWait`]'s backoff; a poll that filled its limit polls again at once.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use tiberius::ColumnData;

use super::stream::{
    COMMIT_TIMES_QUERY, CaptureInstance, CdcError, CdcOp, CdcTransaction, ChangeRow, IdleWait,
    MAX_LSN_QUERY, MIN_LSN_QUERY, PollWindow, ReadWindow, changes_query, group_transactions,
    poll_window, read_window,
};
use super::types::TypeError;
use super::{CdcPosition, Lsn, MssqlClient, MssqlError, to_value};
use crate::{Row, TableName, Value};

/// What an [`MssqlStream`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum CdcItem {
    /// A whole source transaction; resuming at `CdcPosition::after_commit(commit_lsn)` skips it.
    Transaction(CdcTransaction),
    /// Nothing more up to this position: it may be recorded once everything before is applied.
    Heartbeat(CdcPosition),
}

/// How an [`MssqlStream`] reads.
#[derive(Debug, Clone, PartialEq)]
pub struct MssqlStreamConfig {
    /// The capture instances of the mapped tables (and of `duplex.positions` for two-way).
    pub instances: Vec<CaptureInstance>,
    /// Change rows read per instance and poll.
    pub limit: usize,
    /// The shortest wait between polls.
    pub min_wait: Duration,
    /// The longest wait between polls while idle.
    pub max_wait: Duration,
}

/// The CDC reader failed.
#[derive(Debug, thiserror::Error)]
pub enum MssqlStreamError {
    /// Talking to the server failed.
    #[error(transparent)]
    Mssql(#[from] MssqlError),
    /// A stop retrying does not fix (cleanup ran, missing instance, inconsistent rows).
    #[error(transparent)]
    Cdc(#[from] CdcError),
    /// A mapped table cannot be read through CDC (missing, no single capture instance, a
    /// captured type the reader does not decode).
    #[error(transparent)]
    Instance(#[from] super::route::InstanceError),
    /// A change row's value could not be converted.
    #[error("capture instance {instance}, column {column}")]
    Value {
        /// The instance.
        instance: String,
        /// The column.
        column: String,
        /// Why.
        #[source]
        source: TypeError,
    },
    /// A change row without the CDC columns in the shape the reader asked for.
    #[error("capture instance {instance} returned a change row without {what}")]
    Malformed {
        /// The instance.
        instance: String,
        /// What was missing.
        what: &'static str,
    },
}

impl MssqlStreamError {
    /// True when a new stream after a backoff may succeed (see [`MssqlError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, MssqlStreamError::Mssql(e) if e.is_transient())
    }

    /// True when the position is older than an instance's minimum LSN: `duplex backfill`.
    pub fn is_position_lost(&self) -> bool {
        matches!(self, MssqlStreamError::Cdc(CdcError::CleanupRan { .. }))
    }
}

/// The largest LSN in the change tables now (zero while CDC recorded nothing).
pub(super) async fn max_lsn(client: &mut MssqlClient) -> Result<Lsn, MssqlError> {
    query_lsn(client, MAX_LSN_QUERY, &[], "reading the CDC max LSN").await
}

/// The lowest LSN capture instance `instance` holds (zero when it does not exist, or before
/// the capture job established it).
pub(super) async fn min_lsn(client: &mut MssqlClient, instance: &str) -> Result<Lsn, MssqlError> {
    let doing = "reading a capture instance's min LSN";
    query_lsn(client, MIN_LSN_QUERY, &[&instance], doing).await
}

/// The LSN in the first column of the row `query` returns (zero when it returns none).
pub(super) async fn query_lsn(
    client: &mut MssqlClient,
    query: &str,
    params: &[&dyn tiberius::ToSql],
    doing: &'static str,
) -> Result<Lsn, MssqlError> {
    let row = client
        .query(query, params)
        .await
        .map_err(MssqlError::query(doing))?
        .into_row()
        .await
        .map_err(MssqlError::query(doing))?;
    Ok(row
        .and_then(|r| r.get::<&[u8], _>(0).and_then(Lsn::from_slice))
        .unwrap_or(Lsn::ZERO))
}

/// The position a poll reads from: the stored one, or for a reader without one the current
/// max LSN (like a new PostgreSQL or MySQL source, it starts at the end); `None` while the
/// database has no CDC changes at all.
pub fn start_position(position: Option<CdcPosition>, max_lsn: Lsn) -> Option<CdcPosition> {
    match position {
        Some(position) => Some(position),
        None if max_lsn == Lsn::ZERO => None,
        None => Some(CdcPosition::after_commit(max_lsn)),
    }
}

/// One change row of `instance` as tiberius returned it for [`changes_query`]:
/// `__$start_lsn`, `__$seqval`, `__$operation`, then the captured columns in order.
pub fn decode_change(
    instance: &CaptureInstance,
    data: Vec<ColumnData<'static>>,
) -> Result<ChangeRow, MssqlStreamError> {
    let malformed = |what| MssqlStreamError::Malformed {
        instance: instance.name.clone(),
        what,
    };
    let mut data = data.into_iter();
    let lsn = |data: Option<ColumnData<'static>>, what| match data {
        Some(ColumnData::Binary(Some(bytes))) => Lsn::from_slice(&bytes).ok_or(malformed(what)),
        _ => Err(malformed(what)),
    };
    let commit_lsn = lsn(data.next(), "a 10-byte __$start_lsn")?;
    let seqval = lsn(data.next(), "a 10-byte __$seqval")?;
    let code = match data.next() {
        Some(ColumnData::I32(Some(code))) => code,
        _ => return Err(malformed("an int __$operation")),
    };
    let op = CdcOp::from_code(&instance.name, code)?;
    let mut row = Row::default();
    for (name, ty) in &instance.columns {
        let value = data.next().ok_or(malformed("every captured column"))?;
        let value = to_value(*ty, value).map_err(|source| MssqlStreamError::Value {
            instance: instance.name.clone(),
            column: name.clone(),
            source,
        })?;
        let left_out = value == Value::Null
            && instance
                .large
                .iter()
                .any(|(large, kind)| large == name && kind.left_out(op));
        row.push(
            name.as_str(),
            if left_out { Value::Unchanged } else { value },
        );
    }
    if data.next().is_some() {
        return Err(malformed("only the captured columns"));
    }
    Ok(ChangeRow {
        table: instance.table.clone(),
        commit_lsn,
        seqval,
        op,
        row,
    })
}

/// The rows a poll delivers: inside the poll's window, and not delivered at `position`.
pub fn deliverable(
    rows: Vec<ChangeRow>,
    window: PollWindow,
    position: Option<&CdcPosition>,
) -> Vec<ChangeRow> {
    rows.into_iter()
        .filter(|r| match window {
            PollWindow::All => true,
            PollWindow::Below(cut) => r.commit_lsn < cut,
            PollWindow::ReadWhole(commit) => r.commit_lsn == commit,
        })
        .filter(|r| position.is_none_or(|p| !p.delivered(r.commit_lsn, r.seqval)))
        .collect()
}

/// The heartbeat after a poll: when the whole window up to `max_lsn` was delivered and that
/// moves the position past its last transaction (`last`, or the position read from), the
/// position after the max LSN.
pub fn heartbeat_after(
    window: PollWindow,
    from: &CdcPosition,
    last: Option<Lsn>,
    max_lsn: Lsn,
) -> Option<CdcPosition> {
    let reached = last.map_or(*from, CdcPosition::after_commit);
    let end = CdcPosition::after_commit(max_lsn);
    (window == PollWindow::All && end > reached).then_some(end)
}

/// `lsn` bound as a `binary(10)` parameter.
fn lsn_param(lsn: Lsn) -> Vec<u8> {
    lsn.0.to_vec()
}

/// The polling CDC reader of one SQL Server database (see the module doc).
pub struct MssqlStream {
    client: MssqlClient,
    config: MssqlStreamConfig,
    position: Option<CdcPosition>,
    ready: VecDeque<CdcItem>,
    wait: IdleWait,
    keys: HashMap<TableName, Vec<String>>,
}

impl MssqlStream {
    /// A reader on `client` that resumes after `position` (`None`: at the current end).
    pub fn new(
        client: MssqlClient,
        config: MssqlStreamConfig,
        position: Option<CdcPosition>,
    ) -> MssqlStream {
        let keys = config
            .instances
            .iter()
            .map(|i| (i.table.clone(), i.key.clone()))
            .collect();
        MssqlStream {
            client,
            wait: IdleWait::new(config.min_wait, config.max_wait),
            config,
            position,
            ready: VecDeque::new(),
            keys,
        }
    }

    /// The position of the last item yielded or queued.
    pub fn position(&self) -> Option<CdcPosition> {
        self.position
    }

    /// The next transaction or heartbeat, polling (with backoff while idle) until there is one.
    pub async fn next(&mut self) -> Result<CdcItem, MssqlStreamError> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Ok(item);
            }
            let (items, position, rows, full) = self.poll().await?;
            self.ready.extend(items);
            self.position = position;
            let wait = self.wait.after_poll(rows, full);
            if self.ready.is_empty() && !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// One poll: the items it found, the position after them, the rows read and whether an
    /// instance filled its limit. Changes nothing in `self` but the connection.
    async fn poll(
        &mut self,
    ) -> Result<(Vec<CdcItem>, Option<CdcPosition>, usize, bool), MssqlStreamError> {
        let max_lsn = self.max_lsn().await?;
        let Some(position) = start_position(self.position, max_lsn) else {
            return Ok((Vec::new(), None, 0, false));
        };
        let mut window = None;
        for i in 0..self.config.instances.len() {
            let name = self.config.instances[i].name.clone();
            let min_lsn = self.min_lsn(&name).await?;
            window = Some(read_window(&name, Some(&position), min_lsn, max_lsn)?);
        }
        let Some(ReadWindow::Read { from, to }) = window else {
            return Ok((Vec::new(), Some(position), 0, false));
        };
        let limit = self.config.limit.max(1);
        let mut rows = Vec::new();
        let mut cuts = Vec::new();
        for i in 0..self.config.instances.len() {
            let read = self.read_changes(i, from, to, limit).await?;
            if read.len() >= limit {
                cuts.extend(read.last().map(|r| r.commit_lsn));
            }
            rows.extend(read);
        }
        let full = !cuts.is_empty();
        let first = rows.iter().map(|r| r.commit_lsn).min();
        let cut = poll_window(cuts, first);
        if let PollWindow::ReadWhole(commit) = cut {
            rows.clear();
            for i in 0..self.config.instances.len() {
                rows.extend(self.read_changes(i, commit, commit, usize::MAX).await?);
            }
        }
        let read = rows.len();
        let rows = deliverable(rows, cut, Some(&position));
        let last = rows.iter().map(|r| r.commit_lsn).max();
        let times = match last {
            Some(last) => self.commit_times(from, last).await?,
            None => HashMap::new(),
        };
        let transactions = group_transactions(rows, &self.keys, &times)?;
        let mut after = transactions
            .last()
            .map_or(position, |t| CdcPosition::after_commit(t.commit_lsn));
        let mut items: Vec<CdcItem> = transactions.into_iter().map(CdcItem::Transaction).collect();
        if let Some(beat) = heartbeat_after(cut, &position, last, max_lsn) {
            items.push(CdcItem::Heartbeat(beat));
            after = beat;
        }
        Ok((items, Some(after), read, full))
    }

    async fn max_lsn(&mut self) -> Result<Lsn, MssqlStreamError> {
        Ok(max_lsn(&mut self.client).await?)
    }

    async fn min_lsn(&mut self, instance: &str) -> Result<Lsn, MssqlStreamError> {
        Ok(min_lsn(&mut self.client, instance).await?)
    }

    async fn read_changes(
        &mut self,
        instance: usize,
        from: Lsn,
        to: Lsn,
        limit: usize,
    ) -> Result<Vec<ChangeRow>, MssqlStreamError> {
        let doing = "reading a change table";
        let instance = &self.config.instances[instance];
        let top = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client
            .query(
                changes_query(instance),
                &[&lsn_param(from), &lsn_param(to), &top],
            )
            .await
            .map_err(MssqlError::query(doing))?
            .into_first_result()
            .await
            .map_err(MssqlError::query(doing))?;
        rows.into_iter()
            .map(|row| decode_change(instance, row.into_iter().collect()))
            .collect()
    }

    async fn commit_times(
        &mut self,
        from: Lsn,
        to: Lsn,
    ) -> Result<HashMap<Lsn, DateTime<Utc>>, MssqlStreamError> {
        let doing = "reading commit times from cdc.lsn_time_mapping";
        let rows = self
            .client
            .query(COMMIT_TIMES_QUERY, &[&lsn_param(from), &lsn_param(to)])
            .await
            .map_err(MssqlError::query(doing))?
            .into_first_result()
            .await
            .map_err(MssqlError::query(doing))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                let lsn = r.get::<&[u8], _>(0).and_then(Lsn::from_slice)?;
                let at = r.get::<NaiveDateTime, _>(1)?;
                Some((lsn, at.and_utc()))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mssql::MssqlType;
    use crate::mssql::stream::Large;
    use std::borrow::Cow;

    fn lsn(n: u64) -> Lsn {
        let mut bytes = [0u8; 10];
        bytes[2..].copy_from_slice(&n.to_be_bytes());
        Lsn(bytes)
    }

    fn binary(n: u64) -> ColumnData<'static> {
        ColumnData::Binary(Some(Cow::Owned(lsn(n).0.to_vec())))
    }

    fn orders() -> CaptureInstance {
        CaptureInstance {
            name: "dbo_orders".into(),
            table: TableName::new("dbo", "orders"),
            columns: vec![
                ("id".into(), MssqlType::Int),
                ("note".into(), MssqlType::Text),
            ],
            key: vec!["id".into()],
            large: vec![],
        }
    }

    fn row(commit: u64, seq: u64) -> ChangeRow {
        ChangeRow {
            table: TableName::new("dbo", "orders"),
            commit_lsn: lsn(commit),
            seqval: lsn(seq),
            op: CdcOp::Insert,
            row: Row::default(),
        }
    }

    fn at(rows: &[ChangeRow]) -> Vec<(Lsn, Lsn)> {
        rows.iter().map(|r| (r.commit_lsn, r.seqval)).collect()
    }

    #[test]
    fn a_new_reader_starts_at_the_max_lsn_and_waits_while_cdc_has_nothing() {
        assert_eq!(
            start_position(None, lsn(40)),
            Some(CdcPosition::after_commit(lsn(40)))
        );
        assert_eq!(start_position(None, Lsn::ZERO), None);
        let stored = CdcPosition::after_commit(lsn(7));
        assert_eq!(start_position(Some(stored), lsn(40)), Some(stored));
    }

    #[test]
    fn a_change_row_decodes_its_cdc_columns_and_values() {
        let data = vec![
            binary(20),
            binary(3),
            ColumnData::I32(Some(4)),
            ColumnData::I32(Some(7)),
            ColumnData::String(Some(Cow::Borrowed("hé"))),
        ];
        let change = decode_change(&orders(), data).unwrap();
        assert_eq!(change.commit_lsn, lsn(20));
        assert_eq!(change.seqval, lsn(3));
        assert_eq!(change.op, CdcOp::UpdateAfter);
        assert_eq!(change.table, TableName::new("dbo", "orders"));
        assert_eq!(change.row.get("id"), Some(&Value::Int(7)));
        assert_eq!(change.row.get("note"), Some(&Value::Text("hé".into())));
    }

    #[test]
    fn nulls_cdc_leaves_out_of_large_columns_are_read_as_not_carried() {
        // `memo nvarchar(max)`, `scan image`, `code varchar(20)`.
        let instance = CaptureInstance {
            columns: vec![
                ("id".into(), MssqlType::Int),
                ("memo".into(), MssqlType::Text),
                ("scan".into(), MssqlType::Binary),
                ("code".into(), MssqlType::Text),
            ],
            large: vec![("memo".into(), Large::Max), ("scan".into(), Large::Legacy)],
            ..orders()
        };
        let decode = |op: i32, memo: Option<&'static str>| {
            let data = vec![
                binary(20),
                binary(3),
                ColumnData::I32(Some(op)),
                ColumnData::I32(Some(7)),
                ColumnData::String(memo.map(Cow::Borrowed)),
                ColumnData::Binary(None),
                ColumnData::String(None),
            ];
            let row = decode_change(&instance, data).unwrap().row;
            ["memo", "scan", "code"].map(|c| row.get(c).cloned().unwrap())
        };
        use Value::{Null, Unchanged};
        let text = |t: &str| Value::Text(t.into());
        // An update's before-image: both large columns may have been left out.
        assert_eq!(decode(3, None), [Unchanged, Unchanged, Null]);
        assert_eq!(decode(3, Some("old")), [text("old"), Unchanged, Null]);
        // A delete carries (max) columns, never text/ntext/image.
        assert_eq!(decode(1, None), [Null, Unchanged, Null]);
        // Inserts and after-images carry everything.
        assert_eq!(decode(2, None), [Null, Null, Null]);
        assert_eq!(decode(4, Some("new")), [text("new"), Null, Null]);
    }

    #[test]
    fn large_columns_are_told_by_type_and_max_length() {
        assert_eq!(Large::of("ntext", false), Some(Large::Legacy));
        assert_eq!(Large::of("IMAGE", false), Some(Large::Legacy));
        assert_eq!(Large::of("nvarchar", true), Some(Large::Max));
        assert_eq!(Large::of("xml", true), Some(Large::Max));
        assert_eq!(Large::of("nvarchar", false), None);
        assert_eq!(Large::of("int", false), None);
    }

    #[test]
    fn a_change_row_of_another_shape_is_refused_with_what_is_wrong() {
        let short_lsn = vec![
            ColumnData::Binary(Some(Cow::Owned(vec![1, 2]))),
            binary(3),
            ColumnData::I32(Some(2)),
            ColumnData::I32(Some(7)),
            ColumnData::String(None),
        ];
        assert!(matches!(
            decode_change(&orders(), short_lsn),
            Err(MssqlStreamError::Malformed {
                what: "a 10-byte __$start_lsn",
                ..
            })
        ));
        let missing = vec![binary(1), binary(3), ColumnData::I32(Some(2))];
        assert!(matches!(
            decode_change(&orders(), missing),
            Err(MssqlStreamError::Malformed {
                what: "every captured column",
                ..
            })
        ));
        let extra = vec![
            binary(1),
            binary(3),
            ColumnData::I32(Some(2)),
            ColumnData::I32(Some(7)),
            ColumnData::String(None),
            ColumnData::I32(Some(1)),
        ];
        assert!(matches!(
            decode_change(&orders(), extra),
            Err(MssqlStreamError::Malformed { .. })
        ));
        let bad_op = vec![binary(1), binary(3), ColumnData::I32(Some(9))];
        assert!(matches!(
            decode_change(&orders(), bad_op),
            Err(MssqlStreamError::Cdc(CdcError::UnknownOperation {
                code: 9,
                ..
            }))
        ));
        let bad_value = vec![
            binary(1),
            binary(3),
            ColumnData::I32(Some(2)),
            ColumnData::String(Some(Cow::Borrowed("seven"))),
            ColumnData::String(None),
        ];
        match decode_change(&orders(), bad_value) {
            Err(MssqlStreamError::Value { column, .. }) => assert_eq!(column, "id"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_poll_delivers_its_window_minus_what_the_position_delivered() {
        let rows = || vec![row(10, 1), row(10, 2), row(10, 3), row(20, 1), row(30, 1)];
        assert_eq!(at(&deliverable(rows(), PollWindow::All, None)).len(), 5);
        assert_eq!(
            at(&deliverable(rows(), PollWindow::Below(lsn(30)), None)),
            vec![
                (lsn(10), lsn(1)),
                (lsn(10), lsn(2)),
                (lsn(10), lsn(3)),
                (lsn(20), lsn(1))
            ]
        );
        assert_eq!(
            at(&deliverable(rows(), PollWindow::ReadWhole(lsn(20)), None)),
            vec![(lsn(20), lsn(1))]
        );
        let inside = CdcPosition {
            commit_lsn: lsn(10),
            seqval: Some(lsn(2)),
        };
        assert_eq!(
            at(&deliverable(rows(), PollWindow::All, Some(&inside))),
            vec![(lsn(10), lsn(3)), (lsn(20), lsn(1)), (lsn(30), lsn(1))]
        );
        let whole = CdcPosition::after_commit(lsn(20));
        assert_eq!(
            at(&deliverable(rows(), PollWindow::All, Some(&whole))),
            vec![(lsn(30), lsn(1))]
        );
    }

    #[test]
    fn a_heartbeat_follows_only_a_whole_window_that_moves_the_position() {
        let from = CdcPosition::after_commit(lsn(10));
        assert_eq!(
            heartbeat_after(PollWindow::All, &from, Some(lsn(20)), lsn(50)),
            Some(CdcPosition::after_commit(lsn(50)))
        );
        assert_eq!(
            heartbeat_after(PollWindow::All, &from, None, lsn(50)),
            Some(CdcPosition::after_commit(lsn(50)))
        );
        assert_eq!(
            heartbeat_after(PollWindow::All, &from, Some(lsn(50)), lsn(50)),
            None
        );
        assert_eq!(heartbeat_after(PollWindow::All, &from, None, lsn(10)), None);
        assert_eq!(
            heartbeat_after(PollWindow::Below(lsn(40)), &from, Some(lsn(20)), lsn(50)),
            None
        );
        assert_eq!(
            heartbeat_after(
                PollWindow::ReadWhole(lsn(20)),
                &from,
                Some(lsn(20)),
                lsn(50)
            ),
            None
        );
    }

    #[test]
    fn only_server_failures_are_retried_and_cleanup_means_backfill() {
        let cleaned = MssqlStreamError::Cdc(CdcError::CleanupRan {
            instance: "dbo_orders".into(),
            min_lsn: lsn(5),
            position: CdcPosition::after_commit(lsn(1)),
        });
        assert!(cleaned.is_position_lost());
        assert!(!cleaned.is_transient());
        assert!(cleaned.to_string().contains("duplex backfill"));
        let malformed = MssqlStreamError::Malformed {
            instance: "i".into(),
            what: "x",
        };
        assert!(!malformed.is_transient());
        assert!(!malformed.is_position_lost());
    }
}
