// Package testsupport builds the real guest artifacts boot tests need: Debian's cloud
// kernel fetched by scripts/fetch-test-assets.sh, the banger-init and banger-agent binaries,
// and a tiny busybox root filesystem. Only tests import it.
package testsupport

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/hostinfo"
	"github.com/banger-vm/banger/internal/initramfs"
	"github.com/banger-vm/banger/internal/system/ext4"
)

// Assets are the unpacked Debian packages under $BANGER_TEST_ASSETS.
type Assets struct {
	Dir           string
	Kernel        string // boot/vmlinuz-<release>
	ModulesDir    string // lib/modules/<release>
	KernelRelease string
	Busybox       string // bin/busybox (static)
}

// GuestAssets finds the assets, or skips the test saying how to get them. With
// BANGER_REQUIRE_ASSETS=1 (CI) a missing asset fails the test instead, so a boot test can
// never pass by silently not running.
func GuestAssets(t testing.TB) Assets {
	t.Helper()
	dir := os.Getenv("BANGER_TEST_ASSETS")
	if dir == "" {
		dir = "/var/cache/banger-test"
	}
	missing := func(what string) {
		msg := fmt.Sprintf("no %s in %s: run scripts/fetch-test-assets.sh (as root)", what, dir)
		if os.Getenv("BANGER_REQUIRE_ASSETS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	kernels, _ := filepath.Glob(filepath.Join(dir, "kernel/boot/vmlinuz-*"))
	if len(kernels) != 1 {
		missing("test kernel (kernel/boot/vmlinuz-*)")
	}
	release := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	a := Assets{
		Dir:           dir,
		Kernel:        kernels[0],
		KernelRelease: release,
		ModulesDir:    filepath.Join(dir, "kernel/lib/modules", release),
		Busybox:       filepath.Join(dir, "busybox/bin/busybox"),
	}
	if _, err := os.Stat(a.ModulesDir); err != nil {
		missing("kernel modules (" + a.ModulesDir + ")")
	}
	if _, err := os.Stat(a.Busybox); err != nil {
		missing("busybox (busybox/bin/busybox)")
	}
	return a
}

// RequireQEMU returns the qemu-system-x86_64 path or skips (fails under
// BANGER_REQUIRE_ASSETS=1).
func RequireQEMU(t testing.TB) string {
	t.Helper()
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		msg := "no qemu-system-x86_64 on PATH: apt-get install qemu-system-x86"
		if os.Getenv("BANGER_REQUIRE_ASSETS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// GuestBinaries are static builds of the guest programs.
type GuestBinaries struct {
	Init  string
	Agent string
}

// BuildGuestBinaries builds banger-init and banger-agent (static) into dir.
func BuildGuestBinaries(dir string) (GuestBinaries, error) {
	root, err := moduleRoot()
	if err != nil {
		return GuestBinaries{}, err
	}
	b := GuestBinaries{Init: filepath.Join(dir, "banger-init"), Agent: filepath.Join(dir, "banger-agent")}
	for out, pkg := range map[string]string{b.Init: "./cmd/banger-init", b.Agent: "./cmd/banger-agent"} {
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if data, err := cmd.CombinedOutput(); err != nil {
			return GuestBinaries{}, fmt.Errorf("build %s: %v\n%s", pkg, err, data)
		}
	}
	return b, nil
}

func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot locate the source tree")
	}
	return filepath.Join(filepath.Dir(file), "..", ".."), nil
}

// TarFile is an extra file for a test root filesystem.
type TarFile struct {
	Path string // absolute, inside the guest
	Mode int64
	Data string
}

// BusyboxRootfsTar returns a tar stream of a minimal root filesystem: static busybox with
// its applets, /etc basics, an empty /root. It has no /sbin/init, so banger-init stays PID 1.
func BusyboxRootfsTar(busybox string, extra ...TarFile) ([]byte, error) {
	bin, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: mtime})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: mtime}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	for _, d := range []string{".", "bin", "sbin", "etc", "dev", "proc", "sys", "run", "tmp", "var", "usr", "usr/bin", "root"} {
		mode := int64(0o755)
		switch d {
		case "tmp":
			mode = 0o1777
		case "root":
			mode = 0o700
		}
		if err := dir(d, mode); err != nil {
			return nil, err
		}
	}
	if err := file("bin/busybox", 0o755, bin); err != nil {
		return nil, err
	}
	// Enough applets for the tests' commands.
	applets := []string{
		"sh", "cat", "echo", "ls", "mkdir", "rm", "touch", "uname", "sleep", "true", "false", "sync",
		"id", "hostname", "ps", "sha256sum", "dd", "env", "printf", "wc", "head", "tail", "grep",
		"mount", "df", "stat", "tty", "ip", "ping", "poweroff", "reboot", "test", "[", "date", "seq",
	}
	for _, a := range applets {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: mtime}); err != nil {
			return nil, err
		}
	}
	etc := map[string]string{
		"etc/passwd":     "root:x:0:0:root:/root:/bin/sh\n",
		"etc/group":      "root:x:0:\n",
		"etc/hostname":   "busybox\n",
		"etc/hosts":      "127.0.0.1 localhost\n",
		"etc/os-release": "NAME=\"banger test rootfs\"\nID=banger-test\n",
	}
	for _, name := range []string{"etc/group", "etc/hostname", "etc/hosts", "etc/os-release", "etc/passwd"} {
		if err := file(name, 0o644, []byte(etc[name])); err != nil {
			return nil, err
		}
	}
	for _, f := range extra {
		if err := file(strings.TrimPrefix(f.Path, "/"), f.Mode, []byte(f.Data)); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// BootFixture is everything needed to boot a test guest: the kernel, an initramfs with the
// real banger-init and banger-agent, and a read-only busybox image.
type BootFixture struct {
	Assets    Assets
	Binaries  GuestBinaries
	Initramfs string
	Rootfs    string
	TSCKHz    int
}

// BuildBootFixture builds a BootFixture into dir.
func BuildBootFixture(dir string, assets Assets) (BootFixture, error) {
	ctx := context.Background()
	f := BootFixture{Assets: assets}
	var err error
	if f.Binaries, err = BuildGuestBinaries(dir); err != nil {
		return f, err
	}
	res, err := initramfs.Cache{Dir: filepath.Join(dir, "initramfs")}.Ensure(ctx, initramfs.Spec{
		InitBinary: f.Binaries.Init, AgentBinary: f.Binaries.Agent,
		ModulesDir: assets.ModulesDir, KernelRelease: assets.KernelRelease, BangerVersion: "test",
	})
	if err != nil {
		return f, fmt.Errorf("build initramfs: %w", err)
	}
	f.Initramfs = res.Path
	tarData, err := BusyboxRootfsTar(assets.Busybox, TarFile{Path: "/etc/banger-test", Mode: 0o644, Data: "from the image\n"})
	if err != nil {
		return f, err
	}
	f.Rootfs = filepath.Join(dir, "rootfs.ext4")
	if _, err := ext4.New().BuildExt4FromTar(ctx, f.Rootfs, bytes.NewReader(tarData), 64<<20); err != nil {
		return f, fmt.Errorf("build rootfs: %w", err)
	}
	if f.TSCKHz, err = hostinfo.TSCKHz(); err != nil {
		return f, err
	}
	return f, nil
}
