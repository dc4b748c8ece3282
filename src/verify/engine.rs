//! Waiting for the merge engine of a two-way mapping, so that a row verify finds different on
//! two sites is not a change the engine is still carrying.
//!
//! # Why two sites that still differ after the wait differ for real
//!
//! Verify reads the position of each of the two sites' logs now (`PA`, `PB`), then asks the
//! running engine, through its control socket ([`crate::engine::control::Request::Progress`]),
//! how far it has decided each site's log and the number of the last write it queued for each
//! site. The coordinator answers between two batches, so once it reports both logs decided up
//! to `PA` and `PB`, every change committed on either site before verify read the positions is
//! decided, and each write that decision made for A or B is queued with a number at most the
//! one reported. Writes land in number order, each in one target transaction that records its
//! number in that site's `duplex.positions` row `merge:<site>`; once both rows reach the
//! reported numbers, every such write has landed (or was skipped because the site changed the
//! row first: that change is after the positions and makes the next round differ again). So
//! A then holds everything B held at `PB` and B everything A held at `PA`: a row read on both
//! afterwards that still differs either changed again after the positions (the next round
//! reads it again; rounds go on until two read the same rows) or differs for real: edited
//! without the log, or a conflict held for a person, which verify reports like any
//! difference. When no engine answers (no `duplex run`), or it does not get there within the
//! wait, the round is not confirmed and the report says so.

use std::path::Path;
use std::time::{Duration, Instant};

use duplex_connectors::{Position, SiteConnection};

use super::VerifyError;
use super::scan::later;
use crate::engine::control::{self, Request, Response};
use crate::engine::outbox_name;

/// Waits until the engine of `state_dir` has decided each site's log up to its position in
/// `at` and every write it queued for those sites by then has landed; false at once when no
/// `duplex run` holds the state directory, or when `wait` passed first.
pub async fn wait_settled(
    state_dir: &Path,
    at: &[(&SiteConnection, Position)],
    wait: Duration,
) -> Result<bool, VerifyError> {
    let deadline = Instant::now() + wait;
    // The write numbers to wait for, per site, once the logs are decided.
    let mut queued: Option<Vec<u64>> = None;
    loop {
        if queued.is_none() {
            match control::ask(state_dir, &Request::Progress).await {
                Ok(Some(Response::Progress(progress))) => queued = decided_up_to(&progress, at),
                // No `duplex run` holds the state directory: nothing will carry the changes.
                Ok(None) => return Ok(false),
                Ok(Some(_)) | Err(_) => {}
            }
        }
        if let Some(numbers) = &queued {
            let mut landed = true;
            for ((site, _), &number) in at.iter().zip(numbers) {
                if number == 0 {
                    continue;
                }
                let recorded =
                    duplex_connectors::verify::recorded_position(site, &outbox_name(&site.name))
                        .await
                        .map_err(|source| VerifyError::Admin {
                            site: site.name.clone(),
                            source,
                        })?;
                if recorded.is_none_or(|r| later(&Position::Outbox(number), &r)) {
                    landed = false;
                    break;
                }
            }
            if landed {
                return Ok(true);
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The last write number queued per site of `at` when `progress` reports every site's log
/// decided up to its position there; `None` while it does not.
fn decided_up_to(
    progress: &[control::SiteProgress],
    at: &[(&SiteConnection, Position)],
) -> Option<Vec<u64>> {
    at.iter()
        .map(|(site, position)| {
            let known = progress.iter().find(|p| p.site == site.name)?;
            let decided = known.decided.as_ref()?;
            (!later(position, decided)).then_some(known.queued)
        })
        .collect()
}
