//go:build integration

package guestboot

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system/ext4"
)

var (
	modulesOnce sync.Once
	modulesDisk string
	modulesErr  error
)

// getModulesDisk builds the test kernel's modules disk once, as kernel pull/import does.
func getModulesDisk(t testing.TB, f fixture) string {
	t.Helper()
	modulesOnce.Do(func() {
		modulesDisk = filepath.Join(fixtureDir, image.ModulesDiskName)
		st, err := image.BuildModulesDisk(context.Background(), f.ext4, f.Assets.ModulesDir, modulesDisk)
		if err != nil {
			modulesErr = err
			return
		}
		if err := f.ext4.FsckExt4(context.Background(), modulesDisk); err != nil {
			modulesErr = err
			return
		}
		var sys syscall.Stat_t
		fi, _ := os.Stat(modulesDisk)
		_ = syscall.Stat(modulesDisk, &sys)
		allocated := sys.Blocks * 512
		t.Logf("modules disk: %d modules, built in %s, %d MiB image (%.1f MiB allocated)",
			st.Modules, st.Duration.Round(time.Millisecond), fi.Size()>>20, float64(allocated)/(1<<20))
	})
	if modulesErr != nil {
		t.Fatal(modulesErr)
	}
	return modulesDisk
}

// tarImage builds a read-only image from a root filesystem tar fetched by
// scripts/fetch-test-assets.sh, or skips saying so.
func tarImage(t testing.TB, f fixture, name string) string {
	t.Helper()
	tarPath := filepath.Join(f.Assets.Dir, name)
	tarFile, err := os.Open(tarPath)
	if err != nil {
		msg := "no " + tarPath + ": run scripts/fetch-test-assets.sh (as root)"
		if os.Getenv("BANGER_REQUIRE_ASSETS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	defer tarFile.Close()
	img := filepath.Join(t.TempDir(), strings.TrimSuffix(name, ".tar")+".ext4")
	if _, err := f.ext4.BuildExt4FromTar(context.Background(), img, tarFile, 0); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestModprobeInSystemdGuest: with the kernel's modules disk, modprobe of modules that are
// not in the initramfs works in a Debian systemd guest, dependencies included; and root's
// dotfiles missing on the work disk come from the image's /etc/skel, present ones stay.
func TestModprobeInSystemdGuest(t *testing.T) {
	f := getFixture(t)
	mods := getModulesDisk(t, f)
	img := tarImage(t, f, "debian-kmod.tar")
	v := boot(t, f, bootOptions{rootfs: img, modules: mods,
		workFiles: []ext4.InjectedFile{{Path: ".profile", Data: []byte("# my own profile\n"), Mode: 0o600}}})
	took := v.waitReady(4 * time.Minute)
	t.Logf("agent ready under systemd with the modules disk %s after qemu start", took.Round(time.Millisecond))

	rel := f.Assets.KernelRelease
	if out, _, _ := v.exec("sh", "-c", "grep ' /lib/modules/"+rel+" \\| /usr/lib/modules/"+rel+" ' /proc/mounts"); !strings.Contains(out, " ext4 ro,") {
		t.Errorf("modules disk is not mounted read-only at /lib/modules/%s: %q", rel, out)
	}
	// Neither is in the initramfs (it carries only the virtio, overlay and ext4 modules).
	for _, m := range []string{"xfs", "br_netfilter"} {
		if out, errs, code := v.exec("lsmod"); code != 0 || strings.Contains(out, "\n"+m+" ") {
			t.Fatalf("before modprobe: lsmod exit %d, %s already loaded? %s%s", code, m, out, errs)
		}
		if out, errs, code := v.exec("modprobe", "-v", m); code != 0 {
			t.Fatalf("modprobe %s: exit %d\n%s%s", m, code, out, errs)
		} else {
			t.Logf("modprobe -v %s:\n%s", m, strings.TrimSpace(out))
		}
	}
	out, _, _ := v.exec("lsmod")
	for _, m := range []string{"xfs", "br_netfilter", "bridge", "stp", "llc"} { // bridge, stp, llc: br_netfilter's dependencies
		if !strings.Contains(out, "\n"+m+" ") {
			t.Errorf("lsmod lacks %s after modprobe:\n%s", m, out)
		}
	}
	if out, _, _ := v.exec("grep", "-w", "xfs", "/proc/filesystems"); !strings.Contains(out, "xfs") {
		t.Errorf("xfs not registered: %q", out)
	}
	// By alias, as the kernel's request_module and Docker's tooling ask for modules.
	if out, errs, code := v.exec("modprobe", "fs-btrfs"); code != 0 {
		t.Errorf("modprobe fs-btrfs (an alias): exit %d %s%s", code, out, errs)
	} else if out, _, _ := v.exec("grep", "-w", "btrfs", "/proc/filesystems"); !strings.Contains(out, "btrfs") {
		t.Errorf("btrfs not registered after modprobe fs-btrfs")
	}

	// Root's dotfiles: .bashrc from /etc/skel (the work disk had none), .profile kept.
	if _, errs, code := v.exec("cmp", "/root/.bashrc", "/etc/skel/.bashrc"); code != 0 {
		t.Errorf("/root/.bashrc is not /etc/skel's: %s", errs)
	}
	if out, _, _ := v.exec("stat", "-c", "%u:%g %a", "/root/.bashrc"); out != "0:0 644\n" {
		t.Errorf("/root/.bashrc owner and mode: %q", out)
	}
	if out, _, _ := v.exec("cat", "/root/.profile"); out != "# my own profile\n" {
		t.Errorf("/root/.profile was replaced: %q", out)
	}
	// An interactive bash reads it: Debian's skeleton .bashrc sets HISTCONTROL.
	if out, errs, _ := v.exec("env", "HOME=/root", "bash", "-ic", "echo hist=$HISTCONTROL"); !strings.Contains(out, "hist=ignoreboth") {
		t.Errorf("root's interactive bash did not read the skeleton .bashrc: %q %q", out, errs)
	}
	v.poweroff()
	if err := f.ext4.FsckExt4(context.Background(), mods); err != nil {
		t.Errorf("modules disk after use: %v", err)
	}
}

// TestRunitImage boots a Debian root whose init is runit (the way the experimental Void
// image boots): banger-init hands over to runit, runit supervises the agent, and sshd runs.
func TestRunitImage(t *testing.T) {
	f := getFixture(t)
	img := tarImage(t, f, "debian-runit.tar")
	sum := sha256File(t, img)
	v := boot(t, f, bootOptions{rootfs: img, modules: getModulesDisk(t, f)})
	took := v.waitReady(4 * time.Minute)
	t.Logf("agent ready under runit %s after qemu start", took.Round(time.Millisecond))
	h, err := v.agent.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.PID1 != "runit" {
		t.Fatalf("pid 1 is %q, want runit", h.PID1)
	}
	// The agent's parent is runsv: runit supervises it.
	parent, _, _ := v.exec("sh", "-c", `for p in /proc/[0-9]*; do [ "$(cat $p/comm 2>/dev/null)" = banger-agent ] && cat /proc/$(cut -d' ' -f4 $p/stat)/comm; done`)
	if parent != "runsv\n" {
		t.Errorf("the agent's parent is %q, want runsv", parent)
	}
	if out, _, code := v.exec("sv", "status", "/etc/service/banger-agent"); code != 0 || !strings.HasPrefix(out, "run: ") {
		t.Errorf("sv status banger-agent: %q exit %d", out, code)
	}
	// sshd answers on port 22 inside the guest. runsvdir may still be starting it.
	var banner string
	for i := 0; i < 60 && !strings.HasPrefix(banner, "SSH-2.0-"); i++ {
		banner, _, _ = v.exec("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/22 && head -c 8 <&3 || sleep 1")
	}
	if !strings.HasPrefix(banner, "SSH-2.0-") {
		out, _, _ := v.exec("sv", "status", "/etc/service/ssh")
		t.Errorf("no SSH banner on port 22 (got %q); sv status ssh: %s", banner, out)
	}
	if out, _, code := v.exec("cat", "/root/on-work-disk"); code != 0 || out != "work\n" {
		t.Errorf("/root under runit: %q %d", out, code)
	}
	// The modules disk is there under runit too (this fixture has no kmod to run modprobe).
	if _, _, code := v.exec("test", "-s", "/lib/modules/"+f.Assets.KernelRelease+"/modules.dep.bin"); code != 0 {
		t.Errorf("no modules.dep.bin under /lib/modules/%s in the runit guest", f.Assets.KernelRelease)
	}
	v.poweroff()
	if got := sha256File(t, img); got != sum {
		t.Error("the image changed")
	}
}

// TestVoidCatalogImage pulls the real `void` catalog image and boots it. Void's mirrors are
// not reachable from CI, so it runs only where they are.
func TestVoidCatalogImage(t *testing.T) {
	var void image.Entry
	for _, e := range image.BuiltinCatalog() {
		if e.Name == "void" {
			void = e
		}
	}
	if void.Ref == "" {
		t.Fatal("no void entry in the catalog")
	}
	probe := void.SHA256URL
	if probe == "" {
		probe = void.Ref
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	req, _ := http.NewRequestWithContext(ctx, http.MethodHead, probe, nil)
	resp, err := http.DefaultClient.Do(req)
	cancel()
	if err != nil || resp.StatusCode != http.StatusOK {
		status := ""
		if resp != nil {
			status = resp.Status
			resp.Body.Close()
		}
		t.Skipf("Void's mirror is not reachable from here (HEAD %s: %v %s): the void image is tested only where it is", probe, err, status)
	}
	resp.Body.Close()
	f := getFixture(t)
	dir := t.TempDir()
	st, err := store.Open(context.Background(), filepath.Join(dir, "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m := &image.Manager{Store: st, Ext4: f.ext4, ImagesDir: filepath.Join(dir, "images"), KernelsDir: filepath.Join(dir, "kernels"), Catalog: image.NewCatalog()}
	start := time.Now()
	img, err := m.Pull(context.Background(), image.PullOptions{Ref: "void", NoKernel: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("void pulled in %s", time.Since(start).Round(time.Millisecond))
	v := boot(t, f, bootOptions{rootfs: img.RootfsPath, modules: getModulesDisk(t, f)})
	took := v.waitReady(4 * time.Minute)
	t.Logf("void: agent ready %s after qemu start", took.Round(time.Millisecond))
	h, err := v.agent.Health(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if h.PID1 != "runit" {
		t.Errorf("pid 1 is %q, want runit", h.PID1)
	}
	if _, _, code := v.exec("test", "-x", "/usr/bin/sshd"); code == 0 {
		var banner string
		for i := 0; i < 60 && !strings.HasPrefix(banner, "SSH-2.0-"); i++ {
			banner, _, _ = v.exec("bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/22 && head -c 8 <&3 || sleep 1")
		}
		if !strings.HasPrefix(banner, "SSH-2.0-") {
			t.Errorf("void: no SSH banner on port 22: %q", banner)
		}
	} else {
		t.Log("the void rootfs has no sshd; not checking it")
	}
	if _, _, code := v.exec("xbps-query", "--version"); code != 0 {
		t.Errorf("xbps-query does not run in the void guest")
	}
	v.poweroff()
}
