//go:build integration

package e2e

import (
	"strconv"
	"strings"
	"testing"
)

// rootSizeKB is the size of the guest's /root filesystem in 1K blocks (df -k).
func (e *env) rootSizeKB(name string) int64 {
	e.t.Helper()
	out := e.must("vm", "exec", name, "--", "sh", "-c", "df -k /root | tail -n 1").stdout
	f := strings.Fields(out)
	if len(f) < 2 {
		e.t.Fatalf("df /root: %q", out)
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil {
		e.t.Fatalf("df /root: %q", out)
	}
	return n
}

// TestResize: vm resize grows a running VM's /root at once (df shows it, the data is
// intact), then a stopped VM's offline; shrinking is refused.
func TestResize(t *testing.T) {
	e := setup(t)
	e.must("vm", "create", "rz", "--image", "bb", "--memory", "512M", "--disk-size", "1G", "--start")
	sum := e.must("vm", "exec", "rz", "--", "sh", "-c", "head -c 30000000 /dev/urandom > /root/data && sync && sha256sum /root/data").stdout
	before := e.rootSizeKB("rz")
	e.must("vm", "resize", "rz", "--disk", "3G")
	online := e.rootSizeKB("rz")
	// ext4 keeps some of the disk for its own metadata: a 3 GiB disk is well over 2.5 GiB.
	if online <= before || online < 2500*1024 {
		t.Fatalf("df /root after an online resize to 3G: %d KiB (was %d)", online, before)
	}
	if got := e.must("vm", "exec", "rz", "--", "sha256sum", "/root/data").stdout; got != sum {
		t.Fatalf("data after the online resize: %q, was %q", got, sum)
	}
	if r := e.run("vm", "resize", "rz", "--disk", "2G"); r.code == 0 || !strings.Contains(r.stderr, "shrinking is not supported") {
		t.Fatalf("shrink: %d %q", r.code, r.stderr)
	}
	e.must("vm", "stop", "rz")
	e.must("vm", "resize", "rz", "--disk", "5G")
	e.must("vm", "start", "rz")
	if offline := e.rootSizeKB("rz"); offline < 4500*1024 {
		t.Fatalf("df /root after an offline resize to 5G: %d KiB", offline)
	}
	if got := e.must("vm", "exec", "rz", "--", "sha256sum", "/root/data").stdout; got != sum {
		t.Fatalf("data after the offline resize: %q, was %q", got, sum)
	}
	e.must("vm", "rm", "--force", "rz")
	e.requireNoLeaks()
}
