#!/usr/bin/env bash
# Make a signed banger release from the checked-out commit: build banger, banger-init and
# banger-agent (static, version from git describe, trusting the signing key so the next
# update can be signed with it too), then pack, sign and publish them into a channel
# directory with banger-release make. Serve that directory over HTTP(S) as
# update.channel_url.
#
#   scripts/release.sh --key PRIVATE_KEY --out CHANNEL_DIR [--base-url URL] [--key KEY2]...
#
# Make a key first with: go run ./cmd/banger-release keygen --out ~/banger-release-key
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

usage() {
	sed -n '2,11s/^# \{0,1\}//p' "$0"
}

keys=() out="" base_url=""
while [ $# -gt 0 ]; do
	case $1 in
	--key) [ $# -ge 2 ] || die "--key needs a file"; keys+=("$2"); shift 2 ;;
	--out) [ $# -ge 2 ] || die "--out needs a directory"; out=$2; shift 2 ;;
	--base-url) [ $# -ge 2 ] || die "--base-url needs a URL"; base_url=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) usage >&2; die "unknown argument: $1" ;;
	esac
done
[ ${#keys[@]} -gt 0 ] && [ -n "$out" ] || { usage >&2; die "--key and --out are required"; }

find_go
version=$(git describe --tags --always --dirty 2>/dev/null) || die "not a git checkout: releases are built from a tagged commit"

log "building banger-release"
CGO_ENABLED=0 go build -trimpath -o bin/banger-release ./cmd/banger-release

# The release trusts the keys it is signed with (besides those compiled into
# internal/update), so the release after it can be signed with them too.
trust="" make_args=()
for k in "${keys[@]}"; do
	pub=$(bin/banger-release pubkey --key "$k")
	trust=${trust:+$trust,}$pub
	make_args+=(--key "$k")
done
BANGER_VERSION=$version BANGER_UPDATE_KEYS=${BANGER_UPDATE_KEYS:+$BANGER_UPDATE_KEYS,}$trust build_banger

[ -n "$base_url" ] && make_args+=(--base-url "$base_url")
log "releasing banger $version into $out"
bin/banger-release make "${make_args[@]}" --version "$version" --bin bin --out "$out"
