//! A SQL Server test database for the end-to-end tests, when `DUPLEX_TEST_MSSQL_URL` names a
//! server (no SQL Server runs on our machines: otherwise the tests say they are skipped).

use std::time::Duration;

use duplex_connectors::mssql::{MssqlClient, connect};

use super::wait_for;

/// A fresh database on the SQL Server test server, dropped at the end.
pub struct Mssql {
    pub runtime: tokio::runtime::Runtime,
    pub admin_url: String,
    pub name: String,
    pub url: String,
}

impl Mssql {
    /// A new database, or `None` (with the reason printed) when no server is given.
    pub fn create(test: &str) -> Option<Mssql> {
        let Ok(admin_url) = std::env::var("DUPLEX_TEST_MSSQL_URL") else {
            eprintln!(
                "{test}: skipped: DUPLEX_TEST_MSSQL_URL not set (no SQL Server runs on these \
                 machines)"
            );
            return None;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("duplex_run_{}_{nanos}", std::process::id());
        runtime
            .block_on(execute(&admin_url, &format!("CREATE DATABASE [{name}]")))
            .unwrap();
        let mut url = url::Url::parse(&admin_url).expect("DUPLEX_TEST_MSSQL_URL is a URL");
        url.set_path(&name);
        Some(Mssql {
            runtime,
            admin_url,
            name,
            url: url.to_string(),
        })
    }

    /// Runs `sql` in the test database.
    pub fn sql(&self, sql: &str) {
        self.runtime
            .block_on(execute(&self.url, sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// The rows of `sql`, whose every column is text.
    pub fn rows(&self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        self.runtime.block_on(async {
            let mut client = client(&self.url).await?;
            let rows = client
                .simple_query(sql)
                .await
                .map_err(|e| e.to_string())?
                .into_first_result()
                .await
                .map_err(|e| e.to_string())?;
            Ok(rows
                .iter()
                .map(|row| {
                    (0..row.columns().len())
                        .map(|i| row.get::<&str, _>(i).unwrap_or("∅").to_owned())
                        .collect()
                })
                .collect())
        })
    }
}

impl Drop for Mssql {
    fn drop(&mut self) {
        let sql = format!(
            "ALTER DATABASE [{0}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE [{0}]",
            self.name
        );
        if let Err(error) = self.runtime.block_on(execute(&self.admin_url, &sql)) {
            eprintln!("dropping test database {}: {error}", self.name);
        }
    }
}

pub async fn client(url: &str) -> Result<MssqlClient, String> {
    connect(url, None).await.map_err(|e| e.to_string())
}

pub async fn execute(url: &str, sql: &str) -> Result<(), String> {
    let mut client = client(url).await?;
    client
        .simple_query(sql)
        .await
        .map_err(|e| e.to_string())?
        .into_results()
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

pub fn site(name: &str, kind: &str, url: &str) -> String {
    format!("[sites.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\n\n")
}

/// The capture job has recorded a change in `erp` (a new link needs a nonzero max LSN).
pub fn wait_captured(erp: &Mssql) {
    wait_for(
        "the capture job to record a change",
        Duration::from_secs(90),
        || {
            let max = erp.rows(
                "SELECT CASE WHEN ISNULL(sys.fn_cdc_get_max_lsn(), 0x00) = 0x00 \
             THEN N'0' ELSE N'1' END",
            )?;
            if max == [["1".to_owned()]] {
                Ok(())
            } else {
                Err("no change recorded yet".into())
            }
        },
    );
}
