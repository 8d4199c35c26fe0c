package qemu

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// Sandbox settings (Config.Sandbox).
const (
	SandboxAuto = "auto"
	SandboxOn   = "on"
	SandboxOff  = "off"
)

// sandboxArg is QEMU's seccomp sandbox as banger runs it: on, and also denying the
// obsolete system calls, gaining privileges (setuid and friends), spawning processes
// (fork/exec) and changing resource controls (priorities, affinity, limits).
const sandboxArg = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// sandboxProbeTimeout bounds the probe; QEMU answers in about 0.1 s.
const sandboxProbeTimeout = 10 * time.Second

// SandboxSupported reports whether binary runs under banger's -sandbox setting: it starts
// a machine-less QEMU under it and quits over QMP on stdin. detail says why not.
func SandboxSupported(ctx context.Context, binary string) (ok bool, detail string, err error) {
	ctx, cancel := context.WithTimeout(ctx, sandboxProbeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "-sandbox", sandboxArg,
		"-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "stdio")
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"quit"}` + "\n")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	if ctx.Err() != nil {
		return false, "", fmt.Errorf("qemu sandbox probe: %s did not answer within %s", binary, sandboxProbeTimeout)
	}
	if _, lookErr := exec.LookPath(binary); lookErr != nil {
		return false, "", fmt.Errorf("qemu sandbox probe: %w", lookErr)
	}
	if runErr != nil || !bytes.Contains(out.Bytes(), []byte(`"return"`)) {
		line, _, _ := strings.Cut(strings.TrimSpace(out.String()), "\n")
		return false, fmt.Sprintf("%s -sandbox %s: %v: %s", binary, sandboxArg, runErr, line), nil
	}
	return true, "", nil
}

// useSandbox says whether Start runs QEMU under the sandbox. The probe runs once per
// driver; a probe cut short by ctx is not remembered (the next Start probes again), so a
// hurried caller never turns the sandbox off for later VMs.
func (d *Driver) useSandbox(ctx context.Context, bin string) (bool, error) {
	if d.cfg.Sandbox == SandboxOff {
		return false, nil
	}
	d.sandboxMu.Lock()
	defer d.sandboxMu.Unlock()
	if !d.sandboxProbed {
		ok, detail, err := SandboxSupported(ctx, bin)
		if ctx.Err() != nil {
			return false, fmt.Errorf("qemu sandbox probe: %w", context.Cause(ctx))
		}
		if err != nil {
			detail = err.Error()
		}
		// A probe that cannot run (a broken binary) counts as unsupported: Start then
		// reports QEMU's own words about it.
		d.sandboxProbed, d.sandboxOK, d.sandboxDetail = true, ok && err == nil, detail
	}
	if !d.sandboxOK && d.cfg.Sandbox == SandboxOn {
		return false, fmt.Errorf("qemu: sandbox = on, but this QEMU cannot run sandboxed (%s): install a QEMU built with seccomp, or set it to auto", d.sandboxDetail)
	}
	return d.sandboxOK, nil
}
