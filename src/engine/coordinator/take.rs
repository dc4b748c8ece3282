//! `duplex verify --repair --take SITE` as the engine carries it out: every site of a two-way
//! mapping made to hold SITE's rows where verify found them different, decided by the
//! coordinator like an operator settling a conflict (see the parent module for why a decision
//! inside a batch is exact).
//!
//! Verify reads each differing row on the sites it compared and sends what it read. Those
//! images replace what the engine expected each site to hold (and the image it knew each to
//! hold, which a later change there is made on): a row changed without the log
//! (the reason verify found it) is a row whose expected image is wrong, and a write
//! conditioned on the wrong image would be skipped. With the images verify read, the write to
//! each site that differs is conditioned on what the site really held; if the site changed the
//! row again since, the condition fails, the site's own change is read and decides, and
//! verify's re-check after the repair reports the row still differing. The newest version
//! becomes SITE's image with the row's merged vector (as an operator's resolution: every site
//! holding it holds that version once its write is echoed), and the repair is logged as a
//! conflict resolved by `verify --take SITE`, with each site's image. A row with writes of the
//! engine still on their way is left alone (reported busy): the images verify read may already
//! be outdated by them.

use std::collections::BTreeMap;

use chrono::Utc;
use duplex_connectors::Row;
use duplex_state::{ConflictRecord, ConflictSide, ConflictStatus, Resolution, StateWriter};

use super::super::EngineError;
use super::super::control::Response;
use super::super::rows::display_image;
use super::{Coordinator, Done, load, now_millis};

impl Coordinator {
    /// A [`super::super::control::Request::Take`]: see the module docs.
    pub(super) fn take(
        &mut self,
        w: &mut StateWriter<'_>,
        mapping_name: &str,
        take: &str,
        rows: Vec<BTreeMap<String, Option<Row>>>,
        done: &mut Done,
    ) -> Result<Response, EngineError> {
        let plan = std::sync::Arc::clone(&self.plan);
        let Some(mapping) = plan.mapping(mapping_name) else {
            return Ok(Response::Refused(format!(
                "mapping {mapping_name} is not a two-way mapping of the running engine"
            )));
        };
        if !mapping.sites.iter().any(|s| s == take) {
            return Ok(Response::Refused(format!(
                "site {take} is not a site of mapping {mapping_name}: choose one of {}",
                mapping.sites.join(", ")
            )));
        }
        let (mut written, mut busy) = (Vec::new(), Vec::new());
        for read in rows {
            // Each site's image in canonical form.
            let mut images: BTreeMap<String, Option<Row>> = BTreeMap::new();
            for (site, row) in read {
                if !mapping.sites.contains(&site) {
                    return Ok(Response::Refused(format!(
                        "site {site} is not a site of mapping {mapping_name}"
                    )));
                }
                let image = row.map(|r| mapping.read_row(&site, &r)).transpose()?;
                images.insert(site, image);
            }
            let Some(winner) = images.get(take).cloned() else {
                return Ok(Response::Refused(format!(
                    "a row of mapping {mapping_name} without {take}'s image"
                )));
            };
            let Some((key_row, key)) = images.values().flatten().find_map(|r| mapping.key_of(r))
            else {
                continue;
            };
            let in_flight = mapping.sites.iter().any(|site| {
                self.plan.site_index(site).is_some_and(|index| {
                    self.outboxes[index]
                        .of_row(&mapping.name, &key)
                        .next()
                        .is_some()
                })
            });
            if in_flight {
                busy.push(key);
                continue;
            }
            let (mut rv, mut data) = load(w, mapping, &key)?;
            let sides = images
                .iter()
                .map(|(site, image)| {
                    Ok(ConflictSide {
                        site: site.clone(),
                        vector: rv.held.get(site).cloned().unwrap_or_default(),
                        commit_time_millis: now_millis() as i64,
                        row: image
                            .as_ref()
                            .map(duplex_state::codec::encode)
                            .transpose()
                            .map_err(|e| {
                                EngineError::Codec(format!("a row of {}", mapping.name), e)
                            })?,
                        row_display: display_image(image.as_ref()),
                    })
                })
                .collect::<Result<Vec<_>, EngineError>>()?;
            if let Some(id) = data.held_conflict.take() {
                w.resolve_conflict(id, &resolution(take))?;
                done.settled += 1;
            }
            let vector = rv.merged.clone();
            rv.held.insert(take.to_owned(), vector.clone());
            data.set_image(winner.clone(), &mapping.sites);
            // What each site read really holds (verify read it; its log may never have shown
            // it): the condition of the write there, and what a change there is made on.
            for (site, image) in images {
                data.set_expected(&site, image.clone());
                data.set_held(&site, image);
            }
            data.writer = take.to_owned();
            data.commit_micros = Utc::now().timestamp_micros();
            let id = w.record_conflict(&ConflictRecord {
                mapping: mapping.name.clone(),
                key: key.as_bytes().to_vec(),
                key_display: key.clone(),
                sites: sides,
                policy: mapping.policies_name(),
                decision: format!(
                    "duplex verify found the sites different; --repair --take {take} writes {take}'s version ({}) to every site",
                    display_image(winner.as_ref())
                ),
                detected_at_millis: now_millis(),
                status: ConflictStatus::Resolved(resolution(take)),
            })?;
            tracing::info!(conflict = id, mapping = %mapping.name, key = %key, site = %take, "verify --take: the site's version is being written to every site");
            self.write_settled(w, mapping, (&key_row, &key), rv, data, done)?;
            written.push(key);
        }
        Ok(Response::Taken { written, busy })
    }
}

/// A resolution by `verify --take take`.
fn resolution(take: &str) -> Resolution {
    Resolution {
        winner: Some(take.to_owned()),
        by: format!("verify --take {take}"),
        at_millis: now_millis(),
    }
}
