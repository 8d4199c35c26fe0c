package agentclient_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent/agentclient"
	"github.com/banger-vm/banger/internal/agent/agentserver"
	"github.com/banger-vm/banger/internal/hostfs"
)

// TestMount mounts a host folder through the agent over each transport, with the real
// kernel FUSE (the agent and its "guest" are this host), as vm create --mount does.
func TestMount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the agent mounts FUSE with mount(2)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse (load the fuse module)")
	}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			s := newAgent(t, agentserver.Config{})
			c := tr.setup(t, s)
			testMount(t, c)
		})
	}
}

func serveShare(t *testing.T, c *agentclient.Client, host, dst string, ro bool) (stop func()) {
	t.Helper()
	root, err := os.OpenRoot(host)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := c.Mount(ctxT(t, 10*time.Second), dst, ro)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	share, err := hostfs.Start(ctxT(t, 10*time.Second), context.Background(), conn, root, hostfs.ServerOptions{ReadOnly: ro})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	return func() { share.Close(); root.Close() }
}

func mounted(dst string) bool {
	b, _ := os.ReadFile("/proc/self/mounts")
	return strings.Contains(string(b), " "+dst+" fuse")
}

func waitUnmounted(t *testing.T, dst string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); mounted(dst); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s is still mounted after the host hung up", dst)
		}
	}
}

func testMount(t *testing.T, c *agentclient.Client) {
	host := t.TempDir()
	dst := filepath.Join(t.TempDir(), "mnt", "share")
	stop := serveShare(t, c, host, dst, false)
	if err := os.WriteFile(filepath.Join(dst, "from-guest"), []byte("g"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(host, "from-guest")); err != nil || string(b) != "g" {
		t.Fatalf("host reads %q (%v)", b, err)
	}
	// A second mount at the same path replaces the first.
	host2 := t.TempDir()
	os.WriteFile(filepath.Join(host2, "second"), []byte("2"), 0o644)
	stop2 := serveShare(t, c, host2, dst, true)
	if b, err := os.ReadFile(filepath.Join(dst, "second")); err != nil || string(b) != "2" {
		t.Fatalf("the replacing mount reads %q (%v)", b, err)
	}
	if err := os.WriteFile(filepath.Join(dst, "x"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write on a read-only mount: %v", err)
	}
	stop() // the first share's end must not take the second away
	time.Sleep(200 * time.Millisecond)
	if !mounted(dst) {
		t.Fatal("the old share's end unmounted its replacement")
	}
	stop2()
	waitUnmounted(t, dst)

	// A mount the guest cannot make comes back as an error, and nothing stays mounted.
	file := filepath.Join(t.TempDir(), "a-file")
	os.WriteFile(file, nil, 0o644)
	if conn, err := c.Mount(ctxT(t, 5*time.Second), file+"/below", false); err == nil {
		root, _ := os.OpenRoot(host)
		defer root.Close()
		if _, err := hostfs.Start(ctxT(t, 10*time.Second), context.Background(), conn, root, hostfs.ServerOptions{}); err == nil {
			t.Error("mount below a regular file succeeded")
		}
	}
	for _, bad := range []string{"relative", "/", "/proc/x", "/a/../b", "/dev"} {
		if _, err := c.Mount(ctxT(t, 5*time.Second), bad, false); err == nil || !strings.Contains(err.Error(), "mount point") {
			t.Errorf("mount at %q: %v, want a refusal", bad, err)
		}
	}
}
