//! The fuser `Filesystem` implementation. It never touches SQLite or packs
//! itself: it turns inodes into catalog nodes and calls `Catalog` and
//! `ImageReader`. Any internal failure is logged and answered with EIO.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyXattr, Request, Session,
};
use nix::unistd::Whence;

use super::inode::{from_ino, to_ino};
use crate::catalog::{Catalog, Node, NodeAttr, NodeKind};
use crate::image::ImageReader;

/// Folders change when points are added: revalidate often.
const DIR_TTL: Duration = Duration::from_secs(1);
/// Images never change once committed.
const IMAGE_TTL: Duration = Duration::from_secs(3600);
/// Kernel read-ahead: large sequential reads amortise per-request cost.
const MAX_READAHEAD: u32 = 1 << 20;
/// Read-ahead of the mount's backing device, in KiB. The kernel caps FUSE
/// read-ahead at its default (128 KiB) during INIT; only the sysfs knob
/// raises it. 1 MiB measured about 1.4x faster sequential reads than the
/// default on a 2-core machine; 4 MiB gained nothing more.
const BDI_READ_AHEAD_KB: u32 = 1024;

pub struct CbtFs {
    catalog: Catalog,
    handles: Mutex<HashMap<u64, Arc<ImageReader>>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
}

fn eio(what: &str, e: impl std::fmt::Display) -> Errno {
    log::error!("{what}: {e}");
    Errno::EIO
}

impl CbtFs {
    pub fn new(catalog: Catalog) -> CbtFs {
        CbtFs {
            catalog,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
        }
    }

    fn file_attr(&self, node: Node, a: NodeAttr) -> FileAttr {
        let t = UNIX_EPOCH + Duration::from_secs(a.mtime.max(0) as u64);
        let (kind, perm, nlink) = match a.kind {
            NodeKind::Dir => (FileType::Directory, 0o555, 2),
            NodeKind::File => (FileType::RegularFile, 0o444, 1),
            NodeKind::Symlink => (FileType::Symlink, 0o777, 1),
        };
        FileAttr {
            ino: to_ino(node),
            size: a.size,
            blocks: a.allocated.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }

    fn ttl(a: &NodeAttr) -> Duration {
        if a.kind == NodeKind::File { IMAGE_TTL } else { DIR_TTL }
    }

    fn node(ino: INodeNo) -> Result<Node, Errno> {
        from_ino(ino).ok_or(Errno::ENOENT)
    }

    fn attr_of(&self, node: Node) -> Result<NodeAttr, Errno> {
        self.catalog.attr(node).map_err(|e| eio("getattr", e))?.ok_or(Errno::ENOENT)
    }
}

impl Filesystem for CbtFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_READAHEAD);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let res = (|| {
            let parent = Self::node(parent)?;
            let name = name.to_str().ok_or(Errno::ENOENT)?;
            let node = self.catalog.lookup(parent, name).map_err(|e| eio("lookup", e))?.ok_or(Errno::ENOENT)?;
            let a = self.attr_of(node)?;
            Ok((node, a))
        })();
        match res {
            Ok((node, a)) => reply.entry(&Self::ttl(&a), &self.file_attr(node, a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match Self::node(ino).and_then(|n| self.attr_of(n).map(|a| (n, a))) {
            Ok((node, a)) => reply.attr(&Self::ttl(&a), &self.file_attr(node, a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let res = Self::node(ino)
            .and_then(|n| self.catalog.readlink(n).map_err(|e| eio("readlink", e))?.ok_or(Errno::EINVAL));
        match res {
            Ok(target) => reply.data(target.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let res = (|| {
            if flags.0 & libc_accmode() != 0 {
                return Err(Errno::EROFS);
            }
            let node = Self::node(ino)?;
            if !matches!(node, Node::Image(_) | Node::Partition(..)) {
                return Err(Errno::EISDIR);
            }
            let img = self.catalog.open(node).map_err(|e| eio("open", e))?.ok_or(Errno::ENOENT)?;
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            self.handles.lock().unwrap().insert(fh, Arc::new(img));
            Ok(fh)
        })();
        match res {
            // Content is immutable: let the page cache keep it across opens.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let img = self.handles.lock().unwrap().get(&fh.0).cloned();
        let Some(img) = img else { return reply.error(Errno::EBADF) };
        // One reply buffer per FUSE thread, reused, rather than an
        // allocation of up to a megabyte per read.
        thread_local! {
            static REPLY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        REPLY.with_borrow_mut(|buf| match img.read_into(offset, size as usize, buf) {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(eio(&format!("read at offset {offset}"), e)),
        });
    }

    /// SEEK_DATA and SEEK_HOLE, from the block index: copies skip the
    /// holes instead of reading zeros through FUSE. (The kernel answers
    /// the other kinds of seek itself.)
    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let img = self.handles.lock().unwrap().get(&fh.0).cloned();
        let Some(img) = img else { return reply.error(Errno::EBADF) };
        // Like the kernel's own seek: an offset before the start is past
        // any data.
        let Ok(at) = u64::try_from(offset) else { return reply.error(Errno::ENXIO) };
        let found = if whence == Whence::SeekData as i32 {
            img.seek_data(at)
        } else if whence == Whence::SeekHole as i32 {
            img.seek_hole(at)
        } else {
            return reply.error(Errno::EINVAL);
        };
        match found {
            Ok(Some(pos)) => reply.offset(pos as i64),
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => reply.error(eio(&format!("seek from offset {offset}"), e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.handles.lock().unwrap().remove(&fh.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let res = (|| {
            let node = Self::node(ino)?;
            // The kernel resolves ".." itself; its inode here is informational.
            let parent = match node {
                Node::Root | Node::Machine(_) | Node::Point(_) => INodeNo::ROOT,
                _ => return Err(Errno::ENOTDIR),
            };
            let kids = self.catalog.children(node).map_err(|e| eio("readdir", e))?;
            Ok((parent, kids))
        })();
        let (parent, kids) = match res {
            Ok(v) => v,
            Err(e) => return reply.error(e),
        };
        let mut entries: Vec<(INodeNo, FileType, String)> =
            vec![(ino, FileType::Directory, ".".into()), (parent, FileType::Directory, "..".into())];
        for (n, name) in kids {
            let kind = match n {
                Node::Root | Node::Machine(_) | Node::Point(_) => FileType::Directory,
                Node::Latest(_) => FileType::Symlink,
                Node::Image(_) | Node::Partition(..) => FileType::RegularFile,
            };
            entries.push((to_ino(n), kind, name));
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    // Nothing is ever written, so there is nothing to flush or sync;
    // answering ENOSYS would only make fuser log a warning per close.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lo: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENODATA);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.size(0);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096);
    }
}

/// Best effort: needs root (or write access to sysfs); without it reads
/// are only slower.
fn raise_read_ahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else { return };
    let dev = meta.dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    match std::fs::write(&knob, BDI_READ_AHEAD_KB.to_string()) {
        Ok(()) => log::debug!("read-ahead set to {BDI_READ_AHEAD_KB} KiB via {knob}"),
        Err(e) => log::info!("cannot raise read-ahead via {knob}: {e}; reads will be slower"),
    }
}

/// Lazy unmount: umount2(MNT_DETACH) as root, `fusermount3 -u -z` otherwise.
fn detach(mountpoint: &Path) {
    if nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).is_ok() {
        return;
    }
    match std::process::Command::new("fusermount3").arg("-u").arg("-z").arg(mountpoint).status() {
        Ok(st) if st.success() => {}
        other => log::error!("lazy unmount of {} failed: {other:?}", mountpoint.display()),
    }
}

/// O_ACCMODE bits: any write access is refused on this read-only tree.
fn libc_accmode() -> i32 {
    (nix::fcntl::OFlag::O_WRONLY | nix::fcntl::OFlag::O_RDWR).bits()
}

/// Mounts `fs` at `mountpoint` and serves it until it is unmounted
/// (`umount`) or the process gets SIGINT or SIGTERM, which unmount it.
/// With `allow_other`, users other than the one mounting may read the
/// tree (file modes still apply): a VM run by libvirt's QEMU user from an
/// image in the mount needs it.
pub fn mount(fs: CbtFs, mountpoint: &Path, allow_other: bool) -> std::io::Result<()> {
    serve_with(fs, mountpoint, "cbtfs", allow_other)
}

/// Serves any read-only filesystem with cbtfs's FUSE settings (threads,
/// read-ahead, signal handling). Public so that the benchmark's in-memory
/// ceiling filesystem runs under exactly the same settings.
pub fn serve<F: Filesystem>(fs: F, mountpoint: &Path, name: &str) -> std::io::Result<()> {
    serve_with(fs, mountpoint, name, false)
}

fn serve_with<F: Filesystem>(fs: F, mountpoint: &Path, name: &str, allow_other: bool) -> std::io::Result<()> {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::RO,
        MountOption::FSName(name.into()),
        MountOption::Subtype(name.into()),
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
    ];
    if allow_other {
        cfg.acl = fuser::SessionACL::All;
    }
    // Reads of different blocks proceed in parallel on all cores.
    cfg.n_threads = Some(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2));
    let mut session = Session::new(fs, mountpoint, &cfg)?;
    // stat(2) of the mount point is answered by this very session, so it
    // can only complete once `run` serves requests: do it on the side.
    let mp = mountpoint.to_path_buf();
    std::thread::spawn(move || raise_read_ahead(&mp));
    let mut unmounter = session.unmount_callable();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM])?;
    let mp = mountpoint.to_path_buf();
    std::thread::spawn(move || {
        if signals.forever().next().is_none() {
            return;
        }
        log::info!("signal received, unmounting");
        match unmounter.unmount() {
            // `run` returns once the kernel has let go.
            Ok(()) => {}
            Err(e) => {
                // Busy: files are still open (a loop device, a shell). Do
                // what libfuse does on a signal: detach lazily and end, so
                // a stop request is never ignored; their readers get errors.
                log::warn!("{} is busy ({e}); detaching it lazily", mp.display());
                eprintln!("cbtfs: warning: files under {} were still open; they can no longer be read", mp.display());
                detach(&mp);
                std::process::exit(0);
            }
        }
    });
    session.run()
}
