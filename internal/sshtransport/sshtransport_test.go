package sshtransport

import (
	"context"
	"errors"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/api"
)

func TestParseHost(t *testing.T) {
	for raw, want := range map[string]Host{
		"ssh://box":                                  {Name: "box", Banger: "banger"},
		"ssh://me@box.example:2222":                  {User: "me", Name: "box.example", Port: 2222, Banger: "banger"},
		"ssh://banger-ci@127.0.0.1:22/":              {User: "banger-ci", Name: "127.0.0.1", Port: 22, Banger: "banger"},
		"ssh://[::1]:2200":                           {Name: "::1", Port: 2200, Banger: "banger"},
		"ssh://me@box?banger=/opt/banger/bin/banger": {User: "me", Name: "box", Banger: "/opt/banger/bin/banger"},
		"ssh://me@box?banger=banger-dev":             {User: "me", Name: "box", Banger: "banger-dev"},
		"ssh://me@box?banger=%2Fhome%2Fme%2Fb%20ger": {User: "me", Name: "box", Banger: "/home/me/b ger"},
	} {
		h, err := ParseHost(raw)
		if err != nil || h != want {
			t.Errorf("ParseHost(%q) = %+v, %v; want %+v", raw, h, err, want)
			continue
		}
		// String gives an address that parses back to the same host.
		if again, err := ParseHost(h.String()); err != nil || again != h {
			t.Errorf("%q: String %q parses to %+v, %v", raw, h.String(), again, err)
		}
	}
}

// TestParseHostRefusesHostile: anything ssh could read as an option, or that would smuggle
// words onto its command line, is refused.
func TestParseHostRefusesHostile(t *testing.T) {
	for _, raw := range []string{
		"",
		"box",
		"http://box",
		"ssh://",
		"ssh://-oProxyCommand=touch%20/tmp/pwned",
		"ssh://-oProxyCommand=x@box",
		"ssh://%2DoProxyCommand=x@box",
		"ssh://me@-box",
		"ssh://me@box:-1",
		"ssh://me@box:0",
		"ssh://me@box:65536",
		"ssh://me@box:22x",
		"ssh://me@box:",
		"ssh://me:secret@box",
		"ssh://me@box/path",
		"ssh://me@box#frag",
		"ssh://me@box?opt=-F/tmp/x",
		"ssh://me@box?banger=-oProxyCommand=x",
		"ssh://me@box?banger=rel/banger",
		"ssh://me@box?banger=/a&banger=/b",
		"ssh://me@box?banger=/a%0Ab",
		"ssh://me@box ls",
		"ssh://me@box\n-oProxyCommand=x",
		"ssh://m e@box",
		"ssh://me%20-oX@box",
		"ssh://me@box%20-oX",
		"ssh://me@bo%0ax",
		"ssh://me;id@box",
		"ssh://me@$(id)",
		"ssh://" + strings.Repeat("a", 300),
		"ssh://me@" + strings.Repeat("a", 2000),
	} {
		if h, err := ParseHost(raw); err == nil {
			t.Errorf("ParseHost(%q) accepted %+v", raw, h)
		}
	}
}

func TestArgv(t *testing.T) {
	tr := Transport{Host: Host{User: "me", Name: "box", Port: 2222, Banger: "/opt/my banger"}, Args: []string{"-i", "/k/id", "-p", "1"}}
	got := strings.Join(tr.Argv([]string{"/opt/my banger", "daemon", "proxy"}, false), " ")
	want := "-o BatchMode=yes -p 2222 -l me -i /k/id -p 1 -T -- box '/opt/my banger' daemon proxy"
	if got != want {
		t.Fatalf("argv\n got %s\nwant %s", got, want)
	}
	// What the real ssh makes of it: the address's port and user, whatever the extra
	// options say.
	ssh, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("no ssh client on PATH (openssh-client) to resolve the command line with ssh -G")
	}
	tr.Args = []string{"-p", "1", "-l", "other", "-o", "Port=3", "-o", "User=x"}
	argv := tr.Argv([]string{"true"}, false)
	dash := slices.Index(argv, "--")
	out, err := exec.Command(ssh, append(append([]string{"-G", "-F", "/dev/null"}, argv[:dash]...), "box")...).Output()
	if err != nil {
		t.Fatalf("ssh -G: %v", err)
	}
	if !strings.Contains(string(out), "\nport 2222\n") || !strings.Contains(string(out), "\nuser me\n") {
		t.Fatalf("ssh resolves the command line to another port or user:\n%s", out)
	}
}

// freePort is a loopback port nobody listens on (briefly bound, then released).
func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// TestDialFailureSaysWhy runs the real ssh against a port nothing listens on: the error
// carries ssh's own words and a hint (the e2e test covers a real sshd).
func TestDialFailureSaysWhy(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("no ssh client on PATH (apt install openssh-client)")
	}
	port := freePort(t)
	tr := Transport{Host: Host{User: "nobody", Name: "127.0.0.1", Port: port, Banger: "banger"},
		Args: []string{"-F", "/dev/null", "-o", "UserKnownHostsFile=/dev/null"}}
	_, err := tr.Dial(context.Background())
	var ae *api.Error
	if !errors.As(err, &ae) {
		t.Fatalf("dial a closed port: %v (%T), want an *api.Error", err, err)
	}
	if !strings.Contains(ae.Message, "ssh exited 255") || !strings.Contains(strings.ToLower(ae.Message), "connection refused") ||
		!strings.Contains(ae.Message, "127.0.0.1:"+strconv.Itoa(port)) || !strings.Contains(ae.Hint, "no sshd answers") {
		t.Fatalf("message %q hint %q", ae.Message, ae.Hint)
	}
}

func TestFailureHints(t *testing.T) {
	h := Host{User: "me", Name: "box", Banger: "banger"}
	for _, c := range []struct {
		got, stderr string
		code        int
		hint        string
	}{
		{"", "me@box: Permission denied (publickey).\n", 255, "BANGER_HOST_SSH_ARGS"},
		{"", "Host key verification failed.\n", 255, "record it"},
		{"", "bash: line 1: banger: command not found\n", 127, "?banger=/path/to/banger"},
		{"", "banger: no banger daemon is running\nhint: start it\n", 1, "banger daemon start"},
		{"Welcome to box!\n", "", -1, "startup file"},
	} {
		err := failure(h, c.got, c.code, c.stderr)
		var ae *api.Error
		if !errors.As(err, &ae) || !strings.Contains(ae.Hint, c.hint) {
			t.Errorf("%q/%q: %v, hint %q; want a hint with %q", c.got, c.stderr, err, ae.Hint, c.hint)
		}
	}
	// The remote's words reach a terminal: no control sequences survive.
	err := failure(h, "", 255, "bad\x1b]0;title\x07 \x1b[2Jthing\n")
	if strings.ContainsAny(err.Error(), "\x1b\x07") {
		t.Fatalf("control characters in %q", err.Error())
	}
}
