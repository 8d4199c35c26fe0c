// Package sshhandoff hands an interactive or one-shot session in a VM to SSH: the system
// `ssh` when there is one (the user's terminal, escapes and habits), otherwise an
// in-process client (golang.org/x/crypto/ssh). Either way the VM's pinned host key is
// required and nothing prompts: banger's own key, banger's own known_hosts, BatchMode.
package sshhandoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/internal/shellquote"
	"github.com/banger-vm/banger/internal/sshclient"
	"github.com/banger-vm/banger/internal/termutil"
)

// Target is a VM's sshd and how to reach it.
type Target struct {
	User       string // default "root"
	Alias      string // the name its host key is pinned under
	KeyPath    string // banger's private user key
	KnownHosts string // banger's known_hosts
	// ProxyCommand is the argv that connects stdin/stdout to the guest's port 22 (banger
	// vm ssh-proxy ID), for the system ssh.
	ProxyCommand []string
	// Dial connects to the guest's port 22, for the in-process client.
	Dial func(ctx context.Context) (io.ReadWriteCloser, error)
	// Signer and HostKeyCallback load banger's key and pins, for the in-process client.
	Signer          func() (ssh.Signer, error)
	HostKeyCallback func() (ssh.HostKeyCallback, error)
}

// Session is what to run.
type Session struct {
	Argv []string // remote command; empty means a login shell
	TTY  bool     // allocate a terminal
	// SSHPath is the ssh client: "" looks "ssh" up on PATH, "-" forces the in-process client.
	SSHPath string
	Stdin   io.Reader
	Stdout  io.Writer
	Stderr  io.Writer
}

// Run runs the session and returns the remote exit code (255 when SSH itself failed, as
// ssh does).
func Run(ctx context.Context, t Target, s Session) (int, error) {
	if t.User == "" {
		t.User = "root"
	}
	path := s.SSHPath
	if path == "" {
		path, _ = exec.LookPath("ssh")
	}
	if path != "" && path != "-" {
		return runSystem(path, t, s)
	}
	return runBuiltin(ctx, t, s)
}

// SystemArgs is the argv (without the binary) that runSystem gives ssh.
func SystemArgs(t Target, s Session) []string {
	args := []string{
		"-F", "/dev/null", // the user's config must not add prompts or other hosts' settings
		"-i", t.KeyPath,
		"-o", "IdentitiesOnly=yes",
		"-o", "BatchMode=yes",
		"-o", "UserKnownHostsFile=" + t.KnownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias=" + t.Alias,
		"-o", "CheckHostIP=no",
		"-o", "UpdateHostKeys=no",
		"-o", "LogLevel=ERROR",
		"-o", "ProxyCommand=" + proxyCommand(t.ProxyCommand),
	}
	if s.TTY {
		args = append(args, "-t")
	} else {
		args = append(args, "-T")
	}
	args = append(args, t.User+"@"+t.Alias)
	if len(s.Argv) > 0 {
		args = append(args, "--", shellquote.Join(s.Argv))
	}
	return args
}

// proxyCommand quotes argv for the shell ssh runs ProxyCommand with; '%' is ssh's token
// character and is doubled.
func proxyCommand(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = strings.ReplaceAll(shellquote.Quote(a), "%", "%%")
	}
	return strings.Join(q, " ")
}

func runSystem(path string, t Target, s Session) (int, error) {
	cmd := exec.Command(path, SystemArgs(t, s)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s.Stdin, s.Stdout, s.Stderr
	// ssh owns the terminal now: ^C and friends are for it (and the remote side), not for
	// us. Catching (rather than ignoring) keeps ssh's own handlers at their defaults.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, os.Interrupt, syscall.SIGQUIT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), nil
	}
	if err != nil {
		return 255, fmt.Errorf("run %s: %w", path, err)
	}
	return 0, nil
}

func runBuiltin(ctx context.Context, t Target, s Session) (int, error) {
	signer, err := t.Signer()
	if err != nil {
		return 255, err
	}
	hostKeys, err := t.HostKeyCallback()
	if err != nil {
		return 255, err
	}
	raw, err := t.Dial(ctx)
	if err != nil {
		return 255, err
	}
	client, err := sshclient.Dial(ctx, raw, t.User, t.Alias, signer, hostKeys)
	if err != nil {
		return 255, err
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return 255, fmt.Errorf("ssh session: %w", err)
	}
	defer sess.Close()
	sess.Stdin, sess.Stdout, sess.Stderr = s.Stdin, s.Stdout, s.Stderr
	if s.TTY {
		rows, cols := termutil.Size(s.Stdout)
		termName := os.Getenv("TERM")
		if termName == "" {
			termName = "xterm-256color"
		}
		if err := sess.RequestPty(termName, int(rows), int(cols), ssh.TerminalModes{ssh.ECHO: 1}); err != nil {
			return 255, fmt.Errorf("ssh: request a terminal: %w", err)
		}
		restore, err := termutil.Raw(s.Stdin)
		if err != nil {
			return 255, err
		}
		defer restore()
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		termutil.WatchResize(wctx, s.Stdout, func(r, c uint16) { _ = sess.WindowChange(int(r), int(c)) })
	}
	if len(s.Argv) > 0 {
		err = sess.Start(shellquote.Join(s.Argv))
	} else {
		err = sess.Shell()
	}
	if err != nil {
		return 255, fmt.Errorf("ssh: start: %w", err)
	}
	code, err := sshclient.ExitCode(sess.Wait())
	if err != nil {
		return 255, err
	}
	return code, nil
}
