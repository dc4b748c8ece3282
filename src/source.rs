//! One change stream per source site, whatever its kind.

use std::collections::BTreeSet;

use duplex_connectors::mysql::{
    self, MysqlStream, MysqlStreamConfig, MysqlStreamError, StartPosition,
};
use duplex_connectors::postgres::{self, PgStream, PgStreamConfig, PgStreamError};
use duplex_connectors::{Position, TableName, Transaction, TransactionPart};

use crate::config::Site;

/// What a source yields.
#[derive(Debug)]
pub enum SourceItem {
    /// A committed transaction touching mapped tables (or the end of one that came in parts).
    Transaction(Transaction),
    /// The next changes of a large transaction not yet committed (see
    /// `duplex_connectors::apply`); its [`SourceItem::Transaction`] follows.
    Part(TransactionPart),
    /// The source has read everything up to this position and has nothing to deliver before
    /// it.
    Heartbeat(Position),
}

/// A source's change stream failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The PostgreSQL change stream failed.
    #[error(transparent)]
    Postgres(#[from] PgStreamError),
    /// The MySQL/MariaDB binlog stream failed.
    #[error(transparent)]
    Mysql(#[from] MysqlStreamError),
    /// The position to resume from belongs to another kind of database.
    #[error(
        "the recorded position {0} does not belong to a {1} source: the duplex bookkeeping of this link is inconsistent"
    )]
    ForeignPosition(Position, duplex_connectors::SiteKind),
}

impl SourceError {
    /// True when restarting the stream after a backoff may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            SourceError::Postgres(e) => e.is_transient(),
            SourceError::Mysql(e) => e.is_transient(),
            SourceError::ForeignPosition(..) => false,
        }
    }
}

/// A running change stream.
pub enum SourceStream {
    /// PostgreSQL logical replication.
    Postgres(Box<PgStream>),
    /// MySQL/MariaDB binlog.
    Mysql(Box<MysqlStream>),
}

/// The replication slot and publication names duplex uses for a PostgreSQL site:
/// `duplex_<database>_<site>`, every character that is not a lower-case letter or digit
/// written as `_`, at most 63 characters. Slot names are global to a PostgreSQL server, so
/// the database keeps two deployments reading different databases apart.
pub fn slot_name(site: &Site) -> String {
    let database = url::Url::parse(&site.url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .unwrap_or_default();
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("duplex_{}_{}", clean(&database), clean(&site.name));
    name.truncate(63);
    name
}

impl SourceStream {
    /// Starts reading `tables` of `site`, just after `start` (or, with `None`, from where the
    /// site's slot stands / the server's current binlog position).
    pub async fn start(
        site: &Site,
        tables: BTreeSet<TableName>,
        start: Option<Position>,
    ) -> Result<SourceStream, SourceError> {
        Self::start_with(site, tables, start, false).await
    }

    /// Starts reading for the merge engine: like [`SourceStream::start`], but also reading
    /// `duplex.positions`, so duplex's own transactions come out as [`duplex_connectors::Origin::Duplex`]
    /// with their positions row (the echo marker), and whole transactions only (the origin of a
    /// transaction is known at its commit).
    pub async fn start_merge(
        site: &Site,
        tables: BTreeSet<TableName>,
        start: Option<Position>,
    ) -> Result<SourceStream, SourceError> {
        Self::start_with(site, tables, start, true).await
    }

    async fn start_with(
        site: &Site,
        mut tables: BTreeSet<TableName>,
        start: Option<Position>,
        merge: bool,
    ) -> Result<SourceStream, SourceError> {
        let part_events = (!merge).then_some(postgres::DEFAULT_PART_EVENTS);
        let password = site.password.as_ref().map(|p| p.expose().to_owned());
        match site.kind {
            duplex_connectors::SiteKind::Postgres => {
                let start = match start {
                    None => None,
                    Some(Position::Postgres(lsn)) => Some(lsn),
                    Some(other) => return Err(SourceError::ForeignPosition(other, site.kind)),
                };
                let name = slot_name(site);
                let mut config = PgStreamConfig::new(
                    &site.name,
                    &site.url,
                    &name,
                    &name,
                    tables.into_iter().collect(),
                );
                config.password = password;
                config.start = start;
                config.part_events = part_events;
                config.echo_marker = merge;
                Ok(SourceStream::Postgres(Box::new(
                    PgStream::start(config).await?,
                )))
            }
            duplex_connectors::SiteKind::Mysql => {
                if merge {
                    tables.insert(TableName::new("duplex", "positions"));
                }
                let mut config = MysqlStreamConfig::new(&site.name, &site.url, tables);
                config.password = password;
                config.part_events = part_events;
                config.start = match start {
                    None => StartPosition::Current,
                    Some(Position::Mysql(pos)) => StartPosition::At(pos),
                    Some(other) => return Err(SourceError::ForeignPosition(other, site.kind)),
                };
                Ok(SourceStream::Mysql(Box::new(
                    MysqlStream::start(config).await?,
                )))
            }
        }
    }

    /// The next transaction, part of a large transaction, or heartbeat. Cancellation safe.
    pub async fn next(&mut self) -> Result<SourceItem, SourceError> {
        Ok(match self {
            SourceStream::Postgres(stream) => match stream.next().await? {
                postgres::StreamItem::Transaction(tx) => SourceItem::Transaction(tx),
                postgres::StreamItem::Part(part) => SourceItem::Part(part),
                postgres::StreamItem::Heartbeat(lsn) => {
                    SourceItem::Heartbeat(Position::Postgres(lsn))
                }
            },
            SourceStream::Mysql(stream) => match stream.next().await? {
                mysql::StreamItem::Transaction(tx) => SourceItem::Transaction(tx),
                mysql::StreamItem::Part(part) => SourceItem::Part(part),
                mysql::StreamItem::Heartbeat(pos) => SourceItem::Heartbeat(Position::Mysql(pos)),
            },
        })
    }

    /// Where a MySQL/MariaDB stream stands before it delivered anything (its start); `None`
    /// for PostgreSQL, whose slot keeps its own position, and before the binlog file is known.
    pub fn start_position(&self) -> Option<Position> {
        match self {
            SourceStream::Postgres(_) => None,
            SourceStream::Mysql(stream) => {
                let position = stream.position();
                (!position.file.is_empty()).then(|| Position::Mysql(position.clone()))
            }
        }
    }

    /// Tells the source that every target has committed everything up to `position`, so it
    /// may release its log before it (PostgreSQL: the slot's flush position; the MySQL binlog
    /// is kept by the server's own retention).
    pub fn ack(&self, position: &Position) {
        if let (SourceStream::Postgres(stream), Position::Postgres(lsn)) = (self, position) {
            stream.ack(*lsn);
        }
    }

    /// Ends the stream cleanly.
    pub async fn shutdown(self) {
        match self {
            SourceStream::Postgres(stream) => {
                if let Err(error) = stream.shutdown().await {
                    tracing::debug!(%error, "closing the PostgreSQL change stream");
                }
            }
            SourceStream::Mysql(stream) => stream.shutdown().await,
        }
    }
}

/// Why a source's tables could not be described.
#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    /// PostgreSQL catalog access failed.
    #[error(transparent)]
    Postgres(#[from] duplex_connectors::postgres::PgError),
    /// MySQL catalog access failed.
    #[error(transparent)]
    Mysql(#[from] duplex_connectors::mysql::MysqlError),
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
            DescribeError::Missing(_) | DescribeError::NoPrimaryKey(_) => false,
        }
    }
}

/// Reads the schemas of a site's tables; each must exist and have a primary key.
pub async fn describe(
    site: &Site,
    tables: &BTreeSet<TableName>,
) -> Result<std::collections::HashMap<TableName, duplex_connectors::TableSchema>, DescribeError> {
    let password = site.password.as_ref().map(|p| p.expose());
    let mut schemas = std::collections::HashMap::new();
    match site.kind {
        duplex_connectors::SiteKind::Postgres => {
            let client = postgres::connect(&site.url, password).await?;
            for table in tables {
                let info = postgres::describe_table(&client, table).await?;
                schemas.insert(
                    table.clone(),
                    info.ok_or_else(|| DescribeError::Missing(table.clone()))?
                        .schema,
                );
            }
        }
        duplex_connectors::SiteKind::Mysql => {
            let mut conn = mysql::connect(&site.url, password).await?;
            for table in tables {
                let info = mysql::describe_table(&mut conn, table).await?;
                schemas.insert(
                    table.clone(),
                    info.ok_or_else(|| DescribeError::Missing(table.clone()))?
                        .schema,
                );
            }
            if let Err(error) = conn.disconnect().await {
                tracing::debug!(%error, "closing a catalog connection");
            }
        }
    }
    if let Some(schema) = schemas.values().find(|s| s.primary_key.is_empty()) {
        return Err(DescribeError::NoPrimaryKey(schema.name.clone()));
    }
    Ok(schemas)
}
