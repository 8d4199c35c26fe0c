package mcpserver

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/banger-vm/banger/internal/api"
)

type tools struct {
	connect func(ctx context.Context) (Daemon, error)
	// inflight counts the calls running, so Serve can let them clean up.
	inflight sync.WaitGroup
}

// add registers a typed tool whose calls are counted in t.inflight.
func add[In, Out any](s *mcp.Server, t *tools, tool *mcp.Tool, h mcp.ToolHandlerFor[In, Out]) {
	mcp.AddTool(s, tool, func(ctx context.Context, req *mcp.CallToolRequest, in In) (*mcp.CallToolResult, Out, error) {
		t.inflight.Add(1)
		defer t.inflight.Done()
		return h(ctx, req, in)
	})
}

func (t *tools) daemon(ctx context.Context) (Daemon, error) {
	if t.connect == nil {
		return nil, errors.New("no banger daemon configured")
	}
	return t.connect(ctx)
}

func ptr[T any](v T) *T { return &v }

func (t *tools) register(s *mcp.Server) {
	add(s, t, &mcp.Tool{Name: "vm_run", Title: "Run a command in a throwaway VM",
		Description: `Run one command in a fresh microVM and remove the VM afterwards: create, start (warm
from a template when the daemon has one), run, remove. Returns stdout, stderr (each cut at
64 KiB, with a "[truncated: N more bytes]" note) and the exit code. The command is an argv
array run without a shell, or a script in "shell" run by sh -c. It is killed after
timeout_seconds (default 60, at most 1800); booting the VM has its own 300 s bound.`,
		Annotations: &mcp.ToolAnnotations{OpenWorldHint: ptr(false), DestructiveHint: ptr(false)}}, t.vmRun)
	add(s, t, &mcp.Tool{Name: "vm_create", Title: "Create a VM",
		Description: `Create a microVM that stays until vm_rm, and (by default) start it and wait until its agent
answers. Use it with vm_exec, vm_write_file and vm_read_file; remove it with vm_rm when
done. Returns the VM's name and state.`,
		Annotations: &mcp.ToolAnnotations{OpenWorldHint: ptr(false), DestructiveHint: ptr(false)}}, t.vmCreate)
	add(s, t, &mcp.Tool{Name: "vm_exec", Title: "Run a command in a VM",
		Description: `Run a command in a running VM (from vm_create) as root, with optional stdin and working
directory (default /root). Returns stdout, stderr (each cut at 64 KiB) and the exit code;
the command is killed after timeout_seconds (default 60, at most 1800).`,
		Annotations: &mcp.ToolAnnotations{OpenWorldHint: ptr(false)}}, t.vmExec)
	add(s, t, &mcp.Tool{Name: "vm_read_file", Title: "Read a file in a VM",
		Description: `Read a regular file in a running VM, up to max_bytes (default 65536, at most 1048576).
UTF-8 text comes as text; anything else base64-encoded with base64 set. truncated says the
file is longer than what was returned.`,
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, OpenWorldHint: ptr(false)}}, t.vmReadFile)
	add(s, t, &mcp.Tool{Name: "vm_write_file", Title: "Write a file in a VM",
		Description: `Write a file in a running VM (replacing it if it exists), owned by root, with mode (octal,
default "0644"). content is text, or base64 with base64 set; at most 4 MiB after
decoding. make_parents creates missing parent directories.`,
		Annotations: &mcp.ToolAnnotations{OpenWorldHint: ptr(false)}}, t.vmWriteFile)
	add(s, t, &mcp.Tool{Name: "vm_ls", Title: "List VMs",
		Description: `List the VMs: name, state, image, vCPUs, memory, address, and how they last booted.`,
		Annotations: &mcp.ToolAnnotations{ReadOnlyHint: true, IdempotentHint: true, OpenWorldHint: ptr(false)}}, t.vmList)
	add(s, t, &mcp.Tool{Name: "vm_rm", Title: "Remove a VM",
		Description: `Remove a VM and its disks. A running VM needs force (it is killed: unsaved work is lost).`,
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(true), OpenWorldHint: ptr(false)}}, t.vmRemove)
	add(s, t, &mcp.Tool{Name: "vm_fork", Title: "Fork a running VM",
		Description: fmt.Sprintf(`Snapshot a running VM (it pauses briefly and runs on) and start one clone per new name,
each with the VM's processes and files and its own identity (at most %d). The snapshot is
kept for more clones (remove it with banger snapshot rm once its clones are gone).`, MaxForks),
		Annotations: &mcp.ToolAnnotations{DestructiveHint: ptr(false), OpenWorldHint: ptr(false)}}, t.vmFork)
}

// progressOf reports a create's stages to the client when it asked for progress.
func progressOf(ctx context.Context, req *mcp.CallToolRequest) func(api.Progress) {
	if req == nil || req.Session == nil || req.Params == nil {
		return nil
	}
	tok := req.Params.GetProgressToken()
	if tok == nil {
		return nil
	}
	var mu sync.Mutex
	var n float64
	return func(p api.Progress) {
		mu.Lock()
		defer mu.Unlock()
		n++
		msg := p.Stage
		if p.Message != "" {
			msg += ": " + p.Message
		}
		_ = req.Session.NotifyProgress(ctx, &mcp.ProgressNotificationParams{ProgressToken: tok, Progress: n, Message: msg})
	}
}

// createVM creates (and maybe starts) a VM within CreateTimeout. A create that fails or is
// cut off undoes itself in the daemon.
func createVM(ctx context.Context, d Daemon, req api.VMCreateRequest, progress func(api.Progress)) (api.VM, error) {
	cctx, cancel := context.WithTimeout(ctx, CreateTimeout)
	defer cancel()
	vm, err := d.CreateVM(cctx, req, progress)
	if err != nil {
		if ctx.Err() == nil && cctx.Err() != nil {
			return vm, fmt.Errorf("creating the VM took longer than %s and was given up (the daemon removes what it made); "+
				"`banger doctor` checks the host", CreateTimeout)
		}
		return vm, fmt.Errorf("create VM: %w", err)
	}
	return vm, nil
}

// text is a result with one text content; the SDK adds the structured output.
func text(s string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
}

// RunInput is vm_run's input.
type RunInput struct {
	Argv           []string `json:"argv,omitempty" jsonschema:"the command and its arguments, run without a shell, like [\"uname\", \"-a\"]; give argv or shell"`
	Shell          string   `json:"shell,omitempty" jsonschema:"a shell script run with sh -c, instead of argv"`
	Stdin          string   `json:"stdin,omitempty" jsonschema:"text given to the command on stdin (at most 1 MiB; default: none)"`
	Workdir        string   `json:"workdir,omitempty" jsonschema:"absolute working directory in the VM (default /root)"`
	TimeoutSeconds float64  `json:"timeout_seconds,omitempty" jsonschema:"kill the command after this many seconds (default 60, at most 1800)"`
	Image          string   `json:"image,omitempty" jsonschema:"image to boot (default: the daemon's default image)"`
	CPUs           int      `json:"cpus,omitempty" jsonschema:"vCPUs (default: the daemon's default)"`
	Memory         string   `json:"memory,omitempty" jsonschema:"memory size like 512M or 2G (default: the daemon's default)"`
}

// checkCommand validates what vm_run and vm_exec share: the command (argv or shell), its
// timeout, working directory and stdin.
func checkCommand(argvIn []string, shell string, timeoutSeconds float64, workdirIn, stdin string) (argv []string, timeout time.Duration, workdir string, err error) {
	if argv, err = checkArgv(argvIn, shell); err != nil {
		return nil, 0, "", err
	}
	if timeout, err = checkTimeout(timeoutSeconds); err != nil {
		return nil, 0, "", err
	}
	if workdir, err = checkWorkdir(workdirIn); err != nil {
		return nil, 0, "", err
	}
	if err = checkStdin(stdin); err != nil {
		return nil, 0, "", err
	}
	return argv, timeout, workdir, nil
}

func (t *tools) vmRun(ctx context.Context, req *mcp.CallToolRequest, in RunInput) (*mcp.CallToolResult, ExecOutput, error) {
	argv, timeout, workdir, err := checkCommand(in.Argv, in.Shell, in.TimeoutSeconds, in.Workdir, in.Stdin)
	if err != nil {
		return nil, ExecOutput{}, err
	}
	if err := checkShape(in.Image, in.CPUs, in.Memory); err != nil {
		return nil, ExecOutput{}, err
	}
	d, err := t.daemon(ctx)
	if err != nil {
		return nil, ExecOutput{}, err
	}
	began := time.Now()
	// The command runs through the agent: no need to wait for sshd.
	vm, err := createVM(ctx, d, api.VMCreateRequest{Image: in.Image, CPUs: in.CPUs, Memory: in.Memory, Start: true, SkipSSHWait: true}, progressOf(ctx, req))
	if err != nil {
		return nil, ExecOutput{}, err
	}
	boot := time.Since(began).Seconds()
	out, runErr := guestExec(ctx, d, api.VMExecRequest{Name: vm.ID, Argv: argv, Cwd: workdir}, in.Stdin, timeout, MaxOutputBytes)
	out.VM, out.BootSeconds, out.BootMode = vm.Name, boot, api.BootCold
	if vm.Boot != nil && vm.Boot.Mode != "" {
		out.BootMode = vm.Boot.Mode
	}
	if rerr := removeThrowaway(ctx, d, vm); rerr != nil {
		out.RemoveError = fmt.Sprintf("%v (remove it with vm_rm, force true)", rerr)
	} else {
		out.Removed = true
	}
	if runErr != nil {
		if out.RemoveError != "" {
			return nil, out, fmt.Errorf("%w; VM %s could not be removed: %s", runErr, vm.Name, out.RemoveError)
		}
		return nil, out, fmt.Errorf("%w; VM %s was removed", runErr, vm.Name)
	}
	return text(out.summary()), out, nil
}

// removeThrowaway removes vm_run's VM, even when the call was cancelled.
func removeThrowaway(ctx context.Context, d Daemon, vm api.VM) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	// Its disks are deleted next: no need for a clean shutdown first.
	_, _ = d.StopVM(rctx, api.VMStopRequest{Name: vm.ID, Force: true})
	return d.RemoveVM(rctx, api.VMRemoveRequest{Name: vm.ID, Force: true})
}

// VMInfo is a VM as the tools show it.
type VMInfo struct {
	Name      string `json:"name"`
	ID        string `json:"id"`
	State     string `json:"state" jsonschema:"running, stopped, paused, crashed, ..."`
	Image     string `json:"image"`
	CPUs      int    `json:"cpus"`
	MemoryMiB int    `json:"memory_mib"`
	IP        string `json:"ip,omitempty" jsonschema:"its address on banger's network, when it has one"`
	Boot      string `json:"boot,omitempty" jsonschema:"how its last start booted: warm (from a template), cold, resume"`
	CreatedAt string `json:"created_at" jsonschema:"RFC 3339 time"`
}

func infoOf(vm api.VM) VMInfo {
	i := VMInfo{Name: vm.Name, ID: vm.ID, State: vm.State, Image: vm.Image, CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB,
		IP: vm.Network.IP, CreatedAt: vm.CreatedAt.UTC().Format(time.RFC3339)}
	if vm.Boot != nil {
		i.Boot = vm.Boot.Mode
	}
	return i
}

// CreateInput is vm_create's input.
type CreateInput struct {
	Name   string `json:"name,omitempty" jsonschema:"the VM's name: 1-32 lowercase letters, digits and single '-', starting with a letter (default: generated)"`
	Image  string `json:"image,omitempty" jsonschema:"image to boot (default: the daemon's default image)"`
	CPUs   int    `json:"cpus,omitempty" jsonschema:"vCPUs (default: the daemon's default)"`
	Memory string `json:"memory,omitempty" jsonschema:"memory size like 512M or 2G (default: the daemon's default)"`
	Start  *bool  `json:"start,omitempty" jsonschema:"start it now and wait until it is ready (default true)"`
}

func (t *tools) vmCreate(ctx context.Context, req *mcp.CallToolRequest, in CreateInput) (*mcp.CallToolResult, VMInfo, error) {
	if in.Name != "" {
		if err := checkName("name", in.Name); err != nil {
			return nil, VMInfo{}, err
		}
	}
	if err := checkShape(in.Image, in.CPUs, in.Memory); err != nil {
		return nil, VMInfo{}, err
	}
	d, err := t.daemon(ctx)
	if err != nil {
		return nil, VMInfo{}, err
	}
	start := in.Start == nil || *in.Start
	vm, err := createVM(ctx, d, api.VMCreateRequest{Name: in.Name, Image: in.Image, CPUs: in.CPUs, Memory: in.Memory,
		Start: start, SkipSSHWait: true}, progressOf(ctx, req))
	if err != nil {
		return nil, VMInfo{}, err
	}
	info := infoOf(vm)
	msg := fmt.Sprintf("created VM %s (%s, image %s, %d vCPUs, %d MiB)", info.Name, info.State, info.Image, info.CPUs, info.MemoryMiB)
	if info.Boot != "" {
		msg += ", " + info.Boot + " boot"
	}
	return text(msg + "; remove it with vm_rm when done"), info, nil
}

// ExecInput is vm_exec's input.
type ExecInput struct {
	Name           string   `json:"name" jsonschema:"the VM to run in (vm_ls lists them)"`
	Argv           []string `json:"argv,omitempty" jsonschema:"the command and its arguments, run without a shell, like [\"ls\", \"-l\", \"/root\"]; give argv or shell"`
	Shell          string   `json:"shell,omitempty" jsonschema:"a shell script run with sh -c, instead of argv"`
	Stdin          string   `json:"stdin,omitempty" jsonschema:"text given to the command on stdin (at most 1 MiB; default: none)"`
	Workdir        string   `json:"workdir,omitempty" jsonschema:"absolute working directory in the VM (default /root)"`
	TimeoutSeconds float64  `json:"timeout_seconds,omitempty" jsonschema:"kill the command after this many seconds (default 60, at most 1800)"`
}

func (t *tools) vmExec(ctx context.Context, _ *mcp.CallToolRequest, in ExecInput) (*mcp.CallToolResult, ExecOutput, error) {
	if err := checkName("name", in.Name); err != nil {
		return nil, ExecOutput{}, err
	}
	argv, timeout, workdir, err := checkCommand(in.Argv, in.Shell, in.TimeoutSeconds, in.Workdir, in.Stdin)
	if err != nil {
		return nil, ExecOutput{}, err
	}
	d, err := t.daemon(ctx)
	if err != nil {
		return nil, ExecOutput{}, err
	}
	out, err := guestExec(ctx, d, api.VMExecRequest{Name: in.Name, Argv: argv, Cwd: workdir}, in.Stdin, timeout, MaxOutputBytes)
	if err != nil {
		return nil, ExecOutput{}, err
	}
	return text(out.summary()), out, nil
}

// guestTool runs a tool by name, or busybox's applet of it on minimal images that have
// busybox without that link. Paths and values travel as arguments ($1...), never as shell
// text.
const guestTool = `t() { if command -v "$1" >/dev/null 2>&1; then "$@"; else busybox "$@"; fi; }
`

// Exit codes of the file scripts for the failures they name.
const (
	codeNoFile     = 90
	codeNotRegular = 91
	codeNoDir      = 92
)

// readScript prints the file's size on a line, then at most $1 bytes of it.
var readScript = guestTool + fmt.Sprintf(`[ -e "$2" ] || exit %d
[ -f "$2" ] || exit %d
t stat -L -c %%s "$2" 2>/dev/null || echo -1
t head -c "$1" "$2"
`, codeNoFile, codeNotRegular)

// writeScript makes the file with its mode, then fills it from stdin.
var writeScript = guestTool + fmt.Sprintf(`if [ "$3" = 1 ]; then t mkdir -p "$4" || exit 1; fi
[ -d "$4" ] || exit %d
[ ! -d "$1" ] || exit %d
: > "$1" || exit 1
t chmod "$2" "$1" || exit 1
t cat > "$1"
`, codeNoDir, codeNotRegular)

// ReadInput is vm_read_file's input.
type ReadInput struct {
	Name     string `json:"name" jsonschema:"the VM (vm_ls lists them)"`
	Path     string `json:"path" jsonschema:"absolute path of a regular file in the VM"`
	MaxBytes int    `json:"max_bytes,omitempty" jsonschema:"read at most this many bytes (default 65536, at most 1048576)"`
}

// ReadOutput is a file read from a VM.
type ReadOutput struct {
	VM        string `json:"vm"`
	Path      string `json:"path"`
	Content   string `json:"content" jsonschema:"the file's bytes: text, or base64 when base64 is set"`
	Base64    bool   `json:"base64,omitempty" jsonschema:"content is base64 (the file is not UTF-8 text)"`
	Bytes     int    `json:"bytes" jsonschema:"bytes returned"`
	SizeBytes int64  `json:"size_bytes" jsonschema:"the file's size (-1 when unknown)"`
	Truncated bool   `json:"truncated,omitempty" jsonschema:"the file is longer than what was returned"`
}

func (t *tools) vmReadFile(ctx context.Context, _ *mcp.CallToolRequest, in ReadInput) (*mcp.CallToolResult, ReadOutput, error) {
	if err := checkName("name", in.Name); err != nil {
		return nil, ReadOutput{}, err
	}
	p, err := checkGuestPath(in.Path)
	if err != nil {
		return nil, ReadOutput{}, err
	}
	limit := in.MaxBytes
	switch {
	case limit == 0:
		limit = DefaultReadBytes
	case limit < 0 || limit > MaxReadBytes:
		return nil, ReadOutput{}, fmt.Errorf("max_bytes %d: give 1 to %d (default %d)", limit, MaxReadBytes, DefaultReadBytes)
	}
	d, err := t.daemon(ctx)
	if err != nil {
		return nil, ReadOutput{}, err
	}
	argv := []string{"sh", "-c", readScript, "sh", strconv.Itoa(limit + 1), p}
	res, stdout, err := fileExec(ctx, d, in.Name, argv, "", limit+64)
	if err != nil {
		return nil, ReadOutput{}, err
	}
	if err := fileError(res, in.Name, p, "read"); err != nil {
		return nil, ReadOutput{}, err
	}
	line, body, ok := bytes.Cut(stdout, []byte("\n"))
	if !ok {
		return nil, ReadOutput{}, fmt.Errorf("read %s in VM %s: the guest's answer has no size line", p, in.Name)
	}
	out := ReadOutput{VM: in.Name, Path: p, SizeBytes: -1}
	if n, err := strconv.ParseInt(strings.TrimSpace(string(line)), 10, 64); err == nil && n >= 0 {
		out.SizeBytes = n
	}
	if len(body) > limit {
		body, out.Truncated = body[:limit], true
	}
	if out.Truncated {
		body = cutRune(body)
	}
	out.Content, out.Base64 = encode(body)
	out.Bytes = len(body)
	head := fmt.Sprintf("%s in VM %s: %d bytes", p, in.Name, out.Bytes)
	if out.Truncated {
		head += fmt.Sprintf(" of %d [truncated]", out.SizeBytes)
	}
	if out.Base64 {
		head += " (base64: not UTF-8 text)"
	}
	return text(head + "\n" + out.Content), out, nil
}

// WriteInput is vm_write_file's input.
type WriteInput struct {
	Name        string `json:"name" jsonschema:"the VM (vm_ls lists them)"`
	Path        string `json:"path" jsonschema:"absolute path of the file in the VM"`
	Content     string `json:"content" jsonschema:"the file's content: text, or base64 when base64 is set (at most 4 MiB decoded)"`
	Base64      bool   `json:"base64,omitempty" jsonschema:"content is base64-encoded"`
	Mode        string `json:"mode,omitempty" jsonschema:"octal permissions, like 0644 or 0755 (default 0644)"`
	MakeParents bool   `json:"make_parents,omitempty" jsonschema:"create missing parent directories"`
}

// WriteOutput is a file written in a VM.
type WriteOutput struct {
	VM    string `json:"vm"`
	Path  string `json:"path"`
	Bytes int    `json:"bytes"`
	Mode  string `json:"mode"`
}

func (t *tools) vmWriteFile(ctx context.Context, _ *mcp.CallToolRequest, in WriteInput) (*mcp.CallToolResult, WriteOutput, error) {
	if err := checkName("name", in.Name); err != nil {
		return nil, WriteOutput{}, err
	}
	p, err := checkGuestPath(in.Path)
	if err != nil {
		return nil, WriteOutput{}, err
	}
	mode, err := parseMode(in.Mode)
	if err != nil {
		return nil, WriteOutput{}, err
	}
	content := []byte(in.Content)
	if in.Base64 {
		if content, err = base64.StdEncoding.DecodeString(in.Content); err != nil {
			return nil, WriteOutput{}, fmt.Errorf("content is not valid base64 (%v): send base64 false for plain text", err)
		}
	}
	if len(content) > MaxWriteBytes {
		return nil, WriteOutput{}, fmt.Errorf("content is %d bytes: at most %d per call (write a larger file in parts, or build it in the VM)", len(content), MaxWriteBytes)
	}
	d, err := t.daemon(ctx)
	if err != nil {
		return nil, WriteOutput{}, err
	}
	parents := "0"
	if in.MakeParents {
		parents = "1"
	}
	modeText := fmt.Sprintf("%04o", mode)
	argv := []string{"sh", "-c", writeScript, "sh", p, modeText, parents, parentDir(p)}
	res, _, err := fileExec(ctx, d, in.Name, argv, string(content), 0)
	if err != nil {
		return nil, WriteOutput{}, err
	}
	if err := fileError(res, in.Name, p, "write"); err != nil {
		return nil, WriteOutput{}, err
	}
	out := WriteOutput{VM: in.Name, Path: p, Bytes: len(content), Mode: modeText}
	return text(fmt.Sprintf("wrote %d bytes to %s in VM %s (mode %s)", out.Bytes, p, in.Name, modeText)), out, nil
}

func parentDir(p string) string {
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return "/"
	}
	return p[:i]
}

// fileExec runs a file script, keeping maxOut bytes of its stdout raw.
func fileExec(ctx context.Context, d Daemon, vm string, argv []string, stdin string, maxOut int) (ExecOutput, []byte, error) {
	ectx, cancel := context.WithTimeoutCause(ctx, FileTimeout, errTimedOut)
	defer cancel()
	conn, err := d.ExecStream(ectx, api.VMExecRequest{Name: vm, Argv: argv})
	if err != nil {
		return ExecOutput{}, nil, fmt.Errorf("VM %s: %w", vm, err)
	}
	stdout, stderr := &capped{max: maxOut}, &capped{max: 2 << 10}
	s := attach(ectx, conn, stdin, stdout, stderr)
	st, err := s.Wait()
	s.Close()
	if err != nil && st.Code < 0 {
		if ctx.Err() == nil && errors.Is(context.Cause(ectx), errTimedOut) {
			return ExecOutput{}, nil, fmt.Errorf("VM %s: the file operation did not finish within %s", vm, FileTimeout)
		}
		return ExecOutput{}, nil, fmt.Errorf("VM %s: %w (is the VM running? vm_ls shows its state)", vm, err)
	}
	res := ExecOutput{VM: vm, ExitCode: st.Code}
	res.Stderr, _, _ = output(stderr)
	return res, stdout.buf.Bytes(), nil
}

// fileError says why a file script failed.
func fileError(res ExecOutput, vm, p, verb string) error {
	switch res.ExitCode {
	case 0:
		return nil
	case codeNoFile:
		return fmt.Errorf("%s %s in VM %s: no such file", verb, p, vm)
	case codeNotRegular:
		return fmt.Errorf("%s %s in VM %s: not a regular file (a directory or a device)", verb, p, vm)
	case codeNoDir:
		return fmt.Errorf("%s %s in VM %s: its directory does not exist (set make_parents to create it)", verb, p, vm)
	}
	msg := strings.TrimSpace(res.Stderr)
	if len(msg) > 512 {
		msg = msg[:512] + "..."
	}
	return fmt.Errorf("%s %s in VM %s failed (exit code %d): %s", verb, p, vm, res.ExitCode, msg)
}

// ListOutput is vm_ls's output.
type ListOutput struct {
	VMs []VMInfo `json:"vms"`
}

func (t *tools) vmList(ctx context.Context, _ *mcp.CallToolRequest, _ struct{}) (*mcp.CallToolResult, ListOutput, error) {
	d, err := t.daemon(ctx)
	if err != nil {
		return nil, ListOutput{}, err
	}
	vms, err := d.VMs(ctx)
	if err != nil {
		return nil, ListOutput{}, fmt.Errorf("list VMs: %w", err)
	}
	out := ListOutput{VMs: []VMInfo{}}
	var b strings.Builder
	for _, vm := range vms {
		i := infoOf(vm)
		out.VMs = append(out.VMs, i)
		fmt.Fprintf(&b, "%s\t%s\timage %s\t%d vCPUs\t%d MiB\t%s\n", i.Name, i.State, i.Image, i.CPUs, i.MemoryMiB, i.IP)
	}
	if len(vms) == 0 {
		b.WriteString("no VMs\n")
	}
	return text(b.String()), out, nil
}

// RemoveInput is vm_rm's input.
type RemoveInput struct {
	Name  string `json:"name" jsonschema:"the VM to remove"`
	Force bool   `json:"force,omitempty" jsonschema:"remove it even when it runs (it is killed)"`
}

// RemoveOutput is vm_rm's output.
type RemoveOutput struct {
	VM      string `json:"vm"`
	Removed bool   `json:"removed"`
}

func (t *tools) vmRemove(ctx context.Context, _ *mcp.CallToolRequest, in RemoveInput) (*mcp.CallToolResult, RemoveOutput, error) {
	if err := checkName("name", in.Name); err != nil {
		return nil, RemoveOutput{}, err
	}
	d, err := t.daemon(ctx)
	if err != nil {
		return nil, RemoveOutput{}, err
	}
	if err := d.RemoveVM(ctx, api.VMRemoveRequest{Name: in.Name, Force: in.Force}); err != nil {
		return nil, RemoveOutput{}, fmt.Errorf("remove VM %s: %w", in.Name, err)
	}
	return text("removed VM " + in.Name), RemoveOutput{VM: in.Name, Removed: true}, nil
}

// ForkInput is vm_fork's input.
type ForkInput struct {
	Name     string   `json:"name" jsonschema:"the running VM to fork"`
	NewNames []string `json:"new_names" jsonschema:"names of the clones (1 to 8), each 1-32 lowercase letters, digits and single '-', starting with a letter"`
	Snapshot string   `json:"snapshot,omitempty" jsonschema:"name of the snapshot to take (default fork-NAME-<random>)"`
}

// ForkOutput is vm_fork's output.
type ForkOutput struct {
	Snapshot string   `json:"snapshot" jsonschema:"the snapshot the clones were made from (kept)"`
	Clones   []VMInfo `json:"clones" jsonschema:"the clones that started"`
	Failed   []string `json:"failed" jsonschema:"the clones that did not start, with why"`
	Seconds  float64  `json:"seconds"`
}

func (t *tools) vmFork(ctx context.Context, _ *mcp.CallToolRequest, in ForkInput) (*mcp.CallToolResult, ForkOutput, error) {
	if err := checkName("name", in.Name); err != nil {
		return nil, ForkOutput{}, err
	}
	if len(in.NewNames) == 0 || len(in.NewNames) > MaxForks {
		return nil, ForkOutput{}, fmt.Errorf("new_names has %d names: give 1 to %d", len(in.NewNames), MaxForks)
	}
	seen := map[string]bool{in.Name: true}
	for i, n := range in.NewNames {
		if err := checkName(fmt.Sprintf("new_names[%d]", i), n); err != nil {
			return nil, ForkOutput{}, err
		}
		if seen[n] {
			return nil, ForkOutput{}, fmt.Errorf("new_names[%d] %q is used twice (or is the VM forked)", i, n)
		}
		seen[n] = true
	}
	snap := in.Snapshot
	if snap == "" {
		snap = "fork-" + in.Name
		if len(snap) > 27 {
			snap = strings.TrimRight(snap[:27], "-")
		}
		snap += "-" + strconv.FormatInt(time.Now().UnixNano()&0xffff, 16)
	} else if err := checkName("snapshot", snap); err != nil {
		return nil, ForkOutput{}, err
	}
	d, err := t.daemon(ctx)
	if err != nil {
		return nil, ForkOutput{}, err
	}
	began := time.Now()
	cctx, cancel := context.WithTimeout(ctx, CreateTimeout)
	defer cancel()
	s, err := d.CreateSnapshot(cctx, api.SnapshotCreateRequest{VM: in.Name, Snapshot: snap}, nil)
	if err != nil {
		return nil, ForkOutput{}, fmt.Errorf("snapshot VM %s: %w", in.Name, err)
	}
	vms := make([]api.VM, len(in.NewNames))
	errs := make([]error, len(in.NewNames))
	var wg sync.WaitGroup
	for i, n := range in.NewNames {
		wg.Go(func() {
			vms[i], errs[i] = d.CreateVM(cctx, api.VMCreateRequest{Name: n, From: s.Name, Start: true, SkipSSHWait: true}, nil)
		})
	}
	wg.Wait()
	out := ForkOutput{Snapshot: s.Name, Clones: []VMInfo{}, Failed: []string{}, Seconds: time.Since(began).Seconds()}
	var b strings.Builder
	for i, n := range in.NewNames {
		if errs[i] != nil {
			out.Failed = append(out.Failed, fmt.Sprintf("%s: %v", n, errs[i]))
			continue
		}
		out.Clones = append(out.Clones, infoOf(vms[i]))
		fmt.Fprintf(&b, "forked %s from %s: %s\n", n, in.Name, vms[i].State)
	}
	if len(out.Clones) == 0 {
		return nil, out, fmt.Errorf("no clone of %s started (snapshot %s is kept):\n  %s", in.Name, s.Name, strings.Join(out.Failed, "\n  "))
	}
	for _, f := range out.Failed {
		fmt.Fprintf(&b, "FAILED %s\n", f)
	}
	fmt.Fprintf(&b, "snapshot %s kept; %d clones in %.1f s\n", s.Name, len(out.Clones), out.Seconds)
	return text(b.String()), out, nil
}
