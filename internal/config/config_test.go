package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMissingFileGivesDefaults(t *testing.T) {
	c, err := Load(filepath.Join(t.TempDir(), "nope.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if c.LogLevel != "info" || c.VMM.Driver != "auto" || !c.Daemon.Autostart || c.Daemon.ShutdownTimeout != 10*time.Second {
		t.Fatalf("unexpected defaults: %+v", c)
	}
	for _, e := range c.Entries() {
		if e.Source.Kind != FromDefault {
			t.Errorf("%s: source %v, want default", e.Key, e.Source)
		}
		if e.Help == "" {
			t.Errorf("%s has no help text", e.Key)
		}
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings on defaults: %v", c.Warnings)
	}
}

func TestFileValuesAndSources(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	text := `
log_level = "debug"
[daemon]
shutdown_timeout = "3s"
autostart = false
[vmm]
driver = "qemu"
[runtime]
firecracker_path = "/opt/fc/firecracker"
[doctor]
min_free_space = "2GiB"
`
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.LogLevel != "debug" || c.Daemon.ShutdownTimeout != 3*time.Second || c.Daemon.Autostart ||
		c.VMM.Driver != "qemu" || c.Runtime.FirecrackerPath != "/opt/fc/firecracker" || c.Doctor.MinFreeSpace != 2<<30 {
		t.Fatalf("values not applied: %+v", c)
	}
	if s := c.Sources["vmm.driver"]; s.Kind != FromFile || s.File != path {
		t.Errorf("vmm.driver source = %+v", s)
	}
	if s := c.Sources["runtime.kernel_path"]; s.Kind != FromDefault {
		t.Errorf("runtime.kernel_path source = %+v", s)
	}
}

func TestUnknownKeysWarn(t *testing.T) {
	c, err := Parse("c.toml", []byte("colour = \"red\"\n[vmm]\ndrvier = \"qemu\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	joined := strings.Join(c.Warnings, "\n")
	for _, want := range []string{`unknown key "colour"`, `unknown key "vmm.drvier"`} {
		if !strings.Contains(joined, want) {
			t.Errorf("warnings %q lack %q", joined, want)
		}
	}
	if c.VMM.Driver != "auto" {
		t.Errorf("unknown key changed a value: %q", c.VMM.Driver)
	}
}

func TestBadValuesNameTheKey(t *testing.T) {
	cases := map[string]string{
		"log_level = \"loud\"":                       `key "log_level": "loud" is not one of`,
		"[vmm]\ndriver = 3":                          `key "vmm.driver": want a string, got an integer`,
		"[daemon]\nshutdown_timeout = \"soon\"":      `key "daemon.shutdown_timeout"`,
		"[daemon]\nshutdown_timeout = \"-1s\"":       `key "daemon.shutdown_timeout"`,
		"[daemon]\nautostart = \"yes\"":              `key "daemon.autostart": want true or false`,
		"[runtime]\nkernel_path = \"rel/vmlinux\"":   `key "runtime.kernel_path": path "rel/vmlinux" must be absolute`,
		"[doctor]\nmin_free_space = \"lots\"":        `key "doctor.min_free_space": invalid size`,
		"[doctor]\nmin_free_space = -5":              `key "doctor.min_free_space": size must not be negative`,
		"data_dir = [1, 2]":                          `key "data_dir": want a string, got an array`,
		"[runtime]\nping_helper_path = \"relative\"": `key "runtime.ping_helper_path": path "relative" must be absolute`,
	}
	for text, want := range cases {
		_, err := Parse("c.toml", []byte(text))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) error = %v, want it to contain %q", text, err, want)
		}
	}
	if _, err := Parse("c.toml", []byte("this is = not toml [")); err == nil || !strings.Contains(err.Error(), "c.toml") {
		t.Errorf("syntax error not reported with file name: %v", err)
	}
}

func TestLegacyPingHelperKeys(t *testing.T) {
	c, err := Parse("c.toml", []byte("[runtime]\nping_helper_path = \"/opt/banger/agent\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Runtime.AgentPath != "/opt/banger/agent" {
		t.Fatalf("legacy key not mapped: %q", c.Runtime.AgentPath)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], `rename it to "runtime.agent_path"`) {
		t.Fatalf("want one deprecation warning, got %q", c.Warnings)
	}
	if s := c.Sources["runtime.agent_path"]; s.Key != "runtime.ping_helper_path" || !strings.Contains(s.String(), "deprecated") {
		t.Errorf("source does not record the legacy key: %+v", s)
	}

	// Both spellings: the current key wins and the legacy one is reported as ignored.
	c, err = Parse("c.toml", []byte("[runtime]\nping_helper_path = \"/old\"\nagent_path = \"/new\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Runtime.AgentPath != "/new" || len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "ignored") {
		t.Fatalf("agent_path=%q warnings=%q", c.Runtime.AgentPath, c.Warnings)
	}

	// A legacy spelling of a key that never existed is still unknown.
	c, err = Parse("c.toml", []byte("[runtime]\nping_helper_colour = \"x\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "unknown key") {
		t.Fatalf("warnings = %q", c.Warnings)
	}
}

func TestTildeExpansion(t *testing.T) {
	t.Setenv("HOME", "/home/dev")
	c, err := Parse("c.toml", []byte("[runtime]\nssh_key_path = \"~/.ssh/banger\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Runtime.SSHKeyPath != "/home/dev/.ssh/banger" {
		t.Fatalf("got %q", c.Runtime.SSHKeyPath)
	}
}

func TestUpdateSection(t *testing.T) {
	c := Defaults()
	if c.Update.ChannelURL != "" || c.Update.VerifyTimeout != 2*time.Minute {
		t.Fatalf("update defaults: %+v", c.Update)
	}
	c, err := Parse("c.toml", []byte("[update]\nchannel_url = \"https://releases.example.org/banger/stable\"\nverify_timeout = \"45s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Update.ChannelURL != "https://releases.example.org/banger/stable" || c.Update.VerifyTimeout != 45*time.Second {
		t.Fatalf("update section not applied: %+v", c.Update)
	}
	for _, bad := range []string{"releases.example.org", "ftp://x/y", "https://"} {
		if _, err := Parse("c.toml", []byte("[update]\nchannel_url = \""+bad+"\"\n")); err == nil {
			t.Errorf("channel_url %q accepted", bad)
		}
	}
}
