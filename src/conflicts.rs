//! `duplex conflicts`: the conflict log, and settling held conflicts.
//!
//! While `duplex run` works it holds the state store, so this command asks it through its
//! control socket (see [`crate::engine::control`]); when no `run` is working, the log is read
//! from the store directly. Resolving writes the chosen version to every site, which only the
//! running engine does (in order with the changes it reads), so `resolve` needs `duplex run`.

use std::fmt::Write as _;

use chrono::{TimeZone, Utc};
use duplex_state::{ConflictRecord, ConflictStatus, StateError, StateStore};

use crate::config::Config;
use crate::engine::control::{self, Request, Response};

/// Why `duplex conflicts` failed.
#[derive(Debug, thiserror::Error)]
pub enum ConflictsError {
    /// Talking to the running engine failed.
    #[error("asking the running duplex (socket {path}) failed")]
    Socket {
        /// The socket.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The state store cannot be read.
    #[error("reading the conflict log")]
    State(#[from] StateError),
    /// The engine refused the request.
    #[error("{0}")]
    Refused(String),
    /// `resolve` without a running engine.
    #[error(
        "no duplex run is working on state directory {0}: resolving writes the chosen version to every site, which the running engine does; start `duplex run`, then resolve"
    )]
    NotRunning(String),
}

/// The conflict log, by id: from the running engine, or from the store when none runs.
pub async fn list(config: &Config) -> Result<Vec<(u64, ConflictRecord)>, ConflictsError> {
    // A process that holds the store but does not answer yet is a `run` starting up (or one
    // with only one-way mappings, which never answers): ask again for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match ask(config, &Request::Conflicts).await? {
            Some(Response::Conflicts(records)) => return Ok(records),
            Some(Response::Refused(why)) => return Err(ConflictsError::Refused(why)),
            Some(
                Response::Done(_)
                | Response::Status(_)
                | Response::Progress(_)
                | Response::Taken { .. },
            ) => {
                return Err(ConflictsError::Refused(
                    "the engine answered something else".into(),
                ));
            }
            None => {}
        }
        if !config.state_dir.join(duplex_state::STATE_FILE).exists() {
            return Ok(Vec::new());
        }
        match StateStore::open(&config.state_dir) {
            Ok(store) => {
                let records = store.conflicts()?;
                store.close()?;
                return Ok(records);
            }
            Err(StateError::InUse { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Settles held conflict `id` with the version of site `take`; returns what happened.
pub async fn resolve(config: &Config, id: u64, take: &str) -> Result<String, ConflictsError> {
    let request = Request::Resolve {
        id,
        take: take.to_owned(),
    };
    match ask(config, &request).await? {
        Some(Response::Done(what)) => Ok(what),
        Some(Response::Refused(why)) => Err(ConflictsError::Refused(why)),
        Some(
            Response::Conflicts(_)
            | Response::Status(_)
            | Response::Progress(_)
            | Response::Taken { .. },
        ) => Err(ConflictsError::Refused(
            "the engine answered something else".into(),
        )),
        None => Err(ConflictsError::NotRunning(
            config.state_dir.display().to_string(),
        )),
    }
}

async fn ask(config: &Config, request: &Request) -> Result<Option<Response>, ConflictsError> {
    control::ask(&config.state_dir, request)
        .await
        .map_err(|source| ConflictsError::Socket {
            path: control::socket_path(&config.state_dir)
                .display()
                .to_string(),
            source,
        })
}

fn status(record: &ConflictRecord) -> &'static str {
    match record.status {
        ConflictStatus::Held => "held",
        ConflictStatus::Resolved(_) => "resolved",
    }
}

fn time(millis: i64) -> String {
    Utc.timestamp_millis_opt(millis).single().map_or_else(
        || millis.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
    )
}

/// The log for people: one block per conflict, its versions one per line.
pub fn table(records: &[(u64, ConflictRecord)]) -> String {
    if records.is_empty() {
        return "no conflicts\n".into();
    }
    let mut out = String::new();
    for (id, record) in records {
        let _ = writeln!(
            out,
            "#{id}  {}  mapping {}  row {}  detected {}  policy {}",
            status(record),
            record.mapping,
            record.key_display,
            time(record.detected_at_millis as i64),
            record.policy
        );
        for side in &record.sites {
            let _ = writeln!(
                out,
                "    {:<12} committed {}  vector {}  {}",
                side.site,
                time(side.commit_time_millis),
                side.vector,
                side.row_display
            );
        }
        let settled = match &record.status {
            ConflictStatus::Held => format!(
                "waiting: `duplex conflicts resolve {id} --take <site>` writes that site's version everywhere"
            ),
            ConflictStatus::Resolved(resolution) => format!(
                "settled by {} at {}{}",
                resolution.by,
                time(resolution.at_millis as i64),
                resolution
                    .winner
                    .as_ref()
                    .map(|w| format!(", {w} won"))
                    .unwrap_or_default()
            ),
        };
        let _ = writeln!(out, "    decision: {}; {settled}", record.decision);
    }
    out
}

/// The log as JSON: an array of objects, one per conflict.
pub fn json(records: &[(u64, ConflictRecord)]) -> serde_json::Value {
    serde_json::Value::Array(
        records
            .iter()
            .map(|(id, record)| {
                let (winner, by, settled_at) = match &record.status {
                    ConflictStatus::Held => (None, None, None),
                    ConflictStatus::Resolved(r) => {
                        (r.winner.clone(), Some(r.by.clone()), Some(r.at_millis))
                    }
                };
                serde_json::json!({
                    "id": id,
                    "mapping": record.mapping,
                    "key": record.key_display,
                    "status": status(record),
                    "policy": record.policy,
                    "decision": record.decision,
                    "detected_at_millis": record.detected_at_millis,
                    "winner": winner,
                    "settled_by": by,
                    "settled_at_millis": settled_at,
                    "versions": record.sites.iter().map(|side| serde_json::json!({
                        "site": side.site,
                        "vector": side.vector.iter().map(|(s, c)| (s.to_owned(), c)).collect::<std::collections::BTreeMap<String, u64>>(),
                        "commit_time_millis": side.commit_time_millis,
                        "row": side.row_display,
                        "deleted": side.row.is_none(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
}
