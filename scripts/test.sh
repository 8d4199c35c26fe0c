#!/usr/bin/env bash
# Install what the tests need and run every test: formatting, go vet, the race-enabled test
# suite as root, then the privilege-split suites again as an unprivileged user, because the
# owner daemon and the disk toolkit must work without root.
#   sudo ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_root
install_apt_packages
find_go

# Guest kernel and busybox for the tests that need them; with REQUIRE set, those tests fail
# instead of skipping when an asset is missing, so CI cannot pass by not running them.
bash scripts/fetch-test-assets.sh
export BANGER_REQUIRE_ASSETS=1
# Pull debian-bookworm from the archive for real once in the run (~25 s).
export BANGER_TEST_DEBIAN_PULL=1

log "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.git/*'))
[ -z "$unformatted" ] || die "gofmt would change: $unformatted (run: gofmt -w .)"

log "static build"
build_banger
if ldd bin/banger >/dev/null 2>&1; then
	die "bin/banger is dynamically linked: banger must build with CGO_ENABLED=0"
fi

log "go vet ./... (with the integration tests)"
go vet -tags integration ./...

log "go test -race ./... (as root)"
go test -race -count=1 ./...

# An unprivileged user: the end-to-end tests run the daemon as this user with the root
# helper (as deployed), and the unit suites run again as this user below.
ci_user=banger-ci
if ! id "$ci_user" >/dev/null 2>&1; then
	log "creating unprivileged user $ci_user"
	useradd --create-home --shell /bin/bash "$ci_user"
fi
ci_home=$(getent passwd "$ci_user" | cut -d: -f6)
fix_tun_mode
export BANGER_E2E_USER=$ci_user

# Boot tests: real guests under QEMU (software emulation here), with Debian's cloud kernel.
log "go test -tags integration ./test/... (boots real guests)"
go test -tags integration -count=1 -timeout 30m ./test/...

# The same code as a plain user: no root, no sudo, nothing mounted.
src="$ci_home/src"
log "copying the tree to $src for $ci_user"
rm -rf "$src"
mkdir -p "$src"
cp -a . "$src"/
chown -R "$ci_user:" "$src"
# Share root's module cache read-only; give the user its own build cache.
modcache=$(go env GOMODCACHE)
unpriv_pkgs=(./internal/system/... ./internal/daemon/... ./internal/cli/... ./internal/kvm/... ./internal/store/... ./internal/image/... ./internal/network/...)
log "go test -race ${unpriv_pkgs[*]} (as $ci_user)"
if ! runuser -u "$ci_user" -- test -r "$modcache/cache/download"; then
	modcache="$ci_home/gomod"
fi
runuser -u "$ci_user" -- env -i HOME="$ci_home" PATH="$(dirname "$(command -v go)"):/usr/local/bin:/usr/bin:/bin" \
	GOMODCACHE="$modcache" GOCACHE="$ci_home/.cache/go-build" GOFLAGS=-modcacherw GOPROXY="$(go env GOPROXY)" \
	GOTOOLCHAIN=local TMPDIR=/tmp BANGER_REQUIRE_ASSETS=1 \
	bash -c "cd '$src' && go test -race -count=1 ${unpriv_pkgs[*]}"
log "all tests passed"
