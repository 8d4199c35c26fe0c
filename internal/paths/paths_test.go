package paths

import (
	"os"
	"strings"
	"testing"
)

func TestResolveXDG(t *testing.T) {
	l, err := Resolve(Env{Home: "/home/u", XDGConfigHome: "/c", XDGDataHome: "/d", XDGStateHome: "/s", XDGCacheHome: "/k", XDGRuntimeDir: "/run/user/7", UID: 7})
	if err != nil {
		t.Fatal(err)
	}
	want := Layout{
		ConfigDir: "/c/banger", ConfigFile: "/c/banger/config.toml",
		DataDir: "/d/banger", ImagesDir: "/d/banger/images", VMsDir: "/d/banger/vms", SSHDir: "/d/banger/ssh", StateDB: "/d/banger/state.db",
		StateDir: "/s/banger", LogDir: "/s/banger", DaemonLog: "/s/banger/daemon.log", CacheDir: "/k/banger",
		RuntimeDir: "/run/user/7/banger", Socket: "/run/user/7/banger/banger.sock", LockFile: "/run/user/7/banger/daemon.lock",
	}
	if l != want {
		t.Fatalf("got  %+v\nwant %+v", l, want)
	}
}

func TestResolveFallbacks(t *testing.T) {
	// Relative XDG values are invalid per the spec and ignored.
	l, err := Resolve(Env{Home: "/home/u", XDGDataHome: "relative", UID: 1000, TempDir: "/tmp"})
	if err != nil {
		t.Fatal(err)
	}
	if l.ConfigFile != "/home/u/.config/banger/config.toml" || l.StateDB != "/home/u/.local/share/banger/state.db" ||
		l.DaemonLog != "/home/u/.local/state/banger/daemon.log" || l.CacheDir != "/home/u/.cache/banger" ||
		l.Socket != "/tmp/banger-1000/banger.sock" {
		t.Fatalf("fallbacks: %+v", l)
	}
	if _, err := Resolve(Env{UID: 1}); err == nil || !strings.Contains(err.Error(), "home directory") {
		t.Fatalf("no HOME: %v", err)
	}
	if d := l.WithDataDir("/big"); d.StateDB != "/big/state.db" || d.ImagesDir != "/big/images" || d.VMsDir != "/big/vms" || d.SSHDir != "/big/ssh" {
		t.Fatalf("WithDataDir: %+v", d)
	}
}

func TestEnsureDaemonDirsModes(t *testing.T) {
	home := t.TempDir()
	l, err := Resolve(Env{Home: home, UID: os.Getuid(), TempDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.EnsureDaemonDirs(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{l.DataDir, l.ImagesDir, l.VMsDir, l.StateDir, l.CacheDir, l.RuntimeDir} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s mode %o, want 0700", d, fi.Mode().Perm())
		}
	}
	// A runtime dir someone loosened is tightened again.
	if err := os.Chmod(l.RuntimeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := l.EnsureRuntimeDir(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(l.RuntimeDir); fi.Mode().Perm() != 0o700 {
		t.Errorf("runtime dir not restricted again: %o", fi.Mode().Perm())
	}
}

func TestRuntimeDirOfAnotherUserRefused(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to create a directory owned by another user (chown)")
	}
	tmp := t.TempDir()
	l, err := Resolve(Env{Home: t.TempDir(), UID: 0, TempDir: tmp})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(l.RuntimeDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(l.RuntimeDir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	err = l.EnsureRuntimeDir()
	if err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("foreign runtime dir: %v", err)
	}
}

func TestRuntimeDirSymlinkRefused(t *testing.T) {
	tmp := t.TempDir()
	l, err := Resolve(Env{Home: t.TempDir(), UID: os.Getuid(), TempDir: tmp})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(t.TempDir(), l.RuntimeDir); err != nil {
		t.Fatal(err)
	}
	if err := l.EnsureRuntimeDir(); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Fatalf("symlinked runtime dir: %v", err)
	}
}
