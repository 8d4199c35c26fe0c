package ext4

// Hostile ext4 images and debugfs scripts (issue 14 items 1 and 2).

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/system/ext4/ext4test"
)

// TestBuildWorkSeedConfinesHostileNames drives the work-seed path over an image whose
// /root has dirents named ../../<outside>/escaped: nothing may land outside the staging
// area, and the rest of /root still makes it into the seed.
func TestBuildWorkSeedConfinesHostileNames(t *testing.T) {
	e := testExt4(t)
	outside := t.TempDir()
	mkfs, _ := e.tool(toolMkfs)
	img := ext4test.HostileImage(t, mkfs, outside)
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
