package tarcopy

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, p, body string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// TestRoundTrip: a tree with nested directories, modes, a symlink, a hard link's content
// and mtimes comes back the same; a single file can be renamed.
func TestRoundTrip(t *testing.T) {
	src := filepath.Join(t.TempDir(), "tree")
	write(t, filepath.Join(src, "a.txt"), "alpha", 0o640)
	write(t, filepath.Join(src, "bin", "run.sh"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(src, "deep", "er", "x"), strings.Repeat("x", 1<<20), 0o600)
	if err := os.Symlink("../a.txt", filepath.Join(src, "bin", "link")); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2020, 5, 6, 7, 8, 9, 0, time.UTC)
	os.Chtimes(filepath.Join(src, "a.txt"), old, old)
	os.Chmod(filepath.Join(src, "deep"), 0o750)
	var buf bytes.Buffer
	if err := Pack(&buf, []string{src}, "", false); err == nil || !strings.Contains(err.Error(), "pass -r") {
		t.Fatalf("a directory without -r: %v", err)
	}
	buf.Reset()
	if err := Pack(&buf, []string{src}, "", true); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if err := Extract(&buf, dst, Options{}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dst, "tree")
	for p, want := range map[string]os.FileMode{"a.txt": 0o640, "bin/run.sh": 0o755, "deep/er/x": 0o600, "deep": 0o750 | os.ModeDir} {
		fi, err := os.Lstat(filepath.Join(out, p))
		if err != nil || fi.Mode() != want {
			t.Errorf("%s: %v %v, want %v", p, fi.Mode(), err, want)
		}
	}
	if l, err := os.Readlink(filepath.Join(out, "bin", "link")); err != nil || l != "../a.txt" {
		t.Errorf("symlink %q %v", l, err)
	}
	if fi, _ := os.Stat(filepath.Join(out, "a.txt")); !fi.ModTime().Equal(old) {
		t.Errorf("mtime %v, want %v", fi.ModTime(), old)
	}
	a, _ := os.ReadFile(filepath.Join(src, "deep", "er", "x"))
	b, _ := os.ReadFile(filepath.Join(out, "deep", "er", "x"))
	if sha256.Sum256(a) != sha256.Sum256(b) {
		t.Error("content differs")
	}
	buf.Reset()
	if err := Pack(&buf, []string{filepath.Join(src, "a.txt")}, "renamed.txt", false); err != nil {
		t.Fatal(err)
	}
	if err := Extract(&buf, dst, Options{}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(dst, "renamed.txt")); string(got) != "alpha" {
		t.Errorf("renamed: %q", got)
	}
}

// TestExtractHostile: a stream from a guest cannot write outside the destination (.., an
// absolute name, through a symlink it made, a hard link to a file outside), make a device or
// a setuid file; each such entry is skipped and said so.
func TestExtractHostile(t *testing.T) {
	outside := t.TempDir()
	victim := filepath.Join(outside, "victim")
	write(t, victim, "untouched", 0o644)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	add := func(h tar.Header, body string) {
		h.Size = int64(len(body))
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		io.WriteString(tw, body)
	}
	add(tar.Header{Name: "top/ok.txt"}, "fine")
	add(tar.Header{Name: "../escape"}, "x")
	add(tar.Header{Name: "top/../../escape2"}, "x")
	add(tar.Header{Name: victim}, "x")
	add(tar.Header{Name: "top/evil", Typeflag: tar.TypeSymlink, Linkname: outside}, "")
	add(tar.Header{Name: "top/evil/victim"}, "overwritten through a symlink")
	add(tar.Header{Name: "top/hard", Typeflag: tar.TypeLink, Linkname: victim}, "")
	add(tar.Header{Name: "top/hard2", Typeflag: tar.TypeLink, Linkname: "top/evil/victim"}, "")
	add(tar.Header{Name: "top/dev", Typeflag: tar.TypeChar, Devmajor: 1, Devminor: 3}, "")
	add(tar.Header{Name: "top/suid", Mode: 0o4755}, "#!/bin/sh\n")
	add(tar.Header{Name: "top/ok.txt", Typeflag: tar.TypeSymlink, Linkname: victim}, "")
	add(tar.Header{Name: "top/ok.txt"}, "replaced, not followed")
	tw.Close()
	dst := t.TempDir()
	var skipped []string
	if err := Extract(&buf, dst, Options{Skipped: func(n, why string) { skipped = append(skipped, n+": "+why) }}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(victim); string(got) != "untouched" {
		t.Fatalf("the file outside was written: %q", got)
	}
	for _, p := range []string{filepath.Join(filepath.Dir(dst), "escape"), filepath.Join(filepath.Dir(dst), "escape2"), filepath.Join(dst, "top", "dev"), filepath.Join(dst, "top", "hard")} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s was made", p)
		}
	}
	if fi, err := os.Stat(filepath.Join(dst, "top", "suid")); err != nil || fi.Mode()&os.ModeSetuid != 0 {
		t.Errorf("setuid entry: %v %v", fi.Mode(), err)
	}
	if fi, err := os.Lstat(filepath.Join(dst, "top", "ok.txt")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("ok.txt: %v %v", fi.Mode(), err)
	}
	if len(skipped) < 6 {
		t.Errorf("skipped only %d entries: %q", len(skipped), skipped)
	}
}
