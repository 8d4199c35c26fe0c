package guestident

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestValidHostname(t *testing.T) {
	for _, ok := range []string{"a", "vm-1", "A9", strings.Repeat("x", 63)} {
		if !ValidHostname(ok) {
			t.Errorf("%q refused", ok)
		}
	}
	for _, bad := range []string{"", "-a", "a-", "a.b", "a b", "a\nb", "ä", strings.Repeat("x", 64), "../etc"} {
		if ValidHostname(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestWritesReplaceSymlinks: an image's /etc/hosts (or resolv.conf) may be a symlink to a
// file outside the guest's root; writing it replaces the link and leaves the target alone.
func TestWritesReplaceSymlinks(t *testing.T) {
	root := t.TempDir()
	outside := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(outside, []byte("keep\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"hosts", "machine-id"} {
		if err := os.Symlink(outside, filepath.Join(root, "etc", n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteHostname(root, "vm-1"); err != nil {
		t.Fatal(err)
	}
	id, err := NewMachineID(root)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(outside); string(got) != "keep\n" {
		t.Fatalf("the symlink's target was written: %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "etc/hostname")); string(got) != "vm-1\n" {
		t.Errorf("hostname %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "etc/hosts")); !strings.Contains(string(got), "127.0.1.1\tvm-1\n") {
		t.Errorf("hosts %q", got)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(id) {
		t.Errorf("machine-id %q", id)
	}
	if id2, _ := NewMachineID(root); id2 == id {
		t.Error("two machine-ids are the same")
	}
	if got := ResolvConf("x", []netip.Addr{netip.MustParseAddr("10.0.0.1")}); got != "# x\nnameserver 10.0.0.1\n" {
		t.Errorf("resolv.conf %q", got)
	}
}
