#!/usr/bin/env python3
"""Helpers of scripts/bench-retention.sh: the chain's changes, restic's
snapshot list, and the markdown table.

    retention_report.py change IMAGE --point K --map FILE [--seed S]
        Overwrites 1 to 4 extents of 4 to 32 KiB of IMAGE, at random 4 KiB-
        aligned offsets, with random bytes, fsyncs it, and writes a change
        map listing exactly those extents to FILE. Prints the bytes
        changed. The same seed and point give the same change.

    retention_report.py snapshots FILE
        Reads the output of `restic snapshots --json` and prints the
        snapshot ids, oldest first, one a line.

    retention_report.py gc-summary FILE
        Reads the output of `cbtfs gc --json` and prints one line: garbage
        found, packs rewritten or removed, packs written, bytes reclaimed.

    retention_report.py report VALUES --header FILE --notes FILE
                               [--labels K=V,...] [--markdown FILE]
        VALUES is a tab-separated file of `key<TAB>column<TAB>value` lines
        (column: cbtfs, restic or borg). Prints the header lines, one
        markdown table (Metric | Unit | cbtfs | restic | borg) with the rows
        defined here, and the note lines; also writes them to --markdown.
"""

import argparse
import json
import os
import sys

from chainbuild import tiny_change  # same directory: the same kind of change

KIB4 = 4096
COLS = ("cbtfs", "restic", "borg")

# The four retention operations: (key, title). {N}, {K} and {F} are
# replaced by the labels.
SCENARIOS = [
    ("oldest_all", "Forget the oldest of {N} points, then reclaim all garbage"),
    ("oldest_def", "Forget the oldest of {N} points, then reclaim with default thresholds"),
    ("half_all", "Keep the newest {K} of {N} points ({F} forgotten), then reclaim all garbage"),
    ("half_def", "Keep the newest {K} of {N} points ({F} forgotten), then reclaim with default thresholds"),
]

SCENARIO_ROWS = [
    ("forget_s", "Forget step (cbtfs forget / restic forget / borg delete or prune), time", "s"),
    ("reclaim_s", "Reclaim step (cbtfs gc / restic prune / borg compact), time", "s"),
    ("total_s", "Both steps, time", "s"),
    ("reclaim_s_per_gib", "Reclaim step, time per GiB of repository", "s/GiB"),
    ("written_proc", "Both steps, bytes written by the tool's processes", "MiB"),
    ("written_dev", "Both steps, bytes written to the device", "MiB"),
    ("rss", "Peak RSS", "MiB"),
    ("repo_before", "Repository before", "MiB"),
    ("repo_after", "Repository after", "MiB"),
    ("freed", "Space freed", "MiB"),
]

# key, label, unit; None marks a section break
ROWS = [
    ("§", "Building the chain: {N} points of a {S} disk", None),
    ("chain_full_s", "Full backup (point 1), time", "s"),
    ("chain_inc_mean_s", "Incremental backup, mean of {N1}", "s"),
    ("chain_total_s", "All {N} backups", "s"),
    ("chain_repo", "Repository after {N} points", "MiB"),
]
for _sc, _title in SCENARIOS:
    ROWS.append(("§", _title, None))
    ROWS += [(f"{_sc}_{k}", label, unit) for k, label, unit in SCENARIO_ROWS]


def change(image, point, seed, mapfile):
    size = os.path.getsize(image)
    blocks = size // KIB4
    fd = os.open(image, os.O_RDWR)
    try:
        extents = tiny_change(fd, blocks, seed, point)
        os.fsync(fd)
    finally:
        os.close(fd)
    with open(mapfile, "w") as m:
        json.dump(extents, m)
    print(sum(e["length"] for e in extents))


def snapshots(path):
    snaps = json.load(open(path)) or []
    for s in sorted(snaps, key=lambda s: s["time"]):
        print(s["id"])


def human(b):
    b = float(b)
    for u in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or u == "TiB":
            return f"{b:.0f} {u}" if u == "B" else f"{b:.1f} {u}"
        b /= 1024


def gc_summary(path):
    r = json.load(open(path))
    print(f"{human(r['garbage_bytes'])} of garbage, {r['packs_removed']} pack(s) rewritten or removed, "
          f"{r['packs_written']} written, {human(r['bytes_reclaimed'])} reclaimed")


def fmt(v, unit):
    if isinstance(v, str):
        return v
    if unit == "s":
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if unit == "s/GiB":
        return f"{v:.2f}" if v < 100 else f"{v:,.0f}"
    if unit == "MiB":
        if v != 0 and abs(v) < 1:
            return f"{v:.3f}"
        return f"{v:,.1f}"
    return f"{v:,.1f}"


def report(args):
    val = {}
    for line in open(args.values):
        line = line.rstrip("\n")
        if not line:
            continue
        key, col, v = line.split("\t", 2)
        try:
            val[(key, col)] = float(v)
        except ValueError:
            val[(key, col)] = v
    labels = {}
    for kv in filter(None, (args.labels or "").split(",")):
        k, _, v = kv.partition("=")
        labels[k] = v
    md = [line.rstrip("\n") for line in open(args.header)]
    md.append("")
    md.append("| Metric | Unit | " + " | ".join(COLS) + " |")
    md.append("| --- | --- |" + " ---: |" * len(COLS))
    pending = None  # a section title, printed once a row of it has a value
    for key, label, unit in ROWS:
        label = label.format(**labels)
        if key == "§":
            pending = f"| **{label}** | |" + " |" * len(COLS)
            continue
        if not any((key, c) in val for c in COLS):
            continue
        if pending:
            md.append(pending)
            pending = None
        cells = [fmt(val[(key, c)], unit) if (key, c) in val else "n/a" for c in COLS]
        md.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    md.append("")
    md += [line.rstrip("\n") for line in open(args.notes)]
    text = "\n".join(md) + "\n"
    sys.stdout.write(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("change")
    c.add_argument("image")
    c.add_argument("--point", type=int, required=True)
    c.add_argument("--map", required=True)
    c.add_argument("--seed", type=int, default=8)
    s = sub.add_parser("snapshots")
    s.add_argument("file")
    g = sub.add_parser("gc-summary")
    g.add_argument("file")
    r = sub.add_parser("report")
    r.add_argument("values")
    r.add_argument("--header", required=True)
    r.add_argument("--notes", required=True)
    r.add_argument("--labels")
    r.add_argument("--markdown")
    args = p.parse_args(argv)
    if args.cmd == "change":
        change(args.image, args.point, args.seed, args.map)
    elif args.cmd == "snapshots":
        snapshots(args.file)
    elif args.cmd == "gc-summary":
        gc_summary(args.file)
    else:
        report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
