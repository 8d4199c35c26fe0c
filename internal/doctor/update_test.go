package doctor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/paths"
	"github.com/banger-vm/banger/internal/update"
)

func TestUpdateCheckRepairsInterruptedUpdate(t *testing.T) {
	root := t.TempDir()
	env := paths.Env{Home: filepath.Join(root, "home"), XDGCacheHome: filepath.Join(root, "cache")}
	bin := filepath.Join(env.Home, ".local/bin")
	os.MkdirAll(bin, 0o755)
	for _, n := range update.Binaries() {
		os.WriteFile(filepath.Join(bin, n), []byte("old "+n), 0o755)
	}
	exe := filepath.Join(bin, "banger")

	// No staging dir at all: nothing to do, nothing created.
	if r := updateCheck(exe, env, "v1"); r.Status != api.Pass {
		t.Fatalf("clean install: %+v", r)
	}
	if _, err := os.Stat(filepath.Join(root, "cache/banger/update")); err == nil {
		t.Fatal("doctor created the staging dir")
	}

	// An update killed after swapping banger-init: doctor puts the old one back.
	in, err := update.Locate(exe, env)
	if err != nil {
		t.Fatal(err)
	}
	staged := filepath.Join(in.Staging, "v2/bin")
	os.MkdirAll(staged, 0o700)
	j := update.Journal{From: "v1", To: "v2", Phase: update.PhaseSwapping}
	for _, n := range update.Binaries() {
		os.WriteFile(filepath.Join(staged, n), []byte("new "+n), 0o755)
		o, _ := update.FileSHA256(filepath.Join(bin, n))
		nw, _ := update.FileSHA256(filepath.Join(staged, n))
		j.Files = append(j.Files, update.JournalFile{Name: n, Old: o, New: nw})
	}
	if err := in.WriteJournal(j); err != nil {
		t.Fatal(err)
	}
	func() {
		defer func() { recover() }()
		in.Swap(staged, func(p string) {
			if p == "swapped:banger-init" {
				panic("killed")
			}
		})
	}()
	r := updateCheck(exe, env, "v2")
	if r.Status != api.Warn || !strings.Contains(r.Detail, "repaired an interrupted update v1 -> v2") || !strings.Contains(r.Hint, "banger daemon restart") {
		t.Fatalf("interrupted update: %+v", r)
	}
	if d, _ := os.ReadFile(filepath.Join(bin, "banger-init")); string(d) != "old banger-init" {
		t.Fatalf("banger-init after repair: %q", d)
	}
	if r := updateCheck(exe, env, "v1"); r.Status != api.Pass || !strings.Contains(r.Detail, "no interrupted update") {
		t.Fatalf("after repair: %+v", r)
	}

	// While an update holds the lock, doctor leaves everything alone.
	l, err := in.TryLock()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if r := updateCheck(exe, env, "v1"); r.Status != api.Pass || !strings.Contains(r.Detail, "in progress") {
		t.Fatalf("locked: %+v", r)
	}
}
