package portfwd

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	good := map[string]Spec{
		"8080":                {"127.0.0.1", 0, 8080, "tcp"},
		"8080/tcp":            {"127.0.0.1", 0, 8080, "tcp"},
		"18080:8080":          {"127.0.0.1", 18080, 8080, "tcp"},
		"0.0.0.0:18080:8080":  {"0.0.0.0", 18080, 8080, "tcp"},
		"[::1]:18080:80/tcp":  {"::1", 18080, 80, "tcp"},
		"192.168.1.5:2222:22": {"192.168.1.5", 2222, 22, "tcp"},
		"53/udp":              {"127.0.0.1", 0, 53, "udp"},
		"5353:53/udp":         {"127.0.0.1", 5353, 53, "udp"},
		"0.0.0.0:5353:53/udp": {"0.0.0.0", 5353, 53, "udp"},
		"[::1]:5353:53/udp":   {"::1", 5353, 53, "udp"},
	}
	for in, want := range good {
		if got, err := Parse(in); err != nil || got != want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "65536", "-1", "08080", "80:", ":80", "a:b", "1:2:3:4", "host:80:80",
		"80/sctp", "80/UDP", "80/udp/tcp", "80/", "/udp", "0/udp", "65536/udp", "53:/udp", "53/udp\n", "53/udp ", "5353:53/udp/",
		"[::1]:53/udp", "1:2:3/udp", "[::1]80:80", "[::1]:80", "fe80::1%eth0:80:80", "80\n", "1.2.3.4:80:80:80", " 80"} {
		if s, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted: %+v", bad, s)
		}
	}
	if _, err := Parse("53/sctp"); err == nil || !strings.Contains(err.Error(), "use tcp or udp") {
		t.Errorf("sctp: %v", err)
	}
	for _, bad := range []Spec{{"127.0.0.1", 53, 53, "sctp"}, {"127.0.0.1", 53, 53, ""}, {"127.0.0.1", 0, 53, "udp"}} {
		if bad.Check() == nil {
			t.Errorf("Check(%+v) passed", bad)
		}
	}
}

// echoGuest is a stand-in for the guest's side: a real TCP server that upper-cases.
func echoGuest(t *testing.T) Dialer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write([]byte(strings.ToUpper(string(b))))
			}()
		}
	}()
	return func(ctx context.Context, port int) (io.ReadWriteCloser, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", ln.Addr().String())
	}
}

// TestForward: a connection to the host port reaches the guest end and gets its answer
// after a half-close; a taken port names the holder (this test process); Close frees it.
func TestForward(t *testing.T) {
	spec, err := Resolve(Spec{HostIP: "127.0.0.1", GuestPort: 80, Proto: "tcp"})
	if err != nil || spec.HostPort == 0 {
		t.Fatalf("resolve %+v %v", spec, err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	f, err := Listen(spec, Options{TCP: echoGuest(t), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(spec.HostPort))
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("hello"))
	c.(*net.TCPConn).CloseWrite()
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "HELLO" {
		t.Fatalf("through the forward: %q", got)
	}
	_, err = Listen(spec, Options{TCP: echoGuest(t), Log: log})
	want := "pid " + strconv.Itoa(os.Getpid()) + " ("
	if err == nil || !strings.Contains(err.Error(), "is taken by "+want) {
		t.Fatalf("second listen on %d: %v (want it to name %q)", spec.HostPort, err, want)
	}
	f.Close()
	g, err := Listen(spec, Options{TCP: echoGuest(t), Log: log})
	if err != nil {
		t.Fatalf("listen after Close: %v", err)
	}
	g.Close()
	// A guest end that does not answer: the client's connection is closed, nothing hangs.
	h, err := Listen(spec, Options{TCP: func(context.Context, int) (io.ReadWriteCloser, error) { return nil, io.ErrUnexpectedEOF }, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, err = net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(spec.HostPort))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Fatalf("read %q from a forward with no guest end", b)
	}
	c.Close()
}

func TestSanitizeComm(t *testing.T) {
	if got := sanitizeComm("evil\x1b[2J\n"); strings.ContainsAny(got, "\x1b\n") {
		t.Errorf("comm %q not sanitized", got)
	}
}
