//! What `duplex verify` prints per mapping: for people, a block of differences and a summary
//! line; for scripts (`--json`), one JSON object per line.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::compare::{Difference, KeyDifference};
use super::scan::Rechecked;

/// The outcome of one mapping.
#[derive(Debug, Clone, Serialize)]
pub struct MappingReport {
    /// The mapping.
    pub mapping: String,
    /// Its source site (of a two-way mapping: its first site).
    pub source: String,
    /// Its target site (of a two-way mapping: the site compared with the first).
    pub target: String,
    /// Whether the mapping is two-way (the merge engine carries changes both ways).
    pub two_way: bool,
    /// Source rows compared.
    pub rows: u64,
    /// Seconds the comparison took (first pass).
    pub seconds: f64,
    /// Rows per second.
    pub rows_per_second: f64,
    /// Keys the target lacks.
    pub missing: Vec<String>,
    /// Keys only the target has.
    pub extra: Vec<String>,
    /// Keys whose columns differ.
    pub differing: Vec<DifferingRow>,
    /// Keys not compared: their source row changed during every re-check (see
    /// [`super::scan::Rechecked::in_flight`]); they make the mapping not equal.
    pub in_flight: Vec<String>,
    /// Whether the target had applied past the source's read when the differences were last
    /// read (false: some may still be in flight; the link is stopped or far behind).
    pub confirmed: bool,
    /// With `--repair`: rows written into the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<usize>,
    /// With `--repair`: keys that still differed after it (changed again while repaired).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unrepaired: Vec<String>,
    /// True when nothing differs.
    pub equal: bool,
}

/// A row whose columns differ.
#[derive(Debug, Clone, Serialize)]
pub struct DifferingRow {
    /// Its key.
    pub key: String,
    /// The differing columns.
    pub columns: Vec<super::compare::ColumnDifference>,
}

impl MappingReport {
    /// The report of a mapping from what the re-checks left.
    pub fn new(
        mapping: &str,
        source: &str,
        target: &str,
        rows: u64,
        took: Duration,
        rechecked: Rechecked,
        repaired: Option<(usize, Vec<String>)>,
    ) -> MappingReport {
        let mut missing = Vec::new();
        let mut extra = Vec::new();
        let mut differing = Vec::new();
        for KeyDifference {
            key, difference, ..
        } in rechecked.differences
        {
            match difference {
                Difference::Missing => missing.push(key),
                Difference::Extra => extra.push(key),
                Difference::Differs { columns } => differing.push(DifferingRow { key, columns }),
            }
        }
        let seconds = took.as_secs_f64();
        let in_flight = rechecked.in_flight;
        let equal =
            missing.is_empty() && extra.is_empty() && differing.is_empty() && in_flight.is_empty();
        MappingReport {
            mapping: mapping.to_owned(),
            source: source.to_owned(),
            target: target.to_owned(),
            two_way: false,
            rows,
            seconds,
            rows_per_second: if seconds > 0.0 {
                rows as f64 / seconds
            } else {
                0.0
            },
            missing,
            extra,
            differing,
            in_flight,
            confirmed: equal || rechecked.confirmed,
            unrepaired: repaired
                .as_ref()
                .map(|(_, u)| u.clone())
                .unwrap_or_default(),
            repaired: repaired.map(|(n, _)| n),
            equal,
        }
    }

    /// Whether the mapping is equal now: nothing differed, or `--repair` fixed all of it.
    pub fn settled(&self) -> bool {
        self.equal
            || (self.repaired.is_some() && self.unrepaired.is_empty() && self.in_flight.is_empty())
    }

    /// The report for people.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "mapping {}: {} {} {}: {} rows compared in {:.1} s ({:.0} rows/s)",
            self.mapping,
            self.source,
            if self.two_way { "<->" } else { "->" },
            self.target,
            self.rows,
            self.seconds,
            self.rows_per_second
        );
        for key in &self.missing {
            let _ = writeln!(out, "  missing at {}: {key}", self.target);
        }
        for key in &self.extra {
            let _ = writeln!(out, "  extra at {}: {key}", self.target);
        }
        for row in &self.differing {
            for c in &row.columns {
                let _ = writeln!(
                    out,
                    "  differs at {}: {}: {}: {} {}, {} {}",
                    self.target, row.key, c.column, self.source, c.source, self.target, c.target
                );
            }
        }
        if !self.confirmed && self.two_way {
            let _ = writeln!(
                out,
                "  (not confirmed: the merge engine did not carry every change of {} and {} while verify waited; is duplex run running?)",
                self.source, self.target
            );
        } else if !self.confirmed {
            let _ = writeln!(
                out,
                "  (not confirmed: {} did not apply past the source's position while verify waited; is duplex run streaming?)",
                self.target
            );
        }
        for key in &self.in_flight {
            let _ = writeln!(
                out,
                "  not compared, changed on {} during every re-check: {key}",
                self.source
            );
        }
        if !self.in_flight.is_empty() {
            let _ = writeln!(
                out,
                "  ({} key(s) changed faster than verify could read them; verify them again when they are quieter, or with more --rounds)",
                self.in_flight.len()
            );
        }
        if self.equal {
            let _ = writeln!(out, "mapping {}: equal", self.mapping);
        } else {
            let _ = writeln!(
                out,
                "mapping {}: {} missing, {} extra, {} differing at {}{}",
                self.mapping,
                self.missing.len(),
                self.extra.len(),
                self.differing.len(),
                self.target,
                if self.in_flight.is_empty() {
                    String::new()
                } else {
                    format!(", {} not compared (in flight)", self.in_flight.len())
                }
            );
        }
        if let Some(n) = self.repaired {
            let _ = writeln!(
                out,
                "mapping {}: repaired {n} row(s) at {}",
                self.mapping, self.target
            );
        }
        for key in &self.unrepaired {
            let _ = writeln!(
                out,
                "  still differs at {} after the repair (changed meanwhile; verify again): {key}",
                self.target
            );
        }
        out
    }

    /// The report as one JSON line.
    pub fn json(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a report always serialises");
        line.push('\n');
        line
    }
}
