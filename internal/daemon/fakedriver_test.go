package daemon

// A fake VMM driver for the lifecycle's unit tests: no VMM process, but a real agent
// endpoint (HTTP over a Unix socket in the VM's run dir, the way the real drivers reach
// the guest agent), so create/start/stop/remove/reconcile run the daemon's real code.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/vmm"
)

// fakeDriver records every machine it started; a machine is "running" until killed,
// stopped or made to exit.
type fakeDriver struct {
	mu       sync.Mutex
	nextPID  int
	machines map[int]*fakeMachine
	specs    []vmm.MachineSpec

	// startErr, if set, fails Start.
	startErr error
	// exitAtBoot makes a started machine's VMM exit at once (a crash during boot).
	exitAtBoot bool
	// ignoreStop makes the guest ignore a graceful stop (Stop times out).
	ignoreStop bool
	// hasSSHD makes the image have an sshd (that never answers: the agent forwards nothing).
	hasSSHD bool
	// restored lists the state files Restore loaded.
	restored []string
	// separateMemory makes SaveState write the RAM apart from the state, as Firecracker
	// does; Restore then needs that file.
	separateMemory bool
	// upgrades makes the agent switch exec and forward requests to their streams: an exec
	// exits 0 at once, a forward echoes what it gets.
	upgrades bool
	// listeners are the TCP ports the guests listen on (/v1/listeners), under mu.
	listeners []int
}

// fakeMemoryMagic is the content of a fake RAM file.
const fakeMemoryMagic = "fake-vm-memory\n"

// fakeStateMagic starts every state file the fake saves: Restore refuses anything else.
const fakeStateMagic = "fake-vm-state\n"

// CanRestore keeps templates out of the fake's tests (a template needs a real snapshot);
// Restore itself works, for the saved states of paused VMs.
func (f *fakeDriver) CanRestore(context.Context) error {
	return errors.New("the fake driver builds no templates")
}

// Restore starts a machine from a state file SaveState wrote.
func (f *fakeDriver) Restore(ctx context.Context, spec vmm.MachineSpec, snap vmm.Snapshot) (vmm.Machine, error) {
	b, err := os.ReadFile(snap.StateFile)
	if err != nil {
		return nil, fmt.Errorf("fake restore: %w", err)
	}
	if !strings.HasPrefix(string(b), fakeStateMagic) {
		return nil, errors.New("fake restore: not a fake state file")
	}
	f.mu.Lock()
	separate := f.separateMemory
	f.mu.Unlock()
	if separate {
		if mem, err := os.ReadFile(snap.MemoryFile); err != nil || string(mem) != fakeMemoryMagic {
			return nil, fmt.Errorf("fake restore: memory file %q: %v", snap.MemoryFile, err)
		}
	} else if snap.MemoryFile != "" {
		return nil, errors.New("fake restore: a memory file for a state that holds the RAM")
	}
	m, err := f.Start(ctx, spec)
	if err == nil {
		f.mu.Lock()
		f.restored = append(f.restored, snap.StateFile)
		f.mu.Unlock()
		fm := m.(*fakeMachine)
		fm.mu.Lock()
		fm.frozen = strings.Contains(string(b), "\nfrozen true\n")
		fm.mu.Unlock()
	}
	return m, err
}

func newFakeDriver() *fakeDriver {
	return &fakeDriver{nextPID: 1 << 22, machines: map[int]*fakeMachine{}}
}

func (f *fakeDriver) Name() string { return "qemu" }

func (f *fakeDriver) Start(ctx context.Context, spec vmm.MachineSpec) (vmm.Machine, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.specs = append(f.specs, spec)
	if f.startErr != nil {
		return nil, f.startErr
	}
	f.nextPID++
	m, err := newFakeMachine(f, f.nextPID, spec.RunDir)
	if err != nil {
		return nil, err
	}
	f.machines[m.pid] = m
	if f.exitAtBoot {
		m.exit(vmm.ExitInfo{Reason: "killed by signal 11", At: time.Now()})
	}
	return m, nil
}

func (f *fakeDriver) Reattach(ctx context.Context, st vmm.State) (vmm.Machine, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.machines[st.PID]
	if m == nil || m.exited() || st.StartTime != m.startTime {
		return nil, vmm.ErrGone
	}
	// A new daemon gets a new connection to the same VM.
	return m.reattached(), nil
}

// running lists the machines whose VMM has not exited.
func (f *fakeDriver) running() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var pids []int
	for pid, m := range f.machines {
		if !m.exited() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// crash ends every running machine as a crash would.
func (f *fakeDriver) crash() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.machines {
		m.exit(vmm.ExitInfo{Reason: "killed by signal 9", At: time.Now()})
	}
}

// fakeMachine is one "VM": an agent socket and a done channel.
type fakeMachine struct {
	drv       *fakeDriver
	pid       int
	startTime uint64
	runDir    string
	sock      string
	console   string

	ln  net.Listener
	srv *http.Server

	mu      sync.Mutex
	paused  bool     // stopped by SaveState until Continue
	frozen  bool     // the guest's filesystems, by /v1/freeze until /v1/thaw (saved with the state)
	resized []string // drive resizes told to the VMM: "id=bytes"
	done    chan struct{}
	info    vmm.ExitInfo
	client  *agentclient.Client
}

func newFakeMachine(f *fakeDriver, pid int, runDir string) (*fakeMachine, error) {
	m := &fakeMachine{drv: f, pid: pid, startTime: uint64(pid) * 7, runDir: runDir,
		sock: filepath.Join(runDir, "agent.sock"), console: filepath.Join(runDir, "console.log"), done: make(chan struct{})}
	if err := os.WriteFile(m.console, []byte("fake boot\nbanger-init: ready\n"), 0o600); err != nil {
		return nil, err
	}
	_ = os.Remove(m.sock)
	ln, err := net.Listen("unix", m.sock)
	if err != nil {
		return nil, err
	}
	m.ln = ln
	m.srv = &http.Server{Handler: http.HandlerFunc(m.serveAgent), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = m.srv.Serve(ln) }()
	m.client = m.newClient()
	return m, nil
}

func (m *fakeMachine) newClient() *agentclient.Client {
	return agentclient.New(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", m.sock)
	}, nil)
}

// serveAgent answers like banger-agent in an image without sshd: healthy, and every
// file missing; power off ends the VM cleanly unless the guest ignores it.
func (m *fakeMachine) serveAgent(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case agent.PathHealth:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(agent.Health{Status: "ok", AgentVersion: "fake", Hostname: "fake", Time: time.Now()})
	case agent.PathFiles:
		if m.drv.hasSSHD && r.URL.Query().Get("path") == sshdPath {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.Error(w, `{"code":"not_found","message":"no such file"}`, http.StatusNotFound)
	case agent.PathIdentity:
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"machine_id":"fake","steps":[]}`))
	case agent.PathListeners:
		m.drv.mu.Lock()
		l := agent.ListenersResponse{TCP: append([]int{}, m.drv.listeners...)}
		m.drv.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(l)
	case agent.PathSync:
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"duration_ms":0.1}`))
	case agent.PathFreeze:
		m.mu.Lock()
		m.frozen = true
		m.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"frozen":["/root"],"duration_ms":0.1}`))
	case agent.PathResizeFS:
		var req agent.ResizeFSRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Path != "/root" {
			http.Error(w, `{"error":{"code":"bad_request","message":"bad resize"}}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(agent.ResizeFSResponse{Device: "/dev/vdc", DeviceBytes: req.SizeBytes, AfterBytes: req.SizeBytes})
	case agent.PathThaw:
		m.mu.Lock()
		was := m.frozen
		m.frozen = false
		m.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(map[bool]string{true: `{"thawed":["/root"]}`, false: `{"thawed":[]}`}[was]))
	case agent.PathClock:
		var req agent.ClockRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.UnixNano == 0 {
			http.Error(w, `{"code":"bad_request","message":"no clock"}`, http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"step_ms":1}`))
	case agent.PathPower:
		if !m.drv.ignoreStop {
			go m.exit(vmm.ExitInfo{Reason: "guest powered off", Clean: true, At: time.Now()})
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{}`))
	case agent.PathExec, agent.PathForward:
		if m.drv.upgrades {
			m.serveUpgrade(w, r)
			return
		}
		http.Error(w, `{"code":"not_found","message":"fake agent"}`, http.StatusNotFound)
	default:
		// No port forwarding: an image whose sshd never answers.
		http.Error(w, `{"code":"not_found","message":"fake agent"}`, http.StatusNotFound)
	}
}

// serveUpgrade answers an exec with an exit frame (code 0) and echoes a forward's bytes.
func (m *fakeMachine) serveUpgrade(w http.ResponseWriter, r *http.Request) {
	proto := agent.ExecUpgradeProtocol
	if r.URL.Path == agent.PathForward {
		proto = agent.ForwardUpgradeProtocol
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + proto + "\r\n\r\n")
	_ = brw.Flush()
	if proto == agent.ForwardUpgradeProtocol {
		_, _ = io.Copy(conn, brw.Reader)
		return
	}
	_ = agent.NewFrameWriter(conn).WriteFrame(agent.FrameExit, []byte(`{"code":0}`))
}

func (m *fakeMachine) reattached() *fakeMachine {
	// The same VM, seen through a new connection: it shares the done channel and socket.
	return m
}

func (m *fakeMachine) exit(info vmm.ExitInfo) {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.done:
		return
	default:
	}
	m.info = info
	_ = m.srv.Close()
	_ = os.Remove(m.sock)
	close(m.done)
}

func (m *fakeMachine) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

func (m *fakeMachine) State() vmm.State {
	return vmm.State{PID: m.pid, StartTime: m.startTime, RunDir: m.runDir, ConsoleLog: m.console,
		AgentSocket: m.sock, AgentTransport: "serial", Accel: "tcg"}
}
func (m *fakeMachine) PID() int                   { return m.pid }
func (m *fakeMachine) Agent() *agentclient.Client { return m.client }
func (m *fakeMachine) Done() <-chan struct{}      { return m.done }
func (m *fakeMachine) Exit() vmm.ExitInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.info
}

func (m *fakeMachine) Stop(ctx context.Context, timeout time.Duration) (vmm.ExitInfo, error) {
	if _, err := m.client.Power(ctx, "poweroff"); err != nil && !m.exited() {
		m.Kill()
		return m.Exit(), fmt.Errorf("power off: %w", err)
	}
	select {
	case <-m.done:
		return m.Exit(), nil
	case <-time.After(timeout):
		m.exit(vmm.ExitInfo{Reason: "killed after the stop timeout", At: time.Now()})
		return m.Exit(), errors.New("the guest did not power off in time")
	}
}

func (m *fakeMachine) Kill() error {
	m.exit(vmm.ExitInfo{Reason: "killed by signal 9", At: time.Now()})
	return nil
}

func (m *fakeMachine) Close() error { return nil }

// SaveState writes a fake state and leaves the guest stopped, as QEMU does.
func (m *fakeMachine) SaveState(ctx context.Context, path string) (vmm.Snapshot, error) {
	m.mu.Lock()
	m.paused = true
	m.mu.Unlock()
	snap := vmm.Snapshot{Driver: "qemu", StateFile: path}
	m.drv.mu.Lock()
	separate := m.drv.separateMemory
	m.drv.mu.Unlock()
	if separate {
		snap.MemoryFile = vmm.SavedMemoryPath(path)
		if err := os.WriteFile(snap.MemoryFile, []byte(fakeMemoryMagic), 0o600); err != nil {
			_ = m.Continue(ctx)
			return vmm.Snapshot{}, err
		}
	}
	m.mu.Lock()
	frozen := m.frozen
	m.mu.Unlock()
	if err := os.WriteFile(path, []byte(fakeStateMagic+fmt.Sprintf("pid %d\nfrozen %v\n", m.pid, frozen)), 0o600); err != nil {
		_ = m.Continue(ctx)
		return vmm.Snapshot{}, err
	}
	return snap, nil
}

func (m *fakeMachine) Continue(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.paused = false
	return nil
}

// ResizeDrive records what the VMM was told.
func (m *fakeMachine) ResizeDrive(_ context.Context, id string, bytes int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.resized = append(m.resized, fmt.Sprintf("%s=%d", id, bytes))
	return nil
}

func (m *fakeMachine) isFrozen() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.frozen
}

func (m *fakeMachine) isPaused() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.paused
}
