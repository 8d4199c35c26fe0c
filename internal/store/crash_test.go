package store

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// helperEnv names the database the child process writes to. When it is
// unset, TestHelperWriter is an ordinary (skipped) test.
const helperEnv = "BANGER_STORE_TEST_HELPER_DB"

// TestHelperWriter is not a test of its own: TestKill9MidWrite runs the test
// binary again with -test.run=^TestHelperWriter$ and helperEnv set. The
// child commits in a tight loop and reports each commit on stdout only
// after Commit has returned, so every id the parent reads is one the store
// promised was durable. It runs until killed.
func TestHelperWriter(t *testing.T) {
	path := os.Getenv(helperEnv)
	if path == "" {
		t.Skip("helper process for TestKill9MidWrite")
	}
	ctx := context.Background()
	s, err := Open(ctx, path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper: open:", err)
		os.Exit(2)
	}
	// os.Stdout is unbuffered: each Fprintf is one write(2), done before
	// the next commit starts.
	if err := s.PutImage(ctx, Image{ID: "crash-img", Name: "crash-img"}); err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(2)
	}
	for i := 0; ; i++ {
		id, err := s.AppendEvent(ctx, Event{Operation: "crash", Subject: "helper", Stage: strconv.Itoa(i),
			Error: strings.Repeat("x", i%512)}) // varied row sizes spread commits over pages
		if err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stdout, "event %d\n", id)
		if i%10 == 0 {
			// A multi-row transaction (VM plus its lease) too.
			vmID := fmt.Sprintf("vm-%d-%d", os.Getpid(), i)
			if err := s.PutVM(ctx, VM{ID: vmID, Name: vmID, ImageID: "crash-img", State: VMRunning}); err != nil {
				fmt.Fprintln(os.Stderr, "helper:", err)
				os.Exit(2)
			}
			fmt.Fprintf(os.Stdout, "vm %s\n", vmID)
		}
	}
}

// TestKill9MidWrite kills a writing process with SIGKILL at several points
// and checks that the file is intact and holds everything the child was told
// was committed. Several rounds on the same file also cover recovery from a
// WAL left by a killed process, and kills landing during auto-checkpoints
// (every ~1000 WAL pages).
func TestKill9MidWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "state.db")
	committedEvents := map[int64]bool{}
	committedVMs := map[string]bool{}

	for round, killAfter := range []int{1, 150, 700, 2500} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperWriter$", "-test.count=1")
		cmd.Env = append(os.Environ(), helperEnv+"="+path)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Never leave a child behind, whatever happens below.
		timer := time.AfterFunc(2*time.Minute, func() { cmd.Process.Kill() })

		sc := bufio.NewScanner(out)
		n := 0
		for n < killAfter && sc.Scan() {
			kind, val, _ := strings.Cut(sc.Text(), " ")
			switch kind {
			case "event":
				id, err := strconv.ParseInt(val, 10, 64)
				if err != nil {
					t.Fatalf("bad line %q", sc.Text())
				}
				committedEvents[id] = true
				n++
			case "vm":
				committedVMs[val] = true
			}
		}
		// The child is still in its loop, most likely inside a commit.
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		// Collect what it reported between our last read and the kill:
		// those were committed too.
		for sc.Scan() {
			kind, val, _ := strings.Cut(sc.Text(), " ")
			switch kind {
			case "event":
				if id, err := strconv.ParseInt(val, 10, 64); err == nil {
					committedEvents[id] = true
				}
			case "vm":
				committedVMs[val] = true
			}
		}
		err = cmd.Wait()
		timer.Stop()
		if n < killAfter {
			t.Fatalf("round %d: child stopped after %d commits: %v\n%s", round, n, err, stderr.String())
		}
		ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child did not die of SIGKILL: %v\n%s", round, err, stderr.String())
		}

		s, err := Open(ctx, path)
		if err != nil {
			t.Fatalf("round %d: reopen after kill -9: %v", round, err)
		}
		if err := s.Integrity(ctx); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		present := map[int64]bool{}
		for after := int64(0); ; {
			evs, err := s.ListEvents(ctx, EventFilter{Operation: "crash", AfterID: after, Limit: 5000})
			if err != nil {
				t.Fatal(err)
			}
			if len(evs) == 0 {
				break
			}
			for _, e := range evs {
				present[e.ID] = true
			}
			after = evs[len(evs)-1].ID
		}
		missing := 0
		for id := range committedEvents {
			if !present[id] {
				missing++
				if missing <= 5 {
					t.Errorf("round %d: committed event %d lost", round, id)
				}
			}
		}
		for id := range committedVMs {
			if _, err := s.GetVM(ctx, id); err != nil {
				t.Errorf("round %d: committed vm %s: %v", round, id, err)
			}
		}
		if missing > 0 {
			t.Fatalf("round %d: %d of %d committed events lost", round, missing, len(committedEvents))
		}
		// present may exceed what was reported: the child can commit and
		// die before printing. The reverse would be data loss.
		t.Logf("round %d: SIGKILL after %d reported commits; totals so far: %d events reported committed, %d present, %d vms",
			round, n, len(committedEvents), len(present), len(committedVMs))
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
