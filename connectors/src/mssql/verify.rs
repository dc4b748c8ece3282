//! What `duplex verify` reads of a SQL Server site besides ranges of rows (see
//! [`crate::verify`]): a fresh snapshot with the position it stands at, rows by key, and the
//! position a target recorded.
//!
//! # The position of a renewed snapshot
//!
//! Verify re-checks a differing row only once the target committed everything of the source
//! up to a position at or after every transaction the source's snapshot sees *of the table
//! it reads*. [`MssqlSnapshot::renew`] starts the snapshot by reading that table, then reads
//! the log end `E` (`sys.dm_db_log_stats`): every commit the snapshot sees is below it. `E`
//! itself would do, but a target records the commit LSN of the last transaction it applied,
//! and while the source is quiet that stays below `E` for ever (the log goes on with other
//! records). So the position is tightened to the last commit at or below `E` that changed the
//! table: once the capture job has processed the log past `E` (its max LSN, which it moves
//! on while idle too), that is the greatest `__$start_lsn` at or below `E` in the table's
//! change table, read on a session of its own (the snapshot's would see the change table as
//! it was when the snapshot started). A link applies that commit, or one after it, before its
//! target records a position at or past it. A table no capture instance captures (a target
//! only written into) gets `E`.
//!
//! Nothing here has run against a real SQL Server: no server can run on our machines.

use std::time::Duration;

use super::position::{CdcPosition, Lsn};
use super::positions::committed_position;
use super::preflight::probe_table;
use super::reader::{max_lsn, query_lsn};
use super::route::capture_instance;
use super::snapshot::{
    MssqlSnapshot, MssqlSnapshotError, bind, decode_row, log_end, run, start_sql, text_value, typed,
};
use super::sql::{MAX_PARAMS, quote_table};
use super::stream::{quote, select_list};
use super::{MssqlClient, connect};
use crate::load::AdminError;
use crate::{Column, Position, Row, SiteConnection, TableName, Value};

/// How long [`MssqlSnapshot::renew`] waits for the capture job to process the log up to the
/// snapshot's log end.
pub const CAPTURE_WAIT: Duration = Duration::from_secs(60);

/// Ends the open transaction, if any, and opens a snapshot transaction (which starts at its
/// first read of data).
pub const RENEW_BEGIN: &str = "IF @@TRANCOUNT > 0 COMMIT TRANSACTION; \
     SET TRANSACTION ISOLATION LEVEL SNAPSHOT; BEGIN TRANSACTION";

/// The query giving the last commit LSN at or below `@P1` (`binary(10)`) in the change table
/// of capture instance `instance` (NULL when there is none).
pub fn last_change_query(instance: &str) -> String {
    format!(
        "SELECT MAX(__$start_lsn) FROM cdc.{} WHERE __$start_lsn <= @P1",
        quote(&format!("{instance}_CT"))
    )
}

/// The query reading `columns` of the rows of `keys` keys of `table` (key columns `key`), the
/// key values bound in order as `@P1`, `@P2`, ...
pub fn keys_query(
    table: &TableName,
    columns: &[(String, super::MssqlType)],
    key: &[Column],
    keys: usize,
) -> String {
    let mut next = 0;
    let matches: Vec<String> = (0..keys)
        .map(|_| {
            let parts: Vec<String> = key
                .iter()
                .map(|column| {
                    next += 1;
                    format!("{} = @P{next}", quote(&column.name))
                })
                .collect();
            format!("({})", parts.join(" AND "))
        })
        .collect();
    format!(
        "SELECT {} FROM {} WHERE {}",
        select_list(columns),
        quote_table(table),
        matches.join(" OR ")
    )
}

/// Keys per [`keys_query`] for a key of `width` columns, within SQL Server's parameter limit.
pub fn keys_per_query(width: usize) -> usize {
    (MAX_PARAMS / width.max(1)).clamp(1, 500)
}

impl MssqlSnapshot {
    /// Ends the snapshot transaction and opens a fresh one, which starts at its next read.
    pub async fn refresh(&mut self) -> Result<(), MssqlSnapshotError> {
        run(&mut self.client, RENEW_BEGIN, "renewing the snapshot").await?;
        Ok(())
    }

    /// Ends the snapshot transaction and starts a fresh one by reading `table`; returns the
    /// position it stands at for `table` (see the module docs).
    pub async fn renew(&mut self, table: &TableName) -> Result<CdcPosition, MssqlSnapshotError> {
        run(&mut self.client, RENEW_BEGIN, "renewing the snapshot").await?;
        run(&mut self.client, &start_sql(table), "starting the snapshot").await?;
        let end = log_end(&mut self.client).await?;
        let mut other = connect(&self.url, self.password.as_deref()).await?;
        let instance = probe_table(&mut other, table)
            .await?
            .and_then(|facts| capture_instance(&facts).ok());
        let Some(instance) = instance else {
            return Ok(CdcPosition::after_commit(end));
        };
        wait_for_capture(&mut other, end).await?;
        // Zero (before every commit) when no change of the table is at or below it.
        let last = query_lsn(
            &mut other,
            &last_change_query(&instance.name),
            &[&end.0.to_vec()],
            "reading the last change of a table",
        )
        .await?;
        Ok(CdcPosition::after_commit(last))
    }

    /// The rows of `table` whose `key` columns hold one of `keys`, with `columns`, in the
    /// current snapshot.
    pub async fn rows_with_keys(
        &mut self,
        table: &TableName,
        columns: &[Column],
        key: &[Column],
        keys: &[Vec<Value>],
    ) -> Result<Vec<Row>, MssqlSnapshotError> {
        let typed_columns = typed(table, columns)?;
        let mut out = Vec::new();
        for batch in keys.chunks(keys_per_query(key.len())) {
            let sql = keys_query(table, &typed_columns, key, batch.len());
            let values = batch
                .iter()
                .flat_map(|k| key.iter().cloned().zip(k.iter().cloned()))
                .collect();
            let rows = self
                .query(&sql, bind(table, values)?, "reading rows by key")
                .await?;
            for data in rows {
                out.push(decode_row(table, &typed_columns, data)?);
            }
        }
        Ok(out)
    }
}

/// Returns once the capture job has processed the log up to `end`; a refusal naming the
/// capture job after [`CAPTURE_WAIT`].
async fn wait_for_capture(client: &mut MssqlClient, end: Lsn) -> Result<(), MssqlSnapshotError> {
    let deadline = tokio::time::Instant::now() + CAPTURE_WAIT;
    while max_lsn(client).await? < end {
        if tokio::time::Instant::now() >= deadline {
            return Err(MssqlSnapshotError::Refused(format!(
                "the capture job has not processed the log up to {end} within {CAPTURE_WAIT:?}: \
                 make sure SQL Server Agent runs this database's cdc capture job \
                 (EXEC sys.sp_cdc_help_jobs), then verify again"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The position `site`'s `duplex.positions` records for the source named `source` (none when
/// the table or the row does not exist).
pub async fn recorded_position(
    site: &SiteConnection,
    source: &str,
) -> Result<Option<Position>, AdminError> {
    const DOING: &str = "reading the position a target recorded";
    let mut client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing(DOING))?;
    let exists = text_value(
        &mut client,
        "SELECT CASE WHEN OBJECT_ID(N'duplex.positions', N'U') IS NULL THEN N'0' ELSE N'1' END",
        DOING,
    )
    .await
    .map_err(AdminError::doing(DOING))?;
    if exists.as_deref() != Some("1") {
        return Ok(None);
    }
    let text = committed_position(&mut client, source)
        .await
        .map_err(AdminError::doing(DOING))?;
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mssql::MssqlType;

    fn column(name: &str, type_name: &str) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
            declared: type_name.into(),
            nullable: false,
        }
    }

    #[test]
    fn rows_by_key_match_every_key_column_with_its_own_parameter() {
        let key = [column("a", "int"), column("b]", "nvarchar")];
        let columns = vec![
            ("a".to_owned(), MssqlType::Int),
            ("b]".to_owned(), MssqlType::Text),
            ("price".to_owned(), MssqlType::Money),
        ];
        assert_eq!(
            keys_query(&TableName::new("dbo", "orders"), &columns, &key, 2),
            "SELECT [a], [b]]], CAST([price] AS decimal(19,4)) AS [price] FROM [dbo].[orders] \
             WHERE ([a] = @P1 AND [b]]] = @P2) OR ([a] = @P3 AND [b]]] = @P4)"
        );
        assert_eq!(keys_per_query(1), 500);
        assert_eq!(keys_per_query(10), 209);
        assert!(keys_per_query(3000) == 1);
    }

    #[test]
    fn the_last_change_is_read_from_the_instances_change_table() {
        assert_eq!(
            last_change_query("dbo_order]s"),
            "SELECT MAX(__$start_lsn) FROM cdc.[dbo_order]]s_CT] WHERE __$start_lsn <= @P1"
        );
    }
}
