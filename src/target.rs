//! One applier per (source, target) pair, whatever the target's kind.

use duplex_connectors::apply::{Applier, ApplyError, ApplyOptions, SkippedWrite, TableRoute};
use duplex_connectors::mysql::MysqlApplier;
use duplex_connectors::postgres::PgApplier;
use duplex_connectors::{Position, SiteKind, Transaction, TransactionPart};

use crate::config::Site;

/// An applier writing into one target site.
pub enum Target {
    /// Into PostgreSQL.
    Postgres(Box<PgApplier>),
    /// Into MySQL/MariaDB.
    Mysql(MysqlApplier),
}

impl Target {
    /// Connects to `site` and checks `routes` against its tables.
    pub async fn connect(site: &Site, routes: Vec<TableRoute>) -> Result<Target, ApplyError> {
        Self::connect_with(site, routes, ApplyOptions::default()).await
    }

    /// Connects with `options` (the merge engine's conditional writes).
    pub async fn connect_with(
        site: &Site,
        routes: Vec<TableRoute>,
        options: ApplyOptions,
    ) -> Result<Target, ApplyError> {
        let password = site.password.as_ref().map(|p| p.expose());
        Ok(match site.kind {
            SiteKind::Postgres => Target::Postgres(Box::new(
                PgApplier::connect(&site.url, password, routes, options).await?,
            )),
            SiteKind::Mysql => {
                Target::Mysql(MysqlApplier::connect(&site.url, password, routes, options).await?)
            }
        })
    }

    /// Writes a batch of whole transactions in one target transaction (see [`Applier`]).
    pub async fn apply(&mut self, batch: &[Transaction]) -> Result<(), ApplyError> {
        match self {
            Target::Postgres(applier) => applier.apply(batch).await,
            Target::Mysql(applier) => applier.apply(batch).await,
        }
    }

    /// Writes the next part of a large transaction into the open target transaction (see
    /// [`Applier::apply_part`]); the final transaction, applied alone, commits it.
    pub async fn apply_part(&mut self, part: &TransactionPart) -> Result<(), ApplyError> {
        match self {
            Target::Postgres(applier) => applier.apply_part(part).await,
            Target::Mysql(applier) => applier.apply_part(part).await,
        }
    }

    /// The writes a conditional apply skipped since the last call (see
    /// [`ApplyOptions::conditional`]).
    pub fn take_skipped(&mut self) -> Vec<SkippedWrite> {
        match self {
            Target::Postgres(applier) => applier.take_skipped(),
            Target::Mysql(applier) => applier.take_skipped(),
        }
    }

    /// The last position of `source` committed here.
    pub async fn position(&mut self, source: &str) -> Result<Option<Position>, ApplyError> {
        match self {
            Target::Postgres(applier) => applier.position(source).await,
            Target::Mysql(applier) => applier.position(source).await,
        }
    }
}
