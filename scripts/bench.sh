#!/usr/bin/env bash
# cbtfs benchmark: ingest and read-back performance on a generated disk image.
#
#   scripts/bench.sh [--size SIZE] [--fill PERCENT] [--workdir DIR] [--json FILE] [--keep]
#
# Makes an ext4 disk image (default 1G) filled to about 60 % with files of
# mixed sizes, half compressible text-like data and half random bytes, made
# from a fixed seed. Then measures:
#   - a full ingest                                 (--checkpoint c1)
#   - an incremental ingest with a change map after changing ~2 % of the files
#   - an ingest without a map (full scan) after changing another ~2 %
#   - the repository size after each
#   - mount start to first byte read, sequential reads of the restore points'
#     images through the mount (cold caches and warm), and the mount's peak RSS
# The page cache is dropped before every ingest and every cold read, so the
# source image is read from disk. Change maps come from comparing the image
# with a copy of its previous state at 4 KiB granularity (not timed).
#
# Prints a markdown table on stdout; --json FILE also writes the numbers as
# JSON. Needs root (loop mounts, dropping caches). Installs missing tools
# with apt-get.
#
#   --size SIZE     image size, e.g. 1G, 4G, 1536M (default 1G, at least 1G
#                   for published numbers; smaller sizes are allowed for trials)
#   --fill PERCENT  share of the image filled with file data (default 60)
#   --workdir DIR   work in DIR (created if needed, kept afterwards) instead of
#                   a fresh temporary directory that is removed at the end
#   --json FILE     also write the results as JSON to FILE
#   --keep          keep the temporary work directory

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SIZE_ARG=1G
FILL=60
WORKDIR=
JSON_OUT=
KEEP=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --size) SIZE_ARG=${2:?--size needs a value}; shift 2 ;;
        --size=*) SIZE_ARG=${1#*=}; shift ;;
        --fill) FILL=${2:?--fill needs a value}; shift 2 ;;
        --fill=*) FILL=${1#*=}; shift ;;
        --workdir) WORKDIR=${2:?--workdir needs a directory}; shift 2 ;;
        --workdir=*) WORKDIR=${1#*=}; shift ;;
        --json) JSON_OUT=${2:?--json needs a file}; shift 2 ;;
        --json=*) JSON_OUT=${1#*=}; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

SIZE=$(numfmt --from=iec "${SIZE_ARG%iB}" 2>/dev/null) || die "bad --size: $SIZE_ARG"
[[ $SIZE -ge $((64 << 20)) ]] || die "--size must be at least 64M"
[[ $SIZE -ge $((1 << 30)) ]] || warn "image smaller than 1 GiB: numbers are for trying the script out only"
[[ $FILL =~ ^[0-9]+$ && $FILL -ge 1 && $FILL -le 85 ]] || die "--fill must be a whole percentage between 1 and 85"
if [[ -n $JSON_OUT ]]; then
    JSON_OUT=$(realpath -m "$JSON_OUT")
fi

MACHINE=bench
DISK=disk
CHANGE_FRACTION=0.02

install_cleanup_trap

# ------------------------------------------------------------------------ helpers

RESULTS=()    # key<TAB>label<TAB>value<TAB>unit, in table order

# result KEY LABEL VALUE UNIT
result() {
    RESULTS+=("$1"$'\t'"$2"$'\t'"$3"$'\t'"$4")
}

# measure CMD...: runs CMD, sets M_SECS (wall clock) and M_RSS_KB (peak RSS).
M_SECS=0
M_RSS_KB=0
measure() {
    local tf=$W/time.out t0 rc=0
    t0=$(now)
    if [[ -x /usr/bin/time ]]; then
        /usr/bin/time -f '%M' -o "$tf" "$@" || rc=$?
        M_SECS=$(elapsed "$t0")
        M_RSS_KB=$(tail -n 1 "$tf")
    else
        local pid hwm=0 v
        "$@" &
        pid=$!
        while kill -0 "$pid" 2>/dev/null; do
            v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
            [[ -n $v && $v -gt $hwm ]] && hwm=$v
            sleep 0.05
        done
        wait "$pid" || rc=$?
        M_SECS=$(elapsed "$t0")
        M_RSS_KB=$hwm
    fi
    return "$rc"
}

repo_bytes() {
    dir_bytes "$REPO"
}

map_bytes() {
    python3 -c 'import json, sys; print(sum(e["length"] for e in json.load(open(sys.argv[1]))))' "$1"
}

# timed_read FILE: reads FILE sequentially with dd, prints the seconds taken.
timed_read() {
    local t0
    t0=$(now)
    dd if="$1" of=/dev/null bs=1M status=none
    elapsed "$t0"
}

# ------------------------------------------------------------------------ machine
section "Machine"
CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
CPU_MODEL=${CPU_MODEL:-$(uname -m)}
NPROC=$(nproc)
MEM_BYTES=$(( $(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) * 1024 ))
KERNEL=$(uname -r)
OS_NAME=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}" || true)
echo "cpus:   $NPROC x $CPU_MODEL"
echo "memory: $(human_bytes "$MEM_BYTES")"
echo "kernel: $KERNEL${OS_NAME:+ ($OS_NAME)}"

# ------------------------------------------------------------------------ setup
section "Preparing"
require_root
ensure_deps mkfs.ext4 fusermount3 losetup mount mountpoint python3 cmp dd pgrep numfmt:coreutils \
    /usr/bin/time:time
build_cbtfs
CBTFS_VERSION=$("$CBTFS" --version 2>/dev/null || echo "cbtfs (unknown version)")
info "binary: $CBTFS ($CBTFS_VERSION)"
GIT_REV=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo none)

if [[ -n $WORKDIR ]]; then
    mkdir -p "$WORKDIR"
    W=$(cd "$WORKDIR" && pwd)
    [[ -z $(ls -A "$W") ]] || die "work dir $W is not empty"
else
    W=$(mktemp -d "${TMPDIR:-/tmp}/cbtfs-bench.XXXXXX")
    [[ $KEEP -eq 1 ]] || register_dir "$W"
fi
info "work dir: $W ($(df -h --output=avail "$W" | tail -n 1 | tr -d ' ') free)"

IMG=$W/disk.img
BASE=$W/previous.img
REPO=$W/repo
FS=$W/fs
MNT=$W/mnt
GENDATA=$SCRIPT_LIB/gendata.py
CHANGEMAP=$SCRIPT_LIB/changemap.py

need=$((SIZE * 4))
avail=$(df --output=avail -B1 "$W" | tail -n 1)
[[ $avail -ge $need ]] || die "need about $(human_bytes "$need") free in $W, have $(human_bytes "$avail")"

# ------------------------------------------------------------------------ image
section "Making a $(human_bytes "$SIZE") ext4 image, ${FILL}% full"
truncate -s "$SIZE" "$IMG"
mkfs.ext4 -q -F -L bench -U 6a3c2b9e-0d4f-4c1e-9b7a-5e8f1d2c3b4a \
    -E lazy_itable_init=0,lazy_journal_init=0,hash_seed=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 "$IMG"
loop_mount "$IMG" "$FS"
t0=$(now)
python3 "$GENDATA" fill "$FS" --bytes $((SIZE * FILL / 100)) --seed 1
loop_umount "$FS"
info "generated in $(elapsed "$t0") s"
IMG_ALLOC=$(allocated_bytes "$IMG")
info "image: $(human_bytes "$SIZE") logical, $(human_bytes "$IMG_ALLOC") allocated"
result image_mib "Image size (logical)" "$(mib "$SIZE")" MiB
result image_allocated_mib "Image data allocated" "$(mib "$IMG_ALLOC")" MiB

# ------------------------------------------------------------------------ full
section "Full ingest"
run "$CBTFS" init "$REPO"
cp --sparse=always "$IMG" "$BASE"
drop_caches
show_cmd "$CBTFS" ingest "$REPO" "$MACHINE" --disk "$DISK=$IMG" --checkpoint c1
measure "$CBTFS" ingest "$REPO" "$MACHINE" --disk "$DISK=$IMG" --checkpoint c1
FULL_SECS=$M_SECS
REPO_FULL=$(repo_bytes)
info "full ingest: $FULL_SECS s, peak RSS $(kib_to_mib "$M_RSS_KB") MiB, repository $(human_bytes "$REPO_FULL")"
result full_ingest_seconds "Full ingest time" "$FULL_SECS" s
result full_ingest_mbps_logical "Full ingest throughput (logical size / time)" "$(mbps "$SIZE" "$FULL_SECS")" MB/s
result full_ingest_mbps_allocated "Full ingest throughput (allocated data / time)" "$(mbps "$IMG_ALLOC" "$FULL_SECS")" MB/s
result full_ingest_peak_rss_mib "Full ingest peak RSS" "$(kib_to_mib "$M_RSS_KB")" MiB
result repo_mib_after_full "Repository size after full" "$(mib "$REPO_FULL")" MiB

# ------------------------------------------------------------------------ incremental with map
section "Incremental ingest with a change map"
loop_mount "$IMG" "$FS"
python3 "$GENDATA" mutate "$FS" --fraction "$CHANGE_FRACTION" --seed 2
loop_umount "$FS"
python3 "$CHANGEMAP" "$BASE" "$IMG" --stats >"$W/changes-c2.json"
MAP_BYTES=$(map_bytes "$W/changes-c2.json")
cp --sparse=always "$IMG" "$BASE"
drop_caches
show_cmd "$CBTFS" ingest "$REPO" "$MACHINE" --disk "$DISK=$IMG" --changes "$DISK=$W/changes-c2.json" --since c1 --checkpoint c2
measure "$CBTFS" ingest "$REPO" "$MACHINE" --disk "$DISK=$IMG" \
    --changes "$DISK=$W/changes-c2.json" --since c1 --checkpoint c2
INC_SECS=$M_SECS
REPO_INC=$(repo_bytes)
info "incremental ingest: $INC_SECS s, peak RSS $(kib_to_mib "$M_RSS_KB") MiB, repository $(human_bytes "$REPO_INC")"
result change1_map_mib "Change 1: blocks in the change map (~2% of files changed)" "$(mib "$MAP_BYTES")" MiB
result incr_map_seconds "Incremental ingest with map, time" "$INC_SECS" s
result incr_map_peak_rss_mib "Incremental ingest with map, peak RSS" "$(kib_to_mib "$M_RSS_KB")" MiB
result repo_mib_after_incr_map "Repository size after incremental (map)" "$(mib "$REPO_INC")" MiB

# ------------------------------------------------------------------------ incremental by full scan
section "Incremental ingest without a map (full scan)"
loop_mount "$IMG" "$FS"
python3 "$GENDATA" mutate "$FS" --fraction "$CHANGE_FRACTION" --seed 3
loop_umount "$FS"
python3 "$CHANGEMAP" "$BASE" "$IMG" --stats >"$W/changes-c3.json"
MAP2_BYTES=$(map_bytes "$W/changes-c3.json")
drop_caches
show_cmd "$CBTFS" ingest "$REPO" "$MACHINE" --disk "$DISK=$IMG" --since c2 --checkpoint c3
measure "$CBTFS" ingest "$REPO" "$MACHINE" --disk "$DISK=$IMG" --since c2 --checkpoint c3
SCAN_SECS=$M_SECS
REPO_SCAN=$(repo_bytes)
info "full-scan ingest: $SCAN_SECS s, peak RSS $(kib_to_mib "$M_RSS_KB") MiB, repository $(human_bytes "$REPO_SCAN")"
result change2_changed_mib "Change 2: blocks changed (~2% of files, not given to cbtfs)" "$(mib "$MAP2_BYTES")" MiB
result incr_scan_seconds "Incremental ingest by full scan (no map), time" "$SCAN_SECS" s
result incr_scan_mbps_logical "Incremental ingest by full scan, throughput (logical)" "$(mbps "$SIZE" "$SCAN_SECS")" MB/s
result incr_scan_peak_rss_mib "Incremental ingest by full scan, peak RSS" "$(kib_to_mib "$M_RSS_KB")" MiB
result repo_mib_after_incr_scan "Repository size after incremental (scan)" "$(mib "$REPO_SCAN")" MiB

# ------------------------------------------------------------------------ mount
section "Reading through the mount"
mkdir -p "$MNT"
register_fuse_mount "$MNT"

# Time from starting the mount to the first byte of the newest image.
drop_caches
t0=$(now)
"$CBTFS" mount "$REPO" "$MNT" &
MOUNT_PID=$!
register_pid "$MOUNT_PID"
first_ok=0
for ((i = 0; i < 2000; i++)); do
    if dd if="$MNT/$MACHINE/latest/$DISK.img" of=/dev/null bs=4096 count=1 status=none 2>/dev/null; then
        first_ok=1
        break
    fi
    kill -0 "$MOUNT_PID" 2>/dev/null || break
    sleep 0.005
done
FIRST_MS=$(awk -v s="$(elapsed "$t0")" 'BEGIN { printf "%.0f", s * 1000 }')
[[ $first_ok -eq 1 ]] || die "could not read $MNT/$MACHINE/latest/$DISK.img within 10 s of starting the mount"
info "first byte after $FIRST_MS ms"
stop_cbtfs_mount "$MNT" || die "cbtfs mount did not exit cleanly"
result mount_first_byte_ms "Mount start to first byte read" "$FIRST_MS" ms

# Sequential reads. Each mount runs under /usr/bin/time for its peak RSS; the
# cold read of point 1 gets a fresh mount so that nothing cached inside cbtfs
# from reading the latest point helps it.
drop_caches
start_cbtfs_mount "$REPO" "$MNT" /usr/bin/time -f '%M' -o "$W/mount1-time.out"
mapfile -t POINTS < <(find "$MNT/$MACHINE" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
[[ ${#POINTS[@]} -eq 3 ]] || die "expected 3 restore points under $MNT/$MACHINE, found ${#POINTS[@]}: ${POINTS[*]}"
LATEST=$MNT/$MACHINE/latest/$DISK.img
FIRST=$MNT/$MACHINE/${POINTS[0]}/$DISK.img
[[ $(file_bytes "$LATEST") -eq $SIZE ]] || die "$LATEST is $(file_bytes "$LATEST") bytes, expected $SIZE"

s=$(timed_read "$LATEST")
info "latest, cold: $s s"
result read_cold_latest_mbps "Sequential read, latest point (chain of 3), cold" "$(mbps "$SIZE" "$s")" MB/s
s=$(timed_read "$LATEST")
info "latest, warm: $s s"
result read_warm_latest_mbps "Sequential read, latest point, warm" "$(mbps "$SIZE" "$s")" MB/s
cmp "$LATEST" "$IMG" || die "latest image read through the mount differs from the disk image"
ok "latest image read through the mount equals the disk image"
stop_cbtfs_mount "$MNT" || die "cbtfs mount did not exit cleanly"

drop_caches
start_cbtfs_mount "$REPO" "$MNT" /usr/bin/time -f '%M' -o "$W/mount2-time.out"
s=$(timed_read "$FIRST")
info "point 1 (full), cold: $s s"
result read_cold_first_mbps "Sequential read, point 1 (full), cold" "$(mbps "$SIZE" "$s")" MB/s
stop_cbtfs_mount "$MNT" || die "cbtfs mount did not exit cleanly"

MOUNT_RSS_KB=$(cat "$W/mount1-time.out" "$W/mount2-time.out" | awk '/^[0-9]+$/ && $1 > m { m = $1 } END { print m + 0 }')
result mount_peak_rss_mib "Mount peak RSS" "$(kib_to_mib "$MOUNT_RSS_KB")" MiB

# ------------------------------------------------------------------------ report
section "Results"
TABLE=$W/results.tsv
printf '%s\n' "${RESULTS[@]}" >"$TABLE"
{
    echo
    echo "$CBTFS_VERSION (git $GIT_REV); $NPROC x $CPU_MODEL, $(human_bytes "$MEM_BYTES") RAM, Linux $KERNEL"
    echo "Image $(human_bytes "$SIZE"), ext4, ${FILL}% filled (half text-like, half random); MB = 10^6 bytes."
    [[ $CACHES_DROPPED == true ]] || echo "Page cache could not be dropped: cold numbers are warm."
    echo
    echo "| Metric | Value | Unit |"
    echo "| --- | ---: | --- |"
    while IFS=$'\t' read -r _key label value unit; do
        echo "| $label | $value | $unit |"
    done <"$TABLE"
}

if [[ -n $JSON_OUT ]]; then
    B_VERSION=$CBTFS_VERSION B_GIT=$GIT_REV B_NPROC=$NPROC B_CPU=$CPU_MODEL B_MEM=$MEM_BYTES \
    B_KERNEL=$KERNEL B_OS=$OS_NAME B_SIZE=$SIZE B_FILL=$FILL B_FRACTION=$CHANGE_FRACTION \
    B_DROPPED=$CACHES_DROPPED python3 - "$TABLE" "$JSON_OUT" <<'EOF'
import json, os, sys
e = os.environ
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
def num(v):
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v
out = {
    "tool": "cbtfs",
    "version": e["B_VERSION"],
    "git": e["B_GIT"],
    "machine": {
        "nproc": int(e["B_NPROC"]),
        "cpu_model": e["B_CPU"],
        "memory_bytes": int(e["B_MEM"]),
        "kernel": e["B_KERNEL"],
        "os": e["B_OS"],
    },
    "params": {
        "image_bytes": int(e["B_SIZE"]),
        "fill_percent": int(e["B_FILL"]),
        "change_fraction_of_files": float(e["B_FRACTION"]),
        "caches_dropped": e["B_DROPPED"] == "true",
    },
    "results": {k: {"label": label, "value": num(v), "unit": unit} for k, label, v, unit in rows},
}
with open(sys.argv[2], "w") as f:
    json.dump(out, f, indent=2)
    f.write("\n")
EOF
    info "JSON written to $JSON_OUT"
fi
