package client_test

import (
	"strings"
	"testing"

	"github.com/banger-vm/banger/client"
)

// TestWithHostRefusesHostile: a host that would smuggle an option onto ssh's command line,
// carry a password or name no ssh address is refused by New, before any ssh runs.
func TestWithHostRefusesHostile(t *testing.T) {
	for _, h := range []string{"ssh://-oProxyCommand=touch%20x@box", "ssh://-box", "ssh://me:secret@box", "http://box", "ssh://box/path", "ssh://bo x"} {
		if _, err := client.New(client.WithHost(h)); err == nil {
			t.Errorf("WithHost(%q) was accepted", h)
		}
	}
	c, err := client.New(client.WithHost("ssh://me@box:2222"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Target(); !strings.Contains(got, "box") {
		t.Fatalf("target %q does not name the host", got)
	}
}

// TestDefaultHonoursBangerHost: Default points at BANGER_HOST when it is set.
func TestDefaultHonoursBangerHost(t *testing.T) {
	t.Setenv("BANGER_HOST", "ssh://-evil")
	if _, err := client.Default(); err == nil {
		t.Fatal("Default accepted a hostile BANGER_HOST")
	}
	t.Setenv("BANGER_HOST", "ssh://builder")
	c, err := client.Default()
	if err != nil || !strings.Contains(c.Target(), "builder") {
		t.Fatalf("Default with BANGER_HOST: %v %v", c, err)
	}
}
