package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/sshtransport"
)

// proxyDialer runs `banger daemon proxy` in-process for every connection, its stdin and
// stdout one end of a pipe: what ssh does on the remote host, without ssh. The proxy sees
// BANGER_HOST set and must ignore it (it is the remote end).
func proxyDialer(t *testing.T, w *cliWorld) func(ctx context.Context) (net.Conn, error) {
	return func(ctx context.Context) (net.Conn, error) {
		ours, theirs := net.Pipe()
		env := w.env
		env.Stdin, env.Stdout = theirs, theirs
		env.Getenv = func(k string) string {
			if k == "BANGER_HOST" {
				return "ssh://me@elsewhere"
			}
			return ""
		}
		go func() {
			if code := Execute(env, []string{"daemon", "proxy"}); code != 0 {
				t.Errorf("daemon proxy exited %d: %s", code, w.stderr.String())
			}
			theirs.Close()
		}()
		br := bufio.NewReader(ours)
		line, err := br.ReadString('\n')
		if err != nil || line != sshtransport.Greeting {
			ours.Close()
			return nil, fmt.Errorf("proxy greeting %q, %v", line, err)
		}
		return ours, nil // the greeting was read byte-exact: br holds nothing more
	}
}

// TestDaemonProxyCarriesRequestsAndUpgrades: through the proxy, plain requests and an
// upgraded stream (what vm exec and forwards use) both work.
func TestDaemonProxyCarriesRequestsAndUpgrades(t *testing.T) {
	w := newCLIWorld(t)
	serveFake(t, w.socket, map[string]http.HandlerFunc{
		"POST /v1/vms/forward": func(rw http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("port") != "8080" {
				http.Error(rw, "wrong port", http.StatusBadRequest)
				return
			}
			rw.Header().Set("Connection", "Upgrade")
			rw.Header().Set("Upgrade", r.Header.Get("Upgrade"))
			rw.WriteHeader(http.StatusSwitchingProtocols)
			conn, buf, err := http.NewResponseController(rw).Hijack()
			if err != nil {
				return
			}
			defer conn.Close()
			_ = buf.Flush()
			line, _ := buf.ReadString('\n')
			_, _ = io.WriteString(conn, "echo: "+line)
		},
	})
	c := api.NewClientWithDialer("test proxy", proxyDialer(t, w), "test")
	defer c.CloseIdleConnections()
	st, err := c.Status(context.Background())
	if err != nil || st.Version != "test" {
		t.Fatalf("status through the proxy: %+v, %v", st, err)
	}
	stream, err := c.Forward(context.Background(), "dev", 8080)
	if err != nil {
		t.Fatalf("upgrade through the proxy: %v", err)
	}
	defer stream.Close()
	if _, err := io.WriteString(stream, "hello\n"); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(stream).ReadString('\n')
	if err != nil || got != "echo: hello\n" {
		t.Fatalf("upgraded stream answered %q, %v", got, err)
	}
}

// TestDaemonProxyWithoutDaemonSaysSo: no daemon, no autostart possible: the proxy exits
// non-zero before its greeting, with words ssh will carry back.
func TestDaemonProxyWithoutDaemonSaysSo(t *testing.T) {
	w := newCLIWorld(t)
	var out strings.Builder
	w.env.Stdout = &out
	if code := w.run("daemon", "proxy"); code == 0 {
		t.Fatal("daemon proxy without a daemon exited 0")
	}
	if out.Len() != 0 || !strings.Contains(w.stderr.String(), "daemon") {
		t.Fatalf("stdout %q stderr %q", out.String(), w.stderr.String())
	}
}

// TestRemoteHostRefusesLocalWork: with BANGER_HOST set, commands about this machine, or
// that would hand the remote daemon this machine's paths, refuse before doing anything;
// a hostile address is refused before ssh is started.
func TestRemoteHostRefusesLocalWork(t *testing.T) {
	for _, c := range []struct {
		host string
		args []string
		want string
	}{
		{"ssh://me@box", []string{"daemon", "start"}, "manages the daemon of this machine"},
		{"ssh://me@box", []string{"daemon", "stop"}, "manages the daemon of this machine"},
		{"ssh://me@box", []string{"image", "import", "/tmp/x.tar"}, "names files on this machine"},
		{"ssh://me@box", []string{"image", "build", "new", "--from", "bb"}, "names files on this machine"},
		{"ssh://me@box", []string{"vm", "run", "-p", "8080", "--", "true"}, "vm port-forward"},
		{"ssh://me@box", []string{"vm", "create", "dev", "--mount", ".:/root/src"}, "--mount"},
		{"ssh://me@box", []string{"vm", "run", "--publish-all", "--", "true"}, "--publish-all"},
		{"ssh://me@box", []string{"bench", "mount"}, "bench mount"},
		{"ssh://me@box", []string{"vm", "port", "dev", "add", "8080"}, "vm port-forward dev 8080"},
		{"ssh://me@box", []string{"vm", "ssh-config"}, "vm ssh-config"},
		{"ssh://-oProxyCommand=touch%20/tmp/x", []string{"vm", "ls"}, "BANGER_HOST"},
		{"ssh://me@box?banger=-oX", []string{"vm", "ls"}, "starts with '-'"},
	} {
		w := newCLIWorld(t)
		host := c.host
		w.env.Getenv = func(k string) string {
			if k == "BANGER_HOST" {
				return host
			}
			return ""
		}
		code := w.run(c.args...)
		if code == 0 || !strings.Contains(w.stderr.String(), c.want) {
			t.Errorf("BANGER_HOST=%s banger %s: exit %d, stderr %q; want a refusal with %q", c.host, strings.Join(c.args, " "), code, w.stderr.String(), c.want)
		}
	}
	// Commands about this CLI or this machine run whatever BANGER_HOST says.
	w0 := newCLIWorld(t)
	w0.env.Getenv = func(k string) string {
		if k == "BANGER_HOST" {
			return "ssh://-oProxyCommand=x"
		}
		return ""
	}
	if code := w0.run("config", "path"); code != 0 {
		t.Errorf("config path with a bad BANGER_HOST: exit %d, stderr %q", code, w0.stderr.String())
	}
	// --host says the same as BANGER_HOST, and wins over it.
	w := newCLIWorld(t)
	if code := w.run("--host", "ssh://me@-box", "vm", "ls"); code == 0 || !strings.Contains(w.stderr.String(), "--host") {
		t.Errorf("--host with a hostile host: exit %d, stderr %q", code, w.stderr.String())
	}
}
