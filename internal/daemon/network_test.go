package daemon

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/config"
	"github.com/banger-vm/banger/internal/helper"
	"github.com/banger-vm/banger/internal/store"
)

// testHelper runs a real helper whose operations happen in a fresh network namespace, so
// the host's own network is untouched. Root only.
func testHelper(t *testing.T) (*helper.Ops, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root to run the helper in a test network namespace (CI runs this package as root too)")
	}
	nsCh, errCh := make(chan netns.NsHandle, 1), make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded with the goroutine
		ns, err := netns.New()
		nsCh <- ns
		errCh <- err
	}()
	ns, err := <-nsCh, <-errCh
	if err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	t.Cleanup(func() { _ = ns.Close() })
	ops, err := helper.NewOps(helper.NetConfig{OwnerUID: os.Getuid(), Bridge: "banger0",
		Subnet: netip.MustParsePrefix(config.DefaultSubnet), IsolateVMs: true}, ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ops.Teardown(); ops.Close() })
	dir, err := os.MkdirTemp("", "banger-daemon-net-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	socket := filepath.Join(dir, "helper.sock")
	srv, err := helper.Listen(socket, ops, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ops, socket
}

func TestDaemonNetworkReconcilesWarmsAndPassesDoctor(t *testing.T) {
	ops, socket := testHelper(t)
	ctx := context.Background()
	// What a previous daemon left: a TAP a VM still uses, and an orphan of a deleted VM.
	for _, name := range []string{"tap-pool-7", "bgr-orphan"} {
		if r := ops.Do(helper.Request{Op: helper.OpCreateTAP, Name: name}); !r.OK {
			t.Fatal(r.Error)
		}
	}
	if r := ops.Do(helper.Request{Op: helper.OpEnsureNAT}); !r.OK {
		t.Fatal(r.Error)
	}
	l := testLayout(t)
	if err := l.EnsureDaemonDirs(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, l.StateDB)
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.PutImage(ctx, store.Image{ID: "img", Name: "img"}))
	must(st.PutVM(ctx, store.VM{ID: "vm-old", Name: "old", ImageID: "img", State: store.VMStopped, VMM: "qemu",
		Spec: []byte(`{"network":{"tap":"tap-pool-7"}}`)}))
	must(st.PutVM(ctx, store.VM{ID: "vm-new", Name: "new", ImageID: "img", State: store.VMCreated, VMM: "qemu"}))
	must(st.Close())

	cfg := config.Defaults()
	cfg.Network.HelperSocket = socket
	cfg.Network.TAPPoolSize = 2
	cfg.Network.DNS = []string{"192.0.2.53"}
	d, err := Start(ctx, Options{Layout: l, Config: cfg, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })

	deadline := time.Now().Add(10 * time.Second)
	for {
		if free, _, _, _ := d.net.pool.Level(); free == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the pool did not warm up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	names := map[string]bool{}
	for _, dev := range ops.Do(helper.Request{Op: helper.OpList}).Devices {
		names[dev.Name] = true
	}
	if names["bgr-orphan"] || !names["tap-pool-7"] {
		t.Fatalf("after reconcile: %v; want the orphan gone and the VM's TAP kept", names)
	}

	byName := map[string]api.CheckResult{}
	for _, c := range d.doctor.Run(ctx) {
		byName[c.Name] = c
	}
	for _, name := range []string{"network-helper", "bridge", "nat", "ip-forwarding", "tap-pool", "network-leaks"} {
		if c := byName[name]; c.Status != api.Pass {
			t.Errorf("doctor %s = %+v", name, c)
		}
	}

	lease, tap, err := d.attachNetwork(ctx, "vm-new")
	if err != nil {
		t.Fatal(err)
	}
	if !helper.IsPoolTAP(tap) || lease.IP.String() != "10.213.66.2" || lease.Gateway.String() != "10.213.66.1" ||
		len(lease.DNS) != 1 || lease.DNS[0].String() != "192.0.2.53" {
		t.Fatalf("attach = %+v %s", lease, tap)
	}
	if err := d.detachNetwork(ctx, "vm-new", tap, true); err != nil {
		t.Fatal(err)
	}
	if _, err := d.store.GetLeaseByVM(ctx, "vm-new"); err == nil {
		t.Error("lease not released")
	}
}

func TestDaemonStartsWithoutHelperAndDoctorSaysHow(t *testing.T) {
	l := testLayout(t)
	cfg := config.Defaults()
	cfg.Network.HelperSocket = filepath.Join(t.TempDir(), "none.sock")
	d, err := Start(context.Background(), Options{Layout: l, Config: cfg, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Shutdown(context.Background()) }()
	// A missing helper is a WARN: VMs still boot, without a network.
	found := false
	for _, c := range d.doctor.Run(context.Background()) {
		if c.Name == "network-helper" {
			found = true
			if c.Status != api.Warn || c.Hint == "" || !strings.Contains(c.Detail, "without a network") {
				t.Errorf("network-helper without a helper = %+v", c)
			}
		}
	}
	if !found {
		t.Error("no network-helper check registered")
	}
}
