//! [`MssqlLinkStream`]: the CDC reader ([`MssqlStream`]) as a one-way link's change stream
//! (see [`crate::stream`] for the contract).
//!
//! What it keeps of the contract, and how:
//! - *Whole transactions, in commit order*: [`MssqlStream`] groups change rows by commit LSN
//!   and orders them across capture instances; each becomes one [`StreamItem::Transaction`]
//!   at `CdcPosition::after_commit(commit_lsn)`. Nothing comes in parts.
//! - *Restart is exact*: started after a stored [`Position::Mssql`], the reader delivers only
//!   the changes the position has not ([`CdcPosition::delivered`]). Without a stored position
//!   it starts after the max LSN read when it starts (before the link reports it started).
//!   While CDC has recorded nothing at all in the database (max LSN zero) there is no such
//!   place: a new link stops with [`CdcError::NothingCaptured`] and says what to do.
//! - *Shapes*: CDC change tables keep the columns captured when the capture instance was
//!   made, whatever the table became since, so the shape of every change of a table is the
//!   instance's captured columns with the types the catalog gives them; it is yielded once,
//!   before the first transaction touching the table.
//! - *Acknowledgement*: CDC keeps changes for the cleanup job's retention, not for readers, so
//!   there is nothing to release.
//!
//! - *Echoes are marked* (started for the merge engine): the stream captures
//!   `duplex.positions` with CDC (capture instance `duplex_positions`, created unless it
//!   exists) and reads it like a mapped table. duplex's applier writes that table in every
//!   target transaction, so each of its transactions carries a change of it under the same
//!   commit LSN and comes as [`crate::Origin::Duplex`] with that change. A new two-way stream
//!   starts only once the capture job captures the table ([`echo_capture_ready`]), so no
//!   write of duplex's after the start can be read as an application's.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use super::positions::{ECHO_INSTANCE, ensure_positions_captured};
use super::preflight::probe_table;
use super::reader::{
    CdcItem, MssqlStream, MssqlStreamConfig, MssqlStreamError, max_lsn, min_lsn, start_position,
};
use super::route::{InstanceError, capture_instance, schema_of};
use super::stream::{CdcError, echo_capture_ready};
use super::{CdcPosition, MssqlClient, connect};
use crate::stream::StreamItem;
use crate::{Position, ShapeColumn, TableName, TableShape, Transaction};

/// Change rows read per capture instance and poll.
pub const POLL_ROWS: usize = 10_000;
/// The shortest wait between polls.
pub const MIN_WAIT: Duration = Duration::from_millis(50);
/// The longest wait between polls while idle.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// A one-way link's change stream from a SQL Server database.
pub struct MssqlLinkStream {
    stream: MssqlStream,
    start: CdcPosition,
    source: String,
    /// Shapes not yet yielded, by table.
    shapes: HashMap<TableName, TableShape>,
    ready: VecDeque<StreamItem>,
}

impl MssqlLinkStream {
    /// Connects to the database `url` names and reads the capture instance of each of
    /// `tables`, resuming after `start` (`None`: at the current end of the log). Transactions
    /// carry `source` as their source; `shapes` says whether to yield [`StreamItem::Shape`]s;
    /// `merge` marks echoes (see the module docs).
    pub async fn start(
        url: &str,
        password: Option<&str>,
        source: &str,
        tables: &BTreeSet<TableName>,
        start: Option<CdcPosition>,
        shapes: bool,
        merge: bool,
    ) -> Result<MssqlLinkStream, MssqlStreamError> {
        let mut client = connect(url, password).await?;
        let mut tables = tables.clone();
        if merge {
            ensure_positions_captured(&mut client).await?;
            tables.insert(crate::apply::positions_table());
            if start.is_none() {
                wait_for_echo_capture(&mut client).await?;
            }
        }
        let mut instances = Vec::with_capacity(tables.len());
        let mut pending = HashMap::new();
        for table in &tables {
            let facts = probe_table(&mut client, table)
                .await?
                .ok_or_else(|| InstanceError::Missing(table.clone()))?;
            let instance = capture_instance(&facts)?;
            let schema = schema_of(&facts);
            let shape = TableShape {
                table: table.clone(),
                columns: instance
                    .columns
                    .iter()
                    .map(|(name, _)| ShapeColumn {
                        name: name.clone(),
                        type_name: schema
                            .column(name)
                            .map(|c| c.type_name.clone())
                            .unwrap_or_default(),
                    })
                    .collect(),
            };
            if shapes {
                pending.insert(table.clone(), shape);
            }
            instances.push(instance);
        }
        // A new reader starts at the end of the log as it stands now, before the link reports
        // that it started, so every commit after that is read (not at its first poll, which
        // could skip commits made in between). With no end to start after (CDC recorded
        // nothing yet), it stops and says so rather than guess.
        let start = match start {
            Some(position) => position,
            None => start_position(None, max_lsn(&mut client).await?)
                .ok_or(CdcError::NothingCaptured)?,
        };
        let config = MssqlStreamConfig {
            instances,
            limit: POLL_ROWS,
            min_wait: MIN_WAIT,
            max_wait: MAX_WAIT,
        };
        Ok(MssqlLinkStream {
            stream: MssqlStream::new(client, config, Some(start)),
            start,
            source: source.to_owned(),
            shapes: pending,
            ready: VecDeque::new(),
        })
    }

    /// Where the stream started: the position it was given, or for a new reader the position
    /// after the max LSN it read when it started.
    pub fn start_position(&self) -> CdcPosition {
        self.start
    }

    /// The next transaction, shape or heartbeat. Cancellation safe: an item read from the
    /// reader is queued in the same synchronous step.
    pub async fn next(&mut self) -> Result<StreamItem, MssqlStreamError> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Ok(item);
            }
            let item = self.stream.next().await?;
            let items = to_items(&self.source, &mut self.shapes, item);
            self.ready.extend(items);
        }
    }
}

/// How long a new two-way stream waits for the capture job to capture `duplex.positions`.
pub const ECHO_CAPTURE_WAIT: Duration = Duration::from_secs(60);

/// Returns once the capture job captures `duplex.positions` (see [`echo_capture_ready`]); a
/// stop after [`ECHO_CAPTURE_WAIT`].
async fn wait_for_echo_capture(client: &mut MssqlClient) -> Result<(), MssqlStreamError> {
    let deadline = tokio::time::Instant::now() + ECHO_CAPTURE_WAIT;
    loop {
        let min = min_lsn(client, ECHO_INSTANCE).await?;
        if echo_capture_ready(min, max_lsn(client).await?) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CdcError::EchoNotCaptured(ECHO_CAPTURE_WAIT).into());
        }
        tokio::time::sleep(MIN_WAIT * 4).await;
    }
}

/// The stream items of one reader item: the shapes not yet yielded of the tables a
/// transaction touches (in the order it first touches them), then the transaction; a
/// heartbeat as it is.
pub fn to_items(
    source: &str,
    shapes: &mut HashMap<TableName, TableShape>,
    item: CdcItem,
) -> Vec<StreamItem> {
    match item {
        CdcItem::Heartbeat(position) => vec![StreamItem::Heartbeat(Position::Mssql(position))],
        CdcItem::Transaction(tx) => {
            let mut items = Vec::new();
            for event in &tx.events {
                if let Some(shape) = shapes.remove(&event.table) {
                    items.push(StreamItem::Shape(shape));
                }
            }
            items.push(StreamItem::Transaction(Transaction {
                source: source.to_owned(),
                position: Position::Mssql(CdcPosition::after_commit(tx.commit_lsn)),
                commit_time: tx.commit_time,
                origin: tx.origin,
                events: tx.events,
            }));
            items
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mssql::Lsn;
    use crate::mssql::stream::CdcTransaction;
    use crate::{ChangeEvent, Op, Origin, Row, Value};

    fn lsn(n: u8) -> Lsn {
        let mut bytes = [0u8; 10];
        bytes[9] = n;
        Lsn(bytes)
    }

    fn insert(table: &TableName, id: i64) -> ChangeEvent {
        let mut row = Row::default();
        row.push("id", Value::Int(id));
        ChangeEvent {
            table: table.clone(),
            op: Op::Insert,
            key: row.clone(),
            before: None,
            after: Some(row),
        }
    }

    #[test]
    fn a_table_s_shape_comes_once_before_its_first_transaction_and_positions_are_after_commits() {
        let orders = TableName::new("dbo", "orders");
        let shape = TableShape {
            table: orders.clone(),
            columns: vec![ShapeColumn {
                name: "id".into(),
                type_name: "int".into(),
            }],
        };
        let mut shapes = HashMap::from([(orders.clone(), shape.clone())]);
        let tx = |commit| {
            CdcItem::Transaction(CdcTransaction {
                commit_lsn: lsn(commit),
                commit_time: chrono::DateTime::UNIX_EPOCH,
                origin: Origin::Local,
                events: vec![insert(&orders, 1), insert(&orders, 2)],
            })
        };
        let first = to_items("erp", &mut shapes, tx(7));
        assert_eq!(first.len(), 2);
        assert_eq!(first[0], StreamItem::Shape(shape));
        let StreamItem::Transaction(t) = &first[1] else {
            panic!("{first:?}");
        };
        assert_eq!(t.source, "erp");
        assert_eq!(
            t.position,
            Position::Mssql(CdcPosition::after_commit(lsn(7)))
        );
        assert_eq!(t.events.len(), 2);
        assert_eq!(to_items("erp", &mut shapes, tx(8)).len(), 1);
        let beat = CdcPosition::after_commit(lsn(9));
        assert_eq!(
            to_items("erp", &mut shapes, CdcItem::Heartbeat(beat)),
            vec![StreamItem::Heartbeat(Position::Mssql(beat))]
        );
    }
}
