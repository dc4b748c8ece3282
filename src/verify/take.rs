//! `duplex verify --repair --take SITE` for a two-way mapping: every site made to hold SITE's
//! rows where verify found two sites different.
//!
//! Verify does not write these rows itself: the merge engine keeps, per row, the version
//! vectors and the image it expects each site to hold, and a write behind its back would be
//! read back as a local change of that site and decided against them (possibly as a conflict
//! undoing the repair). Instead verify reads each differing row on the two sites it compared
//! and on SITE, and sends those images to the running engine ([`control::Request::Take`]); the
//! coordinator decides it in order with everything else, as an operator's resolution: SITE's
//! image becomes the newest version, written through each site's normal writer (conditional,
//! marked as duplex's own, so nothing echoes) to every site that does not hold it, and logged
//! in the conflict log (see `engine::coordinator::take`). Without a running engine nothing is
//! written and verify says so. The repaired rows are then re-checked like any difference, after
//! the engine has carried everything (see [`super::engine`]).

use std::collections::{BTreeMap, HashMap};

use duplex_connectors::{AnySnapshot, Row, TableRoute, Value};

use super::VerifyError;
use super::compare::KeyDifference;
use super::scan::{self, Lookup, Side};
use crate::config::{Config, Mapping};
use crate::engine::control::{self, Request, Response};

/// Sends `take`'s rows of `differences` (found between `compared`, cut on `route`) to the
/// running engine; returns the keys it is writing.
pub async fn repair(
    config: &Config,
    mapping: &Mapping,
    take: &str,
    compared: (&Side, &Side),
    route: &TableRoute,
    lookup: Lookup,
    differences: &[KeyDifference],
) -> Result<Vec<String>, VerifyError> {
    // The sites read: the two compared, and the taken site when it is a third.
    let mut reads = vec![
        (compared.0.clone(), route.clone(), true),
        (compared.1.clone(), route.clone(), false),
    ];
    if take != compared.0.site && take != compared.1.site {
        let (side, route) = third_side(config, mapping, take, compared.0).await?;
        reads.push((side, route, false));
    }
    let keys: BTreeMap<String, Vec<Value>> = differences
        .iter()
        .map(|d| (d.key.clone(), scan::key_values(route, d)))
        .collect();
    let mut rows: BTreeMap<&str, BTreeMap<String, Option<Row>>> =
        keys.keys().map(|k| (k.as_str(), BTreeMap::new())).collect();
    for (side, route, first) in &reads {
        let mut reader = AnySnapshot::open(&side.connection)
            .await
            .map_err(|source| VerifyError::Read {
                site: side.site.clone(),
                source,
            })?;
        let read = scan::read_rows_of_keys(&mut reader, side, lookup, &keys).await;
        reader.close().await;
        let (raw, _) = read?;
        let compared = scan::canonical(side, route, &raw, *first);
        let mut found: HashMap<String, Row> = compared
            .into_iter()
            .zip(raw)
            .map(|(c, row)| (c.key, row))
            .collect();
        for (key, images) in rows.iter_mut() {
            images.insert(side.site.clone(), found.remove(*key));
        }
    }
    // In parts: a control request is one line of at most 1 MiB.
    let rows: Vec<BTreeMap<String, Option<Row>>> = rows.into_values().collect();
    let mut written = Vec::new();
    for part in rows.chunks(ROWS_PER_REQUEST) {
        let request = Request::Take {
            mapping: mapping.name.clone(),
            take: take.to_owned(),
            rows: part.to_vec(),
        };
        written.extend(ask(config, &mapping.name, &request).await?);
    }
    Ok(written)
}

/// Rows sent to the engine in one request.
const ROWS_PER_REQUEST: usize = 50;

/// Sends one [`Request::Take`]; the keys the engine is writing.
async fn ask(
    config: &Config,
    mapping: &str,
    request: &Request,
) -> Result<Vec<String>, VerifyError> {
    let engine = VerifyError::Engine;
    match control::ask(&config.state_dir, request).await {
        Ok(Some(Response::Taken { written, busy })) => {
            if !busy.is_empty() {
                tracing::info!(%mapping, keys = ?busy, "rows the engine is still writing to: repaired after they landed");
            }
            Ok(written)
        }
        Ok(Some(Response::Refused(why))) => Err(engine(why)),
        Ok(Some(_)) => Err(engine("the engine answered something else".into())),
        Ok(None) => Err(engine(format!(
            "no duplex run answers on {}: --take writes through the running merge engine (it keeps the rows' version vectors); start `duplex run` and repeat",
            control::socket_path(&config.state_dir).display()
        ))),
        Err(error) => Err(engine(format!("asking the running engine: {error}"))),
    }
}

/// The taken site `take` as a side of the comparison with `first` (its columns named as there,
/// cut on `first`'s key).
async fn third_side(
    config: &Config,
    mapping: &Mapping,
    take: &str,
    first: &Side,
) -> Result<(Side, TableRoute), VerifyError> {
    let site = &config.sites[take];
    let schema = super::describe(site, mapping).await?;
    let route = super::route(mapping, &first.site, take, &first.schema)?;
    let side = Side::new(take, site.connection(), schema, &route, false);
    Ok((side, route))
}
