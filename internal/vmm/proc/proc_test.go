package proc

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/vmm"
)

// The test binary re-executed as a fake VMM: BANGER_PROC_FAKE says what it does.
const fakeEnv = "BANGER_PROC_FAKE"

func TestMain(m *testing.M) {
	if mode, ok := os.LookupEnv(fakeEnv); ok {
		os.Exit(fakeVMM(mode))
	}
	os.Exit(m.Run())
}

// floodLine is what the flooding guest writes, numbered.
const floodLine = "flood %012d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n"

func fakeVMM(mode string) int {
	switch mode {
	case "flood":
		// A guest writing its console at full speed, until killed.
		w := bufio.NewWriterSize(os.Stdout, 64<<10)
		for i := 0; ; i++ {
			if _, err := fmt.Fprintf(w, floodLine, i); err != nil {
				return 1
			}
		}
	case "hello":
		fmt.Println("hello from the fake VMM")
		fmt.Fprintln(os.Stderr, "and its stderr")
		return 3
	case "sleep":
		fmt.Println("sleeping")
		time.Sleep(time.Hour)
	}
	return 2
}

func fakeArgv() []string { return []string{os.Args[0], "-test.run=^$"} }

func shortDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "bgp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func spawnFake(t *testing.T, mode string, o Options) *Process {
	t.Helper()
	t.Setenv(fakeEnv, mode)
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	o.Argv = fakeArgv()
	p, err := Spawn(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Kill() })
	return p
}

func TestSpawnLogsAndExitStatus(t *testing.T) {
	dir := shortDir(t)
	con := &Console{FIFO: filepath.Join(dir, "console.fifo"), Log: filepath.Join(dir, "console.log"), Stdout: true}
	p := spawnFake(t, "hello", Options{Dir: dir, Console: con})
	<-p.Done()
	if ps := p.ProcessState(); ps == nil || ps.ExitCode() != 3 {
		t.Errorf("state %v", ps)
	}
	if got := ConsoleTail(con.Log, 5); strings.Join(got, "|") != "hello from the fake VMM|and its stderr" {
		t.Errorf("console %q", got)
	}
	// Own session.
	p2 := spawnFake(t, "sleep", Options{Dir: dir, Log: filepath.Join(dir, "vmm.log")})
	if sid, _ := unixGetsid(p2.PID()); sid != p2.PID() {
		t.Errorf("session %d, want its own (%d)", sid, p2.PID())
	}
	if p2.StartTime() == 0 {
		t.Error("no start time")
	}
}

func unixGetsid(pid int) (int, error) {
	r, _, e := syscall.RawSyscall(syscall.SYS_GETSID, uintptr(pid), 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}

func TestAttachRefusesOthers(t *testing.T) {
	other := exec.Command("sleep", "600")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	st, err := vmm.ReadProcStat(other.Process.Pid) // before it can be reaped
	// We are its parent here: reap it once it dies, as init does for a reattached VMM.
	reaped := make(chan struct{})
	go func() { other.Wait(); close(reaped) }()
	defer func() { other.Process.Kill(); <-reaped }()
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		pid   int
		start uint64
	}{
		"reused pid": {other.Process.Pid, st.StartTime + 1},
		"no pid":     {0, 0},
		"gone":       {1 << 30, 1},
	} {
		if _, err := Attach(c.pid, c.start, nil); !errors.Is(err, vmm.ErrGone) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := syscall.Kill(other.Process.Pid, 0); err != nil {
		t.Errorf("the other process was hurt: %v", err)
	}
	// The right one attaches, is killed through its pidfd, and Kill waits.
	p, err := Attach(other.Process.Pid, st.StartTime, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if !p.Exited() || !p.Killed() || p.ProcessState() != nil {
		t.Errorf("after Kill: exited %v killed %v", p.Exited(), p.Killed())
	}
	// Release of an attached process leaves it running.
	other2 := exec.Command("sleep", "600")
	other2.Start()
	defer func() { other2.Process.Kill(); other2.Wait() }()
	st2, _ := vmm.ReadProcStat(other2.Process.Pid)
	p2, err := Attach(other2.Process.Pid, st2.StartTime, nil)
	if err != nil {
		t.Fatal(err)
	}
	p2.Release()
	if err := syscall.Kill(other2.Process.Pid, 0); err != nil || p2.Exited() {
		t.Errorf("Release stopped the process: %v", err)
	}
	// Nothing watches it any more: Kill says so rather than waiting for nothing.
	if err := p2.Kill(); err == nil || !strings.Contains(err.Error(), "released") {
		t.Errorf("Kill after Release: %v", err)
	}
	// A VMM whose console has no FIFO (an older banger let it write its file itself) is
	// attached without copying.
	dir := shortDir(t)
	p3, err := Attach(other2.Process.Pid, st2.StartTime, &Console{FIFO: filepath.Join(dir, "console.fifo"), Log: filepath.Join(dir, "console.log")})
	if err != nil {
		t.Fatalf("attach without a FIFO: %v", err)
	}
	p3.Release()
}

func TestCappedLogRotates(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	l, err := openCappedLog(p, 256<<10, true)
	if err != nil {
		t.Fatal(err)
	}
	line := []byte(strings.Repeat("y", 99) + "\n")
	for i := 0; i < 10000; i++ { // ~1 MB through a 256 KiB cap
		l.Write(line)
	}
	l.Write([]byte("the end\n"))
	l.Close()
	a, _ := os.Stat(p)
	b, _ := os.Stat(p + RotatedSuffix)
	if a == nil || b == nil || a.Size()+b.Size() > 256<<10 || b.Size() != 128<<10 {
		t.Fatalf("sizes %v %v", a, b)
	}
	if got := ConsoleTail(p, 1); len(got) != 1 || got[0] != "the end" {
		t.Errorf("tail %q", got)
	}
	// Reopened (reattach): appends, keeps the size it had.
	l, _ = openCappedLog(p, 256<<10, false)
	if l.size != a.Size() {
		t.Errorf("reopened at %d, want %d", l.size, a.Size())
	}
	l.Close()
}

func TestConsoleTailReadsOnlyTheEnd(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "console.log")
	var b strings.Builder
	for i := range 50000 { // bigger than the window read from the end
		fmt.Fprintf(&b, "line %d%s\r\n", i, strings.Repeat("x", i%7))
	}
	b.WriteString("\r\nlast one\r\n\r\n")
	os.WriteFile(p, []byte(b.String()), 0o600)
	got := ConsoleTail(p, 3)
	if len(got) != 3 || got[2] != "last one" || !strings.HasPrefix(got[0], "line 49998") {
		t.Fatalf("tail %q", got)
	}
	// A just-rotated log: the lines come from both halves.
	os.Rename(p, p+RotatedSuffix)
	os.WriteFile(p, []byte("new 1\nnew 2\n"), 0o600)
	if got := ConsoleTail(p, 3); strings.Join(got, "|") != "last one|new 1|new 2" {
		t.Errorf("tail across rotation %q", got)
	}
	if ConsoleTail(filepath.Join(dir, "missing"), 3) != nil {
		t.Fatal("tail of a missing file")
	}
}

func vmRSS(t *testing.T) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// TestConsoleFlood: a guest writing its console at full speed for 60 s (a real process on
// the real FIFO -> copier -> capped log path) leaves console.log + console.log.1 at or under
// the cap the whole time, and the supervising process's RSS flat.
// BANGER_FLOOD_SECONDS shortens it for local runs.
func TestConsoleFlood(t *testing.T) {
	seconds := 60
	if s, err := strconv.Atoi(os.Getenv("BANGER_FLOOD_SECONDS")); err == nil && s > 0 {
		seconds = s
	}
	dir := shortDir(t)
	con := &Console{FIFO: filepath.Join(dir, "console.fifo"), Log: filepath.Join(dir, "console.log"), Stdout: true}
	limit := int64(DefaultConsoleCap)
	size := func(p string) int64 {
		fi, err := os.Stat(p)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	runtime.GC()
	before := vmRSS(t)
	p := spawnFake(t, "flood", Options{Dir: dir, Console: con})
	end := time.Now().Add(time.Duration(seconds) * time.Second)
	maxSeen := int64(0)
	for time.Now().Before(end) {
		total := size(con.Log) + size(con.Log+RotatedSuffix)
		maxSeen = max(maxSeen, total)
		if total > limit {
			t.Fatalf("console log %d bytes, over the cap of %d", total, limit)
		}
		if p.Exited() {
			t.Fatalf("the flooding guest exited: %v", p.ProcessState())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	total := size(con.Log) + size(con.Log+RotatedSuffix)
	runtime.GC()
	after := vmRSS(t)
	// The copier must really have kept up: the last whole line's number says how much went
	// through (a copier that stopped copying would keep the cap trivially). The kill may
	// have cut the very last line short, so the line before it counts too.
	tail := ConsoleTail(con.Log, 2)
	var n int64
	for i := len(tail) - 1; i >= 0 && n == 0; i-- {
		fmt.Sscanf(tail[i], "flood %d", &n)
	}
	written := n * int64(len(fmt.Sprintf(floodLine, 0)))
	t.Logf("%d s: %d MiB went through, console log %d bytes (max seen %d, cap %d), RSS %d -> %d KiB",
		seconds, written>>20, total, maxSeen, limit, before>>10, after>>10)
	if total > limit {
		t.Errorf("console log %d bytes, over the cap of %d", total, limit)
	}
	if written < 2*limit {
		t.Errorf("only %d bytes went through the copier in %d s (tail %q): it did not keep up with the guest", written, seconds, tail)
	}
	if growth := after - before; growth > 20<<20 {
		t.Errorf("RSS grew by %d MiB (from %d to %d KiB)", growth>>20, before>>10, after>>10)
	}
}

func TestStopLadderOnAProcess(t *testing.T) {
	// The ladder itself, without a driver: no agent, a button that does nothing, a
	// process that ignores everything: killed at the timeout, rungs in order.
	dir := shortDir(t)
	p := spawnFake(t, "sleep", Options{Dir: dir, Log: filepath.Join(dir, "vmm.log")})
	pressed := make(chan Rung, 10)
	err := p.Stop(context.Background(), 400*time.Millisecond, Ladder{
		Button: func(context.Context) error { pressed <- p.Rung(); return nil },
	})
	if err != nil || !p.Exited() || p.Rung() != RungKill || !p.Killed() {
		t.Fatalf("stop: %v, rung %v", err, p.Rung())
	}
	if len(pressed) != 1 || <-pressed != RungButton {
		t.Errorf("button presses: %d", len(pressed))
	}
	if ws, _ := p.ProcessState().Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("status %v", p.ProcessState())
	}
	if !bytes.Contains([]byte(strings.Join(TailLines(filepath.Join(dir, "vmm.log"), 1), "")), []byte("sleeping")) {
		t.Errorf("log %q", TailLines(filepath.Join(dir, "vmm.log"), 1))
	}
}

func TestCheckSocketPath(t *testing.T) {
	if err := CheckSocketPath("/" + strings.Repeat("a", 106)); err != nil {
		t.Errorf("107 bytes refused: %v", err)
	}
	if err := CheckSocketPath("/" + strings.Repeat("a", 107)); err == nil || !strings.Contains(err.Error(), "allow 107") {
		t.Errorf("108 bytes: %v", err)
	}
}
