//! What a link makes sure of before it reads: that a target's position row is this
//! deployment's, and that the mapped source tables are the ones it read before.

use std::sync::Arc;

use duplex_connectors::TableName;
use duplex_state::StateStore;

use super::LinkError;
use super::feed::Feed;
use crate::config::Site;

/// The source name a target's `duplex.positions` records the progress of `site` under, for
/// the deployment `deployment` (the state store's identity): two configurations that name
/// their sites alike never share a row, whatever servers they write into.
pub fn position_key(site: &str, deployment: &str) -> String {
    format!("{site}@{deployment}")
}

/// Takes over a target's row of `site` recorded under the bare site name (by duplex before
/// positions were keyed by deployment) when none under `key` exists, and warns once about rows
/// of a site named alike that another deployment records there.
pub(super) async fn claim_legacy_position(
    target: &Site,
    site: &str,
    key: &str,
    warn_others: &mut bool,
) -> Result<(), LinkError> {
    let failed = |source: duplex_connectors::load::AdminError| LinkError::Schema {
        site: target.name.clone(),
        transient: true,
        source: Box::new(source),
    };
    let connection = target.connection();
    let sources = duplex_connectors::load::position_sources(&connection)
        .await
        .map_err(failed)?;
    if sources.iter().any(|s| s == key) {
        return Ok(());
    }
    if sources.iter().any(|s| s == site)
        && duplex_connectors::load::rename_position(&connection, site, key)
            .await
            .map_err(failed)?
    {
        tracing::info!(site = %target.name, source = site, row = key, "took over the position recorded before positions were kept per deployment");
        return Ok(());
    }
    let prefix = format!("{site}@");
    let others: Vec<&str> = sources
        .iter()
        .filter(|s| s.starts_with(&prefix))
        .map(|s| &s[prefix.len()..])
        .collect();
    if !others.is_empty() && std::mem::take(warn_others) {
        tracing::warn!(
            target_site = %target.name,
            source = site,
            "site {} holds positions of a source site named {site} for other duplex deployments ({}), none for this one ({}): if one of them was this duplex with an earlier state directory, stop now and restore that directory (this start reads the source from where this deployment's link first started, or from its current position); if another duplex replicates another source under the same site name, this is fine",
            target.name,
            others.join(", "),
            &key[prefix.len()..],
        );
    }
    Ok(())
}

/// The state-store key of a mapped source table's identity (PostgreSQL: its oid).
pub fn table_id_key(source: &str, table: &TableName) -> String {
    format!("table-id:{source}:{table}")
}

/// Compares the mapped tables' identities on the source with those recorded when the link
/// first read them: a table dropped and re-created (or one that had left the publication)
/// since has changes that are not in the stream, which must stop the link until the DBA
/// copied the table again and accepted it (`run --accept-schema-change`). The stop is kept
/// (an identity of 0 is recorded for a table that had left the publication), since the
/// stream has already put the table back.
pub(crate) async fn check_table_identities(
    state: &Arc<StateStore>,
    source: &str,
    stream: &Feed,
) -> Result<(), LinkError> {
    let (ids, unpublished) = stream.table_identities();
    let store = state.clone();
    let source_name = source.to_owned();
    let replaced = tokio::task::spawn_blocking(move || -> Result<Option<(TableName, String)>, duplex_state::StateError> {
        for (table, id) in ids {
            let key = table_id_key(&source_name, &table);
            let recorded = store.position::<u64>(&key)?;
            let what = match recorded {
                None => {
                    store.save_position(&key, &id)?;
                    continue;
                }
                Some(0) => "was removed from the publication or dropped while duplex was not reading it",
                Some(known) if known != id => "was dropped and re-created since duplex last read it",
                Some(_) if unpublished.contains(&table) => {
                    store.save_position(&key, &0u64)?;
                    "was removed from the publication or dropped while duplex was not reading it"
                }
                Some(_) => continue,
            };
            return Ok(Some((table, what.to_owned())));
        }
        Ok(None)
    })
    .await
    .map_err(|panic| LinkError::Crashed(panic.to_string()))?
    .map_err(LinkError::State)?;
    match replaced {
        None => Ok(()),
        Some((table, what)) => Err(LinkError::TableReplaced {
            site: source.to_owned(),
            table,
            what,
        }),
    }
}
