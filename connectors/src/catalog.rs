//! Reading a site's table definitions, whatever its kind.

use std::collections::{BTreeSet, HashMap};

use crate::mssql::{MssqlClient, MssqlError};
use crate::mysql::MysqlError;
use crate::postgres::PgError;
use crate::{SiteConnection, SiteKind, TableName, TableSchema};

/// Why a site's tables could not be described.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// PostgreSQL catalog access failed.
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// MySQL catalog access failed.
    #[error(transparent)]
    Mysql(#[from] MysqlError),
    /// SQL Server catalog access failed.
    #[error(transparent)]
    Mssql(Box<MssqlError>),
    /// What was asked is not built for this kind of site.
    #[error(transparent)]
    NotSupported(#[from] crate::NotSupported),
    /// A mapped table does not exist.
    #[error(
        "table {0} does not exist: create it or correct the mapping (duplex check lists what is missing)"
    )]
    Missing(TableName),
    /// A mapped table has no primary key.
    #[error(
        "table {0} has no primary key: duplex identifies rows by primary key (duplex check shows the fix)"
    )]
    NoPrimaryKey(TableName),
}

impl DescribeError {
    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            DescribeError::Postgres(e) => e.is_transient(),
            DescribeError::Mysql(e) => e.is_transient(),
            DescribeError::Mssql(e) => e.is_transient(),
            DescribeError::Missing(_)
            | DescribeError::NoPrimaryKey(_)
            | DescribeError::NotSupported(_) => false,
        }
    }
}

impl From<MssqlError> for DescribeError {
    fn from(error: MssqlError) -> DescribeError {
        DescribeError::Mssql(Box::new(error))
    }
}

/// A catalog connection to a site, of its kind; closed with [`Catalog::close`].
enum Catalog {
    Postgres(tokio_postgres::Client),
    Mysql(mysql_async::Conn),
    Mssql(Box<MssqlClient>),
}

impl Catalog {
    async fn open(site: &SiteConnection) -> Result<Catalog, DescribeError> {
        let password = site.password();
        Ok(match site.kind {
            SiteKind::Postgres => {
                Catalog::Postgres(crate::postgres::connect(&site.url, password).await?)
            }
            SiteKind::Mysql => Catalog::Mysql(crate::mysql::connect(&site.url, password).await?),
            SiteKind::Mssql => {
                Catalog::Mssql(Box::new(crate::mssql::connect(&site.url, password).await?))
            }
        })
    }

    async fn close(self) {
        if let Catalog::Mysql(conn) = self
            && let Err(error) = conn.disconnect().await
        {
            tracing::debug!(%error, "closing a catalog connection");
        }
    }
}

/// The names of the tables of `schema` on a site (PostgreSQL: ordinary and partitioned tables
/// of the schema; MySQL/MariaDB: base tables of the database), sorted.
pub async fn table_names(
    site: &SiteConnection,
    schema: &str,
) -> Result<Vec<String>, DescribeError> {
    if site.kind == SiteKind::Mssql {
        return Err(crate::NotSupported {
            what: "a schema-wide mapping (schema.*)",
            fix: "name each table in its own mapping",
        }
        .into());
    }
    let mut catalog = Catalog::open(site).await?;
    let names = match &mut catalog {
        Catalog::Postgres(client) => crate::postgres::table_names(client, schema).await?,
        Catalog::Mysql(conn) => crate::mysql::table_names(conn, schema).await?,
        Catalog::Mssql(_) => Vec::new(),
    };
    catalog.close().await;
    Ok(names)
}

/// Reads the schemas of a site's tables; each must exist and have a primary key.
pub async fn describe(
    site: &SiteConnection,
    tables: &BTreeSet<TableName>,
) -> Result<HashMap<TableName, TableSchema>, DescribeError> {
    let mut catalog = Catalog::open(site).await?;
    let mut schemas = HashMap::new();
    for table in tables {
        let schema = match &mut catalog {
            Catalog::Postgres(client) => crate::postgres::describe_table(client, table)
                .await?
                .map(|info| info.schema),
            Catalog::Mysql(conn) => crate::mysql::describe_table(conn, table)
                .await?
                .map(|info| info.schema),
            Catalog::Mssql(client) => crate::mssql::route::describe_table(client, table).await?,
        };
        schemas.insert(
            table.clone(),
            schema.ok_or_else(|| DescribeError::Missing(table.clone()))?,
        );
    }
    catalog.close().await;
    if let Some(schema) = schemas.values().find(|s| s.primary_key.is_empty()) {
        return Err(DescribeError::NoPrimaryKey(schema.name.clone()));
    }
    Ok(schemas)
}

/// How a site compares the values of one text column: two values it holds equal are one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnCollation {
    /// Column name.
    pub column: String,
    /// The collation's name (PostgreSQL's database default as `default (<lc_collate>)`).
    pub collation: String,
    /// `'A'` equals `'a'` (MariaDB `_ci` collations; PostgreSQL nondeterministic collations,
    /// which may also ignore accents).
    pub case_insensitive: bool,
    /// `'b'` equals `'b '` (every MariaDB collation but the `_nopad_` ones, `utf8mb4_bin`
    /// included; PostgreSQL `char(n)`).
    pub pads: bool,
}

impl ColumnCollation {
    /// What the collation ignores when comparing, e.g. `letter case and trailing spaces`;
    /// `None` when it compares exactly.
    pub fn ignores(&self) -> Option<&'static str> {
        match (self.case_insensitive, self.pads) {
            (true, true) => Some("letter case and trailing spaces"),
            (true, false) => Some("letter case"),
            (false, true) => Some("trailing spaces"),
            (false, false) => None,
        }
    }
}

/// The collations of `table`'s columns that have one (text columns), in table order.
pub async fn collations(
    site: &SiteConnection,
    table: &TableName,
) -> Result<Vec<ColumnCollation>, DescribeError> {
    let mut catalog = Catalog::open(site).await?;
    let found = match &mut catalog {
        Catalog::Postgres(client) => crate::postgres::collations(client, table).await?,
        Catalog::Mysql(conn) => crate::mysql::collations(conn, table).await?,
        Catalog::Mssql(client) => crate::mssql::route::collations(client, table).await?,
    };
    catalog.close().await;
    Ok(found)
}
