package cli

// A daemon on another machine: --host / BANGER_HOST=ssh://[user@]host[:port] makes every
// command that talks to the daemon go through `ssh HOST -- banger daemon proxy`
// (internal/sshtransport); commands that act on this machine refuse.

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/sshtransport"
)

// remote returns the transport to the remote daemon, or nil when the local one is meant.
func (a *app) remote() (*sshtransport.Transport, error) {
	if a.forceLocal {
		return nil, nil
	}
	raw := a.hostFlag
	from := "--host"
	if raw == "" {
		raw, from = a.getenv("BANGER_HOST"), "BANGER_HOST"
	}
	if raw == "" {
		return nil, nil
	}
	h, err := sshtransport.ParseHost(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", from, err)
	}
	if b := a.getenv("BANGER_REMOTE_BANGER"); b != "" && h.Banger == sshtransport.DefaultRemoteBanger {
		if err := sshtransport.CheckRemoteBanger(b); err != nil {
			return nil, fmt.Errorf("BANGER_REMOTE_BANGER: %w", err)
		}
		h.Banger = b
	}
	// The user's own options for this connection (-i KEY, -F CONFIG, -o ...), split on
	// blanks: a value with spaces belongs in an ssh config file given with -F.
	return &sshtransport.Transport{Host: h, Args: strings.Fields(a.getenv("BANGER_HOST_SSH_ARGS"))}, nil
}

func (a *app) getenv(k string) string {
	if a.env.Getenv == nil {
		return ""
	}
	return a.env.Getenv(k)
}

// remoteClient is an API client whose connections are ssh bridges to t's daemon: one per
// invocation, so that its kept-alive connections (ssh processes) are shared.
func (a *app) remoteClient(t sshtransport.Transport) *client.Client {
	if len(a.remoteClients) > 0 {
		return a.remoteClients[0]
	}
	c, _ := client.New(client.WithDialer(t.Dial), client.WithTarget(t.Host.String()), client.WithClientVersion(a.version))
	a.remoteClients = append(a.remoteClients, c)
	return c
}

// checkRemote refuses, with a remote host set, the commands that act on this machine or
// hand the daemon paths of this machine, before they do anything.
func (a *app) checkRemote(cmd *cobra.Command) error {
	path := cmd.CommandPath()
	for _, local := range []string{"banger daemon proxy", "banger helper", "banger version", "banger config", "banger completion", "banger help", "banger update"} {
		if path == local || strings.HasPrefix(path, local+" ") {
			// Always this machine's (the proxy is the remote end; the helper is root's), or
			// about this CLI: a bad BANGER_HOST must not stop them.
			return nil
		}
	}
	t, err := a.remote()
	if err != nil || t == nil {
		return err
	}
	h := t.Host.String()
	refuse := func(what, instead string) error {
		return &api.Error{Code: api.CodeBadRequest, Message: fmt.Sprintf("%s, but the daemon in use is on %s (BANGER_HOST or --host)", what, h),
			Hint: instead}
	}
	flag := func(name string) bool { f := cmd.Flags().Lookup(name); return f != nil && f.Changed }
	switch path {
	case "banger daemon", "banger daemon start", "banger daemon stop", "banger daemon restart":
		return refuse("`"+path+"` manages the daemon of this machine",
			"unset BANGER_HOST (or drop --host) to manage the local daemon; the remote one is started on demand, or run `banger daemon ...` on "+t.Host.Name)
	case "banger image import", "banger image kernel import", "banger image build":
		return refuse("`"+path+"` names files on this machine, which the remote daemon cannot read",
			"copy the files to "+t.Host.Name+" and run the command there")
	case "banger vm ssh-config":
		return refuse("`vm ssh-config` writes a config around this machine's key and daemon",
			"use `banger vm ssh NAME`, which works through the remote host")
	case "banger vm create", "banger vm run":
		if flag("publish") {
			return refuse("-p would listen on the daemon's machine",
				"forward a port to this machine with `banger vm port-forward NAME [LOCALPORT:]GUESTPORT` once the VM runs")
		}
		if flag("mount") {
			return refuse("--mount shares folders of the daemon's machine", "run the command on "+t.Host.Name+" to share its folders")
		}
		if flag("publish-all") {
			return refuse("--publish-all would listen on the daemon's machine",
				"forward the ports you need to this machine with `banger vm port-forward NAME PORT...` once the VM runs")
		}
	case "banger bench mount":
		return refuse("`bench mount` shares a folder it makes on this machine, which the remote daemon cannot reach",
			"run `banger bench mount` on "+t.Host.Name)
	}
	return nil
}

// remoteSSH runs `banger vm ssh` on the remote host, over ssh with the terminal handed
// over: the VM's key and pinned host key live there, and nothing leaves that machine.
func (a *app) remoteSSH(t sshtransport.Transport, name string, argv []string, tty bool, sshPath string, stdin io.Reader) error {
	remote := []string{t.Host.Banger, "vm", "ssh"}
	if tty {
		remote = append(remote, "-t")
	} else {
		remote = append(remote, "-T")
	}
	if sshPath != "" {
		remote = append(remote, "--ssh", sshPath)
	}
	if strings.HasPrefix(name, "-") {
		return fmt.Errorf("VM name %q starts with '-'", name)
	}
	remote = append(remote, name)
	if len(argv) > 0 {
		remote = append(append(remote, "--"), argv...)
	}
	code, err := t.Run(remote, tty, stdin, a.rawOut, a.rawErr)
	if err != nil {
		return err
	}
	if code != 0 { // 255 is ssh's own failure, and it said why on stderr
		return &ExitError{Code: code}
	}
	return nil
}
