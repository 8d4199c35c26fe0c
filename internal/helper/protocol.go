// Package helper is banger's root helper: the only privileged process. It serves a small,
// fixed set of network operations (bridge, TAP devices, NAT) over a Unix socket to one owner
// uid, and validates every request against banger's own names and the configured subnet.
//
// The protocol is one JSON object per line in each direction: a Request, then its Response.
// A connection may carry several requests; malformed input ends the connection after an
// error response, because the stream can no longer be trusted to be in sync.
package helper

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
)

// Operations the helper serves. Anything else is refused.
const (
	OpEnsureBridge = "ensure_bridge" // create/up the bridge with the gateway address
	OpCreateTAP    = "create_tap"    // name (tap-pool-N or bgr-<id>), optional ip
	OpDeleteTAP    = "delete_tap"    // name
	OpList         = "list"          // banger-owned devices
	OpEnsureNAT    = "ensure_nat"    // masquerade + forward/input filtering for the bridge, ip_forward=1
	OpRemoveNAT    = "remove_nat"    // delete banger's nftables table
	OpStatus       = "status"        // what doctor needs in one round trip
)

// MaxRequestBytes bounds one request line; every valid request is far smaller.
const MaxRequestBytes = 4096

// Request is one operation. Unknown fields are refused, not ignored.
type Request struct {
	Op   string `json:"op"`
	Name string `json:"name,omitempty"`
	// IP is the guest address a TAP serves (optional, create_tap only); it must be a host
	// address inside the subnet other than the gateway. It is recorded as the device alias so
	// `list` and doctor can say which address a device belongs to.
	IP string `json:"ip,omitempty"`
	// Subnet, when given to ensure_nat/remove_nat, must equal the helper's subnet: a caller
	// that believes in another subnet is misconfigured and gets told so.
	Subnet string `json:"subnet,omitempty"`
}

// Error codes in responses.
const (
	CodeRefused = "refused" // the request is not allowed; nothing was changed
	CodeFailed  = "failed"  // the request was allowed but the kernel said no
)

// Response answers one Request.
type Response struct {
	OK      bool     `json:"ok"`
	Code    string   `json:"code,omitempty"`
	Error   string   `json:"error,omitempty"`
	Hint    string   `json:"hint,omitempty"`
	Devices []Device `json:"devices,omitempty"`
	Status  *Status  `json:"status,omitempty"`
}

// Device is a banger-owned network device.
type Device struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"` // "bridge", "tuntap", ...
	Up       bool   `json:"up"`
	Master   string `json:"master,omitempty"`
	Owner    int64  `json:"owner"` // TAP owner uid; -1 when none or not a TAP
	IP       string `json:"ip,omitempty"`
	Isolated bool   `json:"isolated,omitempty"`
}

// Status is the helper's view of the network, for doctor.
type Status struct {
	OwnerUID    int      `json:"owner_uid"`
	Bridge      string   `json:"bridge"`
	BridgeUp    bool     `json:"bridge_up"`
	BridgeAddrs []string `json:"bridge_addrs"`
	Subnet      string   `json:"subnet"`
	Gateway     string   `json:"gateway"`
	NATTable    bool     `json:"nat_table"`
	NATRules    int      `json:"nat_rules"`
	WantRules   int      `json:"want_rules"`
	Forwarding  bool     `json:"forwarding"`
	IsolateVMs  bool     `json:"isolate_vms"`
}

// Error is a helper refusal or failure as seen by a client.
type Error struct {
	Op, Code, Msg, Hint string
}

func (e *Error) Error() string {
	s := "banger helper: " + e.Op + ": " + e.Msg
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

// Name patterns: the helper only ever touches devices with these names (and the bridge).
// Both fit IFNAMSIZ (15 characters).
var (
	poolTAPRe = regexp.MustCompile(`^tap-pool-(0|[1-9][0-9]{0,5})$`)
	vmTAPRe   = regexp.MustCompile(`^bgr-[a-z0-9]{1,11}$`)
	bridgeRe  = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,14}$`)
)

// PoolTAPName is the name of pool TAP n.
func PoolTAPName(n int) string { return "tap-pool-" + strconv.Itoa(n) }

// PoolTAPIndex returns n for "tap-pool-n".
func PoolTAPIndex(name string) (int, bool) {
	m := poolTAPRe.FindStringSubmatch(name)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	return n, err == nil
}

// IsPoolTAP reports whether name is a pool TAP name.
func IsPoolTAP(name string) bool { return poolTAPRe.MatchString(name) }

// IsVMTAP reports whether name is an on-demand per-VM TAP name.
func IsVMTAP(name string) bool { return vmTAPRe.MatchString(name) }

// IsTAPName reports whether name is any TAP name banger may create.
func IsTAPName(name string) bool { return IsPoolTAP(name) || IsVMTAP(name) }

// ValidBridgeName checks a configured bridge name.
func ValidBridgeName(name string) error {
	if !bridgeRe.MatchString(name) {
		return fmt.Errorf("bridge name %q is not a valid interface name (1-15 of letters, digits, '_', '.', '-')", name)
	}
	if IsTAPName(name) {
		return fmt.Errorf("bridge name %q collides with banger's TAP names", name)
	}
	return nil
}

// Gateway is the bridge address: the first host address of the subnet.
func Gateway(subnet netip.Prefix) netip.Addr { return subnet.Masked().Addr().Next() }

// ValidSubnet checks a configured subnet: IPv4, /16 to /29, given by its network address.
func ValidSubnet(p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is4() {
		return fmt.Errorf("subnet %s is not an IPv4 prefix like 10.213.66.0/24", p)
	}
	if p.Masked() != p {
		return fmt.Errorf("subnet %s has host bits set; write it as %s", p, p.Masked())
	}
	if p.Bits() < 16 || p.Bits() > 29 {
		return fmt.Errorf("subnet %s: the prefix length must be between /16 and /29", p)
	}
	return nil
}

// ValidGuestIP checks that ip is a host address inside subnet that a guest may use: not the
// network address, the gateway or the broadcast address.
func ValidGuestIP(subnet netip.Prefix, ip netip.Addr) error {
	ip = ip.Unmap()
	if !subnet.Contains(ip) {
		return fmt.Errorf("address %s is outside the subnet %s", ip, subnet)
	}
	if ip == subnet.Masked().Addr() || ip == Gateway(subnet) || ip == lastAddr(subnet) {
		return fmt.Errorf("address %s is the network, gateway or broadcast address of %s", ip, subnet)
	}
	return nil
}

// lastAddr is the broadcast address of an IPv4 prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := 32 - p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= (1 << host) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// LastAddr is the broadcast address of an IPv4 prefix.
func LastAddr(p netip.Prefix) netip.Addr { return lastAddr(p) }
