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
	e.daemon("stop")
	cfgPath := filepath.Join(e.dir, "cfg/banger/config.toml")
	cfg, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	noHelper := strings.Replace(string(cfg), "helper_socket = ", "helper_socket = \""+filepath.Join(e.dir, "no-helper.sock")+"\"\n# was: helper_socket = ", 1)
	if err := os.WriteFile(cfgPath, []byte(noHelper), 0o600); err != nil {
		t.Fatal(err)
	}
	e.daemon("start")
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
