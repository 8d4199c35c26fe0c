package guestinit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mkfile(t *testing.T, p, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, p string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
}

func TestInRoot(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "usr/lib/modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	symlink(t, "/usr/lib", filepath.Join(root, "lib"))       // absolute, as some images have it
	symlink(t, "usr/lib", filepath.Join(root, "lib64"))      // relative
	symlink(t, "../../../../etc", filepath.Join(root, "up")) // tries to climb out
	symlink(t, "/loop", filepath.Join(root, "loop"))
	cases := map[string]string{
		"/lib/modules/6.1":   "usr/lib/modules/6.1",
		"lib64/modules":      "usr/lib/modules",
		"/up/passwd":         "etc/passwd",
		"/new/../../../x":    "x",
		"/usr/../lib/./a/..": "usr/lib",
		"/":                  "",
	}
	for in, want := range cases {
		got, err := inRoot(root, in)
		if err != nil || got != filepath.Join(root, want) {
			t.Errorf("inRoot(%q) = %q, %v; want %q", in, got, err, filepath.Join(root, want))
		}
	}
	if _, err := inRoot(root, "/loop/x"); err == nil || !strings.Contains(err.Error(), "too many levels") {
		t.Errorf("symlink loop: %v", err)
	}
}

func TestSeedRootDotfiles(t *testing.T) {
	root := t.TempDir()
	mkfile(t, filepath.Join(root, "usr/share/skel/.bashrc"), "# skel bashrc\n", 0o644)
	symlink(t, "/usr/share/skel", filepath.Join(root, "etc/skel"))
	mkfile(t, filepath.Join(root, "usr/share/skel/.profile"), "# skel profile\n", 0o640)
	mkfile(t, filepath.Join(root, "root/.profile"), "# mine\n", 0o600)
	uid, gid := os.Getuid(), os.Getgid()
	copied, err := seedRootDotfiles(root, uid, gid)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(copied, ",") != ".bashrc" {
		t.Errorf("copied %v, want only .bashrc (.profile is there)", copied)
	}
	if data, _ := os.ReadFile(filepath.Join(root, "root/.bashrc")); string(data) != "# skel bashrc\n" {
		t.Errorf(".bashrc = %q", data)
	}
	if data, _ := os.ReadFile(filepath.Join(root, "root/.profile")); string(data) != "# mine\n" {
		t.Errorf(".profile overwritten: %q", data)
	}
	fi, err := os.Stat(filepath.Join(root, "root/.bashrc"))
	if err != nil || fi.Mode().Perm() != 0o644 {
		t.Errorf(".bashrc mode: %v %v", fi, err)
	}
	// Second run: nothing to do. A dangling link counts as present.
	if err := os.Remove(filepath.Join(root, "root/.profile")); err != nil {
		t.Fatal(err)
	}
	symlink(t, "/nowhere", filepath.Join(root, "root/.profile"))
	if copied, err := seedRootDotfiles(root, uid, gid); err != nil || len(copied) != 0 {
		t.Errorf("second run copied %v, %v", copied, err)
	}
	// An image without /etc/skel: nothing copied, no error.
	bare := t.TempDir()
	if err := os.Mkdir(filepath.Join(bare, "root"), 0o700); err != nil {
		t.Fatal(err)
	}
	if copied, err := seedRootDotfiles(bare, uid, gid); err != nil || len(copied) != 0 {
		t.Errorf("image without skel: %v, %v", copied, err)
	}
}

func TestRunitDetection(t *testing.T) {
	for target, want := range map[string]bool{"/lib/runit/runit-init": true, "/usr/bin/runit": true, "/lib/systemd/systemd": false, "/bin/busybox": false} {
		if isRunit(target) != want {
			t.Errorf("isRunit(%s) = %v", target, !want)
		}
	}
	root := t.TempDir()
	if _, ok := findRunitInit(root); ok {
		t.Error("runit-init found in an empty root")
	}
	mkfile(t, filepath.Join(root, "usr/bin/runit-init"), "", 0o755)
	symlink(t, "usr/bin", filepath.Join(root, "sbin"))
	if p, ok := findRunitInit(root); !ok || p != "/sbin/runit-init" {
		t.Errorf("findRunitInit = %q, %v", p, ok)
	}
}

// Void: services in /etc/runit/runsvdir/default, sshd's service in /etc/sv/sshd, not
// enabled. The agent gets a service in /run, sshd's is enabled.
func TestSetupRunitVoid(t *testing.T) {
	root, run := t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/runit/runsvdir/default"), 0o755); err != nil {
		t.Fatal(err)
	}
	symlink(t, "/etc/sv/agetty-tty1", filepath.Join(root, "etc/runit/runsvdir/default/agetty-tty1"))
	mkfile(t, filepath.Join(root, "etc/sv/sshd/run"), "#!/bin/sh\nexec sshd -D\n", 0o755)
	mkfile(t, filepath.Join(root, "usr/bin/sshd"), "", 0o755)
	// A link left by the previous boot in the persistent layer is replaced.
	symlink(t, "/old", filepath.Join(root, "etc/runit/runsvdir/default/banger-agent"))
	s, err := setupRunit(root, run, "/run/banger/sv", []string{"/run/banger/banger-agent", "--transport", "serial", "--port-name", "it's"})
	if err != nil {
		t.Fatal(err)
	}
	if s.svdir != "/etc/runit/runsvdir/default" || strings.Join(s.services, ",") != "banger-agent,sshd" {
		t.Errorf("setup = %+v", s)
	}
	svdir := filepath.Join(root, "etc/runit/runsvdir/default")
	if l, _ := os.Readlink(filepath.Join(svdir, "banger-agent")); l != "/run/banger/sv/banger-agent" {
		t.Errorf("agent link -> %q", l)
	}
	if l, _ := os.Readlink(filepath.Join(svdir, "sshd")); l != "/etc/sv/sshd" {
		t.Errorf("sshd link -> %q", l)
	}
	run1, err := os.ReadFile(filepath.Join(run, "banger-agent/run"))
	if err != nil {
		t.Fatal(err)
	}
	if want := `exec /run/banger/banger-agent --transport serial --port-name 'it'\''s'`; !strings.Contains(string(run1), want) || !strings.HasPrefix(string(run1), "#!/bin/sh\n") {
		t.Errorf("run script:\n%s\nwant a line %s", run1, want)
	}
	if fi, _ := os.Stat(filepath.Join(run, "banger-agent/run")); fi == nil || fi.Mode().Perm()&0o111 == 0 {
		t.Error("run script is not executable")
	}
}

// Debian runit with ssh already enabled: only the agent is added. An image with sshd but no
// service for it gets banger's own.
func TestSetupRunitDebianAndFallbacks(t *testing.T) {
	root, run := t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/runit/runsvdir/default"), 0o755); err != nil {
		t.Fatal(err)
	}
	symlink(t, "runit/runsvdir/current", filepath.Join(root, "etc/service"))
	symlink(t, "/etc/sv/ssh", filepath.Join(root, "etc/runit/runsvdir/default/ssh"))
	mkfile(t, filepath.Join(root, "usr/sbin/sshd"), "", 0o755)
	s, err := setupRunit(root, run, "/run/banger/sv", []string{"/a"})
	if err != nil || strings.Join(s.services, ",") != "banger-agent" {
		t.Fatalf("debian: %+v, %v", s, err)
	}

	bare, run2 := t.TempDir(), t.TempDir()
	if err := os.MkdirAll(filepath.Join(bare, "etc/service"), 0o755); err != nil {
		t.Fatal(err)
	}
	mkfile(t, filepath.Join(bare, "usr/sbin/sshd"), "", 0o755)
	s, err = setupRunit(bare, run2, "/run/banger/sv", nil)
	if err != nil || s.svdir != "/etc/service" || strings.Join(s.services, ",") != "banger-sshd" {
		t.Fatalf("no ssh service: %+v, %v", s, err)
	}
	script, _ := os.ReadFile(filepath.Join(run2, "banger-sshd/run"))
	if !strings.Contains(string(script), "exec /usr/sbin/sshd -D -e") || !strings.Contains(string(script), "ssh-keygen -A") {
		t.Errorf("sshd run script:\n%s", script)
	}

	none := t.TempDir()
	if _, err := setupRunit(none, t.TempDir(), "/run/banger/sv", []string{"/a"}); err == nil || !strings.Contains(err.Error(), "no service directory") {
		t.Errorf("no service dir: %v", err)
	}
	// A real directory where the agent's link goes is not replaced.
	if err := os.MkdirAll(filepath.Join(bare, "etc/service/banger-agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := setupRunit(bare, t.TempDir(), "/run/banger/sv", []string{"/a"}); err == nil || !strings.Contains(err.Error(), "not replacing it") {
		t.Errorf("directory in the way: %v", err)
	}
}
