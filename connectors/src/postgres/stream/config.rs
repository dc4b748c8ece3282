//! What a [`super::PgStream`] reads and from where, and the checks of those settings.

use std::time::Duration;

use crate::TableName;
use crate::postgres::{Lsn, describe_target};

use super::PgStreamError;

/// What a [`PgStream`] reads and from where.
#[derive(Clone)]
pub struct PgStreamConfig {
    /// The site name written into each [`Transaction::source`].
    pub source: String,
    /// `postgres://user@host:port/dbname` (a unix socket directory as host works too).
    pub url: String,
    /// Password, overriding any in the URL.
    pub password: Option<String>,
    /// Replication slot name: lower-case letters, digits and `_`, at most 63 characters.
    pub slot: String,
    /// Publication name, same rule as the slot name.
    pub publication: String,
    /// The tables to read; the publication is made to list exactly these (and
    /// `duplex.positions` with `echo_marker`).
    pub tables: Vec<TableName>,
    /// Where to resume: the position of the last item every target committed. `None`
    /// starts at the slot's `confirmed_flush_lsn`.
    pub start: Option<Lsn>,
    /// How often acknowledged positions are reported to the server (and the longest an
    /// acknowledgement waits before it is reported).
    pub status_interval: Duration,
    /// Replication events buffered between the background task and [`PgStream::next`].
    pub buffer_events: usize,
    /// Deliver a transaction in [`StreamItem::Part`]s of this many changes once it has that
    /// many; `None` buffers every transaction whole until its commit.
    pub part_events: Option<usize>,
    /// Read `duplex.positions` too (creating it when missing) and deliver the transactions
    /// that change it, duplex's own writes, with [`Origin::Duplex`]; see the module docs.
    /// Cannot be combined with `part_events`.
    pub echo_marker: bool,
    /// The identity of the deployment reading: the publication (and so the slot) is claimed
    /// for it, and one claimed by another deployment is refused (see [`crate::postgres::claim`]).
    pub deployment: Option<String>,
    /// A deployment whose claim on the publication is moved to `deployment` (see
    /// [`crate::postgres::claim::take_over`]).
    pub take_over_from: Option<String>,
    /// Yield [`StreamItem::Shape`]s (see the contract in [`crate::stream`]).
    pub shapes: bool,
    /// The newest position the caller ever acknowledged on this slot (see
    /// [`crate::StreamOptions::acknowledged`]).
    pub acknowledged: Option<Lsn>,
    /// No message at all from the server for this long fails [`PgStream::next`] with the
    /// transient [`PgStreamError::Silent`]; a reply is requested every third of it (see
    /// [Dead connections](self#dead-connections)).
    pub inactivity_timeout: Duration,
}

impl std::fmt::Debug for PgStreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = crate::postgres::split_url(&self.url)
            .ok()
            .and_then(|(url, _)| url.parse::<tokio_postgres::Config>().ok())
            .map(|c| describe_target(&c))
            .ok_or(())
            .unwrap_or_else(|_| "<invalid URL>".to_owned());
        f.debug_struct("PgStreamConfig")
            .field("source", &self.source)
            .field("url", &target)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("tables", &self.tables)
            .field("start", &self.start)
            .field("status_interval", &self.status_interval)
            .field("buffer_events", &self.buffer_events)
            .field("part_events", &self.part_events)
            .field("echo_marker", &self.echo_marker)
            .field("deployment", &self.deployment)
            .field("shapes", &self.shapes)
            .field("acknowledged", &self.acknowledged)
            .field("inactivity_timeout", &self.inactivity_timeout)
            .finish()
    }
}

impl PgStreamConfig {
    /// A configuration with default tuning: start at the slot's position, report
    /// acknowledgements every second, buffer 8192 events, whole transactions, no echo marker.
    pub fn new(
        source: impl Into<String>,
        url: impl Into<String>,
        slot: impl Into<String>,
        publication: impl Into<String>,
        tables: Vec<TableName>,
    ) -> PgStreamConfig {
        PgStreamConfig {
            source: source.into(),
            url: url.into(),
            password: None,
            slot: slot.into(),
            publication: publication.into(),
            tables,
            start: None,
            status_interval: Duration::from_secs(1),
            buffer_events: 8192,
            part_events: None,
            echo_marker: false,
            deployment: None,
            take_over_from: None,
            shapes: false,
            acknowledged: None,
            inactivity_timeout: crate::stream::DEFAULT_STREAM_TIMEOUT,
        }
    }

    /// Checks the names and sizes; the error names the field and the rule it broke.
    pub fn validate(&self) -> Result<(), PgStreamError> {
        let invalid =
            |field: &'static str, rule: &'static str| PgStreamError::Config { field, rule };
        // Both names go into replication commands unquoted (the slot) or through the
        // server's identifier-list parser (the publication), so only plain names are safe.
        let plain = |name: &str| {
            !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !plain(&self.slot) {
            return Err(invalid(
                "slot",
                "1 to 63 characters, each a lower-case letter, digit or underscore",
            ));
        }
        if !plain(&self.publication) {
            return Err(invalid(
                "publication",
                "1 to 63 characters, each a lower-case letter, digit or underscore",
            ));
        }
        if self.tables.is_empty() {
            return Err(invalid("tables", "at least one table"));
        }
        if self.buffer_events == 0 {
            return Err(invalid("buffer_events", "at least 1"));
        }
        if self.part_events == Some(0) {
            return Err(invalid("part_events", "at least 1"));
        }
        if self.inactivity_timeout < Duration::from_millis(300) {
            return Err(invalid("inactivity_timeout", "at least 300 ms"));
        }
        if self.status_interval.is_zero() {
            return Err(invalid("status_interval", "longer than zero"));
        }
        if self.echo_marker && self.part_events.is_some() {
            return Err(invalid(
                "echo_marker",
                "cannot be combined with part_events: a transaction's origin is known only at \
                 its commit, and its parts are delivered before it (unset part_events)",
            ));
        }
        Ok(())
    }
}
