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
}

impl SiteKind {
    /// The name used in configuration files and messages.
    pub fn name(self) -> &'static str {
        match self {
            SiteKind::Postgres => "postgres",
            SiteKind::Mysql => "mysql",
        }
    }
}

impl fmt::Display for SiteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
