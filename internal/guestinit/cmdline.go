// Package guestinit is banger-init, PID 1 of banger's initramfs: it loads the kernel
// modules the guest needs, assembles the root filesystem (the image read-only under a
// per-VM writable overlay), mounts the work disk at /root, configures the network and
// hostname, brings the agent along, and hands over to the image's init — or stays PID 1
// when the image has none.
package guestinit

import (
	"fmt"
	"net/netip"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/banger-vm/banger/internal/guestident"
)

// Config is what banger-init reads from the kernel command line (banger.* keys).
type Config struct {
	// Root, Layer and Work are block device specs: "/dev/vda" or "serial:NAME" (a virtio-blk
	// serial, which stays stable whatever order the devices are probed in).
	Root       string
	RootFSType string
	// Layer holds the per-VM writable overlay; empty means a tmpfs (changes are lost at
	// power off).
	Layer string
	// RootRW mounts the root device itself read-write, with no overlay: image builds
	// change the image's own filesystem. Layer is ignored then.
	RootRW bool
	// Work is mounted at /root; empty means /root comes from the image.
	Work string
	// Modules holds the kernel's module tree (read-only), mounted at
	// /lib/modules/<release> in the new root; empty means the image's own, if any.
	Modules string

	Address  netip.Prefix // zero when the network is not configured
	Gateway  netip.Addr
	DNS      []netip.Addr
	Hostname string

	Agent      string // "vsock", "serial" or "none"
	AgentPort  uint32 // vsock port
	AgentName  string // virtio-serial port name
	Init       string // "" = auto: systemd or runit if the image's /sbin/init is one, else stay PID 1
	DeviceWait int    // seconds to wait for devices to appear
	Debug      bool
}

// Defaults for keys that are not given.
const (
	DefaultAgentPort  = 1024
	DefaultAgentName  = "banger.agent"
	defaultDeviceWait = 20
)

// InitNone asks banger-init to stay PID 1 even if the image has an init.
const InitNone = "none"

// maxSerialLen is virtio-blk's serial length (VIRTIO_BLK_ID_BYTES).
const maxSerialLen = 20

type keySpec struct {
	help string
	set  func(c *Config, v string) error
}

// keySpecs is the table of banger.* keys.
func keySpecs() map[string]keySpec {
	return map[string]keySpec{
		"banger.root":       {"root filesystem device (/dev/vdX or serial:NAME)", func(c *Config, v string) error { return setDevice(&c.Root, v) }},
		"banger.rootfstype": {"root filesystem type (default ext4)", func(c *Config, v string) error { return setWord(&c.RootFSType, v) }},
		"banger.layer":      {"writable layer device (default: tmpfs)", func(c *Config, v string) error { return setDevice(&c.Layer, v) }},
		"banger.work":       {"work disk device, mounted at /root", func(c *Config, v string) error { return setDevice(&c.Work, v) }},
		"banger.modules":    {"kernel modules disk device, mounted read-only at /lib/modules/<release>", func(c *Config, v string) error { return setDevice(&c.Modules, v) }},
		"banger.ip": {"guest address with prefix length, e.g. 172.30.0.2/24", func(c *Config, v string) error {
			p, err := netip.ParsePrefix(v)
			if err != nil || !p.Addr().Is4() {
				return fmt.Errorf("want an IPv4 address with prefix length like 172.30.0.2/24")
			}
			c.Address = p
			return nil
		}},
		"banger.gw": {"default gateway address", func(c *Config, v string) error {
			a, err := netip.ParseAddr(v)
			if err != nil {
				return fmt.Errorf("want an IP address")
			}
			c.Gateway = a
			return nil
		}},
		"banger.dns": {"comma-separated DNS servers", func(c *Config, v string) error {
			c.DNS = nil
			for _, s := range strings.Split(v, ",") {
				a, err := netip.ParseAddr(s)
				if err != nil {
					return fmt.Errorf("%q is not an IP address", s)
				}
				c.DNS = append(c.DNS, a)
			}
			return nil
		}},
		"banger.hostname": {"guest hostname", func(c *Config, v string) error {
			if !guestident.ValidHostname(v) {
				return fmt.Errorf("%q is not a valid hostname (letters, digits, '-', at most 63 characters)", v)
			}
			c.Hostname = v
			return nil
		}},
		"banger.agent": {"agent transport: vsock, serial or none", func(c *Config, v string) error {
			switch v {
			case "vsock", "serial", "none":
				c.Agent = v
				return nil
			}
			return fmt.Errorf("%q is not one of vsock, serial, none", v)
		}},
		"banger.agent_port": {"agent vsock port", func(c *Config, v string) error {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 {
				return fmt.Errorf("want a port number")
			}
			c.AgentPort = uint32(n)
			return nil
		}},
		"banger.agent_name": {"agent virtio-serial port name", func(c *Config, v string) error { return setWord(&c.AgentName, v) }},
		"banger.init": {"init to hand over to, or none to stay PID 1 (default: auto)", func(c *Config, v string) error {
			if v != InitNone && !path.IsAbs(v) {
				return fmt.Errorf("want an absolute path or none")
			}
			c.Init = v
			return nil
		}},
		"banger.device_wait": {"seconds to wait for devices", func(c *Config, v string) error {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > 600 {
				return fmt.Errorf("want seconds between 1 and 600")
			}
			c.DeviceWait = n
			return nil
		}},
		"banger.rootrw": {"mount the root device read-write without an overlay (image builds; 0 or 1)", func(c *Config, v string) error {
			switch v {
			case "0", "1":
				c.RootRW = v == "1"
				return nil
			}
			return fmt.Errorf("want 0 or 1")
		}},
		"banger.debug": {"verbose console output (0 or 1)", func(c *Config, v string) error {
			switch v {
			case "0", "1":
				c.Debug = v == "1"
				return nil
			}
			return fmt.Errorf("want 0 or 1")
		}},
	}
}

// ParseCmdline extracts banger.* keys from a kernel command line. Other keys belong to the
// kernel and are ignored; unknown banger.* keys and bad values are errors naming the key.
func ParseCmdline(cmdline string) (Config, error) {
	c := Config{RootFSType: "ext4", Agent: "vsock", AgentPort: DefaultAgentPort, AgentName: DefaultAgentName, DeviceWait: defaultDeviceWait}
	specs := keySpecs()
	seen := map[string]bool{}
	for _, field := range splitCmdline(cmdline) {
		key, value, hasValue := strings.Cut(field, "=")
		if !strings.HasPrefix(key, "banger.") {
			continue
		}
		spec, ok := specs[key]
		if !ok {
			return Config{}, fmt.Errorf("unknown kernel command line key %s (known: %s)", key, strings.Join(knownKeys(specs), ", "))
		}
		if seen[key] {
			return Config{}, fmt.Errorf("kernel command line key %s given twice", key)
		}
		seen[key] = true
		if !hasValue || value == "" {
			return Config{}, fmt.Errorf("kernel command line key %s has no value (%s)", key, spec.help)
		}
		if err := spec.set(&c, value); err != nil {
			return Config{}, fmt.Errorf("kernel command line key %s=%s: %v", key, value, err)
		}
	}
	if c.Root == "" {
		return Config{}, fmt.Errorf("kernel command line has no banger.root: say which device holds the root filesystem (banger.root=/dev/vda or serial:NAME)")
	}
	if c.Gateway.IsValid() && !c.Address.IsValid() {
		return Config{}, fmt.Errorf("kernel command line has banger.gw but no banger.ip")
	}
	if c.Gateway.IsValid() && !c.Address.Contains(c.Gateway) {
		return Config{}, fmt.Errorf("banger.gw=%s is outside banger.ip=%s", c.Gateway, c.Address)
	}
	return c, nil
}

// splitCmdline splits on spaces, keeping double-quoted values together as the kernel does.
func splitCmdline(s string) []string {
	var out []string
	var b strings.Builder
	quoted := false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
		case (r == ' ' || r == '\n' || r == '\t') && !quoted:
			if b.Len() > 0 {
				out = append(out, b.String())
				b.Reset()
			}
		default:
			b.WriteRune(r)
		}
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}

func knownKeys(specs map[string]keySpec) []string {
	keys := make([]string, 0, len(specs))
	for k := range specs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func setDevice(dst *string, v string) error {
	switch {
	case strings.HasPrefix(v, "/dev/") && path.Clean(v) == v && !strings.Contains(v, ".."):
	case strings.HasPrefix(v, "serial:") && validSerial(strings.TrimPrefix(v, "serial:")) && len(v) <= len("serial:")+maxSerialLen:
	default:
		return fmt.Errorf("want /dev/NAME or serial:NAME (a virtio-blk serial of at most %d characters)", maxSerialLen)
	}
	*dst = v
	return nil
}

func setWord(dst *string, v string) error {
	if !validSerial(v) {
		return fmt.Errorf("want letters, digits, '.', '_' or '-'")
	}
	*dst = v
	return nil
}

func validSerial(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}
