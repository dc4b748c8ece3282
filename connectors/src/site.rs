//! The kinds of database duplex talks to.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A database kind. Each has its own module with reader, applier and snapshot reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SiteKind {
    /// PostgreSQL 10 or newer (logical replication with pgoutput).
    Postgres,
    /// MySQL 8 or MariaDB 10.5 or newer (row-based binlog).
    Mysql,
    /// SQL Server 2016 or newer (CDC change tables).
    Mssql,
}

impl SiteKind {
    /// The name a person reads in a message: `SQL Server` for [`SiteKind::Mssql`].
    pub fn display_name(self) -> &'static str {
        match self {
            SiteKind::Postgres => "PostgreSQL",
            SiteKind::Mysql => "MySQL/MariaDB",
            SiteKind::Mssql => "SQL Server",
        }
    }

    /// The name used in configuration files and messages.
    pub fn name(self) -> &'static str {
        match self {
            SiteKind::Postgres => "postgres",
            SiteKind::Mysql => "mysql",
            SiteKind::Mssql => "mssql",
        }
    }
}

impl fmt::Display for SiteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something a command needs of a site that is not built for SQL Server sites yet: says what
/// and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is not supported for SQL Server sites yet: {fix}")]
pub struct NotSupported {
    /// The command, or what part of it.
    pub what: &'static str,
    /// What to do instead.
    pub fix: &'static str,
}

/// How to reach one site: what every per-kind reader, applier and snapshot reader is given.
#[derive(Clone)]
pub struct SiteConnection {
    /// The site's name in the configuration (written into [`crate::Transaction::source`]).
    pub name: String,
    /// The site's kind.
    pub kind: SiteKind,
    /// Connection URL, possibly with a password in it.
    pub url: String,
    /// A password overriding any in the URL.
    pub password: Option<String>,
    /// The replication slot names the configuration's other sites use on this site's server
    /// (PostgreSQL): a slot named as an earlier release named this site's is never taken for
    /// this site's when another site uses that name now (see
    /// [`crate::postgres::choose_slot_name`]).
    pub slot_names_taken: Vec<String>,
}

impl SiteConnection {
    /// The password to use, if one is given apart from the URL.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The database the URL names (empty when it names none).
    pub fn database(&self) -> String {
        url::Url::parse(&self.url)
            .ok()
            .map(|u| u.path().trim_start_matches('/').to_owned())
            .unwrap_or_default()
    }
}

impl fmt::Debug for SiteConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SiteConnection")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}
