//! The log head of a MySQL/MariaDB site (see [`crate::head`]).

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::head::LogHead;

/// Every binlog file with its size; the current file's size is the server's current position
/// (`SHOW MASTER STATUS`), read after the list so that it is never behind it.
pub(crate) async fn read(conn: &mut Conn) -> Result<LogHead, mysql_async::Error> {
    let rows: Vec<mysql_async::Row> = conn.query("SHOW BINARY LOGS").await?;
    let mut files: Vec<(String, u64)> = rows
        .into_iter()
        .filter_map(|mut row| Some((row.take::<String, _>(0)?, row.take::<u64, _>(1)?)))
        .collect();
    let status: Option<mysql_async::Row> = conn.query_first("SHOW MASTER STATUS").await?;
    if let Some((file, offset)) =
        status.and_then(|mut row| Some((row.take::<String, _>(0)?, row.take::<u64, _>(1)?)))
    {
        match files.last_mut() {
            Some((last, size)) if *last == file => *size = (*size).max(offset),
            _ => files.push((file, offset)),
        }
    }
    Ok(LogHead::Mysql { files })
}
