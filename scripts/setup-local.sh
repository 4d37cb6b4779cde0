#!/usr/bin/env bash
# Installs what local image builds need, from Debian's packages (run as root):
#   qemu-system-x86 + qemu-utils (from the SAME suite: mixing bookworm's 7.2 with backports' 10.0
#   removes one of them), ovmf (UEFI firmware), mmdebstrap (the Debian base image), mtools +
#   fdisk + e2fsprogs (disk assembly without loop devices or mounts), genisoimage (the cloud-init
#   seed), openssh-client, passt (the network of build VMs allowed outbound access, without the
#   host's loopback), and systemd-boot's EFI binary (downloaded, not installed).
# Without root it prints the command to run instead.
set -euo pipefail

pkgs=(ovmf mmdebstrap genisoimage mtools fdisk e2fsprogs openssh-client passt ca-certificates)
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
command -v qemu-img >/dev/null || missing+=(qemu-utils)
[ -f /usr/share/OVMF/OVMF_CODE_4M.fd ] || missing+=(ovmf)
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v genisoimage >/dev/null || missing+=(genisoimage)
command -v mcopy >/dev/null || missing+=(mtools)
command -v sfdisk >/dev/null || missing+=(fdisk)
command -v mkfs.ext4 >/dev/null || missing+=(e2fsprogs)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v passt >/dev/null || missing+=(passt)
if [ ${#missing[@]} -eq 0 ]; then
  echo "local build tools: all present ($(qemu-system-x86_64 --version | head -1))"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "missing: ${missing[*]}" >&2
  echo "run as root: $0   (or: apt-get install -y -t bookworm-backports qemu-system-x86 qemu-utils && apt-get install -y ${pkgs[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
# qemu-utils may already come from backports: take qemu-system-x86 from the same suite.
qemu_suite=$suite
if dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null | grep -q bpo; then qemu_suite=$suite-backports; fi
if [ "$qemu_suite" != "$suite" ] && ! grep -rqs "$qemu_suite" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  mirror=$( (grep -rhE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null || true) | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "==> adding $qemu_suite from $mirror (qemu-utils here comes from it)"
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" "$qemu_suite" \
    > /etc/apt/sources.list.d/aib-backports.sources
fi
echo "==> apt-get install (qemu from $qemu_suite): ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends -t "$qemu_suite" qemu-system-x86 qemu-utils >/dev/null
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
echo "local build tools installed: $(qemu-system-x86_64 --version | head -1)"
