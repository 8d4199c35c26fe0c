//go:build integration

package e2e

// The Go SDK (package client) end to end: examples/sdk, built and run as banger's user the
// way the CLI runs (in privilege-split mode the daemon belongs to that user, and the SDK,
// like the CLI, refuses a daemon socket of another user), against the harness's daemon.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestSDKExample: the SDK example boots a busybox VM, writes a file, reads it back and
// checks its exact bytes, runs a command with stdin and checks its output and exit code,
// and removes the VM; nothing is left behind.
func TestSDKExample(t *testing.T) {
	e := setup(t)
	bin := filepath.Join(e.bin, "banger-sdk-example")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./examples/sdk")
	build.Dir = filepath.Join("..", "..")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build examples/sdk: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-image", "bb", "-memory", "512M")
	cmd.Env = append(os.Environ(), e.vars...)
	if e.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: e.cred}
	}
	r := e.runCmd(cmd, []string{"(examples/sdk)"})
	if r.code != 0 {
		t.Fatalf("examples/sdk: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	want := []string{"created VM ", "wrote /root/hello.txt: 50 bytes", "read back /root/hello.txt: 50 bytes, identical",
		`exec: exit code 7, stdout "640\nhello from the banger SDK\nfrom stdin\n", stderr "to-stderr\n"`, "removed VM "}
	if len(lines) != len(want) {
		t.Fatalf("examples/sdk printed %d lines, want %d:\n%s", len(lines), len(want), r.stdout)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("line %d: %q, want %q...", i+1, lines[i], w)
		}
	}
	if !strings.HasSuffix(lines[0], ": running") {
		t.Errorf("the VM did not start: %q", lines[0])
	}
	if vms := e.vms(); len(vms) != 0 {
		t.Fatalf("the SDK example left VMs: %+v", vms)
	}
	e.requireNoLeaks()
}
