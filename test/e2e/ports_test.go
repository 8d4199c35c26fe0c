//go:build integration

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/banger-vm/banger/internal/api"
)

// guestHTTPD serves "hello-NAME" on the guest's 127.0.0.1:8080 (busybox httpd).
const guestHTTPD = `mkdir -p /tmp/www && echo "hello-$(hostname)" > /tmp/www/index.html && httpd -p 127.0.0.1:8080 -h /tmp/www`

// inHostNet runs f where the daemon runs: in the test's network namespace when there is
// one (sockets f creates stay in it), else here.
func (e *env) inHostNet(f func()) {
	e.t.Helper()
	if e.netns == "" {
		f()
		return
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked if the switch back fails: the thread goes
		orig, err := netns.Get()
		if err != nil {
			done <- err
			return
		}
		ns, err := netns.GetFromName(e.netns)
		if err == nil {
			err = netns.Set(ns)
			ns.Close()
		}
		if err != nil {
			done <- err
			return
		}
		f()
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		orig.Close()
		done <- nil
	}()
	if err := <-done; err != nil {
		e.t.Fatalf("enter network namespace %s: %v", e.netns, err)
	}
}

// hostGet fetches / from 127.0.0.1:port where the daemon runs, retrying briefly while the
// guest's server comes up.
func (e *env) hostGet(port int) string {
	e.t.Helper()
	var last error
	for range 20 {
		var c net.Conn
		var err error
		e.inHostNet(func() { c, err = net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 5*time.Second) })
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = io.WriteString(c, "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
			var resp *http.Response
			if err == nil {
				resp, err = http.ReadResponse(bufio.NewReader(c), nil)
			}
			if err == nil {
				b, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				if rerr == nil && resp.StatusCode == 200 {
					c.Close()
					return string(b)
				}
				err = fmt.Errorf("status %d %v", resp.StatusCode, rerr)
			}
			c.Close()
		}
		last = err
		time.Sleep(250 * time.Millisecond)
	}
	e.t.Fatalf("GET 127.0.0.1:%d: %v", port, last)
	return ""
}

// hostListen listens on a free 127.0.0.1 port where the daemon runs.
func (e *env) hostListen() net.Listener {
	e.t.Helper()
	var ln net.Listener
	var err error
	e.inHostNet(func() { ln, err = net.Listen("tcp", "127.0.0.1:0") })
	if err != nil {
		e.t.Fatal(err)
	}
	return ln
}

func (e *env) freeHostPort() int {
	ln := e.hostListen()
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func (e *env) hostListens(port int) bool {
	var c net.Conn
	var err error
	e.inHostNet(func() { c, err = net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second) })
	if err == nil {
		c.Close()
	}
	return err == nil
}

// restartWithoutHelper restarts the daemon configured with a helper socket nobody listens
// on: VMs it starts have no guest network.
func (e *env) restartWithoutHelper() {
	e.t.Helper()
	e.daemon("stop")
	cfgPath := filepath.Join(e.dir, "cfg/banger/config.toml")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		e.t.Fatal(err)
	}
	noHelper := strings.Replace(string(cfg), "helper_socket = ", "helper_socket = \""+filepath.Join(e.dir, "no-helper.sock")+"\"\n# was: helper_socket = ", 1)
	if err := os.WriteFile(cfgPath, []byte(noHelper), 0o600); err != nil {
		e.t.Fatal(err)
	}
	e.daemon("start")
}

// TestPortForward: a guest HTTP server on :8080 answers on the forwarded host ports (a fixed
// one and one banger picked); the forwards survive vm restart and a daemon restart, work for
// a VM started without the root helper (no guest network), follow vm port add/rm, and a
// taken host port gives an error naming its holder.
func TestPortForward(t *testing.T) {
	e := setup(t)
	fixed := e.freeHostPort()
	r := e.must("vm", "create", "pf", "--image", "bb", "--memory", "512M", "--start", "-p", strconv.Itoa(fixed)+":8080", "-p", "8080", "--json")
	var vm api.VM
	if err := json.Unmarshal([]byte(r.stdout), &vm); err != nil || len(vm.Ports) != 2 || vm.Ports[1].HostPort == 0 {
		t.Fatalf("create -p: %v %s", err, r.stdout)
	}
	picked := vm.Ports[1].HostPort
	e.must("vm", "exec", "pf", "--", "sh", "-c", guestHTTPD)
	for _, p := range []int{fixed, picked} {
		if got := e.hostGet(p); got != "hello-pf\n" {
			t.Fatalf("through host port %d: %q", p, got)
		}
	}
	if out := e.must("vm", "inspect", "pf").stdout; !strings.Contains(out, "127.0.0.1:"+strconv.Itoa(fixed)+" -> guest port 8080/tcp") {
		t.Fatalf("inspect lacks the forward:\n%s", out)
	}

	// A taken host port: a clear error that names the process holding it.
	holder := e.hostListen()
	defer holder.Close()
	taken := strconv.Itoa(holder.Addr().(*net.TCPAddr).Port)
	if r := e.run("vm", "port", "pf", "add", taken+":8080"); r.code == 0 || !strings.Contains(r.stderr, "is taken by") || !strings.Contains(r.stderr, "pick another host port") {
		t.Fatalf("add of a taken port: %d %q", r.code, r.stderr)
	}
	if r := e.run("vm", "create", "pf2", "--image", "bb", "-p", strconv.Itoa(fixed)+":80"); r.code == 0 || !strings.Contains(r.stderr, "already forwarded to VM pf") {
		t.Fatalf("create with another VM's host port: %d %q", r.code, r.stderr)
	}

	// vm restart, then a daemon restart: the forwards listen again.
	e.must("vm", "restart", "pf")
	e.must("vm", "exec", "pf", "--", "sh", "-c", guestHTTPD)
	if got := e.hostGet(fixed); got != "hello-pf\n" {
		t.Fatalf("after vm restart: %q", got)
	}
	e.daemon("stop")
	e.daemon("start")
	if got := e.hostGet(picked); got != "hello-pf\n" {
		t.Fatalf("after a daemon restart: %q", got)
	}

	// rm by host port, add on the running VM.
	e.must("vm", "port", "pf", "rm", strconv.Itoa(picked))
	if e.hostListens(picked) {
		t.Fatal("a removed forward still listens")
	}
	again := e.freeHostPort()
	e.must("vm", "port", "pf", "add", strconv.Itoa(again)+":8080")
	if got := e.hostGet(again); got != "hello-pf\n" {
		t.Fatalf("through an added forward: %q", got)
	}
	e.must("vm", "rm", "--force", "pf")

	// Without the root helper: no guest network, the forward works through the agent.
	e.restartWithoutHelper()
	e.must("vm", "create", "nonet", "--image", "bb", "--memory", "512M", "--start", "-p", strconv.Itoa(fixed)+":8080")
	if nv := e.inspectVM("nonet"); nv.Network.IP != "" {
		t.Fatalf("VM without the helper has address %s", nv.Network.IP)
	}
	e.must("vm", "exec", "nonet", "--", "sh", "-c", guestHTTPD)
	if got := e.hostGet(fixed); got != "hello-nonet\n" {
		t.Fatalf("forward of a VM without a network: %q", got)
	}
	e.must("vm", "rm", "--force", "nonet")
	e.requireNoLeaks()
}

// buildUDPEcho builds the guest's UDP server (testdata/udpecho, static) and copies it into
// the running VM name as /root/udpecho.
func (e *env) buildUDPEcho(name string) {
	e.t.Helper()
	bin := filepath.Join(e.bin, "udpecho")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./testdata/udpecho")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("build udpecho: %v\n%s", err, out)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		e.t.Fatal(err)
	}
	e.must("vm", "cp", bin, name+":/root/udpecho")
}

// guestUDPEcho starts the guest's UDP server on its 127.0.0.1:5353.
const guestUDPEcho = `setsid /root/udpecho 127.0.0.1:5353 </dev/null >/dev/null 2>&1 &`

// hostUDP sends msg to 127.0.0.1:port where the daemon runs, from client (nil: a new
// socket), and returns the answer, retrying while the guest's server comes up.
func (e *env) hostUDP(port int, client *net.UDPConn, msg string) string {
	e.t.Helper()
	if client == nil {
		client = e.udpClient(port)
		defer client.Close()
	}
	var last error
	for range 20 {
		buf := make([]byte, 65536)
		_, err := client.Write([]byte(msg))
		if err == nil {
			_ = client.SetReadDeadline(time.Now().Add(3 * time.Second))
			var n int
			if n, err = client.Read(buf); err == nil {
				return string(buf[:n])
			}
		}
		last = err
	}
	e.t.Fatalf("UDP to 127.0.0.1:%d: %v", port, last)
	return ""
}

// udpClient is a UDP socket connected to 127.0.0.1:port where the daemon runs.
func (e *env) udpClient(port int) *net.UDPConn {
	e.t.Helper()
	var c *net.UDPConn
	var err error
	e.inHostNet(func() { c, err = net.DialUDP("udp", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}) })
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// udpBound says whether a socket holds UDP port on 127.0.0.1 where the daemon runs.
func (e *env) udpBound(port int) bool {
	var c *net.UDPConn
	var err error
	e.inHostNet(func() { c, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}) })
	if err == nil {
		c.Close()
	}
	return err != nil
}

// TestPortForwardUDP: a guest UDP server on :5353 answers on forwarded host UDP ports (a
// fixed one and one banger picked), each client only its own answers; the forwards are
// listed with proto udp, survive a daemon restart, a TCP forward shares the port number,
// a taken UDP port names its holder, and rm HOSTPORT/udp removes only the UDP forward.
func TestPortForwardUDP(t *testing.T) {
	e := setup(t)
	fixed := e.freeHostPort()
	r := e.must("vm", "create", "pu", "--image", "bb", "--memory", "512M", "--start", "-p", strconv.Itoa(fixed)+":5353/udp", "-p", "5353/udp", "--json")
	var vm api.VM
	if err := json.Unmarshal([]byte(r.stdout), &vm); err != nil || len(vm.Ports) != 2 || vm.Ports[1].HostPort == 0 ||
		vm.Ports[0].Proto != "udp" || vm.Ports[1].Proto != "udp" {
		t.Fatalf("create -p .../udp: %v %s", err, r.stdout)
	}
	picked := vm.Ports[1].HostPort
	e.buildUDPEcho("pu")
	e.must("vm", "exec", "pu", "--", "sh", "-c", guestUDPEcho)
	for _, p := range []int{fixed, picked} {
		if got := e.hostUDP(p, nil, "query-"+strconv.Itoa(p)); got != "re:query-"+strconv.Itoa(p) {
			t.Fatalf("through host UDP port %d: %q", p, got)
		}
	}
	// Two clients taking turns on one forward: each gets its own answers.
	a, b := e.udpClient(fixed), e.udpClient(fixed)
	defer a.Close()
	defer b.Close()
	for i := range 5 {
		for _, c := range []struct {
			conn *net.UDPConn
			name string
		}{{a, "a"}, {b, "b"}} {
			msg := c.name + strconv.Itoa(i)
			if got := e.hostUDP(fixed, c.conn, msg); got != "re:"+msg {
				t.Fatalf("client %s: sent %q, got %q", c.name, msg, got)
			}
		}
	}
	if out := e.must("vm", "port", "pu", "ls").stdout; !strings.Contains(out, "127.0.0.1:"+strconv.Itoa(fixed)+" -> guest port 5353/udp") {
		t.Fatalf("vm port ls lacks the UDP forward:\n%s", out)
	}

	// A taken UDP port: a clear error that names the process holding it.
	var holder *net.UDPConn
	var err error
	e.inHostNet(func() { holder, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}) })
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	taken := strconv.Itoa(holder.LocalAddr().(*net.UDPAddr).Port)
	if r := e.run("vm", "port", "pu", "add", taken+":53/udp"); r.code == 0 || !strings.Contains(r.stderr, "is taken by") || !strings.Contains(r.stderr, "/udp") {
		t.Fatalf("add of a taken UDP port: %d %q", r.code, r.stderr)
	}

	// A TCP forward on the UDP forward's port number is another forward.
	e.must("vm", "port", "pu", "add", strconv.Itoa(fixed)+":8080")
	if !e.hostListens(fixed) {
		t.Fatal("the TCP forward on the UDP forward's port number does not listen")
	}

	// A daemon restart: the UDP forwards come back with the VM.
	e.daemon("stop")
	e.daemon("start")
	if e.netns != "" {
		defer func() {
			if t.Failed() {
				dbg, _ := exec.Command("sh", "-c", "ip netns exec "+e.netns+" ss -tanup").CombinedOutput()
				t.Logf("DEBUG sockets:\n%s", dbg)
			}
		}()
	}
	if got := e.hostUDP(picked, nil, "after-restart"); got != "re:after-restart" {
		t.Fatalf("after a daemon restart: %q", got)
	}

	// rm HOSTPORT/udp: the UDP forward goes, the TCP one of that number stays.
	e.must("vm", "port", "pu", "rm", strconv.Itoa(fixed)+"/udp")
	if e.udpBound(fixed) || !e.hostListens(fixed) {
		t.Fatalf("after rm %d/udp: UDP bound %v, TCP listening %v", fixed, e.udpBound(fixed), e.hostListens(fixed))
	}
	var ports []api.VMPort
	if err := json.Unmarshal([]byte(e.must("vm", "port", "pu", "ls", "--json").stdout), &ports); err != nil || len(ports) != 2 ||
		ports[0].Proto != "udp" || ports[0].HostPort != picked || ports[1].Proto != "tcp" || ports[1].HostPort != fixed {
		t.Fatalf("vm port ls --json after rm: %v %+v", err, ports)
	}
	e.must("vm", "rm", "--force", "pu")
	if e.udpBound(picked) {
		t.Fatal("a removed VM's UDP forward is still bound")
	}

	// Without the root helper: no guest network, the UDP forward works through the agent.
	e.restartWithoutHelper()
	e.must("vm", "create", "nonet", "--image", "bb", "--memory", "512M", "--start", "-p", strconv.Itoa(fixed)+":5353/udp")
	if nv := e.inspectVM("nonet"); nv.Network.IP != "" {
		t.Fatalf("VM without the helper has address %s", nv.Network.IP)
	}
	e.buildUDPEcho("nonet")
	e.must("vm", "exec", "nonet", "--", "sh", "-c", guestUDPEcho)
	if got := e.hostUDP(fixed, nil, "no-network"); got != "re:no-network" {
		t.Fatalf("UDP forward of a VM without a network: %q", got)
	}
	e.must("vm", "rm", "--force", "nonet")
	e.requireNoLeaks()
}

// TestPortPublishAll: a --publish-all VM's guest server on a port is reachable on the same
// host port once it listens, and the forward goes when the server stops.
func TestPortPublishAll(t *testing.T) {
	e := setup(t)
	port := e.freeHostPort()
	e.must("vm", "create", "pa", "--image", "bb", "--memory", "512M", "--start", "--publish-all")
	e.must("vm", "exec", "pa", "--", "sh", "-c", strings.Replace(guestHTTPD, "127.0.0.1:8080", "127.0.0.1:"+strconv.Itoa(port), 1))
	deadline := time.Now().Add(60 * time.Second)
	for !e.hostListens(port) {
		if time.Now().After(deadline) {
			t.Fatalf("the guest's port %d was not published:\n%s", port, e.must("vm", "inspect", "pa").stdout)
		}
		time.Sleep(250 * time.Millisecond)
	}
	if got := e.hostGet(port); got != "hello-pa\n" {
		t.Fatalf("through the published port %d: %q", port, got)
	}
	if out := e.must("vm", "inspect", "pa").stdout; !strings.Contains(out, "127.0.0.1:"+strconv.Itoa(port)+" -> guest port "+strconv.Itoa(port)+"/tcp (published") ||
		!strings.Contains(out, "--publish-all") {
		t.Fatalf("inspect lacks the published port:\n%s", out)
	}
	e.must("vm", "exec", "pa", "--", "busybox", "killall", "httpd")
	for e.hostListens(port) {
		if time.Now().After(deadline) {
			t.Fatalf("port %d still published after the guest's server stopped", port)
		}
		time.Sleep(250 * time.Millisecond)
	}
	e.must("vm", "rm", "--force", "pa")
	e.requireNoLeaks()
}
