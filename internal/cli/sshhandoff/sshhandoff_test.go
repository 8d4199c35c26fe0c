package sshhandoff

import (
	"strings"
	"testing"
)

func TestSystemArgsNeverPrompt(t *testing.T) {
	args := SystemArgs(Target{User: "root", Alias: "banger-abc", KeyPath: "/k/id", KnownHosts: "/k/kh",
		ProxyCommand: []string{"/opt/my banger/banger", "vm", "ssh-proxy", "abc%1"}}, Session{Argv: []string{"ls", "-l"}})
	joined := strings.Join(args, "\n")
	for _, want := range []string{"BatchMode=yes", "StrictHostKeyChecking=yes", "HostKeyAlias=banger-abc", "UserKnownHostsFile=/k/kh",
		"ProxyCommand='/opt/my banger/banger' vm ssh-proxy abc%%1", "-T", "root@banger-abc", "ls -l"} {
		if !strings.Contains(joined, want) {
			t.Errorf("ssh args lack %q:\n%s", want, joined)
		}
	}
	if args[len(args)-2] != "--" {
		t.Errorf("the remote command must follow --: %q", args)
	}
}
