package daemon

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/api"
)

// freePort is a TCP port on 127.0.0.1 that nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// udpBound says whether a socket holds UDP port on 127.0.0.1.
func udpBound(port int) bool {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		return true
	}
	c.Close()
	return false
}

// listenerInode is the socket inode listening on TCP 127.0.0.1:port here ("" if none).
func listenerInode(t *testing.T, port int) string {
	t.Helper()
	// This thread's network namespace: the one the daemon binds in (see portfwd.HolderOf).
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b, err := os.ReadFile("/proc/thread-self/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("0100007F:%04X", port)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 10 && f[1] == want && f[3] == "0A" {
			return f[9]
		}
	}
	return ""
}

func listens(port int) bool {
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// TestFakePortForwards: forwards are checked at create (bad specs, a port another VM
// forwards, a port a process holds, named), listen only while the VM runs, come back after
// a restart of the VM and of the daemon, and follow add/rm on a running VM.
func TestFakePortForwards(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	create := func(name string, ports ...string) (api.VM, error) {
		return e.d.createVM(ctx, api.VMCreateRequest{Name: name, Image: "img", DiskSize: "256M", Start: true, Ports: ports}, noProgress)
	}
	for _, bad := range []string{"80/sctp", "53/UDP", "0", "x:80", "1.2.3:80:80", "99999"} {
		_, err := create("bad", bad)
		wantCode(t, err, api.CodeBadRequest, "port")
	}
	fixed := freePort(t)
	// UDP on the TCP forward's port number is another forward.
	vm, err := create("pf", strconv.Itoa(fixed)+":8080", "80", strconv.Itoa(fixed)+":53/udp", "53/udp")
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.Ports) != 4 || vm.Ports[0].HostPort != fixed || vm.Ports[1].HostPort == 0 || vm.Ports[1].GuestPort != 80 || !vm.Ports[0].Listening ||
		vm.Ports[2].Proto != "udp" || vm.Ports[2].HostPort != fixed || !vm.Ports[2].Listening || vm.Ports[3].Proto != "udp" || vm.Ports[3].HostPort == 0 {
		t.Fatalf("ports %+v", vm.Ports)
	}
	picked, pickedUDP := vm.Ports[1].HostPort, vm.Ports[3].HostPort
	if !listens(fixed) || !listens(picked) || !udpBound(fixed) || !udpBound(pickedUDP) {
		t.Fatal("a running VM's forwards do not listen")
	}
	udpHolder, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udpHolder.Close()
	_, err = create("other", strconv.Itoa(udpHolder.LocalAddr().(*net.UDPAddr).Port)+":53/udp")
	wantCode(t, err, api.CodeConflict, "is taken by pid ")
	_, err = create("other", strconv.Itoa(pickedUDP)+":53/udp")
	wantCode(t, err, api.CodeConflict, "already forwarded to VM pf")
	_, err = create("other", strconv.Itoa(fixed)+":22")
	wantCode(t, err, api.CodeConflict, "already forwarded to VM pf")
	holder, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	_, err = create("other", strconv.Itoa(holder.Addr().(*net.TCPAddr).Port)+":22")
	wantCode(t, err, api.CodeConflict, "is taken by pid ")

	// Stopped: not listening; started again: listening on the same ports.
	must(e.d.stopVM(ctx, api.VMStopRequest{Name: "pf", Force: true}))
	if listens(fixed) || listens(picked) || udpBound(fixed) || udpBound(pickedUDP) {
		t.Fatal("a stopped VM's forwards still listen")
	}
	must(e.d.startVM(ctx, "pf", noProgress))
	if !listens(fixed) || !listens(picked) || !udpBound(pickedUDP) {
		t.Fatal("forwards did not come back with the VM")
	}
	e.restart()
	if !listens(fixed) || !listens(picked) || !udpBound(fixed) || !udpBound(pickedUDP) {
		t.Fatal("forwards did not come back with a restarted daemon")
	}

	// rm HOSTPORT/udp leaves the TCP forward of that port number; rm HOSTPORT takes both.
	out, err := e.d.changePorts(ctx, api.VMPortsRequest{Name: "pf", Remove: []string{strconv.Itoa(fixed) + "/udp", strconv.Itoa(pickedUDP)}})
	if err != nil || len(out.Ports) != 2 || !listens(fixed) || udpBound(fixed) || udpBound(pickedUDP) {
		t.Fatalf("rm of the UDP forwards: %+v %v", out.Ports, err)
	}
	_, err = e.d.changePorts(ctx, api.VMPortsRequest{Name: "pf", Remove: []string{strconv.Itoa(fixed) + "/udp"}})
	wantCode(t, err, api.CodeNotFound, "forwards no host port")

	// add and rm on the running VM; the forwards they do not name keep listening as they
	// were (same socket: their connections and UDP flows go on).
	before := listenerInode(t, fixed)
	extra := freePort(t)
	out, err = e.d.changePorts(ctx, api.VMPortsRequest{Name: "pf", Add: []string{strconv.Itoa(extra) + ":9090"}, Remove: []string{strconv.Itoa(picked)}})
	if err != nil || len(out.Ports) != 2 || !listens(extra) || listens(picked) {
		t.Fatalf("change: %+v %v", out.Ports, err)
	}
	if after := listenerInode(t, fixed); before == "" || after != before {
		t.Fatalf("the untouched forward on %d was reopened (socket %q, then %q)", fixed, before, after)
	}
	_, err = e.d.changePorts(ctx, api.VMPortsRequest{Name: "pf", Remove: []string{"1"}})
	wantCode(t, err, api.CodeNotFound, "forwards no host port")
	_, err = e.d.changePorts(ctx, api.VMPortsRequest{Name: "pf", Add: []string{strconv.Itoa(extra) + ":1"}})
	wantCode(t, err, api.CodeConflict, "already forwarded to this VM")
	_, err = e.d.changePorts(ctx, api.VMPortsRequest{Name: "nosuch", Add: []string{"80"}})
	wantCode(t, err, api.CodeNotFound, "not found")

	// Paused: no VMM, nothing listens; resumed: back.
	must(e.d.pauseVM(ctx, "pf", noProgress))
	if listens(fixed) {
		t.Fatal("a paused VM's forward still listens")
	}
	must(e.d.startVM(ctx, "pf", noProgress))
	if !listens(fixed) || !listens(extra) {
		t.Fatal("forwards did not come back with a resume")
	}
	must(0, e.d.removeVM(ctx, api.VMRemoveRequest{Name: "pf", Force: true}))
	if listens(fixed) || listens(extra) {
		t.Fatal("a removed VM's forwards still listen")
	}
}

// TestFakePublishAll: a --publish-all VM forwards the ports its guest listens on (1024 and
// up, not those it forwards explicitly) from the same host ports, follows them as they
// come and go, reports a taken one, and stops with the VM.
func TestFakePublishAll(t *testing.T) {
	e := newFakeEnv(t)
	ctx := context.Background()
	e.d.ports.publishEvery = 20 * time.Millisecond
	a, b, explicit, taken := freePort(t), freePort(t), freePort(t), freePort(t)
	holder, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(taken))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	e.drv.mu.Lock()
	e.drv.listeners = []int{22, a, explicit, taken}
	e.drv.mu.Unlock()
	hostExplicit := freePort(t)
	vm, err := e.d.createVM(ctx, api.VMCreateRequest{Name: "pa", Image: "img", DiskSize: "256M", Start: true, PublishAll: true,
		Ports: []string{strconv.Itoa(hostExplicit) + ":" + strconv.Itoa(explicit)}}, noProgress)
	if err != nil {
		t.Fatal(err)
	}
	if !vm.PublishAll {
		t.Fatal("the VM does not say it publishes all")
	}
	autos := func() map[int]api.VMPort {
		out := map[int]api.VMPort{}
		row, err := e.d.store.GetVMByName(ctx, "pa")
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range e.d.vmToAPI(ctx, row).Ports {
			if p.Auto {
				out[p.GuestPort] = p
			}
		}
		return out
	}
	waitUntil(t, "the guest's ports to be published", func() bool {
		got := autos()
		return len(got) == 2 && got[a].Listening && got[taken].Error != ""
	})
	if _, ok := autos()[22]; ok || !listens(a) {
		t.Fatalf("published: %+v (want %d, not the privileged 22)", autos(), a)
	}
	if _, ok := autos()[explicit]; ok {
		t.Fatal("a port forwarded explicitly was published too")
	}
	// The guest stops listening on a and starts on b.
	e.drv.mu.Lock()
	e.drv.listeners = []int{b}
	e.drv.mu.Unlock()
	waitUntil(t, "the published ports to follow the guest's", func() bool {
		got := autos()
		return len(got) == 1 && got[b].Listening && !listens(a) && listens(b)
	})
	must(e.d.stopVM(ctx, api.VMStopRequest{Name: "pa", Force: true}))
	if listens(b) || len(autos()) != 0 {
		t.Fatal("a stopped VM's published ports still listen")
	}
	must(e.d.startVM(ctx, "pa", noProgress))
	waitUntil(t, "publishing after a restart", func() bool { return listens(b) })
	must(0, e.d.removeVM(ctx, api.VMRemoveRequest{Name: "pa", Force: true}))
	if listens(b) {
		t.Fatal("a removed VM's published port still listens")
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
