package image

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDebianPull really builds debian-bookworm from the Debian archive (mmdebstrap, with
// the archive's signatures verified) and fetches its kernel. It takes about a minute and
// needs the archive, so it runs only with BANGER_TEST_DEBIAN_PULL=1. Set
// BANGER_TEST_DEBIAN_MIRROR to use another mirror, BANGER_TEST_DEBIAN_KEEP=DIR to keep the
// result (CI caches it for the rest of the run).
func TestDebianPull(t *testing.T) {
	if os.Getenv("BANGER_TEST_DEBIAN_PULL") != "1" {
		t.Skip("set BANGER_TEST_DEBIAN_PULL=1 to pull debian-bookworm from the Debian archive (about a minute, needs deb.debian.org or BANGER_TEST_DEBIAN_MIRROR)")
	}
	m := newTestManager(t)
	if keep := os.Getenv("BANGER_TEST_DEBIAN_KEEP"); keep != "" {
		m.ImagesDir, m.KernelsDir = filepath.Join(keep, "images"), filepath.Join(keep, "kernels")
	}
	m.Mirror = os.Getenv("BANGER_TEST_DEBIAN_MIRROR")
	ctx := context.Background()
	start := time.Now()
	last := ""
	img, err := m.Pull(ctx, PullOptions{Ref: "debian-bookworm", Progress: func(p Progress) {
		if p.Stage != last {
			t.Logf("%6.1fs %s", time.Since(start).Seconds(), p.Stage)
			last = p.Stage
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	md := ImageMetadata(img)
	t.Logf("debian-bookworm pulled in %s: rootfs %d MiB apparent / %d MiB used, content %d MiB, work seed %d KiB, %d packages, kernel %s",
		time.Since(start).Round(time.Second), md.RootfsBytes>>20, md.RootfsUsed>>20, md.ContentBytes>>20, md.WorkSeedBytes>>10, md.PackageCount, img.KernelRef)
	if err := m.Ext4.FsckExt4(ctx, img.RootfsPath); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/usr/lib/systemd/systemd", "/usr/sbin/sshd", "/sbin/init", "/usr/sbin/ip", "/etc/ssl/certs/ca-certificates.crt"} {
		if _, err := m.Ext4.StatExt4(ctx, img.RootfsPath, p); err != nil {
			t.Errorf("%s missing: %v", p, err)
		}
	}
	// No shared SSH host keys: each VM gets its own from banger.
	if ents, err := m.Ext4.ListExt4Dir(ctx, img.RootfsPath, "/etc/ssh"); err != nil {
		t.Error(err)
	} else {
		for _, e := range ents {
			if strings.HasPrefix(e.Name, "ssh_host_") {
				t.Errorf("the image carries a host key: /etc/ssh/%s", e.Name)
			}
		}
	}
	man, err := Manifest(img)
	if err != nil || man.Format != "dpkg" {
		t.Fatalf("manifest: %v %v", man.Format, err)
	}
	have := map[string]bool{}
	for _, p := range man.Packages {
		have[p.Name] = true
	}
	for _, p := range DebianPackages {
		if !have[p] {
			t.Errorf("package %s not in the manifest", p)
		}
	}
	if _, err := m.Ext4.StatExt4(ctx, img.WorkSeedPath, "/.bashrc"); err != nil {
		t.Errorf("work seed has no .bashrc: %v", err)
	}
	k := md.Kernel
	if k == nil || !strings.HasSuffix(k.Release, "cloud-amd64") {
		t.Fatalf("kernel: %+v", k)
	}
	for _, p := range []string{k.Vmlinux, k.BzImage, k.ModulesDir} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("kernel file: %v", err)
		}
	}
}
