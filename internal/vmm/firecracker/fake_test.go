package firecracker

// A fake `firecracker` for the driver tests: the test binary re-executed with
// BANGER_FAKE_FIRECRACKER set. It is a real child process with a real API socket, so spawn,
// kill, reaping and socket cleanup are exercised for real; only the VM is pretend. It
// records every API request (one JSON line each) to $BANGER_FAKE_FC_LOG, answers
// fault_message errors where told to, "boots" on InstanceStart (console lines on stdout,
// an agent behind the hybrid vsock socket) and exits 0 on agent power off or Ctrl-Alt-Del,
// like Firecracker when its guest shuts down.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

const fakeEnv = "BANGER_FAKE_FIRECRACKER" // its value: comma-separated modes

// fakeConsoleCap is the console cap the driver tests run with.
const fakeConsoleCap = 256 << 10

func TestMain(m *testing.M) {
	if modes, ok := os.LookupEnv(fakeEnv); ok {
		os.Exit(fakeFirecracker(os.Args[1:], modes))
	}
	os.Exit(m.Run())
}

type recorded struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
}

func fakeFirecracker(args []string, modes string) int {
	mode := map[string]string{}
	for _, m := range strings.Split(modes, ",") {
		k, v, _ := strings.Cut(m, "=")
		mode[k] = v
	}
	behaviour := vmmtest.ParseModes(modes)
	if len(args) == 1 && args[0] == "--version" {
		v := mode["version"]
		if v == "" {
			v = "1.13.1"
		}
		fmt.Printf("Firecracker v%s\n\nSupported snapshot data format versions: v5.0.0\n", v)
		return 0
	}
	var sock string
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--api-sock" {
			sock = args[i+1]
		}
	}
	fmt.Println("fake firecracker: starting")
	if _, ok := mode["exit-early"]; ok {
		fmt.Fprintln(os.Stderr, "fake firecracker: Error: bad configuration, giving up")
		return 1
	}
	if _, ok := mode["no-socket"]; ok || sock == "" {
		time.Sleep(time.Hour)
		return 1
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Println("fake firecracker:", err)
		return 1
	}
	var logMu sync.Mutex
	logf, _ := os.OpenFile(os.Getenv("BANGER_FAKE_FC_LOG"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	exit := make(chan int, 1)
	var booted sync.Once
	var vsockPath string
	var st fakeState
	logLine := func(rec recorded) {
		if logf != nil {
			logMu.Lock()
			b, _ := json.Marshal(rec)
			logf.Write(append(b, '\n'))
			logMu.Unlock()
		}
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec := recorded{Method: r.Method, Path: r.URL.Path}
		if len(body) > 0 {
			rec.Body = body
		}
		logLine(rec)
		if v, ok := mode["fail"]; ok && v == r.Method+" "+r.URL.Path {
			fakeFault(w, fmt.Errorf("cannot %s %s: No such file or directory (os error 2)", r.Method, r.URL.Path))
			return
		}
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/":
			json.NewEncoder(w).Encode(InstanceInfo{AppName: "Firecracker", ID: "anonymous-instance", State: "Running", VMMVersion: "1.10.1"})
			return
		case r.Method == http.MethodPut && r.URL.Path == "/vsock":
			var v Vsock
			json.Unmarshal(body, &v)
			vsockPath = v.UDSPath
			st.Vsock = v.UDSPath
		case r.Method == http.MethodPut && r.URL.Path == "/machine-config":
			var mc MachineConfig
			json.Unmarshal(body, &mc)
			st.MemMiB = mc.MemSizeMiB
		case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/drives/"):
			var d Drive
			json.Unmarshal(body, &d)
			st.Drives = append(st.Drives, d.PathOnHost)
		case r.Method == http.MethodPut && r.URL.Path == "/snapshot/create":
			// Like Firecracker: the paths as given, relative ones in the working directory.
			var p SnapshotCreateParams
			json.Unmarshal(body, &p)
			b, _ := json.Marshal(st)
			if err := os.WriteFile(p.SnapshotPath, b, 0o600); err != nil {
				fakeFault(w, err)
				return
			}
			if err := os.WriteFile(p.MemFilePath, nil, 0o600); err != nil || os.Truncate(p.MemFilePath, int64(st.MemMiB)<<20) != nil {
				fakeFault(w, fmt.Errorf("memory file: %v", err))
				return
			}
		case r.Method == http.MethodPut && r.URL.Path == "/snapshot/load":
			var p SnapshotLoadParams
			json.Unmarshal(body, &p)
			b, err := os.ReadFile(p.SnapshotPath)
			if err == nil {
				err = json.Unmarshal(b, &st)
			}
			if err == nil && p.MemBackend != nil {
				_, err = os.Stat(p.MemBackend.BackendPath)
			}
			if err != nil {
				fakeFault(w, err)
				return
			}
			// Reopen the drives at their recorded paths, as Firecracker does, and say
			// which files they turned out to be.
			var opened []string
			for _, d := range st.Drives {
				real, err := filepath.EvalSymlinks(d)
				if err != nil {
					fakeFault(w, err)
					return
				}
				opened = append(opened, real)
			}
			b, _ = json.Marshal(opened)
			logLine(recorded{Method: "FAKE", Path: "opened drives", Body: b})
			vsockPath = st.Vsock
			if p.VsockOverride != nil {
				vsockPath = p.VsockOverride.UDSPath
			}
			booted.Do(func() {
				fmt.Println("[    5.000000] restored from a snapshot")
				go fakeAgent(vsockPath, mode, exit)
			})
		case r.Method == http.MethodPut && r.URL.Path == "/actions":
			var a InstanceActionInfo
			json.Unmarshal(body, &a)
			switch a.ActionType {
			case ActionInstanceStart:
				booted.Do(func() {
					fmt.Println("[    0.000000] Linux version 6.1.0-fake")
					fmt.Println("[    0.100000] banger-init: root on /dev/vda")
					vmmtest.PrintBoot(os.Stdout, behaviour)
					go fakeAgent(vsockPath, mode, exit)
				})
			case ActionSendCtrlAltDel:
				fmt.Println(vmmtest.MarkButton)
				if !behaviour.IgnoreButton {
					fmt.Println("[   10.000000] reboot: Restarting system")
					fmt.Println(vmmtest.MarkPoweredOff)
					go func() { time.Sleep(20 * time.Millisecond); exit <- 0 }()
				}
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})
	go http.Serve(ln, mux)
	return <-exit
}

// fakeState is the fake's "snapshot": what a restore must find again.
type fakeState struct {
	MemMiB int      `json:"mem_mib"`
	Drives []string `json:"drives"`
	Vsock  string   `json:"vsock"`
}

func fakeFault(w http.ResponseWriter, err error) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	json.NewEncoder(w).Encode(map[string]string{"fault_message": "fake: " + err.Error()})
}

// fakeAgent serves a minimal banger-agent behind Firecracker's hybrid vsock handshake.
func fakeAgent(udsPath string, mode map[string]string, exit chan<- int) {
	ln, err := net.Listen("unix", udsPath)
	if err != nil {
		fmt.Println("fake firecracker: vsock:", err)
		return
	}
	conns := make(chan net.Conn)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				line, err := bufio.NewReader(io.LimitReader(c, 64)).ReadString('\n')
				var port uint32
				if err == nil {
					fmt.Sscanf(line, "CONNECT %d\n", &port)
				}
				if port != agent.DefaultVsockPort {
					c.Close()
					return
				}
				fmt.Fprintf(c, "OK 1073741824\n")
				conns <- c
			}()
		}
	}()
	mux := http.NewServeMux()
	mux.HandleFunc(agent.PathHealth, func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(agent.Health{Status: "ok", AgentVersion: "fake"})
	})
	mux.HandleFunc(agent.PathPower, func(w http.ResponseWriter, r *http.Request) {
		var req agent.PowerRequest
		json.NewDecoder(r.Body).Decode(&req)
		w.WriteHeader(http.StatusAccepted)
		json.NewEncoder(w).Encode(agent.PowerResponse{Action: req.Action, Method: "fake"})
		fmt.Println(vmmtest.MarkAgentPower)
		if _, ok := mode["ignore-power"]; !ok {
			fmt.Println("[   10.000000] reboot: Power down")
			fmt.Println(vmmtest.MarkPoweredOff)
			go func() { time.Sleep(20 * time.Millisecond); exit <- 0 }()
		}
	})
	http.Serve(chanListener(conns), mux)
}

// chanListener is a net.Listener fed with handshaken connections.
type chanListener chan net.Conn

func (l chanListener) Accept() (net.Conn, error) { return <-l, nil }
func (l chanListener) Close() error              { return nil }
func (l chanListener) Addr() net.Addr            { return &net.UnixAddr{Net: "unix", Name: "vsock"} }

// TestSupervisor runs the table every driver passes (internal/vmm/vmmtest) on the fake.
func TestSupervisor(t *testing.T) {
	vmmtest.Run(t, vmmtest.Harness{
		Driver:     New(Config{Binary: os.Args[0], ConsoleCap: fakeConsoleCap}),
		ConsoleCap: fakeConsoleCap,
		Start: func(t *testing.T, b vmmtest.Behaviour) vmm.Machine {
			f := newFixture(t, b.Modes())
			m, err := f.drv.Start(ctxT(t), f.spec)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				m.Kill()
				m.Close()
				assertNoLeftovers(t, f, m.PID())
			})
			return m
		},
	})
}
