//! [`AnyApplier`]: one applier per target site, whatever its kind (the kind is chosen here
//! and nowhere else). The protocol every kind keeps is in [`crate::apply`].

use crate::apply::{Applier, ApplyError, ApplyOptions, SkippedWrite, TableRoute, WriterClaim};
use crate::bulk::{BulkRows, BulkShape};
use crate::mssql::MssqlApplier;
use crate::mysql::MysqlApplier;
use crate::postgres::PgApplier;
use crate::{Position, SiteConnection, SiteKind, Transaction, TransactionPart};

/// An applier writing into one target site.
pub enum AnyApplier {
    /// Into PostgreSQL.
    Postgres(Box<PgApplier>),
    /// Into MySQL/MariaDB.
    Mysql(Box<MysqlApplier>),
    /// Into SQL Server.
    Mssql(Box<MssqlApplier>),
}

impl AnyApplier {
    /// Connects to `site` and checks `routes` against its tables.
    pub async fn connect(
        site: &SiteConnection,
        routes: Vec<TableRoute>,
        options: ApplyOptions,
    ) -> Result<AnyApplier, ApplyError> {
        let password = site.password();
        Ok(match site.kind {
            SiteKind::Postgres => AnyApplier::Postgres(Box::new(
                PgApplier::connect(&site.url, password, routes, options).await?,
            )),
            SiteKind::Mysql => AnyApplier::Mysql(Box::new(
                MysqlApplier::connect(&site.url, password, routes, options).await?,
            )),
            SiteKind::Mssql => {
                let mut client = crate::mssql::connect(&site.url, password).await?;
                let routes = crate::mssql::route::resolve_routes(&mut client, &routes).await?;
                drop(client);
                AnyApplier::Mssql(Box::new(
                    crate::mssql::mssql_applier(&site.url, password, routes, options).await?,
                ))
            }
        })
    }

    /// Writes a transaction made only of inserts (a backfill range and its marker) exactly as
    /// [`Applier::apply`] would, with the target's bulk path: binary COPY on PostgreSQL (see
    /// `postgres/copy.rs` for when it falls back to INSERT), multi-row INSERTs on MySQL/MariaDB.
    pub async fn load(&mut self, txn: &Transaction) -> Result<(), ApplyError> {
        match self {
            AnyApplier::Postgres(applier) => applier.load(txn).await,
            AnyApplier::Mysql(applier) => applier.apply(std::slice::from_ref(txn)).await,
            AnyApplier::Mssql(applier) => applier.load(txn).await,
        }
    }

    /// Whether this target writes rows of `shape` unread (see [`crate::bulk`]): a target of
    /// the source's kind whose columns have the very same types, neither upserting nor
    /// writing conditionally.
    pub async fn takes_bulk(&mut self, shape: &BulkShape) -> Result<bool, ApplyError> {
        match self {
            AnyApplier::Postgres(applier) => applier.takes_bulk(shape).await,
            AnyApplier::Mysql(applier) => applier.takes_bulk(shape).await,
            AnyApplier::Mssql(applier) => applier.takes_bulk(shape).await,
        }
    }

    /// Writes `rows` (whose shape [`AnyApplier::takes_bulk`] accepted) with `marker`'s source
    /// and position exactly as [`AnyApplier::load`] writes a range (see [`crate::bulk`]).
    pub async fn load_bulk(
        &mut self,
        marker: &Transaction,
        rows: &BulkRows,
    ) -> Result<(), ApplyError> {
        match self {
            AnyApplier::Postgres(applier) => applier.load_bulk(marker, rows).await,
            AnyApplier::Mysql(applier) => applier.load_bulk(marker, rows).await,
            AnyApplier::Mssql(applier) => applier.load_bulk(marker, rows).await,
        }
    }

    /// Takes `claim` on the site and fences every later write with it (see
    /// [`crate::apply::ExactlyOnce::claim`]); the previous owner when it was taken over.
    pub async fn claim(
        &mut self,
        claim: WriterClaim,
        take_over_from: Option<&str>,
    ) -> Result<Option<String>, ApplyError> {
        match self {
            AnyApplier::Postgres(applier) => applier.claim(claim, take_over_from).await,
            AnyApplier::Mysql(applier) => applier.claim(claim, take_over_from).await,
            AnyApplier::Mssql(applier) => applier.claim(claim, take_over_from).await,
        }
    }

    /// Fences every later write with `claim` where it is already that deployment's (see
    /// [`crate::apply::ExactlyOnce::fence`]).
    pub async fn fence(&mut self, claim: WriterClaim) -> Result<(), ApplyError> {
        match self {
            AnyApplier::Postgres(applier) => applier.fence(claim).await,
            AnyApplier::Mysql(applier) => applier.fence(claim).await,
            AnyApplier::Mssql(applier) => applier.fence(claim).await,
        }
    }

    /// Which change of `txn` this target refuses, and why; nothing is applied (see
    /// [`crate::apply::ExactlyOnce::locate_refusal`]).
    pub async fn locate_refusal(
        &mut self,
        txn: &Transaction,
    ) -> Result<Option<(usize, ApplyError)>, ApplyError> {
        match self {
            AnyApplier::Postgres(applier) => applier.locate_refusal(txn).await,
            AnyApplier::Mysql(applier) => applier.locate_refusal(txn).await,
            AnyApplier::Mssql(applier) => applier.locate_refusal(txn).await,
        }
    }

    /// The writes a conditional apply skipped since the last call (see
    /// [`ApplyOptions::conditional`]).
    pub fn take_skipped(&mut self) -> Vec<SkippedWrite> {
        match self {
            AnyApplier::Postgres(applier) => applier.take_skipped(),
            AnyApplier::Mysql(applier) => applier.take_skipped(),
            AnyApplier::Mssql(applier) => applier.take_skipped(),
        }
    }
}

impl Applier for AnyApplier {
    async fn apply(&mut self, batch: &[Transaction]) -> Result<(), ApplyError> {
        match self {
            AnyApplier::Postgres(applier) => applier.apply(batch).await,
            AnyApplier::Mysql(applier) => applier.apply(batch).await,
            AnyApplier::Mssql(applier) => applier.apply(batch).await,
        }
    }

    async fn apply_part(&mut self, part: &TransactionPart) -> Result<(), ApplyError> {
        match self {
            AnyApplier::Postgres(applier) => applier.apply_part(part).await,
            AnyApplier::Mysql(applier) => applier.apply_part(part).await,
            AnyApplier::Mssql(applier) => applier.apply_part(part).await,
        }
    }

    async fn position(&mut self, source: &str) -> Result<Option<Position>, ApplyError> {
        match self {
            AnyApplier::Postgres(applier) => applier.position(source).await,
            AnyApplier::Mysql(applier) => applier.position(source).await,
            AnyApplier::Mssql(applier) => applier.position(source).await,
        }
    }
}
