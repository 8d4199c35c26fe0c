package doctor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/api"
)

func TestBridgeIPv6Check(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "conf")
	set := func(bridge string, kv map[string]string) {
		t.Helper()
		dir := filepath.Join(conf, bridge)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for k, v := range kv {
			if err := os.WriteFile(filepath.Join(dir, k), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	set("off0", map[string]string{"disable_ipv6": "1", "accept_ra": "1", "autoconf": "1"})
	set("nora0", map[string]string{"disable_ipv6": "0", "accept_ra": "0", "autoconf": "0"})
	set("open0", map[string]string{"disable_ipv6": "0", "accept_ra": "1", "autoconf": "1"})
	for _, tc := range []struct {
		bridge string
		status api.CheckStatus
		detail string
		hint   string
	}{
		{"off0", api.Pass, "disable_ipv6=1", ""},
		{"nora0", api.Pass, "ignores router advertisements", ""},
		{"open0", api.Warn, "disable_ipv6=0 accept_ra=1 autoconf=1", "net.ipv6.conf.open0.disable_ipv6=1"},
		{"gone0", api.Warn, "does not exist yet", "start the helper"},
		{"../../etc", api.Warn, "not a valid interface name", "[network] bridge"},
	} {
		r := bridgeIPv6(conf, tc.bridge)
		if r.Status != tc.status || !strings.Contains(r.Detail, tc.detail) || !strings.Contains(r.Hint, tc.hint) {
			t.Errorf("%s: %+v, want %s with %q (hint %q)", tc.bridge, r, tc.status, tc.detail, tc.hint)
		}
	}
	if r := bridgeIPv6(filepath.Join(conf, "missing"), "off0"); r.Status != api.Pass || !strings.Contains(r.Detail, "IPv6 is off in this kernel") {
		t.Errorf("kernel without IPv6: %+v", r)
	}
	// The exported check reads the real /proc; here it only has to give a verdict.
	if r := BridgeIPv6Check("lo")(context.Background()); r.Status == "" {
		t.Errorf("real check on lo: %+v", r)
	}
}
