//! Consistent snapshots of PostgreSQL tables for the initial load (backfill).
//!
//! # Protocol
//!
//! [`PgExportedSnapshot::create`] opens a `replication=database` session (through
//! `pgwire-replication`, gated so that it runs commands before any START_REPLICATION) and sends
//! `CREATE_REPLICATION_SLOT <slot> [TEMPORARY] LOGICAL pgoutput (SNAPSHOT 'export')`. The
//! server answers with the slot's consistent point and the name of an exported snapshot: the
//! database exactly as of that point. Streaming the slot later delivers exactly the
//! transactions that commit after it, so a copy read in that snapshot plus the stream from
//! the consistent point is the table with nothing missing and nothing twice.
//!
//! The snapshot lives as long as the exporting session stays idle: the handle keeps the
//! session open and sends nothing until [`PgExportedSnapshot::release`]. Every copy worker
//! opens its own ordinary connection with [`PgSnapshotReader::open`], which runs `BEGIN
//! ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '<name>'`, so all
//! workers read the same database state in parallel. Rows are read in text format with the
//! same session settings and conversions as the change stream ([`super::types`]), so a value
//! copied and the same value streamed are identical.

use std::collections::HashMap;
use std::sync::Arc;

use pgwire_replication::{ReplicationClient, ReplicationConfig};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::types::{Conversion, PgType, ValueError, resolve_type, text_value};
use super::{Lsn, PgError, connect, ensure_publication, quote_ident};
use crate::load::AdminError;
use crate::snapshot::{KeyRange, SnapshotError, SnapshotRead};
use crate::{Column, Row, SiteConnection, TableName, Value};
use chrono::Datelike;

/// Why a snapshot could not be taken or read.
#[derive(Debug, thiserror::Error)]
pub enum PgSnapshotError {
    /// An ordinary connection or statement failed.
    #[error(transparent)]
    Postgres(#[from] PgError),
    /// The replication session failed.
    #[error("the replication session exporting the snapshot failed")]
    Replication(#[source] pgwire_replication::PgWireError),
    /// The connection URL lacks what a replication session needs.
    #[error("the PostgreSQL URL {0}")]
    Url(&'static str),
    /// The server answered CREATE_REPLICATION_SLOT with something unexpected.
    #[error("unexpected answer to CREATE_REPLICATION_SLOT: {0}")]
    Protocol(String),
    /// A key bound cannot be written as SQL.
    #[error("cutting a table into key ranges: {0}")]
    Key(String),
    /// A range digest cannot be computed (see [`crate::digest`]).
    #[error("computing a range digest: {0}")]
    Digest(String),
    /// A value cannot be converted.
    #[error("table {table}")]
    Value {
        /// The table read.
        table: TableName,
        /// The refusal.
        #[source]
        source: Box<ValueError>,
    },
}

impl PgSnapshotError {
    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            PgSnapshotError::Postgres(e) => e.is_transient(),
            PgSnapshotError::Replication(_) => true,
            _ => false,
        }
    }
}

/// A replication slot just created together with an exported snapshot of the database at the
/// slot's consistent point. The snapshot stays importable while this handle lives.
pub struct PgExportedSnapshot {
    session: ReplicationClient,
    /// The exported snapshot's name, for `SET TRANSACTION SNAPSHOT`.
    pub name: String,
    /// The slot's consistent point: the snapshot holds exactly the transactions committed
    /// before it; the slot streams those committed after it.
    pub position: Lsn,
}

impl std::fmt::Debug for PgExportedSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgExportedSnapshot")
            .field("name", &self.name)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl PgExportedSnapshot {
    /// Creates logical slot `slot` (pgoutput; `temporary` slots vanish with the session) with
    /// an exported snapshot. The slot name must be a plain identifier (`[a-z0-9_]`).
    pub async fn create(
        url: &str,
        password: Option<&str>,
        slot: &str,
        temporary: bool,
    ) -> Result<PgExportedSnapshot, PgSnapshotError> {
        let mut session = ReplicationClient::connect_gated(session_config(url, password, slot)?)
            .await
            .map_err(PgSnapshotError::Replication)?;
        let sql = format!(
            "CREATE_REPLICATION_SLOT {slot}{} LOGICAL pgoutput (SNAPSHOT 'export')",
            if temporary { " TEMPORARY" } else { "" }
        );
        let rows = session
            .simple_query(&sql)
            .await
            .map_err(PgSnapshotError::Replication)?;
        let field = |i: usize| -> Result<String, PgSnapshotError> {
            rows.first()
                .and_then(|row| row.get(i))
                .and_then(|v| v.as_ref())
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .ok_or_else(|| PgSnapshotError::Protocol(format!("{rows:?}")))
        };
        let position: Lsn = field(1)?
            .parse()
            .map_err(|_| PgSnapshotError::Protocol(format!("consistent point {rows:?}")))?;
        let name = field(2)?;
        Ok(PgExportedSnapshot {
            session,
            name,
            position,
        })
    }

    /// Ends the exporting session (the snapshot can no longer be imported; a temporary slot
    /// is dropped, a permanent one stays at its consistent point).
    pub async fn release(self) {
        // A gated session that never started ends when its client is dropped.
        drop(self.session);
        tokio::task::yield_now().await;
    }
}

/// Takes the snapshot a backfill of `site` copies from, for the deployment `deployment`.
///
/// The publication, shared by every mapping read from the site, is checked to belong to no
/// other deployment, made to list `tables` (all of them, so a link of the same site keeps its
/// tables; pgoutput decodes with the catalog as of each change, so it must list the new ones
/// before the snapshot's position) and claimed for `deployment`.
///
/// The slot `duplex run` streams from is never dropped or moved here: it may hold the position
/// of a stopped link of the same site (a new mapping backfilled next to it), which still needs
/// every change since. So when it exists, a temporary slot exports the snapshot and the
/// permanent one stays where it is: it is at or before the snapshot's position, so it also
/// holds every change the new targets need after the handover. Only when there is no slot yet
/// is it created with the exported snapshot.
///
/// What the slot must still give, with who needs it and what to do otherwise (for the
/// refusals), is given as:
///
/// - `resume_from`: a position the slot must be readable from exactly (an interrupted
///   backfill being resumed: its catch-up reads from its first snapshot). The slot must exist
///   and be at or before it.
/// - `streamed_by`: readers that resume from positions of their own (a stopped link's
///   targets). The slot must exist; its confirmed position may legitimately be past theirs (a
///   stream acknowledges heartbeats, so a slot moves on while nothing it publishes changes).
///
/// A slot that cannot give what is needed is refused, never created anew over the gap (that
/// would hide it: a reader resuming from an older position is silently moved forward).
pub(crate) async fn backfill_snapshot(
    site: &SiteConnection,
    tables: &[TableName],
    resume_from: Option<(Lsn, &str)>,
    streamed_by: Option<&str>,
    deployment: &str,
) -> Result<PgExportedSnapshot, SnapshotError> {
    let slot = super::choose_slot_name(site, deployment)
        .await
        .map_err(|error| match error {
            error @ super::PgStreamError::Slot { .. } => SnapshotError::Refused(error.to_string()),
            error => AdminError::doing("choosing the replication slot's name")(error).into(),
        })?;
    let client = connect(&site.url, site.password())
        .await
        .map_err(AdminError::doing("connecting"))?;
    let claimed = |error: super::PgStreamError| match error {
        error @ super::PgStreamError::ClaimedByOther { .. } => {
            SnapshotError::Refused(error.to_string())
        }
        error => {
            AdminError::doing("checking which deployment the publication belongs to")(error).into()
        }
    };
    super::claim::check(&client, &slot, deployment)
        .await
        .map_err(claimed)?;
    ensure_publication(&client, &slot, tables)
        .await
        .map_err(AdminError::doing("creating the publication"))?;
    super::claim::record(&client, &slot, deployment)
        .await
        .map_err(claimed)?;
    let existing = client
        .query_opt(
            "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(AdminError::doing("looking up the slot"))?;
    let temporary = match existing {
        Some(row) if row.get::<_, bool>(0) => {
            return Err(SnapshotError::Refused(format!(
                "replication slot {slot} is in use: stop `duplex run` before backfilling"
            )));
        }
        None => {
            if let Some((position, who)) = resume_from {
                return Err(SnapshotError::Refused(format!(
                    "replication slot {slot} is gone, but {who} still needs the changes from \
                     {position} on, which cannot be read any more"
                )));
            }
            if let Some(who) = streamed_by {
                return Err(SnapshotError::Refused(format!(
                    "replication slot {slot} is gone, so what was committed since the positions \
                     of its readers cannot be read any more: {who}"
                )));
            }
            false
        }
        Some(row) => {
            let confirmed: Option<Lsn> = row
                .get::<_, Option<String>>(1)
                .and_then(|text| text.parse().ok());
            if let Some((position, who)) = resume_from
                && let Some(confirmed) = confirmed.filter(|c| *c > position)
            {
                return Err(SnapshotError::Refused(format!(
                    "replication slot {slot} was moved to {confirmed}, past {position}, but {who} \
                     still needs the changes from {position} on, which cannot be read any more"
                )));
            }
            tracing::info!(%slot, "the replication slot exists (a link of this site may still need it): \
                           it is kept where it is, and a temporary slot exports the snapshot");
            true
        }
    };
    let name = if temporary {
        format!("{}_bf{}", &slot[..slot.len().min(50)], std::process::id())
    } else {
        slot
    };
    Ok(PgExportedSnapshot::create(&site.url, site.password(), &name, temporary).await?)
}

fn session_config(
    url: &str,
    password: Option<&str>,
    slot: &str,
) -> Result<ReplicationConfig, PgSnapshotError> {
    let (url, tls) = super::split_url(url)?;
    let parsed: tokio_postgres::Config = url.parse().map_err(PgError::Url)?;
    let user = parsed
        .get_user()
        .ok_or(PgSnapshotError::Url("names no user"))?;
    let database = parsed.get_dbname().unwrap_or(user);
    let password = match password {
        Some(p) => p.to_owned(),
        None => parsed
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default(),
    };
    let port = parsed.get_ports().first().copied().unwrap_or(5432);
    let config = match parsed.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => {
            ReplicationConfig::new(host, user, password, database, slot, slot).with_port(port)
        }
        Some(tokio_postgres::config::Host::Unix(dir)) => ReplicationConfig::unix(
            dir.to_string_lossy(),
            port,
            user,
            password,
            database,
            slot,
            slot,
        ),
        None => ReplicationConfig::new("localhost", user, password, database, slot, slot)
            .with_port(port),
    };
    Ok(config.with_tls(tls.replication()))
}

/// The SQL condition selecting `range` (`1=1` for the whole table): a plain comparison for one
/// column, a row comparison `(a, b) > (x, y)` for several (which PostgreSQL reads by index).
pub(super) fn condition(range: &KeyRange) -> Result<String, PgSnapshotError> {
    if range.columns.is_empty() {
        return Ok("1=1".to_owned());
    }
    let names = tuple(range.columns.iter().map(|c| quote_ident(&c.name)));
    let mut parts = Vec::new();
    for (bound, op) in [(&range.lo, ">"), (&range.hi, "<=")] {
        if let Some(values) = bound {
            parts.push(format!(
                "{names} {op} {}",
                literals(&range.columns, values)?
            ));
        }
    }
    Ok(if parts.is_empty() {
        "1=1".to_owned()
    } else {
        parts.join(" AND ")
    })
}

fn tuple(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.len() == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        format!("({})", items.join(", "))
    }
}

fn literals(columns: &[Column], values: &[Value]) -> Result<String, PgSnapshotError> {
    if columns.len() != values.len() {
        return Err(PgSnapshotError::Key(format!(
            "a bound of {} values for {} key columns",
            values.len(),
            columns.len()
        )));
    }
    Ok(tuple(
        columns
            .iter()
            .zip(values)
            .map(|(c, v)| literal(c, v))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter(),
    ))
}

/// `value` as an SQL literal of `column`'s type (integers bare, everything else as its text
/// cast to the declared type; `standard_conforming_strings` is on in the reader's session).
fn literal(column: &Column, value: &Value) -> Result<String, PgSnapshotError> {
    let text = match value {
        Value::Int(i) => return Ok(i.to_string()),
        Value::UInt(u) => return Ok(u.to_string()),
        Value::Bool(b) => return Ok(b.to_string()),
        Value::Text(s) => s.clone(),
        Value::Decimal(d) => d.to_string(),
        Value::Uuid(u) => u.to_string(),
        Value::Date(d) if d.year() >= 1 => d.format("%Y-%m-%d").to_string(),
        Value::Timestamp(t) if t.year() >= 1 => t.format("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        Value::TimestampTz(t) if t.year() >= 1 => t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        Value::Bytes(b) => {
            let mut hex = String::from("\\x");
            for byte in b {
                hex.push_str(&format!("{byte:02x}"));
            }
            hex
        }
        other => {
            return Err(PgSnapshotError::Key(format!(
                "{other:?} of key column {} has no literal form",
                column.name
            )));
        }
    };
    Ok(format!(
        "CAST('{}' AS {})",
        text.replace('\'', "''"),
        column.declared
    ))
}

/// One connection reading inside a snapshot (an imported one, or its own).
pub struct PgSnapshotReader {
    pub(super) client: Client,
    types: HashMap<u32, PgType>,
}

impl PgSnapshotReader {
    /// Whether a key column of this type can cut a table into ranges: its values have a literal
    /// form here and the database orders and compares them the same way.
    pub fn orderable(column: &Column) -> bool {
        matches!(
            column.type_name.as_str(),
            "int2"
                | "int4"
                | "int8"
                | "numeric"
                | "text"
                | "varchar"
                | "bpchar"
                | "name"
                | "uuid"
                | "date"
                | "timestamp"
                | "timestamptz"
                | "bytea"
                | "bool"
                | "enum"
        )
    }

    /// Connects and opens a read-only repeatable-read transaction in the exported snapshot
    /// `snapshot` (or a fresh one of its own with `None`).
    pub async fn open(
        url: &str,
        password: Option<&str>,
        snapshot: Option<&str>,
    ) -> Result<PgSnapshotReader, PgSnapshotError> {
        let client = connect(url, password).await?;
        let mut sql = String::from(
            "SET DateStyle = ISO, MDY; SET TimeZone = UTC; SET bytea_output = hex; \
             SET extra_float_digits = 3; SET IntervalStyle = postgres; \
             SET standard_conforming_strings = on; \
             BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;",
        );
        if let Some(name) = snapshot {
            sql.push_str(&format!(
                " SET TRANSACTION SNAPSHOT '{}';",
                name.replace('\'', "''")
            ));
        }
        client
            .batch_execute(&sql)
            .await
            .map_err(PgError::query("importing the exported snapshot"))?;
        Ok(PgSnapshotReader {
            client,
            types: HashMap::new(),
        })
    }

    /// Ends this reader's transaction and starts a fresh repeatable-read one; returns a WAL
    /// position at or after the end of every transaction the new one sees (see
    /// `postgres/verify.rs`).
    pub async fn renew(&mut self) -> Result<super::Lsn, PgSnapshotError> {
        super::verify::renew(&self.client).await
    }

    /// Ends this reader's transaction and starts a fresh repeatable-read one, without reading
    /// a position (its snapshot is taken by the next statement).
    pub async fn refresh(&mut self) -> Result<(), PgSnapshotError> {
        self.client
            .batch_execute("COMMIT; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(PgError::query("starting a fresh snapshot"))?;
        Ok(())
    }

    /// Whether `table` has no rows.
    pub async fn is_empty(&self, table: &TableName) -> Result<bool, PgSnapshotError> {
        let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM {})", qualified(table));
        let row = self
            .client
            .query_one(&sql, &[])
            .await
            .map_err(PgError::query("checking whether a table is empty"))?;
        Ok(row.get(0))
    }

    /// Runs `sql` (selecting `columns`) and converts its rows, read in text format, like the
    /// change stream does.
    async fn select(
        &mut self,
        table: &TableName,
        sql: &str,
        columns: &[String],
        doing: &'static str,
    ) -> Result<Vec<Row>, PgSnapshotError> {
        let statement = self
            .client
            .prepare(sql)
            .await
            .map_err(PgError::query(doing))?;
        let mut conversions = Vec::with_capacity(columns.len());
        for column in statement.columns() {
            let oid = column.type_().oid();
            if !self.types.contains_key(&oid) {
                let ty = resolve_type(&self.client, oid).await?;
                self.types.insert(oid, ty);
            }
            conversions.push(self.types[&oid].clone());
        }
        let names: Vec<Arc<str>> = columns.iter().map(|c| Arc::from(c.as_str())).collect();
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(PgError::query(doing))?;
        let mut rows = Vec::with_capacity(messages.len());
        for message in messages {
            let SimpleQueryMessage::Row(data) = message else {
                continue;
            };
            let mut row = Row::new();
            for (i, ty) in conversions.iter().enumerate() {
                let value = match data.get(i) {
                    None => Value::Null,
                    Some(text) => convert(ty, text).map_err(|problem| PgSnapshotError::Value {
                        table: table.clone(),
                        source: Box::new(ValueError {
                            column: columns[i].clone(),
                            type_name: ty.name.clone(),
                            problem,
                        }),
                    })?,
                };
                row.push(names[i].clone(), value);
            }
            rows.push(row);
        }
        Ok(rows)
    }

    /// The first column of the first row `sql` returns, as text (`None`: no row, or NULL).
    async fn first_text(
        &mut self,
        sql: &str,
        doing: &'static str,
    ) -> Result<Option<String>, PgSnapshotError> {
        let messages = self
            .client
            .simple_query(sql)
            .await
            .map_err(PgError::query(doing))?;
        Ok(messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        }))
    }
}

impl SnapshotRead for PgSnapshotReader {
    type Error = PgSnapshotError;

    fn can_cut_on(&self, column: &Column) -> bool {
        PgSnapshotReader::orderable(column)
    }

    /// The number of rows of `table`.
    async fn count(&mut self, table: &TableName) -> Result<u64, PgSnapshotError> {
        let sql = format!("SELECT count(*) FROM {}", qualified(table));
        let row = self
            .client
            .query_one(&sql, &[])
            .await
            .map_err(PgError::query("counting rows"))?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }

    async fn boundaries(
        &mut self,
        table: &TableName,
        column: &str,
        every: u64,
    ) -> Result<(Vec<i128>, u64), PgSnapshotError> {
        crate::snapshot::integer_cuts(
            &qualified(table),
            &quote_ident(column),
            every,
            |e| format!("({e})::text"),
            async |sql| {
                self.first_text(&sql, "splitting a table into key ranges")
                    .await
            },
            PgSnapshotError::Key,
        )
        .await
    }

    /// Every `every`-th key of `table` (primary-key columns `key`, in key order as the
    /// server orders them): the cut points splitting the table into ranges of `every` rows.
    /// Walked by the key's index from the last cut (a row comparison, which PostgreSQL reads
    /// by index), one query per range.
    async fn key_boundaries(
        &mut self,
        table: &TableName,
        key: &[Column],
        every: u64,
    ) -> Result<Vec<Vec<Value>>, PgSnapshotError> {
        let list = key
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let names: Vec<String> = key.iter().map(|c| c.name.clone()).collect();
        let mut cuts: Vec<Vec<Value>> = Vec::new();
        loop {
            let after = KeyRange {
                columns: key.to_vec(),
                lo: cuts.last().cloned(),
                hi: None,
            };
            let sql = format!(
                "SELECT {list} FROM {} WHERE {} ORDER BY {list} OFFSET {} LIMIT 1",
                qualified(table),
                condition(&after)?,
                every.max(1) - 1
            );
            let rows = self
                .select(table, &sql, &names, "splitting a table into key ranges")
                .await?;
            match rows.into_iter().next() {
                Some(row) => cuts.push(row.iter().map(|(_, v)| v.clone()).collect()),
                None => return Ok(cuts),
            }
        }
    }

    /// For each of `keys`, the index of the range it falls in when `cuts` (ascending) cut
    /// the table on its key columns `key`: the number of cut points below it. The server
    /// compares, with the columns' own types and collations: the keys and cut points are
    /// read as rows of a union with the (empty) table's own columns.
    async fn range_indexes(
        &mut self,
        table: &TableName,
        key: &[Column],
        cuts: &[Vec<Value>],
        keys: &[Vec<Value>],
    ) -> Result<Vec<u64>, PgSnapshotError> {
        if cuts.is_empty() || keys.is_empty() {
            return Ok(vec![0; keys.len()]);
        }
        let list = key
            .iter()
            .map(|c| quote_ident(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        let values = |rows: &[Vec<Value>], numbered: bool| -> Result<String, PgSnapshotError> {
            let mut out = Vec::with_capacity(rows.len());
            for (i, row) in rows.iter().enumerate() {
                let mut items = Vec::with_capacity(row.len() + 1);
                if numbered {
                    items.push(i.to_string());
                }
                for (c, v) in key.iter().zip(row) {
                    items.push(literal(c, v)?);
                }
                out.push(format!("({})", items.join(", ")));
            }
            Ok(out.join(", "))
        };
        let side = |alias: &str| {
            tuple(
                key.iter()
                    .map(|c| format!("{alias}.{}", quote_ident(&c.name))),
            )
        };
        let sql = format!(
            "WITH duplex_b AS (SELECT {list} FROM {t} WHERE false UNION ALL VALUES {b}), \
             duplex_k AS (SELECT 0 AS duplex_i, {list} FROM {t} WHERE false UNION ALL VALUES {k}) \
             SELECT (SELECT count(*) FROM duplex_b b WHERE {bs} < {ks}) FROM duplex_k k ORDER BY duplex_i",
            t = qualified(table),
            b = values(cuts, false)?,
            k = values(keys, true)?,
            bs = side("b"),
            ks = side("k"),
        );
        let messages = self
            .client
            .simple_query(&sql)
            .await
            .map_err(PgError::query("finding the key ranges of changed rows"))?;
        let mut out = Vec::with_capacity(keys.len());
        for message in messages {
            if let SimpleQueryMessage::Row(row) = message {
                let n = row.get(0).and_then(|t| t.parse().ok()).ok_or_else(|| {
                    PgSnapshotError::Key("the range count is not a number".into())
                })?;
                out.push(n);
            }
        }
        Ok(out)
    }

    /// The rows of `range` of `table`, with the listed columns, as canonical values.
    async fn rows(
        &mut self,
        table: &TableName,
        columns: &[Column],
        range: &KeyRange,
    ) -> Result<Vec<Row>, PgSnapshotError> {
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let list = names
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {list} FROM {} WHERE {}",
            qualified(table),
            condition(range)?
        );
        self.select(table, &sql, &names, "reading a key range")
            .await
    }

    async fn rows_with_keys(
        &mut self,
        table: &TableName,
        columns: &[Column],
        key: &[Column],
        keys: &[Vec<Value>],
    ) -> Result<Vec<Row>, PgSnapshotError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        let list = names
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let wanted = keys
            .iter()
            .map(|k| literals(key, k))
            .collect::<Result<Vec<_>, _>>()?
            .join(", ");
        let sql = format!(
            "SELECT {list} FROM {} WHERE {} IN ({wanted})",
            qualified(table),
            tuple(key.iter().map(|c| quote_ident(&c.name)))
        );
        self.select(table, &sql, &names, "reading rows by key")
            .await
    }

    async fn integer_span(
        &mut self,
        table: &TableName,
        column: &str,
    ) -> Result<Option<crate::snapshot::IntegerSpan>, PgSnapshotError> {
        let column = quote_ident(column);
        let qualified = qualified(table);
        let sql = format!(
            "SELECT min({column})::text, max({column})::text, \
             (SELECT reltuples::float8 FROM pg_class WHERE oid = $1::text::regclass) FROM {qualified}"
        );
        let row = self
            .client
            .query_one(&sql, &[&qualified])
            .await
            .map_err(PgError::query("reading the span of an integer key"))?;
        let bound = |i: usize| -> Result<Option<i128>, PgSnapshotError> {
            row.get::<_, Option<String>>(i)
                .map(|t| {
                    t.parse()
                        .map_err(|_| PgSnapshotError::Key(format!("{t:?} is not an integer")))
                })
                .transpose()
        };
        let (Some(min), Some(max)) = (bound(0)?, bound(1)?) else {
            return Ok(None);
        };
        // Never analysed (-1), or just created (0): count.
        let rows = match row.get::<_, Option<f64>>(2) {
            Some(estimate) if estimate >= 1.0 => estimate as u64,
            _ => self.count(table).await?,
        };
        Ok(Some(crate::snapshot::IntegerSpan { min, max, rows }))
    }

    fn can_digest(&self, columns: &[Column]) -> bool {
        PgSnapshotReader::digestible(columns)
    }

    async fn digest(
        &mut self,
        table: &TableName,
        columns: &[Column],
        range: &KeyRange,
    ) -> Result<crate::digest::RangeDigest, PgSnapshotError> {
        self.range_digest(table, columns, range).await
    }
}

fn convert(ty: &PgType, text: &str) -> Result<Value, super::types::ValueProblem> {
    match ty.conversion {
        Conversion::Unsupported => Err(super::types::ValueProblem::UnsupportedType),
        conversion => text_value(conversion, text),
    }
}

pub(super) fn qualified(table: &TableName) -> String {
    format!(
        "{}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    )
}
