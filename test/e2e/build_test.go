//go:build integration

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildDeb makes a tiny .deb whose command prints a known line.
func buildDeb(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "pkgroot")
	for _, d := range []string{"DEBIAN", "usr/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	control := "Package: banger-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: banger tests <tests@example.invalid>\nDescription: installed from a local file by banger image build\n"
	if err := os.WriteFile(filepath.Join(root, "DEBIAN/control"), []byte(control), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/bin/banger-hello"), []byte("#!/bin/sh\necho hello from a local package\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(dir, "banger-hello_1.0_all.deb")
	if out, err := exec.Command("dpkg-deb", "--build", "--root-owner-group", root, deb).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, out)
	}
	return deb
}

// TestImageBuild: build an image from the Debian fixture that installs a package from a
// local .deb (no guest traffic leaves the machine), copies a file into /root and runs a
// script; a VM from it has all three and the manifest lists the package. A failing script
// fails the build with its output and leaves no image, VM, TAP or lease.
func TestImageBuild(t *testing.T) {
	e := setup(t)
	e.importSSHImage()
	in := filepath.Join(e.dir, "in")
	if err := os.MkdirAll(in, 0o755); err != nil {
		t.Fatal(err)
	}
	deb := buildDeb(t, in)
	files := map[string]string{
		"devrc":       "export EDITOR=vi\n",
		"setup.sh":    "#!/bin/sh\nset -e\necho \"provisioning as $(id -u) in $(pwd)\"\necho scripted > /etc/banger-scripted\n",
		"bad.sh":      "#!/bin/sh\necho about to fail\necho oops >&2\nexit 9\n",
		"recipe.toml": "from = \"deb\"\nsize = \"512M\"\npackages = [\"banger-hello_1.0_all.deb\"]\ncopy = [\"devrc:/root/.devrc\"]\nrun = [\"setup.sh\"]\n",
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(in, n), []byte(c), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if e.cred != nil {
		for _, p := range []string{in, deb} {
			_ = filepath.Walk(p, func(p string, _ os.FileInfo, _ error) error { return os.Lchown(p, int(e.cred.Uid), int(e.cred.Gid)) })
		}
	}

	start := time.Now()
	r := e.must("image", "build", "dev", "--recipe", filepath.Join(in, "recipe.toml"))
	t.Logf("image build (local .deb, a file into /root, a script): %s\n%s", time.Since(start).Round(time.Millisecond), tail(r.stderr, 12))
	for _, want := range []string{"Setting up banger-hello (1.0)", "provisioning as 0 in /root"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("the build's output lacks %q", want)
		}
	}
	var inspect struct {
		Image struct {
			Metadata struct {
				PackagesPath string `json:"packages_path"`
				RootfsBytes  int64  `json:"rootfs_bytes"`
				RootfsUsed   int64  `json:"rootfs_used"`
			} `json:"metadata"`
		} `json:"image"`
	}
	if err := json.Unmarshal([]byte(e.must("image", "inspect", "dev", "--json").stdout), &inspect); err != nil {
		t.Fatal(err)
	}
	meta := inspect.Image.Metadata
	man, err := os.ReadFile(meta.PackagesPath)
	if err != nil || !strings.Contains(string(man), `"banger-hello"`) {
		t.Fatalf("manifest %s lacks banger-hello: %v", meta.PackagesPath, err)
	}
	t.Logf("built image: %d MiB apparent, %d MiB used", meta.RootfsBytes>>20, meta.RootfsUsed>>20)
	if meta.RootfsBytes != 512<<20 {
		t.Errorf("size = \"512M\" gave a %d-byte root filesystem", meta.RootfsBytes)
	}
	r = e.must("vm", "run", "-q", "--image", "dev", "--memory", "768M", "--", "sh", "-c",
		"banger-hello; cat /root/.devrc /etc/banger-scripted; ls /etc/ssh | grep -c ssh_host_ || true; test ! -e /var/cache/banger-build && echo no-scratch")
	if r.stdout != "hello from a local package\nexport EDITOR=vi\nscripted\n2\nno-scratch\n" {
		t.Fatalf("a VM from the built image: %q (want the package, the file, the script's mark, only its own host key pair, no scratch)", r.stdout)
	}

	r = e.run("image", "build", "bad", "--from", "deb", "--run", filepath.Join(in, "bad.sh"))
	if r.code == 0 || !strings.Contains(r.stderr, "exit code 9") || !strings.Contains(r.stderr, "oops") || !strings.Contains(r.stderr, "about to fail") {
		t.Fatalf("failing build: exit %d, stderr %q", r.code, r.stderr)
	}
	if out := e.must("image", "ls").stdout; strings.Contains(out, "bad ") {
		t.Fatalf("the failed build registered an image:\n%s", out)
	}
	if vms := e.vms(); len(vms) != 0 {
		t.Fatalf("builder VMs left: %+v", vms)
	}
	if r := e.run("doctor", "--leaks"); r.code != 0 {
		t.Fatalf("leaks after the failed build:\n%s%s", r.stdout, r.stderr)
	}
	waitNoVMM(t, e.dir)
}

// TestDaemonKilledMidBuild: kill -9 the daemon while its builder VM runs; the next daemon
// removes the builder VM (row, VMM, lease) and the half-built image, and nothing leaks.
func TestDaemonKilledMidBuild(t *testing.T) {
	e := setup(t)
	e.importSSHImage()
	script := filepath.Join(e.dir, "slow.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho building\nsleep 600\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if e.cred != nil {
		_ = os.Lchown(script, int(e.cred.Uid), int(e.cred.Gid))
	}
	build := e.command("image", "build", "half", "--from", "deb", "--run", script)
	if err := build.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = build.Process.Kill(); _ = build.Wait() }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		vms := e.vms()
		if len(vms) == 1 && vms[0].State == "running" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the builder VM never ran: %+v", vms)
		}
		time.Sleep(200 * time.Millisecond)
	}
	e.killDaemon()
	_ = build.Wait()
	e.daemon("start")
	if vms := e.vms(); len(vms) != 0 {
		t.Fatalf("the builder VM survived the restart: %+v", vms)
	}
	waitNoVMM(t, e.dir)
	if out := e.must("image", "ls").stdout; strings.Contains(out, "half") {
		t.Fatalf("a half-built image was registered:\n%s", out)
	}
	if ents, _ := filepath.Glob(filepath.Join(e.dir, "data/banger/images/.staging-*")); len(ents) != 0 {
		t.Fatalf("staging left: %v", ents)
	}
	if r := e.run("doctor", "--leaks"); r.code != 0 {
		t.Fatalf("leaks after the interrupted build:\n%s%s", r.stdout, r.stderr)
	}
}
