package client_test

// The runnable examples and the tests run against a real owner daemon started in-process
// (internal/daemon, no VMM driver: it serves everything but booting VMs) in a private
// directory tree that the XDG variables point at, so client.Default() finds it the way it
// finds a user's daemon.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/daemon"
	"github.com/banger-vm/banger/internal/paths"
)

func TestMain(m *testing.M) { os.Exit(runWithDaemon(m)) }

func runWithDaemon(m *testing.M) int {
	// Short: the socket path is limited to 108 bytes.
	dir, err := os.MkdirTemp("", "bgc")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	for k, v := range map[string]string{"HOME": "home", "XDG_RUNTIME_DIR": "run", "XDG_CONFIG_HOME": "cfg",
		"XDG_DATA_HOME": "data", "XDG_STATE_HOME": "state", "XDG_CACHE_HOME": "cache"} {
		p := filepath.Join(dir, v)
		if err := os.MkdirAll(p, 0o700); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		os.Setenv(k, p)
	}
	layout, err := paths.Resolve(paths.EnvFromOS())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	d, err := daemon.Start(context.Background(), daemon.Options{Layout: layout, Config: config.Defaults(), Version: "test"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "start an in-process daemon for the examples: %v\n", err)
		return 1
	}
	defer d.Shutdown(context.Background())
	return m.Run()
}
