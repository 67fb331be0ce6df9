#!/usr/bin/env bash
# Installs the Debian packages Sendense drives (qemu-img, mounts, chattr...).
# Usage: install-system-packages.sh [run|test]   (test adds the servers the suite starts)
set -euo pipefail
mode=${1:-run}

run_packages=(
  qemu-utils            # qemu-img, qemu-nbd, qemu-io
  e2fsprogs             # chattr, lsattr, mkfs.ext4
  xfsprogs              # mkfs.xfs, xfs repositories
  util-linux            # mount, losetup, findmnt, partx
  fdisk                 # sfdisk for partitioned test disks
  dosfstools            # vfat in restored disks
  fuse3                 # fusermount3 for FUSE exports
  libnbd-bin            # nbdinfo, nbdfuse
  nfs-common            # mount.nfs where the kernel has NFS
  cifs-utils            # mount.cifs where the kernel has CIFS
  ntfs-3g               # Windows guests' NTFS volumes, mounted read-only for file restore
  lvm2                  # LVM volumes inside guest disks (read with a private config)
)
# qemu-storage-daemon lives here; its recommends pull a whole desktop stack.
norecommends_packages=(qemu-system-common)
test_packages=(
  mariadb-server        # the suite starts a throwaway server on a private socket
  nfs-ganesha nfs-ganesha-vfs   # userspace NFS server for repository tests
  samba smbclient       # smbd on a private port for CIFS repository tests
  tmux make
  rsync zstd libcap2-bin   # archive tests: rsync -naHAXS against the guest, zstd -dc, setcap
)

wanted=("${run_packages[@]}" "${norecommends_packages[@]}")
[ "$mode" = test ] && wanted+=("${test_packages[@]}")

missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "Sendense needs these Debian packages: ${missing[*]}" >&2
  echo "Run as root, or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts installed servers; the suite starts its own on private sockets.
for svc in mariadb smbd nmbd nfs-ganesha; do
  systemctl disable --now "$svc" >/dev/null 2>&1 || service "$svc" stop >/dev/null 2>&1 || true
done
