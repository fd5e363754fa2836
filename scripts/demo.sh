#!/usr/bin/env bash
# cbtfs end-to-end demo.
#
#   scripts/demo.sh [--workdir DIR] [--keep]
#
# Builds cbtfs, makes a 256 MiB disk image partitioned like a VM's (GPT, an
# ext4 root partition) with a small file tree, and backs it up three times
# into a cbtfs repository:
#   1. a full restore point                        (--checkpoint c1)
#   2. an incremental one from a changed-block map (--changes, --since c1)
#   3. one without a map, which falls back to a full scan with a warning
# Then it lists the chain, mounts the repository, loop-mounts the root
# partition of every restore point read-only (the mount shows each partition
# as a file of its own), shows how a file differs between points,
# checks the images byte for byte against copies of the disk, runs
# `cbtfs verify`, and cleans up. Exits 0 only if every step and check passed.
#
# Needs root (loop mounts). Installs missing tools with apt-get.
#
#   --workdir DIR  work in DIR (created if needed, kept afterwards) instead of
#                  a fresh temporary directory that is removed at the end
#   --keep         keep the temporary work directory

set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

WORKDIR=
KEEP=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --workdir) WORKDIR=${2:?--workdir needs a directory}; shift 2 ;;
        --workdir=*) WORKDIR=${1#*=}; shift ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown option: $1 (see --help)" ;;
    esac
done

MACHINE=web01
DISK=root
DISK_SIZE=256M

FAILURES=0
check() {
    # check DESCRIPTION COMMAND...: runs COMMAND, records a failure if it fails
    local what=$1
    shift
    if "$@"; then
        ok "$what"
    else
        printf '%sFAIL%s %s\n' "$_C_RED" "$_C_OFF" "$what" >&2
        FAILURES=$((FAILURES + 1))
    fi
}

install_cleanup_trap

# ------------------------------------------------------------------------
section "Preparing"
require_root
ensure_deps mkfs.ext4 fusermount3 losetup mount mountpoint python3 cmp diff find dd pgrep sfdisk:fdisk
build_cbtfs
info "cbtfs binary: $CBTFS"

if [[ -n $WORKDIR ]]; then
    mkdir -p "$WORKDIR"
    W=$(cd "$WORKDIR" && pwd)
    [[ -z $(ls -A "$W") ]] || die "work dir $W is not empty"
else
    W=$(mktemp -d "${TMPDIR:-/tmp}/cbtfs-demo.XXXXXX")
    [[ $KEEP -eq 1 ]] || register_dir "$W"
fi
info "work dir: $W"

IMG=$W/disk.img          # the live disk that changes between backups
COPY1=$W/disk-at-c1.img  # the disk as backed up in restore point 1
COPY2=$W/disk-at-c2.img  # ... and in restore point 2
REPO=$W/repo
FS=$W/fs                 # where the live disk is mounted while we change it
MNT=$W/mnt               # the cbtfs FUSE mount
VIEW=$W/view             # read-only loop mounts of the restore points
CHANGEMAP=$SCRIPT_LIB/changemap.py

# ------------------------------------------------------------------------
section "Making a $DISK_SIZE disk image (GPT, ext4 root partition) with some files"
truncate -s "$DISK_SIZE" "$IMG"
show_cmd "printf 'label: gpt\\nstart=2048, type=linux, name=root\\n' | sfdisk $IMG"
printf 'label: gpt\nstart=2048, type=linux, name=root\n' | sfdisk --quiet --no-reread --no-tell-kernel "$IMG"
# Where partition 1 lies, in bytes, for the loop devices used to fill it.
read -r PART_START PART_SIZE < <(sfdisk --json "$IMG" | python3 -c '
import json, sys
p = json.load(sys.stdin)["partitiontable"]["partitions"][0]
print(p["start"] * 512, p["size"] * 512)')
PART_OPTS="offset=$PART_START,sizelimit=$PART_SIZE"
info "partition 1: $PART_SIZE bytes from byte $PART_START"
dev=$(losetup --find --show --offset "$PART_START" --sizelimit "$PART_SIZE" "$IMG")
run mkfs.ext4 -q -F -L demo-root -E lazy_itable_init=0,lazy_journal_init=0 "$dev"
losetup -d "$dev"
loop_mount "$IMG" "$FS" "rw,$PART_OPTS"

mkdir -p "$FS"/etc/app "$FS"/etc/ssh "$FS"/photos "$FS"/var/log "$FS"/home/alice
cat >"$FS/etc/hostname" <<'EOF'
web01
EOF
cat >"$FS/etc/hosts" <<'EOF'
127.0.0.1   localhost
127.0.1.1   web01.example.internal web01
::1         localhost ip6-localhost ip6-loopback
EOF
cat >"$FS/etc/fstab" <<'EOF'
# <file system>   <mount point>  <type>  <options>          <dump> <pass>
LABEL=demo-root   /              ext4    errors=remount-ro  0      1
tmpfs             /tmp           tmpfs   defaults,size=1G   0      0
EOF
cat >"$FS/etc/ssh/sshd_config" <<'EOF'
Port 22
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
cat >"$FS/etc/app/app.conf" <<'EOF'
# app.conf - settings of the order service
[server]
listen = 0.0.0.0:8080
workers = 4
request_timeout = 30s

[database]
url = postgres://orders@db01.example.internal/orders
pool_size = 10

[features]
new_checkout = false
EOF
cat >"$FS/home/alice/notes.txt" <<'EOF'
- renew the TLS certificate before the end of the month
- ask about the database pool size
EOF
for i in $(seq -w 1 12); do
    head -c $(( (10#$i * 97 % 13 + 2) * 64 * 1024 )) /dev/urandom >"$FS/photos/IMG_00$i.jpg"
done
python3 - "$FS/var/log/app.log" <<'EOF'
import sys, random
r = random.Random(7)
paths = ["/orders", "/orders/{}", "/cart", "/checkout", "/health", "/login"]
with open(sys.argv[1], "w") as f:
    for i in range(3000):
        p = r.choice(paths).format(r.randint(1000, 9999))
        s = r.choice([200] * 12 + [201, 204, 302, 404, 500])
        f.write(f"2026-11-2{i // 1000} {i // 150 % 24:02d}:{i // 3 % 60:02d}:{i % 60:02d} "
                f"INFO request method=GET path={p} status={s} ms={r.randint(1, 900)}\n")
EOF
info "files on the disk:"
find "$FS" -path "$FS/lost+found" -prune -o -type f -printf '%10s  %P\n' | sort -k2
loop_umount "$FS"

# ------------------------------------------------------------------------
section "Restore point 1: full backup"
run "$CBTFS" init "$REPO"
run "$CBTFS" ingest "$REPO" "$MACHINE" --disk "$DISK=$IMG" --checkpoint c1
cp --sparse=always "$IMG" "$COPY1"
info "kept a copy of the disk as backed up: $COPY1"

# ------------------------------------------------------------------------
section "Changing files on the disk"
loop_mount "$IMG" "$FS" "rw,$PART_OPTS"
run sed -i 's/^workers = 4$/workers = 8/; s/^new_checkout = false$/new_checkout = true/' "$FS/etc/app/app.conf"
info "edited etc/app/app.conf (workers = 8, new_checkout = true)"
for i in $(seq 1 200); do
    printf '2026-11-23 09:%02d:%02d INFO request method=POST path=/checkout status=201 ms=%d\n' \
        $((i / 60)) $((i % 60)) $((i * 7 % 500))
done >>"$FS/var/log/app.log"
info "appended 200 lines to var/log/app.log"
run rm "$FS/photos/IMG_0003.jpg"
head -c 300000 /dev/urandom >"$FS/photos/IMG_0013.jpg"
info "added photos/IMG_0013.jpg"
loop_umount "$FS"

section "Change map: comparing the disk with the previous copy at 4 KiB granularity"
run python3 "$CHANGEMAP" "$COPY1" "$IMG" --stats >"$W/changes-c2.json"
info "change map ($W/changes-c2.json), first extents:"
head -n 6 "$W/changes-c2.json"

# ------------------------------------------------------------------------
section "Restore point 2: incremental backup from the change map"
run "$CBTFS" ingest "$REPO" "$MACHINE" --disk "$DISK=$IMG" \
    --changes "$DISK=$W/changes-c2.json" --since c1 --checkpoint c2
cp --sparse=always "$IMG" "$COPY2"

# ------------------------------------------------------------------------
section "Changing files again"
loop_mount "$IMG" "$FS" "rw,$PART_OPTS"
run sed -i 's/^pool_size = 10$/pool_size = 25/; s/^request_timeout = 30s$/request_timeout = 10s/' "$FS/etc/app/app.conf"
info "edited etc/app/app.conf (pool_size = 25, request_timeout = 10s)"
echo "2026-11-23 10:00:00 WARN pool exhausted, raising pool_size" >>"$FS/var/log/app.log"
echo "- pool size raised to 25" >>"$FS/home/alice/notes.txt"
info "appended to var/log/app.log and home/alice/notes.txt"
loop_umount "$FS"

# ------------------------------------------------------------------------
section "Restore point 3: no change map, so cbtfs scans the whole disk"
show_cmd "$CBTFS" ingest "$REPO" "$MACHINE" --disk "$DISK=$IMG" --since c2 --checkpoint c3
set +e
"$CBTFS" ingest "$REPO" "$MACHINE" --disk "$DISK=$IMG" --since c2 --checkpoint c3 \
    >"$W/ingest3.out" 2>"$W/ingest3.err"
rc=$?
set -e
cat "$W/ingest3.out"
cat "$W/ingest3.err" >&2
[[ $rc -eq 0 ]] || die "cbtfs ingest without a change map failed (exit $rc)"
check "ingest without a change map warned about the full scan" \
    grep -qi 'warn' "$W/ingest3.err" "$W/ingest3.out"

# ------------------------------------------------------------------------
section "The chain of restore points"
run "$CBTFS" list "$REPO"
run "$CBTFS" list "$REPO" "$MACHINE" --json >"$W/list.json"
python3 -m json.tool "$W/list.json"

# ------------------------------------------------------------------------
section "Mounting the repository"
show_cmd "$CBTFS" mount "$REPO" "$MNT" "&"
start_cbtfs_mount "$REPO" "$MNT"
info "mounted (pid $MOUNT_PID)"
show_cmd "(cd $MNT && find . -maxdepth 3)"
(cd "$MNT" && find . -maxdepth 3 \( -type l -printf '%M %12s  %p -> %l\n' \) -o -printf '%M %12s  %p\n' | sort -k3)
run ls -l "$MNT/$MACHINE/"

mapfile -t POINTS < <(find "$MNT/$MACHINE" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
info "restore points: ${POINTS[*]}"
[[ ${#POINTS[@]} -eq 3 ]] || die "expected 3 restore points under $MNT/$MACHINE, found ${#POINTS[@]}"
check "point names look like NNNNNN-YYYYMMDDTHHMMSSZ" \
    bash -c 'for p; do [[ $p =~ ^[0-9]{6}-[0-9]{8}T[0-9]{6}Z$ ]] || exit 1; done' _ "${POINTS[@]}"
check "latest points at ${POINTS[2]}" \
    test "$(basename "$(readlink "$MNT/$MACHINE/latest")")" = "${POINTS[2]}"

# ------------------------------------------------------------------------
section "Looking inside every restore point (read-only loop mounts)"
check "each point shows the disk and its partition" \
    test "$(ls "$MNT/$MACHINE/latest" | tr '\n' ' ')" = "$DISK-part1.img $DISK.img "
for p in "${POINTS[@]}"; do
    img=$MNT/$MACHINE/$p/$DISK-part1.img
    info "$p: $DISK.img $(file_bytes "$MNT/$MACHINE/$p/$DISK.img") bytes; $DISK-part1.img $(file_bytes "$img") bytes"
    # noload: never replay a journal on a read-only image
    mkdir -p "$VIEW/$p"
    register_loop_mount "$VIEW/$p"
    run mount -o loop,ro,noload "$img" "$VIEW/$p"
done
P1=$VIEW/${POINTS[0]}
P2=$VIEW/${POINTS[1]}
P3=$VIEW/${POINTS[2]}

info "etc/app/app.conf in point 1 vs point 3:"
run diff -u "$P1/etc/app/app.conf" "$P3/etc/app/app.conf" || true
for p in "${POINTS[@]}"; do
    printf '  %s: photos: %s; app.log: %s lines\n' "$p" \
        "$(cd "$VIEW/$p/photos" && ls | tr '\n' ' ')" "$(wc -l <"$VIEW/$p/var/log/app.log")"
done

check "app.conf differs between point 1 and point 3" \
    bash -c '! cmp -s "$1" "$2"' _ "$P1/etc/app/app.conf" "$P3/etc/app/app.conf"
check "point 1 has workers = 4, point 2 and 3 workers = 8" \
    bash -c 'grep -qx "workers = 4" "$1" && grep -qx "workers = 8" "$2" && grep -qx "workers = 8" "$3"' \
    _ "$P1/etc/app/app.conf" "$P2/etc/app/app.conf" "$P3/etc/app/app.conf"
check "point 3 has pool_size = 25, point 2 still 10" \
    bash -c 'grep -qx "pool_size = 25" "$1" && grep -qx "pool_size = 10" "$2"' \
    _ "$P3/etc/app/app.conf" "$P2/etc/app/app.conf"
check "IMG_0003.jpg is in point 1 only, IMG_0013.jpg in points 2 and 3" \
    bash -c 'test -f "$1/photos/IMG_0003.jpg" && ! test -e "$2/photos/IMG_0003.jpg" &&
             ! test -e "$1/photos/IMG_0013.jpg" && test -f "$3/photos/IMG_0013.jpg"' _ "$P1" "$P2" "$P3"
check "app.log grows: 3000, 3200, 3201 lines" \
    test "$(wc -l <"$P1/var/log/app.log") $(wc -l <"$P2/var/log/app.log") $(wc -l <"$P3/var/log/app.log")" = "3000 3200 3201"

for p in "${POINTS[@]}"; do
    umount "$VIEW/$p"
done

section "Comparing restore points with copies of the disk"
check "point 1 image equals the copy saved after the full backup" \
    cmp "$MNT/$MACHINE/${POINTS[0]}/$DISK.img" "$COPY1"
check "point 2 image equals the copy saved after the incremental backup" \
    cmp "$MNT/$MACHINE/${POINTS[1]}/$DISK.img" "$COPY2"
check "latest image equals the current disk" \
    cmp "$MNT/$MACHINE/latest/$DISK.img" "$IMG"

section "Unmounting"
run umount "$MNT"
set +e
wait "$MOUNT_PID"
rc=$?
set -e
check "cbtfs mount exited cleanly after umount" test "$rc" -eq 0

# ------------------------------------------------------------------------
section "Verifying the repository"
check "cbtfs verify" run "$CBTFS" verify "$REPO"
info "repository size: $(human_bytes "$(dir_bytes "$REPO")") on disk for 3 restore points of a $DISK_SIZE disk"

section "Result"
if [[ $FAILURES -gt 0 ]]; then
    die "$FAILURES check(s) failed"
fi
ok "demo finished: all steps and checks passed"
[[ -n $WORKDIR || $KEEP -eq 1 ]] && info "work dir kept: $W"
exit 0
