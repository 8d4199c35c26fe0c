package mcpserver

// The server as a client sees it (the SDK's client over its in-memory transport), with a
// daemon stand-in whose exec runs on a real in-process guest agent (agentserver, serving
// on a Unix socket): commands, stdin, output frames, exit codes and the kill on hang-up
// are the agent's own. The "guest" is this host, so file tests use a temporary directory.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/agent/agentserver"
	"github.com/banger-vm/banger/internal/api"
)

// agentDaemon is the daemon's VM bookkeeping in a map, with exec relayed to a real agent.
type agentDaemon struct {
	agent *agentclient.Client

	mu      sync.Mutex
	vms     map[string]api.VM
	calls   int
	removed []string
	snaps   []string
	n       int
}

func (d *agentDaemon) call() {
	d.mu.Lock()
	d.calls++
	d.mu.Unlock()
}

func (d *agentDaemon) VMs(ctx context.Context) ([]api.VM, error) {
	d.call()
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []api.VM
	for _, vm := range d.vms {
		out = append(out, vm)
	}
	return out, nil
}

func (d *agentDaemon) CreateVM(ctx context.Context, req api.VMCreateRequest, progress func(api.Progress)) (api.VM, error) {
	d.call()
	d.mu.Lock()
	defer d.mu.Unlock()
	if req.Name == "" {
		d.n++
		req.Name = fmt.Sprintf("tmp-%d", d.n)
	}
	if err := api.ValidVMName(req.Name); err != nil {
		return api.VM{}, err
	}
	if _, ok := d.vms[req.Name]; ok {
		return api.VM{}, api.Errorf(api.CodeConflict, "", "VM %q exists", req.Name)
	}
	state := "stopped"
	if req.Start {
		state = "running"
	}
	vm := api.VM{ID: "id-" + req.Name, Name: req.Name, Image: req.Image, State: state, CPUs: 1, MemoryMiB: 256,
		Boot: &api.VMBoot{Mode: api.BootWarm}}
	d.vms[req.Name] = vm
	if progress != nil {
		progress(api.Progress{Stage: "boot"})
	}
	return vm, nil
}

func (d *agentDaemon) lookup(name string) (api.VM, bool) {
	for _, vm := range d.vms {
		if vm.Name == name || vm.ID == name {
			return vm, true
		}
	}
	return api.VM{}, false
}

func (d *agentDaemon) StopVM(ctx context.Context, req api.VMStopRequest) (api.VM, error) {
	d.call()
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, ok := d.lookup(req.Name)
	if !ok {
		return vm, api.Errorf(api.CodeNotFound, "", "VM %q not found", req.Name)
	}
	vm.State = "stopped"
	d.vms[vm.Name] = vm
	return vm, nil
}

func (d *agentDaemon) RemoveVM(ctx context.Context, req api.VMRemoveRequest) error {
	d.call()
	d.mu.Lock()
	defer d.mu.Unlock()
	vm, ok := d.lookup(req.Name)
	if !ok {
		return api.Errorf(api.CodeNotFound, "list VMs with `banger vm ls`", "VM %q not found", req.Name)
	}
	if vm.State == "running" && !req.Force {
		return api.Errorf(api.CodeConflict, "stop it first, or pass force", "VM %s is running", vm.Name)
	}
	delete(d.vms, vm.Name)
	d.removed = append(d.removed, vm.Name)
	return nil
}

func (d *agentDaemon) ExecStream(ctx context.Context, req api.VMExecRequest) (io.ReadWriteCloser, error) {
	d.call()
	d.mu.Lock()
	vm, ok := d.lookup(req.Name)
	d.mu.Unlock()
	if !ok {
		return nil, api.Errorf(api.CodeNotFound, "", "VM %q not found", req.Name)
	}
	if vm.State != "running" {
		return nil, api.Errorf(api.CodeConflict, "", "VM %s is %s", vm.Name, vm.State)
	}
	return d.agent.ExecConn(ctx, agent.ExecRequest{Argv: req.Argv, Env: req.Env, Cwd: req.Cwd})
}

func (d *agentDaemon) CreateSnapshot(ctx context.Context, req api.SnapshotCreateRequest, progress func(api.Progress)) (api.Snapshot, error) {
	d.call()
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.lookup(req.VM); !ok {
		return api.Snapshot{}, api.Errorf(api.CodeNotFound, "", "VM %q not found", req.VM)
	}
	d.snaps = append(d.snaps, req.Snapshot)
	return api.Snapshot{Name: req.Snapshot, ParentVM: req.VM}, nil
}

func (d *agentDaemon) callCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls
}

// newAgentDaemon starts a real agent on a Unix socket.
func newAgentDaemon(t *testing.T) *agentDaemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "bmcp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := agentserver.New(agentserver.Config{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	go s.Serve(ln)
	t.Cleanup(func() { s.Close() })
	c := agentclient.New(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}, nil)
	t.Cleanup(func() { c.Close() })
	return &agentDaemon{agent: c, vms: map[string]api.VM{}}
}

// connectClient serves the tools to an SDK client over the in-memory transport.
func connectClient(t *testing.T, connect func(context.Context) (Daemon, error)) *mcp.ClientSession {
	t.Helper()
	ctx := context.Background()
	ct, st := mcp.NewInMemoryTransports()
	ss, err := New(Options{Connect: connect, Version: "test"}).Connect(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ss.Close() })
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(ctx, ct, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

func setup(t *testing.T) (*agentDaemon, *mcp.ClientSession) {
	d := newAgentDaemon(t)
	return d, connectClient(t, func(context.Context) (Daemon, error) { return d, nil })
}

// call calls a tool; a protocol error fails the test.
func call(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: protocol error: %v", name, err)
	}
	return res
}

// ok calls a tool that must succeed and decodes its structured output into out.
func ok(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any, out any) *mcp.CallToolResult {
	t.Helper()
	res := call(t, cs, name, args)
	if res.IsError {
		t.Fatalf("%s(%v): tool error: %s", name, args, textOf(res))
	}
	b, err := json.Marshal(res.StructuredContent)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		t.Fatalf("%s: structured output %s: %v", name, b, err)
	}
	return res
}

// toolError calls a tool that must fail as a tool (isError) with a message containing want.
func toolError(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any, want string) {
	t.Helper()
	res := call(t, cs, name, args)
	if !res.IsError {
		t.Fatalf("%s(%v): want a tool error about %q, got success: %s", name, args, want, textOf(res))
	}
	if !strings.Contains(textOf(res), want) {
		t.Fatalf("%s(%v): error %q does not say %q", name, args, textOf(res), want)
	}
}

func textOf(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

var allTools = []string{"vm_run", "vm_create", "vm_exec", "vm_read_file", "vm_write_file", "vm_ls", "vm_rm", "vm_fork"}

func TestToolsListed(t *testing.T) {
	_, cs := setup(t)
	res, err := cs.ListTools(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*mcp.Tool{}
	for _, tool := range res.Tools {
		got[tool.Name] = tool
	}
	for _, name := range allTools {
		tool := got[name]
		if tool == nil {
			t.Errorf("tool %s is not listed", name)
			continue
		}
		if tool.Description == "" {
			t.Errorf("%s has no description", name)
		}
		in, _ := tool.InputSchema.(map[string]any)
		if in["type"] != "object" {
			t.Errorf("%s: input schema %v is not an object schema", name, tool.InputSchema)
		}
		if name != "vm_ls" {
			if props, _ := in["properties"].(map[string]any); len(props) == 0 {
				t.Errorf("%s: input schema has no properties: %v", name, in)
			}
		}
		if tool.OutputSchema == nil {
			t.Errorf("%s has no output schema", name)
		}
	}
	// A required argument is marked so in the schema, with its description.
	exec, _ := got["vm_exec"].InputSchema.(map[string]any)
	if req, _ := exec["required"].([]any); len(req) != 1 || req[0] != "name" {
		t.Errorf("vm_exec requires %v, want [name]", exec["required"])
	}
}

func TestRunExactOutputAndCleanup(t *testing.T) {
	d, cs := setup(t)
	var out ExecOutput
	res := ok(t, cs, "vm_run", map[string]any{"shell": "echo out; echo err >&2; exit 3"}, &out)
	if out.Stdout != "out\n" || out.Stderr != "err\n" || out.ExitCode != 3 || out.TimedOut {
		t.Fatalf("vm_run: stdout %q stderr %q exit %d timed out %v, want out\\n, err\\n, 3", out.Stdout, out.Stderr, out.ExitCode, out.TimedOut)
	}
	if !out.Removed || out.BootMode != api.BootWarm || out.VM == "" {
		t.Errorf("vm_run: removed %v, boot %q, vm %q", out.Removed, out.BootMode, out.VM)
	}
	if txt := textOf(res); !strings.Contains(txt, "exit code 3") || !strings.Contains(txt, "stdout:\nout\n") || !strings.Contains(txt, "stderr:\nerr\n") {
		t.Errorf("vm_run text summary:\n%s", txt)
	}
	if len(d.vms) != 0 || len(d.removed) != 1 || d.removed[0] != out.VM {
		t.Errorf("after vm_run: VMs %v, removed %v", d.vms, d.removed)
	}

	// argv without a shell, with stdin: an argument with shell syntax stays one argument.
	ok(t, cs, "vm_run", map[string]any{"argv": []string{"sh", "-c", `cat; printf '[%s]' "$0"`, "$(x); y"}, "stdin": "from stdin\n"}, &out)
	if out.Stdout != "from stdin\n[$(x); y]" || out.ExitCode != 0 {
		t.Fatalf("vm_run argv+stdin: stdout %q exit %d", out.Stdout, out.ExitCode)
	}
	if len(d.vms) != 0 {
		t.Errorf("VMs left: %v", d.vms)
	}
}

func TestOutputBounds(t *testing.T) {
	_, cs := setup(t)
	var out ExecOutput
	const n = MaxOutputBytes + 34464
	res := ok(t, cs, "vm_run", map[string]any{"shell": fmt.Sprintf("head -c %d /dev/zero | tr '\\0' a; head -c %d /dev/zero | tr '\\0' b >&2", n, n)}, &out)
	note := "\n[truncated: 34464 more bytes]"
	if out.Stdout != strings.Repeat("a", MaxOutputBytes)+note || out.StdoutTruncatedBytes != 34464 {
		t.Errorf("stdout: %d bytes ending %q, %d truncated", len(out.Stdout), out.Stdout[max(0, len(out.Stdout)-40):], out.StdoutTruncatedBytes)
	}
	if out.Stderr != strings.Repeat("b", MaxOutputBytes)+note || out.StderrTruncatedBytes != 34464 {
		t.Errorf("stderr: %d bytes, %d truncated", len(out.Stderr), out.StderrTruncatedBytes)
	}
	if !strings.Contains(textOf(res), "[truncated: 34464 more bytes]") {
		t.Errorf("the text summary does not say what was cut")
	}
	// Bytes that are not UTF-8 come back exactly, base64-encoded.
	ok(t, cs, "vm_run", map[string]any{"argv": []string{"printf", `\377\000\033[2J`}}, &out)
	if !out.StdoutBase64 || out.Stdout != "/wAbWzJK" {
		t.Errorf("binary stdout: %q (base64 %v), want /wAbWzJK", out.Stdout, out.StdoutBase64)
	}
}

func TestTimeoutKillsTheCommand(t *testing.T) {
	d, cs := setup(t)
	var vm VMInfo
	ok(t, cs, "vm_create", map[string]any{"name": "box"}, &vm)
	if vm.Name != "box" || vm.State != "running" {
		t.Fatalf("vm_create: %+v", vm)
	}
	pidFile := filepath.Join(t.TempDir(), "pid")
	var out ExecOutput
	ok(t, cs, "vm_exec", map[string]any{"name": "box", "argv": []string{"sh", "-c", `echo started; echo $$ > "$0"; exec sleep 600`, pidFile},
		"timeout_seconds": 1}, &out)
	if !out.TimedOut || out.ExitCode != -1 || out.Stdout != "started\n" || out.TimeoutSeconds != 1 {
		t.Fatalf("vm_exec past its timeout: %+v", out)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the timed-out command (pid %d) still runs", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ok(t, cs, "vm_rm", map[string]any{"name": "box", "force": true}, &struct{}{})
	if len(d.vms) != 0 {
		t.Errorf("VMs left: %v", d.vms)
	}
}

func TestFiles(t *testing.T) {
	_, cs := setup(t)
	ok(t, cs, "vm_create", map[string]any{"name": "files"}, &VMInfo{})
	dir := t.TempDir()
	p := filepath.Join(dir, "new", "sub", "notes.txt")
	body := "héllo\nworld $(rm -rf /) `x`\n"

	toolError(t, cs, "vm_write_file", map[string]any{"name": "files", "path": p, "content": body}, "set make_parents")
	var w WriteOutput
	ok(t, cs, "vm_write_file", map[string]any{"name": "files", "path": p, "content": body, "mode": "0600", "make_parents": true}, &w)
	if w.Bytes != len(body) || w.Mode != "0600" || w.Path != p {
		t.Errorf("vm_write_file: %+v", w)
	}
	if got, err := os.ReadFile(p); err != nil || string(got) != body {
		t.Fatalf("file written: %q, %v", got, err)
	}
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	var r ReadOutput
	ok(t, cs, "vm_read_file", map[string]any{"name": "files", "path": p}, &r)
	if r.Content != body || r.Base64 || r.Truncated || r.SizeBytes != int64(len(body)) || r.Bytes != len(body) {
		t.Errorf("vm_read_file: %+v", r)
	}
	// Cut at max_bytes, inside the two-byte é: the text stops before it.
	ok(t, cs, "vm_read_file", map[string]any{"name": "files", "path": p, "max_bytes": 2}, &r)
	if r.Content != "h" || !r.Truncated || r.SizeBytes != int64(len(body)) {
		t.Errorf("vm_read_file max_bytes 2: %+v", r)
	}
	// Binary in, binary out.
	bin := filepath.Join(dir, "bin")
	ok(t, cs, "vm_write_file", map[string]any{"name": "files", "path": bin, "content": "AP8Q", "base64": true, "mode": "755"}, &w)
	ok(t, cs, "vm_read_file", map[string]any{"name": "files", "path": bin}, &r)
	if !r.Base64 || r.Content != "AP8Q" || r.Bytes != 3 {
		t.Errorf("binary read: %+v", r)
	}
	if fi, _ := os.Stat(bin); fi.Mode().Perm() != 0o755 {
		t.Errorf("binary file mode %v, want 0755", fi.Mode().Perm())
	}
	toolError(t, cs, "vm_read_file", map[string]any{"name": "files", "path": filepath.Join(dir, "missing")}, "no such file")
	toolError(t, cs, "vm_read_file", map[string]any{"name": "files", "path": dir}, "not a regular file")
	toolError(t, cs, "vm_write_file", map[string]any{"name": "files", "path": dir, "content": "x"}, "not a regular file")
	toolError(t, cs, "vm_read_file", map[string]any{"name": "nope", "path": p}, `VM "nope" not found`)
}

func TestBadInputsAreToolErrors(t *testing.T) {
	d, cs := setup(t)
	before := d.callCount()
	for _, c := range []struct {
		tool string
		args map[string]any
		want string
	}{
		{"vm_exec", map[string]any{"name": "../x", "argv": []string{"true"}}, `invalid VM name "../x"`},
		{"vm_exec", map[string]any{"name": "a/b", "argv": []string{"true"}}, "invalid VM name"},
		{"vm_exec", map[string]any{"name": "Box", "argv": []string{"true"}}, "invalid VM name"},
		{"vm_exec", map[string]any{"name": "box", "argv": []string{}}, "argv is required"},
		{"vm_exec", map[string]any{"name": "box", "argv": []string{"true"}, "shell": "true"}, "not both"},
		{"vm_exec", map[string]any{"name": "box", "argv": []string{"echo", "a\x00b"}}, "NUL"},
		{"vm_exec", map[string]any{"name": "box", "argv": []string{"true"}, "timeout_seconds": 99999}, "timeout_seconds"},
		{"vm_exec", map[string]any{"name": "box", "argv": []string{"true"}, "timeout_seconds": -1}, "timeout_seconds"},
		{"vm_exec", map[string]any{"name": "box", "argv": []string{"true"}, "workdir": "tmp"}, "workdir"},
		{"vm_exec", map[string]any{"name": "box", "argv": []string{"true"}, "stdin": strings.Repeat("x", MaxStdinBytes+1)}, "stdin is"},
		{"vm_run", map[string]any{}, "argv is required"},
		{"vm_run", map[string]any{"argv": []string{"true"}, "cpus": 1000}, "cpus"},
		{"vm_create", map[string]any{"name": "../../etc"}, "invalid VM name"},
		{"vm_read_file", map[string]any{"name": "box", "path": "etc/passwd"}, "relative"},
		{"vm_read_file", map[string]any{"name": "box", "path": "../etc/passwd"}, "relative"},
		{"vm_read_file", map[string]any{"name": "box", "path": "/"}, "root directory"},
		{"vm_read_file", map[string]any{"name": "box", "path": "/etc/x\x00y"}, "NUL"},
		{"vm_read_file", map[string]any{"name": "box", "path": "/etc/passwd", "max_bytes": MaxReadBytes + 1}, "max_bytes"},
		{"vm_write_file", map[string]any{"name": "box", "path": "rel", "content": "x"}, "relative"},
		{"vm_write_file", map[string]any{"name": "box", "path": "/x", "content": "x", "mode": "999"}, "mode"},
		{"vm_write_file", map[string]any{"name": "box", "path": "/x", "content": "x", "mode": "-rw"}, "mode"},
		{"vm_write_file", map[string]any{"name": "box", "path": "/x", "content": "!!", "base64": true}, "base64"},
		{"vm_rm", map[string]any{"name": "x;rm -rf /"}, "invalid VM name"},
		{"vm_fork", map[string]any{"name": "box", "new_names": []string{}}, "new_names"},
		{"vm_fork", map[string]any{"name": "box", "new_names": []string{"a", "b", "c", "d", "e", "f", "g", "h", "i"}}, "new_names"},
		{"vm_fork", map[string]any{"name": "box", "new_names": []string{"ok", "../evil"}}, "new_names[1]"},
		{"vm_fork", map[string]any{"name": "box", "new_names": []string{"a", "a"}}, "twice"},
		{"vm_fork", map[string]any{"name": "box", "new_names": []string{"a"}, "snapshot": "../s"}, "snapshot"},
	} {
		toolError(t, cs, c.tool, c.args, c.want)
	}
	if after := d.callCount(); after != before {
		t.Errorf("bad inputs reached the daemon: %d calls", after-before)
	}
	// Unknown and missing arguments are the SDK's schema checks: still tool errors.
	for _, args := range []map[string]any{{"argv": []string{"true"}}, {"name": "box", "argv": "true"}, {"name": "box", "argv": []string{"true"}, "bogus": 1}} {
		if res := call(t, cs, "vm_exec", args); !res.IsError {
			t.Errorf("vm_exec(%v) did not fail", args)
		}
	}
}

func TestForkAndList(t *testing.T) {
	d, cs := setup(t)
	ok(t, cs, "vm_create", map[string]any{"name": "parent", "image": "bb"}, &VMInfo{})
	ok(t, cs, "vm_create", map[string]any{"name": "other", "start": false}, &VMInfo{})
	var f ForkOutput
	// One clone's name is taken: the others still start, and the result says which failed.
	ok(t, cs, "vm_fork", map[string]any{"name": "parent", "new_names": []string{"kid-a", "kid-b", "other"}}, &f)
	if len(f.Clones) != 2 || len(f.Failed) != 1 || !strings.Contains(f.Failed[0], "exists") || !strings.HasPrefix(f.Snapshot, "fork-parent-") {
		t.Errorf("vm_fork: %+v", f)
	}
	if len(d.snaps) != 1 || d.snaps[0] != f.Snapshot {
		t.Errorf("snapshots taken: %v, result names %s", d.snaps, f.Snapshot)
	}
	var l ListOutput
	ok(t, cs, "vm_ls", nil, &l)
	var names []string
	for _, vm := range l.VMs {
		names = append(names, vm.Name)
	}
	if len(l.VMs) != 4 {
		t.Errorf("vm_ls: %v", names)
	}
	toolError(t, cs, "vm_rm", map[string]any{"name": "parent"}, "pass force")
	toolError(t, cs, "vm_fork", map[string]any{"name": "ghost", "new_names": []string{"x"}}, `VM "ghost" not found`)
}

func TestDaemonDownIsAToolError(t *testing.T) {
	cs := connectClient(t, func(context.Context) (Daemon, error) {
		return nil, &api.Error{Code: api.CodeDaemonNotRunning, Message: "no banger daemon is running", Hint: "start it with `banger daemon start`"}
	})
	toolError(t, cs, "vm_ls", nil, "banger daemon start")
	toolError(t, cs, "vm_run", map[string]any{"argv": []string{"true"}}, "no banger daemon is running")
}

func TestCappedAndCutRune(t *testing.T) {
	c := &capped{max: 4}
	c.Write([]byte("ab"))
	c.Write([]byte("cdef"))
	if c.buf.String() != "abcd" || c.dropped != 2 {
		t.Fatalf("capped: %q, %d dropped", c.buf.String(), c.dropped)
	}
	for in, want := range map[string]string{"ab\xc3": "ab", "ab\xe2\x82": "ab", "ab\xe2\x82\xac": "ab\xe2\x82\xac", "abc": "abc", "": ""} {
		if got := string(cutRune([]byte(in))); got != want {
			t.Errorf("cutRune(%q) = %q, want %q", in, got, want)
		}
	}
	c = &capped{max: 3}
	c.Write([]byte("a€b"))
	text, b64, dropped := output(c)
	if text != "a\n[truncated: 4 more bytes]" || b64 || dropped != 4 {
		t.Errorf("output of a cut €: %q %v %d", text, b64, dropped)
	}
}

// TestHangUpStillRemovesTheThrowaway: a client that goes away mid vm_run (its end of the
// stream closed, as when the agent's process ends) or cancels the call does not leak the
// VM: the command is killed and the VM removed, and Serve returns only after that.
func TestHangUpStillRemovesTheThrowaway(t *testing.T) {
	for _, how := range []string{"hang-up", "cancel"} {
		t.Run(how, func(t *testing.T) {
			d := newAgentDaemon(t)
			ctx := context.Background()
			c2sR, c2sW := io.Pipe()
			s2cR, s2cW := io.Pipe()
			served := make(chan error, 1)
			go func() {
				served <- Serve(ctx, Options{Connect: func(context.Context) (Daemon, error) { return d, nil }}, &mcp.IOTransport{Reader: c2sR, Writer: s2cW})
			}()
			cs, err := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil).Connect(ctx, &mcp.IOTransport{Reader: s2cR, Writer: c2sW}, nil)
			if err != nil {
				t.Fatal(err)
			}
			pidFile := filepath.Join(t.TempDir(), "pid")
			callCtx, cancelCall := context.WithCancel(ctx)
			defer cancelCall()
			called := make(chan struct{})
			go func() {
				defer close(called)
				_, _ = cs.CallTool(callCtx, &mcp.CallToolParams{Name: "vm_run", Arguments: map[string]any{
					"argv": []string{"sh", "-c", `echo $$ > "$0"; exec sleep 600`, pidFile}, "timeout_seconds": 1800}})
			}()
			var pid int
			for deadline := time.Now().Add(time.Minute); pid == 0; time.Sleep(20 * time.Millisecond) {
				b, _ := os.ReadFile(pidFile)
				pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
				if time.Now().After(deadline) {
					t.Fatal("vm_run's command did not start")
				}
			}
			waitGone := func() {
				t.Helper()
				for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
					d.mu.Lock()
					left, removed := len(d.vms), len(d.removed)
					d.mu.Unlock()
					if left == 0 && removed == 1 && syscall.Kill(pid, 0) != nil {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("%d VMs left, %d removed, command (pid %d) running: %v", left, removed, pid, syscall.Kill(pid, 0) == nil)
					}
				}
			}
			if how == "cancel" {
				cancelCall()
				<-called
				waitGone()
				cs.Close()
			} else {
				c2sW.Close() // the server's stdin ends
				select {
				case <-served:
				case <-time.After(CleanupGrace + time.Minute):
					t.Fatal("Serve did not return after the client hung up")
				}
				// Serve waited for vm_run's cleanup: the VM is gone now, not later.
				d.mu.Lock()
				left, removed := len(d.vms), len(d.removed)
				d.mu.Unlock()
				if left != 0 || removed != 1 {
					t.Fatalf("when Serve returned: %d VMs left, %d removed", left, removed)
				}
				waitGone()
				s2cR.Close()
			}
		})
	}
}
