//! [`MssqlApplier`]: writing source transactions into SQL Server exactly once, as
//! [`ExactlyOnce`] over [`MssqlSession`] (see [`crate::apply`] for the protocol and why it is
//! exactly once; [`super::positions`] for the locks on `duplex.positions`).
//!
//! The session writes a run of strict inserts into one table as one multi-row INSERT
//! ([`MssqlRoute::insert_run`]) and every other event as one statement
//! ([`MssqlRoute::statement`]), and checks each statement's row count: a strict write must
//! change exactly its rows, a conditional one that changed none was skipped. A failed call that may succeed later drops the connection (the
//! server rolls its transaction back); a definite one rolls the transaction back. `upsert`
//! (backfill) is not built for SQL Server targets and is refused when the applier is made.

use std::collections::HashMap;

use super::positions::{
    committed_position, ensure_claims, ensure_positions, locked_claim, locked_position,
    record_claim, record_position,
};
use super::write::MssqlRoute;
use super::{MssqlClient, MssqlError, connect};
use crate::apply::{
    ApplyError, ApplyOptions, ExactlyOnce, SkippedWrite, TargetSession, expect_one, malformed,
    parse_position, position_text, skipped_write,
};
use crate::{ChangeEvent, Op, Position, TableName};

/// The SQL Server applier.
pub type MssqlApplier = ExactlyOnce<MssqlSession>;

/// One connection to a SQL Server target, keeping [`TargetSession`]'s contract.
pub struct MssqlSession {
    url: String,
    password: Option<String>,
    client: Option<MssqlClient>,
    in_transaction: bool,
    routes: HashMap<TableName, MssqlRoute>,
    conditional: bool,
}

/// An applier writing into the database `url` names through `routes` (by source table),
/// creating `duplex.positions` unless it exists.
pub async fn mssql_applier(
    url: &str,
    password: Option<&str>,
    routes: Vec<(TableName, MssqlRoute)>,
    options: ApplyOptions,
) -> Result<MssqlApplier, ApplyError> {
    options.validate()?;
    if options.upsert {
        return Err(ApplyError::Options(
            "`upsert` (backfill) into SQL Server is not built yet".into(),
        ));
    }
    let mut session = MssqlSession {
        url: url.to_owned(),
        password: password.map(str::to_owned),
        client: None,
        in_transaction: false,
        routes: routes.into_iter().collect(),
        conditional: options.conditional,
    };
    ensure_positions(session.client().await?).await?;
    Ok(ExactlyOnce::new(session))
}

impl MssqlSession {
    /// The connection, connecting when there is none.
    async fn client(&mut self) -> Result<&mut MssqlClient, ApplyError> {
        if self.client.is_none() {
            self.client = Some(connect(&self.url, self.password.as_deref()).await?);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    async fn run(&mut self, sql: &'static str, doing: &'static str) -> Result<(), ApplyError> {
        self.client()
            .await?
            .simple_query(sql)
            .await
            .map_err(MssqlError::query(doing))?
            .into_results()
            .await
            .map_err(MssqlError::query(doing))?;
        Ok(())
    }
}

impl TargetSession for MssqlSession {
    async fn begin(&mut self) -> Result<(), ApplyError> {
        self.run(
            "SET XACT_ABORT ON; BEGIN TRANSACTION",
            "starting the target transaction",
        )
        .await?;
        self.in_transaction = true;
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), ApplyError> {
        self.run("COMMIT TRANSACTION", "committing the target transaction")
            .await?;
        self.in_transaction = false;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), ApplyError> {
        self.in_transaction = false;
        self.run(
            "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION",
            "rolling back the target transaction",
        )
        .await
    }

    async fn rollback_open(&mut self) {
        if !self.in_transaction {
            return;
        }
        if let Err(error) = self.rollback().await {
            tracing::debug!(%error, "rolling back a failed apply failed too");
            self.client = None;
        }
    }

    async fn abandon(&mut self, error: &ApplyError) {
        if error.is_transient() {
            self.client = None;
            self.in_transaction = false;
        } else {
            self.rollback_open().await;
        }
    }

    async fn locked_position(&mut self, site: &str) -> Result<Option<Position>, ApplyError> {
        let text = locked_position(self.client().await?, site).await?;
        text.map(|t| parse_position(site, t)).transpose()
    }

    async fn record(
        &mut self,
        site: &str,
        position: &Position,
        update: bool,
    ) -> Result<(), ApplyError> {
        let text = position_text(position);
        record_position(self.client().await?, site, &text, update).await?;
        Ok(())
    }

    async fn write_events(
        &mut self,
        events: &[&ChangeEvent],
    ) -> Result<Vec<SkippedWrite>, ApplyError> {
        let conditional = self.conditional;
        let mut skipped = Vec::new();
        let mut at = 0;
        while at < events.len() {
            let event = events[at];
            let route = self
                .routes
                .get(&event.table)
                .ok_or_else(|| ApplyError::NoRoute(event.table.clone()))?;
            let (statement, count) = if !conditional && event.op == Op::Insert {
                route.insert_run(&events[at..])?
            } else {
                (route.statement(event, conditional)?, 1)
            };
            let target = route.target.clone();
            let key: Vec<String> = route
                .key
                .iter()
                .map(|&k| route.columns[k].source.clone())
                .collect();
            let mut query = tiberius::Query::new(statement.sql);
            for param in statement.params {
                query.bind(param);
            }
            let rows = query
                .execute(self.client().await?)
                .await
                .map_err(|source| ApplyError::MssqlWrite {
                    table: target.clone(),
                    op: event.op,
                    source: Box::new(MssqlError::Query {
                        doing: "writing a change",
                        source,
                    }),
                })?
                .total();
            if conditional && rows == 0 {
                skipped.push(skipped_write(event, key.iter().map(String::as_str)));
            } else if count == 1 {
                expect_one(&target, event, rows)?;
            } else if rows != count as u64 {
                return Err(malformed(
                    event,
                    &format!("a {count}-row insert into {target} wrote {rows} rows"),
                ));
            }
            at += count;
        }
        Ok(skipped)
    }

    async fn load_events(
        &mut self,
        events: &[&ChangeEvent],
    ) -> Result<Vec<SkippedWrite>, ApplyError> {
        self.write_events(events).await
    }

    async fn position(&mut self, site: &str) -> Result<Option<Position>, ApplyError> {
        let text = committed_position(self.client().await?, site).await?;
        text.map(|t| parse_position(site, t)).transpose()
    }

    async fn ensure_claims(&mut self) -> Result<(), ApplyError> {
        ensure_claims(self.client().await?).await?;
        Ok(())
    }

    async fn locked_claim(&mut self, scope: &str) -> Result<Option<String>, ApplyError> {
        Ok(locked_claim(self.client().await?, scope).await?)
    }

    async fn record_claim(
        &mut self,
        scope: &str,
        deployment: &str,
        update: bool,
    ) -> Result<(), ApplyError> {
        record_claim(self.client().await?, scope, deployment, update).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn contradictory_or_unbuilt_options_are_refused_before_connecting() {
        let url = "mssql://sa@127.0.0.1:1/none";
        let upsert = ApplyOptions {
            upsert: true,
            ..ApplyOptions::default()
        };
        match mssql_applier(url, None, Vec::new(), upsert).await {
            Err(ApplyError::Options(message)) => assert!(message.contains("not built")),
            Err(other) => panic!("{other}"),
            Ok(_) => panic!("an upserting applier"),
        }
        let both = ApplyOptions {
            upsert: true,
            conditional: true,
        };
        assert!(matches!(
            mssql_applier(url, None, Vec::new(), both).await,
            Err(ApplyError::Options(_))
        ));
    }
}
