//go:build integration

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHostFolder: --mount shares host folders with a busybox guest through the agent: a
// file written on either side is seen on the other, a read-only mount refuses writes, the
// share's owner shows as root inside, and the mounts come back after vm restart and a
// daemon restart. Bad --mount values are refused before anything is created.
func TestHostFolder(t *testing.T) {
	e := setup(t)
	share, ro := filepath.Join(e.dir, "share"), filepath.Join(e.dir, "ro")
	for _, d := range []string{share, ro} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(share, "host.txt"), []byte("from the host\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "keep.txt"), []byte("keep\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if e.cred != nil {
		filepath.Walk(e.dir, func(p string, _ os.FileInfo, _ error) error {
			os.Lchown(p, int(e.cred.Uid), int(e.cred.Gid))
			return nil
		})
	}
	for _, bad := range []struct{ mount, want string }{
		{share + ":/proc/x", "belongs to the guest's system"},
		{share + ":relative", "absolute"},
		{filepath.Join(e.dir, "missing") + ":/mnt/x", "no such file"},
		{filepath.Join(share, "host.txt") + ":/mnt/x", "not a directory"},
	} {
		r := e.run("vm", "create", "badmount", "--image", "bb", "--mount", bad.mount)
		if r.code == 0 || !strings.Contains(r.stderr, bad.want) {
			t.Fatalf("--mount %s: exit %d, stderr %q; want a refusal saying %q", bad.mount, r.code, r.stderr, bad.want)
		}
	}
	if len(e.vms()) != 0 {
		t.Fatal("a refused --mount left a VM behind")
	}

	e.must("vm", "create", "mnt", "--image", "bb", "--memory", "512M", "--start",
		"--mount", share+":/mnt/share", "--mount", ro+":/mnt/ro:ro")
	check := func(when string) {
		t.Helper()
		if got := e.must("vm", "exec", "mnt", "--", "cat", "/mnt/share/host.txt").stdout; got != "from the host\n" {
			t.Fatalf("%s: the guest reads %q", when, got)
		}
		name := "guest-" + strings.ReplaceAll(when, " ", "-") + ".txt"
		e.must("vm", "exec", "mnt", "--", "sh", "-c", "echo written in the guest > /mnt/share/"+name)
		if got, err := os.ReadFile(filepath.Join(share, name)); err != nil || string(got) != "written in the guest\n" {
			t.Fatalf("%s: the host reads %q (%v)", when, got, err)
		}
		r := e.run("vm", "exec", "mnt", "--", "sh", "-c", "echo x > /mnt/ro/new.txt")
		if r.code == 0 || !strings.Contains(strings.ToLower(r.stderr), "read-only") {
			t.Fatalf("%s: write to the read-only mount: exit %d, %q", when, r.code, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(ro, "new.txt")); err == nil {
			t.Fatalf("%s: a file appeared in the read-only folder", when)
		}
	}
	check("first boot")

	// Ownership: the folder's owner is root inside; a new guest file is the owner's outside.
	if got := strings.TrimSpace(e.must("vm", "exec", "mnt", "--", "stat", "-c", "%u:%g", "/mnt/share/host.txt").stdout); got != "0:0" {
		t.Fatalf("the share owner's file is %s inside, want 0:0", got)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(share, "guest-first-boot.txt"), &st); err != nil {
		t.Fatal(err)
	}
	if e.cred != nil && st.Uid != e.cred.Uid {
		t.Fatalf("a guest file belongs to uid %d on the host, want the daemon's user %d", st.Uid, e.cred.Uid)
	}
	// A file written on the host while mounted shows in the guest (attributes are cached
	// for a second).
	if err := os.WriteFile(filepath.Join(share, "later.txt"), []byte("later\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := e.must("vm", "exec", "mnt", "--", "cat", "/mnt/share/later.txt").stdout; got != "later\n" {
		t.Fatalf("a host file written after the mount reads %q", got)
	}
	vm := e.inspect("mnt")
	if len(vm.Mounts) != 2 || !vm.Mounts[0].Mounted || !vm.Mounts[1].Mounted || !vm.Mounts[1].ReadOnly {
		t.Fatalf("inspect mounts: %+v", vm.Mounts)
	}

	e.must("vm", "restart", "mnt")
	check("after vm restart")

	e.daemon("stop")
	e.daemon("start")
	// A reattached VM's mounts come back in the background.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if r := e.run("vm", "exec", "mnt", "--", "cat", "/mnt/share/host.txt"); r.code == 0 && r.stdout == "from the host\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the mount did not come back within 60 s of a daemon restart")
		}
		time.Sleep(500 * time.Millisecond)
	}
	check("after daemon restart")
	e.must("vm", "rm", "--force", "mnt")
}
