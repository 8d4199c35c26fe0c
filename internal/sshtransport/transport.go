package sshtransport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/shellquote"
)

// Greeting is the line `banger daemon proxy` writes once it holds a connection to its
// daemon, before any daemon byte: the dialer reads it to tell a working bridge from ssh or
// the remote shell failing (whose words then explain why).
const Greeting = "banger-daemon-proxy/1\n"

// dialTimeout bounds ssh's login and the remote proxy's start (it may start the daemon)
// when the caller's context sets no deadline.
const dialTimeout = 60 * time.Second

// maxStderr bounds how much of ssh's error output is kept (its tail) for a message.
const maxStderr = 4 << 10

// Transport reaches Host's daemon with the system ssh.
type Transport struct {
	Host Host
	// SSH is the ssh client; "" is "ssh" from PATH.
	SSH string
	// Args are extra ssh options put before the host (BANGER_HOST_SSH_ARGS), like
	// -i KEY or -F CONFIG; the user's ~/.ssh/config applies as usual unless they say -F.
	Args []string
}

// Argv is the ssh command line (without the binary) that runs remote (words, quoted here
// for the remote shell) on the host; tty asks for a terminal.
func (t Transport) Argv(remote []string, tty bool) []string {
	// First -o wins in ssh: nothing may turn prompts back on (stdin is our stream).
	// The first -p and -l win too (ssh keeps the first value it sees of an option): the
	// address's own port and user go before the user's extra options, so what errors name
	// is where ssh goes.
	args := []string{"-o", "BatchMode=yes"}
	if t.Host.Port != 0 {
		args = append(args, "-p", strconv.Itoa(t.Host.Port))
	}
	if t.Host.User != "" {
		args = append(args, "-l", t.Host.User)
	}
	args = append(args, t.Args...)
	if tty {
		args = append(args, "-t")
	} else {
		args = append(args, "-T")
	}
	return append(args, "--", t.Host.Name, shellquote.Join(remote))
}

func (t Transport) sshPath() (string, error) {
	if t.SSH != "" {
		return t.SSH, nil
	}
	p, err := exec.LookPath("ssh")
	if err != nil {
		return "", &api.Error{Code: api.CodeUnavailable, Message: "no ssh client on PATH to reach " + t.Host.String(),
			Hint: "install OpenSSH's client (apt install openssh-client), or unset BANGER_HOST to use the local daemon"}
	}
	return p, nil
}

// Dial starts `ssh HOST -- BANGER daemon proxy` and returns its stdin and stdout as a
// connection to the remote daemon, once the proxy has greeted. A failure returns an
// *api.Error carrying ssh's own words (bounded) and a hint.
func (t Transport) Dial(ctx context.Context) (net.Conn, error) {
	path, err := t.sshPath()
	if err != nil {
		return nil, err
	}
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	stderr := &tailBuffer{max: maxStderr}
	// Not CommandContext: the connection outlives the request that dialed it (keep-alive).
	cmd := exec.Command(path, t.Argv([]string{t.Host.Banger, "daemon", "proxy"}, false)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, stderr
	// Its own process group: Ctrl-C at the terminal is for banger (which cancels the
	// request and closes the connection), not a kill of the bridge under it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("start %s to reach %s: %v", path, t.Host, err),
			Hint: "check the ssh client, or unset BANGER_HOST to use the local daemon"}
	}
	c := &conn{r: outR, w: inW, cmd: cmd, exited: make(chan struct{}), addr: addr(t.Host.String())}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.exited)
	}()

	started := time.Now()
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(dialTimeout)
	}
	_ = outR.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = outR.SetReadDeadline(time.Now()) })
	line, rerr := readLine(outR, len(Greeting))
	stop()
	_ = outR.SetReadDeadline(time.Time{})
	if rerr == nil && line == Greeting {
		return c, nil
	}
	c.Close()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if errors.Is(rerr, os.ErrDeadlineExceeded) {
		return nil, &api.Error{Code: api.CodeUnavailable,
			Message: fmt.Sprintf("ssh to %s did not bring up banger's daemon proxy within %s%s", t.Host, deadline.Sub(started).Round(time.Second), said(stderr.String())),
			Hint:    fmt.Sprintf("run `ssh %s -- %s daemon proxy </dev/null` yourself to see where it hangs", t.Host.sshTarget(), shellquote.Quote(t.Host.Banger))}
	}
	<-c.exited // Close kills it after a grace period; its stderr is complete then.
	code := -1
	var ee *exec.ExitError
	if errors.As(c.waitErr, &ee) {
		code = ee.ExitCode()
	}
	return nil, failure(t.Host, line, code, stderr.String())
}

// failure explains a proxy that did not greet: ssh's exit code and words say why.
func failure(h Host, got string, code int, stderr string) error {
	msg := fmt.Sprintf("cannot reach the banger daemon on %s through ssh", h)
	if got != "" {
		msg += fmt.Sprintf(": the remote side printed %q instead of banger's greeting", clean(got))
	} else if code >= 0 {
		msg += fmt.Sprintf(" (ssh exited %d)", code)
	}
	msg += said(stderr)
	hint := "run `ssh " + h.sshTarget() + " -- " + shellquote.Quote(h.Banger) + " daemon proxy` yourself to see what fails"
	switch low := strings.ToLower(stderr); {
	case got != "":
		hint = "a shell startup file on the remote host prints on non-interactive shells: make it quiet there (check ~/.bashrc)"
	case strings.Contains(low, "host key verification failed"), strings.Contains(low, "no host key is known"):
		hint = "ssh does not know the host key of " + h.Name + ": connect once with `ssh " + h.sshTarget() + "` to check and record it (banger never prompts)"
	case strings.Contains(low, "permission denied"):
		hint = "ssh could not log in without a prompt: load your key in ssh-agent, or name it with BANGER_HOST_SSH_ARGS='-i KEY', and check the remote authorized_keys"
	case strings.Contains(low, "could not resolve"), strings.Contains(low, "name or service not known"):
		hint = "check the host name in BANGER_HOST / --host"
	case strings.Contains(low, "connection refused"), strings.Contains(low, "timed out"), strings.Contains(low, "no route"):
		hint = "no sshd answers there: check the host and port, and that sshd runs"
	case code == 127, strings.Contains(low, "not found"), strings.Contains(low, "no such file"):
		hint = "banger is not installed on the remote host or not on the PATH of its non-interactive shell: name it with ?banger=/path/to/banger in the address or BANGER_REMOTE_BANGER"
	case strings.Contains(low, "daemon"):
		hint = "the remote daemon is not running and was not started: run `banger daemon start` on " + h.Name
	}
	return &api.Error{Code: api.CodeUnavailable, Message: msg, Hint: hint}
}

// sshTarget is the host as typed to ssh, for hints.
func (h Host) sshTarget() string {
	s := h.Name
	if h.User != "" {
		s = h.User + "@" + s
	}
	if h.Port != 0 {
		s = "-p " + strconv.Itoa(h.Port) + " " + s
	}
	return s
}

func said(stderr string) string {
	s := strings.TrimSpace(clean(stderr))
	if s == "" {
		return ""
	}
	return "; ssh said:\n  " + strings.ReplaceAll(s, "\n", "\n  ")
}

// clean drops control characters but newlines and tabs: the remote's words reach a terminal.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if (r < 0x20 && r != '\n' && r != '\t') || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return -1
		}
		return r
	}, strings.ToValidUTF8(s, "?"))
}

// readLine reads up to max bytes through the first newline, one byte at a time so nothing
// after it is consumed.
func readLine(r io.Reader, max int) (string, error) {
	var b []byte
	one := make([]byte, 1)
	for len(b) < max {
		n, err := r.Read(one)
		if n == 1 {
			b = append(b, one[0])
			if one[0] == '\n' {
				return string(b), nil
			}
		}
		if err != nil {
			return string(b), err
		}
	}
	return string(b), nil
}

// Run runs remote (words) on the host over ssh with the terminal handed over (vm ssh
// through a remote daemon) and returns its exit code; ssh's own failures are 255, and ssh
// has already said why on stderr.
func (t Transport) Run(remote []string, tty bool, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	path, err := t.sshPath()
	if err != nil {
		return 255, err
	}
	cmd := exec.Command(path, t.Argv(remote, tty)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	// ssh owns the terminal now: ^C and friends are for it and the remote side.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 255, fmt.Errorf("run %s: %w", path, err)
	}
	return 0, nil
}

// conn is an ssh process's stdout (read) and stdin (write).
type conn struct {
	r, w    *os.File
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
	once    sync.Once
	addr    addr
}

func (c *conn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *conn) Write(p []byte) (int, error) { return c.w.Write(p) }

// Close ends the stream: EOF on ssh's stdin ends the remote proxy, and ssh with it; an ssh
// that lingers is killed after a grace period.
func (c *conn) Close() error {
	c.once.Do(func() {
		c.w.Close()
		c.r.Close()
		go func() {
			select {
			case <-c.exited:
			case <-time.After(3 * time.Second):
				_ = c.cmd.Process.Kill()
			}
		}()
	})
	return nil
}

func (c *conn) LocalAddr() net.Addr  { return addr("local") }
func (c *conn) RemoteAddr() net.Addr { return c.addr }
func (c *conn) SetDeadline(t time.Time) error {
	return errors.Join(c.r.SetReadDeadline(t), c.w.SetWriteDeadline(t))
}
func (c *conn) SetReadDeadline(t time.Time) error  { return c.r.SetReadDeadline(t) }
func (c *conn) SetWriteDeadline(t time.Time) error { return c.w.SetWriteDeadline(t) }

type addr string

func (addr) Network() string  { return "ssh" }
func (a addr) String() string { return string(a) }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = bytes.Clone(t.b[len(t.b)-t.max:])
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
