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

/// The ordinary and partitioned tables of `schema` (not partitions themselves), by name.
pub async fn table_names(client: &Client, schema: &str) -> Result<Vec<String>, PgError> {
    let rows = client
        .query(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
             ORDER BY 1",
            &[&schema],
        )
        .await
        .map_err(PgError::query("listing the tables of a schema"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
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

/// The foreign keys declared on `table` (the referencing side), in constraint-name order.
pub async fn foreign_keys(
    client: &Client,
    table: &TableName,
) -> Result<Vec<crate::foreign_keys::ForeignKey>, PgError> {
    let action = |code: &str| {
        match code {
            "r" => "RESTRICT",
            "c" => "CASCADE",
            "n" => "SET NULL",
            "d" => "SET DEFAULT",
            _ => "NO ACTION",
        }
        .to_owned()
    };
    Ok(client
        .query(
            "SELECT c.conname::text, rn.nspname::text, rt.relname::text, \
                    c.confdeltype::text, c.confupdtype::text, c.condeferrable \
             FROM pg_constraint c \
             JOIN pg_class t ON t.oid = c.conrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             JOIN pg_class rt ON rt.oid = c.confrelid \
             JOIN pg_namespace rn ON rn.oid = rt.relnamespace \
             WHERE c.contype = 'f' AND n.nspname = $1 AND t.relname = $2 \
             ORDER BY c.conname",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(PgError::query("reading a table's foreign keys"))?
        .into_iter()
        .map(|r| crate::foreign_keys::ForeignKey {
            name: r.get(0),
            table: table.clone(),
            references: TableName::new(r.get::<_, String>(1), r.get::<_, String>(2)),
            on_delete: action(r.get(3)),
            on_update: action(r.get(4)),
            deferrable: r.get(5),
        })
        .collect())
}

/// The collations of `table`'s columns that have one (see [`crate::catalog::collations`]).
pub async fn collations(
    client: &Client,
    table: &TableName,
) -> Result<Vec<crate::catalog::ColumnCollation>, PgError> {
    Ok(client
        .query(
            "SELECT a.attname::text, \
                    CASE WHEN co.collname = 'default' \
                         THEN 'default (' || (SELECT datcollate FROM pg_database \
                                              WHERE datname = current_database()) || ')' \
                         ELSE co.collname::text END, \
                    NOT co.collisdeterministic, t.typname = 'bpchar' \
             FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_collation co ON co.oid = a.attcollation \
             JOIN pg_type t ON t.oid = a.atttypid \
             WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(PgError::query("reading a table's column collations"))?
        .into_iter()
        .map(|r| crate::catalog::ColumnCollation {
            column: r.get(0),
            collation: r.get(1),
            case_insensitive: r.get(2),
            pads: r.get(3),
        })
        .collect())
}
