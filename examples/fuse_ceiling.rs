//! The FUSE ceiling for the benchmark: one read-only file of N bytes served
//! from memory, under exactly the settings `cbtfs mount` uses (threads,
//! read-ahead, options). Whatever cbtfs reads at beyond the cost of this
//! file is cbtfs's own; what this file reads at is what FUSE allows here.
//!
//! Usage: fuse_ceiling MOUNTPOINT SIZE_BYTES   (file: MOUNTPOINT/image)

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, Request,
};

const FILE: INodeNo = INodeNo(2);
/// A repeating 1 MiB pattern, so a read is a memcpy like a cache hit.
const PATTERN_LEN: usize = 1 << 20;

struct Ceiling {
    size: u64,
    pattern: Vec<u8>,
}

impl Ceiling {
    fn attr(&self, ino: INodeNo) -> FileAttr {
        let dir = ino == INodeNo::ROOT;
        FileAttr {
            ino,
            size: if dir { 0 } else { self.size },
            blocks: self.size / 512,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: if dir { FileType::Directory } else { FileType::RegularFile },
            perm: if dir { 0o555 } else { 0o444 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }
}

const TTL: Duration = Duration::from_secs(3600);

impl Filesystem for Ceiling {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == "image" {
            reply.entry(&TTL, &self.attr(FILE), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &self.attr(ino));
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(1), FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let end = (offset + size as u64).min(self.size);
        let mut buf = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let mut pos = offset;
        while pos < end {
            let at = (pos % PATTERN_LEN as u64) as usize;
            let n = (PATTERN_LEN - at).min((end - pos) as usize);
            buf.extend_from_slice(&self.pattern[at..at + n]);
            pos += n as u64;
        }
        reply.data(&buf);
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let entries = [(INodeNo::ROOT, FileType::Directory, "."), (INodeNo::ROOT, FileType::Directory, ".."), (FILE, FileType::RegularFile, "image")];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(mp), Some(size)) = (args.next(), args.next().and_then(|s| s.parse::<u64>().ok())) else {
        eprintln!("usage: fuse_ceiling MOUNTPOINT SIZE_BYTES");
        std::process::exit(2);
    };
    let pattern = (0..PATTERN_LEN).map(|i| (i * 7 + i / 4096) as u8).collect();
    cbtfs::fuse::serve(Ceiling { size, pattern }, &PathBuf::from(mp), "fuse-ceiling")
}
