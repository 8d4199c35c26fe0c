package daemon

// The guest's sshd during a start: whether to wait for it, and how.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/api"
)

// needSSHWait decides whether the start waits for sshd, and notes why not when it doesn't.
func (d *Daemon) needSSHWait(ctx context.Context, b *boot) bool {
	b.rec.SSHReady, b.rec.SSHNote, b.rec.SSHAbsent = false, "", false
	_, serr := b.m.Agent().Stat(ctx, sshdPath)
	switch {
	case b.rec.SSHHostKey == "":
		b.rec.SSHNote, b.rec.SSHAbsent = "created before banger managed SSH keys: recreate the VM to use `vm ssh`", true
	case agent.IsNotFound(serr):
		b.rec.SSHNote, b.rec.SSHAbsent = "the image has no sshd ("+sshdPath+"): use `banger vm exec`", true
	case b.profile.ssh == sshSkip:
		b.rec.SSHNote = "sshd was not waited for (the VM was started to run a command through the agent)"
	default:
		// Set now; a tolerated failure clears it.
		b.rec.SSHReady = true
		return true
	}
	return false
}

// toleratedSSHFailure: the VM itself is up and its agent answers, so a disabled or broken
// sshd must not make it unstartable (the user repairs it with `vm exec`), unless the boot
// needs SSH.
func (d *Daemon) toleratedSSHFailure(ctx context.Context, b *boot, err error) bool {
	b.rec.SSHReady = false
	if b.profile.ssh == sshRequire || ctx.Err() != nil {
		return false
	}
	b.rec.SSHNote = "sshd did not answer on port 22 (" + firstLine(err.Error()) + "): use `banger vm exec`"
	b.progress(api.Progress{Stage: stageSSH, Message: "no answer: the VM runs without SSH"})
	d.log.Warn("VM started without SSH", "vm", b.vm.Name, "err", err)
	return true
}

// sshdPath is where images keep OpenSSH's server; without it a VM has no SSH.
const sshdPath = "/usr/sbin/sshd"

// waitSSH waits until the guest's sshd sends its banner on port 22, reached through the
// agent so it works with or without a guest network.
func waitSSH(ctx context.Context, a *agentclient.Client) error {
	var last error
	for {
		last = probeSSH(ctx, a)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last attempt: %v)", context.Cause(ctx), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// probeSSH connects to the guest's port 22 once and reads the SSH banner.
func probeSSH(ctx context.Context, a *agentclient.Client) error {
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := a.Forward(pctx, 22)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(pctx, func() { conn.Close() })
	defer stop()
	defer conn.Close()
	line, err := bufio.NewReader(io.LimitReader(conn, 512)).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read the SSH banner: %w", err)
	}
	if !strings.HasPrefix(line, "SSH-") {
		return fmt.Errorf("port 22 answered %q, not an SSH banner", strings.TrimSpace(line))
	}
	return nil
}
