//! The databases of a case, of either kind, and client connections to them.

use super::*;

/// A fresh database of either kind.
pub(crate) enum Site {
    Pg(PgDatabase),
    Maria(MariaDatabase),
}

impl Site {
    pub(crate) fn create(servers: &Servers, kind: Kind) -> BenchResult<Site> {
        Ok(match kind {
            Kind::Pg => Site::Pg(servers.pg.try_create_database()?),
            Kind::Maria => Site::Maria(servers.maria.try_create_database()?),
        })
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Site::Pg(db) => db.name(),
            Site::Maria(db) => db.name(),
        }
    }

    pub(crate) fn url(&self) -> String {
        match self {
            Site::Pg(db) => db.url(),
            Site::Maria(db) => db.url(),
        }
    }

    pub(crate) fn kind_name(&self) -> &'static str {
        match self {
            Site::Pg(_) => "postgres",
            Site::Maria(_) => "mysql",
        }
    }

    /// The mapped table as the config names it.
    pub(crate) fn table(&self) -> String {
        match self {
            Site::Pg(_) => "public.bench".to_owned(),
            Site::Maria(db) => format!("{}.bench", db.name()),
        }
    }

    /// duplex's replication slot, for a PostgreSQL source.
    pub(crate) fn slot(&self) -> Option<String> {
        match self {
            Site::Pg(db) => Some(format!("duplex_{0}_{0}", db.name())),
            Site::Maria(_) => None,
        }
    }

    /// Empties the table (duplex stopped), as the superuser.
    pub(crate) fn truncate(&self) -> BenchResult<()> {
        match self {
            Site::Pg(db) => db.psql("TRUNCATE bench").map(drop)?,
            Site::Maria(db) => db.sql("TRUNCATE TABLE bench").map(drop)?,
        }
        Ok(())
    }

    /// Whether duplex's change stream from this source is live.
    pub(crate) fn streaming(&self) -> BenchResult<bool> {
        Ok(match self {
            Site::Pg(db) => {
                let slot = self.slot().unwrap_or_default();
                db.psql(&format!(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'"
                ))?
                .trim()
                    == "t"
            }
            Site::Maria(db) => {
                db.sql(
                    "SELECT count(*) FROM information_schema.processlist \
                     WHERE command LIKE 'Binlog Dump%'",
                )?
                .trim()
                    != "0"
            }
        })
    }

    /// Drops a replication slot of this PostgreSQL database if it exists (its reader stopped),
    /// retrying while its WAL sender exits.
    pub(crate) fn drop_slot(&self, slot: &str) -> BenchResult<()> {
        match self {
            Site::Pg(db) => harness::drop_slot(db, slot),
            Site::Maria(_) => Ok(()),
        }
    }
}

/// A client connection of either kind, as the `duplex` account.
pub(crate) enum Conn {
    Pg {
        client: Box<tokio_postgres::Client>,
        connection: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
        statements: HashMap<&'static str, tokio_postgres::Statement>,
    },
    Maria(mysql_async::Conn),
}

impl Conn {
    pub(crate) async fn open(site: &Site) -> BenchResult<Conn> {
        match site {
            Site::Pg(db) => {
                let (client, connection) =
                    tokio_postgres::connect(&db.url(), tokio_postgres::NoTls).await?;
                Ok(Conn::Pg {
                    client: Box::new(client),
                    connection: tokio::spawn(connection),
                    statements: HashMap::new(),
                })
            }
            Site::Maria(db) => {
                let opts = mysql_async::Opts::from_url(&db.url())?;
                Ok(Conn::Maria(mysql_async::Conn::new(opts).await?))
            }
        }
    }

    /// Runs one statement (or, on PostgreSQL, a script) with the simple protocol.
    pub(crate) async fn execute(&mut self, sql: &str) -> BenchResult<()> {
        match self {
            Conn::Pg { client, .. } => client.batch_execute(sql).await?,
            Conn::Maria(conn) => conn.query_drop(sql).await?,
        }
        Ok(())
    }

    pub(crate) async fn pg_statement(
        client: &tokio_postgres::Client,
        statements: &mut HashMap<&'static str, tokio_postgres::Statement>,
        sql: &'static str,
        types: &[tokio_postgres::types::Type],
    ) -> BenchResult<tokio_postgres::Statement> {
        if let Some(statement) = statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare_typed(sql, types).await?;
        statements.insert(sql, statement.clone());
        Ok(statement)
    }

    /// `SELECT max(id) FROM bench`, through a prepared statement.
    pub(crate) async fn max_id(&mut self) -> BenchResult<Option<i64>> {
        const SQL: &str = "SELECT max(id) FROM bench";
        match self {
            Conn::Pg {
                client, statements, ..
            } => {
                let statement = Self::pg_statement(client, statements, SQL, &[]).await?;
                Ok(client.query_one(&statement, &[]).await?.try_get(0)?)
            }
            Conn::Maria(conn) => {
                let max: Option<Option<i64>> = conn.exec_first(SQL, ()).await?;
                Ok(max.flatten())
            }
        }
    }

    /// `SELECT count(*) FROM bench`.
    pub(crate) async fn count(&mut self) -> BenchResult<i64> {
        const SQL: &str = "SELECT count(*) FROM bench";
        match self {
            Conn::Pg { client, .. } => Ok(client.query_one(SQL, &[]).await?.try_get(0)?),
            Conn::Maria(conn) => Ok(conn.query_first(SQL).await?.unwrap_or(0)),
        }
    }

    /// Inserts row `id` in its own (autocommit) transaction, through a prepared statement.
    pub(crate) async fn insert_row(&mut self, id: i64) -> BenchResult<()> {
        match self {
            Conn::Pg {
                client, statements, ..
            } => {
                let statement = Self::pg_statement(
                    client,
                    statements,
                    "INSERT INTO bench VALUES \
                     ($1, $1 % 1000, md5($1::text), ($1 % 100000) / 100.0, now())",
                    &[tokio_postgres::types::Type::INT8],
                )
                .await?;
                client.execute(&statement, &[&id]).await?;
            }
            Conn::Maria(conn) => {
                conn.exec_drop(
                    "INSERT INTO bench VALUES (?, ? % 1000, md5(?), (? % 100000) / 100, NOW(6))",
                    (id, id, id, id),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// Closes the session and waits until the server has seen it go (so that dropping the
    /// database right after does not have to terminate it).
    pub(crate) async fn close(self) {
        match self {
            Conn::Pg {
                client, connection, ..
            } => {
                drop(client);
                let _ = connection.await;
            }
            Conn::Maria(conn) => {
                let _ = conn.disconnect().await;
            }
        }
    }
}
