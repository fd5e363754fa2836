#!/usr/bin/env bash
# cbtfs against its peers: restic, borg and a qcow2 backing chain, on the
# same generated disk image and the same changes.
#
#   scripts/bench-peers.sh [--size SIZE] [--fill PERCENT] [--depths A,B]
#                          [--depth-size SIZE] [--workdir DIR] [--keep]
#                          [--json FILE] [--markdown FILE]
#
# Workload (deterministic, scripts/lib/gendata.py): a raw disk image (default
# 2 GiB) with ext4 filled to about 60 % with mixed files, half text-like and
# compressible, half random; then two incrementals, each changing ~2 % of
# the files (overwrites, appends, replacements, deletions). Change maps come
# from comparing each state with the previous one at 4 KiB granularity
# (scripts/lib/changemap.py, not timed).
#
# Every tool backs up the same three states of the same file:
#   cbtfs   full, then incrementals with the change maps; and, in a copy of
#           the repository taken after the full, the same incrementals
#           without maps (full scans)
#   restic  `restic backup disk.img` three times (restic 0.14 always
#           encrypts; password "bench"; default compression "auto")
#   borg    `borg create --compression lz4` three times, `borg init -e none`
#   qcow2   full: `qemu-img convert -O qcow2`; incremental: an overlay on the
#           raw state rebased onto the previous qcow2 (`qemu-img rebase`),
#           which stores only the clusters that differ. `qemu-img convert -B`
#           is timed too, but it copies all allocated data, not a difference.
# restic, borg and qcow2 read the whole image for an incremental ("scans");
# none of them uses the change maps. Every ingest starts with the page cache
# dropped and is timed up to a following `sync`. The full ingest is then
# repeated twice more, the tools in turn, each into a fresh repository; the
# table has the median of the three. After each cbtfs full ingest, its packs
# are written once more with dd (direct I/O, fsync): the time the disk alone
# needs for those bytes, the floor of that ingest.
#
# Reads of the newest point go through each tool's own mount: `cbtfs mount`,
# `restic mount`, `borg mount`, and for the qcow2 chain a read-only FUSE
# export by qemu-storage-daemon (no NBD needed). The "FUSE ceiling" is a
# trivial in-memory FUSE file of the same size (examples/fuse_ceiling.rs,
# served by cbtfs's own FUSE setup); a dd from a tmpfs copy is the non-FUSE
# reference.
# For each: mount start to first byte, sequential read cold (caches dropped,
# fresh mount; three times for cbtfs and the ceiling: the median) and warm (second read), fio random 4 KiB reads for 10 s
# on a fresh mount, the mount's peak RSS. The image read back is compared
# with the source (cmp).
#
# Chain depth: a separate 256 MiB disk gets a full and then tiny
# incrementals by map (1-4 extents of 4-32 KiB each) up to depths A and B
# (default 100 and 1000); the newest point is read cold at depth 1, A and B,
# and point B/2 at depth B. The machine's speed drifts from minute to
# minute, so the ratio goals are also measured in turn: cbtfs and the
# ceiling read alternately, and depth 1 (a copy kept) read alternately with
# depth B's newest point and with its point B/2, five pairs each; their
# verdicts use the median of the pairs' ratios. A 1 TiB sparse disk with 4 MiB of data checks
# the cost of a no-change incremental, with an empty map and without a map.
#
# Prints the machine, progress, and one markdown table with PASS/FAIL
# against the goals. Needs root; installs restic, borgbackup, fio,
# qemu-utils, python3-pyfuse3 (or python3-llfuse) and time with apt-get
# when missing.
#
#   --size SIZE       image size (default 2G; e.g. 512M for a quick trial)
#   --fill PERCENT    share of the image filled with files (default 60)
#   --depths A,B      chain depths to measure besides 1 (default 100,1000)
#   --depth-size SIZE disk size of the chain-depth test (default 256M)
#   --settle SECONDS  wait after each drop of the page cache (default 5 where
#                     the hypervisor takes back free memory, else 0; see
#                     drop_caches in lib/common.sh)
#   --workdir DIR     work in DIR (created if needed, must be empty, kept)
#   --keep            keep the temporary work directory
#   --json FILE       also write the results as JSON
#   --markdown FILE   also write the table (with header and notes) to FILE

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SIZE_ARG=2G
FILL=60
DEPTHS=100,1000
DEPTH_SIZE_ARG=256M
WORKDIR=
KEEP=0
JSON_OUT=
MD_OUT=
while [[ $# -gt 0 ]]; do
    case $1 in
        --size) SIZE_ARG=${2:?--size needs a value}; shift 2 ;;
        --size=*) SIZE_ARG=${1#*=}; shift ;;
        --fill) FILL=${2:?--fill needs a value}; shift 2 ;;
        --fill=*) FILL=${1#*=}; shift ;;
        --depths) DEPTHS=${2:?--depths needs a value}; shift 2 ;;
        --depths=*) DEPTHS=${1#*=}; shift ;;
        --depth-size) DEPTH_SIZE_ARG=${2:?--depth-size needs a value}; shift 2 ;;
        --depth-size=*) DEPTH_SIZE_ARG=${1#*=}; shift ;;
        --settle) DROP_SETTLE=${2:?--settle needs a value}; shift 2 ;;
        --settle=*) DROP_SETTLE=${1#*=}; shift ;;
        --workdir) WORKDIR=${2:?--workdir needs a directory}; shift 2 ;;
        --workdir=*) WORKDIR=${1#*=}; shift ;;
        --keep) KEEP=1; shift ;;
        --json) JSON_OUT=${2:?--json needs a file}; shift 2 ;;
        --json=*) JSON_OUT=${1#*=}; shift ;;
        --markdown) MD_OUT=${2:?--markdown needs a file}; shift 2 ;;
        --markdown=*) MD_OUT=${1#*=}; shift ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

SIZE=$(numfmt --from=iec "${SIZE_ARG%iB}" 2>/dev/null) || die "bad --size: $SIZE_ARG"
[[ $SIZE -ge $((64 << 20)) && $((SIZE % (1 << 20))) -eq 0 ]] \
    || die "--size must be a whole number of MiB, at least 64M"
DEPTH_SIZE=$(numfmt --from=iec "${DEPTH_SIZE_ARG%iB}" 2>/dev/null) || die "bad --depth-size: $DEPTH_SIZE_ARG"
[[ $DEPTH_SIZE -ge $((16 << 20)) && $((DEPTH_SIZE % (1 << 20))) -eq 0 ]] \
    || die "--depth-size must be a whole number of MiB, at least 16M"
[[ $DROP_SETTLE =~ ^[0-9]+$ ]] || die "--settle must be a whole number of seconds"
[[ $FILL =~ ^[0-9]+$ && $FILL -ge 1 && $FILL -le 85 ]] || die "--fill must be a whole percentage between 1 and 85"
[[ $DEPTHS =~ ^([0-9]+),([0-9]+)$ ]] || die "--depths must be A,B (e.g. 100,1000)"
DEPTH_A=${BASH_REMATCH[1]}
DEPTH_B=${BASH_REMATCH[2]}
[[ $DEPTH_A -gt 1 && $DEPTH_B -gt $DEPTH_A ]] || die "--depths needs 1 < A < B"
DEPTH_MID=$((DEPTH_B / 2))
[[ -z $JSON_OUT ]] || JSON_OUT=$(realpath -m "$JSON_OUT")
[[ -z $MD_OUT ]] || MD_OUT=$(realpath -m "$MD_OUT")

MACHINE=bench
DISK=disk
CHANGE_FRACTION=0.02
SPARSE_SIZE=$((1 << 40))
SPARSE_DATA_MIB=4
FULL_ROUNDS=3             # full ingests per tool, in turn; the median is reported
READ_TIMEOUT=900          # seconds allowed for one sequential read of an image
FIRST_BYTE_TIMEOUT=120    # seconds allowed from mount start to the first byte
SYS_PY=/usr/bin/python3   # Debian's interpreter, which python3-pyfuse3/llfuse belong to

install_cleanup_trap
trap peers_cleanup EXIT
BENCH_T0=$(now)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# CPU time the hypervisor gave to others while this guest wanted it (the
# "steal" column of /proc/stat, in clock ticks): on a shared host, the
# figures move with it.
steal_ticks() { awk '$1 == "cpu" { print $9; exit }' /proc/stat; }
# steal_secs_since TICKS [DECIMALS]: seconds stolen since steal_ticks said TICKS.
steal_secs_since() {
    awk -v a="$1" -v b="$(steal_ticks)" -v hz="$(getconf CLK_TCK)" -v d="${2:-2}" \
        'BEGIN { printf "%.*f", d, (b - a) / hz }'
}
STEAL_START=$(steal_ticks)

# ------------------------------------------------------------------------ helpers

# val KEY COLUMN VALUE: one figure for the report (COLUMN: cbtfs, restic,
# borg, qcow2, ceiling).
val() {
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$VALUES"
}

note() {
    NOTES+=("$*")
}
NOTES=()
if free_page_reporting; then
    fpr="- The hypervisor takes back free guest memory (virtio balloon free page reporting) about 2 s after it is freed, and touching such a page again costs a fault in the host: right after a drop of the page cache, where this was found, the in-memory FUSE file read 2 GiB in 0.9 s (five times of six), and three to ten seconds later in 1.4-2.6 s (docs/performance.md)."
    if [[ $DROP_SETTLE -gt 0 ]]; then
        note "$fpr Every drop is followed by a $DROP_SETTLE s wait, so that each timed command starts with the freed memory handed back, whatever its speed."
    else
        note "$fpr No wait after the drops here (--settle 0): a command that ends quickly pays less per page than a slow one."
    fi
fi

# drop_caches (lib/common.sh) also runs after each first-byte probe (a
# 4 KiB read), so that the timed read starts cold and from the start of the
# file, as a restore does. Left in the page cache, the probe's pages put the
# kernel's read-ahead 16 KiB off its own grid for the whole file, which makes
# every FUSE reply copy markedly dearer: the in-memory ceiling read in
# 0.73 s instead of 0.56 s, and cbtfs in 1.4-1.6 s instead of 1.25 s.

ms() {
    awk -v s="$1" 'BEGIN { printf "%.0f", s * 1000 }'
}

max_of() {
    printf '%s\n' "$@" | awk 'NF && $1 > m { m = $1 } END { print m + 0 }'
}

# median NUMBER...
median() {
    printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

sum_of() {
    printf '%s\n' "$@" | awk 'NF { s += $1 } END { printf "%.3f", s }'
}

# Repository size as du -sb reports it (apparent bytes).
repo_size() {
    du -sb "$@" | awk '{ s += $1 } END { print s }'
}

map_bytes() {
    python3 -c 'import json, sys; print(sum(e["length"] for e in json.load(open(sys.argv[1]))))' "$1"
}

map_extents() {
    python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$1"
}

# full_rates COLUMN: MB/s of the full ingest just timed.
full_rates() {
    val full_mbps_alloc "$1" "$(mbps "$ALLOC" "$T_SECS")"
    val full_mbps_logical "$1" "$(mbps "$SIZE" "$T_SECS")"
}

# timed LOGNAME CMD...: drops the page cache, runs CMD (output to a log
# file) under /usr/bin/time, then sync. Sets T_SECS (wall clock, including
# the sync) and T_RSS_KB. Dies with the log's tail when CMD fails.
T_SECS=0
T_RSS_KB=0
timed() {
    local name=$1 log tf t0 st0 rc=0
    shift
    log=$LOGS/$name.log
    tf=$LOGS/$name.time
    drop_caches
    show_cmd "$@"
    t0=$(now)
    st0=$(steal_ticks)
    /usr/bin/time -f '%M' -o "$tf" "$@" >"$log" 2>&1 || rc=$?
    sync
    T_SECS=$(elapsed "$t0")
    T_STEAL=$(steal_secs_since "$st0")
    if [[ $rc -ne 0 ]]; then
        tail -n 20 "$log" >&2
        die "$name failed (exit $rc); log: $log"
    fi
    T_RSS_KB=$(tail -n 1 "$tf")
    info "$name: $T_SECS s, peak RSS $(kib_to_mib "$T_RSS_KB") MiB, $T_STEAL s of CPU stolen"
}

# write_floor REPO: what the disk alone needs to write what a cbtfs full
# ingest wrote into REPO. The repository's packs, read into the page cache
# first, are written once more to a new file with direct I/O and an fsync,
# in 8 MiB writes. Sets WF_SECS and WF_BYTES. The ingest writes the same
# bytes, while reading its source from the same disk: when its time is near
# this floor, the disk bounds it.
WF_SECS=0
WF_BYTES=0
write_floor() {
    local repo=$1 out=$W/write-floor.tmp t0
    WF_BYTES=$(cat "$repo"/packs/*.pack | wc -c)
    sync
    t0=$(now)
    cat "$repo"/packs/*.pack | dd of="$out" bs=8M iflag=fullblock oflag=direct conv=fsync status=none
    WF_SECS=$(elapsed "$t0")
    rm -f "$out"
    info "disk write floor: $(human_bytes "$WF_BYTES") in $WF_SECS s ($(mbps "$WF_BYTES" "$WF_SECS") MB/s)"
}

# cbtfs_no_warning LOGNAME: an ingest that should have used its map must
# not have fallen back to a full scan.
cbtfs_no_warning() {
    if grep -qi '^warning' "$LOGS/$1.log"; then
        cat "$LOGS/$1.log" >&2
        die "$1: cbtfs warned (map not trusted?); the figure would not be a map incremental"
    fi
}

# ---- FUSE servers (cbtfs, restic, borg, qemu-storage-daemon, the ceiling)

SRV_PID=        # pid of /usr/bin/time wrapping the server
SRV_MNT=
SRV_RSS_FILE=
SRV_SEQ=0

# srv_start NAME MOUNTPOINT CMD...: starts a FUSE server in the background
# under /usr/bin/time (for its peak RSS).
srv_start() {
    local name=$1 mnt=$2
    shift 2
    SRV_SEQ=$((SRV_SEQ + 1))
    SRV_MNT=$mnt
    SRV_RSS_FILE=$LOGS/mount-$name-$SRV_SEQ.time
    register_fuse_mount "$mnt"
    show_cmd "$@"
    /usr/bin/time -f '%M' -o "$SRV_RSS_FILE" "$@" >"$LOGS/mount-$name-$SRV_SEQ.log" 2>&1 &
    SRV_PID=$!
    register_pid "$SRV_PID"
}

# wait_first_byte FILE: waits until 4096 bytes of FILE can be read; prints
# nothing, returns 1 on timeout or when the server has exited.
wait_first_byte() {
    local f=$1 deadline n
    deadline=$(awk -v t="$(now)" -v d="$FIRST_BYTE_TIMEOUT" 'BEGIN { printf "%d", t + d }')
    while :; do
        n=$(timeout -k 1 10 head -c 4096 "$f" 2>/dev/null | wc -c) || n=0
        [[ $n -eq 4096 ]] && return 0
        kill -0 "$SRV_PID" 2>/dev/null || return 1
        [[ $(date +%s) -lt $deadline ]] || return 1
        sleep 0.005
    done
}

# srv_stop: unmounts, waits for the server to exit (terminating it if it
# does not exit by itself, as qemu-storage-daemon does not), and sets
# SRV_RSS_KB to its peak RSS.
SRV_RSS_KB=0
srv_stop() {
    local i child
    # -c: no canonicalisation, so that a server that stopped answering
    # cannot hang the umount itself (it would stat the mount point)
    timeout -k 1 10 umount -c "$SRV_MNT" 2>/dev/null \
        || timeout -k 1 10 fusermount3 -u "$SRV_MNT" 2>/dev/null \
        || timeout -k 1 10 umount -c -l "$SRV_MNT" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$SRV_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SRV_PID" 2>/dev/null; then
        for child in $(pgrep -P "$SRV_PID" 2>/dev/null || true); do
            kill -TERM "$child" 2>/dev/null || true
        done
        for ((i = 0; i < 50; i++)); do
            kill -0 "$SRV_PID" 2>/dev/null || break
            sleep 0.1
        done
    fi
    if kill -0 "$SRV_PID" 2>/dev/null; then
        warn "the FUSE server (pid $SRV_PID) does not exit; killing it"
        for child in $(pgrep -P "$SRV_PID" 2>/dev/null || true); do
            kill -KILL "$child" 2>/dev/null || true
        done
    fi
    wait "$SRV_PID" 2>/dev/null || true
    SRV_RSS_KB=$(awk '/^[0-9]+$/ { v = $1 } END { print v + 0 }' "$SRV_RSS_FILE" 2>/dev/null || echo 0)
    SRV_PID=
}

# On exit, stop a running FUSE server first (with timeouts, so that a
# server that stopped answering cannot hang the generic cleanup), then the
# generic cleanup of common.sh.
peers_cleanup() {
    local rc=$?
    if [[ -n $SRV_PID ]] && kill -0 "$SRV_PID" 2>/dev/null; then
        srv_stop 2>/dev/null || true
    fi
    (exit "$rc")
    cleanup
}

# timed_read FILE: sequential read with dd; prints seconds, or nothing when
# it fails or takes longer than READ_TIMEOUT.
timed_read() {
    local t0
    t0=$(now)
    if timeout "$READ_TIMEOUT" dd if="$1" of=/dev/null bs=1M status=none; then
        elapsed "$t0"
    fi
}

# fio_iops FILE BYTES: random 4 KiB reads for 10 s; prints IOPS or nothing.
fio_iops() {
    local out=$LOGS/fio-$SRV_SEQ.json
    [[ $HAVE_FIO -eq 1 ]] || return 0
    if fio --name=randread --filename="$1" --readonly --rw=randread --bs=4k --direct=0 \
        --ioengine=psync --size="$2" --runtime=10 --time_based --numjobs=1 \
        --output-format=json --output="$out" >"$LOGS/fio-$SRV_SEQ.log" 2>&1; then
        python3 -c 'import json, sys; print(round(json.load(open(sys.argv[1]))["jobs"][0]["read"]["iops"]))' "$out"
    fi
}

COLD_DESC=
declare -A RA_KB=()   # read-ahead (KiB) of each tool's FUSE mount
SET_RA_KB=            # when set, mount_suite sets the mount's read-ahead to this

# cold_once NAME FILE BYTES CMD...: one cold sequential read of FILE
# (BYTES long) on a fresh mount of CMD with caches dropped; sets COLD_MBPS,
# empty if the mount or the read failed.
COLD_MBPS=
cold_once() {
    local name=$1 file=$2 bytes=$3 s
    shift 3
    COLD_MBPS=
    drop_caches
    srv_start "$name" "$MNT" "$@"
    if wait_first_byte "$file"; then
        sleep 0.2   # as in mount_suite: cbtfs raises its read-ahead on the side
        drop_caches
        s=$(timed_read "$file")
        [[ -z $s ]] || COLD_MBPS=$(mbps "$bytes" "$s")
    fi
    srv_stop
}

# alternate_cold KEY LABEL_A FILE_A LABEL_B FILE_B BYTES -- CMD_A... -- CMD_B...:
# PAIRS cold reads of A and B in turn, so that both see the same moments of
# a machine whose speed drifts from minute to minute; records KEY as the
# median of A's rate in % of B's over the pairs.
PAIRS=5
alternate_cold() {
    local key=$1 la=$2 fa=$3 lb=$4 fb=$5 bytes=$6 r a b pcts=() cmd_a=() cmd_b=()
    shift 7
    while [[ $1 != -- ]]; do cmd_a+=("$1"); shift; done
    shift
    cmd_b=("$@")
    for ((r = 1; r <= PAIRS; r++)); do
        cold_once "$la-pair" "$fa" "$bytes" "${cmd_a[@]}"
        a=$COLD_MBPS
        cold_once "$lb-pair" "$fb" "$bytes" "${cmd_b[@]}"
        b=$COLD_MBPS
        if [[ -z $a || -z $b ]]; then
            warn "pair $r of $la and $lb: a read failed; pair skipped"
            continue
        fi
        pcts+=("$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f", 100 * a / b }')")
        info "pair $r: $la $a MB/s, $lb $b MB/s ($la at ${pcts[-1]}%)"
    done
    [[ ${#pcts[@]} -gt 0 ]] || return 0
    val "$key" cbtfs "$(median "${pcts[@]}")"
    note "- $la against $lb, read cold in turn ($PAIRS pairs, fresh mounts): $la at ${pcts[*]} % of $lb; the verdict uses the median."
}

# Cold sequential reads are repeated for the fast mounts, each on a fresh
# mount with caches dropped: the median counts.
declare -A COLD_REPS=([cbtfs]=3 [ceiling]=3)

# mount_suite COLUMN EXPECTED FILE-TO-READ MOUNTPOINT CMD...: the read
# figures of one tool. Fresh mounts (COLD_REPS of them): first byte and a
# cold read; on the first also a warm read and a cmp with EXPECTED ("-" to
# skip). Then one more fresh mount for fio. Records the figures.
mount_suite() {
    local col=$1 expected=$2 file=$3 mnt=$4 t0 s r reps iops ra_knob
    local fbs=() colds=() rss=()
    shift 4
    reps=${COLD_REPS[$col]:-1}
    section "Reads: $col"
    for ((r = 0; r < reps; r++)); do
        drop_caches
        t0=$(now)
        srv_start "$col" "$mnt" "$@"
        if ! wait_first_byte "$file"; then
            tail -n 20 "$LOGS/mount-$col-$SRV_SEQ.log" >&2 || true
            srv_stop
            warn "$col: no byte of $file within $FIRST_BYTE_TIMEOUT s of starting the mount; skipping its reads"
            note "- $col: the mount did not serve the image within $FIRST_BYTE_TIMEOUT s."
            return 0
        fi
        fbs+=("$(ms "$(elapsed "$t0")")")
        ra_knob=/sys/class/bdi/$(stat -c '%Hd:%Ld' "$file")/read_ahead_kb
        if [[ -n $SET_RA_KB ]]; then
            echo "$SET_RA_KB" >"$ra_knob" 2>/dev/null || warn "$col: cannot set read-ahead via $ra_knob"
        fi
        sleep 0.2   # let a server finish its own set-up (cbtfs raises its read-ahead on the side)
        RA_KB[$col]=$(cat "$ra_knob" 2>/dev/null || echo "?")
        [[ $(file_bytes "$file") -eq $SIZE ]] || warn "$col: $file is $(file_bytes "$file") bytes, expected $SIZE"
        drop_caches
        s=$(timed_read "$file")
        if [[ -z $s ]]; then
            srv_stop
            warn "$col: sequential read failed or took over $READ_TIMEOUT s"
            note "- $col: the sequential read failed or took over $READ_TIMEOUT s."
            return 0
        fi
        colds+=("$(mbps "$SIZE" "$s")")
        info "$col: first byte after ${fbs[r]} ms; cold read $s s (${colds[r]} MB/s)"
        if [[ $r -eq 0 ]]; then
            s=$(timed_read "$file")
            if [[ -n $s ]]; then
                info "$col: warm read $s s ($(mbps "$SIZE" "$s") MB/s)"
                val read_warm "$col" "$(mbps "$SIZE" "$s")"
            fi
            if [[ $expected != - ]]; then
                if cmp -s "$file" "$expected"; then
                    ok "$col: the newest image read through the mount equals the source"
                else
                    warn "$col: the newest image read through the mount DIFFERS from the source"
                    note "- $col: the image read through its mount differs from the source image."
                fi
            fi
        fi
        srv_stop
        rss+=("$SRV_RSS_KB")
    done
    val first_byte_ms "$col" "$(median "${fbs[@]}")"
    val read_cold "$col" "$(median "${colds[@]}")"
    [[ $reps -eq 1 ]] || COLD_DESC+="${COLD_DESC:+; }$col ${colds[*]}"

    drop_caches
    srv_start "$col" "$mnt" "$@"
    if wait_first_byte "$file"; then
        iops=$(fio_iops "$file" "$SIZE")
        if [[ -n $iops ]]; then
            info "$col: random 4 KiB reads: $iops IOPS"
            val randread_iops "$col" "$iops"
        elif [[ $HAVE_FIO -eq 1 ]]; then
            warn "$col: fio failed (log: $LOGS/fio-$SRV_SEQ.log)"
        fi
    fi
    srv_stop
    rss+=("$SRV_RSS_KB")
    val mount_rss "$col" "$(kib_to_mib "$(max_of "${rss[@]}")")"
}

# ------------------------------------------------------------------------ machine
require_root
setup_workdir cbtfs-peers
describe_machine

need=$((SIZE * 8 + DEPTH_SIZE * 3 + (1 << 30)))
avail=$(df --output=avail -B1 "$W" | tail -n 1)
[[ $avail -ge $need ]] || die "need about $(human_bytes "$need") free in $W, have $(human_bytes "$avail")"
[[ $SIZE -ge $((2 << 30)) ]] || warn "image smaller than 2 GiB: numbers are for trying the script out"

# ------------------------------------------------------------------------ tools
section "Tools"
ensure_deps mkfs.ext4 fusermount3 losetup mount mountpoint python3 cmp dd pgrep \
    numfmt:coreutils timeout:coreutils /usr/bin/time:time \
    restic borg:borgbackup qemu-img:qemu-utils qemu-storage-daemon:qemu-utils
[[ -x $SYS_PY ]] || apt_install python3
HAVE_FIO=1
command -v fio >/dev/null 2>&1 || apt_install fio || true
command -v fio >/dev/null 2>&1 || { HAVE_FIO=0; warn "fio is not available: no random-read figures"; }
# borg mount needs pyfuse3 or llfuse for Debian's python
FUSE_PY=
for mod in pyfuse3 llfuse; do
    if "$SYS_PY" -c "import $mod" 2>/dev/null; then FUSE_PY=$mod; break; fi
done
if [[ -z $FUSE_PY ]]; then
    apt_install python3-pyfuse3 || apt_install python3-llfuse || true
    for mod in pyfuse3 llfuse; do
        if "$SYS_PY" -c "import $mod" 2>/dev/null; then FUSE_PY=$mod; break; fi
    done
fi
[[ -n $FUSE_PY ]] || warn "neither python3-pyfuse3 nor python3-llfuse works: no borg mount"

build_cbtfs
( cd "$REPO_ROOT" && cargo build --release --quiet --example fuse_ceiling )
CEILING_BIN=$REPO_ROOT/target/release/examples/fuse_ceiling
# Run a private copy, so that a rebuild in the tree during the run changes nothing.
mkdir -p "$W/bin"
cp "$CBTFS" "$W/bin/cbtfs"
CBTFS=$W/bin/cbtfs
CBTFS_VERSION=$("$CBTFS" --version 2>/dev/null || echo "cbtfs (unknown version)")
GIT_REV=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo none)
GIT_DIRTY=$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock 2>/dev/null | head -n 1)
RESTIC_V=$(restic version | awk '{ print $2; exit }')
BORG_V=$(borg --version | awk '{ print $2 }')
QEMU_V=$(qemu-img --version | awk 'NR == 1 { print $3 }')
FIO_V=$( [[ $HAVE_FIO -eq 1 ]] && fio --version || echo none)
info "$CBTFS_VERSION (git $GIT_REV${GIT_DIRTY:+, with uncommitted changes}), restic $RESTIC_V, borg $BORG_V, qemu $QEMU_V, $FIO_V, FUSE for python: ${FUSE_PY:-none}"

export RESTIC_PASSWORD=bench
export RESTIC_CACHE_DIR=$W/restic-cache
export BORG_BASE_DIR=$W/borg-home
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_FUSE_IMPL=${FUSE_PY:-pyfuse3}

# ------------------------------------------------------------------------ workload
section "Workload: $(human_bytes "$SIZE") ext4 image, ${FILL}% full, two changes of ~2% of files"
ST=$W/states
mkdir -p "$ST" "$W/src"
STATE=("$ST/s0.img" "$ST/s1.img" "$ST/s2.img")
SRC=$W/src/disk.img
FS=$W/fs
t0=$(now)
truncate -s "$SIZE" "${STATE[0]}"
mkfs.ext4 -q -F -L bench -U 6a3c2b9e-0d4f-4c1e-9b7a-5e8f1d2c3b4a \
    -E lazy_itable_init=0,lazy_journal_init=0,hash_seed=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0 "${STATE[0]}"
loop_mount "${STATE[0]}" "$FS"
python3 "$SCRIPT_LIB/gendata.py" fill "$FS" --bytes $((SIZE * FILL / 100)) --seed 1
loop_umount "$FS"
for k in 1 2; do
    cp --sparse=always "${STATE[k - 1]}" "${STATE[k]}"
    loop_mount "${STATE[k]}" "$FS"
    python3 "$SCRIPT_LIB/gendata.py" mutate "$FS" --fraction "$CHANGE_FRACTION" --seed $((k + 1))
    loop_umount "$FS"
    python3 "$SCRIPT_LIB/changemap.py" "${STATE[k - 1]}" "${STATE[k]}" --stats >"$W/map$k.json"
done
sync
ALLOC=$(allocated_bytes "${STATE[0]}")
MAP1_B=$(map_bytes "$W/map1.json")
MAP2_B=$(map_bytes "$W/map2.json")
info "workload made in $(elapsed "$t0") s; image $(human_bytes "$SIZE") logical, $(human_bytes "$ALLOC") allocated"

# ------------------------------------------------------------------------ ingest
R_CBTFS=$W/repo-cbtfs
R_SCAN=$W/repo-cbtfs-scan
R_RESTIC=$W/repo-restic
R_BORG=$W/repo-borg
R_QCOW=$W/repo-qcow2
mkdir -p "$R_QCOW"
"$CBTFS" init "$R_CBTFS" >/dev/null
restic init -r "$R_RESTIC" >"$LOGS/restic-init.log" 2>&1 || die "restic init failed"
borg init -e none "$R_BORG" >"$LOGS/borg-init.log" 2>&1 || die "borg init failed"

MAP_RSS=()
SCAN_RSS=()
# Full ingest times of each round, per tool (see FULL_ROUNDS).
declare -A FULL_T=() FULL_STEAL=()
declare -A PEER_SCAN_RSS=()
for k in 0 1 2; do
    n=$((k + 1))
    if [[ $k -eq 0 ]]; then
        section "Ingest: full (state 1 of 3)"
    else
        section "Ingest: incremental $k (state $n of 3)"
    fi
    ln -f "${STATE[k]}" "$SRC"

    # cbtfs
    if [[ $k -eq 0 ]]; then
        timed cbtfs-full "$CBTFS" ingest "$R_CBTFS" "$MACHINE" --disk "$DISK=$SRC" --checkpoint c1
        FULL_T[cbtfs]=" $T_SECS"; FULL_STEAL[cbtfs]=" $T_STEAL"
        val full_s cbtfs "$T_SECS"
        full_rates cbtfs
        val full_rss cbtfs "$(kib_to_mib "$T_RSS_KB")"
        write_floor "$R_CBTFS"
        FULL_WF=" $WF_SECS"
        cp -a "$R_CBTFS" "$R_SCAN"
    else
        timed "cbtfs-inc$k-map" "$CBTFS" ingest "$R_CBTFS" "$MACHINE" --disk "$DISK=$SRC" \
            --changes "$DISK=$W/map$k.json" --since "c$k" --checkpoint "c$n"
        cbtfs_no_warning "cbtfs-inc$k-map"
        val "inc${k}_map_s" cbtfs "$T_SECS"
        MAP_RSS+=("$T_RSS_KB")
        timed "cbtfs-inc$k-scan" "$CBTFS" ingest "$R_SCAN" "$MACHINE" --disk "$DISK=$SRC" \
            --since "c$k" --checkpoint "c$n"
        val "inc${k}_scan_s" cbtfs "$T_SECS"
        SCAN_RSS+=("$T_RSS_KB")
    fi
    repo_key=$([[ $k -eq 0 ]] && echo repo_full || echo "repo_inc$k")
    val "$repo_key" cbtfs "$(mib "$(repo_size "$R_CBTFS")")"

    # restic
    timed "restic-$n" env -C "$W/src" restic -r "$R_RESTIC" backup disk.img
    if [[ $k -eq 0 ]]; then
        FULL_T[restic]=" $T_SECS"; FULL_STEAL[restic]=" $T_STEAL"; val full_s restic "$T_SECS"; full_rates restic; val full_rss restic "$(kib_to_mib "$T_RSS_KB")"
    else
        val "inc${k}_scan_s" restic "$T_SECS"; PEER_SCAN_RSS[restic]+=" $T_RSS_KB"
    fi
    val "$repo_key" restic "$(mib "$(repo_size "$R_RESTIC")")"

    # borg
    timed "borg-$n" env -C "$W/src" borg create --compression lz4 "$R_BORG::p$n" disk.img
    if [[ $k -eq 0 ]]; then
        FULL_T[borg]=" $T_SECS"; FULL_STEAL[borg]=" $T_STEAL"; val full_s borg "$T_SECS"; full_rates borg; val full_rss borg "$(kib_to_mib "$T_RSS_KB")"
    else
        val "inc${k}_scan_s" borg "$T_SECS"; PEER_SCAN_RSS[borg]+=" $T_RSS_KB"
    fi
    val "$repo_key" borg "$(mib "$(repo_size "$R_BORG")")"

    # qcow2 chain
    if [[ $k -eq 0 ]]; then
        timed qcow2-1 qemu-img convert -O qcow2 "$SRC" "$R_QCOW/c1.qcow2"
        FULL_T[qcow2]=" $T_SECS"; FULL_STEAL[qcow2]=" $T_STEAL"; val full_s qcow2 "$T_SECS"; full_rates qcow2; val full_rss qcow2 "$(kib_to_mib "$T_RSS_KB")"
    else
        if [[ $k -eq 1 ]]; then
            # What `qemu-img convert -B` costs; it writes every allocated
            # cluster of the source, not only the changed ones.
            timed qcow2-convert-B env -C "$R_QCOW" qemu-img convert -O qcow2 -B c1.qcow2 -F qcow2 "$SRC" x2.qcow2
            val inc1_convert_b_s qcow2 "$T_SECS"
            CONVERT_B_BYTES=$(stat -c %s "$R_QCOW/x2.qcow2")
            rm -f "$R_QCOW/x2.qcow2"
        fi
        # shellcheck disable=SC2016
        timed "qcow2-$n" env -C "$R_QCOW" sh -c \
            'qemu-img create -q -f qcow2 -b "$1" -F raw "$3" && qemu-img rebase -b "$2" -F qcow2 "$3"' \
            sh "$SRC" "c$k.qcow2" "c$n.qcow2"
        val "inc${k}_scan_s" qcow2 "$T_SECS"; PEER_SCAN_RSS[qcow2]+=" $T_RSS_KB"
    fi
    val "$repo_key" qcow2 "$(mib "$(repo_size "$R_QCOW")")"
done
# Full ingests again, the tools in turn, into fresh repositories: one full
# ingest each is at the mercy of the machine's drift (the same cbtfs took
# 1.5 s in one run and 2.0 s in the next, qcow2 1.2 s and 1.6 s). The
# table and the verdict take the median of all rounds; peak RSS stays that
# of the first.
section "Full ingest: $((FULL_ROUNDS - 1)) more rounds, the tools in turn"
ln -f "${STATE[0]}" "$SRC"
for ((r = 2; r <= FULL_ROUNDS; r++)); do
    X=$W/round
    rm -rf "$X"
    mkdir -p "$X"
    "$CBTFS" init "$X/cbtfs" >/dev/null
    # Each repository goes once timed, so the disk never holds more than one.
    timed "cbtfs-full-r$r" "$CBTFS" ingest "$X/cbtfs" "$MACHINE" --disk "$DISK=$SRC"
    FULL_T[cbtfs]+=" $T_SECS"; FULL_STEAL[cbtfs]+=" $T_STEAL"
    write_floor "$X/cbtfs"
    FULL_WF+=" $WF_SECS"
    rm -rf "$X/cbtfs"
    restic init -r "$X/restic" >"$LOGS/restic-init-r$r.log" 2>&1 || die "restic init failed"
    timed "restic-full-r$r" env -C "$W/src" restic -r "$X/restic" backup disk.img
    FULL_T[restic]+=" $T_SECS"; FULL_STEAL[restic]+=" $T_STEAL"
    rm -rf "$X/restic"
    borg init -e none "$X/borg" >"$LOGS/borg-init-r$r.log" 2>&1 || die "borg init failed"
    timed "borg-full-r$r" env -C "$W/src" borg create --compression lz4 "$X/borg::p1" disk.img
    FULL_T[borg]+=" $T_SECS"; FULL_STEAL[borg]+=" $T_STEAL"
    rm -rf "$X/borg"
    timed "qcow2-full-r$r" qemu-img convert -O qcow2 "$SRC" "$X/c1.qcow2"
    FULL_T[qcow2]+=" $T_SECS"; FULL_STEAL[qcow2]+=" $T_STEAL"
    rm -rf "$X"
done
full_desc= steal_desc=
for t in cbtfs restic borg qcow2; do
    # shellcheck disable=SC2086
    T_SECS=$(median ${FULL_T[$t]})
    val full_s "$t" "$T_SECS"
    full_rates "$t"
    full_desc+="${full_desc:+; }$t${FULL_T[$t]}"
    steal_desc+="${steal_desc:+; }$t${FULL_STEAL[$t]}"
done
note "- Full ingests, the tools in turn ($FULL_ROUNDS rounds, each into a fresh repository with the page cache dropped; seconds): $full_desc. The table and the verdict use the median. CPU time stolen by the hypervisor during each (seconds): $steal_desc."
# shellcheck disable=SC2086
val full_write_floor_s cbtfs "$(median $FULL_WF)"
note "- Disk write floor of each round: the $(human_bytes "$WF_BYTES") of packs a cbtfs full ingest wrote, written again right after it by \`dd oflag=direct conv=fsync\` (8 MiB writes, from the page cache) to a new file (seconds):$FULL_WF. The ingest has to write the same bytes, and reads its source from the same disk meanwhile; the table has the median."

val inc_map_rss cbtfs "$(kib_to_mib "$(max_of "${MAP_RSS[@]}")")"
val inc_scan_rss cbtfs "$(kib_to_mib "$(max_of "${SCAN_RSS[@]}")")"
for t in restic borg qcow2; do
    # shellcheck disable=SC2086
    val inc_scan_rss "$t" "$(kib_to_mib "$(max_of ${PEER_SCAN_RSS[$t]})")"
done
val repo_inc2_scan cbtfs "$(mib "$(repo_size "$R_SCAN")")"
ln -f "${STATE[2]}" "$SRC"
qemu-img compare -q "$R_QCOW/c3.qcow2" "${STATE[2]}" || warn "qcow2 chain's top differs from the source"

# ------------------------------------------------------------------------ reads
MNT=$W/mnt
mkdir -p "$MNT"
NEWEST=${STATE[2]}

section "Reads: tmpfs reference (no FUSE)"
TMPFS=$W/tmpfs
mkdir -p "$TMPFS"
mount -t tmpfs -o size=$((SIZE + (16 << 20))) tmpfs "$TMPFS"
register_loop_mount "$TMPFS"
cp "$NEWEST" "$TMPFS/disk.img"
dd if="$TMPFS/disk.img" of=/dev/null bs=1M status=none
s=$(timed_read "$TMPFS/disk.img")
info "tmpfs: $(mbps "$SIZE" "$s") MB/s"
val read_tmpfs ceiling "$(mbps "$SIZE" "$s")"
umount "$TMPFS"

mount_suite cbtfs "$NEWEST" "$MNT/$MACHINE/latest/$DISK.img" "$MNT" \
    "$CBTFS" mount "$R_CBTFS" "$MNT"
# The ceiling: examples/fuse_ceiling.rs serves one file from memory
# through the same FUSE code and settings as `cbtfs mount` (threads,
# read-ahead), so the gap between the two is cbtfs's own cost.
mount_suite ceiling - "$MNT/image" "$MNT" \
    "$CEILING_BIN" "$MNT" "$SIZE"
# Both figures drift with the machine's load; the goal compares them read
# in turn.
section "Reads: cbtfs and the ceiling in turn"
alternate_cold read_cold_pct cbtfs "$MNT/$MACHINE/latest/$DISK.img" ceiling "$MNT/image" "$SIZE" \
    -- "$CBTFS" mount "$R_CBTFS" "$MNT" -- "$CEILING_BIN" "$MNT" "$SIZE"
CEIL_STATS='{}'
mount_suite restic "$NEWEST" "$MNT/snapshots/latest/disk.img" "$MNT" \
    restic -r "$R_RESTIC" mount "$MNT"
if [[ -n $FUSE_PY ]]; then
    mount_suite borg "$NEWEST" "$MNT/disk.img" "$MNT" \
        borg mount -f "$R_BORG::p3" "$MNT"
fi
QEXP=$W/qcow2-export.img
touch "$QEXP"
mount_suite qcow2 "$NEWEST" "$QEXP" "$QEXP" \
    qemu-storage-daemon \
    --blockdev "{\"driver\":\"qcow2\",\"node-name\":\"top\",\"read-only\":true,\"file\":{\"driver\":\"file\",\"filename\":\"$R_QCOW/c3.qcow2\"}}" \
    --export "type=fuse,id=exp,node-name=top,mountpoint=$QEXP,writable=off"

[[ -z $COLD_DESC ]] || note "- Cold sequential reads repeated on fresh mounts (MB/s): $COLD_DESC; the table has the median."
ra_desc=
for t in cbtfs ceiling restic borg qcow2; do
    [[ -z ${RA_KB[$t]:-} ]] || ra_desc+="${ra_desc:+, }$t ${RA_KB[$t]}"
done
note "- Read-ahead of each FUSE mount (KiB, /sys/class/bdi): $ra_desc. cbtfs raises its own; the ceiling is given the same; the others keep the kernel default."

# ------------------------------------------------------------------------ restore
# Restoring the newest point to a raw file, as after losing the machine:
# `cbtfs export`, `restic restore`, `borg extract --sparse` and
# `qemu-img convert -O raw` of the chain's top, each timed from a dropped
# page cache to a following sync and compared with the source; the tools
# in turn, RESTORE_ROUNDS times, and the median reported.
RESTORE_ROUNDS=3
section "Restore: the newest point to a raw file, $RESTORE_ROUNDS rounds, the tools in turn"
RESTORE=$W/restore
declare -A RESTORE_T=()
restore_one() {
    local r=$1 col=$2 file=$3
    shift 3
    rm -rf "$RESTORE"
    mkdir -p "$RESTORE"
    timed "restore-$col-r$r" "$@"
    if cmp -s "$file" "$NEWEST"; then
        RESTORE_T[$col]+=" $T_SECS"
        if [[ $r -eq 1 ]]; then
            val restore_alloc_mib "$col" "$(kib_to_mib "$(du -k "$file" | cut -f1)")"
        fi
    else
        warn "$col: the restored image differs from the source"
        note "- $col: the image restored to a file differs from the source (round $r)."
    fi
}
for ((r = 1; r <= RESTORE_ROUNDS; r++)); do
    restore_one "$r" cbtfs "$RESTORE/disk.img" "$CBTFS" export "$R_CBTFS" "$MACHINE" latest "$DISK" "$RESTORE/disk.img"
    restore_one "$r" restic "$RESTORE/disk.img" restic -r "$R_RESTIC" restore latest --target "$RESTORE"
    restore_one "$r" borg "$RESTORE/disk.img" env -C "$RESTORE" borg extract --sparse "$R_BORG::p3"
    restore_one "$r" qcow2 "$RESTORE/disk.img" qemu-img convert -O raw "$R_QCOW/c3.qcow2" "$RESTORE/disk.img"
done
rm -rf "$RESTORE"
restore_desc=
for t in cbtfs restic borg qcow2; do
    [[ -n ${RESTORE_T[$t]:-} ]] || continue
    val restore_s "$t" "$(median ${RESTORE_T[$t]})"
    restore_desc+="${restore_desc:+; }$t${RESTORE_T[$t]}"
done
note "- Restore: \`cbtfs export\` (a sparse raw file), \`restic restore\`, \`borg extract --sparse\`, \`qemu-img convert -O raw\` of the chain's top; each from a dropped page cache to a following sync, and compared with the source. $RESTORE_ROUNDS rounds, the tools in turn (seconds): $restore_desc. The table has the median."

# ------------------------------------------------------------------------ chain depth
section "Chain depth: 1, $DEPTH_A and $DEPTH_B points on a $(human_bytes "$DEPTH_SIZE") disk"
D=$W/depth
DREPO=$D/repo
DIMG=$D/disk.img
DMACH=depth
mkdir -p "$D"
python3 "$SCRIPT_LIB/chainbuild.py" make "$DIMG" --bytes "$DEPTH_SIZE" --seed 7
"$CBTFS" init "$DREPO" >/dev/null
timed depth-full "$CBTFS" ingest "$DREPO" "$DMACH" --disk "$DISK=$DIMG" --checkpoint cp-000001
DEPTH_BUILD=$T_SECS

DEPTH_REPS=3
# depth_reads LABEL [MIDPOINT MIDCOPY]: mount start to first byte and cold
# sequential read of the newest point (and of point MIDPOINT) of the depth
# repository; each the median of DEPTH_REPS fresh mounts with caches dropped.
# Sets MID_NAME to the name of point MIDPOINT.
MID_NAME=
depth_reads() {
    local label=$1 mid=${2:-} midcopy=${3:-} t0 s r name fbs=() rates=() mids=()
    local latest=$MNT/$DMACH/latest/$DISK.img
    for ((r = 0; r < DEPTH_REPS; r++)); do
        drop_caches
        t0=$(now)
        srv_start "depth$label" "$MNT" "$CBTFS" mount "$DREPO" "$MNT"
        wait_first_byte "$latest" || die "depth $label: the mount did not serve $latest"
        fbs+=("$(ms "$(elapsed "$t0")")")
        drop_caches
        s=$(timed_read "$latest")
        [[ -n $s ]] || die "depth $label: reading $latest failed"
        rates+=("$(mbps "$DEPTH_SIZE" "$s")")
        if [[ $r -eq 0 ]]; then
            cmp -s "$latest" "$DIMG" || die "depth $label: the newest point differs from the disk"
        fi
        srv_stop
    done
    info "depth $label: first byte after ${fbs[*]} ms; newest point read at ${rates[*]} MB/s (cold)"
    val "depth${label}_first_byte_ms" cbtfs "$(median "${fbs[@]}")"
    val "depth${label}_read" cbtfs "$(median "${rates[@]}")"
    [[ -n $mid ]] || return 0
    for ((r = 0; r < DEPTH_REPS; r++)); do
        drop_caches
        srv_start "depth${label}mid" "$MNT" "$CBTFS" mount "$DREPO" "$MNT"
        wait_first_byte "$latest" || die "depth $label: the mount did not serve $latest"
        name=$(find "$MNT/$DMACH" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort | sed -n "${mid}p")
        [[ -n $name ]] || die "depth $label: no point number $mid"
        drop_caches
        s=$(timed_read "$MNT/$DMACH/$name/$DISK.img")
        [[ -n $s ]] || die "depth $label: reading point $mid failed"
        mids+=("$(mbps "$DEPTH_SIZE" "$s")")
        if [[ $r -eq 0 ]]; then
            cmp -s "$MNT/$DMACH/$name/$DISK.img" "$midcopy" \
                || die "depth $label: point $mid differs from the disk at that depth"
        fi
        srv_stop
    done
    MID_NAME=$name
    info "depth $label: point $mid ($name) read at ${mids[*]} MB/s (cold)"
    val "depth${label}_mid_read" cbtfs "$(median "${mids[@]}")"
}

depth_reads 1
# Kept to read depth 1 and depth B in turn at the end.
cp -a "$DREPO" "$D/repo-depth1"
TIMES=$D/ingest-times.tsv
: >"$TIMES"
t0=$(now)
python3 "$SCRIPT_LIB/chainbuild.py" extend --cbtfs "$CBTFS" --repo "$DREPO" --machine "$DMACH" \
    --disk "$DISK" --image "$DIMG" --from 1 --to "$DEPTH_A" --seed 8 --times "$TIMES" --workdir "$D" \
    --copy-at "$DEPTH_MID" "$D/mid.img"
DEPTH_BUILD=$(sum_of "$DEPTH_BUILD" "$(elapsed "$t0")")
info "depth $DEPTH_A reached: $(python3 "$SCRIPT_LIB/chainbuild.py" stats "$TIMES")"
depth_reads A
t0=$(now)
python3 "$SCRIPT_LIB/chainbuild.py" extend --cbtfs "$CBTFS" --repo "$DREPO" --machine "$DMACH" \
    --disk "$DISK" --image "$DIMG" --from "$DEPTH_A" --to "$DEPTH_B" --seed 8 --times "$TIMES" \
    --workdir "$D" --copy-at "$DEPTH_MID" "$D/mid.img"
DEPTH_BUILD=$(sum_of "$DEPTH_BUILD" "$(elapsed "$t0")")
DSTATS=$(python3 "$SCRIPT_LIB/chainbuild.py" stats "$TIMES")
info "depth $DEPTH_B reached in $DEPTH_BUILD s in all: $DSTATS"
depth_reads B "$DEPTH_MID" "$D/mid.img"
section "Chain depth: depth 1 and depth $DEPTH_B in turn"
alternate_cold depthB_pct "depth-$DEPTH_B" "$MNT/$DMACH/latest/$DISK.img" depth-1 "$MNT/$DMACH/latest/$DISK.img" \
    "$DEPTH_SIZE" -- "$CBTFS" mount "$DREPO" "$MNT" -- "$CBTFS" mount "$D/repo-depth1" "$MNT"
# Point DEPTH_MID, half-way down the chain, against depth 1 in the same way:
# its own medians above were read minutes apart from depth 1's.
section "Chain depth: point $DEPTH_MID of depth $DEPTH_B and depth 1 in turn"
alternate_cold depthB_mid_pct "point-$DEPTH_MID" "$MNT/$DMACH/$MID_NAME/$DISK.img" depth-1 "$MNT/$DMACH/latest/$DISK.img" \
    "$DEPTH_SIZE" -- "$CBTFS" mount "$DREPO" "$MNT" -- "$CBTFS" mount "$D/repo-depth1" "$MNT"
jget() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$DSTATS" "$1"; }
val depth_ingest_median_ms cbtfs "$(jget median_ms)"
val depth_ingest_p95_ms cbtfs "$(jget p95_ms)"
val depth_ingest_max_ms cbtfs "$(jget max_ms)"
val depth_ingest_first100_ms cbtfs "$(jget first100_mean_ms)"
val depth_ingest_last100_ms cbtfs "$(jget last100_mean_ms)"
val depth_build_s cbtfs "$DEPTH_BUILD"
val depthB_repo cbtfs "$(mib "$(repo_size "$DREPO")")"
awk -v b="$DEPTH_BUILD" 'BEGIN { exit !(b > 300) }' \
    && warn "building the depth-$DEPTH_B chain took $DEPTH_BUILD s (over 5 minutes)"

# ------------------------------------------------------------------------ sparse
section "1 TiB sparse disk, $SPARSE_DATA_MIB MiB of data"
SPD=$W/sparse
SP=$SPD/disk.img
SREPO=$SPD/repo
mkdir -p "$SPD"
truncate -s "$SPARSE_SIZE" "$SP"
python3 - "$SP" "$SPARSE_DATA_MIB" <<'EOF'
import os, random, sys
path, mib = sys.argv[1], int(sys.argv[2])
rng = random.Random(11)
size = os.path.getsize(path)
with open(path, "r+b") as f:
    for i in range(mib):
        # spread 1 MiB pieces over the disk, 4 KiB-aligned
        off = (size // mib * i + rng.randrange(0, size // mib - (1 << 20))) // 4096 * 4096
        f.seek(off)
        f.write(rng.randbytes(1 << 20))
EOF
echo '[]' >"$SPD/empty.json"
"$CBTFS" init "$SREPO" >/dev/null
timed sparse-full "$CBTFS" ingest "$SREPO" sparse --disk "$DISK=$SP" --checkpoint s1
val sparse_full_s cbtfs "$T_SECS"
timed sparse-nochange-map "$CBTFS" ingest "$SREPO" sparse --disk "$DISK=$SP" \
    --changes "$DISK=$SPD/empty.json" --since s1 --checkpoint s2
cbtfs_no_warning sparse-nochange-map
val sparse_nochange_map_s cbtfs "$T_SECS"
timed sparse-nochange-scan "$CBTFS" ingest "$SREPO" sparse --disk "$DISK=$SP" --since s2 --checkpoint s3
val sparse_nochange_scan_s cbtfs "$T_SECS"

# Copying the point out of the mount with plain cp: the image reports its
# data as its allocated size and answers SEEK_DATA/SEEK_HOLE, so cp skips
# the holes. Read through, the terabyte of zeros would take many minutes;
# the timeout stops that.
drop_caches
srv_start sparse-mount "$MNT" "$CBTFS" mount "$SREPO" "$MNT"
SPIMG=$MNT/sparse/latest/$DISK.img
if wait_first_byte "$SPIMG"; then
    drop_caches
    t0=$(now)
    if timeout 120 cp "$SPIMG" "$SPD/copy.img"; then
        sync
        val sparse_cp_s cbtfs "$(elapsed "$t0")"
        # Equal to the source, compared over the data of both (both read
        # as zeros elsewhere), and sparse.
        if python3 - "$SP" "$SPD/copy.img" <<'EOF'; then
import os, sys
def extents(fd):
    out, pos, size = [], 0, os.fstat(fd).st_size
    while pos < size:
        try:
            d = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            break
        pos = os.lseek(fd, d, os.SEEK_HOLE)
        out.append((d, pos))
    return out
a, b = (os.open(p, os.O_RDONLY) for p in sys.argv[1:3])
assert os.fstat(a).st_size == os.fstat(b).st_size, "sizes differ"
for d, h in extents(a) + extents(b):
    for off in range(d, h, 1 << 20):
        n = min(1 << 20, h - off)
        assert os.pread(a, n, off) == os.pread(b, n, off), f"bytes differ near {off}"
assert os.fstat(b).st_blocks * 512 < 64 << 20, "the copy is not sparse"
EOF
            ok "sparse: the copy made with cp equals the source and is sparse"
        else
            warn "sparse: the copy made with cp differs from the source or is not sparse"
            note "- Sparse: the copy of the point made with cp differs from the source or is not sparse."
        fi
    else
        warn "sparse: cp of the point out of the mount failed or took over 120 s"
    fi
    rm -f "$SPD/copy.img"
fi
srv_stop
# And with export, which finds the data in the index as the mount does.
timed sparse-export "$CBTFS" export "$SREPO" sparse latest "$DISK" "$SPD/export.img"
val sparse_export_s cbtfs "$T_SECS"
rm -f "$SPD/export.img"

# ------------------------------------------------------------------------ report
section "Results"
TOTAL_SECS=$(elapsed "$BENCH_T0")
note "- Load average (1, 5, 15 min) at the start: $LOAD_START; at the end (this benchmark's own load included): $(cut -d' ' -f1-3 /proc/loadavg). Other work on the machine makes the figures noisy."
STOLEN=$(steal_secs_since "$STEAL_START" 1)
note "- CPU time stolen by the hypervisor during the run (steal in /proc/stat): $STOLEN s, $(awk -v s="$STOLEN" -v t="$TOTAL_SECS" -v n="$NPROC" 'BEGIN { printf "%.1f", 100 * s / (t * n) }') % of the $NPROC cores' time."
META=$W/meta.json
B_CPU=$CPU_MODEL B_NPROC=$NPROC B_MEM=$MEM_BYTES B_KERNEL=$KERNEL B_OS=$OS_NAME B_WFS=$WFS \
B_SIZE=$SIZE B_ALLOC=$ALLOC B_FILL=$FILL B_MAP1=$MAP1_B B_MAP2=$MAP2_B \
B_EXT1=$(map_extents "$W/map1.json") B_EXT2=$(map_extents "$W/map2.json") \
B_VERSION=$CBTFS_VERSION B_GIT=$GIT_REV B_DIRTY=${GIT_DIRTY:+yes} B_RESTIC=$RESTIC_V B_BORG=$BORG_V \
B_QEMU=$QEMU_V B_FIO=$FIO_V B_FUSEPY=$FUSE_PY B_CEIL="$CEIL_STATS" B_DSTATS=$DSTATS \
B_DA=$DEPTH_A B_DB=$DEPTH_B B_DMID=$DEPTH_MID B_DSIZE=$DEPTH_SIZE B_SPMIB=$SPARSE_DATA_MIB \
B_CONVB=${CONVERT_B_BYTES:-0} B_DROPPED=$CACHES_DROPPED B_TOTAL=$TOTAL_SECS \
python3 - "$META" "${NOTES[@]}" <<'EOF'
import json, os, sys
e = os.environ
def hb(b):
    b = float(b)
    for u in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or u == "TiB":
            return f"{b:.0f} {u}" if u == "B" else f"{b:.1f} {u}"
        b /= 1024
ceil = json.loads(e["B_CEIL"] or "{}")
machine = {"nproc": int(e["B_NPROC"]), "cpu_model": e["B_CPU"], "memory_bytes": int(e["B_MEM"]),
           "kernel": e["B_KERNEL"], "os": e["B_OS"], "workdir_fs": e["B_WFS"]}
params = {"image_bytes": int(e["B_SIZE"]), "image_allocated_bytes": int(e["B_ALLOC"]),
          "fill_percent": int(e["B_FILL"]), "change1_map_bytes": int(e["B_MAP1"]),
          "change2_map_bytes": int(e["B_MAP2"]), "depths": [1, int(e["B_DA"]), int(e["B_DB"])],
          "depth_disk_bytes": int(e["B_DSIZE"]), "caches_dropped": e["B_DROPPED"] == "true",
          "versions": {"cbtfs": e["B_VERSION"], "git": e["B_GIT"] + ("+dirty" if e["B_DIRTY"] else ""),
                       "restic": e["B_RESTIC"], "borg": e["B_BORG"], "qemu": e["B_QEMU"],
                       "fio": e["B_FIO"], "python_fuse": e["B_FUSEPY"] or None},
          "total_seconds": float(e["B_TOTAL"])}
header = [
    f"## cbtfs against restic, borg and a qcow2 chain",
    "",
    f"{e['B_VERSION']} (git {params['versions']['git']}), restic {e['B_RESTIC']}, borg {e['B_BORG']}, "
    f"qemu {e['B_QEMU']}, {e['B_FIO']}.",
    f"Machine: {e['B_NPROC']} x {e['B_CPU']}, {hb(e['B_MEM'])} RAM, Linux {e['B_KERNEL']}"
    f"{' (' + e['B_OS'] + ')' if e['B_OS'] else ''}, work dir on {e['B_WFS']}.",
    f"Image: {hb(e['B_SIZE'])} raw, ext4, {e['B_FILL']}% filled with files (half text-like, half random), "
    f"{hb(e['B_ALLOC'])} allocated. Change 1: {hb(e['B_MAP1'])} in {e['B_EXT1']} extents; "
    f"change 2: {hb(e['B_MAP2'])} in {e['B_EXT2']} extents (4 KiB granularity).",
    "MB = 10^6 bytes; MiB = 2^20. Every ingest starts with the page cache dropped and is timed up to a following `sync`.",
]
if e["B_DROPPED"] != "true":
    header.append("**The page cache could not be dropped: cold numbers are warm.**")
cb = int(e["B_CONVB"])
notes = [
    "Notes:",
    "- restic, borg and qcow2 back up the image file as a whole: their incrementals read the whole image "
    "(\"scans\"); none uses the change maps. Their incrementals are in the scan rows.",
    "- restic 0.14 always encrypts (AES-256 + Poly1305, password `bench`); repository format 2 with its default "
    "compression `auto` (zstd). borg: `borg init -e none`, `borg create --compression lz4`, default "
    "(buzhash) chunker.",
    "- qcow2 chain: full by `qemu-img convert -O qcow2`; incremental by an overlay on the raw state "
    "(`qemu-img create -b STATE -F raw`) rebased onto the previous qcow2 (`qemu-img rebase`), which reads both "
    "and writes only the 64 KiB clusters that differ. `qemu-img convert -B prev` is timed for incremental 1 "
    f"only for reference: it wrote every allocated cluster ({hb(cb)}), not a difference. qcow2 is not compressed.",
    "- Mounts: `cbtfs mount` (newest point via `latest`), `restic mount` (`snapshots/latest`), `borg mount -f "
    "REPO::p3`, and for the qcow2 chain a read-only FUSE export of the top image by qemu-storage-daemon "
    "(no NBD on this kernel). Cold = page cache dropped, a fresh mount, and the page cache dropped again after the first-byte probe (so the read starts cold and on the kernel's read-ahead grid, as a restore reading from the start does); warm = a second read on the same mount. "
    "fio: `--rw=randread --bs=4k --direct=0 --ioengine=psync --runtime=10` over the whole image on a fresh mount.",
]
notes.append(
    "- FUSE ceiling: examples/fuse_ceiling.rs, one file served from memory through the same FUSE setup as "
    "`cbtfs mount` (fuser, one thread per core, 1 MiB read-ahead); what cbtfs reads slower than it is cbtfs's "
    "own cost. The tmpfs row is a plain dd from a tmpfs copy: no FUSE at all.")
ds = json.loads(e["B_DSTATS"])
notes.append(
    f"- Chain depth: {ds['count']} tiny incrementals by map on a {hb(e['B_DSIZE'])} disk "
    f"({hb(ds['bytes_changed'])} changed in all), each timed from process start to exit; mean {ds['mean_ms']} ms. "
    f"Build time = full ingest + all incrementals (the change-making included). Reads are cold, on fresh mounts; each figure is the median of 3.")
notes.append(f"- Sparse: a 1 TiB file with {e['B_SPMIB']} MiB of random data in 1 MiB pieces; the no-change "
             "incremental gets the map `[]` with `--since` the previous checkpoint.")
notes += sys.argv[2:]
notes.append(f"- The whole run took {float(e['B_TOTAL']):.0f} s.")
meta = {"machine": machine, "params": params, "header": header, "notes": notes,
        "labels": {"A": e["B_DA"], "B": e["B_DB"], "M": e["B_DMID"], "S": f"{e['B_SPMIB']} MiB"},
        "extra": {"depth_ingest": ds, "fuse_ceiling": ceil}}
with open(sys.argv[1], "w") as f:
    json.dump(meta, f, indent=2)
EOF
report_args=()
[[ -z $JSON_OUT ]] || report_args+=(--json "$JSON_OUT")
[[ -z $MD_OUT ]] || report_args+=(--markdown "$MD_OUT")
echo
python3 "$SCRIPT_LIB/peers_report.py" "$VALUES" "$META" "${report_args[@]}"
[[ -z $JSON_OUT ]] || info "JSON written to $JSON_OUT"
[[ -z $MD_OUT ]] || info "markdown written to $MD_OUT"
info "bench-peers finished in $TOTAL_SECS s"
