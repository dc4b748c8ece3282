//! Changes a site makes to rows outside its row filter (`filter.<site>`): refused into the
//! conflict log rather than spread.

use duplex_connectors::Row;
use duplex_state::{ConflictRecord, ConflictSide, ConflictStatus, Resolution, RowVersions};

use super::super::EngineError;
use super::super::rows::{MergeMapping, display_image};
use super::{Coordinator, Done, now_millis};
use duplex_state::StateWriter;

/// A site's change whose row its filter does not pass.
pub(super) struct Outside<'a> {
    /// The site.
    pub site: &'a str,
    /// When the site committed it.
    pub commit_micros: i64,
    /// The row's key text.
    pub key: &'a str,
    /// The row as the site made it.
    pub row: &'a Row,
}

impl Coordinator {
    /// Records a refused change in the conflict log: the row stays as the site made it, at
    /// that site only (the caller records that the site holds it), and nothing is spread.
    pub(super) fn refuse_outside(
        &mut self,
        w: &mut StateWriter<'_>,
        mapping: &MergeMapping,
        change: Outside<'_>,
        rv: &RowVersions,
        done: &mut Done,
    ) -> Result<(), EngineError> {
        let Outside {
            site,
            commit_micros,
            key,
            row,
        } = change;
        let mut vector = rv.held.get(site).cloned().unwrap_or_default();
        vector.increment(site);
        let record = ConflictRecord {
            mapping: mapping.name.clone(),
            key: key.as_bytes().to_vec(),
            key_display: key.to_owned(),
            sites: vec![ConflictSide {
                site: site.to_owned(),
                vector,
                commit_time_millis: commit_micros / 1000,
                row: Some(
                    duplex_state::codec::encode(row)
                        .map_err(|e| EngineError::Codec(format!("a row of {}", mapping.name), e))?,
                ),
                row_display: display_image(Some(row)),
            }],
            policy: format!("filter:{site}"),
            decision: format!(
                "refused: the row is outside site {site}'s filter; kept at {site} only, not spread"
            ),
            detected_at_millis: now_millis(),
            status: ConflictStatus::Resolved(Resolution {
                winner: None,
                by: format!("filter:{site}"),
                at_millis: now_millis(),
            }),
        };
        let id = w.record_conflict(&record)?;
        self.stats.conflicts += 1;
        done.notes.push(format!(
            "change refused (conflict {id}): mapping {}, row {key}: site {site} changed a row outside its filter; kept there only, not spread",
            mapping.name
        ));
        Ok(())
    }
}
