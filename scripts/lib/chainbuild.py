#!/usr/bin/env python3
"""Build long cbtfs chains of tiny incrementals, for chain-depth benchmarks.

    chainbuild.py make IMAGE --bytes N [--seed S]
        Writes a fully allocated image of N bytes (N a multiple of 1 MiB):
        alternating MiB of text-like and random data from a fixed seed.

    chainbuild.py extend --cbtfs BIN --repo REPO --machine M --disk NAME
                         --image IMAGE --from A --to B [--seed S]
                         [--copy-at K PATH] [--times FILE] [--workdir DIR]
        Takes the chain of machine M from depth A (its latest point has
        checkpoint cp-A, zero-padded to 6 digits) to depth B: for each new
        point, overwrites a few small extents of IMAGE (1 to 4 extents of
        4 to 32 KiB at random 4 KiB-aligned offsets), writes a change map
        listing exactly those extents, and runs
            cbtfs ingest REPO M --disk NAME=IMAGE --changes NAME=MAP
                  --since cp-(d-1) --checkpoint cp-d
        timing each ingest (process start to exit). Appends one line per
        ingest to --times FILE: depth, seconds, bytes changed. With
        --copy-at K PATH, copies IMAGE to PATH right after depth K.

    chainbuild.py stats FILE
        Prints a JSON summary of a --times file: count, total, mean,
        median, p95 and max in ms, and the mean of the first and last 100.

The same seed gives the same images and changes.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

MIB = 1 << 20
KIB4 = 4096


def checkpoint(depth):
    return f"cp-{depth:06d}"


def make(path, size, seed):
    if size % MIB:
        sys.exit("chainbuild: --bytes must be a multiple of 1 MiB")
    rng = random.Random(seed)
    words = [w.encode() for w in (
        "disk block image backup restore point chain machine volume snapshot "
        "config server client kernel module network service request response "
        "error warning info debug user group system process thread memory").split()]
    with open(path, "wb") as f:
        for i in range(size // MIB):
            if i % 2 == 0:
                buf = bytearray()
                while len(buf) < MIB:
                    buf += b" ".join(rng.choice(words) for _ in range(64)) + b"\n"
                f.write(bytes(buf[:MIB]))
            else:
                f.write(rng.randbytes(MIB))
    print(f"chainbuild: wrote {size} bytes to {path}")


def tiny_change(fd, blocks, seed, point):
    """Overwrites 1 to 4 extents of 4 to 32 KiB at random 4 KiB-aligned
    offsets of the image open at `fd` (`blocks` 4 KiB blocks long), the
    same ones for the same seed and point; returns them as map extents."""
    rng = random.Random(seed * 1_000_003 + point)
    extents = []
    for _ in range(rng.randint(1, 4)):
        n = rng.randint(1, 8)  # 4..32 KiB
        start = rng.randrange(0, blocks - n + 1)
        off, length = start * KIB4, n * KIB4
        os.pwrite(fd, rng.randbytes(length), off)
        extents.append({"offset": off, "length": length})
    return extents


def extend(args):
    size = os.path.getsize(args.image)
    blocks = size // KIB4
    mapfile = os.path.join(args.workdir, "chain-map.json")
    times = open(args.times, "a") if args.times else None
    fd = os.open(args.image, os.O_RDWR)
    try:
        for depth in range(args.from_depth + 1, args.to_depth + 1):
            extents = tiny_change(fd, blocks, args.seed, depth)
            os.fsync(fd)
            with open(mapfile, "w") as m:
                json.dump(extents, m)
            cmd = [args.cbtfs, "ingest", args.repo, args.machine,
                   "--disk", f"{args.disk}={args.image}",
                   "--changes", f"{args.disk}={mapfile}",
                   "--since", checkpoint(depth - 1), "--checkpoint", checkpoint(depth)]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            secs = time.perf_counter() - t0
            if r.returncode != 0:
                sys.stderr.write(r.stderr.decode(errors="replace"))
                sys.exit(f"chainbuild: ingest at depth {depth} failed (exit {r.returncode})")
            if b"warning" in r.stderr.lower():
                # a fallback to a full scan would make the numbers meaningless
                sys.stderr.write(r.stderr.decode(errors="replace"))
                sys.exit(f"chainbuild: ingest at depth {depth} warned; the map was not used")
            if times:
                changed = sum(e["length"] for e in extents)
                times.write(f"{depth}\t{secs:.6f}\t{changed}\n")
            if args.copy_at and depth == args.copy_at[0]:
                shutil.copyfile(args.image, args.copy_at[1])
    finally:
        os.close(fd)
        if times:
            times.close()


def stats(path):
    rows = [line.split("\t") for line in open(path) if line.strip()]
    ms = [float(r[1]) * 1000 for r in rows]
    if not ms:
        sys.exit("chainbuild: no ingest times")
    srt = sorted(ms)
    out = {
        "count": len(ms),
        "total_s": round(sum(ms) / 1000, 3),
        "mean_ms": round(statistics.fmean(ms), 2),
        "median_ms": round(statistics.median(ms), 2),
        "p95_ms": round(srt[min(len(srt) - 1, int(len(srt) * 0.95))], 2),
        "max_ms": round(srt[-1], 2),
        "first100_mean_ms": round(statistics.fmean(ms[:100]), 2),
        "last100_mean_ms": round(statistics.fmean(ms[-100:]), 2),
        "bytes_changed": sum(int(r[2]) for r in rows),
    }
    print(json.dumps(out))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("image")
    m.add_argument("--bytes", type=int, required=True)
    m.add_argument("--seed", type=int, default=7)
    e = sub.add_parser("extend")
    e.add_argument("--cbtfs", required=True)
    e.add_argument("--repo", required=True)
    e.add_argument("--machine", required=True)
    e.add_argument("--disk", required=True)
    e.add_argument("--image", required=True)
    e.add_argument("--from", dest="from_depth", type=int, required=True)
    e.add_argument("--to", dest="to_depth", type=int, required=True)
    e.add_argument("--seed", type=int, default=8)
    e.add_argument("--copy-at", nargs=2, metavar=("K", "PATH"))
    e.add_argument("--times")
    e.add_argument("--workdir", default=".")
    s = sub.add_parser("stats")
    s.add_argument("file")
    args = p.parse_args(argv)
    if args.cmd == "make":
        make(args.image, args.bytes, args.seed)
    elif args.cmd == "extend":
        if args.copy_at:
            args.copy_at = (int(args.copy_at[0]), args.copy_at[1])
        extend(args)
    else:
        stats(args.file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
