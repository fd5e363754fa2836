#!/usr/bin/python3
"""A trivial read-only FUSE filesystem: one file of N bytes served from memory.

    fuse_ceiling.py MOUNTPOINT --bytes N [--name disk.img] [--stats FILE]

Serves MOUNTPOINT/NAME, N bytes of a repeating 1 MiB pattern, straight from
a buffer in memory: no disk, no index, no decompression. Reading it shows
what FUSE itself allows on this machine (kernel round trips, copies, the
page cache), a ceiling for any FUSE filesystem that serves disk images.
The server itself is Python; its per-request cost is small next to the
kernel's for large requests, but it can be the limit for small ones.

Runs in the foreground until unmounted (umount MOUNTPOINT) or SIGINT/SIGTERM.
With --stats FILE, appends the number of read requests and the largest and
most common request sizes seen to FILE as a JSON line when it exits.

Needs python3-pyfuse3 (preferred) or python3-llfuse from Debian; run it with
the system interpreter (/usr/bin/python3) that those packages belong to.
"""

import argparse
import collections
import errno
import json
import os
import signal
import stat
import sys

PERIOD = 1 << 20  # the content repeats every MiB
MAX_READ = 1 << 20

INO = 2  # inode of the file (1 is the root)


def make_pattern():
    # 256 distinct 4 KiB pages, so that content is not all zeros
    return b"".join(bytes([i]) * 4096 for i in range(256))


class Content:
    def __init__(self, size):
        self.size = size
        self.pattern = make_pattern()
        self.doubled = self.pattern + self.pattern  # any slice up to PERIOD is contiguous
        self.cache = {}  # (offset % PERIOD, length) -> bytes, for the common case
        self.counts = collections.Counter()
        self.requests = 0

    def read(self, off, size):
        self.requests += 1
        self.counts[size] += 1
        if off >= self.size:
            return b""
        size = min(size, self.size - off)
        out = []
        while size > 0:
            p = off % PERIOD
            n = min(size, PERIOD)
            key = (p, n)
            chunk = self.cache.get(key)
            if chunk is None:
                chunk = self.doubled[p:p + n]
                if len(self.cache) < 4096:
                    self.cache[key] = chunk
            out.append(chunk)
            off += n
            size -= n
        return out[0] if len(out) == 1 else b"".join(out)

    def stats(self):
        common = self.counts.most_common(1)
        return {
            "requests": self.requests,
            "max_request_bytes": max(self.counts) if self.counts else 0,
            "most_common_request_bytes": common[0][0] if common else 0,
        }


def run_pyfuse3(args, content, name):
    import pyfuse3
    import trio

    bname = name.encode()

    class Fs(pyfuse3.Operations):
        def _attr(self, ino):
            a = pyfuse3.EntryAttributes()
            a.st_ino = ino
            a.st_uid = os.getuid()
            a.st_gid = os.getgid()
            a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = 0
            a.attr_timeout = a.entry_timeout = 3600
            if ino == pyfuse3.ROOT_INODE:
                a.st_mode = stat.S_IFDIR | 0o555
                a.st_nlink = 2
                a.st_size = 0
            else:
                a.st_mode = stat.S_IFREG | 0o444
                a.st_nlink = 1
                a.st_size = content.size
                a.st_blksize = 4096
                a.st_blocks = (content.size + 511) // 512
            return a

        async def getattr(self, inode, ctx=None):
            if inode not in (pyfuse3.ROOT_INODE, INO):
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(inode)

        async def lookup(self, parent, n, ctx=None):
            if parent != pyfuse3.ROOT_INODE or n != bname:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(INO)

        async def opendir(self, inode, ctx):
            if inode != pyfuse3.ROOT_INODE:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            return inode

        async def readdir(self, fh, start_id, token):
            if start_id == 0:
                pyfuse3.readdir_reply(token, bname, self._attr(INO), 1)

        async def open(self, inode, flags, ctx):
            if inode != INO:
                raise pyfuse3.FUSEError(errno.EISDIR)
            if flags & (os.O_WRONLY | os.O_RDWR):
                raise pyfuse3.FUSEError(errno.EROFS)
            fi = pyfuse3.FileInfo(fh=inode)
            fi.keep_cache = True
            return fi

        async def read(self, fh, off, size):
            return content.read(off, size)

    opts = set(pyfuse3.default_options)
    opts.discard("default_permissions")
    opts |= {"fsname=fuse-ceiling", "ro"}
    pyfuse3.init(Fs(), args.mountpoint, opts)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, nursery)
            nursery.start_soon(stop_on_signal, nursery)

    async def serve(nursery):
        await pyfuse3.main()
        nursery.cancel_scope.cancel()  # unmounted: stop waiting for signals

    async def stop_on_signal(nursery):
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as sigs:
            async for _ in sigs:
                pyfuse3.terminate()
                nursery.cancel_scope.cancel()
                return

    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)


def run_llfuse(args, content, name):
    import llfuse

    bname = name.encode()

    class Fs(llfuse.Operations):
        def _attr(self, ino):
            a = llfuse.EntryAttributes()
            a.st_ino = ino
            a.st_uid = os.getuid()
            a.st_gid = os.getgid()
            a.st_mtime_ns = a.st_ctime_ns = a.st_atime_ns = 0
            a.attr_timeout = a.entry_timeout = 3600
            if ino == llfuse.ROOT_INODE:
                a.st_mode = stat.S_IFDIR | 0o555
                a.st_nlink = 2
            else:
                a.st_mode = stat.S_IFREG | 0o444
                a.st_nlink = 1
                a.st_size = content.size
                a.st_blksize = 4096
                a.st_blocks = (content.size + 511) // 512
            return a

        def getattr(self, inode, ctx=None):
            if inode not in (llfuse.ROOT_INODE, INO):
                raise llfuse.FUSEError(errno.ENOENT)
            return self._attr(inode)

        def lookup(self, parent, n, ctx=None):
            if parent != llfuse.ROOT_INODE or n != bname:
                raise llfuse.FUSEError(errno.ENOENT)
            return self._attr(INO)

        def opendir(self, inode, ctx):
            return inode

        def readdir(self, fh, off):
            if off == 0:
                yield (bname, self._attr(INO), 1)

        def open(self, inode, flags, ctx):
            if inode != INO:
                raise llfuse.FUSEError(errno.EISDIR)
            return inode

        def read(self, fh, off, size):
            return content.read(off, size)

    opts = set(llfuse.default_options)
    opts.discard("default_permissions")
    opts |= {"fsname=fuse-ceiling", "ro"}
    llfuse.init(Fs(), args.mountpoint, opts)
    signal.signal(signal.SIGTERM, lambda *_: llfuse.exit())
    try:
        llfuse.main(workers=1)
    finally:
        llfuse.close(unmount=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mountpoint")
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--name", default="disk.img")
    p.add_argument("--stats", help="append request statistics as a JSON line here on exit")
    p.add_argument("--impl", choices=("auto", "pyfuse3", "llfuse"), default="auto")
    args = p.parse_args(argv)
    content = Content(args.bytes)
    impls = ["pyfuse3", "llfuse"] if args.impl == "auto" else [args.impl]
    runner = None
    for impl in impls:
        try:
            __import__(impl)
        except ImportError:
            continue
        runner = run_pyfuse3 if impl == "pyfuse3" else run_llfuse
        break
    if runner is None:
        sys.exit("fuse_ceiling: neither pyfuse3 nor llfuse can be imported")
    try:
        runner(args, content, args.name)
    finally:
        if args.stats:
            s = content.stats()
            s["impl"] = impl
            with open(args.stats, "a") as f:
                json.dump(s, f)
                f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
