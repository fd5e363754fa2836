#!/usr/bin/env bash
# Retention cost of cbtfs against restic and borg: forgetting restore points
# and reclaiming their space, on the same chain of backups.
#
#   scripts/bench-retention.sh [--points N] [--size SIZE] [--workdir DIR]
#                              [--keep] [--markdown FILE]
#
# Workload (deterministic): a fully allocated raw disk image (default
# 256 MiB; alternating MiB of text-like and random data, made by
# scripts/lib/chainbuild.py make), then N-1 small changes (default N = 100).
# Each change overwrites 1 to 4 extents of 4 to 32 KiB at random 4 KiB-
# aligned offsets and writes a change map of exactly those extents
# (scripts/lib/retention_report.py change). The first state and the state
# after each change are backed up by every tool, so all three repositories
# hold the same N-point chain:
#   cbtfs   a full, then `cbtfs ingest --changes MAP --since PREV` (by map)
#   restic  `restic backup disk.img` (restic 0.14 always encrypts; password
#           "bench"; default compression "auto")
#   borg    `borg create --compression lz4 REPO::pK disk.img`, after
#           `borg init -e none`
# restic and borg read the whole image every time; building the chain is
# timed per tool (page cache warm, process start to exit) for reference.
#
# Then four retention operations, each on a fresh copy of each tool's
# N-point repository (and of its local cache), in two steps:
#   forget   the oldest point: `cbtfs forget REPO vm 1`, `restic forget ID`,
#            `borg delete REPO::p1`; or all but the newest N/2:
#            `cbtfs forget REPO vm --keep-last N/2`, `restic forget
#            --keep-last N/2`, `borg prune --keep-last N/2`
#   reclaim  all garbage: `cbtfs gc --max-garbage 0`, `restic prune
#            --max-unused 0`, `borg compact --threshold 0`; or with each
#            tool's default threshold: `cbtfs gc` (10 %), `restic prune`
#            (5 % unused), `borg compact` (10 %)
# `restic forget --prune` runs restic's two steps in one process; here they
# are two commands, as cbtfs's and borg's are, so that each step is timed.
# Every step starts with the page cache dropped and is timed up to a
# following `sync`. Reported per operation: the time of each step, the
# reclaim step's time per GiB of repository (its size before the
# operation), bytes written, peak RSS, and the repository size before and
# after (`du -sb` of the repository; local caches not included).
#
# Bytes written are counted two ways:
#   processes  write_bytes less cancelled_write_bytes of /proc/PID/io of a
#              shell that runs the step and reads its own counters after
#              reaping it: the kernel adds a reaped child's I/O counters to
#              its parent's, so this is every byte the step's processes
#              wrote towards storage (page-cache pages they dirtied, less
#              those of files deleted before writeback, such as temporary
#              files; SQLite journals and the tools' local caches included;
#              filesystem metadata and journal not)
#   device     sectors written to the work directory's block device
#              (/sys/class/block/DEV/stat) from a sync before the step to
#              a sync after it: includes filesystem metadata and journal,
#              and anything else the machine writes meanwhile (noisy)
#
# Correctness, after every operation: `cbtfs verify` must pass, and a
# `cbtfs mount` must serve the newest point equal to the final image and the
# oldest remaining point equal to the state it was made from; restic
# (`restic dump`) and borg (`borg extract --stdout`) must restore the same
# two points byte for byte; every tool must keep the expected points.
#
# Prints the machine, progress, and one markdown table. Needs root (to drop
# the page cache, and for FUSE); installs restic, borgbackup and time with
# apt-get when missing. With the defaults the whole run takes about 5
# minutes on 2 cores, most of it restic and borg re-reading the image for
# each of the 100 backups; the retention operations take seconds.
#
#   --points N       restore points in the chain (default 100, at least 4)
#   --size SIZE      disk image size (default 256M)
#   --workdir DIR    work in DIR (created if needed, must be empty, kept)
#   --keep           keep the temporary work directory
#   --markdown FILE  also write the table (with header and notes) to FILE

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

POINTS=100
SIZE_ARG=256M
WORKDIR=
KEEP=0
MD_OUT=
while [[ $# -gt 0 ]]; do
    case $1 in
        --points) POINTS=${2:?--points needs a value}; shift 2 ;;
        --points=*) POINTS=${1#*=}; shift ;;
        --size) SIZE_ARG=${2:?--size needs a value}; shift 2 ;;
        --size=*) SIZE_ARG=${1#*=}; shift ;;
        --workdir) WORKDIR=${2:?--workdir needs a directory}; shift 2 ;;
        --workdir=*) WORKDIR=${1#*=}; shift ;;
        --keep) KEEP=1; shift ;;
        --markdown) MD_OUT=${2:?--markdown needs a file}; shift 2 ;;
        --markdown=*) MD_OUT=${1#*=}; shift ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

SIZE=$(numfmt --from=iec "${SIZE_ARG%iB}" 2>/dev/null) || die "bad --size: $SIZE_ARG"
[[ $SIZE -ge $((16 << 20)) && $((SIZE % (1 << 20))) -eq 0 ]] \
    || die "--size must be a whole number of MiB, at least 16M"
[[ $POINTS =~ ^[0-9]+$ && $POINTS -ge 4 ]] || die "--points must be a whole number, at least 4"
KEEP_N=$((POINTS / 2))               # points kept by the keep-last operations
FORGOTTEN_N=$((POINTS - KEEP_N))
HALF_OLDEST=$((POINTS - KEEP_N + 1)) # oldest point left by them
[[ -z $MD_OUT ]] || MD_OUT=$(realpath -m "$MD_OUT")

MACHINE=vm
DISK=disk
SEED=8

install_cleanup_trap
BENCH_T0=$(now)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ------------------------------------------------------------------------ helpers

# val KEY COLUMN VALUE: one figure for the report (COLUMN: cbtfs, restic, borg).
val() {
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$VALUES"
}

NOTES=()
note() {
    NOTES+=("$*")
}

# Repository size as du -sb reports it (apparent bytes).
repo_size() {
    du -sb "$1" | cut -f1
}

ckpt() {
    printf 'cp-%06d' "$1"
}

# Sectors written so far to the work directory's block device, or nothing
# when the device is unknown (tmpfs, overlay, several devices).
DEV_STAT=
dev_sectors() {
    [[ -n $DEV_STAT ]] || return 0
    awk '{ print $7 }' "$DEV_STAT"
}

# step NAME CMD...: one timed step of a retention operation. Drops the
# page cache, runs CMD (stdout to NAME.out, stderr to NAME.err) in a shell
# that reads its own I/O counters after reaping CMD, all under
# /usr/bin/time (for the peak RSS of the tree), then syncs. Sets T_SECS
# (wall clock, sync included), T_RSS_KB, T_WB (bytes the processes wrote)
# and T_DEV (bytes written to the device; empty if unknown). Dies with the
# logs' tails when CMD fails.
T_SECS=0 T_RSS_KB=0 T_WB=0 T_DEV=
step() {
    local name=$1 t0 d0 d1 rc=0
    shift
    local out=$LOGS/$name.out err=$LOGS/$name.err tf=$LOGS/$name.time iof=$LOGS/$name.io
    drop_caches
    d0=$(dev_sectors)
    show_cmd "$@"
    t0=$(now)
    # shellcheck disable=SC2016
    /usr/bin/time -f '%M' -o "$tf" sh -c 'io=$1; shift; "$@"; rc=$?; cat "/proc/$$/io" >"$io"; exit "$rc"' \
        sh "$iof" "$@" >"$out" 2>"$err" || rc=$?
    sync
    T_SECS=$(elapsed "$t0")
    d1=$(dev_sectors)
    if [[ $rc -ne 0 ]]; then
        tail -n 20 "$out" "$err" >&2
        die "$name failed (exit $rc); logs: $out, $err"
    fi
    T_RSS_KB=$(awk '/^[0-9]+$/ { v = $1 } END { print v + 0 }' "$tf")
    # bytes dirtied, less those of files deleted or truncated before writeback
    T_WB=$(awk '$1 == "write_bytes:" { w = $2 } $1 == "cancelled_write_bytes:" { c = $2 }
                END { if (w != "") print w - c }' "$iof")
    [[ -n $T_WB ]] || die "$name: no write_bytes in /proc/PID/io (no per-task I/O accounting in this kernel?)"
    T_DEV=
    local dev_desc=n/a
    if [[ -n $d0 && -n $d1 ]]; then
        T_DEV=$(((d1 - d0) * 512))
        dev_desc=$(human_bytes "$T_DEV")
    fi
    info "$name: $T_SECS s, wrote $(human_bytes "$T_WB") (device: $dev_desc), peak RSS $(kib_to_mib "$T_RSS_KB") MiB"
}

# quiet LOGNAME CMD...: runs CMD with its output in a log; dies with the
# log's tail when it fails.
quiet() {
    local name=$1 rc=0
    shift
    "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then
        tail -n 20 "$LOGS/$name.log" >&2
        die "$name failed (exit $rc): $*; log: $LOGS/$name.log"
    fi
}

# mib3 BYTES: MiB, 3 decimals (the report shows 1 from 1 MiB up).
mib3() {
    awk -v b="$1" 'BEGIN { printf "%.3f", b / 1048576 }'
}

sum_of() {
    printf '%s\n' "$@" | awk 'NF { s += $1 } END { printf "%.3f", s }'
}

mean_of() {
    printf '%s\n' "$@" | awk 'NF { s += $1; n++ } END { printf "%.3f", n ? s / n : 0 }'
}

# ------------------------------------------------------------------------ machine
[[ $(id -u) -eq 0 ]] || die "run as root: the benchmark drops the page cache and mounts FUSE"
setup_workdir cbtfs-retention
describe_machine
if [[ $WDEV == /dev/* ]]; then
    d=$(readlink -f "$WDEV")
    [[ -r /sys/class/block/${d##*/}/stat ]] && DEV_STAT=/sys/class/block/${d##*/}/stat
fi
DEV_NAME=${DEV_STAT:+$(basename "$(dirname "$DEV_STAT")")}
[[ -n $DEV_STAT ]] || warn "no block device statistics for $WDEV: no device write figures"

need=$((SIZE * 10 + (1 << 30)))
avail=$(df --output=avail -B1 "$W" | tail -n 1)
[[ $avail -ge $need ]] || die "need about $(human_bytes "$need") free in $W, have $(human_bytes "$avail")"

# ------------------------------------------------------------------------ tools
section "Tools"
ensure_deps fusermount3 mountpoint python3 cmp pgrep numfmt:coreutils timeout:coreutils \
    /usr/bin/time:time restic borg:borgbackup
borg compact --help >/dev/null 2>&1 || die "borg $(borg --version) has no 'compact' (borg 1.2 or newer needed)"
restic prune --help 2>/dev/null | grep -q -- '--max-unused' \
    || die "restic $(restic version) has no 'prune --max-unused' (restic 0.12 or newer needed)"
build_cbtfs
# Run a private copy, so that a rebuild in the tree during the run changes nothing.
mkdir -p "$W/bin"
cp "$CBTFS" "$W/bin/cbtfs"
CBTFS=$W/bin/cbtfs
CBTFS_VERSION=$("$CBTFS" --version 2>/dev/null || echo "cbtfs (unknown version)")
GIT_REV=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo none)
GIT_DIRTY=$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null | head -n 1)
RESTIC_V=$(restic version | awk '{ print $2; exit }')
BORG_V=$(borg --version | awk '{ print $2 }')
info "$CBTFS_VERSION (git $GIT_REV${GIT_DIRTY:+, with uncommitted changes}), restic $RESTIC_V, borg $BORG_V"

export RESTIC_PASSWORD=bench
export RESTIC_CACHE_DIR=$W/restic-cache
export BORG_BASE_DIR=$W/borg-home
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

# ------------------------------------------------------------------------ chain
section "Chain: $POINTS points of a $(human_bytes "$SIZE") disk, backed up by cbtfs, restic and borg"
SRC_DIR=$W/src
SRC=$SRC_DIR/$DISK.img
ST=$W/states
MAP=$W/change.json
R_CBTFS=$W/repo-cbtfs
R_RESTIC=$W/repo-restic
R_BORG=$W/repo-borg
mkdir -p "$SRC_DIR" "$ST"
python3 "$SCRIPT_LIB/chainbuild.py" make "$SRC" --bytes "$SIZE" --seed 7 >/dev/null
quiet cbtfs-init "$CBTFS" init "$R_CBTFS"
quiet restic-init restic init -r "$R_RESTIC"
quiet borg-init borg init -e none "$R_BORG"

declare -A CHAIN_T=([cbtfs]='' [restic]='' [borg]='')
declare -A CHAIN_FULL=()
CHANGED_BYTES=0
# chain_run TOOL K CMD...: one backup of the chain, timed from start to exit.
chain_run() {
    local tool=$1 k=$2 t0 s rc=0 log=$LOGS/chain-$1.log
    shift 2
    t0=$(now)
    "$@" >"$log" 2>&1 || rc=$?
    s=$(elapsed "$t0")
    if [[ $rc -ne 0 ]]; then
        tail -n 20 "$log" >&2
        die "$tool backup of point $k failed (exit $rc): $*"
    fi
    if [[ $tool == cbtfs ]] && grep -qi 'warning' "$log"; then
        cat "$log" >&2
        die "cbtfs warned at point $k (map not trusted?); the chain would not be one of incrementals by map"
    fi
    if [[ $k -eq 1 ]]; then CHAIN_FULL[$tool]=$s; else CHAIN_T[$tool]+=" $s"; fi
}

t_chain=$(now)
for ((k = 1; k <= POINTS; k++)); do
    if [[ $k -eq 1 ]]; then
        chain_run cbtfs "$k" "$CBTFS" ingest "$R_CBTFS" "$MACHINE" --disk "$DISK=$SRC" --checkpoint "$(ckpt 1)"
    else
        b=$(python3 "$SCRIPT_LIB/retention_report.py" change "$SRC" --point "$k" --seed "$SEED" --map "$MAP")
        CHANGED_BYTES=$((CHANGED_BYTES + b))
        chain_run cbtfs "$k" "$CBTFS" ingest "$R_CBTFS" "$MACHINE" --disk "$DISK=$SRC" \
            --changes "$DISK=$MAP" --since "$(ckpt $((k - 1)))" --checkpoint "$(ckpt "$k")"
    fi
    chain_run restic "$k" env -C "$SRC_DIR" restic -r "$R_RESTIC" backup "$DISK.img"
    chain_run borg "$k" env -C "$SRC_DIR" borg create --compression lz4 "$R_BORG::p$k" "$DISK.img"
    # the states the oldest remaining points must read as
    [[ $k -ne 2 ]] || cp "$SRC" "$ST/p2.img"
    [[ $k -ne $HALF_OLDEST ]] || cp "$SRC" "$ST/p$HALF_OLDEST.img"
    if [[ $((k % 10)) -eq 0 || $k -eq $POINTS ]]; then
        info "point $k of $POINTS backed up by all three ($(elapsed "$t_chain") s so far)"
    fi
done
sync
for t in cbtfs restic borg; do
    # shellcheck disable=SC2086
    inc_mean=$(mean_of ${CHAIN_T[$t]})
    # shellcheck disable=SC2086
    total=$(sum_of "${CHAIN_FULL[$t]}" ${CHAIN_T[$t]})
    val chain_full_s "$t" "${CHAIN_FULL[$t]}"
    val chain_inc_mean_s "$t" "$inc_mean"
    val chain_total_s "$t" "$total"
    info "$t: full ${CHAIN_FULL[$t]} s, incrementals $inc_mean s on average, $total s in all"
done
val chain_repo cbtfs "$(mib "$(repo_size "$R_CBTFS")")"
val chain_repo restic "$(mib "$(repo_size "$R_RESTIC")")"
val chain_repo borg "$(mib "$(repo_size "$R_BORG")")"

restic -r "$R_RESTIC" snapshots --json >"$W/snapshots.json" 2>"$LOGS/restic-snapshots.err" \
    || die "restic snapshots failed"
mapfile -t RESTIC_IDS < <(python3 "$SCRIPT_LIB/retention_report.py" snapshots "$W/snapshots.json")
[[ ${#RESTIC_IDS[@]} -eq $POINTS ]] || die "restic has ${#RESTIC_IDS[@]} snapshots, expected $POINTS"
[[ $(borg list --short "$R_BORG" | wc -l) -eq $POINTS ]] || die "borg does not have $POINTS archives"
CB_STATS=$("$CBTFS" stats "$R_CBTFS" --json)
jfield() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
CB_PACKS=$(jfield "$CB_STATS" pack_count)
CB_PACK_BYTES=$(jfield "$CB_STATS" pack_bytes)
info "chain built in $(elapsed "$t_chain") s; $(human_bytes "$CHANGED_BYTES") changed in $((POINTS - 1)) changes; cbtfs: $CB_PACKS pack(s), $(human_bytes "$CB_PACK_BYTES")"

# ------------------------------------------------------------------------ checks
MNT=$W/mnt
mkdir -p "$MNT"

# check_cbtfs REPO COUNT OLDEST_K: verify, then mount and compare the newest
# and the oldest remaining point with the states they were made from.
check_cbtfs() {
    local repo=$1 count=$2 oldest=$3 i latest=$MNT/$MACHINE/latest/$DISK.img n first
    quiet cbtfs-verify "$CBTFS" verify "$repo"
    start_cbtfs_mount "$repo" "$MNT"
    for ((i = 0; i < 200; i++)); do
        [[ -e $latest ]] && break
        sleep 0.05
    done
    [[ -e $latest ]] || die "cbtfs mount: $latest did not appear"
    n=$(find "$MNT/$MACHINE" -mindepth 1 -maxdepth 1 -type d | wc -l)
    first=$(find "$MNT/$MACHINE" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort | head -n 1)
    [[ $n -eq $count ]] || die "cbtfs: $n points left, expected $count"
    [[ $first == "$(printf '%06d' "$oldest")"-* ]] || die "cbtfs: the oldest point left is $first, expected number $oldest"
    cmp -s "$latest" "$SRC" || die "cbtfs: the newest point differs from the final image"
    cmp -s "$MNT/$MACHINE/$first/$DISK.img" "$ST/p$oldest.img" \
        || die "cbtfs: the oldest point left ($first) differs from state $oldest"
    stop_cbtfs_mount "$MNT" || die "cbtfs mount did not exit cleanly"
}

# check_restic REPO CACHE COUNT OLDEST_K
check_restic() {
    local repo=$1 cache=$2 count=$3 oldest=$4 ids=()
    RESTIC_CACHE_DIR=$cache restic -r "$repo" snapshots --json >"$W/snapshots-after.json" 2>/dev/null \
        || die "restic snapshots failed"
    mapfile -t ids < <(python3 "$SCRIPT_LIB/retention_report.py" snapshots "$W/snapshots-after.json")
    [[ ${#ids[@]} -eq $count ]] || die "restic: ${#ids[@]} snapshots left, expected $count"
    [[ ${ids[0]} == "${RESTIC_IDS[oldest - 1]}" ]] || die "restic: the oldest snapshot left is not point $oldest"
    [[ ${ids[-1]} == "${RESTIC_IDS[-1]}" ]] || die "restic: the newest snapshot is gone"
    # a single file given to `restic backup` is stored at the root
    RESTIC_CACHE_DIR=$cache restic -r "$repo" dump "${ids[-1]}" "/$DISK.img" 2>/dev/null | cmp -s - "$SRC" \
        || die "restic: the newest snapshot does not restore the final image"
    RESTIC_CACHE_DIR=$cache restic -r "$repo" dump "${ids[0]}" "/$DISK.img" 2>/dev/null | cmp -s - "$ST/p$oldest.img" \
        || die "restic: the oldest snapshot left does not restore state $oldest"
}

# check_borg REPO HOME COUNT OLDEST_K
check_borg() {
    local repo=$1 home=$2 count=$3 oldest=$4 names=()
    mapfile -t names < <(BORG_BASE_DIR=$home borg list --short "$repo")
    [[ ${#names[@]} -eq $count ]] || die "borg: ${#names[@]} archives left, expected $count"
    [[ ${names[0]} == "p$oldest" && ${names[-1]} == "p$POINTS" ]] \
        || die "borg: archives left are ${names[0]}..${names[-1]}, expected p$oldest..p$POINTS"
    BORG_BASE_DIR=$home borg extract --stdout "$repo::p$POINTS" "$DISK.img" | cmp -s - "$SRC" \
        || die "borg: p$POINTS does not restore the final image"
    BORG_BASE_DIR=$home borg extract --stdout "$repo::p$oldest" "$DISK.img" | cmp -s - "$ST/p$oldest.img" \
        || die "borg: p$oldest does not restore state $oldest"
}

# ------------------------------------------------------------------------ retention
# measure SCENARIO TOOL OP MODE: one retention operation (OP: oldest or
# half; MODE: all or def) of TOOL on a fresh copy of its repository; records
# its figures and checks the result.
measure() {
    local sc=$1 tool=$2 op=$3 mode=$4
    local d=$W/op-$sc-$tool repo envs=() forget=() reclaim=() before after count oldest
    local f_s f_wb f_dev f_rss
    mkdir -p "$d"
    repo=$d/repo
    case $tool in
        cbtfs) cp -a "$R_CBTFS" "$repo" ;;
        restic) cp -a "$R_RESTIC" "$repo"; cp -a "$RESTIC_CACHE_DIR" "$d/cache"
                envs=(env "RESTIC_CACHE_DIR=$d/cache") ;;
        borg) cp -a "$R_BORG" "$repo"; cp -a "$BORG_BASE_DIR" "$d/home"
              envs=(env "BORG_BASE_DIR=$d/home") ;;
    esac
    case $tool/$op in
        cbtfs/oldest) forget=("$CBTFS" forget "$repo" "$MACHINE" 1 --json) ;;
        cbtfs/half) forget=("$CBTFS" forget "$repo" "$MACHINE" --keep-last "$KEEP_N" --json) ;;
        restic/oldest) forget=(restic -r "$repo" forget "${RESTIC_IDS[0]}") ;;
        restic/half) forget=(restic -r "$repo" forget --keep-last "$KEEP_N") ;;
        borg/oldest) forget=(borg delete "$repo::p1") ;;
        borg/half) forget=(borg prune --keep-last "$KEEP_N" "$repo") ;;
    esac
    case $tool/$mode in
        cbtfs/all) reclaim=("$CBTFS" gc "$repo" --max-garbage 0 --json) ;;
        cbtfs/def) reclaim=("$CBTFS" gc "$repo" --json) ;;
        restic/all) reclaim=(restic -r "$repo" prune --max-unused 0) ;;
        restic/def) reclaim=(restic -r "$repo" prune) ;;
        borg/all) reclaim=(borg compact --threshold 0 "$repo") ;;
        borg/def) reclaim=(borg compact "$repo") ;;
    esac
    before=$(repo_size "$repo")
    step "$sc-$tool-forget" "${envs[@]}" "${forget[@]}"
    f_s=$T_SECS f_wb=$T_WB f_dev=$T_DEV f_rss=$T_RSS_KB
    step "$sc-$tool-reclaim" "${envs[@]}" "${reclaim[@]}"
    after=$(repo_size "$repo")
    val "${sc}_forget_s" "$tool" "$f_s"
    val "${sc}_reclaim_s" "$tool" "$T_SECS"
    val "${sc}_total_s" "$tool" "$(sum_of "$f_s" "$T_SECS")"
    val "${sc}_reclaim_s_per_gib" "$tool" "$(awk -v s="$T_SECS" -v b="$before" 'BEGIN { printf "%.3f", s / (b / 1073741824) }')"
    val "${sc}_written_proc" "$tool" "$(mib3 $((f_wb + T_WB)))"
    [[ -z $f_dev || -z $T_DEV ]] || val "${sc}_written_dev" "$tool" "$(mib3 $((f_dev + T_DEV)))"
    val "${sc}_rss" "$tool" "$(kib_to_mib $((f_rss > T_RSS_KB ? f_rss : T_RSS_KB)))"
    val "${sc}_repo_before" "$tool" "$(mib3 "$before")"
    val "${sc}_repo_after" "$tool" "$(mib3 "$after")"
    val "${sc}_freed" "$tool" "$(mib3 $((before - after)))"
    case $tool in
        cbtfs)
            CB_GC_DESC+="${CB_GC_DESC:+; }${SC_LABEL[$sc]}: $(python3 "$SCRIPT_LIB/retention_report.py" gc-summary \
                "$LOGS/$sc-$tool-reclaim.out")" ;;
        restic)
            RESTIC_DESC+="${RESTIC_DESC:+; }${SC_LABEL[$sc]}: $({ grep -E '^(to repack|total prune):' "$LOGS/$sc-$tool-reclaim.out" || true; } \
                | sed -E 's/[[:space:]]+/ /g' | paste -sd, - | sed 's/,/, /g')" ;;
    esac
    if [[ $op == oldest ]]; then count=$((POINTS - 1)) oldest=2; else count=$KEEP_N oldest=$HALF_OLDEST; fi
    case $tool in
        cbtfs) check_cbtfs "$repo" "$count" "$oldest" ;;
        restic) check_restic "$repo" "$d/cache" "$count" "$oldest" ;;
        borg) check_borg "$repo" "$d/home" "$count" "$oldest" ;;
    esac
    ok "$sc, $tool: $count points left, newest and oldest restore correctly"
    rm -rf "$d"
}

CB_GC_DESC=
RESTIC_DESC=
declare -A SC_LABEL=(
    [oldest_all]="forget the oldest, reclaim all"
    [oldest_def]="forget the oldest, default threshold"
    [half_all]="keep $KEEP_N, reclaim all"
    [half_def]="keep $KEEP_N, default threshold"
)
for sc in oldest_all oldest_def half_all half_def; do
    op=${sc%_*}
    mode=${sc#*_}
    case $sc in
        oldest_all) section "Forget the oldest point, reclaim all garbage" ;;
        oldest_def) section "Forget the oldest point, reclaim with default thresholds" ;;
        half_all) section "Keep the newest $KEEP_N points, reclaim all garbage" ;;
        half_def) section "Keep the newest $KEEP_N points, reclaim with default thresholds" ;;
    esac
    for tool in cbtfs restic borg; do
        measure "$sc" "$tool" "$op" "$mode"
    done
done

# ------------------------------------------------------------------------ report
section "Results"
TOTAL_SECS=$(elapsed "$BENCH_T0")
HEADER=$W/header.md
NOTES_MD=$W/notes.md
{
    echo "## Retention: cbtfs against restic and borg"
    echo
    echo "$CBTFS_VERSION (git $GIT_REV${GIT_DIRTY:+, with uncommitted changes}), restic $RESTIC_V, borg $BORG_V."
    echo "Machine: $NPROC x $CPU_MODEL, $(human_bytes "$MEM_BYTES") RAM, Linux $KERNEL${OS_NAME:+ ($OS_NAME)}, work dir on $WFS."
    echo "Chain: $POINTS points of a $(human_bytes "$SIZE") raw image, fully allocated (alternating MiB of text-like and random data); $((POINTS - 1)) changes of 1 to 4 extents of 4 to 32 KiB each, $(human_bytes "$CHANGED_BYTES") in all. The same $POINTS image states are backed up by every tool."
    echo "MiB = 2^20 bytes. Every retention step starts with the page cache dropped and is timed up to a following \`sync\`; each operation runs on a fresh copy of the $POINTS-point repository."
    [[ $CACHES_DROPPED == true ]] || echo "**The page cache could not be dropped: the retention steps ran warm.**"
} >"$HEADER"
{
    echo "Notes:"
    echo "- Commands. Forget the oldest: \`cbtfs forget REPO vm 1\`, \`restic forget ID\`, \`borg delete REPO::p1\`. Keep the newest $KEEP_N: \`cbtfs forget REPO vm --keep-last $KEEP_N\`, \`restic forget --keep-last $KEEP_N\`, \`borg prune --keep-last $KEEP_N\`. Reclaim all garbage: \`cbtfs gc --max-garbage 0\`, \`restic prune --max-unused 0\`, \`borg compact --threshold 0\`. Default thresholds: \`cbtfs gc\` (rewrites packs with >= 10 % garbage), \`restic prune\` (tolerates 5 % unused data), \`borg compact\` (compacts segments with > 10 % freeable). \`restic forget --prune\` does restic's two steps in one process; they run as two commands here, like cbtfs's and borg's."
    echo "- Tools: cbtfs stores lz4-compressed 64 KiB blocks, unencrypted, in packs of up to 1 GiB (the defaults; after the chain: $CB_PACKS pack(s), $(human_bytes "$CB_PACK_BYTES")). restic $RESTIC_V always encrypts (password \`bench\`), repository format 2 with compression \`auto\`; it picks its chunker polynomial at random for each repository, so its chunk boundaries and repository sizes differ from run to run. borg: \`borg init -e none\`, \`borg create --compression lz4\`. Building the chain: restic and borg read the whole image for every backup, cbtfs only the mapped blocks; timed from process start to exit with a warm page cache."
    echo "- Bytes written by the tool's processes: \`write_bytes\` of /proc/PID/io, read by a shell that ran the step after reaping it (the kernel adds the counters of reaped children to their parent), summed over both steps, less \`cancelled_write_bytes\` (dirty data of files deleted or truncated before it reached the disk, such as restic's temporary pack files). It counts the page-cache bytes the processes dirtied: pack and segment files, SQLite and index files, and the local caches of restic and borg; not filesystem metadata or journal."
    if [[ -n $DEV_STAT ]]; then
        echo "- Bytes written to the device: sectors written to $DEV_NAME (the work directory's $WFS device) from a \`sync\` before each step to one after it. This includes filesystem metadata and journal, and whatever else the machine wrote meanwhile, so small figures are noisy."
    else
        echo "- Bytes written to the device: not measured (no block device statistics for $WDEV)."
    fi
    echo "- Repository size: \`du -sb\` of the repository directory; the local caches of restic and borg are not counted. Time per GiB: the reclaim step's time divided by the repository's size before the operation. These repositories are small, so fixed costs (start-up, index loading, fsyncs) weigh more than they would per GiB of a large repository."
    [[ -z $CB_GC_DESC ]] || echo "- cbtfs gc reported: $CB_GC_DESC."
    [[ -z $RESTIC_DESC ]] || echo "- restic prune reported: $RESTIC_DESC."
    echo "- Checked after every operation: \`cbtfs verify\` passed; through \`cbtfs mount\`, \`restic dump\` and \`borg extract --stdout\` the newest point equals the final image and the oldest remaining point (2, or $HALF_OLDEST after keeping $KEEP_N) equals the state it was made from; each tool kept exactly the expected points."
    echo "- Load average (1, 5, 15 min) at the start: $LOAD_START; at the end: $(cut -d' ' -f1-3 /proc/loadavg). Other work on the machine makes the figures noisy."
    echo "- The whole run took $(awk -v s="$TOTAL_SECS" 'BEGIN { printf "%.0f", s }') s."
} >"$NOTES_MD"
echo
python3 "$SCRIPT_LIB/retention_report.py" report "$VALUES" --header "$HEADER" --notes "$NOTES_MD" \
    --labels "N=$POINTS,N1=$((POINTS - 1)),K=$KEEP_N,F=$FORGOTTEN_N,S=$(human_bytes "$SIZE")" \
    ${MD_OUT:+--markdown "$MD_OUT"}
[[ -z $MD_OUT ]] || info "markdown written to $MD_OUT"
info "bench-retention finished in $TOTAL_SECS s"
