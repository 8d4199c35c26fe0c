package doctor

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/helper"
)

// BridgeIPv6Check reports whether a guest's IPv6 router advertisement could configure the
// host through the bridge (give it an address and a default route via the guest). The
// settings are world-readable, so the daemon checks them itself, without the helper.
func BridgeIPv6Check(bridge string) CheckFunc {
	return func(context.Context) api.CheckResult { return bridgeIPv6("/proc/sys/net/ipv6/conf", bridge) }
}

func bridgeIPv6(confDir, bridge string) api.CheckResult {
	if err := helper.ValidBridgeName(bridge); err != nil {
		return Warnf("fix [network] bridge", "%v", err)
	}
	if _, err := os.Stat(confDir); errors.Is(err, fs.ErrNotExist) {
		return Pass("IPv6 is off in this kernel: guests cannot configure the host through it")
	}
	read := func(key string) string {
		b, err := os.ReadFile(filepath.Join(confDir, bridge, key))
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(string(b))
	}
	if _, err := os.Stat(filepath.Join(confDir, bridge)); err != nil {
		return Warnf("start the helper: it creates the bridge with IPv6 off", "bridge %s does not exist yet, its IPv6 settings are unknown", bridge)
	}
	disable, ra, auto := read("disable_ipv6"), read("accept_ra"), read("autoconf")
	switch {
	case disable == "1":
		return Pass("%s has IPv6 off (disable_ipv6=1): guests' router advertisements cannot configure the host", bridge)
	case ra == "0" && auto == "0":
		return Pass("%s ignores router advertisements (accept_ra=0, autoconf=0; disable_ipv6=%s)", bridge, disable)
	}
	return Warnf("restart the helper (it turns IPv6 off on the bridge), or run `sudo sysctl -w net.ipv6.conf."+bridge+".disable_ipv6=1`",
		"%s has disable_ipv6=%s accept_ra=%s autoconf=%s: a guest's router advertisement can give the host an IPv6 address and default route", bridge, disable, ra, auto)
}
