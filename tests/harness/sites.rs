//! Three sites of one two-way mapping `items (id, name, qty)`: a PostgreSQL store, a MariaDB
//! ERP and a second PostgreSQL database as WMS, each a fresh database named after itself, so
//! parallel tests share nothing.

use std::time::Duration;

use duplex_testkit::{MariaDatabase, PgDatabase, shared_mariadb, shared_pg};

use super::{Duplex, drop_slot, rows, wait_for};

/// Index of the PostgreSQL store.
pub const STORE: usize = 0;
/// Index of the MariaDB ERP.
pub const ERP: usize = 1;
/// Index of the PostgreSQL WMS.
pub const WMS: usize = 2;

const PG_ITEMS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL)";
const MY_ITEMS: &str = "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL, qty INT NOT NULL) ENGINE=InnoDB";

/// The three sites.
pub struct Sites {
    /// The store.
    pub store: PgDatabase,
    /// The ERP.
    pub erp: MariaDatabase,
    /// The WMS.
    pub wms: PgDatabase,
}

impl Sites {
    /// Fresh databases with an empty `items` table each.
    pub fn new() -> Sites {
        Sites::with_erp(shared_mariadb().create_database())
    }

    /// Like [`Sites::new`], with the ERP in `erp` (on a server of the test's own).
    pub fn with_erp(erp: MariaDatabase) -> Sites {
        let store = shared_pg().create_database();
        let wms = shared_pg().create_database();
        store.execute_as_duplex(PG_ITEMS).unwrap();
        erp.sql(MY_ITEMS).unwrap();
        wms.execute_as_duplex(PG_ITEMS).unwrap();
        Sites { store, erp, wms }
    }

    /// The site's name in the configuration (its database's name).
    pub fn name(&self, site: usize) -> String {
        match site {
            STORE => self.store.name().to_owned(),
            ERP => self.erp.name().to_owned(),
            _ => self.wms.name().to_owned(),
        }
    }

    /// A configuration mapping `items` both ways over the three sites, with `state` lines in
    /// its `[state]` table.
    pub fn config(&self, conflict: &str, state: &str) -> String {
        format!(
            "[state]\n{state}\n\n\
             [sites.{s}]\nkind = \"postgres\"\nurl = \"{su}\"\n\n\
             [sites.{e}]\nkind = \"mysql\"\nurl = \"{eu}\"\n\n\
             [sites.{w}]\nkind = \"postgres\"\nurl = \"{wu}\"\n\n\
             [[mappings]]\nname = \"items\"\n\
             tables = {{ {s} = \"public.items\", {e} = \"{e}.items\", {w} = \"public.items\" }}\n\
             direction = \"both\"\nconflict = \"{conflict}\"\n",
            s = self.store.name(),
            su = self.store.url(),
            e = self.erp.name(),
            eu = self.erp.url(),
            w = self.wms.name(),
            wu = self.wms.url(),
        )
    }

    /// Runs SQL at a site as an application would.
    pub fn try_exec(&self, site: usize, sql: &str) -> Result<String, String> {
        match site {
            STORE => self.store.psql(sql),
            ERP => self.erp.sql(sql),
            _ => self.wms.psql(sql),
        }
        .map_err(|e| e.to_string())
    }

    /// [`Sites::try_exec`], panicking on failure.
    pub fn exec(&self, site: usize, sql: &str) {
        if let Err(e) = self.try_exec(site, sql) {
            panic!("site {site}: {sql}: {e}");
        }
    }

    /// The site's `items`, by id, as text fields.
    pub fn rows(&self, site: usize) -> Result<Vec<Vec<String>>, String> {
        let text = self.try_exec(site, "SELECT id, name, qty FROM items ORDER BY id")?;
        Ok(rows(&text, if site == ERP { '\t' } else { '|' }))
    }

    /// Waits until all three sites hold the same rows and `done` accepts them.
    pub fn wait_same(
        &self,
        duplex: &mut Duplex,
        timeout: Duration,
        done: impl Fn(&[Vec<String>]) -> bool,
    ) -> Vec<Vec<String>> {
        wait_for("the three sites to converge", timeout, || {
            duplex.assert_running();
            let all = [self.rows(STORE)?, self.rows(ERP)?, self.rows(WMS)?];
            if all[0] == all[1] && all[1] == all[2] && done(&all[0]) {
                Ok(all[0].clone())
            } else {
                Err(format!("{all:?}"))
            }
        })
    }

    /// Drops duplex's slots on the PostgreSQL sites once it let go of them.
    pub fn drop_slots(&self) {
        drop_slot(&self.store);
        drop_slot(&self.wms);
    }
}

/// Waits until duplex's merge engine has logged reading `readers` sites (after which every
/// commit there is replicated).
pub fn wait_reading(duplex: &mut Duplex, readers: usize, timeout: Duration) {
    wait_for("the merge engine to read every site", timeout, || {
        duplex.assert_running();
        let reading = duplex
            .log_text()
            .matches("merge engine reading site")
            .count();
        if reading >= readers {
            Ok(())
        } else {
            Err(format!("{reading} reading"))
        }
    });
}

/// `duplex conflicts --json` on duplex's configuration, parsed.
pub fn conflicts(duplex: &Duplex) -> Vec<serde_json::Value> {
    let output = duplex.command(&["conflicts", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    match serde_json::from_slice(&output.stdout).unwrap() {
        serde_json::Value::Array(list) => list,
        other => panic!("not a list: {other}"),
    }
}
