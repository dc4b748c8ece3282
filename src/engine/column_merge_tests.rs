use std::collections::VecDeque;

use chrono::{DateTime, TimeZone, Utc};
use duplex_state::{RowVersions, VersionVector};
use proptest::prelude::*;

use super::*;
use crate::engine::merge::{
    Classification, classify, record_echo, record_resolution, record_successor,
};

fn at(second: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(second, 0).unwrap()
}

fn stock(on_hand: i64, name: &str) -> Row {
    [
        ("id", Value::Int(1)),
        ("on_hand", Value::Int(on_hand)),
        ("name", Value::Text(name.into())),
    ]
    .into_iter()
    .collect()
}

fn version<'a>(site: &'a str, second: i64, before: &'a Row, after: &'a Row) -> Version<'a> {
    Version {
        site,
        commit_time: at(second),
        before: Some(before),
        after: Some(after),
    }
}

fn sites() -> Vec<String> {
    vec!["store".into(), "erp".into(), "wms".into()]
}

fn delta_on_hand() -> Vec<(String, ColumnPolicy)> {
    vec![("on_hand".into(), ColumnPolicy::Delta)]
}

fn written(outcome: Outcome) -> (Row, String) {
    match outcome {
        Outcome::Write {
            row: Some(row),
            decision,
        } => (row, decision),
        other => panic!("{other:?}"),
    }
}

#[test]
fn delta_adds_both_changes_to_the_common_ancestor() {
    let (base, sold, booked) = (stock(120, "mug"), stock(118, "mug"), stock(130, "mug"));
    let (row, decision) = written(resolve(
        &ConflictPolicy::LastWriterWins,
        &delta_on_hand(),
        &sites(),
        &version("store", 10, &base, &sold),
        &version("wms", 11, &base, &booked),
    ));
    assert_eq!(row, stock(128, "mug"));
    assert_eq!(
        decision,
        "on_hand delta: from 120: store 118, wms 130 = 128; other columns the same on both"
    );
    // The same change on both sides is two sales, not one.
    let (row, _) = written(resolve(
        &ConflictPolicy::Hold,
        &delta_on_hand(),
        &sites(),
        &version("store", 10, &base, &sold),
        &version("wms", 11, &base, &sold),
    ));
    assert_eq!(row, stock(116, "mug"));
}

#[test]
fn other_columns_follow_the_row_policy() {
    let base = stock(120, "mug");
    let (store, wms) = (stock(118, "cup"), stock(130, "beaker"));
    let (row, decision) = written(resolve(
        &ConflictPolicy::LastWriterWins,
        &delta_on_hand(),
        &sites(),
        &version("store", 10, &base, &store),
        &version("wms", 11, &base, &wms),
    ));
    assert_eq!(row, stock(128, "beaker"));
    assert!(
        decision.ends_with("other columns: site wms wins (later commit than store)"),
        "{decision}"
    );
    // Hold still holds when a column without its own policy differs.
    assert_eq!(
        resolve(
            &ConflictPolicy::Hold,
            &delta_on_hand(),
            &sites(),
            &version("store", 10, &base, &store),
            &version("wms", 11, &base, &wms),
        ),
        Outcome::Hold
    );
    // merge-columns sees the delta column as settled, not as changed on both sides.
    let (store, wms) = (stock(118, "cup"), stock(130, "mug"));
    let (row, _) = written(resolve(
        &ConflictPolicy::MergeColumns,
        &delta_on_hand(),
        &sites(),
        &version("store", 20, &base, &store),
        &version("wms", 11, &base, &wms),
    ));
    assert_eq!(row, stock(128, "cup"));
}

#[test]
fn delta_without_an_ancestor_or_on_a_delete_is_the_row_policy() {
    let (sold, booked) = (stock(118, "mug"), stock(130, "mug"));
    let insert = |site, second, row| Version {
        site,
        commit_time: at(second),
        before: None,
        after: Some(row),
    };
    let (row, decision) = written(resolve(
        &ConflictPolicy::LastWriterWins,
        &delta_on_hand(),
        &sites(),
        &insert("store", 10, &sold),
        &insert("wms", 11, &booked),
    ));
    assert_eq!(row, booked);
    assert!(
        decision.starts_with(
            "on_hand delta: the value both sides changed from is not known, the row policy decides"
        ),
        "{decision}"
    );
    let base = stock(120, "mug");
    let delete = Version {
        site: "wms",
        commit_time: at(11),
        before: Some(&base),
        after: None,
    };
    assert_eq!(
        resolve(
            &ConflictPolicy::LastWriterWins,
            &delta_on_hand(),
            &sites(),
            &version("store", 10, &base, &sold),
            &delete,
        ),
        Outcome::Write {
            row: None,
            decision: "site wms wins (later commit than store)".into()
        }
    );
}

#[test]
fn delta_keeps_the_kind_and_scale_of_the_numbers() {
    let d = |s: &str| Value::Decimal(s.parse().unwrap());
    assert_eq!(delta(&d("10.50"), &d("9.5"), &d("12.000")), Ok(d("11.000")));
    assert_eq!(delta(&d("-1.5"), &d("-2"), &d("0")), Ok(d("-0.5")));
    assert_eq!(
        delta(&Value::Int(5), &Value::UInt(3), &Value::UInt(9)),
        Ok(Value::UInt(7))
    );
    assert_eq!(
        delta(&Value::UInt(5), &Value::UInt(1), &Value::UInt(2)),
        Ok(Value::Int(-2))
    );
    assert_eq!(
        delta(&Value::Float(1.5), &Value::Float(2.5), &Value::Int(1)),
        Ok(Value::Float(2.0))
    );
    assert!(delta(&Value::Int(0), &Value::Int(i64::MAX), &Value::Int(1)).is_err());
    assert!(delta(&Value::Null, &Value::Int(1), &Value::Int(1)).is_err());
    assert!(delta(&Value::Int(1), &Value::Text("2".into()), &Value::Int(1)).is_err());
}

fn order(status: &str, updated: i64) -> Row {
    [
        ("id", Value::Int(7)),
        ("status", Value::Text(status.into())),
        ("updated", Value::Int(updated)),
    ]
    .into_iter()
    .collect()
}

#[test]
fn precedence_keeps_the_later_ranked_value_and_max_min_the_extremes() {
    let ranked = ["new", "paid", "picking", "shipped", "delivered"]
        .iter()
        .map(|s| Value::Text((*s).into()))
        .collect();
    let policies = vec![
        ("status".to_owned(), ColumnPolicy::Precedence(ranked)),
        ("updated".to_owned(), ColumnPolicy::Max),
    ];
    let base = order("paid", 1);
    let (shipped, paid_again) = (order("shipped", 5), order("picking", 9));
    // The earlier commit's status wins because it is ranked later; the greater time wins.
    let (row, decision) = written(resolve(
        &ConflictPolicy::LastWriterWins,
        &policies,
        &sites(),
        &version("erp", 10, &base, &shipped),
        &version("wms", 20, &base, &paid_again),
    ));
    assert_eq!(row, order("shipped", 9));
    assert_eq!(
        decision,
        "status precedence: \"shipped\" over \"picking\"; updated max: 9 over 5; other columns the same on both"
    );
    // A value outside the list goes to the row policy (the later commit).
    let (row, decision) = written(resolve(
        &ConflictPolicy::LastWriterWins,
        &policies,
        &sites(),
        &version("erp", 30, &base, &order("lost", 1)),
        &version("wms", 20, &base, &paid_again),
    ));
    assert_eq!(row, order("lost", 9));
    assert!(
        decision.starts_with("status precedence: \"lost\" is not in the list"),
        "{decision}"
    );
    let min = vec![("updated".to_owned(), ColumnPolicy::Min)];
    let (row, _) = written(resolve(
        &ConflictPolicy::LastWriterWins,
        &min,
        &sites(),
        &version("erp", 30, &base, &order("paid", 4)),
        &version("wms", 20, &base, &order("paid", 3)),
    ));
    assert_eq!(row, order("paid", 3));
    assert_eq!(
        decide(
            &ColumnPolicy::Min,
            None,
            ("a", &Value::Null),
            ("b", &Value::Int(3))
        ),
        Ok((Value::Int(3), "3 over NULL".into()))
    );
    let t = |s: &str| Value::Timestamp(s.parse().unwrap());
    assert_eq!(
        compare(&t("2026-01-02T00:00:00"), &t("2025-12-31T23:59:59")),
        Some(Ordering::Greater)
    );
    assert_eq!(
        compare(&Value::Decimal("2.50".parse().unwrap()), &Value::Int(2)),
        Some(Ordering::Greater)
    );
    assert_eq!(
        compare(&Value::Json("1".into()), &Value::Json("2".into())),
        None
    );
}

/// A simulated deployment of three sites holding one stock count, as in `merge.rs`'s
/// simulation: applications add to and take from it, duplex reads the logs in any interleaving
/// and delivers its writes (never over a change it has not read), deciding conflicts with
/// `delta`. The engine takes the ancestor from its own record of what each site holds.
#[derive(Debug, Clone)]
enum Step {
    Change(usize, i64),
    Read(usize),
    Deliver(usize),
}

#[derive(Debug, Clone)]
enum Entry {
    Local { before: i64, after: i64, time: i64 },
    Echo { vector: VersionVector, value: i64 },
}

#[derive(Default)]
struct Site {
    value: i64,
    log: VecDeque<Entry>,
    pending: VecDeque<(i64, VersionVector)>,
}

const SITES: [&str; 3] = ["store", "erp", "wms"];
const INITIAL: i64 = 100;

fn count(value: i64) -> Row {
    [("id", Value::Int(1)), ("on_hand", Value::Int(value))]
        .into_iter()
        .collect()
}

fn value_of(row: &Row) -> i64 {
    match row.get("on_hand") {
        Some(Value::Int(v)) => *v,
        other => panic!("{other:?}"),
    }
}

/// Runs the steps, then reads and delivers until quiescent; returns the sites' final values
/// and the number of conflicts.
fn simulate(steps: &[Step]) -> (Vec<i64>, usize) {
    let priority: Vec<String> = SITES.iter().map(|s| (*s).to_owned()).collect();
    let mut sites: Vec<Site> = (0..3)
        .map(|_| Site {
            value: INITIAL,
            ..Site::default()
        })
        .collect();
    let mut state = RowVersions::default();
    // The engine's record: the newest image and its commit time, each site's held image.
    let (mut image, mut image_time) = (INITIAL, 0i64);
    let mut holds = [INITIAL; 3];
    let (mut clock, mut conflicts) = (0i64, 0usize);
    let mut run = |step: &Step, sites: &mut Vec<Site>| match *step {
        Step::Change(s, by) => {
            clock += 1;
            let site = &mut sites[s];
            let before = site.value;
            site.value += by;
            site.log.push_back(Entry::Local {
                before,
                after: site.value,
                time: clock,
            });
        }
        Step::Read(s) => match sites[s].log.pop_front() {
            None => {}
            Some(Entry::Echo { vector, value }) => {
                record_echo(&mut state, SITES[s], &vector);
                holds[s] = value;
            }
            Some(Entry::Local {
                before,
                after,
                time,
            }) => {
                assert_eq!(
                    holds[s], before,
                    "the engine's record of what the site held"
                );
                sites[s].pending.clear();
                match classify(&state, SITES[s]) {
                    Classification::Successor(vector) => {
                        record_successor(&mut state, SITES[s], &vector);
                        (image, image_time, holds[s]) = (after, time, after);
                        for (t, target) in sites.iter_mut().enumerate() {
                            if t != s {
                                target.pending.push_back((after, vector.clone()));
                            }
                        }
                    }
                    Classification::Concurrent { local } => {
                        conflicts += 1;
                        let (base, mine, theirs) = (count(holds[s]), count(after), count(image));
                        let outcome = resolve(
                            &ConflictPolicy::LastWriterWins,
                            &[("on_hand".to_owned(), ColumnPolicy::Delta)],
                            &priority,
                            &version(SITES[s], time, &base, &mine),
                            &version("merged", image_time, &base, &theirs),
                        );
                        let decided = value_of(&written(outcome).0);
                        let vector = record_resolution(&mut state, SITES[s], &local);
                        (image, image_time, holds[s]) = (decided, image_time.max(time), after);
                        for target in sites.iter_mut() {
                            target.pending.push_back((decided, vector.clone()));
                        }
                    }
                    Classification::Seen => panic!("a change was read twice"),
                }
            }
        },
        Step::Deliver(s) => {
            let site = &mut sites[s];
            if site.log.iter().any(|e| matches!(e, Entry::Local { .. })) {
                return;
            }
            if let Some((value, vector)) = site.pending.pop_front() {
                site.value = value;
                site.log.push_back(Entry::Echo { vector, value });
            }
        }
    };
    for step in steps {
        run(step, &mut sites);
    }
    while sites
        .iter()
        .any(|s| !s.log.is_empty() || !s.pending.is_empty())
    {
        for s in 0..3 {
            run(&Step::Read(s), &mut sites);
            run(&Step::Deliver(s), &mut sites);
        }
    }
    (sites.iter().map(|s| s.value).collect(), conflicts)
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            (0..3usize, -5..=10i64).prop_map(|(s, by)| Step::Change(s, by)),
            (0..3usize).prop_map(Step::Read),
            (0..3usize).prop_map(Step::Deliver),
        ],
        1..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the interleaving of concurrent changes on three sites, chains of conflicts
    /// included, every site ends on the initial count plus the sum of every change.
    #[test]
    fn delta_merges_on_three_sites_equal_base_plus_every_change(steps in steps()) {
        let sum: i64 = steps
            .iter()
            .map(|s| if let Step::Change(_, by) = s { *by } else { 0 })
            .sum();
        let (values, _) = simulate(&steps);
        prop_assert!(values.iter().all(|v| *v == INITIAL + sum), "{values:?}, expected {}", INITIAL + sum);
    }
}

#[test]
fn a_third_change_concurrent_with_a_merged_one_is_added_once() {
    // store and wms change concurrently; the merge reaches erp's log only after erp made a
    // change of its own on the initial count: a conflict with the already merged version.
    let steps = [
        Step::Change(0, -2),
        Step::Change(2, 10),
        Step::Change(1, -1),
        Step::Read(0),
        Step::Read(2),
        Step::Read(1),
    ];
    let (values, conflicts) = simulate(&steps);
    assert_eq!(conflicts, 2);
    assert_eq!(values, vec![INITIAL + 7; 3]);
}
