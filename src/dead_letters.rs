//! Dead letters: changes a target refused under a mapping with `on_error = "dead-letter"`, set
//! aside in the state store so the link goes on, and written again by `duplex dead-letters
//! retry` once the cause is fixed.
//!
//! # Nothing lost, nothing twice, rows never out of order
//!
//! - *Set aside before left out.* The worker records a refused change in the state store
//!   (committed, fsynced) before the target transaction that leaves it out can commit. If the
//!   process stops in between, the target still holds the older position, so the transaction
//!   is delivered again; at the link's next start [`settle`] forgets every letter of a
//!   position beyond the one the target recorded, and the transaction is judged again. A letter
//!   therefore exists exactly for the changes the target committed transactions without.
//! - *In order per row.* Once a row (table and key; for a key change, both keys) has a letter,
//!   every later change of it is set aside too, behind it, so the target never holds a newer
//!   version of a row whose older change is still waiting. Retry writes a row's letters in
//!   their order and stops at the first one still refused; the row's later letters wait.
//! - *Retried exactly once.* Retry writes each letter as its own target transaction, which
//!   records in `duplex.positions` (source `dead-letters:<source>@<deployment>`) a retry number
//!   that the state store noted on the letter before the write. A retry interrupted after the
//!   target committed and before the letter was removed finds the target at or past that
//!   number next time, and removes the letter without writing it again.
//!
//! - *Not lost with the state directory.* The target transaction that leaves a change out also
//!   records in `duplex.positions` (source `dead-lettered:<source>@<deployment>`) the highest
//!   letter number set aside, and the store keeps the highest number it ever gave. A state
//!   directory that was replaced or restored from an older backup gave fewer: the link stops
//!   at start, naming the changes that are gone, instead of streaming on without them.
//!
//! The store is held by `duplex run`, so listing and retrying read it while `run` is stopped
//! (the run's log shows each letter as it is set aside).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use duplex_connectors::apply::{Applier, ApplyError, ApplyOptions};
use duplex_connectors::{
    AnyApplier, ChangeEvent, Origin, Position, PositionError, TableName, Transaction,
};
use duplex_state::{StateError, StateStore};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Direction};
use crate::link::refusal::{full_error, show_row};

/// A change a target refused, set aside.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The mapping.
    pub mapping: String,
    /// The source site.
    pub source: String,
    /// The target site.
    pub target: String,
    /// The source position of the transaction it belonged to.
    pub position: Position,
    /// When the source committed that transaction.
    pub commit_time: DateTime<Utc>,
    /// The change itself (the whole row as the source logged it).
    pub event: ChangeEvent,
    /// Why it was set aside: the target's error, or that it waits behind an earlier letter of
    /// its row.
    pub error: String,
    /// Set aside only because an earlier change of its row was.
    pub behind: bool,
    /// When it was set aside.
    pub recorded_at: DateTime<Utc>,
    /// The retry number a retry writes it under (see the module docs).
    #[serde(default)]
    pub attempt: Option<u64>,
}

/// The state-store scope of the letters of one source and target.
pub fn scope(source: &str, target: &str) -> String {
    format!("dead-letter:{source}->{target}")
}

/// The state-store key of the highest sequence number ever given to a letter of `scope`
/// (retried letters are removed; this stays).
pub fn assigned_key(scope: &str) -> String {
    format!("{scope}:assigned")
}

/// The `duplex.positions` source under which a target records the highest letter sequence
/// number set aside from `source_key`'s transactions, in the same target transaction that
/// leaves the change out: a state directory that lost letters is recognised at the next start.
pub fn marker_source(source_key: &str) -> String {
    format!("dead-lettered:{source_key}")
}

/// Why `duplex dead-letters` failed.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// A `duplex run` holds the store.
    #[error(
        "duplex run is working on state directory {0}: dead letters are kept in its state store, which it holds. Stop duplex run, then list or retry them (while it runs, its log shows each change it sets aside)"
    )]
    Running(String),
    /// The store is unreadable.
    #[error("reading the dead letters in the state store")]
    State(#[from] StateError),
    /// Writing a letter failed for a reason retrying later may fix.
    #[error("writing dead letters into site {site}")]
    Apply {
        /// The target site.
        site: String,
        /// Cause.
        #[source]
        source: Box<ApplyError>,
    },
    /// Reading the source tables' columns (for the routes) failed.
    #[error("reading the columns of the mapped tables on site {site}")]
    Describe {
        /// The source site.
        site: String,
        /// Cause.
        #[source]
        source: duplex_connectors::DescribeError,
    },
    /// A recorded position cannot be compared.
    #[error("a dead letter's position cannot be compared with the target's")]
    Position(#[source] PositionError),
    /// `--mapping` names no mapping with dead letters.
    #[error("mapping {0:?} is not a one-way mapping of this configuration")]
    UnknownMapping(String),
}

/// Forgets the letters of `scope` whose transaction the target has not committed (position
/// beyond `committed`), and returns the others in order.
pub fn settle(
    store: &StateStore,
    scope: &str,
    committed: Option<&Position>,
) -> Result<Vec<(u64, DeadLetter)>, SettleError> {
    let letters: Vec<(u64, DeadLetter)> = store.pending(scope)?;
    let mut kept = Vec::with_capacity(letters.len());
    for (seq, letter) in letters {
        let landed = match committed {
            None => false,
            Some(committed) => letter.position.compare(committed)?.is_le(),
        };
        if landed {
            kept.push((seq, letter));
        } else {
            store.remove_pending(scope, seq)?;
        }
    }
    Ok(kept)
}

/// Removes every letter of `scope` (a backfill made the target equal to a newer snapshot of
/// the source); returns how many there were.
pub fn discard(store: &StateStore, scope: &str) -> Result<usize, StateError> {
    let letters: Vec<(u64, DeadLetter)> = store.pending(scope)?;
    for (seq, _) in &letters {
        store.remove_pending(scope, *seq)?;
    }
    Ok(letters.len())
}

/// Why [`settle`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// A letter's position cannot be compared with the target's.
    #[error(transparent)]
    Position(#[from] PositionError),
}

/// Opens the state store, which a running `duplex run` holds.
fn open(config: &Config) -> Result<StateStore, DeadLetterError> {
    StateStore::open(&config.state_dir).map_err(|error| match error {
        StateError::InUse { dir, .. } => DeadLetterError::Running(dir.display().to_string()),
        other => other.into(),
    })
}

/// The (source, target) pairs of the configuration's one-way mappings (of `only`, when given).
fn edges(config: &Config, only: Option<&str>) -> Result<Vec<(String, String)>, DeadLetterError> {
    let mut pairs = BTreeSet::new();
    let mut found = only.is_none();
    for mapping in &config.mappings {
        if only.is_some_and(|name| name != mapping.name) {
            continue;
        }
        if let Direction::OneWay { from, to } = &mapping.direction {
            found = true;
            pairs.insert((from.clone(), to.clone()));
        }
    }
    if !found {
        return Err(DeadLetterError::UnknownMapping(
            only.unwrap_or_default().to_owned(),
        ));
    }
    Ok(pairs.into_iter().collect())
}

/// Every dead letter, per scope in order: `(sequence number, letter)`.
pub fn list(
    config: &Config,
    mapping: Option<&str>,
) -> Result<Vec<(u64, DeadLetter)>, DeadLetterError> {
    if !config.state_dir.join(duplex_state::STATE_FILE).exists() {
        return Ok(Vec::new());
    }
    let store = open(config)?;
    let mut all = Vec::new();
    for (source, target) in edges(config, mapping)? {
        let letters: Vec<(u64, DeadLetter)> = store.pending(&scope(&source, &target))?;
        all.extend(
            letters
                .into_iter()
                .filter(|(_, l)| mapping.is_none_or(|m| l.mapping == m)),
        );
    }
    store.close()?;
    Ok(all)
}

/// The letters as a table for people.
pub fn table(letters: &[(u64, DeadLetter)]) -> String {
    if letters.is_empty() {
        return "no dead letters\n".to_owned();
    }
    let mut out = String::new();
    for (seq, l) in letters {
        let _ = writeln!(
            out,
            "#{seq} mapping {} {} -> {}: {:?} of {} row {} (source position {}, committed {}){}\n    {}",
            l.mapping,
            l.source,
            l.target,
            l.event.op,
            l.event.table,
            show_row(l.event.key.iter()),
            l.position,
            l.commit_time.format("%Y-%m-%d %H:%M:%S UTC"),
            if l.behind {
                ", waiting behind an earlier letter of its row"
            } else {
                ""
            },
            l.error,
        );
    }
    let _ = writeln!(out, "{} dead letter(s)", letters.len());
    out
}

/// The letters as JSON, one object each.
pub fn json(letters: &[(u64, DeadLetter)]) -> serde_json::Value {
    serde_json::Value::Array(
        letters
            .iter()
            .map(|(seq, l)| {
                serde_json::json!({
                    "id": seq,
                    "mapping": l.mapping,
                    "source": l.source,
                    "target": l.target,
                    "table": l.event.table.to_string(),
                    "op": format!("{:?}", l.event.op),
                    "key": show_row(l.event.key.iter()),
                    "before": l.event.before.as_ref().map(|r| show_row(r.iter())),
                    "after": l.event.after.as_ref().map(|r| show_row(r.iter())),
                    "position": l.position.to_string(),
                    "commit_time": l.commit_time.to_rfc3339(),
                    "error": l.error,
                    "behind": l.behind,
                    "recorded_at": l.recorded_at.to_rfc3339(),
                })
            })
            .collect(),
    )
}

/// What a retry did.
#[derive(Debug, Default)]
pub struct RetryReport {
    /// Letters written.
    pub written: usize,
    /// Letters refused again, with why (the rest of their rows' letters wait behind them).
    pub refused: Vec<(u64, String)>,
    /// Letters still waiting behind a refused one.
    pub waiting: usize,
}

/// Writes the dead letters (of `mapping`, or all) into their targets in order; see the module
/// docs. Needs `duplex run` stopped (it holds the store).
pub async fn retry(config: &Config, mapping: Option<&str>) -> Result<RetryReport, DeadLetterError> {
    let mut report = RetryReport::default();
    if !config.state_dir.join(duplex_state::STATE_FILE).exists() {
        return Ok(report);
    }
    let store = open(config)?;
    let deployment = store.deployment_id().to_owned();
    for (source, target) in edges(config, mapping)? {
        let scope = scope(&source, &target);
        let letters: Vec<(u64, DeadLetter)> = store.pending(&scope)?;
        if letters.is_empty() {
            continue;
        }
        let mut applier = connect(config, &source, &target, &letters).await?;
        let apply_error = |source| DeadLetterError::Apply {
            site: target.clone(),
            source: Box::new(source),
        };
        let retry_source = format!(
            "dead-letters:{}",
            crate::link::position_key(&source, &deployment)
        );
        let recorded = match applier.position(&retry_source).await.map_err(apply_error)? {
            Some(Position::Outbox(n)) => n,
            _ => 0,
        };
        let mut next = letters
            .iter()
            .filter_map(|(_, l)| l.attempt)
            .chain([recorded])
            .max()
            .unwrap_or(0)
            + 1;
        let mut blocked: HashSet<(TableName, String)> = HashSet::new();
        for (seq, mut letter) in letters {
            if mapping.is_some_and(|m| m != letter.mapping) {
                continue;
            }
            let rows = rows_of(&letter.event);
            if letter.attempt.is_some_and(|a| a <= recorded) {
                // Written by an interrupted retry: the target committed it.
                store.remove_pending(&scope, seq)?;
                report.written += 1;
                continue;
            }
            if rows.iter().any(|r| blocked.contains(r)) {
                blocked.extend(rows);
                report.waiting += 1;
                continue;
            }
            letter.attempt = Some(next);
            store.put_pending(&scope, seq, &letter)?;
            let tx = Transaction {
                source: retry_source.clone(),
                position: Position::Outbox(next),
                commit_time: letter.commit_time,
                origin: Origin::Local,
                events: vec![letter.event.clone()],
            };
            next += 1;
            match applier.apply(std::slice::from_ref(&tx)).await {
                Ok(()) => {
                    store.remove_pending(&scope, seq)?;
                    report.written += 1;
                }
                Err(error) if error.is_transient() => return Err(apply_error(error)),
                Err(error) => {
                    letter.error = full_error(&error);
                    letter.behind = false;
                    letter.attempt = None;
                    store.put_pending(&scope, seq, &letter)?;
                    report.refused.push((seq, letter.error.clone()));
                    blocked.extend(rows);
                }
            }
        }
    }
    store.close()?;
    Ok(report)
}

/// The rows a change touches (see `crate::link::refusal`).
fn rows_of(event: &ChangeEvent) -> Vec<(TableName, String)> {
    crate::link::refusal::touched(event)
}

/// An applier for `target` with the routes of the tables the letters change.
async fn connect(
    config: &Config,
    source: &str,
    target: &str,
    letters: &[(u64, DeadLetter)],
) -> Result<AnyApplier, DeadLetterError> {
    let tables: BTreeSet<TableName> = letters.iter().map(|(_, l)| l.event.table.clone()).collect();
    let source_site = &config.sites[source];
    let schemas: HashMap<TableName, duplex_connectors::TableSchema> =
        duplex_connectors::describe(&source_site.connection(), &tables)
            .await
            .map_err(|e| DeadLetterError::Describe {
                site: source.to_owned(),
                source: e,
            })?
            .into_iter()
            .collect();
    let routes = crate::routes::routes_for(&config.mappings, source, target, &schemas);
    AnyApplier::connect(
        &config.sites[target].connection(),
        routes,
        ApplyOptions::default(),
    )
    .await
    .map_err(|e| DeadLetterError::Apply {
        site: target.to_owned(),
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use duplex_connectors::postgres::Lsn;
    use duplex_connectors::{Op, Row, Value};

    use super::*;

    fn letter(lsn: u64) -> DeadLetter {
        DeadLetter {
            mapping: "items".into(),
            source: "store".into(),
            target: "wms".into(),
            position: Position::Postgres(Lsn(lsn)),
            commit_time: Utc::now(),
            event: ChangeEvent {
                table: TableName::new("public", "items"),
                op: Op::Insert,
                key: [("id", Value::Int(1))].into_iter().collect::<Row>(),
                before: None,
                after: Some([("id", Value::Int(1))].into_iter().collect()),
            },
            error: "refused".into(),
            behind: false,
            recorded_at: Utc::now(),
            attempt: None,
        }
    }

    /// Letters of transactions the target did not commit (the process stopped between setting
    /// them aside and the commit) are forgotten; the others are kept, in order.
    #[test]
    fn settle_keeps_exactly_the_letters_of_committed_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        let scope = scope("store", "wms");
        for (seq, lsn) in [(1, 10), (2, 20), (3, 20), (4, 30)] {
            store.put_pending(&scope, seq, &letter(lsn)).unwrap();
        }
        store
            .put_pending(&super::scope("store", "erp"), 1, &letter(99))
            .unwrap();
        let kept = settle(&store, &scope, Some(&Position::Postgres(Lsn(20)))).unwrap();
        assert_eq!(
            kept.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let left: Vec<(u64, DeadLetter)> = store.pending(&scope).unwrap();
        assert_eq!(left.len(), 3);
        assert!(settle(&store, &scope, None).unwrap().is_empty());
        assert!(store.pending::<DeadLetter>(&scope).unwrap().is_empty());
        // Another target's letters are untouched.
        assert_eq!(
            store
                .pending::<DeadLetter>(&super::scope("store", "erp"))
                .unwrap()
                .len(),
            1
        );
    }
}
