# Shared by banger's scripts. Sourced, not run.

# Debian packages banger needs at run time and for its tests.
BANGER_APT_PACKAGES=(
	ca-certificates git
	e2fsprogs fakeroot   # disk toolkit: mkfs.ext4, debugfs, e2fsck; fakeroot for ownership
	qemu-system-x86      # the VMM where firecracker/KVM cannot run
	iproute2 util-linux iputils-ping  # ip, ping for diagnostics and the network tests; runuser, setpriv
	mmdebstrap debian-archive-keyring uidmap  # Debian images (unprivileged: --mode=unshare)
	xz-utils lz4 zstd    # the kernel build's compressors, to cross-check vmlinux extraction
	openssh-client openssh-server  # BANGER_HOST=ssh://...: the e2e test runs its own sshd on loopback
)

# Oldest Go that builds banger: go.mod's go line.
BANGER_MIN_GO=$(sed -n 's/^go //p' "$(dirname "${BASH_SOURCE[0]}")/../go.mod")

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

need_root() {
	[ "$(id -u)" -eq 0 ] || die "run this as root or with sudo: it installs Debian packages"
}

# install_apt_packages installs what is missing, and only runs apt-get update when needed.
install_apt_packages() {
	local missing=()
	for p in "${BANGER_APT_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		log "Debian packages already installed"
		return
	fi
	log "installing Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# find_go puts a Go toolchain on PATH or explains how to get one.
find_go() {
	if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
		export PATH="/usr/local/go/bin:$PATH"
	fi
	command -v go >/dev/null 2>&1 || die "Go >= $BANGER_MIN_GO is needed to build banger: install it from go.dev/dl into /usr/local/go"
	local v
	v=$(go env GOVERSION | sed 's/^go//')
	if [ "$(printf '%s\n%s\n' "$BANGER_MIN_GO" "$v" | sort -V | head -n1)" != "$BANGER_MIN_GO" ]; then
		die "Go $v is too old: banger needs Go >= $BANGER_MIN_GO"
	fi
}

# build_banger builds the static binaries into bin/: banger, and the guest programs
# banger-init and banger-agent, which the daemon looks for next to banger. The version is
# $BANGER_VERSION, else git describe's; $BANGER_UPDATE_KEYS (comma-separated base64 ed25519
# public keys) are linked in as release keys `banger update` trusts besides the built-in ones.
build_banger() {
	local version bin ldflags
	version=${BANGER_VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
	ldflags="-s -w -X github.com/banger-vm/banger/internal/buildinfo.version=$version"
	if [ -n "${BANGER_UPDATE_KEYS:-}" ]; then
		ldflags="$ldflags -X github.com/banger-vm/banger/internal/buildinfo.updateKeys=$BANGER_UPDATE_KEYS"
	fi
	log "building banger $version"
	for bin in banger banger-init banger-agent; do
		CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "bin/$bin" "./cmd/$bin"
	done
}

# install_banger installs the three binaries side by side into $1 (default /usr/local/bin).
install_banger() {
	local dir=${1:-/usr/local/bin} bin
	for bin in banger banger-init banger-agent; do
		install -m 0755 "bin/$bin" "$dir/$bin"
	done
}

# fix_tun_mode: /dev/net/tun is 0666 on standard distros (udev); some minimal machines leave
# it 0600, and then the owner's VMM cannot open the TAP the helper made for it.
fix_tun_mode() {
	if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" = 600 ]; then
		chmod 0666 /dev/net/tun
		log "made /dev/net/tun usable by unprivileged VMMs (0666, as udev does on standard distros)"
	fi
}
