package daemon

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/sshkeys"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system/ext4"
)

// BenchmarkCreateDisks times the disks stage of a create: a work disk from a 200-file seed
// with banger's key authorized, and a layer holding the VM's host key. "from-seed" builds
// both from scratch, as every create did before disk templates; "templates" is the
// daemon's buildDisks, which copies the templates (built once, before the timer).
func BenchmarkCreateDisks(b *testing.B) {
	ctx := context.Background()
	tk := ext4.New()
	if err := tk.Check(); err != nil {
		b.Skipf("e2fsprogs missing: %v", err)
	}
	dir := b.TempDir()
	d := &Daemon{images: &image.Manager{Ext4: tk}, vms: &vmManager{
		keys:  sshkeys.New(filepath.Join(dir, "ssh")),
		disks: newDiskTemplates(filepath.Join(dir, "templates"), tk)}}
	p := createParams{name: "bench", img: store.Image{ID: "img", WorkSeedPath: benchSeed(b, tk)}, diskBytes: ext4.DefaultWorkDiskSize}
	userKey, err := d.vms.keys.EnsureUserKey()
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	vmDir := func() vmSpec {
		n++
		s := vmSpec{Dir: filepath.Join(dir, "vms", fmt.Sprint(n))}
		if err := os.MkdirAll(s.Dir, 0o700); err != nil {
			b.Fatal(err)
		}
		return s
	}
	clean := func(s vmSpec) {
		b.StopTimer()
		_ = os.RemoveAll(s.Dir)
		b.StartTimer()
	}
	b.Run("from-seed", func(b *testing.B) {
		for b.Loop() {
			s := vmDir()
			hostPriv, hostPub, err := sshkeys.NewKey("bench")
			if err != nil {
				b.Fatal(err)
			}
			work := make(chan error, 1)
			go func() {
				_, err := tk.BuildWorkDisk(ctx, ext4.WorkDiskSpec{Path: s.workDisk(), SizeBytes: p.diskBytes, SeedPath: p.img.WorkSeedPath})
				if err == nil {
					err = authorizeKey(ctx, tk, s.workDisk(), userKey)
				}
				work <- err
			}()
			err = tk.CreateExt4(ctx, s.layerDisk(), layerDiskBytes, ext4.CreateOptions{Label: "banger-layer"})
			if err == nil {
				err = tk.WriteExt4Files(ctx, s.layerDisk(), hostKeyEntries("/upper", hostPriv, hostPub))
			}
			if werr := <-work; werr != nil || err != nil {
				b.Fatal(werr, err)
			}
			clean(s)
		}
	})
	b.Run("templates", func(b *testing.B) {
		if _, err := d.buildDisks(ctx, vmDir(), p); err != nil { // builds the templates
			b.Fatal(err)
		}
		for b.Loop() {
			s := vmDir()
			if _, err := d.buildDisks(ctx, s, p); err != nil {
				b.Fatal(err)
			}
			clean(s)
		}
	})
}

// benchSeed is a work seed of 200 4 KiB files in 20 directories.
func benchSeed(b *testing.B, tk *ext4.Toolkit) string {
	src := b.TempDir()
	for i := 0; i < 200; i++ {
		dir := filepath.Join(src, fmt.Sprintf("d%02d", i%20))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", i)), make([]byte, 4096), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	seed := filepath.Join(b.TempDir(), "work-seed.ext4")
	if err := tk.CreateExt4(context.Background(), seed, 256<<20, ext4.CreateOptions{SourceDir: src}); err != nil {
		b.Fatal(err)
	}
	return seed
}
