package agentserver

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
)

// The exec stream's frame format is documented in package agent (frames.go).

const (
	defaultPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	defaultTERM = "xterm-256color"
	// outputGrace is how long output pipes may stay open after the process exited (a
	// background child holding them) before the agent stops waiting for EOF. Whatever the
	// process wrote is in the pipe and is always delivered.
	outputGrace = 250 * time.Millisecond
	// lingerTimeout is how long the agent waits for the client to hang up after the exit frame.
	lingerTimeout = 5 * time.Second
)

// execSpec is a validated exec request.
type execSpec struct {
	argv       []string
	env        []string
	dir        string
	tty        bool
	rows, cols uint16
	path       string // resolved executable
	failCode   int    // non-zero: do not start, answer this exit code (127, 126)
	failMsg    string // with this message on stderr
}

func prepareExec(req agent.ExecRequest) (*execSpec, error) {
	if len(req.Argv) == 0 || req.Argv[0] == "" {
		return nil, errors.New("argv is empty: give at least the command")
	}
	for _, a := range append(append([]string{}, req.Argv...), req.Env...) {
		if strings.ContainsRune(a, 0) {
			return nil, errors.New("argv and env may not contain NUL bytes")
		}
	}
	for _, kv := range req.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("env entry %q is not KEY=value", kv)
		}
	}
	spec := &execSpec{argv: req.Argv, tty: req.TTY, rows: req.Rows, cols: req.Cols}
	if spec.rows == 0 {
		spec.rows = 24
	}
	if spec.cols == 0 {
		spec.cols = 80
	}
	switch {
	case req.Cwd == "":
		spec.dir = "/"
		if st, err := os.Stat("/root"); err == nil && st.IsDir() {
			spec.dir = "/root"
		}
	case !filepath.IsAbs(req.Cwd):
		return nil, fmt.Errorf("cwd %q is not absolute", req.Cwd)
	default:
		st, err := os.Stat(req.Cwd)
		if err != nil {
			return nil, fmt.Errorf("cwd %s: %v", req.Cwd, errors.Unwrap(err))
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("cwd %s is not a directory", req.Cwd)
		}
		spec.dir = req.Cwd
	}

	defaults := []string{"PATH=" + defaultPATH, "HOME=/root", "USER=root", "LOGNAME=root"}
	if req.TTY {
		defaults = append(defaults, "TERM="+defaultTERM)
	}
	spec.env = mergeEnv(defaults, req.Env)
	pathEnv := ""
	for _, kv := range spec.env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	spec.path, spec.failCode, spec.failMsg = lookCommand(req.Argv[0], spec.dir, pathEnv)
	return spec, nil
}

// mergeEnv returns base with extra applied: an entry replaces one with the same key in
// place, or is appended.
func mergeEnv(base, extra []string) []string {
	out := append([]string{}, base...)
	idx := map[string]int{}
	for i, kv := range out {
		k, _, _ := strings.Cut(kv, "=")
		idx[k] = i
	}
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := idx[k]; ok {
			out[i] = kv
			continue
		}
		idx[k] = len(out)
		out = append(out, kv)
	}
	return out
}

// lookCommand resolves name like a shell does, against the request's PATH (not the
// agent's own). It returns the path, or an exit code and stderr message: 127 for a
// command that does not exist, 126 for one that cannot be executed.
func lookCommand(name, dir, pathEnv string) (string, int, string) {
	abs := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	if strings.Contains(name, "/") {
		p := abs(name)
		if code, reason := checkExecutable(p); code != 0 {
			return "", code, fmt.Sprintf("banger-agent: %s: %s", name, reason)
		}
		return p, 0, ""
	}
	denied := false
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "."
		}
		p := abs(filepath.Join(d, name))
		code, _ := checkExecutable(p)
		if code == 0 {
			return p, 0, ""
		}
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			denied = true // like bash: a non-executable match only counts if nothing better
		}
	}
	if denied {
		return "", 126, fmt.Sprintf("banger-agent: %s: Permission denied", name)
	}
	return "", 127, fmt.Sprintf("banger-agent: %s: command not found", name)
}

func checkExecutable(p string) (int, string) {
	st, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 127, "No such file or directory"
		}
		return 126, errors.Unwrap(err).Error()
	}
	if st.IsDir() {
		return 126, "Is a directory"
	}
	if unix.Access(p, unix.X_OK) != nil {
		return 126, "Permission denied"
	}
	return 0, ""
}

// upgradeStream takes over the request's connection as a stream of protocol, answering
// 101: it is tracked like an exec session until done is called. On false the request has
// been answered (or the connection closed).
func (s *Server) upgradeStream(w http.ResponseWriter, protocol, what string) (net.Conn, *bufio.ReadWriter, func(), bool) {
	if !s.trackExec() {
		writeError(w, agent.CodeInternal, "the agent is shutting down")
		return nil, nil, nil, false
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.execs.Done()
		writeError(w, agent.CodeInternal, "cannot take over the connection for "+what+": "+err.Error())
		return nil, nil, nil, false
	}
	_ = conn.SetDeadline(time.Time{})
	_, err = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + protocol + "\r\n\r\n")
	if err == nil {
		err = brw.Flush()
	}
	if err != nil {
		_ = conn.Close()
		s.execs.Done()
		return nil, nil, nil, false
	}
	return conn, brw, s.execs.Done, true
}

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request) {
	if !agent.IsUpgrade(r, agent.ExecUpgradeProtocol) {
		writeError(w, agent.CodeUpgradeRequired, fmt.Sprintf("POST %s needs the headers Connection: Upgrade and Upgrade: %s", agent.PathExec, agent.ExecUpgradeProtocol))
		return
	}
	var req agent.ExecRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	spec, err := prepareExec(req)
	if err != nil {
		writeError(w, agent.CodeBadRequest, err.Error())
		return
	}
	conn, brw, done, ok := s.upgradeStream(w, agent.ExecUpgradeProtocol, "the exec stream")
	if !ok {
		return
	}
	defer done()
	e := &execSession{
		s:          s,
		spec:       spec,
		conn:       conn,
		br:         brw.Reader,
		fw:         agent.NewFrameWriter(conn),
		log:        s.log.With("cmd", spec.argv[0], "tty", spec.tty),
		exited:     make(chan struct{}),
		clientGone: make(chan struct{}),
	}
	e.run()
}

// execSession is one running exec stream.
type execSession struct {
	s    *Server
	spec *execSpec
	conn net.Conn
	br   *bufio.Reader
	fw   *agent.FrameWriter
	log  *slog.Logger

	cmd     *exec.Cmd
	ptmx    *os.File    // TTY mode: the pty master (stdin and output)
	stdin   *os.File    // pipe to the process's stdin, or ptmx
	stdinCh chan []byte // frames for stdin; nil marks stdin EOF
	pumps   []*pump

	exited     chan struct{} // closed once the process has been reaped
	clientGone chan struct{} // closed when the client's side ends
}

func (e *execSession) run() {
	defer e.conn.Close()
	start := time.Now()
	e.log.Debug("exec", "argv", e.spec.argv, "dir", e.spec.dir)

	code, msg := e.spec.failCode, e.spec.failMsg
	if code == 0 {
		if err := e.start(); err != nil {
			code, msg = startFailure(e.spec.argv[0], err)
		}
	}
	if code != 0 {
		close(e.exited)
		go e.readFrames()
		_ = e.fw.WriteFrame(agent.FrameStderr, []byte(msg+"\n"))
		e.finish(agent.ExitStatus{Code: code})
		e.log.Info("exec: not started", "code", code, "reason", msg)
		return
	}

	for _, p := range e.pumps {
		go p.run()
	}
	go e.writeStdin()
	go e.readFrames()
	waitCh := make(chan error, 1)
	go func() { waitCh <- e.cmd.Wait() }()

	var waitErr error
	select {
	case waitErr = <-waitCh:
	case <-e.clientGone:
		e.log.Info("exec: client went away; killing the process group", "pid", e.cmd.Process.Pid)
		_ = e.conn.Close()
		e.kill()
		waitErr = <-waitCh
	case <-e.s.closing:
		e.log.Info("exec: agent shutting down; killing the process group", "pid", e.cmd.Process.Pid)
		_ = e.conn.Close()
		e.kill()
		waitErr = <-waitCh
	}
	close(e.exited)
	graceEnd := time.Now().Add(outputGrace)
	for _, p := range e.pumps {
		e.finishPump(p, graceEnd)
	}
	_ = e.stdin.Close() // also the pty master in TTY mode

	ps := e.cmd.ProcessState
	if ps == nil {
		_ = e.fw.WriteFrame(agent.FrameError, []byte("wait for process: "+waitErr.Error()))
		e.log.Error("exec: wait failed", "err", waitErr)
		return
	}
	st := exitStatusOf(ps)
	e.finish(st)
	e.log.Info("exec finished", "pid", ps.Pid(), "code", st.Code, "signal", st.Signal, "duration", time.Since(start).Round(time.Millisecond))
}

// start starts the process with pipes, or on a pty in TTY mode.
func (e *execSession) start() error {
	cmd := &exec.Cmd{Path: e.spec.path, Args: e.spec.argv, Env: e.spec.env, Dir: e.spec.dir}
	e.cmd = cmd
	e.stdinCh = make(chan []byte, 16)
	if e.spec.tty {
		opened, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: e.spec.rows, Cols: e.spec.cols})
		if err != nil {
			return err
		}
		ptmx, err := pollable(opened)
		if err != nil {
			e.kill()
			_ = cmd.Wait()
			return err
		}
		e.ptmx, e.stdin = ptmx, ptmx
		e.pumps = []*pump{newPump(ptmx, agent.FrameStdout, e.fw)}
		return nil
	}
	var toClose []*os.File
	defer func() {
		for _, f := range toClose {
			_ = f.Close()
		}
	}()
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err == nil {
			toClose = append(toClose, r, w)
		}
		return r, w, err
	}
	inR, inW, err := pipe()
	if err != nil {
		return err
	}
	outR, outW, err := pipe()
	if err != nil {
		return err
	}
	errR, errW, err := pipe()
	if err != nil {
		return err
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	toClose = []*os.File{inR, outW, errW} // the child's ends; the parent keeps the others
	e.stdin = inW
	e.pumps = []*pump{newPump(outR, agent.FrameStdout, e.fw), newPump(errR, agent.FrameStderr, e.fw)}
	return nil
}

// startFailure maps a start error to a shell-like exit code and message.
func startFailure(name string, err error) (int, string) {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if errno == syscall.ENOENT {
			return 127, fmt.Sprintf("banger-agent: %s: No such file or directory", name)
		}
		return 126, fmt.Sprintf("banger-agent: %s: %s", name, errno.Error())
	}
	return 126, fmt.Sprintf("banger-agent: %s: %v", name, err)
}

func exitStatusOf(ps *os.ProcessState) agent.ExitStatus {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		sig := int(ws.Signal())
		return agent.ExitStatus{Code: 128 + sig, Signal: sig}
	}
	return agent.ExitStatus{Code: ps.ExitCode()}
}

// kill kills the process group (the process is its leader: Setpgid, or Setsid with a pty).
func (e *execSession) kill() {
	if err := unix.Kill(-e.cmd.Process.Pid, unix.SIGKILL); err != nil {
		_ = e.cmd.Process.Kill()
	}
}

// finish sends the exit frame, half-closes and waits for the client to hang up.
func (e *execSession) finish(st agent.ExitStatus) {
	select {
	case <-e.clientGone:
		return
	default:
	}
	payload, _ := json.Marshal(st)
	if err := e.fw.WriteFrame(agent.FrameExit, payload); err != nil {
		return
	}
	if cw, ok := e.conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	t := time.NewTimer(lingerTimeout)
	defer t.Stop()
	select {
	case <-e.clientGone:
	case <-t.C:
	case <-e.s.closing:
	}
}

// readFrames reads the client's frames until its side ends.
func (e *execSession) readFrames() {
	defer close(e.clientGone)
	if e.stdinCh != nil {
		defer close(e.stdinCh)
	}
	stdinClosed := false
	send := func(b []byte) {
		select {
		case e.stdinCh <- b:
		case <-e.exited:
		}
	}
	for {
		t, p, err := agent.ReadFrame(e.br)
		if err != nil {
			return
		}
		switch t {
		case agent.FrameStdin:
			if !stdinClosed && len(p) > 0 {
				send(p)
			}
		case agent.FrameStdinEOF:
			if !stdinClosed {
				stdinClosed = true
				send(nil)
			}
		case agent.FrameResize:
			rows, cols, err := agent.ParseResize(p)
			if err != nil || e.ptmx == nil {
				continue
			}
			if err := setWinsize(e.ptmx, rows, cols); err != nil {
				e.log.Debug("exec: resize failed", "err", err)
			}
		case agent.FrameSignal:
			sig, err := agent.ParseSignal(p)
			if err != nil || sig < 1 || sig > 64 || e.cmd == nil {
				continue
			}
			select {
			case <-e.exited:
				continue
			default:
			}
			if err := unix.Kill(-e.cmd.Process.Pid, syscall.Signal(sig)); err != nil {
				_ = e.cmd.Process.Signal(syscall.Signal(sig))
			}
		}
	}
}

// writeStdin feeds stdin frames to the process. In TTY mode stdin EOF is ^D (VEOF).
func (e *execSession) writeStdin() {
	broken := false
	for b := range e.stdinCh {
		if broken {
			continue
		}
		if b == nil {
			if e.spec.tty {
				b = []byte{4}
			} else {
				_ = e.stdin.Close()
				broken = true
				continue
			}
		}
		if _, err := e.stdin.Write(b); err != nil {
			broken = true
		}
	}
	if !e.spec.tty {
		_ = e.stdin.Close()
	}
}

// finishPump waits for an output pump after the process exited: until EOF, or graceEnd,
// after which everything still buffered is read and the pump stops.
func (e *execSession) finishPump(p *pump, graceEnd time.Time) {
	t := time.NewTimer(time.Until(graceEnd))
	defer t.Stop()
	select {
	case <-p.done:
		return
	case <-t.C:
	}
	if err := p.f.SetReadDeadline(time.Unix(1, 0)); err != nil {
		return // not pollable (never for pipes and ptys): leave it
	}
	select {
	case <-p.done:
	case <-e.clientGone:
		_ = e.conn.Close() // unblock a frame write to a client that stopped reading
		<-p.done
	}
}

// pump copies one output (pipe or pty master) into frames of one type.
type pump struct {
	f    *os.File
	typ  agent.FrameType
	fw   *agent.FrameWriter
	done chan struct{}
}

func newPump(f *os.File, typ agent.FrameType, fw *agent.FrameWriter) *pump {
	return &pump{f: f, typ: typ, fw: fw, done: make(chan struct{})}
}

func (p *pump) run() {
	defer close(p.done)
	defer p.f.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := p.f.Read(buf)
		if n > 0 {
			if p.fw.WriteFrame(p.typ, buf[:n]) != nil {
				return
			}
		}
		if err != nil {
			// EOF for pipes, EIO for a pty whose other side is gone. A deadline means the
			// process exited but something still holds the pipe: take what is buffered.
			if errors.Is(err, os.ErrDeadlineExceeded) {
				p.drainBuffered(buf)
			}
			return
		}
	}
}

// drainBuffered reads what is buffered right now, without waiting.
func (p *pump) drainBuffered(buf []byte) {
	_ = p.f.SetReadDeadline(time.Time{})
	rc, err := p.f.SyscallConn()
	if err != nil {
		return
	}
	for {
		var n int
		var rerr error
		if err := rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), buf)
			return true
		}); err != nil || rerr != nil || n <= 0 {
			return
		}
		if p.fw.WriteFrame(p.typ, buf[:n]) != nil {
			return
		}
	}
}

// pollable returns f's descriptor as a non-blocking, poller-backed *os.File and closes f.
// creack/pty's ioctls go through File.Fd, which puts the pty master in blocking mode: reads
// then ignore deadlines and Close cannot interrupt them.
func pollable(f *os.File) (*os.File, error) {
	fd, err := unix.Dup(int(f.Fd()))
	_ = f.Close()
	if err != nil {
		return nil, fmt.Errorf("dup pty master: %w", err)
	}
	unix.CloseOnExec(fd)
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("pty master non-blocking: %w", err)
	}
	return os.NewFile(uintptr(fd), "/dev/ptmx"), nil
}

// setWinsize resizes the pty without File.Fd (which would make it blocking again).
func setWinsize(f *os.File, rows, cols uint16) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	}); err != nil {
		return err
	}
	return ioErr
}
