//! Held conflicts, as the coordinator meets them: the requests of `duplex conflicts` that
//! settle them (through the control socket), and the writes a site skipped with no change of
//! its own to decide them, which become held conflicts. Decided inside the batch's state-store
//! transaction like everything else (see the parent module).

use std::sync::Arc;

use chrono::Utc;
use duplex_connectors::Row;
use duplex_state::{
    ConflictRecord, ConflictSide, ConflictStatus, Resolution, RowVersions, StateWriter,
    VersionVector,
};

use super::super::EngineError;
use super::super::control;
use super::super::outbox::OutboxWrite;
use super::super::rows::{MergeMapping, display_image};
use super::{Coordinator, Done, Propagation, RowData, load, missing_key, now_millis, store_row};

impl Coordinator {
    /// Writes a row an operator (or `verify --take`) settled to every site: `data` holds the
    /// chosen image as the newest, stamped now, and the chosen site holds `rv.merged`; then
    /// stores the row.
    pub(super) fn write_settled(
        &mut self,
        w: &mut StateWriter<'_>,
        mapping: &MergeMapping,
        (key_row, key): (&Row, &str),
        mut rv: RowVersions,
        mut data: RowData,
        done: &mut Done,
    ) -> Result<(), EngineError> {
        let vector = rv.merged.clone();
        let since = data.commit_micros;
        let newest = Propagation {
            mapping,
            key_row,
            key,
            rv: &mut rv,
            data: &mut data,
            vector: &vector,
            since,
        };
        self.propagate(w, newest, done)?;
        store_row(w, mapping, key, rv, &data)
    }

    /// A request of `duplex conflicts`.
    pub(super) fn control(
        &mut self,
        w: &mut StateWriter<'_>,
        request: control::Request,
        done: &mut Done,
    ) -> Result<control::Response, EngineError> {
        use control::Response;
        let (id, take) = match request {
            control::Request::Conflicts => return Ok(Response::Conflicts(self.store.conflicts()?)),
            control::Request::Status => {
                return Ok(Response::Status(crate::telemetry::global().snapshot()));
            }
            control::Request::Progress => return Ok(Response::Progress(self.progress())),
            control::Request::Take {
                mapping,
                take,
                rows,
            } => return self.take(w, &mapping, &take, rows, done),
            control::Request::Resolve { id, take } => (id, take),
        };
        let Some(record) = self.store.conflict(id)? else {
            return Ok(Response::Refused(format!("there is no conflict {id}")));
        };
        if record.status != ConflictStatus::Held {
            return Ok(Response::Refused(format!(
                "conflict {id} is not held: it was settled already ({})",
                record.decision
            )));
        }
        let plan = Arc::clone(&self.plan);
        let Some(mapping) = plan.mapping(&record.mapping) else {
            return Ok(Response::Refused(format!(
                "conflict {id} belongs to mapping {}, which is not a two-way mapping of this configuration",
                record.mapping
            )));
        };
        if !mapping.sites.contains(&take) {
            return Ok(Response::Refused(format!(
                "site {take} is not a site of mapping {}: choose one of {}",
                mapping.name,
                mapping.sites.join(", ")
            )));
        }
        let key = String::from_utf8_lossy(&record.key).into_owned();
        let (mut rv, mut data) = load(w, mapping, &key)?;
        if data.held_conflict != Some(id) {
            return Ok(Response::Refused(format!(
                "row {key} of mapping {} is not held by conflict {id}",
                mapping.name
            )));
        }
        let winner = data.expected(&take).cloned();
        let key_row = winner
            .as_ref()
            .or(data.image.as_ref())
            .or_else(|| mapping.sites.iter().find_map(|s| data.expected(s)))
            .and_then(|row| mapping.key_of(row))
            .map(|(row, _)| row)
            .ok_or_else(|| missing_key(mapping, &take))?;
        let vector = rv.merged.clone();
        rv.held.insert(take.clone(), vector.clone());
        data.held_conflict = None;
        data.set_image(winner.clone(), &mapping.sites);
        data.writer = take.clone();
        data.commit_micros = Utc::now().timestamp_micros();
        self.write_settled(w, mapping, (&key_row, &key), rv, data, done)?;
        w.resolve_conflict(
            id,
            &Resolution {
                winner: Some(take.clone()),
                by: "operator".into(),
                at_millis: now_millis(),
            },
        )?;
        tracing::info!(conflict = id, mapping = %mapping.name, key = %key, site = %take, "held conflict resolved by the operator");
        done.settled += 1;
        Ok(Response::Done(format!(
            "conflict {id} resolved: the version of {take} ({}) is being written to every site",
            display_image(winner.as_ref())
        )))
    }

    /// How far each site is decided and its writes numbered (see [`control::SiteProgress`]).
    fn progress(&self) -> Vec<control::SiteProgress> {
        self.plan
            .sites
            .iter()
            .enumerate()
            .map(|(index, site)| control::SiteProgress {
                site: site.site.name.clone(),
                decided: self.decided[index].clone(),
                queued: self.next_seq[index].saturating_sub(1),
            })
            .collect()
    }

    /// A write the site skipped (its row did not hold what the write expected). Normally the
    /// site changed the row first, and that change, read before this echo, decides. When the
    /// site's log never showed the row at all, nothing will ever decide it: a key that equals another under
    /// the site's collation ('A' and 'a', 'b' and 'b ' in MariaDB's `_ci` collations), or a row
    /// changed without the log. That becomes a held conflict, never silence.
    pub(super) fn skipped(
        &mut self,
        w: &mut StateWriter<'_>,
        mapping: &MergeMapping,
        site: &str,
        write: &OutboxWrite,
        done: &mut Done,
    ) -> Result<(), EngineError> {
        let (rv, mut data) = load(w, mapping, &write.key)?;
        // The site's log never showed this row: no local change of it (the site's own counter
        // of the row is 0) and no write of duplex landed there (it holds no version). Then the
        // row the write met there is another key's, or one changed without the log, and no
        // change of the site will ever decide the write. (A site whose log showed the row may
        // skip a write the engine's bookkeeping expected differently; its changes decide.)
        let unexplained = data.held_conflict.is_none()
            && rv.merged.get(site) == 0
            && rv.held.get(site).is_none_or(VersionVector::is_empty);
        if !unexplained {
            tracing::debug!(mapping = %write.mapping, key = %write.key, site = %site, "write skipped: the row had changed there; that change decides");
            return Ok(());
        }
        let encode = |image: Option<&Row>| {
            image
                .map(duplex_state::codec::encode)
                .transpose()
                .map_err(|e| EngineError::Codec(format!("a row of {}", mapping.name), e))
        };
        let held = data.held_image(site).cloned();
        let record = ConflictRecord {
            mapping: mapping.name.clone(),
            key: write.key.as_bytes().to_vec(),
            key_display: write.key.clone(),
            sites: vec![
                ConflictSide {
                    site: data.writer.clone(),
                    vector: write.vector.clone(),
                    commit_time_millis: data.commit_micros / 1000,
                    row: encode(write.after.as_ref())?,
                    row_display: display_image(write.after.as_ref()),
                },
                ConflictSide {
                    site: site.to_owned(),
                    vector: VersionVector::new(),
                    commit_time_millis: data.commit_micros / 1000,
                    row: encode(held.as_ref())?,
                    row_display: display_image(held.as_ref()),
                },
            ],
            policy: mapping.policy_name(),
            decision: format!(
                "held: the write into {site} was skipped because the row there was not what {site}'s log shows, and no change of it followed to decide it: another key equal to this one under the column's collation ('A' and 'a', or 'b' and 'b ', under a case- or pad-insensitive collation), or a change made without the log; each site keeps its own value until `duplex conflicts resolve`"
            ),
            detected_at_millis: now_millis(),
            status: ConflictStatus::Held,
        };
        let id = w.record_conflict(&record)?;
        self.stats.conflicts += 1;
        done.decided
            .push((mapping.name.clone(), record.policy.clone(), "held"));
        done.notes.push(format!(
            "conflict {id} held: mapping {}, row {}: the write into {site} was skipped with no change there to decide it (a key colliding under its collation?); settle it with `duplex conflicts resolve {id} --take <site>` after fixing the cause",
            mapping.name, write.key
        ));
        data.held_conflict = Some(id);
        store_row(w, mapping, &write.key, rv, &data)
    }
}
