#!/usr/bin/env python3
"""Deterministic test data for cbtfs benchmarks and demos.

    gendata.py fill DIR --bytes N [--seed S]
        Writes about N bytes of files under DIR: half text-like, compressible
        data (lines of words), half incompressible random bytes, in files of
        mixed sizes (4 KiB .. 4 MiB) spread over nested directories.

    gendata.py mutate DIR --fraction F [--seed S]
        Changes about F of the files under DIR (at least one): most are
        partly overwritten in place with new data, some are appended to,
        some replaced by a new file of a different size, and one in fifty
        deleted. Prints a summary line.

The same seed gives the same tree and the same changes; the data comes from
Python's seeded generator, not /dev/urandom.
"""

import argparse
import os
import random
import sys

WORDS = (
    "the of and to in is was for on that with as by at from this be are or "
    "an it not which have has had but were all their one been can more will "
    "disk block image backup restore point chain machine volume snapshot "
    "config server client kernel module network service request response "
    "error warning info debug user group system process thread memory cache "
    "buffer file directory path mount device partition sector extent offset "
    "length checksum index record table column value key entry version "
    "update install remove start stop enable disable timeout retry connect "
    "listen socket address port host domain cluster node replica primary "
    "secondary journal commit transaction rollback lock unlock queue worker "
    "job task schedule report metric counter gauge alert threshold policy"
).split()

MIB = 1 << 20


def text_table(rng):
    """65536 short phrases indexed by two random bytes."""
    table = []
    for _ in range(65536):
        n = rng.randint(2, 5)
        phrase = " ".join(rng.choice(WORDS) for _ in range(n))
        end = rng.random()
        if end < 0.12:
            phrase += ".\n"
        elif end < 0.20:
            phrase += f" {rng.randint(0, 99999)},"
        table.append((phrase + " ").encode())
    return table


class Source:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.table = text_table(random.Random(seed ^ 0x5EED))

    def random_bytes(self, n):
        return self.rng.randbytes(n)

    def text_bytes(self, n):
        out = bytearray()
        while len(out) < n:
            need = n - len(out)
            # about 22 bytes per phrase; two index bytes per phrase
            idx = memoryview(self.rng.randbytes(max(2, (need // 20 + 2) * 2))).cast("H")
            out += b"".join(map(self.table.__getitem__, idx))
        del out[n:]
        return bytes(out)

    def data(self, kind, n):
        return self.text_bytes(n) if kind == "text" else self.random_bytes(n)


def pick_size(rng, remaining):
    # log-uniform between 4 KiB and 4 MiB
    size = int(2 ** rng.uniform(12, 22))
    return max(1, min(size, remaining))


def write_file(path, src, kind, size):
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(src.data(kind, n))
            left -= n


def fill(root, total, seed):
    src = Source(seed)
    rng = random.Random(seed + 1)
    half = total // 2
    count = 0
    for kind, budget, ext in (("text", half, ".txt"), ("random", total - half, ".bin")):
        left = budget
        while left > 0:
            size = pick_size(rng, left)
            d = os.path.join(root, kind, f"d{rng.randrange(16):02d}", f"s{rng.randrange(8)}")
            os.makedirs(d, exist_ok=True)
            write_file(os.path.join(d, f"f{count:06d}{ext}"), src, kind, size)
            left -= size
            count += 1
    print(f"gendata: wrote {count} files, {total} bytes under {root}")


def all_files(root):
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name != "lost+found":
                out.append(os.path.join(d, name))
    return out


def mutate(root, fraction, seed):
    src = Source(seed)
    rng = random.Random(seed + 1)
    files = [f for f in all_files(root) if os.path.getsize(f) > 0]
    if not files:
        sys.exit("gendata: no files to change")
    k = max(1, round(len(files) * fraction))
    chosen = rng.sample(files, k)
    written = 0
    stats = {"overwritten": 0, "appended": 0, "replaced": 0, "deleted": 0}
    for i, path in enumerate(chosen):
        kind = "text" if path.endswith(".txt") else "random"
        size = os.path.getsize(path)
        roll = rng.random()
        if i % 50 == 49:
            os.unlink(path)
            stats["deleted"] += 1
        elif roll < 0.70:
            n = max(1, min(size, int(size * rng.uniform(0.1, 0.6))))
            off = rng.randrange(0, size - n + 1)
            with open(path, "r+b") as f:
                f.seek(off)
                f.write(src.data(kind, n))
            written += n
            stats["overwritten"] += 1
        elif roll < 0.85:
            n = max(4096, size // 4)
            with open(path, "ab") as f:
                f.write(src.data(kind, n))
            written += n
            stats["appended"] += 1
        else:
            n = pick_size(rng, 1 << 40)
            tmp = path + ".new"
            write_file(tmp, src, kind, n)
            os.replace(tmp, path)
            written += n
            stats["replaced"] += 1
    desc = ", ".join(f"{v} {k}" for k, v in stats.items())
    print(f"gendata: changed {k} of {len(files)} files ({desc}), {written} bytes written")


def parse_size(text):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B").removesuffix("I")
    num = t.rstrip("KMG")
    return int(float(num) * units[t[len(num):]])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fill")
    f.add_argument("dir")
    f.add_argument("--bytes", required=True, type=parse_size)
    f.add_argument("--seed", type=int, default=1)
    m = sub.add_parser("mutate")
    m.add_argument("dir")
    m.add_argument("--fraction", type=float, required=True)
    m.add_argument("--seed", type=int, default=2)
    args = p.parse_args(argv)
    if args.cmd == "fill":
        fill(args.dir, args.bytes, args.seed)
    else:
        mutate(args.dir, args.fraction, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
