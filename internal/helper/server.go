package helper

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where the helper listens unless configured otherwise.
const DefaultSocket = "/run/banger/helper.sock"

// idleTimeout closes connections a client forgot about.
const idleTimeout = 2 * time.Minute

// maxConns bounds open connections: the daemon dials once per call and makes a few calls at
// a time, so more than this is a client gone wrong, and each one holds a goroutine and a
// buffer in a root process.
const maxConns = 16

// replyTimeout bounds writing one response to a client that does not read.
const replyTimeout = 10 * time.Second

// Server serves Ops on a Unix socket to one uid.
type Server struct {
	ops    *Ops
	log    *slog.Logger
	socket string
	ln     *net.UnixListener

	wg    sync.WaitGroup
	slots chan struct{} // one per open connection, at most maxConns
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// Listen prepares the socket: its directory must be root-owned and not writable by others
// (so nobody can swap the socket), the socket is owned by the owner uid with mode 0600, so
// the kernel already stops every other non-root user at connect(); the SO_PEERCRED check in
// Serve is the second lock on the same door.
func Listen(socket string, ops *Ops, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !filepath.IsAbs(socket) {
		return nil, fmt.Errorf("helper socket %q must be an absolute path", socket)
	}
	dir := filepath.Dir(socket)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && (st.Uid != 0 || fi.Mode().Perm()&0o022 != 0) {
		return nil, fmt.Errorf("socket directory %s must be owned by root and writable only by root (it is uid %d, mode %v): fix it with `chown root: %s && chmod 755 %s`",
			dir, st.Uid, fi.Mode().Perm(), dir, dir)
	}
	if fi, err := os.Lstat(socket); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket: move it away and retry", socket)
		}
		if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("another banger helper is already serving %s: stop it first (systemctl stop banger-helper)", socket)
		}
		if err := os.Remove(socket); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", socket, err)
		}
	}
	// Created 0600 by umask from the start, so there is no window where others could connect.
	old := unix.Umask(0o177)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socket, err)
	}
	owner := ops.Config().OwnerUID
	if err := os.Chown(socket, owner, -1); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("give socket %s to uid %d: %w", socket, owner, err)
	}
	return &Server{ops: ops, log: log, socket: socket, ln: ln, slots: make(chan struct{}, maxConns), conns: map[net.Conn]struct{}{}}, nil
}

// Serve accepts connections until ctx ends, then closes the listener and open connections,
// waits for in-flight requests and removes the socket.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { _ = s.ln.Close() })
	defer stop()
	var err error
	for {
		c, aerr := s.ln.AcceptUnix()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("accept on %s: %w", s.socket, aerr)
			}
			break
		}
		select {
		case s.slots <- struct{}{}:
		default:
			// Answered and closed right here: the reply fits the empty socket buffer, so this
			// cannot stall the accept loop.
			s.log.Warn("refused connection", "reason", "too many connections", "limit", maxConns)
			_ = s.reply(c, Response{Code: CodeRefused, Error: fmt.Sprintf("too many connections (the helper serves at most %d at a time)", maxConns),
				Hint: "close idle connections; the banger daemon needs only a few"})
			_ = c.Close()
			continue
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			<-s.slots
		}()
	}
	_ = s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	_ = os.Remove(s.socket)
	return err
}

// PeerCred returns the credentials of the process at the other end of c.
func PeerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// CheckPeer allows only the owner uid. Root is not special: the daemon never runs as root,
// so a root client is a mistake (or someone poking), and refusing it keeps the rule simple.
func CheckPeer(c *net.UnixConn, owner int) (*unix.Ucred, error) {
	cred, err := PeerCred(c)
	if err != nil {
		return nil, fmt.Errorf("read peer credentials: %w", err)
	}
	if int(cred.Uid) != owner {
		return cred, fmt.Errorf("uid %d may not use the banger helper: it serves only uid %d (the banger daemon's user); set --owner-uid to change that", cred.Uid, owner)
	}
	return cred, nil
}

func (s *Server) reply(c net.Conn, r Response) error {
	b, _ := json.Marshal(r)
	_ = c.SetWriteDeadline(time.Now().Add(replyTimeout))
	_, err := c.Write(append(b, '\n'))
	return err
}

func (s *Server) handle(c *net.UnixConn) {
	defer c.Close()
	cred, err := CheckPeer(c, s.ops.Config().OwnerUID)
	if err != nil {
		attrs := []any{"err", err}
		if cred != nil {
			attrs = append(attrs, "uid", cred.Uid, "pid", cred.Pid)
		}
		s.log.Warn("refused connection", attrs...)
		_ = s.reply(c, Response{Code: CodeRefused, Error: err.Error(), Hint: "run the banger daemon as the helper's owner uid"})
		return
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 512), MaxRequestBytes)
	for {
		_ = c.SetReadDeadline(time.Now().Add(idleTimeout))
		if !sc.Scan() {
			if errors.Is(sc.Err(), bufio.ErrTooLong) {
				s.log.Warn("refused request", "uid", cred.Uid, "pid", cred.Pid, "reason", "too long")
				_ = s.reply(c, Response{Code: CodeRefused, Error: fmt.Sprintf("request longer than %d bytes", MaxRequestBytes), Hint: "send one small JSON object per line"})
			}
			return
		}
		req, err := decodeRequest(sc.Bytes())
		if err != nil {
			s.log.Warn("refused request", "uid", cred.Uid, "pid", cred.Pid, "reason", err)
			_ = s.reply(c, Response{Code: CodeRefused, Error: err.Error(), Hint: "send one JSON object per line: {\"op\": \"list\"}"})
			return
		}
		start := time.Now()
		resp := s.ops.Do(req)
		switch {
		case resp.Code == CodeRefused:
			s.log.Warn("refused request", "uid", cred.Uid, "pid", cred.Pid, "op", req.Op, "name", req.Name, "ip", req.IP, "subnet", req.Subnet, "reason", resp.Error)
		case !resp.OK:
			s.log.Error("request failed", "op", req.Op, "name", req.Name, "err", resp.Error)
		case req.Op != OpList && req.Op != OpStatus:
			s.log.Info("done", "op", req.Op, "name", req.Name, "ip", req.IP, "took", time.Since(start).Round(time.Microsecond))
		}
		if err := s.reply(c, resp); err != nil {
			return
		}
	}
}

func decodeRequest(line []byte) (Request, error) {
	var req Request
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, fmt.Errorf("malformed request: %v", err)
	}
	if dec.More() {
		return req, errors.New("malformed request: trailing data after the JSON object")
	}
	return req, nil
}
