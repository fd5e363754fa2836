//! How cbtfs names files to QEMU's tools (qemu-img, qemu-nbd).

use std::path::{Path, PathBuf};

/// `path` as a file name QEMU takes for a plain file.
///
/// QEMU reads a name with a colon before its first slash as
/// `PROTOCOL:REST` (`nbd:host:10809`, `json:{...}`), so a relative name
/// such as `web01-2026-12-01T10:00.qcow2` would be refused as an unknown
/// protocol, or worse, opened as another one. With `./` in front, the
/// first slash comes first.
pub fn file_arg(path: &Path) -> PathBuf {
    if path.is_relative() { Path::new(".").join(path) } else { path.to_path_buf() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_start_with_a_slash_before_any_colon() {
        assert_eq!(file_arg(Path::new("a:b.qcow2")), Path::new("./a:b.qcow2"));
        assert_eq!(file_arg(Path::new(".x:y.raw-1")), Path::new("./.x:y.raw-1"));
        assert_eq!(file_arg(Path::new("d/nbd:x")), Path::new("./d/nbd:x"));
        assert_eq!(file_arg(Path::new("/abs/a:b")), Path::new("/abs/a:b"));
    }
}
