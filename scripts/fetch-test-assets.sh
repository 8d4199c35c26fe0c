#!/usr/bin/env bash
# Fetch the guest artifacts the boot tests use, from the Debian archive, unpacked without
# installing anything into the host's /boot or /lib/modules:
#   $BANGER_TEST_ASSETS/kernel/   Debian's linux-image-cloud-amd64 (boot/vmlinuz-*, lib/modules/*)
#   $BANGER_TEST_ASSETS/busybox/  busybox-static (bin/busybox), for a tiny test root filesystem
# Idempotent: a second run with the same package versions does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

assets=${BANGER_TEST_ASSETS:-/var/cache/banger-test}
mkdir -p "$assets"

# fetch NAME DIR: download the .deb of NAME (resolving a meta package to what it depends on)
# and unpack it into $assets/DIR, unless that exact version is already there.
fetch() {
	local name=$1 dir=$2 pkg ver
	pkg=$name
	# linux-image-cloud-amd64 is a meta package: follow it to the versioned image package.
	if dep=$(apt-cache depends "$name" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1) && [ -n "$dep" ]; then
		pkg=$dep
	fi
	ver=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
	[ -n "$ver" ] && [ "$ver" != "(none)" ] || die "package $pkg not found: run apt-get update"
	if [ -f "$assets/$dir/.version" ] && [ "$(cat "$assets/$dir/.version")" = "$pkg=$ver" ]; then
		log "$pkg $ver already in $assets/$dir"
		return
	fi
	log "fetching $pkg $ver into $assets/$dir"
	local tmp
	tmp=$(mktemp -d)
	chmod 755 "$tmp" # apt downloads as the _apt user
	(cd "$tmp" && apt-get download -q "$pkg=$ver" >/dev/null)
	rm -rf "$assets/$dir"
	mkdir -p "$assets/$dir"
	dpkg-deb -x "$tmp"/*.deb "$assets/$dir"
	echo "$pkg=$ver" > "$assets/$dir/.version"
	rm -rf "$tmp"
}

if ! apt-cache policy linux-image-cloud-amd64 | grep -q 'Candidate: [0-9]'; then
	apt-get update -qq
fi
fetch linux-image-cloud-amd64 kernel
fetch busybox-static busybox

# debian_fixture NAME PACKAGES DESCRIPTION: a minimal Debian bookworm root with PACKAGES
# (comma-separated) as $assets/NAME.tar, built by mmdebstrap unless it is there already.
debian_fixture() {
	local name=$1 include=$2 what=$3 mirror
	[ -s "$assets/$name.tar" ] && return
	command -v mmdebstrap >/dev/null || { apt-get install -y -qq --no-install-recommends mmdebstrap debian-archive-keyring >/dev/null; }
	log "building a minimal Debian bookworm root $what into $assets/$name.tar"
	mirror=$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
	mmdebstrap --quiet --format=tar --variant=apt --include="$include" --mode=root bookworm \
		"$assets/$name.tar.tmp" "${mirror:-http://deb.debian.org/debian}"
	mv "$assets/$name.tar.tmp" "$assets/$name.tar"
}

# The hand-over to systemd (about 15 s, 200 MB).
debian_fixture debian-systemd systemd-sysv "with systemd"
# The end-to-end `vm ssh` and `image build` tests (about 20 s, 220 MB).
debian_fixture debian-ssh systemd-sysv,openssh-server "with systemd and sshd"
# banger-init's hand-over to runit, the way the experimental Void image boots (about 20 s).
debian_fixture debian-runit runit-init,openssh-server "with runit as init and sshd"
# The per-kernel modules disk: modprobe and lsmod in the guest (about 15 s, 200 MB).
debian_fixture debian-kmod systemd-sysv,kmod "with systemd and kmod"
# Readable by the unprivileged test user too.
chmod -R a+rX "$assets"
log "test assets ready in $assets"
