package procnet

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

func TestParseAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000:0016":                         "0.0.0.0:22",
		"00000000000000000000000001000000:0050": "[::1]:80",
	} {
		a, p, ok := ParseAddr(in)
		if !ok || net.JoinHostPort(a.String(), strconv.Itoa(p)) != want {
			t.Errorf("%s = %v %d %v, want %s", in, a, p, ok, want)
		}
	}
	for _, bad := range []string{"", "zz:10", "0100007F", "0100007F:zz", "01007F:0050", "0100007F:10000", "0100007F0100007F:0050"} {
		if _, _, ok := ParseAddr(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestParse(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1234 1 0000000000000000 100 0 0 10 0
   1: garbage
   2: 0100007F:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1
`
	got := Parse(strings.NewReader(table))
	if len(got) != 1 || got[0].Local != netip.MustParseAddrPort("127.0.0.1:8080") || got[0].State != TCPListen || got[0].Inode != "1234" {
		t.Fatalf("%+v", got)
	}
}

// TestRead: a listener of this test shows in the live table.
func TestRead(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	want := netip.MustParseAddrPort(ln.Addr().String())
	for _, s := range Read("tcp", "tcp6", "nosuchtable") {
		if s.Local == want && s.State == TCPListen {
			return
		}
	}
	t.Fatalf("listener %s not in /proc/net/tcp", want)
}
