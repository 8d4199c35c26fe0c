package image

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// An unpacked kernel package is copied in, recorded with its suite, and found again by
// EnsureKernel (so image imports of that suite need no network).
func TestImportKernel(t *testing.T) {
	m := newTestManager(t)
	src := t.TempDir()
	rel := "6.1.0-99-cloud-amd64"
	files := map[string]string{
		"boot/vmlinuz-" + rel:                                "not really a bzImage",
		"lib/modules/" + rel + "/kernel/drivers/x.ko":        "module",
		"lib/modules/" + rel + "/modules.order":              "kernel/drivers/x.ko\n",
		"usr/share/doc/linux-image-" + rel + "/changelog.gz": "skipped",
	}
	for p, data := range files {
		full := filepath.Join(src, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	k, err := m.ImportKernel(ctx, src, "bookworm")
	if err != nil {
		t.Fatal(err)
	}
	if k.Release != rel || k.Suite != "bookworm" || k.Vmlinux != "" {
		t.Fatalf("kernel = %+v", k)
	}
	if data, err := os.ReadFile(k.BzImage); err != nil || string(data) != "not really a bzImage" {
		t.Fatalf("bzImage copy: %q %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(k.ModulesDir, "kernel/drivers/x.ko")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(k.Dir, "usr")); !os.IsNotExist(err) {
		t.Fatalf("copied more than boot and modules: %v", err)
	}
	got, err := m.EnsureKernel(ctx, "bookworm", false, nil)
	if err != nil || got.ID != k.ID {
		t.Fatalf("EnsureKernel = %+v, %v", got, err)
	}
	again, err := m.ImportKernel(ctx, src, "bookworm")
	if err != nil || again.ID != k.ID {
		t.Fatalf("second import = %+v, %v", again, err)
	}
	if _, err := m.ImportKernel(ctx, t.TempDir(), "bookworm"); err == nil {
		t.Fatal("import of an empty directory succeeded")
	}
}
