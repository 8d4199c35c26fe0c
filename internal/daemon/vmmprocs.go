package daemon

// Finding this user's VMM processes by their run directory, and ending strays.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-vm/banger/internal/vmm"
)

// vmmProc is a VMM-looking process whose run dir is under the runtime dir.
type vmmProc struct {
	pid       int
	name      string // argv[0]'s base name
	runDir    string // <runtime>/v/<id>
	startTime uint64
}

// isVMMName reports whether a process's argv[0] names a VMM banger runs.
func isVMMName(base string) bool {
	return strings.HasPrefix(base, "qemu-system") || base == "firecracker" || base == "jailer"
}

// scanVMMProcs lists this user's VMM processes whose working directory, or a path in whose
// command line, is a run dir under runtimeDir. Zombies are skipped (they are gone).
func scanVMMProcs(procDir, runtimeDir string) ([]vmmProc, error) {
	ents, err := os.ReadDir(procDir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", procDir, err)
	}
	runs := filepath.Join(filepath.Clean(runtimeDir), "v") + "/"
	var out []vmmProc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		dir := filepath.Join(procDir, e.Name())
		fi, err := os.Stat(dir)
		if err != nil || !ownedByUs(fi) {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, "cmdline"))
		if err != nil || len(raw) == 0 {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00")
		base := filepath.Base(argv[0])
		if !isVMMName(base) {
			continue
		}
		runDir := ""
		if cwd, err := os.Readlink(filepath.Join(dir, "cwd")); err == nil {
			runDir = runDirOf(cwd, runs)
		}
		for _, a := range argv[1:] {
			if runDir != "" {
				break
			}
			if i := strings.Index(a, runs); i >= 0 {
				runDir = runDirOf(a[i:], runs)
			}
		}
		if runDir == "" {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(dir, "stat"))
		if err != nil {
			continue
		}
		ps, err := vmm.ParseProcStat(stat)
		if err != nil || ps.State == 'Z' || ps.State == 'X' {
			continue
		}
		out = append(out, vmmProc{pid: pid, name: base, runDir: runDir, startTime: ps.StartTime})
	}
	return out, nil
}

// runDirOf returns <runs><id> for a path at or below it, else "".
func runDirOf(p, runs string) string {
	rest, ok := strings.CutPrefix(p, runs)
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, "/")
	id, _, _ = strings.Cut(id, ",") // a QEMU option value: path=<dir>/qmp.sock,server=on
	if id == "" {
		return ""
	}
	return runs + id
}

// killStray SIGKILLs a stray VMM, through a pidfd after checking it is still the process the
// scan found (a VMM under runtimeDir), so a reused pid is never hit.
func killStray(procDir string, pid int, runtimeDir string) error {
	pidfd, err := vmm.PidfdOpen(pid)
	if err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil
		}
		return err
	}
	defer syscall.Close(pidfd)
	procs, err := scanVMMProcs(procDir, runtimeDir)
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(procs, func(p vmmProc) bool { return p.pid == pid }) {
		return nil // gone, or no longer a VMM of ours
	}
	if err := vmm.PidfdKill(pidfd); err != nil {
		return err
	}
	if _, err := vmm.PidfdWait(pidfd, 5*time.Second); err != nil {
		return err
	}
	return nil
}
