package agentserver

// POST /v1/identity: a clone of a snapshot wakes up with the template's hostname,
// machine-id, SSH host key, address, clock and random state in its memory. The host sends
// the clone's own right after the restore; every field is checked before anything changes.

import (
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/guestident"
)

// Linux random(4) ioctls: RNDADDENTROPY is _IOW('R', 0x03, int[2]), RNDRESEEDCRNG
// _IO('R', 0x07) (Linux 4.17+).
const (
	rndAddEntropy  = 0x40085203
	rndReseedCRNG  = 0x5207
	maxDNSServers  = 8
	maxHostKeySize = 4096
)

// identityPlan is a checked IdentityRequest.
type identityPlan struct {
	hostname string
	address  netip.Prefix
	gateway  netip.Addr
	dns      []netip.Addr
	mac      net.HardwareAddr
	network  bool
	key      *agent.SSHHostKey
	entropy  []byte
	now      time.Time
}

// checkIdentity validates req in full, so a bad request changes nothing.
func checkIdentity(req agent.IdentityRequest) (identityPlan, error) {
	p := identityPlan{hostname: req.Hostname, key: req.SSHHostKey, entropy: req.Entropy}
	if !guestident.ValidHostname(req.Hostname) {
		return p, fmt.Errorf("hostname %q: letters, digits and '-', at most 63 characters", req.Hostname)
	}
	if n := len(req.Entropy); n < agent.MinIdentityEntropy || n > agent.MaxIdentityEntropy {
		return p, fmt.Errorf("entropy: %d bytes, want %d-%d", n, agent.MinIdentityEntropy, agent.MaxIdentityEntropy)
	}
	if err := checkWallClock(req.UnixNano); err != nil {
		return p, err
	}
	p.now = time.Unix(0, req.UnixNano)
	if n := req.Network; n != nil {
		p.network = true
		var err error
		if p.address, err = netip.ParsePrefix(n.Address); err != nil || !p.address.Addr().Is4() {
			return p, fmt.Errorf("network address %q: want an IPv4 CIDR", n.Address)
		}
		if n.Gateway != "" {
			if p.gateway, err = netip.ParseAddr(n.Gateway); err != nil || !p.gateway.Is4() {
				return p, fmt.Errorf("network gateway %q: want an IPv4 address", n.Gateway)
			}
		}
		if len(n.DNS) > maxDNSServers {
			return p, fmt.Errorf("network: %d DNS servers, at most %d", len(n.DNS), maxDNSServers)
		}
		for _, s := range n.DNS {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return p, fmt.Errorf("network DNS server %q: not an IP address", s)
			}
			p.dns = append(p.dns, a)
		}
		if n.MAC != "" {
			if p.mac, err = net.ParseMAC(n.MAC); err != nil || len(p.mac) != 6 || p.mac[0]&1 != 0 {
				return p, fmt.Errorf("network MAC %q: want a unicast 6-byte address", n.MAC)
			}
		}
	}
	if k := req.SSHHostKey; k != nil {
		if err := checkHostKey(*k); err != nil {
			return p, err
		}
	}
	return p, nil
}

func checkHostKey(k agent.SSHHostKey) error {
	if len(k.Private) > maxHostKeySize || len(k.Public) > maxHostKeySize {
		return errors.New("ssh host key: too large")
	}
	block, rest := pem.Decode([]byte(k.Private))
	if block == nil || block.Type != "OPENSSH PRIVATE KEY" || strings.TrimSpace(string(rest)) != "" {
		return errors.New("ssh host key: private key is not one OpenSSH PEM block")
	}
	f := strings.Fields(k.Public)
	if len(f) < 2 || f[0] != "ssh-ed25519" || strings.ContainsAny(k.Public, "\r\x00") || strings.Count(strings.TrimSpace(k.Public), "\n") > 0 {
		return errors.New("ssh host key: public key is not one ssh-ed25519 line")
	}
	if _, err := base64.StdEncoding.DecodeString(f[1]); err != nil {
		return fmt.Errorf("ssh host key: public key: %w", err)
	}
	return nil
}

func (s *Server) handleIdentity(w http.ResponseWriter, r *http.Request) {
	var req agent.IdentityRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	p, err := checkIdentity(req)
	if err != nil {
		writeError(w, agent.CodeBadRequest, err.Error())
		return
	}
	res := agent.IdentityResponse{Steps: []agent.IdentityStep{}}
	root := s.cfg.IdentityRoot
	type identityStep struct {
		name string
		fn   func() (string, error)
	}
	// The clock and the random pool come first, in order: what follows (the machine-id)
	// draws random bytes. The rest touch separate files and the network, and run at once:
	// a restored guest's first writes are slow (copy-on-write faults, cold code), and
	// each step waits on its own.
	first := []identityStep{
		{"set the clock", func() (string, error) {
			ts := unix.NsecToTimespec(p.now.UnixNano())
			return "", unix.ClockSettime(unix.CLOCK_REALTIME, &ts)
		}},
		{"reseed the random pool", func() (string, error) { return reseed(p.entropy) }},
	}
	var machineID string
	rest := []identityStep{
		{"set the hostname", func() (string, error) {
			if err := unix.Sethostname([]byte(p.hostname)); err != nil {
				return "", err
			}
			return "", guestident.WriteHostname(root, p.hostname)
		}},
		{"new machine-id", func() (string, error) {
			id, err := guestident.NewMachineID(root)
			machineID = id
			return "", err
		}},
		{"configure the network", func() (string, error) {
			if !p.network {
				return "the VM has no network", nil
			}
			return "", s.configureNetwork(root, p)
		}},
		{"install the ssh host key", func() (string, error) {
			if p.key == nil {
				return "no key given", nil
			}
			return s.installHostKey(root, *p.key)
		}},
	}
	run := func(st identityStep) (agent.IdentityStep, error) {
		start := time.Now()
		note, err := st.fn()
		if err != nil {
			return agent.IdentityStep{}, fmt.Errorf("%s: %w", st.name, err)
		}
		return agent.IdentityStep{Name: st.name, DurationMS: float64(time.Since(start).Microseconds()) / 1000, Note: note}, nil
	}
	fail := func(err error) {
		s.log.Error("identity", "err", err)
		writeError(w, agent.CodeInternal, err.Error())
	}
	for _, st := range first {
		done, err := run(st)
		if err != nil {
			fail(err)
			return
		}
		res.Steps = append(res.Steps, done)
	}
	results := make([]agent.IdentityStep, len(rest))
	errs := make([]error, len(rest))
	var wg sync.WaitGroup
	for i, st := range rest {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = run(st)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		fail(err)
		return
	}
	res.Steps = append(res.Steps, results...)
	res.MachineID = machineID
	s.log.Info("took on a new identity", "hostname", p.hostname, "machine_id", res.MachineID)
	writeJSON(w, http.StatusOK, res)
}

// reseed mixes entropy into the kernel's pool, credited, then forces the CRNG to reseed
// from it (kernels before 4.17 lack the second ioctl; the credit alone reseeds them later).
func reseed(entropy []byte) (string, error) {
	f, err := os.OpenFile("/dev/random", os.O_WRONLY, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(entropy))
	*(*int32)(unsafe.Pointer(&buf[0])) = int32(len(entropy) * 8)
	*(*int32)(unsafe.Pointer(&buf[4])) = int32(len(entropy))
	copy(buf[8:], entropy)
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndAddEntropy, uintptr(unsafe.Pointer(&buf[0]))); errno != 0 {
		return "", fmt.Errorf("RNDADDENTROPY: %w", errno)
	}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), rndReseedCRNG, 0); errno != 0 {
		if errno == unix.ENOTTY || errno == unix.EINVAL {
			return "this kernel has no RNDRESEEDCRNG: the pool is credited, the CRNG reseeds on its own", nil
		}
		return "", fmt.Errorf("RNDRESEEDCRNG: %w", errno)
	}
	return "", nil
}

// configureNetwork gives eth0 the clone's MAC and address and the default route, and
// writes resolv.conf.
func (s *Server) configureNetwork(root string, p identityPlan) error {
	link, err := netlink.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("eth0: %w", err)
	}
	if len(p.mac) != 0 {
		if err := netlink.LinkSetHardwareAddr(link, p.mac); err != nil {
			return fmt.Errorf("set eth0's MAC: %w", err)
		}
	}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("remove %s from eth0: %w", a.IPNet, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: p.address.Addr().AsSlice(), Mask: net.CIDRMask(p.address.Bits(), 32)}}
	if err := netlink.AddrAdd(link, addr); err != nil {
		return fmt.Errorf("add %s to eth0: %w", p.address, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	if p.gateway.IsValid() {
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: p.gateway.AsSlice()}); err != nil {
			return fmt.Errorf("default route via %s: %w", p.gateway, err)
		}
	}
	if len(p.dns) > 0 {
		return guestident.ReplaceFile(filepath.Join(root, "etc/resolv.conf"), guestident.ResolvConf("written by banger-agent for this clone", p.dns), 0o644)
	}
	return nil
}

// installHostKey writes the ed25519 host key sshd is configured to serve (banger's drop-in
// names it) and has the listening sshd reload (SIGHUP: it re-executes and reads its keys).
func (s *Server) installHostKey(root string, k agent.SSHHostKey) (string, error) {
	dir := filepath.Join(root, "etc/ssh")
	if err := guestident.ReplaceFile(filepath.Join(dir, "ssh_host_ed25519_key"), strings.TrimSpace(k.Private)+"\n", 0o600); err != nil {
		return "", err
	}
	if err := guestident.ReplaceFile(filepath.Join(dir, "ssh_host_ed25519_key.pub"), strings.TrimSpace(k.Public)+"\n", 0o644); err != nil {
		return "", err
	}
	n := 0
	for _, pid := range s.listeningSSHDs() {
		if err := syscall.Kill(pid, syscall.SIGHUP); err == nil {
			n++
		}
	}
	if n == 0 {
		return "no sshd running: it reads the key when it starts", nil
	}
	return fmt.Sprintf("%d sshd reloaded", n), nil
}

// listeningSSHDs are the sshd processes whose parent is PID 1: the listeners, not the
// per-connection children. sshd's PID file names the listener at once; without one, every
// process is looked at (slow in a just-restored clone, where each new code path costs).
func (s *Server) listeningSSHDs() []int {
	if b, err := os.ReadFile(filepath.Join(s.cfg.IdentityRoot, "run/sshd.pid")); err == nil && len(b) < 32 {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 && s.isListeningSSHD(strconv.Itoa(pid)) {
			return []int{pid}
		}
	}
	ents, err := os.ReadDir(s.cfg.ProcDir)
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && s.isListeningSSHD(e.Name()) {
			out = append(out, pid)
		}
	}
	return out
}

// isListeningSSHD reports whether process pid (a decimal string) is an sshd whose parent
// is PID 1.
func (s *Server) isListeningSSHD(pid string) bool {
	comm, err := os.ReadFile(filepath.Join(s.cfg.ProcDir, pid, "comm"))
	if err != nil || strings.TrimSpace(string(comm)) != "sshd" {
		return false
	}
	stat, err := os.ReadFile(filepath.Join(s.cfg.ProcDir, pid, "stat"))
	if err != nil {
		return false
	}
	// Fields after the last ')': state, then ppid.
	i := strings.LastIndexByte(string(stat), ')')
	f := strings.Fields(string(stat[i+1:]))
	return i >= 0 && len(f) > 1 && f[1] == "1"
}
