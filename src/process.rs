//! Other processes, as far as cleaning up after them needs to know.

/// Whether no process with this number runs, by `kill(pid, 0)`: ESRCH
/// says none does. Any other answer counts as running, EPERM included
/// (another user's process), so that a file of a live process is never
/// taken for a leftover. Unlike looking in /proc, this holds where /proc
/// is missing (a chroot) or hides other users' processes (`hidepid`).
/// Processes of another PID namespace or machine sharing the directory
/// are out of its sight.
pub fn gone(pid: u32) -> bool {
    use nix::errno::Errno;
    let Ok(raw) = i32::try_from(pid) else { return false };
    if raw <= 0 || pid == std::process::id() {
        return false;
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) == Err(Errno::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reaped_child_is_gone_and_running_ones_are_not() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(gone(pid));
        assert!(!gone(std::process::id()));
        assert!(!gone(1));
        assert!(!gone(0));
        assert!(!gone(u32::MAX));
    }
}
