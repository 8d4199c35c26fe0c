package daemon

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeTemplate lays out a complete template of 1 MiB of memory in a fresh dir named for
// its key, with meta edited by edit before it is written.
func writeTemplate(t *testing.T, edit func(m *templateMeta)) string {
	t.Helper()
	in := templateInputs{Format: templateFormat, ImageID: "img", Driver: "qemu", templateShape: templateShape{CPUs: 1, MemoryMiB: 1, DiskBytes: 1 << 20}}
	meta := templateMeta{Key: in.key(), Inputs: in, StateFile: "qemu-state"}
	dir := filepath.Join(t.TempDir(), meta.Key)
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, size := range map[string]int{templateMemory: 1 << 20, "qemu-state": 100, "work.ext4": 1 << 20, "layer.ext4": 4096} {
		if err := os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if edit != nil {
		edit(&meta)
	}
	b, _ := json.Marshal(meta)
	if err := os.WriteFile(filepath.Join(dir, templateMetaName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestLoadTemplate(t *testing.T) {
	dir := writeTemplate(t, nil)
	tpl, err := loadTemplate(dir)
	if err != nil {
		t.Fatalf("a complete template: %v", err)
	}
	if snap := tpl.snapshot(); snap.MemoryFile != filepath.Join(dir, "memory") || snap.StateFile != filepath.Join(dir, "qemu-state") {
		t.Errorf("snapshot %+v", snap)
	}
}

// TestLoadTemplateRejectsHostile: a template directory is data on disk, possibly damaged
// or planted: every check fails closed, with a reason, and nothing outside the directory
// is named.
func TestLoadTemplateRejectsHostile(t *testing.T) {
	cases := map[string]struct {
		setup func(t *testing.T) string
		want  string
	}{
		"state file outside the dir": {func(t *testing.T) string {
			return writeTemplate(t, func(m *templateMeta) { m.StateFile = "../../../../etc/passwd" })
		}, "bad state file"},
		"hidden state file": {func(t *testing.T) string {
			return writeTemplate(t, func(m *templateMeta) { m.StateFile = ".." })
		}, "bad state file"},
		"key of another template": {func(t *testing.T) string {
			return writeTemplate(t, func(m *templateMeta) { m.Inputs.CPUs = 64 })
		}, "not this template's"},
		"missing memory file": {func(t *testing.T) string {
			dir := writeTemplate(t, nil)
			os.Remove(filepath.Join(dir, templateMemory))
			return dir
		}, "memory is missing"},
		"memory of another shape": {func(t *testing.T) string {
			dir := writeTemplate(t, nil)
			os.WriteFile(filepath.Join(dir, templateMemory), make([]byte, 4096), 0o600)
			return dir
		}, "memory is 4096 bytes"},
		"state file a symlink": {func(t *testing.T) string {
			dir := writeTemplate(t, nil)
			os.Remove(filepath.Join(dir, "qemu-state"))
			os.Symlink("/etc/passwd", filepath.Join(dir, "qemu-state"))
			return dir
		}, "not a regular file"},
		"empty state file": {func(t *testing.T) string {
			dir := writeTemplate(t, nil)
			os.WriteFile(filepath.Join(dir, "qemu-state"), nil, 0o600)
			return dir
		}, "qemu-state is 0 bytes"},
		"oversized meta": {func(t *testing.T) string {
			dir := writeTemplate(t, nil)
			os.WriteFile(filepath.Join(dir, templateMetaName), []byte(strings.Repeat(" ", templateMetaLimit+10)), 0o600)
			return dir
		}, "is over"},
		"meta not JSON": {func(t *testing.T) string {
			dir := writeTemplate(t, nil)
			os.WriteFile(filepath.Join(dir, templateMetaName), []byte("\x1b[2J{"), 0o600)
			return dir
		}, "does not decode"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := loadTemplate(c.setup(t)); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("loadTemplate: %v, want %q", err, c.want)
			}
		})
	}
}

// TestTemplateKeyCoversInputs: any input change is a new key (a new agent build, another
// shape or VMM), so a stale template is never restored.
func TestTemplateKeyCoversInputs(t *testing.T) {
	base := templateInputs{Format: templateFormat, ImageID: "i", Rootfs: "r", Kernel: "k", Initramfs: "a", Driver: "qemu", Accel: "tcg", UserKey: "u",
		templateShape: templateShape{CPUs: 2, MemoryMiB: 1024, DiskBytes: 8 << 30, Network: true}}
	edits := []func(*templateInputs){
		func(in *templateInputs) { in.Initramfs = "b" },
		func(in *templateInputs) { in.Rootfs = "r2" },
		func(in *templateInputs) { in.Kernel = "k2" },
		func(in *templateInputs) { in.Accel = "kvm" },
		func(in *templateInputs) { in.CPUs = 4 },
		func(in *templateInputs) { in.MemoryMiB = 512 },
		func(in *templateInputs) { in.DiskBytes = 4 << 30 },
		func(in *templateInputs) { in.Network = false },
		func(in *templateInputs) { in.UserKey = "v" },
	}
	seen := map[string]bool{base.key(): true}
	for i, edit := range edits {
		in := base
		edit(&in)
		if seen[in.key()] {
			t.Errorf("edit %d does not change the key", i)
		}
		seen[in.key()] = true
	}
}
