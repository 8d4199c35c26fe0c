package portfwd

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-vm/banger/internal/procnet"
)

// HolderOf names the process holding ip:port over proto ("tcp": listening; "udp": bound),
// as well as this user can see: "pid 123 (nginx)", "a process of another user" (its file
// descriptors are not readable), or "another process" when the socket is not found at all.
func HolderOf(proto, ip string, port int) string {
	return holderIn("/proc", proto, ip, port)
}

func holderIn(proc, proto, ip string, port int) string {
	inodes := listeningInodes(proto, ip, port)
	if len(inodes) == 0 {
		return "another process"
	}
	pids, _ := filepath.Glob(filepath.Join(proc, "[0-9]*"))
	for _, dir := range pids {
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			link, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if err != nil {
				continue
			}
			if inode, ok := strings.CutPrefix(link, "socket:["); ok && inodes[strings.TrimSuffix(inode, "]")] {
				comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
				return fmt.Sprintf("pid %s (%s)", filepath.Base(dir), sanitizeComm(string(comm)))
			}
		}
	}
	return "a process of another user"
}

// sanitizeComm keeps a process name printable: it is another program's to choose.
func sanitizeComm(s string) string {
	s = strings.TrimSpace(s)
	var b strings.Builder
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r > 0x7e {
			r = '?'
		}
		b.WriteRune(r)
	}
	if b.Len() > 32 {
		return b.String()[:32]
	}
	return b.String()
}

// listeningInodes reads the socket inodes listening on ip:port (or on the wildcard
// address, which also takes the port) from /proc/net/tcp and tcp6, or for "udp" those
// bound to it from /proc/net/udp and udp6 (a UDP socket has no listening state: any bound
// one, connected or not, holds the port).
func listeningInodes(proto, ip string, port int) map[string]bool {
	want, err := netip.ParseAddr(ip)
	if err != nil {
		return nil
	}
	tables := []string{"tcp", "tcp6"}
	if proto == "udp" {
		tables = []string{"udp", "udp6"}
	}
	out := map[string]bool{}
	for _, s := range procnet.Read(tables...) {
		if (proto != "udp" && s.State != procnet.TCPListen) || int(s.Local.Port()) != port {
			continue
		}
		if addr := s.Local.Addr(); addr == want || addr.IsUnspecified() || want.IsUnspecified() {
			out[s.Inode] = true
		}
	}
	return out
}
