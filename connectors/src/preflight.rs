//! Findings of `duplex check`: one line each, with the exact fix when something is not ready.

use std::fmt;

use crate::{TableName, TableSchema};

/// How a checked item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Ready.
    Ok,
    /// Works, but the DBA should know (e.g. a converted type).
    Warn,
    /// Not ready: replication cannot start until it is fixed.
    Fail,
}

/// One checked item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Ok, warning or failure.
    pub status: Status,
    /// What was checked and what was found, e.g. `wal_level = replica`.
    pub what: String,
    /// What to do about it (for warnings and failures).
    pub fix: Option<String>,
}

impl Finding {
    /// A ready item.
    pub fn ok(what: impl Into<String>) -> Finding {
        Finding {
            status: Status::Ok,
            what: what.into(),
            fix: None,
        }
    }

    /// An item that works with a caveat.
    pub fn warn(what: impl Into<String>, note: impl Into<String>) -> Finding {
        Finding {
            status: Status::Warn,
            what: what.into(),
            fix: Some(note.into()),
        }
    }

    /// An item that is not ready, with its fix.
    pub fn fail(what: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            status: Status::Fail,
            what: what.into(),
            fix: Some(fix.into()),
        }
    }

    /// `ok` when the condition holds, else a failure with its fix.
    pub fn require(ready: bool, what: impl Into<String>, fix: impl Into<String>) -> Finding {
        if ready {
            Finding::ok(what)
        } else {
            Finding::fail(what, fix)
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        write!(f, "{tag}  {}", self.what)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n        -> {fix}")?;
        }
        Ok(())
    }
}

/// The finding for a mapped table that does not exist.
pub fn missing_table(table: &TableName) -> Finding {
    Finding::fail(
        format!("table {table} does not exist"),
        "create it, or correct the table name in the mapping",
    )
}

/// The finding on a mapped table's primary key; `quoted` is the table name as the kind's SQL
/// writes it, for the fix.
pub fn primary_key(schema: &TableSchema, quoted: &str) -> Finding {
    let table = &schema.name;
    if schema.primary_key.is_empty() {
        Finding::fail(
            format!("table {table} has no primary key"),
            format!(
                "duplex identifies rows by primary key: ALTER TABLE {quoted} ADD PRIMARY KEY (<columns>)"
            ),
        )
    } else {
        Finding::ok(format!(
            "table {table}: primary key ({})",
            schema.primary_key.join(", ")
        ))
    }
}
