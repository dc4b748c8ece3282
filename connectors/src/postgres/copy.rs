//! Bulk loading into PostgreSQL with binary `COPY`: the backfill's write path, and the
//! stream's for long runs of inserts (see [`super::apply`], "Long runs of inserts").
//!
//! # Protocol
//!
//! [`ExactlyOnce::load`](crate::apply::ExactlyOnce::load) writes one source transaction made
//! only of inserts exactly as [`Applier::apply`](crate::apply::Applier::apply) would: it runs
//! the very same protocol steps (same target transaction, same exactly-once check of
//! `duplex.positions`, same position recorded), and only the write step differs: the
//! [`PgSession`](super::PgSession)'s `load_events` sends each run of consecutive inserts into
//! one table with one column set as `COPY <table> (<columns>) FROM STDIN (FORMAT binary)`
//! instead of multi-row INSERTs:
//!
//! 1. `BEGIN`, then the source's row in `duplex.positions` is read `FOR UPDATE`; a target that
//!    already holds the position rolls back and writes nothing (the same decision as `apply`).
//! 2. The COPY runs inside that transaction.
//! 3. The position is recorded and the transaction committed.
//!
//! So a COPY and its position row (for the backfill, a range and its marker) commit together
//! or not at all; an error, or a call dropped halfway, aborts the COPY (tokio-postgres sends
//! `CopyFail` when the sink is dropped unfinished) and the applier rolls back before anything
//! else runs on the connection.
//!
//! # Encoding
//!
//! Every value goes through the applier's own conversion ([`to_param`]): the same checks
//! against the target column and the same binary encoding as a bound INSERT parameter, which
//! is what `COPY ... (FORMAT binary)` expects per field. Nothing is printed or parsed, so the
//! rows written by COPY are bit-identical to those the INSERT path writes. The column types
//! handed to the binary writer are the target's own, taken from a `SELECT <columns> ... LIMIT
//! 0` prepared once per table and column set (and cached with the applier's statements).
//!
//! # When COPY is not used
//!
//! - An upserting applier (`ApplyOptions::upsert`, the backfill's `--allow-nonempty`): COPY
//!   cannot resolve conflicts, so the events are written as `apply` writes them (INSERT ...
//!   ON CONFLICT).
//! - A conditional applier (`ApplyOptions::conditional`): COPY cannot skip an existing row, so
//!   the events are written as `apply` writes them, which skips and reports them.
//! - A run whose columns include a type duplex binds as text with a cast (`inet`, `xml`, bit
//!   strings, arrays, ...: no binary encoder): that run is written with the ordinary multi-row INSERT, still inside
//!   the same transaction.
//! - An applier in the middle of a large transaction: `apply` decides (it refuses).

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::apply::{ApplyError, malformed, same_insert_shape};
use crate::{ChangeEvent, Op};

use super::apply::{PgRoute, Writer, insert_columns, write_error};
use super::param::{PgParam, to_param};

impl Writer<'_> {
    /// Writes runs of inserts, each with one COPY where the columns allow it.
    pub(super) async fn load_all(&mut self, events: &[&ChangeEvent]) -> Result<(), ApplyError> {
        let mut i = 0;
        while i < events.len() {
            let event = events[i];
            if event.op != Op::Insert {
                return Err(malformed(event, "a bulk load carries inserts only"));
            }
            let route = self
                .routes
                .get(&event.table)
                .ok_or_else(|| ApplyError::NoRoute(event.table.clone()))?;
            let columns = insert_columns(route, event)?;
            let mut end = i + 1;
            while end < events.len()
                && events[end].op == Op::Insert
                && events[end].table == event.table
                && (same_insert_shape(event, events[end])
                    || insert_columns(route, events[end])? == columns)
            {
                end += 1;
            }
            if columns
                .iter()
                .any(|&c| route.columns[c].kind.bound_as_text())
            {
                self.insert_run(route, &columns, &events[i..end]).await?;
            } else {
                self.copy_run(route, &columns, &events[i..end]).await?;
            }
            i = end;
        }
        Ok(())
    }

    /// One `COPY ... FROM STDIN (FORMAT binary)` of `events` (inserts into `route`'s table
    /// carrying exactly `columns`, none of them bound as text).
    pub(super) async fn copy_run(
        &mut self,
        route: &PgRoute,
        columns: &[usize],
        events: &[&ChangeEvent],
    ) -> Result<(), ApplyError> {
        let wrap = |source| write_error(route, Op::Insert, source);
        let names = columns
            .iter()
            .map(|&c| route.columns[c].quoted.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let probe = self
            .statement(format!("SELECT {names} FROM {} LIMIT 0", route.quoted))
            .await
            .map_err(wrap)?;
        let types: Vec<Type> = probe.columns().iter().map(|c| c.type_().clone()).collect();
        let sink = self
            .session
            .copy_in(&format!(
                "COPY {} ({names}) FROM STDIN (FORMAT binary)",
                route.quoted
            ))
            .await
            .map_err(wrap)?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        let mut writer = std::pin::pin!(writer);
        let mut row: Vec<PgParam<'_>> = Vec::with_capacity(columns.len());
        // Where the first row holds each column: the rows of a run come from one read, so
        // every value is found without a search by name (`Row::get_at`).
        let hints: Vec<usize> = match events.first().and_then(|e| e.after.as_ref()) {
            Some(first) => columns
                .iter()
                .map(|&c| first.position(&route.columns[c].source).unwrap_or(0))
                .collect(),
            None => Vec::new(),
        };
        for event in events {
            let after = event.after.as_ref().expect("insert_columns checked it");
            row.clear();
            for (&c, &hint) in columns.iter().zip(&hints) {
                let column = &route.columns[c];
                let value = after
                    .get_at(&column.source, hint)
                    .expect("insert_columns checked it");
                row.push(to_param(value, column, &route.target)?);
            }
            writer.as_mut().write_raw(row.iter()).await.map_err(wrap)?;
        }
        let written = writer.as_mut().finish().await.map_err(wrap)?;
        if written != events.len() as u64 {
            return Err(malformed(
                events[0],
                &format!(
                    "COPY into {} wrote {written} rows of {}",
                    route.target,
                    events.len()
                ),
            ));
        }
        Ok(())
    }
}
