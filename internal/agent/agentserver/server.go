// Package agentserver is banger-agent, the guest side of the host<->guest channel: an HTTP
// API (health, exec with a framed upgraded stream, file copy, power) served over AF_VSOCK or
// over a virtio-serial port multiplexed with yamux. It runs as root inside the guest and
// never depends on guest networking.
//
// This package starts processes (exec) and may only be linked into the guest agent binary;
// the host side is package agentclient.
package agentserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/agent"
)

// Config configures a Server. The zero value is usable.
type Config struct {
	// Version is reported by /v1/healthz.
	Version string
	// Logger receives the agent's logs (default: text to stderr).
	Logger *slog.Logger
	// BootStagesPath is passed through by /v1/healthz (default agent.BootStagesPath).
	BootStagesPath string
	// ProcDir is where /proc is mounted (default "/proc"); tests point it elsewhere.
	ProcDir string
	// RunitRoot is where runit's stop flags are looked for (default "/"); tests point it
	// elsewhere.
	RunitRoot string
	// PowerHook, when set, replaces the real power action (signal to PID 1 or reboot(2)):
	// it is called after the 202 answer with the action and the method the agent chose.
	PowerHook func(action, method string)
	// IdentityRoot is the root filesystem /v1/identity writes the guest's identity files
	// into (default "/").
	IdentityRoot string
	// PowerDelay is how long the agent waits after answering /v1/power before acting
	// (default 300ms), so the answer reaches the host first.
	PowerDelay time.Duration
}

// Server is the agent's HTTP API; serve it on any number of listeners.
type Server struct {
	cfg   Config
	log   *slog.Logger
	start time.Time
	http  *http.Server

	mu       sync.Mutex
	isClosed bool
	closing  chan struct{} // closed by Close: running exec sessions kill their process
	execs    sync.WaitGroup

	freezeMu sync.Mutex
	freeze   freezeState

	mountMu sync.Mutex
	mounts  map[string]*hostMount
}

// New returns a Server.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if cfg.IdentityRoot == "" {
		cfg.IdentityRoot = "/"
	}
	if cfg.BootStagesPath == "" {
		cfg.BootStagesPath = agent.BootStagesPath
	}
	if cfg.ProcDir == "" {
		cfg.ProcDir = "/proc"
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.PowerDelay == 0 {
		cfg.PowerDelay = 300 * time.Millisecond
	}
	s := &Server{cfg: cfg, log: cfg.Logger, start: time.Now(), closing: make(chan struct{})}
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug),
	}
	return s
}

// Serve answers HTTP on ln until ln fails or the server is closed.
func (s *Server) Serve(ln net.Listener) error {
	err := s.http.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops all listeners, closes idle connections and kills running exec processes.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.isClosed {
		s.isClosed = true
		close(s.closing)
	}
	s.mu.Unlock()
	err := s.http.Close()
	s.execs.Wait()
	return err
}

// trackExec registers a running exec session; false once the server is closed.
func (s *Server) trackExec() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.isClosed {
		return false
	}
	s.execs.Add(1)
	return true
}

// ServeHTTP routes the API; unknown paths and methods get typed errors.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route := func(allowed string, h http.HandlerFunc) {
		if r.Method != allowed && !(allowed == http.MethodGet && r.Method == http.MethodHead) {
			w.Header().Set("Allow", allowed)
			writeError(w, agent.CodeMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed (use %s)", r.Method, r.URL.Path, allowed))
			return
		}
		h(w, r)
	}
	switch r.URL.Path {
	case agent.PathHealth:
		route(http.MethodGet, s.handleHealth)
	case agent.PathExec:
		route(http.MethodPost, s.handleExec)
	case agent.PathFiles:
		switch r.Method {
		case http.MethodGet, http.MethodHead:
			s.handleReadFile(w, r)
		case http.MethodPut:
			s.handleWriteFile(w, r)
		default:
			w.Header().Set("Allow", "GET, PUT")
			writeError(w, agent.CodeMethodNotAllowed, fmt.Sprintf("%s %s: method not allowed (use GET or PUT)", r.Method, r.URL.Path))
		}
	case agent.PathPower:
		route(http.MethodPost, s.handlePower)
	case agent.PathForward:
		route(http.MethodPost, s.handleForward)
	case agent.PathListeners:
		route(http.MethodGet, s.handleListeners)
	case agent.PathIdentity:
		route(http.MethodPost, s.handleIdentity)
	case agent.PathSync:
		route(http.MethodPost, s.handleSync)
	case agent.PathClock:
		route(http.MethodPost, s.handleClock)
	case agent.PathFreeze:
		route(http.MethodPost, s.handleFreeze)
	case agent.PathThaw:
		route(http.MethodPost, s.handleThaw)
	case agent.PathResizeFS:
		route(http.MethodPost, s.handleResizeFS)
	case agent.PathMount:
		route(http.MethodPost, s.handleMount)
	default:
		writeError(w, agent.CodeNotFound, fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path))
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code, msg string) {
	writeJSON(w, agent.StatusForCode(code), agent.ErrorBody{Error: agent.ErrorDetail{Code: code, Message: msg}})
}

// maxJSONBody bounds JSON request bodies.
const maxJSONBody = 1 << 20

// decodeJSON decodes a strict JSON body, answering a typed error itself when it fails.
func decodeJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxJSONBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		msg := "malformed JSON body: " + err.Error()
		if errors.Is(err, io.EOF) {
			msg = "empty body: a JSON object is required"
		}
		writeError(w, agent.CodeBadRequest, msg)
		return false
	}
	if dec.More() {
		writeError(w, agent.CodeBadRequest, "malformed JSON body: trailing data after the object")
		return false
	}
	return true
}

// sleepCtx sleeps d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
