# shellcheck shell=bash
# Shared helpers for scripts/demo.sh and scripts/bench.sh.
#
# Source this file after `set -euo pipefail`. It provides:
#   - REPO_ROOT, CBTFS (path of the release binary), SCRIPT_LIB
#   - section/info/warn/die output helpers
#   - ensure_deps: installs missing system tools with apt-get
#   - build_cbtfs: cargo build --release
#   - a cleanup registry (loop mounts, FUSE mounts, background processes,
#     work dirs) run by an EXIT trap installed with install_cleanup_trap
#   - start_cbtfs_mount / stop_cbtfs_mount

SCRIPT_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_LIB/../.." && pwd)"
# CBTFS_BIN=PATH runs an already built binary instead of building one.
CBTFS="${CBTFS_BIN:-$REPO_ROOT/target/release/cbtfs}"

# ---------------------------------------------------------------- output

if [[ -t 1 ]]; then
    _C_BOLD=$'\033[1m'; _C_DIM=$'\033[2m'; _C_RED=$'\033[31m'
    _C_YEL=$'\033[33m'; _C_GRN=$'\033[32m'; _C_OFF=$'\033[0m'
else
    _C_BOLD=''; _C_DIM=''; _C_RED=''; _C_YEL=''; _C_GRN=''; _C_OFF=''
fi

section() {
    printf '\n%s==== %s ====%s\n' "$_C_BOLD" "$*" "$_C_OFF"
}

info() {
    printf '%s-- %s%s\n' "$_C_DIM" "$*" "$_C_OFF"
}

ok() {
    printf '%sOK%s %s\n' "$_C_GRN" "$_C_OFF" "$*"
}

warn() {
    printf '%sWARNING:%s %s\n' "$_C_YEL" "$_C_OFF" "$*" >&2
}

die() {
    printf '%sERROR:%s %s\n' "$_C_RED" "$_C_OFF" "$*" >&2
    exit 1
}

# Show a command line (on stderr, so that stdout can be redirected).
show_cmd() {
    printf '%s$ %s%s\n' "$_C_BOLD" "$*" "$_C_OFF" >&2
}

# Show a command, then run it.
run() {
    show_cmd "$@"
    "$@"
}

# ---------------------------------------------------------------- deps

# Packages providing each command we rely on (Debian names).
declare -A _DEP_PKG=(
    [mkfs.ext4]=e2fsprogs
    [fusermount3]=fuse3
    [losetup]=mount
    [mount]=mount
    [mountpoint]=util-linux
    [findmnt]=util-linux
    [python3]=python3
    [cmp]=diffutils
    [diff]=diffutils
    [find]=findutils
    [dd]=coreutils
    [pgrep]=procps
    [cargo]=cargo
)

_APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 \
        || die "missing packages ($*) and apt-get is not available; install them by hand"
    [[ $(id -u) -eq 0 ]] || die "missing packages ($*); run as root or install them by hand"
    if [[ $_APT_UPDATED -eq 0 ]]; then
        info "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _APT_UPDATED=1
    fi
    info "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ensure_deps CMD... : installs the package of every command that is missing.
# A command can be given as CMD:PACKAGE to override the package name.
ensure_deps() {
    local missing=() item cmd pkg
    for item in "$@"; do
        cmd=${item%%:*}
        if [[ $item == *:* ]]; then pkg=${item#*:}; else pkg=${_DEP_PKG[$cmd]:-$cmd}; fi
        if [[ $cmd == /* ]]; then
            [[ -x $cmd ]] && continue
        else
            command -v "$cmd" >/dev/null 2>&1 && continue
        fi
        [[ " ${missing[*]-} " == *" $pkg "* ]] || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        apt_install "${missing[@]}"
    fi
    [[ -e /dev/fuse ]] || modprobe fuse 2>/dev/null || true
    [[ -e /dev/fuse ]] || die "/dev/fuse is not available; FUSE mounts cannot work here"
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "this script loop-mounts disk images and must run as root"
}

# ---------------------------------------------------------------- build

build_cbtfs() {
    if [[ -n ${CBTFS_BIN:-} ]]; then
        [[ -x $CBTFS_BIN ]] || die "CBTFS_BIN=$CBTFS_BIN is not an executable"
        info "using $CBTFS_BIN (CBTFS_BIN is set; not building)"
        return 0
    fi
    if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
        PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || ensure_deps cargo
    info "cargo build --release (in $REPO_ROOT)"
    (cd "$REPO_ROOT" && cargo build --release --quiet) \
        || die "cargo build --release failed"
    [[ -x $CBTFS ]] || die "build produced no binary at $CBTFS"
}

# ---------------------------------------------------------------- cleanup

_CLEAN_LOOP_MOUNTS=()   # kernel (loop) mounts, unmounted first, newest first
_CLEAN_FUSE_MOUNTS=()   # FUSE mounts
_CLEAN_PIDS=()          # background processes to end
_CLEAN_DIRS=()          # directories to remove
_CLEAN_DONE=0

register_loop_mount() { _CLEAN_LOOP_MOUNTS+=("$1"); }
register_fuse_mount() { _CLEAN_FUSE_MOUNTS+=("$1"); }
register_pid() { _CLEAN_PIDS+=("$1"); }
register_dir() { _CLEAN_DIRS+=("$1"); }

# Kill PID and the children it started (e.g. /usr/bin/time's child).
_kill_tree() {
    local pid=$1 child
    for child in $(pgrep -P "$pid" 2>/dev/null || true); do
        _kill_tree "$child"
    done
    kill -TERM "$pid" 2>/dev/null || true
}

_umount_quiet() {
    local mnt=$1 i
    mountpoint -q "$mnt" 2>/dev/null || return 0
    for i in 1 2 3 4 5; do
        umount "$mnt" 2>/dev/null && return 0
        sleep 0.5
    done
    umount -l "$mnt" 2>/dev/null || true
}

_fuse_umount_quiet() {
    local mnt=$1 i
    # A FUSE mount whose server died shows up as "Transport endpoint is not
    # connected"; mountpoint then fails, so look at the mount table instead.
    grep -qsF " $mnt " /proc/self/mounts || return 0
    for i in 1 2 3 4 5; do
        umount "$mnt" 2>/dev/null && return 0
        fusermount3 -u "$mnt" 2>/dev/null && return 0
        sleep 0.5
    done
    fusermount3 -uz "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    [[ $_CLEAN_DONE -eq 1 ]] && return 0
    _CLEAN_DONE=1
    set +e
    local i pid
    for ((i = ${#_CLEAN_LOOP_MOUNTS[@]} - 1; i >= 0; i--)); do
        _umount_quiet "${_CLEAN_LOOP_MOUNTS[i]}"
    done
    for ((i = ${#_CLEAN_FUSE_MOUNTS[@]} - 1; i >= 0; i--)); do
        _fuse_umount_quiet "${_CLEAN_FUSE_MOUNTS[i]}"
    done
    for pid in "${_CLEAN_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            # give an unmounted server a moment to exit by itself
            for i in 1 2 3 4 5 6 7 8 9 10; do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.2
            done
            kill -0 "$pid" 2>/dev/null && _kill_tree "$pid"
        fi
        wait "$pid" 2>/dev/null
    done
    for i in "${_CLEAN_DIRS[@]}"; do
        # never remove a directory that still has something mounted below it
        if grep -qsF " $i/" /proc/self/mounts; then
            warn "not removing $i: something is still mounted below it"
        else
            rm -rf -- "$i"
        fi
    done
    if [[ $rc -ne 0 ]]; then
        printf '%sFAILED%s (exit %d)\n' "$_C_RED" "$_C_OFF" "$rc" >&2
    fi
    return "$rc"
}

install_cleanup_trap() {
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# ---------------------------------------------------------------- mounts

# loop_mount IMAGE DIR [OPTIONS]: loop-mounts IMAGE (default options: rw).
loop_mount() {
    local img=$1 dir=$2 opts=${3:-rw}
    mkdir -p "$dir"
    mount -o "loop,$opts" "$img" "$dir"
    register_loop_mount "$dir"
}

loop_umount() {
    local dir=$1
    umount "$dir"
}

# wait_mounted DIR [SECONDS] [PID]: polls until DIR is a mount point.
# Fails early if PID (the server) has exited.
wait_mounted() {
    local dir=$1 secs=${2:-10} pid=${3:-} i
    for ((i = 0; i < secs * 20; i++)); do
        mountpoint -q "$dir" && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.05
    done
    return 1
}

# start_cbtfs_mount REPO MOUNTPOINT [WRAPPER...]
# Starts `cbtfs mount` in the background (optionally under a wrapper such as
# /usr/bin/time) and waits until the mount is up. Sets MOUNT_PID.
MOUNT_PID=
start_cbtfs_mount() {
    local repo=$1 mnt=$2
    shift 2
    mkdir -p "$mnt"
    register_fuse_mount "$mnt"
    "$@" "$CBTFS" mount "$repo" "$mnt" &
    MOUNT_PID=$!
    register_pid "$MOUNT_PID"
    if ! wait_mounted "$mnt" 10 "$MOUNT_PID"; then
        die "cbtfs mount $repo $mnt did not come up within 10 s"
    fi
}

# stop_cbtfs_mount MOUNTPOINT: unmounts and waits for the server to exit.
stop_cbtfs_mount() {
    local mnt=$1 rc=0 i
    umount "$mnt" || fusermount3 -u "$mnt" || return 1
    # wait for the server, but not forever
    for ((i = 0; i < 100; i++)); do
        kill -0 "$MOUNT_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$MOUNT_PID" 2>/dev/null; then
        warn "cbtfs mount (pid $MOUNT_PID) still running 10 s after umount; terminating it"
        _kill_tree "$MOUNT_PID"
    fi
    wait "$MOUNT_PID" || rc=$?
    return "$rc"
}

# ---------------------------------------------------------------- misc

# free_page_reporting: true when a virtio balloon device reports free guest
# memory to the hypervisor (feature bit 5, VIRTIO_BALLOON_F_REPORTING).
free_page_reporting() {
    local f
    for f in /sys/bus/virtio/drivers/virtio_balloon/virtio*/features; do
        [[ -r $f && $(cut -c6 "$f") == 1 ]] && return 0
    done
    return 1
}

# Seconds drop_caches waits after dropping. With free page reporting, the
# guest hands memory it freed back to the hypervisor about two seconds
# later, and the next touch of such a page costs a fault in the host. Right
# after a drop, the freed page cache is still backed: a command that ends
# within a second or two pays far less per page than a longer one, or the
# same one run a few seconds later (an in-memory FUSE file read 2 GiB in
# 0.9 s right after a drop, five times of six, and in 1.4-2.6 s three to
# ten seconds after it; docs/performance.md). Waiting until the reporting
# has settled starts every timed command in the same state, whatever its
# speed. Scripts may override it.
if free_page_reporting; then DROP_SETTLE=${DROP_SETTLE:-5}; else DROP_SETTLE=${DROP_SETTLE:-0}; fi

# drop_caches: syncs and drops the page cache, so that the next read is
# cold, then waits DROP_SETTLE seconds; warns once (and sets
# CACHES_DROPPED=false) where dropping is not allowed, since 'cold' figures
# are then warm.
CACHES_DROPPED=true
drop_caches() {
    sync
    if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
        [[ $CACHES_DROPPED == false ]] || warn "cannot drop the page cache here: 'cold' numbers are warm"
        CACHES_DROPPED=false
    fi
    [[ $DROP_SETTLE == 0 ]] || sleep "$DROP_SETTLE"
}

# Allocated bytes of a (possibly sparse) file.
allocated_bytes() {
    local blocks bsize
    read -r blocks bsize < <(stat -c '%b %B' "$1")
    echo $((blocks * bsize))
}

# Apparent bytes of a file.
file_bytes() {
    stat -c %s "$1"
}

# Total bytes a directory takes on disk (allocated).
dir_bytes() {
    du -s --block-size=1 "$1" | cut -f1
}

# mbps BYTES SECONDS: 10^6 bytes per second, 1 decimal.
mbps() {
    awk -v b="$1" -v s="$2" 'BEGIN { if (s <= 0) print "inf"; else printf "%.1f", b / 1e6 / s }'
}

# mib BYTES, kib_to_mib KIB: MiB, 1 decimal.
mib() {
    awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'
}

kib_to_mib() {
    awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'
}

# now: seconds since the epoch with nanoseconds.
now() {
    date +%s.%N
}

# elapsed START [END]: seconds between two `now` readings, 3 decimals.
elapsed() {
    local end=${2:-$(now)}
    awk -v a="$1" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

human_bytes() {
    awk -v b="$1" 'BEGIN {
        split("B KiB MiB GiB TiB", u, " "); i = 1
        while (b >= 1024 && i < 5) { b /= 1024; i++ }
        if (i == 1) printf "%d %s", b, u[i]; else printf "%.1f %s", b, u[i]
    }'
}

# setup_workdir NAME: sets W to the work directory, WORKDIR if given (it
# must be empty) or else a new temporary one removed at exit unless
# KEEP=1, and creates LOGS and an empty VALUES file in it.
setup_workdir() {
    if [[ -n ${WORKDIR:-} ]]; then
        mkdir -p "$WORKDIR"
        W=$(cd "$WORKDIR" && pwd)
        [[ -z $(ls -A "$W") ]] || die "work dir $W is not empty"
    else
        W=$(mktemp -d "${TMPDIR:-/var/tmp}/$1.XXXXXX")
        [[ ${KEEP:-0} -eq 1 ]] || register_dir "$W"
    fi
    LOGS=$W/logs
    VALUES=$W/values.tsv
    mkdir -p "$LOGS"
    : >"$VALUES"
}

# describe_machine: sets CPU_MODEL, NPROC, MEM_BYTES, KERNEL, OS_NAME, and
# WFS and WDEV (filesystem type and device of W), and prints them.
describe_machine() {
    section "Machine"
    CPU_MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    CPU_MODEL=${CPU_MODEL:-$(uname -m)}
    NPROC=$(nproc)
    MEM_BYTES=$(($(awk '/^MemTotal:/ { print $2 }' /proc/meminfo) * 1024))
    KERNEL=$(uname -r)
    OS_NAME=$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-}" || true)
    WFS=$(df --output=fstype "$W" | tail -n 1 | tr -d ' ')
    WDEV=$(df --output=source "$W" | tail -n 1 | tr -d ' ')
    echo "cpus:     $NPROC x $CPU_MODEL"
    echo "memory:   $(human_bytes "$MEM_BYTES")"
    echo "kernel:   $KERNEL${OS_NAME:+ ($OS_NAME)}"
    echo "work dir: $W ($WFS on $WDEV, $(df -h --output=avail "$W" | tail -n 1 | tr -d ' ') free)"
}
