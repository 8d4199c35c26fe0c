#!/usr/bin/env bash
# Quick start on a fresh Debian machine: install what banger needs, build and install it,
# start the owner daemon as you (not as root) and check the host with `banger doctor`.
#   sudo ./scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_root
install_apt_packages
find_go
build_banger
install_banger /usr/local/bin
install -D -m 0644 contrib/systemd/banger.service /usr/local/lib/systemd/user/banger.service
log "installed /usr/local/bin/{banger,banger-init,banger-agent} and the systemd user unit banger.service"

fix_tun_mode

# The daemon belongs to the user who asked for it: under sudo that is SUDO_USER.
owner=${SUDO_USER:-root}
uid=$(id -u "$owner")
as_owner() {
	if [ "$owner" = root ]; then "$@"; return; fi
	local rt=""
	[ -d "/run/user/$uid" ] && rt="/run/user/$uid"
	runuser -u "$owner" -- env HOME="$(getent passwd "$owner" | cut -d: -f6)" ${rt:+XDG_RUNTIME_DIR=$rt} "$@"
}
# The root helper does the VMs' networking for the owner's daemon.
if [ "$owner" = root ]; then
	log "not starting the network helper: it serves an unprivileged owner only (run this with sudo as your user)"
elif [ -d /run/systemd/system ]; then
	sed "s/--owner-uid=1000/--owner-uid=$uid/" contrib/systemd/banger-helper.service > /etc/systemd/system/banger-helper.service
	systemctl daemon-reload
	systemctl enable --now banger-helper
	log "network helper running as the banger-helper system service (owner uid $uid)"
elif ! pgrep -f "banger helper --owner-uid=$uid" >/dev/null; then
	nohup /usr/local/bin/banger helper --owner-uid="$uid" >>/var/log/banger-helper.log 2>&1 &
	log "network helper started in the background (no systemd here); log: /var/log/banger-helper.log"
fi

# Unprivileged image builds (mmdebstrap --mode=unshare) need a subordinate id range.
if [ "$owner" != root ]; then
	for f in /etc/subuid /etc/subgid; do
		if ! grep -q "^$owner:" "$f" 2>/dev/null; then
			start=$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' "$f" 2>/dev/null || echo 100000)
			echo "$owner:$start:65536" >> "$f"
			log "gave $owner subordinate ids $start-$((start + 65535)) in $f (for unprivileged image builds)"
		fi
	done
fi

log "starting the banger daemon as $owner"
as_owner banger daemon restart   # picks up a freshly installed binary on re-runs
as_owner banger daemon status
log "banger doctor"
status=0
as_owner banger doctor || status=$?
if [ "$status" -ne 0 ]; then
	die "banger doctor found a FAIL above: fix it as its hint says, then rerun 'banger doctor'"
fi

# banger's main job: a real Linux machine running a command. The default image is pulled
# from the Debian archive the first time (about half a minute).
if ! as_owner banger image inspect debian-bookworm >/dev/null 2>&1; then
	log "pulling the default image, debian-bookworm"
	as_owner banger image pull debian-bookworm
fi
log "banger vm run: a throwaway VM that runs one command"
as_owner banger vm run -- sh -c 'echo "hello from $(hostname): $(. /etc/os-release; echo $PRETTY_NAME), kernel $(uname -r)"'
log "banger is ready. To start the daemon at login instead: systemctl --user enable --now banger"
