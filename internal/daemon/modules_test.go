package daemon

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/system/ext4"
	"github.com/banger-vm/banger/internal/system/hosttools"
	"github.com/banger-vm/banger/internal/vmm"
)

func TestModulesDrives(t *testing.T) {
	if hosttools.LookPathIn("mkfs.ext4", "/usr/sbin:/sbin:/usr/bin:/bin") == "" || hosttools.LookPathIn("debugfs", "/usr/sbin:/sbin:/usr/bin:/bin") == "" {
		t.Skip("mkfs.ext4/debugfs not installed (apt-get install e2fsprogs)")
	}
	dir := t.TempDir()
	d := &Daemon{images: &image.Manager{Ext4: ext4.New(), KernelsDir: dir}}
	k := image.Kernel{ID: "k1", Dir: filepath.Join(dir, "k1"), ModulesDir: filepath.Join(dir, "k1/lib/modules/6.1.0-1-cloud-amd64")}
	if err := os.MkdirAll(filepath.Join(k.ModulesDir, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	drives, err := d.modulesDrives(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	want := vmm.Drive{ID: "modules", Path: filepath.Join(k.Dir, image.ModulesDiskName), ReadOnly: true, Role: vmm.RoleModules}
	if len(drives) != 1 || drives[0] != want {
		t.Fatalf("drives = %+v, want %+v", drives, want)
	}
	if err := d.images.Ext4.FsckExt4(ctx, want.Path); err != nil {
		t.Fatal(err)
	}
	spec := vmm.MachineSpec{Kernel: "/k", VCPUs: 1, MemoryMiB: 128, RunDir: "/r",
		Drives: append([]vmm.Drive{{ID: "rootfs", Role: vmm.RoleRoot, ReadOnly: true}}, drives...)}
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	none, err := d.modulesDrives(ctx, image.Kernel{ID: "k2", Dir: filepath.Join(dir, "k2")})
	if err != nil || none != nil {
		t.Fatalf("kernel without modules: %+v, %v", none, err)
	}
	if _, err := d.modulesDrives(ctx, image.Kernel{ID: "k3", Dir: filepath.Join(dir, "k3"), ModulesDir: filepath.Join(dir, "k3/lib/modules/x")}); err == nil {
		t.Fatal("a kernel whose modules directory is gone gave a drive")
	}
}
