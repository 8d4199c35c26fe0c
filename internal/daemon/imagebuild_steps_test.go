package daemon

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
)

// A local .deb's file name reaches the guest shell: it must arrive as one argument and
// never be interpreted (spaces, quotes, $(...)).
func TestInstallScriptQuotesLocalDebPaths(t *testing.T) {
	bin := t.TempDir()
	argsFile := filepath.Join(t.TempDir(), "args")
	fake := "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done >> " + argsFile + "\n"
	if err := os.WriteFile(filepath.Join(bin, "apt-get"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	cwd := t.TempDir()
	marker := filepath.Join(cwd, "pwned")
	deb := "/tmp/my tool$(touch pwned)_1.0.deb"
	steps := buildSteps(api.ImageBuildRequest{Packages: []string{deb, "git"}}, builderFiles{})
	var script string
	for _, st := range steps {
		if strings.HasPrefix(st.name, "install packages") {
			script = st.cmd
		}
	}
	if script == "" {
		t.Fatal("no install step")
	}
	cmd := exec.Command("sh", "-c", script)
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	cmd.Dir = cwd
	out, err := cmd.CombinedOutput()
	if _, serr := os.Stat(marker); serr == nil {
		t.Fatalf("a package file name ran a command in the guest shell:\n%s", script)
	}
	if err != nil {
		t.Fatalf("install script failed: %v\n%s\n%s", err, out, script)
	}
	got, _ := os.ReadFile(argsFile)
	want := buildScratch + "/pkg-0-my tool$(touch pwned)_1.0.deb\n"
	if !strings.Contains(string(got), want) || !strings.Contains(string(got), "\ngit\n") {
		t.Fatalf("apt-get install got args:\n%s\nwant the .deb path as one argument", got)
	}
}

// An upload's stream must be released when its step ends, even if the guest command
// stopped reading early (failed mkdir, cancelled build): otherwise the tar goroutine and
// the file it has open stay in the daemon forever.
func TestCopyStepStdinIsReleasable(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "big"), make([]byte, 4<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	st := copyStep(api.BuildCopy{Src: dir, Dst: "/opt/x"})
	r, err := st.stdin()
	if err != nil {
		t.Fatal(err)
	}
	// The guest reads a little, then its command exits.
	if _, err := io.ReadFull(r, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	c, ok := r.(io.Closer)
	if !ok {
		t.Fatal("an upload stream cannot be closed: its producer goroutine leaks when the guest stops reading")
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Fatalf("tar goroutine still running after the stream was closed (%d > %d)", n, before)
	}
}
