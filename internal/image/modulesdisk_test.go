package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A kernel import builds the modules disk in the kernel's directory; a kernel installed
// without one (before this existed) gets it lazily, and a kernel without modules gets none.
func TestModulesDiskAtImportAndLazily(t *testing.T) {
	m := newTestManager(t)
	src := t.TempDir()
	rel := "6.1.0-98-cloud-amd64"
	for p, data := range map[string]string{
		"boot/vmlinuz-" + rel:                         "not really a bzImage",
		"lib/modules/" + rel + "/kernel/drivers/x.ko": "not a module",
		"lib/modules/" + rel + "/modules.order":       "kernel/drivers/x.ko\n",
	} {
		full := filepath.Join(src, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	k, err := m.ImportKernel(ctx, src, "bookworm")
	if err != nil {
		t.Fatal(err)
	}
	disk := k.ModulesDisk()
	if disk != filepath.Join(k.Dir, ModulesDiskName) {
		t.Fatalf("ModulesDisk() = %q", disk)
	}
	checkModulesDisk(t, m, disk, "kernel/drivers/x.ko", "not a module")

	// A kernel from before modules disks: the first VM start builds it.
	if err := os.Remove(disk); err != nil {
		t.Fatal(err)
	}
	got, err := m.EnsureModulesDisk(ctx, k)
	if err != nil || got != disk {
		t.Fatalf("EnsureModulesDisk = %q, %v", got, err)
	}
	checkModulesDisk(t, m, disk, "kernel/drivers/x.ko", "not a module")
	fi1, _ := os.Stat(disk)
	if again, err := m.EnsureModulesDisk(ctx, k); err != nil || again != disk {
		t.Fatalf("second EnsureModulesDisk = %q, %v", again, err)
	}
	if fi2, _ := os.Stat(disk); !os.SameFile(fi1, fi2) {
		t.Error("EnsureModulesDisk rebuilt a disk that was there")
	}
	ents, _ := os.ReadDir(k.Dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), stagingPrefix) {
			t.Errorf("staging left in the kernel dir: %s", e.Name())
		}
	}

	noMods := Kernel{ID: "x", Dir: t.TempDir()}
	if got, err := m.EnsureModulesDisk(ctx, noMods); err != nil || got != "" {
		t.Fatalf("kernel without modules: %q, %v", got, err)
	}
}

// A failed build (the modules directory is gone) leaves no disk behind.
func TestModulesDiskFailureLeavesNothing(t *testing.T) {
	m := newTestManager(t)
	dir := t.TempDir()
	k := Kernel{ID: "gone", Dir: dir, ModulesDir: filepath.Join(dir, "lib/modules/6.1.0-1-cloud-amd64")}
	_, err := m.EnsureModulesDisk(context.Background(), k)
	if err == nil || !strings.Contains(err.Error(), "kernel gone") {
		t.Fatalf("err = %v", err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Errorf("left behind: %v", ents)
	}
}

// The real Debian kernel: the disk holds every module, owned by root, with modules.dep.bin,
// and passes e2fsck. Build time and size are logged for the issue note.
func TestModulesDiskRealKernel(t *testing.T) {
	modDir := realModulesDir(t)
	m := newTestManager(t)
	img := filepath.Join(t.TempDir(), ModulesDiskName)
	st, err := BuildModulesDisk(context.Background(), m.Ext4, modDir, img)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Warnings) > 0 {
		t.Errorf("warnings: %v", st.Warnings)
	}
	if st.Modules < 500 {
		t.Errorf("only %d modules indexed", st.Modules)
	}
	checkModulesDisk(t, m, img, "kernel/fs/xfs/xfs.ko", "")
	dep, err := m.Ext4.ReadExt4File(context.Background(), img, "/modules.dep")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(dep), "kernel/fs/xfs/xfs.ko:") {
		t.Errorf("modules.dep has no xfs line")
	}
	for _, f := range []string{"/modules.dep.bin", "/modules.alias.bin", "/modules.symbols.bin", "/modules.builtin.bin", "/modules.builtin.alias.bin", "/modules.order"} {
		if _, err := m.Ext4.StatExt4(context.Background(), img, f); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	var sys syscall.Stat_t
	fi, _ := os.Stat(img)
	_ = syscall.Stat(img, &sys)
	t.Logf("modules disk: %d modules, %.1f MiB of data, built in %s; image %d MiB apparent, %.1f MiB allocated",
		st.Modules, float64(st.Bytes)/(1<<20), st.Duration.Round(1e6), fi.Size()>>20, float64(sys.Blocks*512)/(1<<20))
}

func checkModulesDisk(t *testing.T, m *Manager, img, module, content string) {
	t.Helper()
	ctx := context.Background()
	if err := m.Ext4.FsckExt4(ctx, img); err != nil {
		t.Fatalf("e2fsck: %v", err)
	}
	st, err := m.Ext4.StatExt4(ctx, img, "/"+module)
	if err != nil {
		t.Fatal(err)
	}
	if st.UID != 0 || st.GID != 0 || st.Mode.Perm()&0o044 != 0o044 {
		t.Errorf("%s: uid %d gid %d mode %v, want root-owned and world-readable", module, st.UID, st.GID, st.Mode)
	}
	if content != "" {
		data, err := m.Ext4.ReadExt4File(ctx, img, "/"+module)
		if err != nil || string(data) != content {
			t.Errorf("%s = %q, %v", module, data, err)
		}
	}
	if _, err := m.Ext4.StatExt4(ctx, img, "/modules.dep.bin"); err != nil {
		t.Errorf("no modules.dep.bin: %v", err)
	}
}

func realModulesDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("BANGER_TEST_ASSETS")
	if dir == "" {
		dir = "/var/cache/banger-test"
	}
	mods, _ := filepath.Glob(filepath.Join(dir, "kernel/lib/modules/*/kernel"))
	if len(mods) != 1 {
		msg := "no test kernel modules in " + dir + "/kernel/lib/modules: run scripts/fetch-test-assets.sh (as root)"
		if os.Getenv("BANGER_REQUIRE_ASSETS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return filepath.Dir(mods[0])
}
