//! The last verify's time and result, for `duplex status` and the metrics.
//!
//! It is kept as `last-verify.json` in the state directory (mode 0600, written to a temporary
//! file and renamed into place), not in the state store: verify runs while `duplex run` holds
//! the store's lock, and both `run` (for `/metrics`) and `status` (whether or not `run` runs)
//! read it from there.

use std::io::Write as _;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::report::MappingReport;

/// The file's name in the state directory.
pub const FILE: &str = "last-verify.json";

/// What the last verify found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastVerify {
    /// When it finished.
    pub at: DateTime<Utc>,
    /// Whether every mapping compared was equal (or repaired).
    pub equal: bool,
    /// Mappings compared.
    pub mappings: usize,
    /// Rows missing, extra or differing over all mappings (before any repair).
    pub differences: usize,
    /// Whether it repaired.
    pub repaired: bool,
}

impl LastVerify {
    /// The record of a verify that produced `reports`.
    pub fn of(reports: &[MappingReport]) -> LastVerify {
        LastVerify {
            at: Utc::now(),
            equal: reports.iter().all(MappingReport::settled),
            mappings: reports.len(),
            differences: reports
                .iter()
                .map(|r| r.missing.len() + r.extra.len() + r.differing.len())
                .sum(),
            repaired: reports.iter().any(|r| r.repaired.is_some()),
        }
    }
}

/// Records `last` in `state_dir` (created private if missing).
pub fn record(state_dir: &Path, last: &LastVerify) -> std::io::Result<()> {
    duplex_state::store::modes::secure_dir(state_dir)?;
    let path = state_dir.join(FILE);
    let temporary = state_dir.join(format!("{FILE}.tmp"));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(duplex_state::store::modes::FILE_MODE)
            .open(&temporary)?;
        file.write_all(&serde_json::to_vec(last).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)
}

/// The status line of `last`: `last verify: <time>: equal (3 mappings)`, or with the number
/// of rows that differed and whether they were repaired.
pub fn line(last: &LastVerify) -> String {
    let what = if last.equal && last.differences == 0 {
        "equal".to_owned()
    } else if last.repaired {
        format!("{} row(s) differed, repaired", last.differences)
    } else {
        format!("{} row(s) differ", last.differences)
    };
    format!(
        "\nlast verify: {}: {what} ({} mapping(s))\n",
        last.at.format("%Y-%m-%d %H:%M:%S UTC"),
        last.mappings
    )
}

/// The last verify recorded in `state_dir`, if any.
pub fn read(state_dir: &Path) -> Option<LastVerify> {
    let text = std::fs::read(state_dir.join(FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_verify_reads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        assert_eq!(read(&state), None);
        let last = LastVerify {
            at: Utc::now(),
            equal: false,
            mappings: 2,
            differences: 3,
            repaired: false,
        };
        record(&state, &last).unwrap();
        assert_eq!(read(&state), Some(last));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
