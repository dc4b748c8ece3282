//! Reading table schemas from the PostgreSQL catalog.

use tokio_postgres::Client;

use crate::{Column, TableName, TableSchema};

use super::PgError;

/// `pg_class.relreplident`: which old-row columns the WAL carries for updates and deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// Primary-key columns (the default).
    Default,
    /// All columns.
    Full,
    /// The columns of a chosen unique index.
    Index,
    /// None: updates and deletes cannot be replicated.
    Nothing,
}

/// A table's schema plus what the PostgreSQL reader needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Columns and primary key.
    pub schema: TableSchema,
    /// The table's replica identity.
    pub replica_identity: ReplicaIdentity,
    /// The table's oid.
    pub oid: u32,
}

/// Describes an ordinary or partitioned table; `None` when it does not exist.
pub async fn describe_table(
    client: &Client,
    table: &TableName,
) -> Result<Option<TableInfo>, PgError> {
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, c.relreplident::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(PgError::query("looking up a mapped table"))?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let replica_identity = match row.get::<_, &str>(1) {
        "f" => ReplicaIdentity::Full,
        "i" => ReplicaIdentity::Index,
        "n" => ReplicaIdentity::Nothing,
        _ => ReplicaIdentity::Default,
    };
    let columns = client
        .query(
            "SELECT a.attname::text, \
                    CASE WHEN b.typcategory = 'A' THEN 'array' \
                         WHEN b.typtype = 'e' THEN 'enum' \
                         WHEN b.typtype = 'c' THEN 'composite' \
                         ELSE b.typname::text END, \
                    format_type(a.atttypid, a.atttypmod) \
                      || repeat('[]', greatest(a.attndims - 1, 0)), \
                    NOT a.attnotnull \
             FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .map_err(PgError::query("reading a mapped table's columns"))?
        .into_iter()
        .map(|r| Column {
            name: r.get(0),
            type_name: r.get(1),
            declared: r.get(2),
            nullable: r.get(3),
        })
        .collect();
    let primary_key = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
            &[&oid],
        )
        .await
        .map_err(PgError::query("reading a mapped table's primary key"))?
        .into_iter()
        .map(|r| r.get(0))
        .collect();
    Ok(Some(TableInfo {
        schema: TableSchema {
            name: table.clone(),
            columns,
            primary_key,
        },
        replica_identity,
        oid,
    }))
}
