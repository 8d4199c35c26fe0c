package guestinit

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-vm/banger/internal/shellquote"
)

// runit images (Void, Debian with runit-init) get the agent as a runit service. Its
// service directory lives in /run/banger/sv, like the systemd unit in /run: only a symlink
// in the image's service directory (in the VM's writable layer) points at it, so the image
// itself is not changed and the agent's command line is always this boot's.
const runitServiceDir = bangerRun + "/sv"

// runitSvdirs are the directories runsvdir may watch, in the order they are tried: Void and
// Debian both keep the default runlevel in /etc/runit/runsvdir/default (/var/service and
// /etc/service point there through /run or "current", which only exist once runit runs).
var runitSvdirs = []string{"/etc/runit/runsvdir/default", "/etc/service", "/var/service"}

// isRunit says whether an init path (after symlinks) is runit's.
func isRunit(target string) bool {
	switch filepath.Base(target) {
	case "runit-init", "runit":
		return true
	}
	return false
}

// findRunitInit is the runit-init of an image whose /sbin/init is not there at all.
func findRunitInit(root string) (string, bool) {
	for _, p := range []string{"/sbin/runit-init", "/usr/bin/runit-init", "/lib/runit/runit-init"} {
		if _, err := resolveInRoot(root, p); err == nil {
			return p, true
		}
	}
	return "", false
}

// runitSetup is what setupRunit did, for the console.
type runitSetup struct {
	svdir    string   // the image's service directory (as the guest sees it)
	services []string // service names linked into it
}

// setupRunit prepares root (the new root) so runit starts the agent and sshd: the agent's
// service in runDir (/run/banger/sv as the guest sees it, runDirHost on this side of the
// switch), linked from the image's service directory; sshd's service the image ships (Void
// /etc/sv/sshd, Debian /etc/sv/ssh) enabled when it is not, or banger's own when the image
// has sshd but no service for it.
func setupRunit(root, runDirHost, runDir string, agentArgs []string) (runitSetup, error) {
	var s runitSetup
	svHost := ""
	for _, d := range runitSvdirs {
		p, err := inRoot(root, d)
		if err != nil {
			return s, err
		}
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			s.svdir, svHost = d, p
			break
		}
	}
	if svHost == "" {
		return s, fmt.Errorf("the image has runit but no service directory (looked for %s)", strings.Join(runitSvdirs, ", "))
	}
	link := func(name, target string) error {
		p := filepath.Join(svHost, name)
		if fi, err := os.Lstat(p); err == nil {
			if fi.Mode()&fs.ModeSymlink == 0 {
				return fmt.Errorf("%s/%s exists and is not a symlink: not replacing it", s.svdir, name)
			}
			if err := os.Remove(p); err != nil {
				return err
			}
		}
		if err := os.Symlink(target, p); err != nil {
			return err
		}
		s.services = append(s.services, name)
		return nil
	}
	service := func(name, script string) error {
		dir := filepath.Join(runDirHost, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "run"), []byte(script), 0o755); err != nil {
			return err
		}
		return link(name, filepath.Join(runDir, name))
	}
	if len(agentArgs) > 0 {
		script := "#!/bin/sh\n# Written by banger-init at boot; lives only in /run.\nexec 2>&1\nexec " + shellquote.Join(agentArgs) + "\n"
		if err := service("banger-agent", script); err != nil {
			return s, fmt.Errorf("runit service for the agent: %w", err)
		}
	}
	if err := enableSSHD(root, svHost, s.svdir, link, service); err != nil {
		return s, fmt.Errorf("runit service for sshd: %w", err)
	}
	return s, nil
}

func enableSSHD(root, svHost, svdir string, link func(name, target string) error, service func(name, script string) error) error {
	sshd := ""
	for _, p := range []string{"/usr/sbin/sshd", "/usr/bin/sshd"} {
		if _, err := resolveInRoot(root, p); err == nil {
			sshd = p
			break
		}
	}
	if sshd == "" {
		return nil // no sshd in the image
	}
	for _, name := range []string{"sshd", "ssh"} {
		if _, err := os.Lstat(filepath.Join(svHost, name)); err == nil {
			return nil // already enabled
		}
	}
	for _, name := range []string{"sshd", "ssh"} {
		p, err := inRoot(root, "/etc/sv/"+name)
		if err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(p, "run")); err == nil {
			return link(name, "/etc/sv/"+name)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	script := "#!/bin/sh\n# Written by banger-init at boot: the image has sshd but no runit service for it.\nexec 2>&1\n" +
		"mkdir -p /run/sshd\nls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -A\nexec " + sshd + " -D -e\n"
	return service("banger-sshd", script)
}
