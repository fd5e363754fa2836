#!/usr/bin/env python3
"""Build a cbtfs change map by comparing two disk images.

    changemap.py OLD NEW [--granularity BYTES] [--stats]

Compares OLD and NEW in units of --granularity bytes (default 4096, the
granularity a hypervisor's changed block tracking typically reports) and
writes to stdout the JSON change map that `cbtfs ingest --changes` reads:

    [{"offset": BYTES, "length": BYTES}, ...]

Adjacent changed units are merged into one extent. The extents cover NEW
only: if NEW is longer than OLD, its tail is reported as changed; if NEW is
shorter, nothing past its end is reported. With --stats a one-line summary
goes to stderr.
"""

import argparse
import json
import os
import sys

CHUNK = 8 << 20  # compare this much at a time before looking closer


def parse_size(text):
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B").removesuffix("I")
    num = t.rstrip("KMG")
    return int(num) * units[t[len(num):]]


def changed_extents(old_path, new_path, gran):
    """Yield (offset, length) of changed ranges of NEW, merged, gran-aligned."""
    new_size = os.path.getsize(new_path)
    old_size = os.path.getsize(old_path)
    start = None  # start of the extent being built
    end = 0
    chunk = max(gran, CHUNK - CHUNK % gran)

    def mark(off, length):
        nonlocal start, end
        if start is not None and off == end:
            end = off + length
            return None
        done = (start, end - start) if start is not None else None
        start, end = off, off + length
        return done

    with open(old_path, "rb") as fo, open(new_path, "rb") as fn:
        pos = 0
        while pos < new_size:
            n = fn.read(chunk)
            o = fo.read(chunk) if pos < old_size else b""
            if not n:
                break
            if n != o:
                for i in range(0, len(n), gran):
                    a = n[i:i + gran]
                    if a != o[i:i + gran]:
                        done = mark(pos + i, len(a))
                        if done:
                            yield done
            pos += len(n)
    if start is not None:
        yield (start, end - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", help="previous image")
    p.add_argument("new", help="current image")
    p.add_argument("--granularity", "-g", default="4096",
                   help="comparison unit in bytes (K/M suffixes allowed; default 4096)")
    p.add_argument("--stats", action="store_true",
                   help="print a summary line to stderr")
    args = p.parse_args(argv)
    try:
        gran = parse_size(args.granularity)
    except (KeyError, ValueError):
        p.error(f"bad granularity: {args.granularity}")
    if gran <= 0:
        p.error("granularity must be positive")

    extents = list(changed_extents(args.old, args.new, gran))
    out = sys.stdout
    out.write("[")
    for i, (off, length) in enumerate(extents):
        out.write(",\n " if i else "\n ")
        out.write(json.dumps({"offset": off, "length": length}))
    out.write("\n]\n" if extents else "]\n")
    if args.stats:
        total = sum(length for _, length in extents)
        size = os.path.getsize(args.new)
        pct = 100.0 * total / size if size else 0.0
        print(f"changemap: {len(extents)} extents, {total} bytes changed "
              f"({pct:.2f}% of {size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
