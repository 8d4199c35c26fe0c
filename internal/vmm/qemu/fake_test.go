package qemu

// A fake qemu-system-x86_64 for the shared supervisor table: the test binary re-executed
// with BANGER_FAKE_QEMU set. It is a real child process that takes the driver's real
// command line and serves what QEMU would on it: QMP on the socket it is passed (greeting, capabilities,
// query-status, system_powerdown with a SHUTDOWN event), the serial console into the
// -chardev pipe FIFO, and a real banger agent (agentserver) on the virtio-serial chardev
// socket. Only the guest is pretend.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent/agentserver"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

const fakeQEMUEnv = "BANGER_FAKE_QEMU" // its value: vmmtest.Behaviour.Modes()

// fakeQMPDelayEnv makes the fake QEMU accept QMP only after that long (a Go duration), as
// QEMU does once its main loop runs.
const fakeQMPDelayEnv = "BANGER_FAKE_QEMU_QMP_DELAY"

// fakeConsoleCap is the console cap the supervisor table runs with.
const fakeConsoleCap = 256 << 10

// optValue returns key's value in a QEMU option string ("a,key=v,,w,b" -> "v,w").
func optValue(s, key string) string {
	s = strings.ReplaceAll(s, ",,", "\x00")
	for _, kv := range strings.Split(s, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return strings.ReplaceAll(v, "\x00", ",")
		}
	}
	return ""
}

func fakeQEMU(args []string, modes string) int {
	b := vmmtest.ParseModes(modes)
	var qmpPath, qmpFD, consolePath, agentPath string
	for i := 0; i+1 < len(args); i++ {
		v := args[i+1]
		switch args[i] {
		case "-qmp":
			qmpPath = optValue(strings.TrimPrefix(v, "unix:"), "path")
			if qmpPath == "" {
				qmpPath, _, _ = strings.Cut(strings.TrimPrefix(v, "unix:"), ",")
			}
		case "-chardev":
			switch optValue(v, "id") {
			case "con":
				consolePath = optValue(v, "path")
			case "agent":
				agentPath = optValue(v, "path")
			case "qmp":
				qmpFD = optValue(v, "fd")
			}
		}
	}
	// Like QEMU's pipe chardev: the FIFO opened read-write.
	con, err := os.OpenFile(consolePath, os.O_RDWR|os.O_CREATE, 0o600) // a FIFO here; QEMU would also create a file
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu: console:", err)
		return 1
	}
	var conMu sync.Mutex
	say := func(s string) { conMu.Lock(); fmt.Fprintln(con, s); conMu.Unlock() }
	// Like QEMU: the QMP socket is the listening one the driver passed (fd=N), or one
	// made at -qmp's path.
	var qln net.Listener
	if qmpFD != "" {
		var fd int
		fmt.Sscanf(qmpFD, "%d", &fd)
		f := os.NewFile(uintptr(fd), "qmp")
		qln, err = net.FileListener(f)
		f.Close()
	} else {
		qln, err = net.Listen("unix", qmpPath)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 1
	}
	exit := make(chan int, 1)
	var qmpMu sync.Mutex
	var qmpConns []net.Conn
	shutdown := func() {
		say(vmmtest.MarkPoweredOff)
		qmpMu.Lock()
		for _, c := range qmpConns {
			c.Write([]byte(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}` + "\r\n"))
		}
		qmpMu.Unlock()
		go func() { time.Sleep(20 * time.Millisecond); exit <- 0 }()
	}
	go func() {
		if d, err := time.ParseDuration(os.Getenv(fakeQMPDelayEnv)); err == nil {
			time.Sleep(d)
		}
		for {
			c, err := qln.Accept()
			if err != nil {
				return
			}
			qmpMu.Lock()
			qmpConns = append(qmpConns, c)
			qmpMu.Unlock()
			go fakeQMPSession(c, &qmpMu, func() {
				say(vmmtest.MarkButton)
				if !b.IgnoreButton {
					shutdown()
				}
			})
		}
	}()
	conMu.Lock()
	vmmtest.PrintBoot(con, b)
	conMu.Unlock()

	aln, err := net.Listen("unix", agentPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 1
	}
	srv := agentserver.New(agentserver.Config{
		Version: "fake", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), PowerDelay: time.Millisecond,
		BootStagesPath: filepath.Join(os.TempDir(), "no-such-boot-stages"),
		PowerHook: func(action, method string) {
			say(vmmtest.MarkAgentPower)
			if !b.IgnoreAgent {
				shutdown()
			}
		},
	})
	go srv.ServeSerial(context.Background(), func() (io.ReadWriteCloser, error) { return aln.Accept() })
	return <-exit
}

// fakeQMPSession is the fake QEMU's QMP: capabilities, query-status, and system_powerdown,
// which calls powerdown.
func fakeQMPSession(c net.Conn, wmu *sync.Mutex, powerdown func()) {
	write := func(s string) { wmu.Lock(); c.Write([]byte(s + "\r\n")); wmu.Unlock() }
	serveQMPConn(c, write, map[string]func(id string) bool{
		"qmp_capabilities": func(id string) bool { write(`{"return": {}` + id + `}`); return true },
		"query-status": func(id string) bool {
			write(`{"return": {"status": "running", "singlestep": false, "running": true}` + id + `}`)
			return true
		},
		"system_powerdown": func(id string) bool {
			write(`{"return": {}` + id + `}`)
			powerdown()
			return true
		},
	})
}

// serveQMPConn serves QMP on c, writing lines through write: the greeting, then each
// command through its entry in cmds, which gets the reply's id suffix (`, "id": …` or "")
// and returns false to hang up. A command not in cmds gets QEMU's CommandNotFound error.
func serveQMPConn(c net.Conn, write func(string), cmds map[string]func(id string) bool) {
	write(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}`)
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		var cmd struct {
			Execute string          `json:"execute"`
			ID      json.RawMessage `json:"id"`
		}
		json.Unmarshal(line, &cmd)
		id := ""
		if cmd.ID != nil {
			id = `, "id": ` + string(cmd.ID)
		}
		reply, ok := cmds[cmd.Execute]
		if !ok {
			write(`{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd.Execute + ` has not been found"}` + id + `}`)
			continue
		}
		if !reply(id) {
			return
		}
	}
}

// fakeDriver is a driver whose QEMU is the fake (this test binary).
func fakeDriver() *Driver {
	return New(Config{Binary: os.Args[0], AgentTransport: TransportSerial, TSCKHz: 1000000, Sandbox: SandboxOff, ConsoleCap: fakeConsoleCap})
}

// startFake boots a fake VM acting as b, with QMP answering after qmpDelay, and makes sure
// it is gone (nothing left in its run directory) when the test ends.
func startFake(t *testing.T, b vmmtest.Behaviour, qmpDelay time.Duration) (vmm.Machine, string) {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{}
	for _, n := range []string{"vmlinuz", "initrd", "root.ext4", "layer.ext4", "work.ext4"} {
		files[n] = filepath.Join(dir, n)
		if err := os.WriteFile(files[n], []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv(fakeQEMUEnv, b.Modes())
	t.Setenv(fakeQMPDelayEnv, qmpDelay.String())
	// Under -race the runtime sleeps 1s at exit by default; the fake must exit promptly
	// like QEMU does.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	run, err := os.MkdirTemp("", "bgr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	spec := vmm.MachineSpec{
		Name: "fake", Kernel: files["vmlinuz"], Initramfs: files["initrd"],
		Drives: []vmm.Drive{
			{ID: "rootfs", Path: files["root.ext4"], ReadOnly: true, Role: vmm.RoleRoot},
			{ID: "layer", Path: files["layer.ext4"], Role: vmm.RoleLayer},
			{ID: "work", Path: files["work.ext4"], Role: vmm.RoleWork},
		},
		VCPUs: 1, MemoryMiB: 256, RunDir: run,
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	m, err := fakeDriver().Start(ctx, spec)
	if err != nil {
		t.Fatalf("start: %v\nqemu.log: %s", err, readFile(filepath.Join(run, qemuLogName)))
	}
	t.Cleanup(func() {
		m.Kill()
		m.Close()
		assertNothingLeft(t, run)
	})
	return m, run
}

// TestSupervisor runs the table every driver passes (internal/vmm/vmmtest) on the fake.
func TestSupervisor(t *testing.T) {
	vmmtest.Run(t, vmmtest.Harness{
		Driver:     fakeDriver(),
		ConsoleCap: fakeConsoleCap,
		Start: func(t *testing.T, b vmmtest.Behaviour) vmm.Machine {
			m, _ := startFake(t, b, 0)
			return m
		},
	})
}

// TestQMPHandshakeAfterStart: Start returns before QEMU's QMP answers (QEMU answers once
// its main loop runs); what needs QMP waits for it, and Close in the meantime (a daemon
// exiting) leaves the VM running for the next daemon.
func TestQMPHandshakeAfterStart(t *testing.T) {
	const delay = 300 * time.Millisecond
	t.Run("stop waits for QMP to press the button", func(t *testing.T) {
		// The agent answers the power off but the guest stays up: only the button stops it.
		m, run := startFake(t, vmmtest.Behaviour{IgnoreAgent: true}, delay)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		exit, err := m.Stop(ctx, 30*time.Second)
		if err != nil || !exit.Clean {
			t.Fatalf("stop: %+v, %v", exit, err)
		}
		if con := readFile(filepath.Join(run, consoleLogName)); !strings.Contains(con, vmmtest.MarkButton) {
			t.Fatalf("the button was not pressed: console %q", con)
		}
	})
	t.Run("close before QMP answered keeps the VM", func(t *testing.T) {
		m, _ := startFake(t, vmmtest.Behaviour{}, delay)
		st := m.State()
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// Reattach does its own handshake, so it succeeds only once QEMU answers: the VM
		// outlived the Close and QMP still works.
		m2, err := fakeDriver().Reattach(ctx, st)
		if err != nil {
			t.Fatalf("reattach after close: %v", err)
		}
		defer m2.Close()
		if isClosed(m.Done()) {
			t.Fatal("Close ended the VM")
		}
		if err := m2.Kill(); err != nil {
			t.Fatal(err)
		}
	})
}

func readFile(p string) string { b, _ := os.ReadFile(p); return string(b) }
