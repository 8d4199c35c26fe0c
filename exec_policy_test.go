package banger_test

// The exec policy: shelling out to host tools happens only in the packages below, so the
// list of external commands banger depends on stays auditable in one place (and the owner
// daemon cannot grow an accidental `sudo`). Test files are exempt: they drive real binaries
// (the built banger, e2fsck on images) to check the code from outside.

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// execAllowed are the package directories that may import os/exec or start processes.
var execAllowed = map[string]string{
	"internal/system/ext4":          "the ext4 toolkit: mkfs.ext4, debugfs, e2fsck",
	"internal/system/ext4/ext4test": "test fixtures: hostile ext4 images made with mkfs.ext4",
	"internal/system/hosttools":     "host tool versions, mmdebstrap, systemctl",
	"internal/system/proc":          "runs a host binary; the daemon's detached start",
	"internal/vmm/firecracker":      "spawns firecracker / jailer",
	"internal/vmm/qemu":             "spawns qemu-system-x86_64",
	"internal/vmm/proc":             "the VMM process supervisor: spawns the VMM the driver built the argv of",
	"internal/vmm/vmmtest":          "the drivers' shared supervisor tests: start a bystander process",
	"internal/cli/sshhandoff":       "hands the terminal to the system ssh",
	"internal/sshtransport":         "ssh to a remote daemon: the daemon proxy bridge, and vm ssh there",
	"internal/guestinit":            "guest PID 1: starts the agent and sshd inside the guest",
	"internal/agent/agentserver":    "guest agent: runs the commands the host asks it to run",
	"internal/testsupport":          "test fixtures: builds the guest binaries for boot tests",
}

// processStarters are calls that start processes without importing os/exec.
var processStarters = []string{"os.StartProcess", "syscall.ForkExec", "syscall.Exec", "unix.Exec", "unix.ForkExec"}

func TestExecPolicy(t *testing.T) {
	violations, checked, err := scanExecPolicy(".")
	if err != nil {
		t.Fatal(err)
	}
	if checked < 10 {
		t.Fatalf("only %d Go files checked: is the test running from the module root?", checked)
	}
	for _, v := range violations {
		t.Errorf("%s: only %s may start processes (see execAllowed in this test)", v, allowedList())
	}
}

// scanExecPolicy returns every non-test Go file under root, outside execAllowed, that
// imports os/exec or calls a process starter.
func scanExecPolicy(root string) (violations []string, checked int, err error) {
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if name := d.Name(); rel != "." && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		if _, ok := execAllowed[filepath.ToSlash(filepath.Dir(rel))]; ok {
			return nil
		}
		checked++
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); p == "os/exec" {
				violations = append(violations, rel+": imports os/exec")
			}
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, call := range processStarters {
			if strings.Contains(string(src), call+"(") {
				violations = append(violations, rel+": calls "+call)
			}
		}
		return nil
	})
	sort.Strings(violations)
	return violations, checked, err
}

func allowedList() string {
	keys := make([]string, 0, len(execAllowed))
	for k := range execAllowed {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return strings.Join(keys, ", ")
}

// TestExecPolicyCatchesViolations proves the check can fail, on a throwaway tree.
func TestExecPolicyCatchesViolations(t *testing.T) {
	root := t.TempDir()
	write := func(rel, src string) {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("internal/daemon/bad.go", "package daemon\n\nimport \"os/exec\"\n\nvar _ = exec.Command\n")
	write("internal/store/sneaky.go", "package store\n\nimport \"os\"\n\nfunc f() { os.StartProcess(\"x\", nil, nil) }\n")
	write("internal/system/ext4/ok.go", "package ext4\n\nimport \"os/exec\"\n\nvar _ = exec.Command\n")
	write("internal/system/plain.go", "package system\n\nimport \"os/exec\"\n\nvar _ = exec.Command\n")
	write("internal/daemon/ok_test.go", "package daemon\n\nimport \"os/exec\"\n\nvar _ = exec.Command\n")
	violations, checked, err := scanExecPolicy(root)
	if err != nil {
		t.Fatal(err)
	}
	// The system package itself runs nothing: only its domain subpackages may.
	want := []string{"internal/daemon/bad.go: imports os/exec", "internal/store/sneaky.go: calls os.StartProcess", "internal/system/plain.go: imports os/exec"}
	if checked != 3 || strings.Join(violations, "|") != strings.Join(want, "|") {
		t.Fatalf("checked %d, violations %q; want 3 and %q", checked, violations, want)
	}
}
