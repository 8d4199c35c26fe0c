// Package procnet reads the kernel's socket tables (/proc/net/tcp, tcp6, udp, udp6): who
// holds a host port (portfwd), which ports a guest listens on (the agent).
package procnet

import (
	"bufio"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
)

// MaxTableBytes bounds the read of one table.
const MaxTableBytes = 8 << 20

// Socket is one row of a table.
type Socket struct {
	Local netip.AddrPort
	State string // hex, as the kernel writes it: "0A" is TCP LISTEN
	Inode string
}

// TCPListen is the State of a listening TCP socket.
const TCPListen = "0A"

// Read returns the rows of the tables named (e.g. "tcp", "tcp6") in the calling thread's
// network namespace (the one it binds in, which differs from the process's in a process
// whose main thread entered another namespace); a missing table is skipped.
func Read(tables ...string) []Socket {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	dir := "/proc/thread-self/net"
	if _, err := os.Stat(dir); err != nil {
		dir = "/proc/net"
	}
	var out []Socket
	for _, name := range tables {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			continue
		}
		out = append(out, Parse(io.LimitReader(f, MaxTableBytes))...)
		f.Close()
	}
	return out
}

// Parse reads the rows of one table; the header and malformed rows are skipped.
func Parse(r io.Reader) []Socket {
	var out []Socket
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		addr, port, ok := ParseAddr(fields[1])
		if !ok {
			continue
		}
		out = append(out, Socket{Local: netip.AddrPortFrom(addr, uint16(port)), State: fields[3], Inode: fields[9]})
	}
	return out
}

// ParseAddr decodes a table's address: hex IP in host byte order words, hex port.
func ParseAddr(s string) (netip.Addr, int, bool) {
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
