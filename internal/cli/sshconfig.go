package cli

// `banger vm ssh-config`: OpenSSH configuration for banger's VMs, so that `ssh NAME.banger`,
// scp, rsync, git over ssh and editors (VS Code Remote-SSH) reach a VM with banger's key,
// its pinned host key and the agent ProxyCommand, with no prompts.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/cli/sshhandoff"
	"github.com/banger-vm/banger/internal/sshkeys"
	"github.com/banger-vm/banger/internal/system"
)

// sshConfigFileName is the file --install writes in banger's config dir.
const sshConfigFileName = "ssh_config"

// maxUserSSHConfig bounds the ~/.ssh/config --install reads and rewrites.
const maxUserSSHConfig = 4 << 20

func (a *app) vmSSHConfigCommand() *cobra.Command {
	var install bool
	cmd := &cobra.Command{
		Use:   "ssh-config [NAME...]",
		Short: "Print an OpenSSH config for VMs (ssh NAME.banger); --install adds it to ~/.ssh/config",
		Long: `Print an OpenSSH config Host block per VM (all VMs without NAME), using banger's key,
banger's pinned known_hosts and the agent ProxyCommand, so that ssh, scp, rsync, git over
ssh and editors reach a VM as NAME.banger with no prompts:

  banger vm ssh-config dev >> ~/.ssh/config
  ssh dev.banger

--install instead writes one block for every VM, current and future (Host *.banger; the
VM's host key comes from banger through KnownHostsCommand, OpenSSH 8.5 or newer), to
banger's config dir, and adds an Include of it at the top of ~/.ssh/config, once. Running
it again changes nothing; delete the Include line to undo it.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, _, err := a.load(); err != nil {
				return err
			}
			if install {
				if len(args) > 0 {
					return errors.New("--install covers every VM: pass no NAME")
				}
				return a.installSSHConfig()
			}
			return a.printSSHConfig(cmd, args)
		},
	}
	cmd.Flags().BoolVar(&install, "install", false, "write a config for every VM and Include it from ~/.ssh/config (idempotent)")
	return cmd
}

// proxyArgv is the banger command line that ssh's commands start.
func (a *app) proxyArgv(sub ...string) []string {
	argv := []string{a.env.Executable}
	if a.configFlag != "" {
		argv = append(argv, "--config", a.configFlag)
	}
	return append(argv, sub...)
}

func (a *app) printSSHConfig(cmd *cobra.Command, names []string) error {
	c, err := a.ensureDaemon(cmdContext(cmd), false)
	if err != nil {
		return err
	}
	var vms []api.VM
	if len(names) == 0 {
		if vms, err = c.VMs(cmdContext(cmd)); err != nil {
			return err
		}
	}
	for _, n := range names {
		vm, err := c.InspectVM(cmdContext(cmd), n)
		if err != nil {
			return err
		}
		vms = append(vms, vm)
	}
	keys := sshkeys.New(a.layout.SSHDir).WithUserKey(a.cfg.Runtime.SSHKeyPath)
	var out bytes.Buffer
	for _, vm := range vms {
		if vm.SSH.HostKeyAlias == "" {
			fmt.Fprintf(&out, "# VM %s has no banger-managed SSH\n\n", vm.Name)
			continue
		}
		b, err := sshhandoff.ConfigBlock(vm.Name+sshhandoff.HostSuffix, sshhandoff.Target{Alias: vm.SSH.HostKeyAlias,
			KeyPath: keys.UserKeyPath(), KnownHosts: keys.KnownHostsPath(), ProxyCommand: a.proxyArgv("vm", "ssh-proxy", vm.ID)})
		if err != nil {
			return fmt.Errorf("VM %s: %w", vm.Name, err)
		}
		fmt.Fprintf(&out, "# banger VM %s: ssh %s%s\n%s\n", vm.Name, vm.Name, sshhandoff.HostSuffix, b)
	}
	_, err = a.env.Stdout.Write(out.Bytes())
	return err
}

// installSSHConfig writes the wildcard config and includes it from ~/.ssh/config once.
func (a *app) installSSHConfig() error {
	keys := sshkeys.New(a.layout.SSHDir).WithUserKey(a.cfg.Runtime.SSHKeyPath)
	block, err := sshhandoff.WildcardBlock(keys.UserKeyPath(), a.proxyArgv("vm", "ssh-proxy"), a.proxyArgv("vm", "ssh-known-hosts"))
	if err != nil {
		return err
	}
	own := filepath.Join(a.layout.ConfigDir, sshConfigFileName)
	if err := os.MkdirAll(a.layout.ConfigDir, 0o700); err != nil {
		return err
	}
	body := "# Written by `banger vm ssh-config --install`: ssh NAME.banger reaches banger's VM NAME.\n" + block
	if err := system.WriteFileAtomic(own, []byte(body), 0o600); err != nil {
		return err
	}
	home := a.env.Paths.Home
	if !filepath.IsAbs(home) {
		return fmt.Errorf("no home directory ($HOME) to find ~/.ssh/config in; add `Include %s` to it yourself", own)
	}
	include, err := includeLine(own)
	if err != nil {
		return err
	}
	userCfg := filepath.Join(home, ".ssh", "config")
	changed, err := addInclude(userCfg, include)
	if err != nil {
		return err
	}
	if changed {
		fmt.Fprintf(a.env.Stdout, "added `%s` to %s; wrote %s\nssh NAME.banger now reaches VM NAME\n", include, userCfg, own)
	} else {
		fmt.Fprintf(a.env.Stdout, "%s already includes %s (rewritten); ssh NAME.banger reaches VM NAME\n", userCfg, own)
	}
	return nil
}

// includeLine is the Include directive for path, quoted for ssh_config.
func includeLine(path string) (string, error) {
	if strings.ContainsAny(path, "\"\n\r") {
		return "", fmt.Errorf("banger's config dir %q cannot be named in an ssh config", path)
	}
	return `Include "` + path + `"`, nil
}

// addInclude puts include at the top of the ssh config at path (an Include after a Host
// line would belong to that host), unless a line already says it. It follows a symlinked
// config to its file and keeps that file's mode.
func addInclude(path, include string) (bool, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, err
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	var old []byte
	mode := fs.FileMode(0o600)
	f, err := os.Open(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return false, err
	default:
		fi, err := f.Stat()
		if err == nil && !fi.Mode().IsRegular() {
			err = fmt.Errorf("%s is not a regular file", path)
		}
		if err == nil {
			mode = fi.Mode().Perm()
			old, err = readAllLimited(f, maxUserSSHConfig)
		}
		f.Close()
		if err != nil {
			return false, err
		}
	}
	for _, line := range strings.Split(string(old), "\n") {
		if strings.TrimSpace(line) == include {
			return false, nil
		}
	}
	updated := "# Added by `banger vm ssh-config --install`.\n" + include + "\n\n" + string(old)
	return true, system.WriteFileAtomic(path, []byte(updated), mode)
}

func readAllLimited(f *os.File, limit int64) ([]byte, error) {
	var b bytes.Buffer
	n, err := b.ReadFrom(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes: add the Include yourself", f.Name(), limit)
	}
	return b.Bytes(), nil
}

// vmSSHKnownHostsCommand is ssh's KnownHostsCommand: it prints the pinned host key of the
// VM that host (NAME.banger) names, as a known_hosts line for that name.
func (a *app) vmSSHKnownHostsCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "ssh-known-hosts HOST",
		Short:  "Print the pinned host key of VM HOST (NAME.banger) as a known_hosts line (ssh KnownHostsCommand)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			host := args[0]
			name := strings.TrimSuffix(host, sshhandoff.HostSuffix)
			if name == host || name == "" {
				return nil // not a banger host: no keys from us
			}
			c, err := a.ensureDaemon(cmdContext(cmd), false)
			if err != nil {
				return err
			}
			vm, err := c.InspectVM(cmdContext(cmd), name)
			if err != nil {
				return err
			}
			pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(vm.SSH.HostKey))
			if err != nil {
				return fmt.Errorf("VM %s has no usable pinned host key: %v", vm.Name, err)
			}
			// ssh checks the key under the name it asked for; the name is a VM's (checked by
			// the lookup), so it is safe in a known_hosts line.
			fmt.Fprintf(a.env.Stdout, "%s %s", vm.Name+sshhandoff.HostSuffix, ssh.MarshalAuthorizedKey(pub))
			return nil
		},
	}
}
