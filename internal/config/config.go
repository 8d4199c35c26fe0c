// Package config loads banger's TOML configuration. Every key is optional; the effective
// value of each key remembers where it came from so `banger config show` can explain it.
package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/banger-vm/banger/internal/units"
)

// Config is the effective configuration.
type Config struct {
	LogLevel string
	// DataDir overrides $XDG_DATA_HOME/banger when set.
	DataDir string
	Daemon  Daemon
	VMM     VMM
	VM      VM
	Runtime Runtime
	Doctor  Doctor
	Network Network
	Images  Images
	Update  Update

	// File is the config file that was read ("" when none exists).
	File string
	// Sources maps every key to where its value came from.
	Sources map[string]Source
	// Warnings are non-fatal problems (unknown or deprecated keys) for the caller to show.
	Warnings []string
}

// Daemon configures the owner daemon.
type Daemon struct {
	// Autostart lets the CLI start a detached daemon when none is running.
	Autostart       bool
	ShutdownTimeout time.Duration
}

// VMM picks the virtual machine monitor.
type VMM struct {
	Driver string // auto, firecracker, qemu
}

// VM configures how VMs start.
type VM struct {
	// WarmStart restores new VMs from a booted snapshot of their image (a template) instead
	// of cold-booting them, and builds the templates in the background.
	WarmStart bool
}

// Runtime is the runtime bundle: the host binaries and guest artifacts banger runs VMs with.
// Empty paths mean "look up the default".
type Runtime struct {
	FirecrackerPath string
	QEMUPath        string
	KernelPath      string
	AgentPath       string
	InitPath        string
	SSHKeyPath      string
}

// Doctor tunes doctor's thresholds.
type Doctor struct {
	MinFreeSpace int64
}

// Update configures `banger update`. The keys that verify releases are compiled in, not
// configured: a config file must not be able to make banger trust a different signer.
type Update struct {
	// ChannelURL is the release channel: <url>/latest.json and <url>/<version>/manifest.json.
	ChannelURL string
	// VerifyTimeout bounds the restart and doctor after installing; past it, the update
	// rolls back.
	VerifyTimeout time.Duration
}

// Network configures guest networking (the root helper reads the same keys).
type Network struct {
	Bridge       string
	Subnet       string // IPv4 prefix, e.g. 10.213.66.0/24
	TAPPoolSize  int
	DNS          []string // empty: the host's upstream resolvers
	IsolateVMs   bool
	HelperSocket string
}

// DefaultSubnet is a /24 deep inside 10/8, picked to be unlikely to collide with home
// routers (192.168.x), Docker (172.17-31.x) or the usual VPN ranges (10.0-10.10.x).
const DefaultSubnet = "10.213.66.0/24"

// SourceKind says where a value came from.
type SourceKind string

const (
	FromDefault SourceKind = "default"
	FromFile    SourceKind = "file"
)

// Source records the origin of one effective value.
type Source struct {
	Kind SourceKind `json:"kind"`
	File string     `json:"file,omitempty"`
	// Key is the key as written in the file when it differs from the canonical one (legacy keys).
	Key string `json:"key,omitempty"`
}

func (s Source) String() string {
	switch {
	case s.Kind == FromFile && s.Key != "":
		return fmt.Sprintf("%s (as deprecated %s)", s.File, s.Key)
	case s.Kind == FromFile:
		return s.File
	default:
		return string(s.Kind)
	}
}

// legacyPrefix/currentPrefix: the guest agent was once called the "ping helper"; its keys
// were renamed and old config files must keep working.
const (
	legacyPrefix  = "ping_helper_"
	currentPrefix = "agent_"
)

// Defaults returns the configuration with no file.
func Defaults() Config {
	c := Config{
		LogLevel: "info",
		Daemon:   Daemon{Autostart: true, ShutdownTimeout: 10 * time.Second},
		VMM:      VMM{Driver: "auto"},
		VM:       VM{WarmStart: true},
		Doctor:   Doctor{MinFreeSpace: 10 << 30},
		Network: Network{Bridge: "banger0", Subnet: DefaultSubnet, TAPPoolSize: 4, IsolateVMs: true,
			HelperSocket: "/run/banger/helper.sock"},
		Images:  defaultImages(),
		Update:  Update{VerifyTimeout: 2 * time.Minute},
		Sources: map[string]Source{},
	}
	for _, k := range keys(&c) {
		c.Sources[k.name] = Source{Kind: FromDefault}
	}
	return c
}

// Load reads path; a missing file yields the defaults.
func Load(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Defaults(), nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("read config %s: %w", path, err)
	}
	return Parse(path, data)
}

// Parse decodes TOML text; path is only used in messages and sources.
func Parse(path string, data []byte) (Config, error) {
	c := Defaults()
	c.File = path
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	flat := map[string]any{}
	flatten("", raw, flat)

	known := map[string]key{}
	for _, k := range keys(&c) {
		known[k.name] = k
	}
	// Legacy keys first, so a file using both spellings has the current one win.
	names := make([]string, 0, len(flat))
	for n := range flat {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		canonical, legacy := canonicalName(name)
		k, ok := known[canonical]
		if !ok {
			c.Warnings = append(c.Warnings, fmt.Sprintf("config %s: unknown key %q ignored (see `banger config show` for the valid keys)", path, name))
			continue
		}
		if legacy {
			if _, both := flat[canonical]; both {
				c.Warnings = append(c.Warnings, fmt.Sprintf("config %s: deprecated key %q ignored because %q is also set; remove it", path, name, canonical))
				continue
			}
			c.Warnings = append(c.Warnings, fmt.Sprintf("config %s: key %q is deprecated; rename it to %q", path, name, canonical))
		}
		if err := k.set(flat[name]); err != nil {
			return Config{}, fmt.Errorf("config %s: key %q: %w", path, name, err)
		}
		src := Source{Kind: FromFile, File: path}
		if legacy {
			src.Key = name
		}
		c.Sources[canonical] = src
	}
	return c, nil
}

func canonicalName(name string) (string, bool) {
	dir, leaf := "", name
	if i := strings.LastIndex(name, "."); i >= 0 {
		dir, leaf = name[:i+1], name[i+1:]
	}
	if strings.HasPrefix(leaf, legacyPrefix) {
		return dir + currentPrefix + strings.TrimPrefix(leaf, legacyPrefix), true
	}
	return name, false
}

func flatten(prefix string, m map[string]any, out map[string]any) {
	for k, v := range m {
		name := prefix + k
		if sub, ok := v.(map[string]any); ok {
			flatten(name+".", sub, out)
			continue
		}
		out[name] = v
	}
}

// Entry is one effective key for display.
type Entry struct {
	Key    string `json:"key"`
	Value  string `json:"value"`
	Source Source `json:"source"`
	Help   string `json:"help"`
}

// Entries lists every key with its effective value, in a stable order.
func (c *Config) Entries() []Entry {
	var out []Entry
	for _, k := range keys(c) {
		out = append(out, Entry{Key: k.name, Value: k.show(), Source: c.Sources[k.name], Help: k.help})
	}
	return out
}

// key describes one config key: how to set it from TOML, how to print it, what it means.
type key struct {
	name string
	help string
	set  func(v any) error
	show func() string
}

func keys(c *Config) []key {
	return []key{
		enumKey("log_level", "daemon log verbosity", &c.LogLevel, "debug", "info", "warn", "error"),
		pathKey("data_dir", "where images, VM disks and state.db live (default $XDG_DATA_HOME/banger)", &c.DataDir),
		boolKey("daemon.autostart", "start a detached daemon when a command needs one and none runs", &c.Daemon.Autostart),
		durationKey("daemon.shutdown_timeout", "how long the daemon waits for in-flight requests on SIGTERM", &c.Daemon.ShutdownTimeout),
		enumKey("vmm.driver", "virtual machine monitor: auto picks firecracker, else qemu", &c.VMM.Driver, "auto", "firecracker", "qemu"),
		boolKey("vm.warm_start", "start new VMs as clones of a booted template of their image (built in the background) instead of cold boots", &c.VM.WarmStart),
		pathKey("runtime.firecracker_path", "firecracker binary (default: firecracker on PATH)", &c.Runtime.FirecrackerPath),
		pathKey("runtime.qemu_path", "qemu-system-x86_64 binary (default: on PATH)", &c.Runtime.QEMUPath),
		pathKey("runtime.kernel_path", "guest kernel (default: banger's managed kernel)", &c.Runtime.KernelPath),
		pathKey("runtime.agent_path", "guest agent binary (default: the one shipped with banger)", &c.Runtime.AgentPath),
		pathKey("runtime.init_path", "guest init binary, banger-init (default: next to the banger binary)", &c.Runtime.InitPath),
		pathKey("runtime.ssh_key_path", "SSH private key for VMs (default: banger's own ed25519 key)", &c.Runtime.SSHKeyPath),
		sizeKey("doctor.min_free_space", "doctor warns when the data dir's filesystem has less free space", &c.Doctor.MinFreeSpace),
		stringKey("network.bridge", "bridge the guests' TAP devices attach to", &c.Network.Bridge, validInterfaceName),
		stringKey("network.subnet", "guest IPv4 subnet; the bridge gets its first address (must not overlap an existing route)", &c.Network.Subnet, validSubnet),
		intKey("network.tap_pool_size", "warm TAP devices kept ready so VMs start without creating one", &c.Network.TAPPoolSize, 0, 64),
		addrListKey("network.dns", "DNS servers for guests (default: the host's upstream resolvers)", &c.Network.DNS),
		boolKey("network.isolate_vms", "block VM-to-VM traffic on the bridge (bridge port isolation)", &c.Network.IsolateVMs),
		pathKey("network.helper_socket", "the root helper's socket", &c.Network.HelperSocket),
		stringKey("images.default", "image `banger image pull` pulls when given no name", &c.Images.Default, validImageName),
		stringKey("images.debian_mirror", "Debian archive for Debian images and kernels", &c.Images.DebianMirror, validMirror),
		pathKey("images.debian_keyring", "OpenPGP keyring that verifies the Debian archive", &c.Images.DebianKeyring),
		enumKey("images.kernel", "fetch a kernel (linux-image-cloud-amd64) with each pull if none is present", &c.Images.Kernel, "auto", "none"),
		stringListKey("images.extra", "extra catalog entries: [\"NAME=REF\"] with REF an OCI reference, debian:SUITE, or URL#sha256=HEX", &c.Images.Extra),
		sizeKey("images.max_size", "largest image banger accepts: decompressed OCI layers, tar contents, imported ext4, build --size", &c.Images.MaxSize),
		intKey("images.max_layers", "most layers an OCI image may have", &c.Images.MaxLayers, 1, 4096),
		stringKey("update.channel_url", "release channel `banger update` reads (an https URL; empty: only `banger update --from FILE`)", &c.Update.ChannelURL, validChannelURL),
		durationKey("update.verify_timeout", "how long `banger update` waits for the restarted daemon and its doctor before rolling back", &c.Update.VerifyTimeout),
	}
}

func stringValue(v any) (string, error) {
	s, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("want a string, got %s", tomlType(v))
	}
	return s, nil
}

func enumKey(name, help string, dst *string, allowed ...string) key {
	return key{name: name, help: help + " (" + strings.Join(allowed, ", ") + ")",
		set: func(v any) error {
			s, err := stringValue(v)
			if err != nil {
				return err
			}
			for _, a := range allowed {
				if s == a {
					*dst = s
					return nil
				}
			}
			return fmt.Errorf("%q is not one of %s", s, strings.Join(allowed, ", "))
		},
		show: func() string { return *dst }}
}

func pathKey(name, help string, dst *string) key {
	return key{name: name, help: help,
		set: func(v any) error {
			s, err := stringValue(v)
			if err != nil {
				return err
			}
			if s == "" {
				*dst = ""
				return nil
			}
			if strings.HasPrefix(s, "~/") {
				home, err := os.UserHomeDir()
				if err != nil {
					return fmt.Errorf("cannot expand ~: %w", err)
				}
				s = filepath.Join(home, s[2:])
			}
			if !filepath.IsAbs(s) {
				return fmt.Errorf("path %q must be absolute (or start with ~/)", s)
			}
			*dst = filepath.Clean(s)
			return nil
		},
		show: func() string { return *dst }}
}

func boolKey(name, help string, dst *bool) key {
	return key{name: name, help: help,
		set: func(v any) error {
			b, ok := v.(bool)
			if !ok {
				return fmt.Errorf("want true or false, got %s", tomlType(v))
			}
			*dst = b
			return nil
		},
		show: func() string { return fmt.Sprint(*dst) }}
}

func durationKey(name, help string, dst *time.Duration) key {
	return key{name: name, help: help,
		set: func(v any) error {
			s, err := stringValue(v)
			if err != nil {
				return fmt.Errorf("want a duration string like \"10s\": %w", err)
			}
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				return fmt.Errorf("%q is not a positive duration like \"10s\" or \"1m30s\"", s)
			}
			*dst = d
			return nil
		},
		show: func() string { return dst.String() }}
}

func sizeKey(name, help string, dst *int64) key {
	return key{name: name, help: help,
		set: func(v any) error {
			switch x := v.(type) {
			case int64:
				if x < 0 {
					return fmt.Errorf("size must not be negative")
				}
				*dst = x
				return nil
			case string:
				n, err := units.ParseSize(x)
				if err != nil {
					return err
				}
				*dst = n
				return nil
			}
			return fmt.Errorf("want a size like \"10GiB\", got %s", tomlType(v))
		},
		show: func() string { return units.FormatSize(*dst) }}
}

func stringKey(name, help string, dst *string, valid func(string) error) key {
	return key{name: name, help: help,
		set: func(v any) error {
			s, err := stringValue(v)
			if err != nil {
				return err
			}
			if err := valid(s); err != nil {
				return err
			}
			*dst = s
			return nil
		},
		show: func() string { return *dst }}
}

func intKey(name, help string, dst *int, lo, hi int64) key {
	return key{name: name, help: fmt.Sprintf("%s (%d-%d)", help, lo, hi),
		set: func(v any) error {
			n, ok := v.(int64)
			if !ok {
				return fmt.Errorf("want an integer, got %s", tomlType(v))
			}
			if n < lo || n > hi {
				return fmt.Errorf("%d is not between %d and %d", n, lo, hi)
			}
			*dst = int(n)
			return nil
		},
		show: func() string { return fmt.Sprint(*dst) }}
}

func addrListKey(name, help string, dst *[]string) key {
	return key{name: name, help: help,
		set: func(v any) error {
			list, ok := v.([]any)
			if !ok {
				return fmt.Errorf("want a list of IP addresses like [\"192.0.2.53\"], got %s", tomlType(v))
			}
			out := []string{}
			for _, e := range list {
				s, ok := e.(string)
				if !ok {
					return fmt.Errorf("want IP address strings, got %s", tomlType(e))
				}
				a, err := netip.ParseAddr(s)
				if err != nil {
					return fmt.Errorf("%q is not an IP address", s)
				}
				out = append(out, a.String())
			}
			*dst = out
			return nil
		},
		show: func() string { return strings.Join(*dst, ", ") }}
}

func validInterfaceName(s string) error {
	if len(s) == 0 || len(s) > 15 || strings.ContainsAny(s, "/ \t\n:") {
		return fmt.Errorf("%q is not an interface name (1-15 characters, no '/', ':' or spaces)", s)
	}
	return nil
}

func validChannelURL(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" && u.Scheme != "file" || (u.Scheme != "https" && u.Scheme != "http" && u.Scheme != "file") {
		return fmt.Errorf("%q is not an https:// (or http://, file://) URL", s)
	}
	return nil
}

func validSubnet(s string) error {
	p, err := netip.ParsePrefix(s)
	if err != nil || !p.Addr().Is4() {
		return fmt.Errorf("%q is not an IPv4 prefix like %s", s, DefaultSubnet)
	}
	if p.Masked() != p {
		return fmt.Errorf("%q has host bits set; write %s", s, p.Masked())
	}
	if p.Bits() < 16 || p.Bits() > 29 {
		return fmt.Errorf("%q: the prefix length must be between /16 and /29", s)
	}
	return nil
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case time.Time:
		return "a datetime"
	}
	return fmt.Sprintf("%T", v)
}
