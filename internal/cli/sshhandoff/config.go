package sshhandoff

// OpenSSH client configuration for banger's VMs, so that ssh, scp, rsync, git and editors
// (VS Code Remote-SSH) reach them with banger's key, pins and agent ProxyCommand.

import (
	"errors"
	"fmt"
	"strings"
)

// HostSuffix is the name suffix a VM has in OpenSSH's configuration: `ssh dev.banger`.
const HostSuffix = ".banger"

// configValue quotes a value for ssh_config: double quotes hold spaces; a value with a
// double quote, a control character or a newline cannot be written safely and is refused.
func configValue(v string) (string, error) {
	if v == "" {
		return "", errors.New("empty value")
	}
	for _, r := range v {
		if r == '"' || r < 0x20 || r == 0x7f {
			return "", fmt.Errorf("%q cannot be written into an ssh config", v)
		}
	}
	if strings.ContainsAny(v, " \t#") {
		return `"` + v + `"`, nil
	}
	return v, nil
}

// ConfigBlock is the Host block for one VM: host is the name to type (NAME.banger), t how
// to reach it, with its host key pinned under t.Alias in t.KnownHosts.
func ConfigBlock(host string, t Target) (string, error) {
	if t.User == "" {
		t.User = "root"
	}
	return block(host, [][2]string{
		{"HostName", t.Alias},
		{"User", t.User},
		{"IdentityFile", t.KeyPath},
		{"IdentitiesOnly", "yes"},
		{"UserKnownHostsFile", t.KnownHosts},
		{"GlobalKnownHostsFile", "/dev/null"},
		{"HostKeyAlias", t.Alias},
		{"StrictHostKeyChecking", "yes"},
		{"CheckHostIP", "no"},
		{"UpdateHostKeys", "no"},
		{"ProxyCommand", proxyCommand(t.ProxyCommand)},
	})
}

// WildcardBlock is one Host block for every VM, current and future: `ssh NAME.banger`.
// ProxyCommand and KnownHostsCommand (OpenSSH 8.5+) are argv prefixes that get the host
// name typed (%n) and the name ssh checks the key under (%H) appended; the latter prints
// that VM's pinned host key.
func WildcardBlock(keyPath string, proxy, knownHosts []string) (string, error) {
	return block("*"+HostSuffix, [][2]string{
		{"User", "root"},
		{"IdentityFile", keyPath},
		{"IdentitiesOnly", "yes"},
		{"UserKnownHostsFile", "/dev/null"},
		{"GlobalKnownHostsFile", "/dev/null"},
		{"KnownHostsCommand", proxyCommand(knownHosts) + " %H"},
		{"StrictHostKeyChecking", "yes"},
		{"CheckHostIP", "no"},
		{"UpdateHostKeys", "no"},
		{"ProxyCommand", proxyCommand(proxy) + " %n"},
	})
}

func block(host string, opts [][2]string) (string, error) {
	h, err := configValue(host)
	if err != nil || strings.ContainsAny(host, " \t") {
		return "", fmt.Errorf("host name %q cannot be written into an ssh config", host)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Host %s\n", h)
	for _, o := range opts {
		v := o[1]
		// The commands are shell command lines, already quoted for the shell and for '%'.
		if o[0] != "ProxyCommand" && o[0] != "KnownHostsCommand" {
			if v, err = configValue(v); err != nil {
				return "", fmt.Errorf("%s: %w", o[0], err)
			}
		} else if strings.ContainsAny(v, "\n\r") {
			return "", fmt.Errorf("%s: a newline cannot be written into an ssh config", o[0])
		}
		fmt.Fprintf(&b, "  %s %s\n", o[0], v)
	}
	return b.String(), nil
}
