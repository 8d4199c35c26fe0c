package agentclient_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/agent/agentserver"
)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// run executes argv and returns stdout, stderr and the status.
func run(t *testing.T, c *agentclient.Client, req agent.ExecRequest, stdin io.Reader) (string, string, agent.ExitStatus) {
	t.Helper()
	var out, errb bytes.Buffer
	st, err := c.Exec(ctxT(t, 30*time.Second), req, stdin, &out, &errb)
	if err != nil {
		t.Fatalf("exec %q: %v", req.Argv, err)
	}
	return out.String(), errb.String(), st
}

// TestTransports runs the API over each transport: plain stream, Firecracker hybrid vsock,
// virtio-serial with yamux.
func TestTransports(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			t.Parallel()
			stages := filepath.Join(t.TempDir(), "stages.json")
			os.WriteFile(stages, []byte(`[{"name":"init","duration_ms":7}]`), 0o644)
			s := newAgent(t, agentserver.Config{Version: "v1.2.3", BootStagesPath: stages})
			c := tr.setup(t, s)
			t.Run("health", func(t *testing.T) { testHealth(t, c) })
			t.Run("exec", func(t *testing.T) { testExec(t, c) })
			t.Run("files", func(t *testing.T) { testFiles(t, c) })
			t.Run("errors", func(t *testing.T) { testErrors(t, c) })
		})
	}
}

func testHealth(t *testing.T, c *agentclient.Client) {
	h, err := c.WaitReady(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if h.Status != "ok" || h.AgentVersion != "v1.2.3" || h.Kernel.Release == "" || string(h.BootStages) != `[{"name":"init","duration_ms":7}]` {
		t.Fatalf("health %+v (stages %s)", h, h.BootStages)
	}
}

func testExec(t *testing.T, c *agentclient.Client) {
	t.Run("stdout-stderr-separate", func(t *testing.T) {
		script := `for i in 1 2 3 4 5; do printf "out$i\n"; printf "err$i\n" >&2; done; printf 'no newline'; printf '\000\377' >&2`
		out, errs, st := run(t, c, agent.ExecRequest{Argv: []string{"sh", "-c", script}}, nil)
		if out != "out1\nout2\nout3\nout4\nout5\nno newline" || errs != "err1\nerr2\nerr3\nerr4\nerr5\n\x00\xff" || st.Code != 0 {
			t.Fatalf("stdout %q stderr %q %v", out, errs, st)
		}
	})
	t.Run("exit-codes", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "noexec"), []byte("#!/bin/sh\n"), 0o644)
		for _, c2 := range []struct {
			argv   []string
			code   int
			stderr string
		}{
			{[]string{"true"}, 0, ""},
			{[]string{"false"}, 1, ""},
			{[]string{"sh", "-c", "exit 42"}, 42, ""},
			{[]string{"no-such-command-xyz", "arg"}, 127, "banger-agent: no-such-command-xyz: command not found\n"},
			{[]string{"/no/such/binary"}, 127, "banger-agent: /no/such/binary: No such file or directory\n"},
			{[]string{filepath.Join(dir, "noexec")}, 126, "banger-agent: " + filepath.Join(dir, "noexec") + ": Permission denied\n"},
			{[]string{"sh", "-c", "kill -9 $$"}, 137, ""},
		} {
			_, errs, st := run(t, c, agent.ExecRequest{Argv: c2.argv}, nil)
			if st.Code != c2.code || errs != c2.stderr {
				t.Errorf("%q: %v, stderr %q; want %d, %q", c2.argv, st, errs, c2.code, c2.stderr)
			}
		}
		_, _, st := run(t, c, agent.ExecRequest{Argv: []string{"sh", "-c", "kill -9 $$"}}, nil)
		if st.Signal != 9 {
			t.Errorf("signal %v", st)
		}
	})
	t.Run("stdin", func(t *testing.T) {
		data := make([]byte, 3<<20+17)
		rand.Read(data)
		out, _, st := run(t, c, agent.ExecRequest{Argv: []string{"cat"}}, bytes.NewReader(data))
		if st.Code != 0 || out != string(data) {
			t.Fatalf("cat: %v, %d bytes back of %d", st, len(out), len(data))
		}
		// No stdin: the process sees EOF at once.
		out, _, _ = run(t, c, agent.ExecRequest{Argv: []string{"sh", "-c", "wc -c"}}, nil)
		if strings.TrimSpace(out) != "0" {
			t.Fatalf("wc -c without stdin: %q", out)
		}
	})
	t.Run("env-cwd", func(t *testing.T) {
		dir := t.TempDir()
		out, _, _ := run(t, c, agent.ExecRequest{
			Argv: []string{"sh", "-c", `echo "$FOO|$HOME|$USER|$PATH|${TERM-unset}"; pwd`},
			Env:  []string{"FOO=bar baz", "HOME=/home/x"},
			Cwd:  dir,
		}, nil)
		want := "bar baz|/home/x|root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|unset\n" + dir + "\n"
		if out != want {
			t.Fatalf("got %q want %q", out, want)
		}
		// PATH from the request decides the lookup.
		os.WriteFile(filepath.Join(dir, "mytool"), []byte("#!/bin/sh\necho mytool ran\n"), 0o755)
		out, _, st := run(t, c, agent.ExecRequest{Argv: []string{"mytool"}, Env: []string{"PATH=" + dir + ":/bin:/usr/bin"}}, nil)
		if out != "mytool ran\n" || st.Code != 0 {
			t.Fatalf("mytool: %q %v", out, st)
		}
	})
	t.Run("tty", func(t *testing.T) {
		out, errs, st := run(t, c, agent.ExecRequest{Argv: []string{"tty"}, TTY: true}, nil)
		if !regexp.MustCompile(`^/dev/pts/\d+\r\n$`).MatchString(out) || errs != "" || st.Code != 0 {
			t.Fatalf("tty: %q %q %v", out, errs, st)
		}
		out, _, _ = run(t, c, agent.ExecRequest{Argv: []string{"sh", "-c", "echo $TERM; stty size"}, TTY: true, Rows: 33, Cols: 101}, nil)
		if out != "xterm-256color\r\n33 101\r\n" {
			t.Fatalf("tty size: %q", out)
		}
		// Resize while running.
		stdinR, stdinW := io.Pipe()
		out2 := &syncBuffer{}
		s, err := c.StartExec(ctxT(t, 20*time.Second), agent.ExecRequest{Argv: []string{"sh", "-c", "stty size; read x; stty size"}, TTY: true}, stdinR, out2, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		waitFor(t, 10*time.Second, "first stty size", func() bool { return strings.Contains(out2.String(), "24 80\r\n") })
		if err := s.Resize(40, 120); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // frames are ordered, but be clear about intent
		stdinW.Write([]byte("go\n"))
		st, err = s.Wait()
		stdinW.Close()
		if err != nil || st.Code != 0 || !strings.HasSuffix(out2.String(), "40 120\r\n") {
			t.Fatalf("after resize: %q %v %v", out2.String(), st, err)
		}
	})
	t.Run("signal", func(t *testing.T) {
		s, err := c.StartExec(ctxT(t, 20*time.Second), agent.ExecRequest{Argv: []string{"sh", "-c", "echo started; exec sleep 100"}}, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		if err := s.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		st, err := s.Wait()
		if err != nil || st.Code != 143 || st.Signal != 15 {
			t.Fatalf("%v %v", st, err)
		}
	})
	t.Run("kill-on-disconnect", func(t *testing.T) {
		dir := t.TempDir()
		pidFile := filepath.Join(dir, "pids")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			// A child in the background and the main process: both must die.
			_, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "sleep 1000 & echo $! > " + pidFile + ".bg; echo $$ > " + pidFile + "; wait"}}, nil, nil, nil)
			done <- err
		}()
		var pids []int
		waitFor(t, 10*time.Second, "pid files", func() bool {
			pids = nil
			for _, f := range []string{pidFile, pidFile + ".bg"} {
				b, _ := os.ReadFile(f)
				if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
					pids = append(pids, pid)
				}
			}
			return len(pids) == 2
		})
		cancel()
		if err := <-done; err == nil || !strings.Contains(err.Error(), "context canceled") {
			t.Fatalf("exec after cancel: %v", err)
		}
		for _, pid := range pids {
			waitFor(t, 10*time.Second, fmt.Sprintf("pid %d to die", pid), func() bool { return processGone(pid) })
		}
	})
	t.Run("background-child-keeps-pipes", func(t *testing.T) {
		start := time.Now()
		out, _, st := run(t, c, agent.ExecRequest{Argv: []string{"sh", "-c", "sleep 30 & echo $!; echo done"}}, nil)
		lines := strings.Fields(out)
		if len(lines) != 2 || lines[1] != "done" || st.Code != 0 {
			t.Fatalf("%q %v", out, st)
		}
		if pid, err := strconv.Atoi(lines[0]); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("exec waited %v for a background child", d)
		}
	})
	t.Run("large-output", func(t *testing.T) {
		out, errs, st := run(t, c, agent.ExecRequest{Argv: []string{"sh", "-c", "head -c 5000000 /dev/zero; head -c 1000000 /dev/zero >&2"}}, nil)
		if len(out) != 5000000 || len(errs) != 1000000 || st.Code != 0 {
			t.Fatalf("%d %d %v", len(out), len(errs), st)
		}
	})
}

func testFiles(t *testing.T, c *agentclient.Client) {
	ctx := ctxT(t, 30*time.Second)
	dir := t.TempDir()
	p := filepath.Join(dir, "x", "y", "data.bin")
	data := make([]byte, 2<<20+3)
	rand.Read(data)
	fi, err := c.WriteFile(ctx, p, bytes.NewReader(data), 0o600, 1234, 5678)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size != int64(len(data)) || fi.Mode != 0o600 || fi.UID != 1234 || fi.GID != 5678 {
		t.Fatalf("write info %+v", fi)
	}
	var back bytes.Buffer
	fi, err = c.ReadFile(ctx, p, &back)
	if err != nil || !bytes.Equal(back.Bytes(), data) || fi.Mode != 0o600 || fi.UID != 1234 || fi.GID != 5678 || fi.Size != int64(len(data)) {
		t.Fatalf("read back %d bytes, %+v, %v", back.Len(), fi, err)
	}
	// setuid bits and default owner.
	exe := filepath.Join(dir, "tool")
	if fi, err := c.WriteFile(ctx, exe, strings.NewReader("#!/bin/sh\n"), 0o755|os.ModeSetuid, -1, -1); err != nil || fi.Mode != 0o4755 || fi.UID != os.Getuid() {
		t.Fatalf("setuid: %+v %v", fi, err)
	}
	if st, _ := os.Stat(exe); st.Mode()&os.ModeSetuid == 0 {
		t.Fatalf("mode on disk %v", st.Mode())
	}
	_, err = c.ReadFile(ctx, filepath.Join(dir, "missing"), io.Discard)
	if !agent.IsNotFound(err) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := c.WriteFile(ctx, "relative/path", strings.NewReader("x"), 0o644, -1, -1); agent.ErrorCode(err) != agent.CodeBadRequest {
		t.Fatalf("relative path: %v", err)
	}
	if _, err := c.ReadFile(ctx, dir, io.Discard); agent.ErrorCode(err) != agent.CodeIsDirectory {
		t.Fatalf("directory: %v", err)
	}
}

func testErrors(t *testing.T, c *agentclient.Client) {
	ctx := ctxT(t, 10*time.Second)
	_, err := c.Exec(ctx, agent.ExecRequest{}, nil, nil, nil)
	if agent.ErrorCode(err) != agent.CodeBadRequest {
		t.Fatalf("empty argv: %v", err)
	}
	_, err = c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}, Cwd: "/no/such/dir"}, nil, nil, nil)
	if agent.ErrorCode(err) != agent.CodeBadRequest || !strings.Contains(err.Error(), "/no/such/dir") {
		t.Fatalf("missing cwd: %v", err)
	}
	if _, err := c.Power(ctx, "explode"); agent.ErrorCode(err) != agent.CodeBadRequest {
		t.Fatalf("bad power action: %v", err)
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestPowerThroughClient(t *testing.T) {
	got := make(chan string, 1)
	s := newAgent(t, agentserver.Config{PowerDelay: time.Millisecond, PowerHook: func(action, method string) { got <- action + " " + method }})
	c := setupUnix(t, s)
	pr, err := c.Power(ctxT(t, 10*time.Second), agent.PowerReboot)
	if err != nil || pr.Action != "reboot" || pr.Method == "" {
		t.Fatalf("%+v %v", pr, err)
	}
	select {
	case g := <-got:
		if !strings.HasPrefix(g, "reboot ") {
			t.Fatal(g)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("power hook not called")
	}
}
