package ext4

// Hostile ext4 images and debugfs scripts (issue 14 items 1 and 2).

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// hostileExt4 builds an ext4 whose /root holds a regular file and a symlink whose on-disk
// names climb out of any directory they are dumped into (outside/escaped and
// outside/escaped-link), plus an ordinary /root/ok. mkfs.ext4 -d makes it with
// same-length placeholder names, patched afterwards in the image bytes (metadata_csum off,
// so the directory block stays readable).
func hostileExt4(t *testing.T, e *Toolkit, outside string) string {
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
	mkfs, _ := e.tool(toolMkfs)
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

// TestBuildWorkSeedConfinesHostileNames drives the work-seed path over an image whose
// /root has dirents named ../../<outside>/escaped: nothing may land outside the staging
// area, and the rest of /root still makes it into the seed.
func TestBuildWorkSeedConfinesHostileNames(t *testing.T) {
	e := testExt4(t)
	outside := t.TempDir()
	img := hostileExt4(t, e, outside)
	seed := filepath.Join(t.TempDir(), "work-seed.ext4")
	warnings, err := e.BuildWorkSeed(context.Background(), img, seed)
	ents, _ := os.ReadDir(outside)
	for _, ent := range ents {
		t.Errorf("building the work seed wrote %s outside its staging area", filepath.Join(outside, ent.Name()))
	}
	if err != nil {
		t.Fatalf("work seed: %v", err)
	}
	if !contains(warnings, "escaped") || !contains(warnings, "escaped-link") {
		t.Errorf("the refused names are not reported: %q", warnings)
	}
	mustFsck(t, e, seed)
	if data, err := e.ReadExt4File(context.Background(), seed, "/ok"); err != nil || string(data) != "fine\n" {
		t.Errorf("/ok in the seed: %q, %v", data, err)
	}
	if list, err := e.ListExt4Dir(context.Background(), seed, "/"); err != nil || len(list) != 2 { // ok, lost+found
		t.Errorf("seed root: %+v, %v", list, err)
	}
}

func TestDebugfsScriptRefusesUnsafeLines(t *testing.T) {
	cases := map[string]func(s *dfScript){
		"line over the limit":   func(s *dfScript) { s.add("mknod", strings.Repeat("x", 8300)) },
		"newline in a name":     func(s *dfScript) { s.add("cd", "/a\n!id") },
		"carriage return":       func(s *dfScript) { s.add("cd", "/a\r") },
		"NUL":                   func(s *dfScript) { s.add("cd", "/a\x00") },
		"escape character":      func(s *dfScript) { s.add("cd", "/a\x1b]0;x\a") },
		"DEL":                   func(s *dfScript) { s.add("cd", "/a\x7f") },
		"shell escape":          func(s *dfScript) { s.add("!touch /tmp/x") },
		"option-like argument":  func(s *dfScript) { s.add("ea_set -f", "/v", "/f", "-f/home/u/.ssh/id_ed25519") },
		"long line via addf":    func(s *dfScript) { s.addf("sif", "/"+strings.Repeat("y", 8300), "mode 0644") },
		"control char via addf": func(s *dfScript) { s.addf("sif", "/a\n", "mode 0644") },
	}
	for name, build := range cases {
		t.Run(name, func(t *testing.T) {
			s := &dfScript{}
			build(s)
			if s.err == nil {
				t.Fatalf("script accepted: %.120q", s.b.String())
			}
			if s.b.Len() != 0 {
				t.Errorf("refused command still written: %.120q", s.b.String())
			}
		})
	}
	ok := &dfScript{}
	ok.add("sif", "/a b/\"q\"", "mode")
	if ok.err != nil {
		t.Errorf("an ordinary name was refused: %v", ok.err)
	}
}

// TestStagingUnknownSizeStaysOffTmpfs: a tar of unknown size must not stage in RAM-backed
// /dev/shm (it could fill it); a small, known size may.
func TestStagingUnknownSizeStaysOffTmpfs(t *testing.T) {
	e := testExt4(t)
	target := filepath.Join(t.TempDir(), "img.ext4")
	d, err := e.stagingDir(target, "tar", -1)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(d)
	if filepath.Dir(d) != filepath.Dir(target) {
		t.Errorf("staging of unknown size went to %s, want next to the image", d)
	}
}
