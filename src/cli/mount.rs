use std::path::PathBuf;
use anyhow::Context;

use cbtfs::catalog::Catalog;
use cbtfs::fuse::{CbtFs, mount};
use cbtfs::image::Store;
use cbtfs::repo::Repo;

/// Decompressed blocks kept in memory, whatever the disk size.
const CACHE_BYTES: usize = 64 << 20;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository directory
    pub repo: PathBuf,
    /// Directory to mount on, normally empty (files in it are hidden while mounted); runs in the foreground until `umount` or SIGINT/SIGTERM
    pub mountpoint: PathBuf,
    /// Let other users read the tree too (a VM run by another user, e.g. libvirt's QEMU);
    /// for a mount by a user other than root, /etc/fuse.conf must say user_allow_other
    #[arg(long)]
    pub allow_other: bool,
}

pub fn run(a: Args) -> super::Outcome {
    let repo = Repo::open(&a.repo)?;
    if !a.mountpoint.is_dir() {
        anyhow::bail!("mount point {} is not a directory; create it first", a.mountpoint.display());
    }
    if std::fs::read_dir(&a.mountpoint).is_ok_and(|mut d| d.next().is_some()) {
        super::warn(format_args!("{} is not empty; its files are hidden while the mount runs", a.mountpoint.display()));
    }
    // Held for as long as the mount runs: forget and gc wait for it.
    let _readers = repo.lock_readers_shared()?;
    let store = Store::new(&repo.path, CACHE_BYTES, repo.block_size);
    drop(repo);
    let fs = CbtFs::new(Catalog::new(store));
    log::info!("serving {} at {}", a.repo.display(), a.mountpoint.display());
    mount(fs, &a.mountpoint, a.allow_other).with_context(|| {
        format!("cannot mount on {} (is FUSE available: /dev/fuse and fusermount3?)", a.mountpoint.display())
    })?;
    Ok(super::exit::OK)
}
