//go:build integration

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// mcpSession starts `banger mcp` as the harness runs the CLI (same user, environment and
// daemon) and connects the MCP SDK's client to it over the process's stdin/stdout.
func (e *env) mcpSession(ctx context.Context) *mcp.ClientSession {
	e.t.Helper()
	cmd := e.command("mcp")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "e2e", Version: "1"}, nil).
		Connect(ctx, &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		e.t.Fatalf("connect to banger mcp: %v\nstderr: %s", err, stderr.String())
	}
	e.t.Cleanup(func() {
		cs.Close()
		if e.t.Failed() {
			e.t.Logf("banger mcp stderr:\n%s", tail(stderr.String(), 40))
		}
	})
	return cs
}

// mcpCall calls a tool; a protocol error fails the test.
func mcpCall(t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) *mcp.CallToolResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: protocol error: %v", name, err)
	}
	return res
}

func mcpText(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(*mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

// mcpOK calls a tool that must succeed and decodes its structured output.
func mcpOK[T any](t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) T {
	t.Helper()
	res := mcpCall(t, cs, name, args)
	if res.IsError {
		t.Fatalf("%s: tool error: %s", name, mcpText(res))
	}
	var out T
	b, _ := json.Marshal(res.StructuredContent)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: structured output %s: %v", name, b, err)
	}
	return out
}

// TestMCPServer: `banger mcp` spoken to by the SDK's client: every tool listed with its
// schemas; vm_run on a real busybox guest gives the command's exact stdout, stderr and exit
// code and leaves no VM; create, write, read, exec, fork and rm round trip on one VM; a
// timed-out command is killed; hostile names and relative paths are tool errors; nothing leaks.
func TestMCPServer(t *testing.T) {
	e := setup(t)
	ctx := context.Background()
	cs := e.mcpSession(ctx)

	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	listed := map[string]*mcp.Tool{}
	for _, tool := range tools.Tools {
		listed[tool.Name] = tool
	}
	for _, name := range []string{"vm_run", "vm_create", "vm_exec", "vm_read_file", "vm_write_file", "vm_ls", "vm_rm", "vm_fork"} {
		tool := listed[name]
		if tool == nil {
			t.Fatalf("tool %s not listed (got %d tools)", name, len(tools.Tools))
		}
		in, _ := tool.InputSchema.(map[string]any)
		if in["type"] != "object" || tool.OutputSchema == nil || tool.Description == "" {
			t.Errorf("%s: input schema %v, output schema %v, description %q", name, tool.InputSchema, tool.OutputSchema, tool.Description)
		}
		if props, _ := in["properties"].(map[string]any); len(props) == 0 && name != "vm_ls" {
			t.Errorf("%s: input schema without properties: %v", name, in)
		}
	}

	type execOut struct {
		VM       string `json:"vm"`
		ExitCode int    `json:"exit_code"`
		Stdout   string `json:"stdout"`
		Stderr   string `json:"stderr"`
		TimedOut bool   `json:"timed_out"`
		Removed  bool   `json:"removed"`
		BootMode string `json:"boot_mode"`
	}
	run := mcpOK[execOut](t, cs, "vm_run", map[string]any{"image": "bb", "memory": "512M",
		"argv": []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
	if run.Stdout != "out\n" || run.Stderr != "err\n" || run.ExitCode != 3 || run.TimedOut {
		t.Fatalf("vm_run: stdout %q, stderr %q, exit code %d, timed out %v; want \"out\\n\", \"err\\n\", 3", run.Stdout, run.Stderr, run.ExitCode, run.TimedOut)
	}
	if !run.Removed || run.BootMode == "" {
		t.Errorf("vm_run: removed %v, boot mode %q", run.Removed, run.BootMode)
	}
	if vms := e.vms(); len(vms) != 0 {
		t.Fatalf("vm_run left VMs: %v", vms)
	}

	vm := mcpOK[struct {
		Name  string `json:"name"`
		State string `json:"state"`
	}](t, cs, "vm_create", map[string]any{"name": "mcp", "image": "bb", "memory": "512M"})
	if vm.Name != "mcp" || vm.State != "running" {
		t.Fatalf("vm_create: %+v", vm)
	}
	body := "line one\nsecond: $(not run) `nor this`\n"
	mcpOK[map[string]any](t, cs, "vm_write_file", map[string]any{"name": "mcp", "path": "/root/dir/hello.txt",
		"content": body, "mode": "0640", "make_parents": true})
	read := mcpOK[struct {
		Content   string `json:"content"`
		Base64    bool   `json:"base64"`
		SizeBytes int64  `json:"size_bytes"`
	}](t, cs, "vm_read_file", map[string]any{"name": "mcp", "path": "/root/dir/hello.txt"})
	if read.Content != body || read.Base64 || read.SizeBytes != int64(len(body)) {
		t.Errorf("vm_read_file: %+v, want %q", read, body)
	}
	ex := mcpOK[execOut](t, cs, "vm_exec", map[string]any{"name": "mcp", "workdir": "/root/dir",
		"argv": []string{"sh", "-c", `stat -c %a hello.txt && cat hello.txt && cat`}, "stdin": "from stdin"})
	if want := "640\n" + body + "from stdin"; ex.Stdout != want || ex.ExitCode != 0 {
		t.Errorf("vm_exec: stdout %q exit %d stderr %q, want %q", ex.Stdout, ex.ExitCode, ex.Stderr, want)
	}
	slow := mcpOK[execOut](t, cs, "vm_exec", map[string]any{"name": "mcp", "shell": "echo begun; sleep 300", "timeout_seconds": 3})
	if !slow.TimedOut || slow.ExitCode != -1 || slow.Stdout != "begun\n" {
		t.Errorf("vm_exec past its timeout: %+v", slow)
	}
	// The agent kills it once the daemon relays the hang-up.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(500 * time.Millisecond) {
		ps := mcpOK[execOut](t, cs, "vm_exec", map[string]any{"name": "mcp", "shell": "ps | grep -c '[s]leep 300'"})
		if ps.Stdout == "0\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the timed-out command still runs in the guest: %q", ps.Stdout)
		}
	}

	for _, bad := range []struct {
		tool string
		args map[string]any
		want string
	}{
		{"vm_exec", map[string]any{"name": "../x", "argv": []string{"true"}}, "invalid VM name"},
		{"vm_read_file", map[string]any{"name": "mcp", "path": "root/dir/hello.txt"}, "relative"},
		{"vm_write_file", map[string]any{"name": "mcp", "path": "../etc/passwd", "content": "x"}, "relative"},
		{"vm_read_file", map[string]any{"name": "mcp", "path": "/root/nope"}, "no such file"},
		{"vm_exec", map[string]any{"name": "ghost", "argv": []string{"true"}}, "not found"},
	} {
		res := mcpCall(t, cs, bad.tool, bad.args)
		if !res.IsError || !strings.Contains(mcpText(res), bad.want) {
			t.Errorf("%s(%v): isError %v, %q; want a tool error about %q", bad.tool, bad.args, res.IsError, mcpText(res), bad.want)
		}
	}

	// A fork carries the parent's files; its snapshot is kept until removed.
	fork := mcpOK[struct {
		Snapshot string `json:"snapshot"`
		Clones   []struct {
			Name  string `json:"name"`
			State string `json:"state"`
		} `json:"clones"`
		Failed []string `json:"failed"`
	}](t, cs, "vm_fork", map[string]any{"name": "mcp", "new_names": []string{"mcp-kid"}})
	if len(fork.Clones) != 1 || fork.Clones[0].Name != "mcp-kid" || fork.Clones[0].State != "running" || len(fork.Failed) != 0 || fork.Snapshot == "" {
		t.Fatalf("vm_fork: %+v", fork)
	}
	kid := mcpOK[struct {
		Content string `json:"content"`
	}](t, cs, "vm_read_file", map[string]any{"name": "mcp-kid", "path": "/root/dir/hello.txt"})
	if kid.Content != body {
		t.Errorf("the clone's copy of the file: %q, want %q", kid.Content, body)
	}
	mcpOK[map[string]any](t, cs, "vm_rm", map[string]any{"name": "mcp-kid", "force": true})
	e.must("snapshot", "rm", fork.Snapshot)

	mcpOK[map[string]any](t, cs, "vm_rm", map[string]any{"name": "mcp", "force": true})
	ls := mcpOK[struct {
		VMs []any `json:"vms"`
	}](t, cs, "vm_ls", nil)
	if len(ls.VMs) != 0 {
		t.Errorf("vm_ls after vm_rm: %v", ls.VMs)
	}
	cs.Close()
	e.requireNoLeaks()
}
