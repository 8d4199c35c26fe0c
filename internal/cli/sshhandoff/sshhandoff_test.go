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

// TestConfigBlocks: values with spaces are quoted, '%' in commands is doubled, and values
// that would break out of their line (a newline, a quote, control bytes) are refused.
func TestConfigBlocks(t *testing.T) {
	b, err := ConfigBlock("dev.banger", Target{Alias: "banger-abc", KeyPath: "/my keys/id", KnownHosts: "/k/kh",
		ProxyCommand: []string{"/opt/my banger/banger", "vm", "ssh-proxy", "abc%1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Host dev.banger\n", "  IdentityFile \"/my keys/id\"\n", "  HostKeyAlias banger-abc\n",
		"  StrictHostKeyChecking yes\n", "  ProxyCommand '/opt/my banger/banger' vm ssh-proxy abc%%1\n"} {
		if !strings.Contains(b, want) {
			t.Errorf("block lacks %q:\n%s", want, b)
		}
	}
	w, err := WildcardBlock("/k/id", []string{"/b/banger", "vm", "ssh-proxy"}, []string{"/b/banger", "vm", "ssh-known-hosts"})
	if err != nil || !strings.Contains(w, "Host *.banger\n") || !strings.Contains(w, "  ProxyCommand /b/banger vm ssh-proxy %n\n") ||
		!strings.Contains(w, "  KnownHostsCommand /b/banger vm ssh-known-hosts %H\n") || !strings.Contains(w, "  UserKnownHostsFile /dev/null\n") {
		t.Fatalf("wildcard block %v:\n%s", err, w)
	}
	for _, bad := range []Target{
		{Alias: "banger-abc", KeyPath: "/k/id\nHost *\n  ProxyCommand evil", KnownHosts: "/k/kh", ProxyCommand: []string{"b"}},
		{Alias: "banger-abc", KeyPath: `/k/"id`, KnownHosts: "/k/kh", ProxyCommand: []string{"b"}},
		{Alias: "banger-abc", KeyPath: "/k/id", KnownHosts: "/k/\x1b[2Jkh", ProxyCommand: []string{"b"}},
		{Alias: "banger-abc", KeyPath: "/k/id", KnownHosts: "/k/kh", ProxyCommand: []string{"/b/ban\nger"}},
		{Alias: "", KeyPath: "/k/id", KnownHosts: "/k/kh", ProxyCommand: []string{"b"}},
	} {
		if b, err := ConfigBlock("dev.banger", bad); err == nil {
			t.Errorf("a hostile value was written:\n%s", b)
		}
	}
	if _, err := ConfigBlock("dev banger", Target{Alias: "a", KeyPath: "/k", KnownHosts: "/h", ProxyCommand: []string{"b"}}); err == nil {
		t.Error("a host name with a space was written")
	}
}
