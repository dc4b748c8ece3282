//! What a backfill checks before it copies: that the source's change stream can still give
//! what others resume from, and that each target is not streaming from the source already nor
//! (without `--allow-nonempty`) holding rows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use duplex_connectors::{AnyApplier, Applier, ApplyError, ApplyOptions, TableRoute};
use duplex_state::StateStore;

use super::{BackfillError, BackfillMeta, admin_error};
use crate::config::{Config, Direction, Mapping, Site};

/// What the change stream of `site` must still give, for [`SourceSnapshot::take`]:
///
/// - the first snapshot of an interrupted backfill being resumed (its catch-up reads from
///   there, so the stream must be readable from exactly that position), with who and the fix;
/// - who resumes from positions of their own: the targets of the site's link holding a
///   position of it, the link itself when it started but no target holds one yet, the merge
///   engine when it read the site. The stream must still exist for them (a PostgreSQL slot
///   may legitimately be past their positions: a stream acknowledges heartbeats).
///
/// The snapshot refuses a source that cannot give that (a PostgreSQL slot gone, or moved past
/// the resumed backfill's snapshot) instead of creating a new slot that would hide the gap.
pub(super) async fn still_needed(
    config: &Config,
    site: &Site,
    pending: &[&Mapping],
    metas: &BTreeMap<String, Option<BackfillMeta>>,
    state: &Arc<StateStore>,
) -> Result<
    (
        Option<(duplex_connectors::Position, String)>,
        Option<String>,
    ),
    BackfillError,
> {
    let mut resume_from: Option<(duplex_connectors::Position, String)> = None;
    for mapping in pending {
        let Some(first) = metas[&mapping.name]
            .as_ref()
            .and_then(|meta| meta.attempts.first())
        else {
            continue;
        };
        let older = match &resume_from {
            None => true,
            Some((current, _)) => {
                first
                    .compare(current)
                    .map_err(|e| BackfillError::Invalid(e.to_string()))?
                    == std::cmp::Ordering::Less
            }
        };
        if older {
            resume_from = Some((
                first.clone(),
                format!(
                    "the interrupted backfill of mapping {m} (its catch-up reads from its first \
                     snapshot), so it cannot be resumed: to start it over into the tables as \
                     they are, run `{} --restart`",
                    crate::link::resync_command(&site.name),
                    m = mapping.name
                ),
            ));
        }
    }
    // The link of the site: its targets (one-way mappings; the merge engine keeps where it
    // read a site in the state store, and the handover positions a backfill left on the other
    // sites of a two-way mapping are stale once it has read on).
    let targets: BTreeSet<&str> = config
        .mappings
        .iter()
        .filter(|m| m.direction != Direction::Both)
        .flat_map(|m| m.edges())
        .filter(|(from, _)| *from == site.name)
        .map(|(_, to)| to)
        .collect();
    let mut streamed_by = Vec::new();
    for name in targets {
        let target = &config.sites[name];
        let apply_error = |source| BackfillError::Apply {
            site: target.name.clone(),
            source,
        };
        let mut reader =
            AnyApplier::connect(&target.connection(), Vec::new(), ApplyOptions::default())
                .await
                .map_err(apply_error)?;
        let key = crate::link::position_key(
            &site.name,
            &super::meta::positions_deployment(config, state),
        );
        if let Some(position) = held_position(&mut reader, &site.name, &key)
            .await
            .map_err(apply_error)?
        {
            streamed_by.push(format!("site {name} streams from it (from {position} on)"));
        }
    }
    let stored = {
        let state = state.clone();
        let keys = [crate::link::start_key(&site.name), site.name.clone()];
        tokio::task::spawn_blocking(move || {
            keys.map(|key| state.position::<duplex_connectors::Position>(&key))
        })
        .await
        .map_err(|e| BackfillError::Crashed(e.to_string()))?
    };
    let [link_start, engine] = stored;
    // Where the link started counts only while no target holds a position (then the link
    // resumes there; afterwards at the lowest target position).
    if let Some(position) = link_start?.filter(|_| streamed_by.is_empty()) {
        streamed_by.push(format!(
            "the link of {} streams from it (it started at {position})",
            site.name
        ));
    }
    let two_way = config
        .mappings
        .iter()
        .any(|m| m.direction == Direction::Both && m.tables.contains_key(&site.name));
    if let Some(position) = engine?.filter(|_| two_way) {
        streamed_by.push(format!(
            "the merge engine streams from it (it read up to {position})"
        ));
    }
    let streamed_by = (!streamed_by.is_empty()).then(|| {
        format!(
            "{}; to go on, copy what reads from {s} again, into the tables as they are, with \
             `{}` (it takes the mappings being backfilled along)",
            streamed_by.join(", "),
            crate::link::resync_command(&site.name),
            s = site.name
        )
    });
    Ok((resume_from, streamed_by))
}

/// The position a target holds of `site` for this deployment (`key`, see
/// [`crate::link::position_key`]), or under the bare site name (recorded before positions were
/// kept per deployment).
pub(super) async fn held_position(
    applier: &mut AnyApplier,
    site: &str,
    key: &str,
) -> Result<Option<duplex_connectors::Position>, ApplyError> {
    match applier.position(key).await? {
        Some(position) => Ok(Some(position)),
        None => applier.position(site).await,
    }
}

/// Refuses a target that already streams from the source or (without `allow_nonempty`)
/// holds rows.
pub(super) async fn check_target(
    target: &Site,
    (source, key): (&str, &str),
    mapping: &Mapping,
    allow_nonempty: bool,
    routes: &[TableRoute],
) -> Result<(), BackfillError> {
    let apply_error = |source| BackfillError::Apply {
        site: target.name.clone(),
        source,
    };
    let options = ApplyOptions {
        upsert: allow_nonempty,
        ..ApplyOptions::default()
    };
    let mut writer = AnyApplier::connect(&target.connection(), routes.to_vec(), options)
        .await
        .map_err(apply_error)?;
    if let Some(position) = held_position(&mut writer, source, key)
        .await
        .map_err(apply_error)?
    {
        return Err(BackfillError::Refused(format!(
            "site {t} already holds changes of {source} up to {position}: other mappings stream \
             from {source} into it, and its position is one per source, so a copy of mapping {m} \
             as of a new snapshot cannot hand over to that stream without skipping or repeating \
             changes of the others. To backfill it, backfill every mapping from {source} into {t} \
             together: with duplex stopped, empty their tables on {t}, delete {t}'s \
             `duplex.positions` row of {source} (source {key:?}), and run `duplex backfill` with a --mapping for \
             each of them (or backfill {m} into a site that does not stream from {source}). If \
             {source}'s log lost {t}'s position (slot gone, binlog purged), `{resync}` copies \
             them again into the tables as they are instead",
            resync = crate::link::resync_command(source),
            t = target.name,
            m = mapping.name
        )));
    }
    if allow_nonempty {
        return Ok(());
    }
    let table = &mapping.tables[&target.name];
    let empty = duplex_connectors::load::table_is_empty(&target.connection(), table)
        .await
        .map_err(admin_error(target))?;
    if !empty {
        return Err(BackfillError::Refused(format!(
            "table {table} on site {} is not empty: backfill copies into empty tables; \
             empty it, or pass --allow-nonempty to overwrite rows with the same key (rows the source does not have stay)",
            target.name
        )));
    }
    Ok(())
}

/// Into a SQL Server target the copy goes through its applier's strict multi-row INSERTs;
/// overwriting rows a target already holds (`--allow-nonempty`, `--resync`) needs an upsert,
/// which the SQL Server applier does not have: refused up front, before anything connects.
pub(super) fn no_overwrite_of_sql_server(
    config: &Config,
    mapping: &Mapping,
    from: &str,
    options: &super::BackfillOptions,
) -> Result<(), String> {
    if (options.allow_nonempty || options.resync)
        && let Some(site) = config.sql_server_site_except(mapping, Some(from))
    {
        return Err(format!(
            "mapping {} writes into the SQL Server site {site}: {} into SQL Server targets is \
             not supported yet (it overwrites rows the target holds); empty the target tables \
             and run duplex backfill without it",
            mapping.name,
            if options.resync {
                "duplex backfill --resync"
            } else {
                "duplex backfill --allow-nonempty"
            }
        ));
    }
    Ok(())
}
