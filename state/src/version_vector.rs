//! Version vectors: for each site, how many changes that originated there a version reflects.
//!
//! A vector maps a site name to a counter. A site that is absent has counter 0, and the map
//! never stores a 0 (every constructor drops them, decoding included), so two vectors that
//! describe the same history are equal as values and encode to the same bytes.
//!
//! Vectors are ordered pointwise: `a` has seen everything `b` has seen when every counter of
//! `a` is at least the one of `b`. Two versions neither of which has seen the other are
//! [`Causality::Concurrent`]: in the merge engine that is a conflict. [`VersionVector::merge`]
//! is the least upper bound of that order (pointwise max), which makes it commutative,
//! associative and idempotent; the property tests below check these laws.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// How two versions relate in causal history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Causality {
    /// Both versions have seen exactly the same changes.
    Equal,
    /// This version has seen everything the other has, and more.
    Dominates,
    /// The other version has seen everything this one has, and more.
    DominatedBy,
    /// Each version has seen a change the other has not: they conflict.
    Concurrent,
}

impl Causality {
    /// The relation seen from the other side (`a.compare(b) == b.compare(a).reverse()`).
    pub fn reverse(self) -> Causality {
        match self {
            Causality::Equal => Causality::Equal,
            Causality::Dominates => Causality::DominatedBy,
            Causality::DominatedBy => Causality::Dominates,
            Causality::Concurrent => Causality::Concurrent,
        }
    }
}

/// Per-site change counters of one version of a row.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "BTreeMap<String, u64>", into = "BTreeMap<String, u64>")]
pub struct VersionVector {
    counters: BTreeMap<String, u64>,
}

impl VersionVector {
    /// The empty vector: a version that has seen no change.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `site` (0 when the vector has none).
    pub fn get(&self, site: &str) -> u64 {
        self.counters.get(site).copied().unwrap_or(0)
    }

    /// Sets the counter of `site`; setting 0 removes the site.
    pub fn set(&mut self, site: &str, counter: u64) {
        if counter == 0 {
            self.counters.remove(site);
        } else {
            self.counters.insert(site.to_owned(), counter);
        }
    }

    /// Counts one more change originated at `site` and returns its new counter.
    ///
    /// # Panics
    ///
    /// If the counter is already `u64::MAX`, which a real history never reaches.
    pub fn increment(&mut self, site: &str) -> u64 {
        let counter = self.counters.entry(site.to_owned()).or_insert(0);
        *counter = counter
            .checked_add(1)
            .expect("version vector counter overflowed u64");
        *counter
    }

    /// Makes this vector the pointwise maximum of itself and `other`.
    pub fn merge(&mut self, other: &VersionVector) {
        for (site, &counter) in &other.counters {
            let mine = self.counters.entry(site.clone()).or_insert(0);
            *mine = (*mine).max(counter);
        }
    }

    /// The pointwise maximum of the two vectors, as a new vector.
    pub fn merged(&self, other: &VersionVector) -> VersionVector {
        let mut result = self.clone();
        result.merge(other);
        result
    }

    /// How this version relates to `other`.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut greater = false;
        let mut less = false;
        for site in self.counters.keys().chain(other.counters.keys()) {
            match self.get(site).cmp(&other.get(site)) {
                Ordering::Greater => greater = true,
                Ordering::Less => less = true,
                Ordering::Equal => {}
            }
            if greater && less {
                return Causality::Concurrent;
            }
        }
        match (greater, less) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Dominates,
            (false, true) => Causality::DominatedBy,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Whether this version has seen strictly more than `other` (and everything `other` has).
    pub fn dominates(&self, other: &VersionVector) -> bool {
        self.compare(other) == Causality::Dominates
    }

    /// Whether this version has seen everything `other` has (dominates or equal).
    pub fn descends(&self, other: &VersionVector) -> bool {
        matches!(self.compare(other), Causality::Dominates | Causality::Equal)
    }

    /// Whether every counter is 0.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// The number of sites with a non-zero counter.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// The non-zero counters, in site name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.counters
            .iter()
            .map(|(site, &counter)| (site.as_str(), counter))
    }
}

impl From<BTreeMap<String, u64>> for VersionVector {
    fn from(mut counters: BTreeMap<String, u64>) -> Self {
        counters.retain(|_, counter| *counter != 0);
        VersionVector { counters }
    }
}

impl From<VersionVector> for BTreeMap<String, u64> {
    fn from(vector: VersionVector) -> Self {
        vector.counters
    }
}

impl<S: Into<String>> FromIterator<(S, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (S, u64)>>(iter: I) -> Self {
        let mut vector = VersionVector::new();
        for (site, counter) in iter {
            let site = site.into();
            let merged = vector.get(&site).max(counter);
            vector.set(&site, merged);
        }
        vector
    }
}

impl fmt::Display for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (site, counter)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{site}:{counter}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{Causality, VersionVector};
    use crate::codec;

    fn vv(pairs: &[(&str, u64)]) -> VersionVector {
        pairs
            .iter()
            .map(|&(site, counter)| (site, counter))
            .collect()
    }

    #[test]
    fn absent_site_counts_zero_and_zero_is_not_stored() {
        let mut v = VersionVector::new();
        assert_eq!(v.get("shop"), 0);
        assert_eq!(v.increment("shop"), 1);
        assert_eq!(v.increment("shop"), 2);
        v.set("erp", 0);
        assert_eq!(v.len(), 1);
        assert_eq!(v, vv(&[("shop", 2), ("erp", 0)]));
        v.set("shop", 0);
        assert!(v.is_empty());
        assert_eq!(v, VersionVector::new());
    }

    #[test]
    fn compare_covers_all_four_relations() {
        let a = vv(&[("shop", 2), ("erp", 1)]);
        assert_eq!(a.compare(&a.clone()), Causality::Equal);
        let mut successor = a.clone();
        successor.increment("wms");
        assert_eq!(successor.compare(&a), Causality::Dominates);
        assert_eq!(a.compare(&successor), Causality::DominatedBy);
        assert!(successor.dominates(&a));
        assert!(successor.descends(&a));
        assert!(a.descends(&a));
        assert!(!a.dominates(&a));
        let mut other = a.clone();
        other.increment("erp");
        assert_eq!(successor.compare(&other), Causality::Concurrent);
        assert!(!successor.descends(&other) && !other.descends(&successor));
        assert_eq!(VersionVector::new().compare(&a), Causality::DominatedBy);
    }

    #[test]
    fn merge_is_pointwise_max() {
        let mut a = vv(&[("shop", 3), ("erp", 1)]);
        a.merge(&vv(&[("erp", 4), ("wms", 2)]));
        assert_eq!(a, vv(&[("shop", 3), ("erp", 4), ("wms", 2)]));
        assert_eq!(a.to_string(), "{erp:4, shop:3, wms:2}");
    }

    #[test]
    fn decoding_drops_zero_counters() {
        let raw: std::collections::BTreeMap<String, u64> =
            [("shop".to_owned(), 0), ("erp".to_owned(), 5)].into();
        let bytes = codec::encode(&raw).unwrap();
        let decoded: VersionVector = codec::decode(&bytes).unwrap();
        assert_eq!(decoded, vv(&[("erp", 5)]));
        assert_eq!(
            codec::decode::<VersionVector>(&codec::encode(&decoded).unwrap()).unwrap(),
            decoded
        );
    }

    fn vector() -> impl Strategy<Value = VersionVector> {
        prop::collection::btree_map(
            prop::sample::select(vec!["shop", "erp", "wms", "crm"]),
            0u64..4,
            0..4,
        )
        .prop_map(|m| m.into_iter().collect())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn merge_is_commutative(a in vector(), b in vector()) {
            prop_assert_eq!(a.merged(&b), b.merged(&a));
        }

        #[test]
        fn merge_is_associative(a in vector(), b in vector(), c in vector()) {
            prop_assert_eq!(a.merged(&b).merged(&c), a.merged(&b.merged(&c)));
        }

        #[test]
        fn merge_is_idempotent(a in vector(), b in vector()) {
            prop_assert_eq!(a.merged(&a), a.clone());
            let ab = a.merged(&b);
            prop_assert_eq!(ab.merged(&b), ab);
        }

        #[test]
        fn merge_descends_from_both(a in vector(), b in vector()) {
            let m = a.merged(&b);
            prop_assert!(m.descends(&a));
            prop_assert!(m.descends(&b));
        }

        #[test]
        fn compare_is_antisymmetric(a in vector(), b in vector()) {
            prop_assert_eq!(a.compare(&b), b.compare(&a).reverse());
            prop_assert_eq!(a.compare(&b) == Causality::Equal, a == b);
        }

        #[test]
        fn increment_dominates(a in vector(), site in prop::sample::select(vec!["shop", "erp", "x"])) {
            let mut next = a.clone();
            next.increment(site);
            prop_assert_eq!(next.compare(&a), Causality::Dominates);
        }

        #[test]
        fn codec_round_trip(a in vector()) {
            let bytes = codec::encode(&a).unwrap();
            prop_assert_eq!(codec::decode::<VersionVector>(&bytes).unwrap(), a);
        }
    }
}
