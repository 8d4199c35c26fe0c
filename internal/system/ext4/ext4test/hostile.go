// Package ext4test builds hostile ext4 images for the tests of the packages that read
// untrusted filesystems (system/ext4's work seed, image import). Only tests import it.
package ext4test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// HostileImage builds, with the mkfs.ext4 at mkfs, an ext4 whose /root holds a regular
// file and a symlink whose on-disk names climb out of any directory they are dumped into
// (to outside/escaped and outside/escaped-link), plus an ordinary /root/ok ("fine\n").
// mkfs.ext4 -d makes it with same-length placeholder names; the names are then patched in
// the image bytes (metadata_csum off, so the directory block stays readable).
func HostileImage(t testing.TB, mkfs, outside string) string {
	t.Helper()
	climb := strings.Repeat("../", 24) + strings.TrimPrefix(outside, "/") + "/"
	names := map[string]string{"Q": climb + "escaped", "L": climb + "escaped-link"}
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "root"), 0o700); err != nil {
		t.Fatal(err)
	}
	for ph, evil := range names {
		if len(evil) > 255 {
			t.Skipf("temp dir path too long for a 255-byte dirent: %s", outside)
		}
		p := filepath.Join(src, "root", strings.Repeat(ph, len(evil)))
		var err error
		if ph == "Q" {
			err = os.WriteFile(p, []byte("written by the image\n"), 0o644)
		} else {
			err = os.Symlink("/etc/passwd", p)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "root", "ok"), []byte("fine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "evil.ext4")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", "-O", "^metadata_csum,^dir_index", "-E", "root_owner=0:0", "-d", src, img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	raw, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	for ph, evil := range names {
		placeholder := []byte(strings.Repeat(ph, len(evil)))
		if n := bytes.Count(raw, placeholder); n != 1 {
			t.Fatalf("placeholder for %s found %d times in the image, want 1", evil, n)
		}
		raw = bytes.Replace(raw, placeholder, []byte(evil), 1)
	}
	if err := os.WriteFile(img, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return img
}
