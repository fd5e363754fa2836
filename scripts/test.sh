#!/usr/bin/env bash
# Runs the whole cbtfs test suite on a fresh machine: installs the system
# tools the tests use (FUSE, ext4 and loop tools), builds, runs unit tests
# and the integration tests, which mount real FUSE filesystems and real
# loop devices and therefore need root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/test.sh: the integration tests mount FUSE and loop devices; run as root" >&2
    exit 1
fi

need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
# mkfs.ext4 for sample disks; filefrag to see writeback happen
command -v mkfs.ext4 >/dev/null && command -v filefrag >/dev/null || need+=(e2fsprogs)
command -v losetup >/dev/null || need+=(mount)
command -v mountpoint >/dev/null || need+=(util-linux)
command -v python3 >/dev/null || need+=(python3)
command -v man >/dev/null || need+=(man-db)
# qemu-img, qemu-io, qemu-nbd and qemu-storage-daemon for the QEMU tests
command -v qemu-storage-daemon >/dev/null && command -v qemu-nbd >/dev/null || need+=(qemu-utils)
# partitioned disks: sfdisk, FAT (made and read with mtools) and XFS
command -v sfdisk >/dev/null || need+=(fdisk)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v mkfs.xfs >/dev/null || need+=(xfsprogs)
# exFAT, as restore disks often are (made with exfatprogs, mounted by its FUSE driver)
command -v mkfs.exfat >/dev/null || need+=(exfatprogs)
command -v mount.exfat-fuse >/dev/null || need+=(exfat-fuse)
# shells whose completions are loaded
command -v zsh >/dev/null || need+=(zsh)
command -v fish >/dev/null || need+=(fish)
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
[[ -e /dev/fuse ]] || modprobe fuse 2>/dev/null || true
[[ -e /dev/loop-control ]] || modprobe loop 2>/dev/null || true

# Release mode: the tests push hundreds of MiB through hashing and
# compression, which debug builds make needlessly slow.
cargo build --release --all-targets
cargo test --release -- --test-threads="${CBTFS_TEST_THREADS:-4}"
