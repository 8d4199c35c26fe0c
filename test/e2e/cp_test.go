//go:build integration

package e2e

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fileSum is the sha256 of a host file.
func fileSum(t *testing.T, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestVMCopy: vm cp -r of a tree with modes, a symlink and a 100 MB file into a busybox
// guest and back: the same modes, link and sha256; a missing path or a directory without
// -r exits non-zero with a message; "-" streams a tar to stdout.
func TestVMCopy(t *testing.T) {
	e := setup(t)
	e.must("vm", "create", "cp", "--image", "bb", "--memory", "512M", "--start")
	src := filepath.Join(e.dir, "tree")
	for p, mode := range map[string]os.FileMode{"a.txt": 0o640, "bin/run.sh": 0o755, "sub/big": 0o600} {
		full := filepath.Join(src, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		body := []byte("content of " + p + "\n")
		if p == "sub/big" {
			body = make([]byte, 100<<20)
			for i := range body {
				body[i] = byte(i*7 + i>>11)
			}
		}
		if err := os.WriteFile(full, body, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(full, mode)
	}
	if err := os.Chmod(filepath.Join(src, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../a.txt", filepath.Join(src, "bin", "link")); err != nil {
		t.Fatal(err)
	}
	if e.cred != nil {
		filepath.Walk(e.dir, func(p string, _ os.FileInfo, _ error) error {
			os.Lchown(p, int(e.cred.Uid), int(e.cred.Gid))
			return nil
		})
	}
	e.must("vm", "cp", "-r", src, "cp:/root/")
	guestSum := strings.Fields(e.must("vm", "exec", "cp", "--", "sha256sum", "/root/tree/sub/big").stdout)[0]
	if want := fileSum(t, filepath.Join(src, "sub/big")); guestSum != want {
		t.Fatalf("in the guest: sha256 %s, want %s", guestSum, want)
	}
	back := filepath.Join(e.dir, "back")
	if err := os.Mkdir(back, 0o755); err != nil {
		t.Fatal(err)
	}
	if e.cred != nil {
		os.Chown(back, int(e.cred.Uid), int(e.cred.Gid))
	}
	e.must("vm", "cp", "-r", "cp:/root/tree", back)
	for p, want := range map[string]os.FileMode{"a.txt": 0o640, "bin/run.sh": 0o755, "sub/big": 0o600, "sub": 0o750 | os.ModeDir} {
		fi, err := os.Lstat(filepath.Join(back, "tree", p))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s after the round trip: %v %v, want %v", p, fi.Mode(), err, want)
		}
	}
	if l, err := os.Readlink(filepath.Join(back, "tree", "bin", "link")); err != nil || l != "../a.txt" {
		t.Errorf("symlink after the round trip: %q %v", l, err)
	}
	if got, want := fileSum(t, filepath.Join(back, "tree", "sub", "big")), fileSum(t, filepath.Join(src, "sub", "big")); got != want {
		t.Fatalf("100 MB file after the round trip: %s, want %s", got, want)
	}
	// One file under a new name, both ways.
	e.must("vm", "cp", filepath.Join(src, "a.txt"), "cp:/root/renamed.txt")
	if got := e.must("vm", "exec", "cp", "--", "cat", "/root/renamed.txt").stdout; got != "content of a.txt\n" {
		t.Fatalf("renamed copy in: %q", got)
	}
	e.must("vm", "cp", "cp:/root/renamed.txt", filepath.Join(back, "out.txt"))
	if got, _ := os.ReadFile(filepath.Join(back, "out.txt")); string(got) != "content of a.txt\n" {
		t.Fatalf("renamed copy out: %q", got)
	}
	if r := e.run("vm", "cp", "cp:/root/nosuch", back); r.code == 0 || !strings.Contains(r.stderr, "no such file or directory in the VM") {
		t.Fatalf("missing path: %d %q", r.code, r.stderr)
	}
	if r := e.run("vm", "cp", "cp:/root/tree", back); r.code == 0 || !strings.Contains(r.stderr, "pass -r") {
		t.Fatalf("a directory without -r: %d %q", r.code, r.stderr)
	}
	if r := e.run("vm", "cp", filepath.Join(e.dir, "nosuch"), "cp:/root/"); r.code == 0 || !strings.Contains(r.stderr, "no such file") {
		t.Fatalf("missing local path: %d %q", r.code, r.stderr)
	}
	if r := e.must("vm", "cp", "-r", "cp:/root/tree/bin", "-"); !strings.Contains(r.stdout, "bin/run.sh") || !strings.HasPrefix(r.stdout, "bin/") {
		t.Fatalf("tar to stdout: %d bytes, starting %q", len(r.stdout), r.stdout[:min(len(r.stdout), 20)])
	}
	e.must("vm", "rm", "--force", "cp")
	e.requireNoLeaks()
}
