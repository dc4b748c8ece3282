//! The state directory is private: it holds row images and the conflict log, so nobody but
//! the user duplex runs as may read it, whatever the umask.
//!
//! The directory is created with mode 0700 and every file duplex writes there is set to 0600
//! (the store file, the socket of a running engine). A file is created before its mode is set,
//! so under a permissive umask it exists for a moment with a looser mode; it is inside the
//! 0700 directory then, which nobody else can enter, so there is no window. The directory itself
//! is set to 0700 explicitly after creating it (the umask could also make it narrower than
//! duplex needs, e.g. 0500). An existing directory or file found with looser modes (made by an
//! earlier release of duplex, or by hand) is tightened at open, and each one is reported with
//! its path and old mode so that a DBA knows what may have been readable.

use std::fs::Permissions;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The state directory's mode.
pub const DIR_MODE: u32 = 0o700;
/// The mode of every file in the state directory.
pub const FILE_MODE: u32 = 0o600;

/// A path whose mode was looser than duplex's and was tightened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tightened {
    /// The directory or file.
    pub path: PathBuf,
    /// Its mode before (permission bits).
    pub old_mode: u32,
    /// Its mode now.
    pub new_mode: u32,
}

/// Creates `dir` (mode 0700) unless it exists and makes it and every file directly in it
/// private; returns what was looser before. Symbolic links are left alone (their target is not
/// duplex's to change).
pub fn secure_dir(dir: &Path) -> std::io::Result<Vec<Tightened>> {
    let mut tightened = Vec::new();
    let existed = dir.exists();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)?;
    if let Some(change) = restrict(dir, DIR_MODE)?
        && existed
    {
        tightened.push(change);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_symlink() || kind.is_dir() {
            continue;
        }
        if let Some(change) = restrict(&entry.path(), FILE_MODE)? {
            tightened.push(change);
        }
    }
    Ok(tightened)
}

/// Sets `path` to `mode` unless its permission bits already are exactly that; returns the
/// change when the old mode allowed more than `mode` (a narrower one, e.g. from a strict umask,
/// is widened to what duplex needs without a report).
pub fn restrict(path: &Path, mode: u32) -> std::io::Result<Option<Tightened>> {
    let old_mode = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if old_mode == mode {
        return Ok(None);
    }
    std::fs::set_permissions(path, Permissions::from_mode(mode))?;
    Ok((old_mode & !mode != 0).then(|| Tightened {
        path: path.to_owned(),
        old_mode,
        new_mode: mode,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_new_directory_is_private_and_nothing_is_reported() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        assert_eq!(secure_dir(&dir).unwrap(), Vec::new());
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn loose_directory_and_files_are_tightened_and_reported() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("state.redb");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        let private = dir.join("other");
        std::fs::write(&private, b"x").unwrap();
        std::fs::set_permissions(&private, Permissions::from_mode(0o600)).unwrap();
        let changes = secure_dir(&dir).unwrap();
        assert_eq!(
            changes,
            vec![
                Tightened {
                    path: dir.clone(),
                    old_mode: 0o755,
                    new_mode: 0o700
                },
                Tightened {
                    path: file.clone(),
                    old_mode: 0o644,
                    new_mode: 0o600
                },
            ]
        );
        assert_eq!(
            (mode(&dir), mode(&file), mode(&private)),
            (0o700, 0o600, 0o600)
        );
    }

    #[test]
    fn a_narrower_mode_is_widened_to_what_duplex_needs_without_a_report() {
        let base = tempfile::tempdir().unwrap();
        let file = base.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, Permissions::from_mode(0o400)).unwrap();
        assert_eq!(restrict(&file, FILE_MODE).unwrap(), None);
        assert_eq!(mode(&file), 0o600);
    }
}
