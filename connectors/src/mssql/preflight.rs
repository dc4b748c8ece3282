//! `duplex check` for SQL Server, as decisions over facts the probe queries read: the server
//! version, CDC on the database and each mapped table, the capture and cleanup jobs and the
//! retention, snapshot isolation for backfill, the user's permissions, primary keys and types.
//!
//! The queries are constants here so their text is reviewed and tested with the decisions;
//! nothing is changed on the server. Every failure names the statement that fixes it.

use crate::TableName;
use crate::preflight::{self, Finding};

use super::positions::{ECHO_INSTANCE, POSITIONS_CDC, POSITIONS_DDL};
use super::stream::quote;
use super::types::{MssqlType, TypeError};
use super::{MssqlClient, MssqlError};

/// The oldest SQL Server major version supported: 13 (SQL Server 2016).
pub const MIN_MAJOR_VERSION: i32 = 13;

/// Server and database facts: `ProductMajorVersion`, `ProductVersion`, `EngineEdition`
/// (5 and 8: Azure SQL Database and Managed Instance), `is_cdc_enabled`,
/// `snapshot_isolation_state` (1 = on) and the user's database roles and permissions.
pub const SERVER_QUERY: &str = "SELECT \
     CAST(SERVERPROPERTY('ProductMajorVersion') AS int), \
     CAST(SERVERPROPERTY('ProductVersion') AS nvarchar(128)), \
     CAST(SERVERPROPERTY('EngineEdition') AS int), \
     d.is_cdc_enabled, CAST(d.snapshot_isolation_state AS int), \
     CAST(IS_ROLEMEMBER('db_owner') AS int), \
     CAST(HAS_PERMS_BY_NAME(DB_NAME(), 'DATABASE', 'CREATE TABLE') AS int) \
     FROM sys.databases d WHERE d.database_id = DB_ID()";

/// The CDC jobs of this database: `job_type` (`capture` / `cleanup`) and `retention` in
/// minutes (cleanup), from msdb.
pub const JOBS_QUERY: &str =
    "SELECT job_type, retention FROM msdb.dbo.cdc_jobs WHERE database_id = DB_ID()";

/// Whether SQL Server Agent, which runs the capture job, is running (`Running`).
pub const AGENT_QUERY: &str = "SELECT status_desc FROM sys.dm_server_services \
     WHERE servicename LIKE N'SQL Server Agent%'";

/// The capture instances of table `@P1` (`schema.table`): name, gating role and whether the
/// user may read it (a member of the role, or no role).
pub const INSTANCES_QUERY: &str = "SELECT ct.capture_instance, ct.role_name, \
     CAST(CASE WHEN ct.role_name IS NULL THEN 1 ELSE ISNULL(IS_ROLEMEMBER(ct.role_name), 0) END AS int) \
     FROM cdc.change_tables ct WHERE ct.source_object_id = OBJECT_ID(@P1) \
     ORDER BY ct.create_date";

/// The columns capture instance `@P1` captures.
pub const CAPTURED_COLUMNS_QUERY: &str = "SELECT cc.column_name FROM cdc.captured_columns cc \
     JOIN cdc.change_tables ct ON ct.object_id = cc.object_id \
     WHERE ct.capture_instance = @P1 ORDER BY cc.column_ordinal";

/// What the server and database probes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// The database's name.
    pub database: String,
    /// `ProductMajorVersion` (16 = SQL Server 2022).
    pub major_version: i32,
    /// `ProductVersion`, for the message.
    pub version: String,
    /// `EngineEdition`.
    pub engine_edition: i32,
    /// `sys.databases.is_cdc_enabled`.
    pub cdc_enabled: bool,
    /// `snapshot_isolation_state = 1`.
    pub snapshot_isolation: bool,
    /// Member of `db_owner`.
    pub db_owner: bool,
    /// May create tables (for `duplex.positions` on a target).
    pub can_create_tables: bool,
    /// The CDC jobs: (`job_type`, `retention` minutes); `None` when msdb could not be read.
    pub jobs: Option<Vec<(String, Option<i64>)>>,
    /// SQL Server Agent's `status_desc`, `None` when it could not be read (no VIEW SERVER
    /// STATE) or there is none (Azure SQL Database schedules CDC itself).
    pub agent: Option<String>,
}

/// What the probes of one mapped table found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFacts {
    /// The table.
    pub table: TableName,
    /// Its columns: name, `sys.types` name and scale.
    pub columns: Vec<(String, String, u8)>,
    /// Its primary-key columns.
    pub primary_key: Vec<String>,
    /// Its capture instances: name, gating role, whether the user may read it.
    pub instances: Vec<(String, Option<String>, bool)>,
    /// The columns the (only) capture instance captures.
    pub captured: Vec<String>,
    /// Its `IDENTITY` column, if it has one (a table has at most one).
    pub identity: Option<String>,
    /// Its columns declared `(max)` and its `xml` columns (`max_length` -1), which CDC leaves
    /// out of an update's before-image when the update did not change them.
    pub unbounded: Vec<String>,
}

impl ServerFacts {
    /// Whether the database runs in Azure SQL Database or Managed Instance, where CDC is
    /// scheduled without SQL Server Agent.
    fn azure(&self) -> bool {
        matches!(self.engine_edition, 5 | 8)
    }
}

/// The findings on the server and database.
pub fn check_server(facts: &ServerFacts) -> Vec<Finding> {
    let db = quote(&facts.database);
    let mut findings = vec![
        Finding::require(
            facts.major_version >= MIN_MAJOR_VERSION,
            format!("SQL Server {}", facts.version),
            "duplex reads CDC of SQL Server 2016 (13.x) or newer: upgrade the server",
        ),
        Finding::require(
            facts.cdc_enabled,
            format!("CDC enabled on database {}", facts.database),
            format!("USE {db}; EXEC sys.sp_cdc_enable_db; (as sysadmin)"),
        ),
        // Only a backfill from this site reads in a snapshot (`super::snapshot`), and it
        // refuses to start without it: links run without it.
        if facts.snapshot_isolation {
            Finding::ok(format!(
                "snapshot isolation allowed on database {}",
                facts.database
            ))
        } else {
            Finding::warn(
                format!(
                    "snapshot isolation not allowed on database {}",
                    facts.database
                ),
                format!(
                    "not needed by links; duplex backfill from this site reads in a snapshot \
                     and refuses to start without it: ALTER DATABASE {db} SET \
                     ALLOW_SNAPSHOT_ISOLATION ON (the backfill also reads the log end from \
                     sys.dm_db_log_stats: SQL Server 2016 SP2 or later, VIEW SERVER STATE)"
                ),
            )
        },
    ];
    match (&facts.jobs, facts.cdc_enabled) {
        (_, false) => {}
        (None, true) => findings.push(Finding::warn(
            "could not read the CDC jobs (msdb.dbo.cdc_jobs)",
            "make sure the capture job runs and the cleanup job keeps changes long enough \
             (EXEC sys.sp_cdc_help_jobs)",
        )),
        (Some(jobs), true) => findings.extend(check_jobs(jobs)),
    }
    if !facts.azure() {
        findings.push(match facts.agent.as_deref() {
            Some(status) if status.eq_ignore_ascii_case("Running") => {
                Finding::ok("SQL Server Agent is running (it runs the capture job)")
            }
            Some(status) => Finding::fail(
                format!("SQL Server Agent is {status}: the capture job does not run"),
                "start SQL Server Agent and set it to start automatically",
            ),
            None => Finding::warn(
                "could not read whether SQL Server Agent runs (needs VIEW SERVER STATE)",
                "make sure SQL Server Agent runs: without it no change reaches the change tables",
            ),
        });
    }
    findings.push(if facts.db_owner || facts.can_create_tables {
        Finding::ok("may create duplex's bookkeeping table")
    } else {
        Finding::warn(
            "may not create tables: duplex.positions must exist before a link writes here",
            format!("GRANT CREATE TABLE TO <user>; or create schema duplex in {db} as its owner"),
        )
    });
    findings
}

/// The findings on the CDC jobs of a database with CDC on.
fn check_jobs(jobs: &[(String, Option<i64>)]) -> Vec<Finding> {
    let job = |kind: &str| jobs.iter().find(|(t, _)| t.eq_ignore_ascii_case(kind));
    vec![
        Finding::require(
            job("capture").is_some(),
            "CDC capture job exists",
            "EXEC sys.sp_cdc_add_job @job_type = N'capture'",
        ),
        match job("cleanup") {
            None => Finding::warn(
                "no CDC cleanup job: change tables grow without bound",
                "EXEC sys.sp_cdc_add_job @job_type = N'cleanup', @retention = 4320",
            ),
            Some((_, Some(minutes))) if *minutes < 1440 => Finding::warn(
                format!("CDC retention is {minutes} minutes"),
                "duplex must read changes before cleanup removes them, or backfill: \
                 EXEC sys.sp_cdc_change_job @job_type = N'cleanup', @retention = 4320",
            ),
            Some((_, minutes)) => Finding::ok(format!(
                "CDC retention {} minutes",
                minutes.map_or_else(|| "unknown".to_owned(), |m| m.to_string())
            )),
        },
    ]
}

/// The findings on one mapped table: capture instance, permission to read it, every column
/// captured, primary key, types.
pub fn check_table(facts: &TableFacts) -> Vec<Finding> {
    let table = &facts.table;
    let mut findings = Vec::new();
    let enable = format!(
        "EXEC sys.sp_cdc_enable_table @source_schema = N'{}', @source_name = N'{}', \
         @role_name = NULL",
        table.schema.replace('\'', "''"),
        table.name.replace('\'', "''")
    );
    match &facts.instances[..] {
        [] => findings.push(Finding::fail(
            format!("table {table} is not captured by CDC"),
            enable,
        )),
        [(name, role, readable)] => {
            findings.push(Finding::ok(format!(
                "table {table}: capture instance {name}"
            )));
            if !readable {
                findings.push(Finding::fail(
                    format!(
                        "capture instance {name} is gated by role {}, which the user is not in",
                        role.as_deref().unwrap_or("?")
                    ),
                    format!(
                        "ALTER ROLE {} ADD MEMBER <user>",
                        quote(role.as_deref().unwrap_or("?"))
                    ),
                ));
            }
            let missing: Vec<&str> = facts
                .columns
                .iter()
                .map(|(c, _, _)| c.as_str())
                .filter(|c| !facts.captured.iter().any(|k| k == c))
                .collect();
            if !missing.is_empty() {
                findings.push(Finding::fail(
                    format!(
                        "capture instance {name} does not capture column(s) {}",
                        missing.join(", ")
                    ),
                    format!(
                        "re-create it with every column: EXEC sys.sp_cdc_disable_table \
                         @source_schema = N'{}', @source_name = N'{}', @capture_instance = N'{}'; \
                         then {enable}; then duplex backfill the table",
                        table.schema.replace('\'', "''"),
                        table.name.replace('\'', "''"),
                        name.replace('\'', "''")
                    ),
                ));
            }
        }
        [..] => findings.push(Finding::fail(
            format!(
                "table {table} has {} capture instances ({})",
                facts.instances.len(),
                facts
                    .instances
                    .iter()
                    .map(|(n, _, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "duplex reads one capture instance per table and does not switch between them yet: \
             disable the older one (sys.sp_cdc_disable_table ... @capture_instance = N'<old>') \
             once the newer one holds the changes duplex has not read",
        )),
    }
    findings.extend(check_columns(facts));
    findings
}

/// The findings on a table duplex only writes into: primary key and types (no CDC needed).
pub fn check_target_table(facts: &TableFacts) -> Vec<Finding> {
    check_columns(facts)
}

/// The findings on a mapped table's primary key and column types.
fn check_columns(facts: &TableFacts) -> Vec<Finding> {
    let table = &facts.table;
    let quoted = format!("{}.{}", quote(&table.schema), quote(&table.name));
    let mut findings = vec![preflight::key_columns(table, &facts.primary_key, &quoted)];
    for (column, type_name, scale) in &facts.columns {
        match MssqlType::from_name(type_name) {
            Err(error @ TypeError::Unsupported(_)) => findings.push(Finding::fail(
                format!("{table}.{column} is {type_name}"),
                error.to_string(),
            )),
            Err(_) => {}
            Ok(MssqlType::Time | MssqlType::DateTime2 | MssqlType::DateTimeOffset)
                if *scale > 6 =>
            {
                findings.push(Finding::warn(
                    format!("{table}.{column} is {type_name}({scale})"),
                    format!(
                        "duplex carries microseconds: a value with a non-zero seventh fractional \
                         digit stops the stream; ALTER TABLE {quoted} ALTER COLUMN {} {type_name}(6) \
                         if the 100 ns digit is never needed",
                        quote(column)
                    ),
                ));
            }
            Ok(_) => {}
        }
    }
    findings
}

/// Reads the server and database facts through `client`. SQL Server Agent's state and the
/// msdb jobs need permissions a replication user may lack; those are then unknown (`None`),
/// which [`check_server`] reports as warnings.
pub async fn probe_server(client: &mut MssqlClient) -> Result<ServerFacts, MssqlError> {
    let doing = "reading the server version and database settings";
    let rows = client
        .simple_query(SERVER_QUERY)
        .await
        .map_err(MssqlError::query(doing))?
        .into_first_result()
        .await
        .map_err(MssqlError::query(doing))?;
    let database = client
        .simple_query("SELECT DB_NAME()")
        .await
        .map_err(MssqlError::query(doing))?
        .into_row()
        .await
        .map_err(MssqlError::query(doing))?
        .and_then(|row| row.get::<&str, _>(0).map(str::to_owned))
        .unwrap_or_default();
    let row = rows.first();
    let int = |i: usize| row.and_then(|r| r.get::<i32, _>(i)).unwrap_or_default();
    let jobs = match client.simple_query(JOBS_QUERY).await {
        Ok(stream) => stream.into_first_result().await.ok().map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r.get::<&str, _>(0).unwrap_or_default().to_owned(),
                        r.get::<i64, _>(1),
                    )
                })
                .collect()
        }),
        Err(_) => None,
    };
    let agent = match client.simple_query(AGENT_QUERY).await {
        Ok(stream) => stream
            .into_row()
            .await
            .ok()
            .flatten()
            .and_then(|r| r.get::<&str, _>(0).map(str::to_owned)),
        Err(_) => None,
    };
    Ok(ServerFacts {
        database,
        major_version: int(0),
        version: row
            .and_then(|r| r.get::<&str, _>(1))
            .unwrap_or("of unknown version")
            .to_owned(),
        engine_edition: int(2),
        cdc_enabled: row.and_then(|r| r.get::<bool, _>(3)).unwrap_or(false),
        snapshot_isolation: int(4) == 1,
        db_owner: int(5) == 1,
        can_create_tables: int(6) == 1,
        jobs,
        agent,
    })
}

/// The finding on a site read by two-way mappings: whether `duplex.positions` (its facts, if
/// the table exists) is captured by CDC as [`ECHO_INSTANCE`], which the reader needs to
/// recognise duplex's own writes. Not yet captured is a warning: the two-way stream enables it
/// when it starts if its login is `db_owner`.
pub fn check_echo_capture(positions: Option<&TableFacts>) -> Finding {
    let captured = positions.is_some_and(
        |facts| matches!(&facts.instances[..], [(name, _, true)] if name == ECHO_INSTANCE),
    );
    if captured {
        Finding::ok(
            "duplex.positions is captured by CDC (two-way: duplex's own writes are recognised)",
        )
    } else {
        Finding::warn(
            "duplex.positions is not captured by CDC yet (two-way replication reads it to \
             recognise duplex's own writes)",
            format!(
                "duplex enables it when the two-way mapping starts if its login is db_owner; \
                 otherwise have a db_owner run: {POSITIONS_DDL}; {POSITIONS_CDC}"
            ),
        )
    }
}

/// The columns of table `@P1`: name, system type name, scale, and `max_length` (-1 for
/// `(max)` and `xml`).
pub const COLUMNS_QUERY: &str = "SELECT c.name, TYPE_NAME(c.system_type_id), CAST(c.scale AS int), \
     CAST(c.max_length AS int) FROM sys.columns c WHERE c.object_id = OBJECT_ID(@P1) \
     ORDER BY c.column_id";

/// The `IDENTITY` column of table `@P1` (none, or one).
pub const IDENTITY_QUERY: &str =
    "SELECT c.name FROM sys.identity_columns c WHERE c.object_id = OBJECT_ID(@P1)";

/// The primary-key columns of table `@P1`, in key order.
pub const PRIMARY_KEY_QUERY: &str = "SELECT c.name FROM sys.indexes i \
     JOIN sys.index_columns ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id \
     JOIN sys.columns c ON c.object_id = ic.object_id AND c.column_id = ic.column_id \
     WHERE i.is_primary_key = 1 AND i.object_id = OBJECT_ID(@P1) ORDER BY ic.key_ordinal";

/// The rows of `query` with the one text parameter `param`.
async fn rows_of(
    client: &mut MssqlClient,
    query: &'static str,
    param: &str,
    doing: &'static str,
) -> Result<Vec<tiberius::Row>, MssqlError> {
    client
        .query(query, &[&param])
        .await
        .map_err(MssqlError::query(doing))?
        .into_first_result()
        .await
        .map_err(MssqlError::query(doing))
}

/// Reads the facts of one mapped table through `client`; `None` when it does not exist.
pub async fn probe_table(
    client: &mut MssqlClient,
    table: &TableName,
) -> Result<Option<TableFacts>, MssqlError> {
    let name = format!("{}.{}", quote(&table.schema), quote(&table.name));
    let text = |r: &tiberius::Row, i: usize| r.get::<&str, _>(i).unwrap_or_default().to_owned();
    let rows = rows_of(client, COLUMNS_QUERY, &name, "reading a table's columns").await?;
    let columns: Vec<(String, String, u8)> = rows
        .iter()
        .map(|r| {
            let scale = r.get::<i32, _>(2).unwrap_or_default();
            (
                text(r, 0),
                text(r, 1),
                u8::try_from(scale).unwrap_or(u8::MAX),
            )
        })
        .collect();
    let unbounded = rows
        .iter()
        .filter(|r| r.get::<i32, _>(3) == Some(-1))
        .map(|r| text(r, 0))
        .collect();
    if columns.is_empty() {
        return Ok(None);
    }
    let primary_key = rows_of(client, PRIMARY_KEY_QUERY, &name, "reading a primary key")
        .await?
        .iter()
        .map(|r| text(r, 0))
        .collect();
    let instances: Vec<(String, Option<String>, bool)> = rows_of(
        client,
        INSTANCES_QUERY,
        &name,
        "reading a table's capture instances",
    )
    .await?
    .iter()
    .map(|r| {
        (
            text(r, 0),
            r.get::<&str, _>(1).map(str::to_owned),
            r.get::<i32, _>(2) == Some(1),
        )
    })
    .collect();
    let captured = match &instances[..] {
        [(instance, _, _)] => rows_of(
            client,
            CAPTURED_COLUMNS_QUERY,
            instance,
            "reading the captured columns",
        )
        .await?
        .iter()
        .map(|r| text(r, 0))
        .collect(),
        _ => Vec::new(),
    };
    let identity = rows_of(
        client,
        IDENTITY_QUERY,
        &name,
        "reading a table's IDENTITY column",
    )
    .await?
    .first()
    .map(|r| text(r, 0));
    Ok(Some(TableFacts {
        table: table.clone(),
        columns,
        primary_key,
        instances,
        captured,
        identity,
        unbounded,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preflight::Status;

    fn ready_server() -> ServerFacts {
        ServerFacts {
            database: "erp".into(),
            major_version: 16,
            version: "16.0.4135.4".into(),
            engine_edition: 3,
            cdc_enabled: true,
            snapshot_isolation: true,
            db_owner: false,
            can_create_tables: true,
            jobs: Some(vec![
                ("capture".into(), None),
                ("cleanup".into(), Some(4320)),
            ]),
            agent: Some("Running".into()),
        }
    }

    fn ready_table() -> TableFacts {
        TableFacts {
            table: TableName::new("dbo", "orders"),
            columns: vec![
                ("id".into(), "int".into(), 0),
                ("placed".into(), "datetime2".into(), 6),
                ("price".into(), "money".into(), 4),
            ],
            primary_key: vec!["id".into()],
            instances: vec![("dbo_orders".into(), None, true)],
            captured: vec!["id".into(), "placed".into(), "price".into()],
            identity: None,
            unbounded: vec![],
        }
    }

    fn failures(findings: &[Finding]) -> Vec<&str> {
        findings
            .iter()
            .filter(|f| f.status == Status::Fail)
            .map(|f| f.what.as_str())
            .collect()
    }

    fn worst(findings: &[Finding]) -> Status {
        findings.iter().map(|f| f.status).max().unwrap()
    }

    #[test]
    fn a_ready_server_and_table_pass() {
        assert_eq!(worst(&check_server(&ready_server())), Status::Ok);
        assert_eq!(worst(&check_table(&ready_table())), Status::Ok);
    }

    #[test]
    fn an_old_server_cdc_off_and_a_stopped_agent_fail_with_their_fixes() {
        let facts = ServerFacts {
            major_version: 12,
            version: "12.0.6024.0".into(),
            cdc_enabled: false,
            agent: Some("Stopped".into()),
            ..ready_server()
        };
        let findings = check_server(&facts);
        assert_eq!(
            failures(&findings),
            vec![
                "SQL Server 12.0.6024.0",
                "CDC enabled on database erp",
                "SQL Server Agent is Stopped: the capture job does not run"
            ]
        );
        let cdc = findings
            .iter()
            .find(|f| f.what.contains("CDC enabled"))
            .unwrap();
        assert_eq!(
            cdc.fix.as_deref(),
            Some("USE [erp]; EXEC sys.sp_cdc_enable_db; (as sysadmin)")
        );
    }

    #[test]
    fn jobs_retention_snapshot_isolation_and_permissions_are_judged() {
        let facts = ServerFacts {
            snapshot_isolation: false,
            jobs: Some(vec![("cleanup".into(), Some(60))]),
            can_create_tables: false,
            agent: None,
            ..ready_server()
        };
        let findings = check_server(&facts);
        assert_eq!(failures(&findings), vec!["CDC capture job exists"]);
        let warned: Vec<&str> = findings
            .iter()
            .filter(|f| f.status == Status::Warn)
            .map(|f| f.what.as_str())
            .collect();
        assert_eq!(
            warned,
            vec![
                "snapshot isolation not allowed on database erp",
                "CDC retention is 60 minutes",
                "could not read whether SQL Server Agent runs (needs VIEW SERVER STATE)",
                "may not create tables: duplex.positions must exist before a link writes here"
            ]
        );
        let snapshot = findings
            .iter()
            .find(|f| f.what.starts_with("snapshot isolation"))
            .and_then(|f| f.fix.as_deref())
            .unwrap();
        assert!(
            snapshot.contains("duplex backfill from this site")
                && snapshot.contains("SET ALLOW_SNAPSHOT_ISOLATION ON"),
            "{snapshot}"
        );
        let azure = ServerFacts {
            engine_edition: 5,
            agent: None,
            jobs: Some(vec![("capture".into(), None)]),
            ..ready_server()
        };
        let findings = check_server(&azure);
        assert!(!findings.iter().any(|f| f.what.contains("Agent")));
        assert!(
            findings
                .iter()
                .any(|f| f.what.contains("no CDC cleanup job"))
        );
    }

    #[test]
    fn an_uncaptured_table_or_column_fails_with_the_statement_that_fixes_it() {
        let table = TableFacts {
            instances: vec![],
            ..ready_table()
        };
        let findings = check_table(&table);
        assert_eq!(
            failures(&findings),
            vec!["table dbo.orders is not captured by CDC"]
        );
        assert!(findings[0].fix.as_deref().unwrap().starts_with(
            "EXEC sys.sp_cdc_enable_table @source_schema = N'dbo', @source_name = N'orders'"
        ));
        let partial = TableFacts {
            captured: vec!["id".into()],
            ..ready_table()
        };
        assert_eq!(
            failures(&check_table(&partial)),
            vec!["capture instance dbo_orders does not capture column(s) placed, price"]
        );
        let two = TableFacts {
            instances: vec![
                ("dbo_orders".into(), None, true),
                ("dbo_orders_v2".into(), None, true),
            ],
            ..ready_table()
        };
        assert_eq!(
            failures(&check_table(&two)),
            vec!["table dbo.orders has 2 capture instances (dbo_orders, dbo_orders_v2)"]
        );
        let gated = TableFacts {
            instances: vec![("dbo_orders".into(), Some("cdc_readers".into()), false)],
            ..ready_table()
        };
        let findings = check_table(&gated);
        assert_eq!(
            failures(&findings),
            vec![
                "capture instance dbo_orders is gated by role cdc_readers, which the user is not in"
            ]
        );
    }

    #[test]
    fn a_two_way_site_is_told_whether_duplex_positions_is_captured() {
        assert_eq!(check_echo_capture(None).status, Status::Warn);
        let positions = TableFacts {
            table: crate::apply::positions_table(),
            instances: vec![],
            ..ready_table()
        };
        let missing = check_echo_capture(Some(&positions));
        assert_eq!(missing.status, Status::Warn);
        assert!(missing.fix.unwrap().contains(POSITIONS_CDC));
        let captured = TableFacts {
            instances: vec![(ECHO_INSTANCE.into(), None, true)],
            ..positions
        };
        assert_eq!(check_echo_capture(Some(&captured)).status, Status::Ok);
    }

    #[test]
    fn keys_and_types_are_judged() {
        let table = TableFacts {
            primary_key: vec![],
            columns: vec![
                ("id".into(), "int".into(), 0),
                ("shape".into(), "geography".into(), 0),
                ("at".into(), "datetime2".into(), 7),
            ],
            captured: vec!["id".into(), "shape".into(), "at".into()],
            identity: None,
            ..ready_table()
        };
        let findings = check_table(&table);
        assert_eq!(
            failures(&findings),
            vec![
                "table dbo.orders has no primary key",
                "dbo.orders.shape is geography"
            ]
        );
        let seven = findings
            .iter()
            .find(|f| f.what.contains("datetime2(7)"))
            .unwrap();
        assert_eq!(seven.status, Status::Warn);
        assert!(
            seven
                .fix
                .as_deref()
                .unwrap()
                .contains("ALTER COLUMN [at] datetime2(6)")
        );
    }

    #[test]
    fn the_probe_queries_read_the_catalogs_they_name() {
        assert!(SERVER_QUERY.contains("is_cdc_enabled"));
        assert!(SERVER_QUERY.contains("snapshot_isolation_state"));
        assert!(JOBS_QUERY.contains("msdb.dbo.cdc_jobs"));
        assert!(INSTANCES_QUERY.contains("cdc.change_tables"));
        assert!(CAPTURED_COLUMNS_QUERY.contains("cdc.captured_columns"));
    }
}
