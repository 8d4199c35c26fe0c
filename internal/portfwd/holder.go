package portfwd

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// maxProcNetBytes bounds a /proc/net/{tcp,udp} read.
const maxProcNetBytes = 8 << 20

// HolderOf names the process holding ip:port over proto ("tcp": listening; "udp": bound),
// as well as this user can see: "pid 123 (nginx)", "a process of another user" (its file
// descriptors are not readable), or "another process" when the socket is not found at all.
func HolderOf(proto, ip string, port int) string {
	return holderIn("/proc", proto, ip, port)
}

func holderIn(proc, proto, ip string, port int) string {
	inodes := listeningInodes(proc, proto, ip, port)
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
func listeningInodes(proc, proto, ip string, port int) map[string]bool {
	want, err := netip.ParseAddr(ip)
	if err != nil {
		return nil
	}
	// The calling thread's view (its network namespace is the one it binds in), else the
	// process's: the two differ in a process whose main thread entered another namespace.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	netDir := filepath.Join(proc, "thread-self", "net")
	if _, err := os.Stat(netDir); err != nil {
		netDir = filepath.Join(proc, "net")
	}
	out := map[string]bool{}
	files := []string{"tcp", "tcp6"}
	if proto == "udp" {
		files = []string{"udp", "udp6"}
	}
	for _, name := range files {
		f, err := os.Open(filepath.Join(netDir, name))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(io.LimitReader(f, maxProcNetBytes))
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || (proto != "udp" && fields[3] != "0A") { // 0A: LISTEN
				continue
			}
			addr, p, ok := parseProcAddr(fields[1])
			if !ok || p != port {
				continue
			}
			if addr == want || addr.IsUnspecified() || want.IsUnspecified() {
				out[fields[9]] = true
			}
		}
		f.Close()
	}
	return out
}

// parseProcAddr decodes a /proc/net/tcp address: hex IP in host byte order words, hex port.
func parseProcAddr(s string) (netip.Addr, int, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, false
	}
	var raw []byte
	for i := 0; i+8 <= len(h); i += 8 {
		w, err := strconv.ParseUint(h[i:i+8], 16, 32)
		if err != nil {
			return netip.Addr{}, 0, false
		}
		// Each 32-bit word is in the kernel's (little-endian) byte order.
		raw = append(raw, byte(w), byte(w>>8), byte(w>>16), byte(w>>24))
	}
	addr, ok := netip.AddrFromSlice(raw)
	if !ok || (len(h) != 8 && len(h) != 32) {
		return netip.Addr{}, 0, false
	}
	return addr.Unmap(), int(port), true
}
