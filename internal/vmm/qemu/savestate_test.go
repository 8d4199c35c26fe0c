package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/vmm"
)

// TestSaveStateAndResume saves a running guest whole (RAM included) and brings the same VM
// back from the file: a process started before keeps its pid, a RAM-only file and the
// boot_id are there. A clone of a template (RAM mapped from a memory file) saves and
// resumes into plain RAM the same way.
func TestSaveStateAndResume(t *testing.T) {
	f, qemu := getFixture(t)
	d := testDriver(qemu, f)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// resume saves m into dir, ends it, and restores it from the file.
	resume := func(m vmm.Machine, spec vmm.MachineSpec, dir string) vmm.Machine {
		t.Helper()
		path := filepath.Join(dir, "paused-state")
		began := time.Now()
		snap, err := m.(vmm.StateSaver).SaveState(ctx, path)
		if err != nil {
			t.Fatalf("save %s: %v", spec.Name, err)
		}
		saved := time.Since(began)
		if snap.MemoryFile != "" || snap.StateFile != path {
			t.Fatalf("saved snapshot %+v", snap)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if leftovers, _ := filepath.Glob(filepath.Join(dir, "*.tmp")); len(leftovers) != 0 {
			t.Errorf("temporary files left: %v", leftovers)
		}
		if err := m.Kill(); err != nil {
			t.Fatal(err)
		}
		m.Close()
		began = time.Now()
		r, err := d.Restore(ctx, spec, snap)
		if err != nil {
			t.Fatalf("resume %s: %v", spec.Name, err)
		}
		t.Cleanup(func() { r.Kill(); r.Close() })
		waitReady(t, r)
		t.Logf("%s: saved in %s (%d MiB of state), agent ready %s after Restore", spec.Name,
			saved.Round(time.Millisecond), fi.Size()>>20, time.Since(began).Round(time.Millisecond))
		if r.State().MemoryFile != "" {
			t.Errorf("%s: the resumed VM maps %q; its RAM is its own", spec.Name, r.State().MemoryFile)
		}
		return r
	}
	// mark starts a sleep and writes a RAM-only file; check finds both after a resume.
	mark := func(m vmm.Machine) (pid, bootID string) {
		pid = strings.TrimSpace(execOut(t, m.Agent(), "sh", "-c",
			"mkdir -p /dev/shm && (mountpoint -q /dev/shm || mount -t tmpfs shm /dev/shm); echo in-ram > /dev/shm/marker; sleep 1000 >/dev/null 2>&1 & echo $!"))
		return pid, execOut(t, m.Agent(), "cat", "/proc/sys/kernel/random/boot_id")
	}
	check := func(m vmm.Machine, name, pid, bootID string) {
		t.Helper()
		if got := execOut(t, m.Agent(), "sh", "-c", "cat /proc/"+pid+"/cmdline | tr '\\0' ' '"); !strings.HasPrefix(got, "sleep 1000") {
			t.Errorf("%s: process %s after the resume: %q", name, pid, got)
		}
		if got := execOut(t, m.Agent(), "cat", "/dev/shm/marker"); got != "in-ram\n" {
			t.Errorf("%s: the RAM-only file reads %q", name, got)
		}
		if got := execOut(t, m.Agent(), "cat", "/proc/sys/kernel/random/boot_id"); got != bootID {
			t.Errorf("%s: boot_id %q, was %q: it booted instead of resuming", name, got, bootID)
		}
	}

	// A VM with plain RAM, twice over.
	_, spec := newVM(t, f)
	m := start(t, d, spec)
	waitReady(t, m)
	pid, bootID := mark(m)
	dir := t.TempDir()
	m = resume(m, spec, dir)
	check(m, spec.Name, pid, bootID)
	m = resume(m, spec, dir)
	check(m, spec.Name, pid, bootID)
	m.Kill()

	// A clone: restored from a template's memory file, saved whole, resumed into its own RAM.
	tplDir := t.TempDir()
	tv, tspec := newVM(t, f)
	tspec.MemoryFile = filepath.Join(tplDir, "memory")
	tm := start(t, d, tspec)
	waitReady(t, tm)
	pid, bootID = mark(tm)
	snap, err := tm.(vmm.Snapshotter).Snapshot(ctx, tplDir)
	if err != nil {
		t.Fatal(err)
	}
	cv, cspec := newVM(t, f)
	copyDisks(t, tv, cv)
	cspec.Name = "clone"
	tm.Kill()
	c, err := d.Restore(ctx, cspec, snap)
	if err != nil {
		t.Fatal(err)
	}
	waitReady(t, c)
	c = resume(c, cspec, t.TempDir())
	check(c, cspec.Name, pid, bootID)
}
