//! Names users give (machines, disks, checkpoints) and names cbtfs shows
//! (restore point folders). Machine and disk names become folder and file
//! names in the mount, so only a conservative set is accepted.

use std::time::{Duration, UNIX_EPOCH};

/// Longest machine or disk name accepted.
pub const MAX_NAME_LEN: usize = 128;
/// Longest checkpoint id accepted.
pub const MAX_CHECKPOINT_LEN: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{what} name is empty")]
    Empty { what: &'static str },
    #[error("{what} name {name:?} is too long (at most {MAX_NAME_LEN} bytes)")]
    TooLong { what: &'static str, name: String },
    #[error("{what} name {name:?} is not allowed: use letters, digits, '.', '_', '-', '+', '@', not starting with '.' or '-'")]
    Unsafe { what: &'static str, name: String },
    #[error("checkpoint id {0:?} is not allowed: 1 to 256 printable characters, no spaces")]
    Checkpoint(String),
}

/// Checks a machine or disk name. `what` is "machine" or "disk".
pub fn check_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { what, name: name.to_string() });
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '@');
    // Rejecting a leading '.' rules out ".", "..", and hidden files; a
    // leading '-' would read as an option to the tools users run on it.
    if !name.chars().all(ok_char) || name.starts_with('.') || name.starts_with('-') {
        return Err(NameError::Unsafe { what, name: name.to_string() });
    }
    Ok(())
}

/// Checks a checkpoint id (oVirt UUIDs, QEMU bitmap names, ...).
pub fn check_checkpoint(id: &str) -> Result<(), NameError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_CHECKPOINT_LEN
        && id.chars().all(|c| c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control() && !c.is_whitespace()));
    if ok { Ok(()) } else { Err(NameError::Checkpoint(id.to_string())) }
}

/// UTC time as RFC 3339 with seconds, e.g. `2026-11-23T09:32:00Z`.
pub fn rfc3339(unix_secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix_secs.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Folder name of a restore point: `000042-20261123T093200Z`. The seq is
/// zero-padded to 6 digits so that byte order is creation order (up to
/// 999999 points per machine).
pub fn point_name(seq: i64, created: i64) -> String {
    let stamp: String = rfc3339(created).chars().filter(|c| *c != '-' && *c != ':').collect();
    format!("{seq:06}-{stamp}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names() {
        for n in ["vm1", "sda", "web-01.example.com", "disk_0", "a", "x+y@z", "A9"] {
            assert_eq!(check_name("disk", n), Ok(()), "{n}");
        }
        assert_eq!(check_name("disk", &"a".repeat(MAX_NAME_LEN)), Ok(()));
    }

    #[test]
    fn bad_names() {
        for n in ["", ".", "..", "a/b", "/", ".hidden", "-rf", "a b", "tab\t", "nl\n", "nul\0", "é", "a\\b", "a:b"] {
            assert!(check_name("machine", n).is_err(), "{n:?} should be refused");
        }
        assert!(check_name("machine", &"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn checkpoints() {
        assert!(check_checkpoint("c1").is_ok());
        assert!(check_checkpoint("5d3d6c4e-2f1a-4c1b-9e7a-0a1b2c3d4e5f").is_ok());
        assert!(check_checkpoint("").is_err());
        assert!(check_checkpoint("a b").is_err());
        assert!(check_checkpoint("a\nb").is_err());
        assert!(check_checkpoint(&"c".repeat(257)).is_err());
    }

    #[test]
    fn point_names_sort_in_creation_order() {
        assert_eq!(point_name(1, 0), "000001-19700101T000000Z");
        assert_eq!(point_name(42, 1_795_426_320), "000042-20261123T093200Z");
        // A clock going backwards must not reorder folders.
        assert!(point_name(2, 1_000) > point_name(1, 2_000_000_000));
        assert!(point_name(10, 0) > point_name(9, 0));
    }
}
