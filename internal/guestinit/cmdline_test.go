package guestinit

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseCmdlineFull(t *testing.T) {
	c, err := ParseCmdline(`BOOT_IMAGE=/vmlinuz console=ttyS0 tsc_early_khz=2000000 banger.root=serial:rootfs banger.layer=serial:layer ` +
		`banger.work=/dev/vdc banger.modules=serial:modules banger.ip=172.30.0.5/24 banger.gw=172.30.0.1 banger.dns=172.30.0.1,9.9.9.9 banger.hostname=dev-1 ` +
		`banger.agent=serial banger.agent_name=banger.agent banger.init=/usr/lib/systemd/systemd banger.device_wait=7 banger.debug=1 banger.rootrw=1` + "\n")
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Root: "serial:rootfs", RootFSType: "ext4", Layer: "serial:layer", Work: "/dev/vdc",
		Address: netip.MustParsePrefix("172.30.0.5/24"), Gateway: netip.MustParseAddr("172.30.0.1"),
		DNS:      []netip.Addr{netip.MustParseAddr("172.30.0.1"), netip.MustParseAddr("9.9.9.9")},
		Hostname: "dev-1", Agent: "serial", AgentPort: DefaultAgentPort, AgentName: "banger.agent",
		Init: "/usr/lib/systemd/systemd", DeviceWait: 7, Debug: true,
	}
	if c.Root != want.Root || c.Layer != want.Layer || c.Work != want.Work || c.Modules != "serial:modules" || c.Address != want.Address ||
		c.Gateway != want.Gateway || len(c.DNS) != 2 || c.DNS[1] != want.DNS[1] || c.Hostname != want.Hostname ||
		c.Agent != want.Agent || c.AgentName != want.AgentName || c.Init != want.Init || c.DeviceWait != 7 || !c.Debug || !c.RootRW {
		t.Fatalf("got  %+v\nwant %+v", c, want)
	}
}

func TestParseCmdlineDefaults(t *testing.T) {
	c, err := ParseCmdline("console=ttyS0 banger.root=/dev/vda quiet")
	if err != nil {
		t.Fatal(err)
	}
	if c.RootFSType != "ext4" || c.Agent != "vsock" || c.AgentPort != 1024 || c.AgentName != "banger.agent" ||
		c.Layer != "" || c.RootRW || c.Work != "" || c.Modules != "" || c.Address.IsValid() || c.Init != "" || c.DeviceWait != defaultDeviceWait {
		t.Fatalf("defaults: %+v", c)
	}
}

func TestParseCmdlineQuotedValue(t *testing.T) {
	c, err := ParseCmdline(`banger.root=/dev/vda foo="a b c" banger.hostname="box"`)
	if err != nil {
		t.Fatal(err)
	}
	if c.Hostname != "box" {
		t.Fatalf("hostname %q", c.Hostname)
	}
}

func TestParseCmdlineErrors(t *testing.T) {
	cases := map[string]string{
		"console=ttyS0": "no banger.root",
		"banger.root=/dev/vda banger.rooot=/dev/vdb": "unknown kernel command line key banger.rooot",
		"banger.root=/dev/vda banger.root=/dev/vdb":  "given twice",
		"banger.root=":                   "banger.root has no value",
		"banger.root":                    "banger.root has no value",
		"banger.root=vda":                "banger.root=vda: want /dev/NAME or serial:NAME",
		"banger.root=/dev/../etc/passwd": "want /dev/NAME",
		"banger.root=serial:this-serial-is-far-too-long":                "at most 20 characters",
		"banger.root=serial:bad/serial":                                 "want /dev/NAME or serial:NAME",
		"banger.root=/dev/vda banger.modules=modules":                   "banger.modules=modules: want /dev/NAME or serial:NAME",
		"banger.root=/dev/vda banger.ip=10.0.0.5":                       "banger.ip=10.0.0.5: want an IPv4 address with prefix length",
		"banger.root=/dev/vda banger.ip=fd00::1/64":                     "want an IPv4 address",
		"banger.root=/dev/vda banger.gw=10.0.0.1":                       "banger.gw but no banger.ip",
		"banger.root=/dev/vda banger.ip=10.0.0.5/24 banger.gw=10.1.0.1": "outside banger.ip",
		"banger.root=/dev/vda banger.dns=1.1.1.1,nope":                  `"nope" is not an IP address`,
		"banger.root=/dev/vda banger.hostname=-bad":                     "not a valid hostname",
		"banger.root=/dev/vda banger.agent=pigeon":                      "not one of vsock, serial, none",
		"banger.root=/dev/vda banger.agent_port=0":                      "want a port number",
		"banger.root=/dev/vda banger.init=sbin/init":                    "want an absolute path or none",
		"banger.root=/dev/vda banger.device_wait=-3":                    "want seconds",
		"banger.root=/dev/vda banger.debug=yes":                         "want 0 or 1",
	}
	for in, want := range cases {
		_, err := ParseCmdline(in)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseCmdline(%q) = %v, want error containing %q", in, err, want)
		}
	}
}
