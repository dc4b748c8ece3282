//! The merge engine's decisions, as pure functions over per-row version vectors
//! (DESIGN.md, "Merge engine and version vectors").
//!
//! Every database is a *site*. For every replicated row the state store keeps a
//! [`RowVersions`]: `merged`, the vector of the newest version known anywhere, and `held`, per
//! site, the vector of the version that site holds. A vector counts, per site, the changes
//! originated there that a version reflects.
//!
//! - **Echo.** When a site's log shows a write duplex made there, that site now holds the
//!   vector duplex wrote ([`record_echo`]); nothing is propagated.
//! - **Local change.** A change made by an application at site `S` descends from the version
//!   `S` held, so its vector is `held[S]` with `S`'s counter incremented ([`classify`]):
//!   - it dominates `merged`: the change has seen every version propagated so far — a plain
//!     successor, propagated to every other site ([`record_successor`]);
//!   - it is concurrent with `merged`: some version was propagated that `S` had not seen
//!     when it made its change — a conflict, resolved by the mapping's policy ([`resolve`]);
//!     the outcome gets the pointwise maximum of both vectors, so it descends from both and
//!     every site converges on it ([`record_resolution`]).
//!
//! Why this is right: `held[S]` is exactly the history of the version `S` changed (duplex
//! learns it from `S`'s own log, in `S`'s commit order: every echo of a write that landed at
//! `S` before the change is read before the change). So the local vector is exactly the
//! change's causal history, and comparing it with `merged` tells "has seen everything"
//! (never a conflict, however long the causal chain and whichever sites it crossed) from "did
//! not see something" (always a conflict). The simulation test at the bottom checks both
//! claims against an oracle that tracks true causal histories, on three sites.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use duplex_connectors::{Row, Value};
use duplex_state::{Causality, RowVersions, VersionVector};

use crate::config::ConflictPolicy;

/// How a local change relates to what duplex already propagated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classification {
    /// The change has seen every propagated version: propagate it with this vector.
    Successor(VersionVector),
    /// The change did not see a version already propagated: a conflict. `local` is the
    /// change's own vector.
    Concurrent {
        /// The local change's vector.
        local: VersionVector,
    },
    /// The change is already accounted for in `merged` (read twice): ignore it.
    Seen,
}

/// Classifies a change an application made at `site`.
pub fn classify(state: &RowVersions, site: &str) -> Classification {
    let mut local = state.held.get(site).cloned().unwrap_or_default();
    local.increment(site);
    match local.compare(&state.merged) {
        Causality::Dominates => Classification::Successor(local),
        Causality::Concurrent => Classification::Concurrent { local },
        Causality::Equal | Causality::DominatedBy => Classification::Seen,
    }
}

/// Records a propagated successor: it is the newest version, and `site` holds it.
pub fn record_successor(state: &mut RowVersions, site: &str, vector: &VersionVector) {
    state.merged = vector.clone();
    state.held.insert(site.to_owned(), vector.clone());
}

/// Records that `site` now holds the version duplex wrote there with `vector`.
pub fn record_echo(state: &mut RowVersions, site: &str, vector: &VersionVector) {
    let held = state.held.entry(site.to_owned()).or_default();
    held.merge(vector);
}

/// Records the outcome of a conflict: `site`'s local change (vector `local`) is in its log;
/// the decided version descends from both and becomes the newest. Returns its vector, the
/// one to write to every site.
pub fn record_resolution(
    state: &mut RowVersions,
    site: &str,
    local: &VersionVector,
) -> VersionVector {
    let resolved = local.merged(&state.merged);
    state.held.insert(site.to_owned(), local.clone());
    state.merged = resolved.clone();
    resolved
}

/// One side of a conflict.
#[derive(Debug, Clone, Copy)]
pub struct Version<'a> {
    /// The site whose change this is.
    pub site: &'a str,
    /// When the site committed it.
    pub commit_time: DateTime<Utc>,
    /// The row before the change (as far as the log carries it), `None` if it did not exist.
    pub before: Option<&'a Row>,
    /// The row after the change; `None` when the change deleted it.
    pub after: Option<&'a Row>,
}

/// What a conflict resolves to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Write this row (or, `None`, delete it) at every site.
    Write {
        /// The decided row; `None` deletes.
        row: Option<Row>,
        /// Why, for the conflict log: `site erp wins (later commit)` and the like.
        decision: String,
    },
    /// Keep each site's own value and wait for `duplex conflicts resolve`.
    Hold,
}

/// Resolves a conflict between two concurrent versions by the mapping's policy. `priority`
/// lists the mapping's sites in configuration order: on equal commit times the site listed
/// first wins.
pub fn resolve(policy: &ConflictPolicy, priority: &[String], a: &Version, b: &Version) -> Outcome {
    if a.after == b.after {
        return Outcome::Write {
            row: a.after.cloned(),
            decision: "both sites made the same change".to_owned(),
        };
    }
    match policy {
        ConflictPolicy::Hold => Outcome::Hold,
        ConflictPolicy::Prefer(site) if a.site == site => {
            take(a, format!("site {site} is preferred"))
        }
        ConflictPolicy::Prefer(site) if b.site == site => {
            take(b, format!("site {site} is preferred"))
        }
        ConflictPolicy::MergeColumns => match merge_columns(a, b) {
            Some(row) => Outcome::Write {
                row: Some(row),
                decision: format!(
                    "merged: {} and {} changed different columns",
                    a.site, b.site
                ),
            },
            None => last_writer(priority, a, b, " (same column changed on both)"),
        },
        ConflictPolicy::LastWriterWins | ConflictPolicy::Prefer(_) => {
            last_writer(priority, a, b, "")
        }
    }
}

fn take(version: &Version, decision: String) -> Outcome {
    Outcome::Write {
        row: version.after.cloned(),
        decision,
    }
}

fn last_writer(priority: &[String], a: &Version, b: &Version, note: &str) -> Outcome {
    let rank = |site: &str| {
        priority
            .iter()
            .position(|s| s == site)
            .unwrap_or(usize::MAX)
    };
    let a_wins = match a.commit_time.cmp(&b.commit_time) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => rank(a.site) <= rank(b.site),
    };
    let (winner, loser) = if a_wins { (a, b) } else { (b, a) };
    let why = if a.commit_time == b.commit_time {
        format!("same commit time, {} is listed first", winner.site)
    } else {
        format!("later commit than {}", loser.site)
    };
    take(winner, format!("site {} wins ({why}){note}", winner.site))
}

/// Columns a change touched: those whose value differs from the before-image (a column the
/// log did not carry counts as untouched).
fn touched(version: &Version) -> Option<BTreeSet<String>> {
    let (before, after) = (version.before?, version.after?);
    Some(
        after
            .iter()
            .filter(|(_, value)| **value != Value::Unchanged)
            .filter(|(column, value)| before.get(column) != Some(*value))
            .map(|(column, _)| column.to_owned())
            .collect(),
    )
}

/// Both updates applied, when they changed disjoint columns and both before-images are known.
fn merge_columns(a: &Version, b: &Version) -> Option<Row> {
    let (touched_a, touched_b) = (touched(a)?, touched(b)?);
    if !touched_a.is_disjoint(&touched_b) {
        return None;
    }
    let (after_a, after_b) = (a.after?, b.after?);
    Some(
        after_b
            .iter()
            .map(|(column, value)| {
                let value = if touched_a.contains(column) {
                    after_a.get(column).unwrap_or(value)
                } else {
                    value
                };
                (column.to_owned(), value.clone())
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn row(pairs: &[(&str, i64)]) -> Row {
        pairs.iter().map(|(c, v)| (*c, Value::Int(*v))).collect()
    }

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(second, 0).unwrap()
    }

    #[test]
    fn last_writer_wins_by_commit_time_then_site_order() {
        let priority = vec!["store".to_owned(), "erp".to_owned()];
        let (x, y) = (row(&[("id", 1), ("qty", 5)]), row(&[("id", 1), ("qty", 7)]));
        let store = Version {
            site: "store",
            commit_time: at(10),
            before: None,
            after: Some(&x),
        };
        let erp = Version {
            site: "erp",
            commit_time: at(11),
            before: None,
            after: Some(&y),
        };
        let Outcome::Write { row, decision } =
            resolve(&ConflictPolicy::LastWriterWins, &priority, &store, &erp)
        else {
            panic!("held")
        };
        assert_eq!(row.as_ref(), Some(&y));
        assert_eq!(decision, "site erp wins (later commit than store)");
        let erp = Version {
            commit_time: at(10),
            ..erp
        };
        let Outcome::Write { row, .. } =
            resolve(&ConflictPolicy::LastWriterWins, &priority, &erp, &store)
        else {
            panic!("held")
        };
        assert_eq!(
            row.as_ref(),
            Some(&x),
            "a tie goes to the site listed first"
        );
    }

    #[test]
    fn prefer_hold_and_delete_outcomes() {
        let priority = vec!["store".to_owned(), "erp".to_owned()];
        let x = row(&[("id", 1), ("qty", 5)]);
        let update = Version {
            site: "store",
            commit_time: at(20),
            before: Some(&x),
            after: Some(&x),
        };
        let delete = Version {
            site: "erp",
            commit_time: at(10),
            before: Some(&x),
            after: None,
        };
        let prefer = ConflictPolicy::Prefer("erp".into());
        assert_eq!(
            resolve(&prefer, &priority, &update, &delete),
            Outcome::Write {
                row: None,
                decision: "site erp is preferred".into()
            }
        );
        assert_eq!(
            resolve(&ConflictPolicy::Hold, &priority, &update, &delete),
            Outcome::Hold
        );
        let Outcome::Write { row, .. } =
            resolve(&ConflictPolicy::LastWriterWins, &priority, &update, &delete)
        else {
            panic!("held")
        };
        assert_eq!(
            row,
            Some(x.clone()),
            "the later update beats the earlier delete"
        );
        let other_delete = Version {
            site: "store",
            ..delete
        };
        assert_eq!(
            resolve(&ConflictPolicy::Hold, &priority, &other_delete, &delete),
            Outcome::Write {
                row: None,
                decision: "both sites made the same change".into()
            }
        );
    }

    #[test]
    fn merge_columns_keeps_both_changes_or_falls_back() {
        let priority = vec!["store".to_owned(), "erp".to_owned()];
        let base = row(&[("id", 1), ("qty", 5), ("price", 100)]);
        let qty = row(&[("id", 1), ("qty", 4), ("price", 100)]);
        let price = row(&[("id", 1), ("qty", 5), ("price", 120)]);
        let a = Version {
            site: "store",
            commit_time: at(1),
            before: Some(&base),
            after: Some(&qty),
        };
        let b = Version {
            site: "erp",
            commit_time: at(2),
            before: Some(&base),
            after: Some(&price),
        };
        let Outcome::Write { row: merged, .. } =
            resolve(&ConflictPolicy::MergeColumns, &priority, &a, &b)
        else {
            panic!("held")
        };
        assert_eq!(merged, Some(row(&[("id", 1), ("qty", 4), ("price", 120)])));
        let both = row(&[("id", 1), ("qty", 3), ("price", 100)]);
        let b = Version {
            after: Some(&both),
            ..b
        };
        let Outcome::Write {
            row: winner,
            decision,
        } = resolve(&ConflictPolicy::MergeColumns, &priority, &a, &b)
        else {
            panic!("held")
        };
        assert_eq!(winner, Some(both.clone()));
        assert!(
            decision.ends_with("(same column changed on both)"),
            "{decision}"
        );
    }

    /// A simulated deployment: three sites each holding one row's value and a log of what
    /// happened there (application changes and duplex's writes), the engine reading the logs
    /// and writing decisions back. An oracle tracks the true causal history (the set of change
    /// ids each version has seen) to judge every classification.
    #[derive(Debug, Clone)]
    enum Step {
        /// An application at site `.0` writes a new value.
        Change(usize),
        /// duplex reads the next entry of site `.0`'s log.
        Read(usize),
        /// duplex delivers its next pending write to site `.0`.
        Deliver(usize),
    }

    #[derive(Debug, Clone)]
    enum Entry {
        Local {
            value: i64,
            history: BTreeSet<u32>,
            time: i64,
        },
        Echo {
            vector: VersionVector,
        },
    }

    struct Site {
        value: i64,
        history: BTreeSet<u32>,
        log: VecDeque<Entry>,
        pending: VecDeque<(i64, BTreeSet<u32>, VersionVector)>,
    }

    const SITES: [&str; 3] = ["store", "erp", "wms"];

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            prop_oneof![
                (0..3usize).prop_map(Step::Change),
                (0..3usize).prop_map(Step::Read),
                (0..3usize).prop_map(Step::Deliver),
            ],
            1..120,
        )
    }

    /// Runs the steps, then reads and delivers until quiescent; returns the final values and
    /// the number of conflicts detected.
    fn simulate(steps: &[Step]) -> (Vec<i64>, usize) {
        let priority: Vec<String> = SITES.iter().map(|s| (*s).to_owned()).collect();
        let mut sites: Vec<Site> = (0..3)
            .map(|_| Site {
                value: 0,
                history: BTreeSet::new(),
                log: VecDeque::new(),
                pending: VecDeque::new(),
            })
            .collect();
        let mut state = RowVersions::default();
        // The newest decided version: its value and history (the oracle's `merged`).
        let mut merged_history: BTreeSet<u32> = BTreeSet::new();
        let (mut merged_value, mut merged_time) = (0i64, 0i64);
        let mut next_id = 0u32;
        let mut clock = 0i64;
        let mut conflicts = 0;
        let mut step = |step: &Step, sites: &mut Vec<Site>, conflicts: &mut usize| match *step {
            Step::Change(s) => {
                next_id += 1;
                clock += 1;
                let site = &mut sites[s];
                site.history.insert(next_id);
                site.value = i64::from(next_id);
                site.log.push_back(Entry::Local {
                    value: site.value,
                    history: site.history.clone(),
                    time: clock,
                });
            }
            Step::Read(s) => {
                let Some(entry) = sites[s].log.pop_front() else {
                    return;
                };
                match entry {
                    Entry::Echo { vector } => record_echo(&mut state, SITES[s], &vector),
                    Entry::Local {
                        value,
                        history,
                        time,
                    } => {
                        // No clobbering: writes queued for this site were computed without
                        // this change; it is now classified, and what the site must receive
                        // is decided afresh (nothing if it is the newest, the resolution if
                        // it conflicts).
                        sites[s].pending.clear();
                        let saw_everything = merged_history.is_subset(&history);
                        match classify(&state, SITES[s]) {
                            Classification::Successor(vector) => {
                                assert!(
                                    saw_everything,
                                    "a change that saw everything was not a successor"
                                );
                                record_successor(&mut state, SITES[s], &vector);
                                merged_history = history.clone();
                                (merged_value, merged_time) = (value, time);
                                for (t, target) in sites.iter_mut().enumerate() {
                                    if t != s {
                                        target.pending.push_back((
                                            value,
                                            history.clone(),
                                            vector.clone(),
                                        ));
                                    }
                                }
                            }
                            Classification::Concurrent { local } => {
                                assert!(
                                    !saw_everything,
                                    "a causal successor was classified as a conflict"
                                );
                                *conflicts += 1;
                                let mine = row(&[("v", value)]);
                                let theirs = row(&[("v", merged_value)]);
                                let a = Version {
                                    site: SITES[s],
                                    commit_time: at(time),
                                    before: None,
                                    after: Some(&mine),
                                };
                                let b = Version {
                                    site: "merged",
                                    commit_time: at(merged_time),
                                    before: None,
                                    after: Some(&theirs),
                                };
                                let Outcome::Write { row: decided, .. } =
                                    resolve(&ConflictPolicy::LastWriterWins, &priority, &a, &b)
                                else {
                                    panic!("last writer wins never holds")
                                };
                                let decided = match decided.as_ref().and_then(|r| r.get("v")) {
                                    Some(Value::Int(v)) => *v,
                                    other => panic!("{other:?}"),
                                };
                                let vector = record_resolution(&mut state, SITES[s], &local);
                                let resolved_history: BTreeSet<u32> =
                                    merged_history.union(&history).copied().collect();
                                merged_history = resolved_history.clone();
                                if decided == value {
                                    merged_time = time;
                                }
                                merged_value = decided;
                                for target in sites.iter_mut() {
                                    target.pending.push_back((
                                        decided,
                                        resolved_history.clone(),
                                        vector.clone(),
                                    ));
                                }
                            }
                            Classification::Seen => panic!("a change was read twice"),
                        }
                    }
                }
            }
            Step::Deliver(s) => {
                let site = &mut sites[s];
                // No clobbering: a write waits while the site has changes duplex has not read.
                if site.log.iter().any(|e| matches!(e, Entry::Local { .. })) {
                    return;
                }
                let Some((value, history, vector)) = site.pending.pop_front() else {
                    return;
                };
                site.value = value;
                site.history = history;
                site.log.push_back(Entry::Echo { vector });
            }
        };
        for s in steps {
            step(s, &mut sites, &mut conflicts);
        }
        loop {
            let busy = sites
                .iter()
                .any(|s| !s.log.is_empty() || !s.pending.is_empty());
            if !busy {
                break;
            }
            for s in 0..3 {
                step(&Step::Read(s), &mut sites, &mut conflicts);
                step(&Step::Deliver(s), &mut sites, &mut conflicts);
            }
        }
        (sites.iter().map(|s| s.value).collect(), conflicts)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Causal successors never conflict, concurrent changes always do (asserted inside),
        /// and after quiescence all three sites hold the same value.
        #[test]
        fn three_sites_classify_exactly_and_converge(steps in steps()) {
            let (values, _) = simulate(&steps);
            prop_assert!(values.iter().all(|v| *v == values[0]), "sites diverged: {values:?}");
        }
    }

    #[test]
    fn a_causal_chain_across_every_pair_of_sites_is_never_a_conflict() {
        for a in 0..3 {
            for b in 0..3 {
                if a == b {
                    continue;
                }
                let chain = [
                    Step::Change(a),
                    Step::Read(a),
                    Step::Deliver(b),
                    Step::Read(b),
                    Step::Change(b),
                    Step::Read(b),
                ];
                let (values, conflicts) = simulate(&chain);
                assert_eq!(conflicts, 0, "{a} -> {b}");
                assert!(values.iter().all(|v| *v == 2), "{values:?}");
            }
        }
    }

    #[test]
    fn two_changes_that_did_not_see_each_other_are_one_conflict() {
        for a in 0..3 {
            for b in 0..3 {
                if a != b {
                    let (values, conflicts) = simulate(&[
                        Step::Change(a),
                        Step::Change(b),
                        Step::Read(a),
                        Step::Read(b),
                    ]);
                    assert_eq!(conflicts, 1, "{a} vs {b}");
                    assert!(
                        values.iter().all(|v| *v == 2),
                        "the later change wins everywhere: {values:?}"
                    );
                }
            }
        }
    }

    /// The case the simulation first failed on: a write queued before a conflict was detected
    /// must not be delivered after it (it would clobber the site's change and its held
    /// vector).
    #[test]
    fn a_write_queued_before_a_conflict_does_not_clobber_the_site() {
        let steps = [
            Step::Change(2),
            Step::Change(1),
            Step::Read(2),
            Step::Read(1),
            Step::Deliver(1),
            Step::Change(1),
            Step::Change(1),
            Step::Read(0),
        ];
        let (values, conflicts) = simulate(&steps);
        assert!(values.iter().all(|v| *v == values[0]), "{values:?}");
        assert_eq!(conflicts, 1);
    }
}
