package guestinit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"github.com/banger-vm/banger/internal/guestident"
	"golang.org/x/sys/unix"
)

// Paths inside the initramfs and the new root.
const (
	newRoot        = "/newroot"
	bangerRun      = "/run/banger"
	lowerDir       = bangerRun + "/lower"
	layerDir       = bangerRun + "/layer"
	agentInitramfs = "/banger-agent"
	// AgentPath is where the agent lives once the root is switched: /run survives the switch
	// (it is moved, and systemd keeps an already-mounted /run), so no file of the image changes.
	AgentPath = bangerRun + "/banger-agent"
	// StagesFile records banger-init's stage timings for the agent's /healthz.
	StagesFile = bangerRun + "/boot-stages.json"
)

// Stage is one timed step of the boot.
type Stage struct {
	Name       string  `json:"name"`
	DurationMS float64 `json:"duration_ms"`
}

// boot carries the state of one run of banger-init.
type boot struct {
	console io.Writer
	cfg     Config
	stages  []Stage
	start   time.Time
}

// Main is banger-init's entry point. It only returns if it is not PID 1 (a mistake: it
// prints how it is meant to be used); as PID 1 it hands over, serves, or powers off.
func Main(version string) {
	b := &boot{console: os.Stdout, start: time.Now()}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "banger-init "+version+": this is PID 1 of banger's guest initramfs; it is not meant to be run by hand")
		os.Exit(2)
	}
	// The kernel names PID 1 after /init; the agent recognises banger-init by this name when
	// it asks PID 1 to power off.
	_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&[]byte("banger-init\x00")[0])), 0, 0, 0)
	b.logf("banger-init %s starting", version)
	if err := b.run(); err != nil {
		b.fatal(err)
	}
}

func (b *boot) logf(format string, args ...any) {
	fmt.Fprintf(b.console, "banger-init: "+format+"\n", args...)
}

func (b *boot) debugf(format string, args ...any) {
	if b.cfg.Debug {
		b.logf(format, args...)
	}
}

// fatal prints one clear line and powers the machine off: a VM that cannot boot must stop,
// not hang where nobody sees it.
func (b *boot) fatal(err error) {
	fmt.Fprintf(b.console, "banger-init: FATAL: %v\n", err)
	fmt.Fprintln(b.console, "banger-init: powering off")
	unix.Sync()
	time.Sleep(100 * time.Millisecond) // let the console drain
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// Reboot only returns on failure; there is nothing left to do but wait.
	select {}
}

func (b *boot) stage(name string, fn func() error) error {
	t := time.Now()
	err := fn()
	d := time.Since(t)
	b.stages = append(b.stages, Stage{Name: name, DurationMS: float64(d.Microseconds()) / 1000})
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	b.debugf("%s done in %s", name, d.Round(time.Microsecond))
	return nil
}

func (b *boot) run() error {
	if err := b.stage("mount api filesystems", mountAPIFilesystems); err != nil {
		return err
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("read /proc/cmdline: %w", err)
	}
	if b.cfg, err = ParseCmdline(string(cmdline)); err != nil {
		return err
	}
	if err := b.stage("load modules", b.loadModules); err != nil {
		return err
	}
	if err := b.stage("mount root", b.mountRoot); err != nil {
		return err
	}
	if err := b.stage("mount modules", b.mountModules); err != nil {
		return err
	}
	if err := b.stage("mount work disk", b.mountWork); err != nil {
		return err
	}
	if err := b.stage("configure network", b.configureNetwork); err != nil {
		return err
	}
	if err := b.stage("configure hostname and dns", b.configureIdentity); err != nil {
		return err
	}
	if err := b.stage("install agent", b.installAgent); err != nil {
		return err
	}
	mode, initPath, err := b.chooseInit()
	if err != nil {
		return err
	}
	if mode == modeSystemd {
		if err := b.stage("write agent unit", b.writeSystemdUnit); err != nil {
			return err
		}
	}
	if mode == modeRunit {
		if err := b.stage("write runit services", b.writeRunitServices); err != nil {
			b.logf("warning: %v: staying PID 1 instead of handing over to %s", err, initPath)
			mode = modeStay
		}
	}
	if err := b.stage("switch root", switchRoot); err != nil {
		return err
	}
	b.stages = append(b.stages, Stage{Name: "total", DurationMS: float64(time.Since(b.start).Microseconds()) / 1000})
	b.writeStages()
	b.logf("root ready in %s (%s)", time.Since(b.start).Round(time.Millisecond), b.stageSummary())
	if mode == modeSystemd || mode == modeRunit {
		b.logf("handing over to %s", initPath)
		err := unix.Exec(initPath, []string{initPath}, os.Environ())
		return fmt.Errorf("exec %s: %w", initPath, err)
	}
	if mode == modeExec {
		b.logf("handing over to %s (the agent is not started for this init)", initPath)
		err := unix.Exec(initPath, []string{initPath}, os.Environ())
		return fmt.Errorf("exec %s: %w", initPath, err)
	}
	b.logf("the image has no systemd: staying PID 1 and supervising the agent")
	// An init system would mount these; without one, terminals (vm exec -t, ssh) and
	// POSIX shared memory need them from banger-init.
	if err := mountSessionFilesystems(); err != nil {
		b.logf("warning: %v", err)
	}
	return b.supervise()
}

func (b *boot) stageSummary() string {
	parts := make([]string, 0, len(b.stages))
	for _, s := range b.stages {
		if s.Name != "total" {
			parts = append(parts, fmt.Sprintf("%s %.0f ms", s.Name, s.DurationMS))
		}
	}
	return strings.Join(parts, ", ")
}

func (b *boot) writeStages() {
	data, err := json.Marshal(b.stages)
	if err == nil {
		err = os.WriteFile(StagesFile, data, 0o644)
	}
	if err != nil {
		b.logf("warning: cannot record boot stages: %v", err)
	}
}

func mountAPIFilesystems() error {
	mounts := []struct {
		src, dst, fstype string
		flags            uintptr
		data             string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	}
	for _, m := range mounts {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return err
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	// Debian's sysv boot scripts (run by runit's stage 1 too) empty /run unless it is
	// marked as a tmpfs, which would delete the agent and its runit service.
	if err := os.WriteFile("/run/.tmpfs", nil, 0o644); err != nil {
		return err
	}
	// /run/banger is a tmpfs of its own: it moves into the new root with /run, and stays
	// executable when the image's boot scripts remount /run noexec (Debian's do).
	if err := os.MkdirAll(bangerRun, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", bangerRun, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil && !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("mount tmpfs on %s: %w", bangerRun, err)
	}
	return nil
}

// mountSessionFilesystems mounts /dev/pts (pseudo-terminals) and /dev/shm where the image's
// own init is not there to do it.
func mountSessionFilesystems() error {
	for _, m := range []struct {
		dst, fstype, data string
		flags             uintptr
	}{
		{"/dev/pts", "devpts", "gid=5,mode=0620,ptmxmode=0666", unix.MS_NOSUID | unix.MS_NOEXEC},
		{"/dev/shm", "tmpfs", "mode=1777", unix.MS_NOSUID | unix.MS_NODEV},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", m.dst, err)
		}
		if err := unix.Mount(m.fstype, m.dst, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dst, err)
		}
	}
	return nil
}

// loadModules loads the modules the initramfs builder listed, dependencies first.
func (b *boot) loadModules() error {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return err
	}
	release := unix.ByteSliceToString(uts.Release[:])
	dir := filepath.Join("/lib/modules", release)
	f, err := os.Open(filepath.Join(dir, "banger.load"))
	if errors.Is(err, os.ErrNotExist) {
		b.logf("no module list for kernel %s in the initramfs: assuming everything is built in", release)
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rel := strings.TrimSpace(sc.Text())
		if rel == "" || strings.HasPrefix(rel, "#") {
			continue
		}
		if err := loadModule(filepath.Join(dir, rel)); err != nil {
			return fmt.Errorf("load %s: %w", rel, err)
		}
		b.debugf("loaded %s", rel)
	}
	return sc.Err()
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// resolveDevice waits for a device spec to appear and returns its /dev path. Devices probe
// asynchronously after their driver module loads, so a missing device is retried.
func (b *boot) resolveDevice(spec string) (string, error) {
	deadline := time.Now().Add(time.Duration(b.cfg.DeviceWait) * time.Second)
	for {
		p, err := lookupDevice(spec)
		if err == nil {
			return p, nil
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("device %s did not appear within %ds: %v (block devices present: %s)", spec, b.cfg.DeviceWait, err, listBlockDevices())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func lookupDevice(spec string) (string, error) {
	if serial, ok := strings.CutPrefix(spec, "serial:"); ok {
		ents, err := os.ReadDir("/sys/block")
		if err != nil {
			return "", err
		}
		for _, e := range ents {
			s, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "serial"))
			if err == nil && strings.TrimSpace(string(s)) == serial {
				return "/dev/" + e.Name(), nil
			}
		}
		return "", fmt.Errorf("no block device with serial %q", serial)
	}
	if _, err := os.Stat(spec); err != nil {
		return "", err
	}
	return spec, nil
}

func listBlockDevices() string {
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return "unknown"
	}
	var names []string
	for _, e := range ents {
		name := e.Name()
		if s, err := os.ReadFile(filepath.Join("/sys/block", name, "serial")); err == nil && len(strings.TrimSpace(string(s))) > 0 {
			name += " (serial " + strings.TrimSpace(string(s)) + ")"
		}
		names = append(names, name)
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// mountRoot mounts the image read-only and a writable layer over it, so any number of VMs
// share one image file and it never changes.
func (b *boot) mountRoot() error {
	root, err := b.resolveDevice(b.cfg.Root)
	if err != nil {
		return err
	}
	for _, d := range []string{lowerDir, layerDir, newRoot} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if b.cfg.RootRW {
		if err := unix.Mount(root, newRoot, b.cfg.RootFSType, 0, ""); err != nil {
			return fmt.Errorf("mount root filesystem %s (%s) read-write: %w", root, b.cfg.Root, err)
		}
		return nil
	}
	if err := unix.Mount(root, lowerDir, b.cfg.RootFSType, unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("mount root filesystem %s (%s) read-only: %w: is banger.root the right device and banger.rootfstype right?", root, b.cfg.Root, err)
	}
	if b.cfg.Layer != "" {
		layer, err := b.resolveDevice(b.cfg.Layer)
		if err != nil {
			return err
		}
		if err := unix.Mount(layer, layerDir, "ext4", 0, ""); err != nil {
			return fmt.Errorf("mount writable layer %s (%s): %w", layer, b.cfg.Layer, err)
		}
	} else if err := unix.Mount("tmpfs", layerDir, "tmpfs", 0, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs writable layer: %w", err)
	}
	upper, work := filepath.Join(layerDir, "upper"), filepath.Join(layerDir, "work")
	for _, d := range []string{upper, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", lowerDir, upper, work)
	if err := unix.Mount("overlay", newRoot, "overlay", 0, opts); err != nil {
		return fmt.Errorf("mount overlay root (%s): %w", opts, err)
	}
	return nil
}

func (b *boot) mountWork() error {
	if b.cfg.Work == "" {
		return nil
	}
	dev, err := b.resolveDevice(b.cfg.Work)
	if err != nil {
		return err
	}
	target := filepath.Join(newRoot, "root")
	if err := os.MkdirAll(target, 0o700); err != nil {
		return err
	}
	if err := unix.Mount(dev, target, "ext4", unix.MS_NOATIME, ""); err != nil {
		return fmt.Errorf("mount work disk %s (%s) on /root: %w", dev, b.cfg.Work, err)
	}
	// The work disk replaces the image's /root: root's login shell still reads the
	// distribution's dotfiles.
	copied, err := seedRootDotfiles(newRoot, 0, 0)
	if err != nil {
		b.logf("warning: root's dotfiles: %v", err)
	} else if len(copied) > 0 {
		b.debugf("copied %s from /etc/skel to /root", strings.Join(copied, ", "))
	}
	return nil
}

// configureIdentity writes hostname, /etc/hosts and /etc/resolv.conf into the writable
// layer, so the image stays untouched.
func (b *boot) configureIdentity() error {
	if b.cfg.RootRW {
		return b.configureIdentityRW()
	}
	if h := b.cfg.Hostname; h != "" {
		if err := unix.Sethostname([]byte(h)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
		if err := guestident.WriteHostname(newRoot, h); err != nil {
			return err
		}
	}
	if len(b.cfg.DNS) > 0 {
		if err := guestident.ReplaceFile(filepath.Join(newRoot, "etc/resolv.conf"), guestident.ResolvConf("written by banger-init", b.cfg.DNS), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// configureIdentityRW is configureIdentity for a root mounted read-write (an image build):
// nothing of the VM's identity may end up in the image, so the hostname is only set in the
// kernel and the DNS servers are bind-mounted over /etc/resolv.conf from /run (when that
// is a plain file; a symlink, e.g. to systemd-resolved's stub, is left to the image).
func (b *boot) configureIdentityRW() error {
	if h := b.cfg.Hostname; h != "" {
		if err := unix.Sethostname([]byte(h)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	if len(b.cfg.DNS) == 0 {
		return nil
	}
	target := filepath.Join(newRoot, "etc/resolv.conf")
	fi, err := os.Lstat(target)
	if err != nil || !fi.Mode().IsRegular() {
		b.logf("image build: /etc/resolv.conf is not a plain file; keeping the image's")
		return nil
	}
	src := filepath.Join(bangerRun, "resolv.conf")
	if err := os.WriteFile(src, []byte(guestident.ResolvConf("written by banger-init for an image build (not part of the image)", b.cfg.DNS)), 0o644); err != nil {
		return err
	}
	if err := unix.Mount(src, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s over /etc/resolv.conf: %w", src, err)
	}
	return nil
}

func (b *boot) installAgent() error {
	if b.cfg.Agent == "none" {
		return nil
	}
	src, err := os.Open(agentInitramfs)
	if err != nil {
		return fmt.Errorf("the initramfs has no agent: %w", err)
	}
	defer src.Close()
	dst, err := os.OpenFile(AgentPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

// agentArgs is the agent's command line for the configured transport.
func (b *boot) agentArgs() []string {
	switch b.cfg.Agent {
	case "serial":
		return []string{AgentPath, "--transport", "serial", "--port-name", b.cfg.AgentName}
	default:
		return []string{AgentPath, "--transport", "vsock", "--port", fmt.Sprint(b.cfg.AgentPort)}
	}
}

type initMode int

const (
	modeStay initMode = iota
	modeSystemd
	modeRunit
	modeExec
)

// chooseInit decides how the boot continues: systemd gets the agent as a runtime unit,
// runit as a service; an explicit other init is exec'd as asked; otherwise banger-init
// stays PID 1.
func (b *boot) chooseInit() (initMode, string, error) {
	switch b.cfg.Init {
	case InitNone:
		return modeStay, "", nil
	case "":
		target, err := resolveInRoot(newRoot, "/sbin/init")
		if err != nil {
			if p, ok := findRunitInit(newRoot); ok {
				return modeRunit, p, nil
			}
			return modeStay, "", nil // no init in the image
		}
		switch {
		case filepath.Base(target) == "systemd":
			return modeSystemd, "/sbin/init", nil
		case isRunit(target):
			return modeRunit, "/sbin/init", nil
		}
		return modeStay, "", nil
	}
	target, err := resolveInRoot(newRoot, b.cfg.Init)
	if err != nil {
		return modeStay, "", fmt.Errorf("banger.init=%s: not in the image: %w", b.cfg.Init, err)
	}
	switch {
	case filepath.Base(target) == "systemd":
		return modeSystemd, b.cfg.Init, nil
	case isRunit(target):
		return modeRunit, b.cfg.Init, nil
	}
	return modeExec, b.cfg.Init, nil
}

// writeRunitServices links the agent's (and if needed sshd's) runit service into the
// image's service directory.
func (b *boot) writeRunitServices() error {
	var args []string
	if b.cfg.Agent != "none" {
		args = b.agentArgs()
	}
	s, err := setupRunit(newRoot, runitServiceDir, runitServiceDir, args)
	if err != nil {
		return err
	}
	b.debugf("runit services in %s: %s", s.svdir, strings.Join(s.services, ", "))
	return nil
}

// resolveInRoot follows symlinks of p as seen from inside root.
func resolveInRoot(root, p string) (string, error) {
	for i := 0; i < 16; i++ {
		fi, err := os.Lstat(filepath.Join(root, p))
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			if fi.Mode()&0o111 == 0 {
				return "", fmt.Errorf("%s is not executable", p)
			}
			return p, nil
		}
		t, err := os.Readlink(filepath.Join(root, p))
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(t) {
			t = filepath.Join(filepath.Dir(p), t)
		}
		p = filepath.Clean(t)
	}
	return "", fmt.Errorf("%s: too many symlinks", p)
}

// writeSystemdUnit starts the agent under systemd as a runtime unit: /run/systemd/system is
// on systemd's unit path, so the image itself is not changed.
func (b *boot) writeSystemdUnit() error {
	if b.cfg.Agent == "none" {
		return nil
	}
	dir := "/run/systemd/system"
	wants := filepath.Join(dir, "multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		return err
	}
	unit := fmt.Sprintf(`# Written by banger-init at boot; lives only in /run.
[Unit]
Description=banger guest agent
DefaultDependencies=no
After=systemd-remount-fs.service
Before=sysinit.target

[Service]
ExecStart=%s
Restart=always
RestartSec=1s

[Install]
WantedBy=multi-user.target
`, strings.Join(b.agentArgs(), " "))
	if err := os.WriteFile(filepath.Join(dir, "banger-agent.service"), []byte(unit), 0o644); err != nil {
		return err
	}
	// Wanted by sysinit.target too, so the agent answers early in boot, before multi-user.
	for _, w := range []string{wants, filepath.Join(dir, "sysinit.target.wants")} {
		if err := os.MkdirAll(w, 0o755); err != nil {
			return err
		}
		if err := os.Symlink("../banger-agent.service", filepath.Join(w, "banger-agent.service")); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	}
	return nil
}

// switchRoot moves the API filesystems into the new root, frees the initramfs, and makes
// the new root "/" — what switch_root(8) does.
func switchRoot() error {
	for _, m := range []string{"/dev", "/proc", "/sys", "/run"} {
		target := filepath.Join(newRoot, m)
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("the image has no %s and it cannot be created: %w", m, err)
		}
		if err := unix.Mount(m, target, "", unix.MS_MOVE, ""); err != nil {
			return fmt.Errorf("move %s into the new root: %w", m, err)
		}
	}
	freeInitramfs()
	if err := unix.Chdir(newRoot); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move the new root to /: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot into the new root: %w", err)
	}
	return unix.Chdir("/")
}

// freeInitramfs deletes the initramfs files (they live in RAM) except the new root's mount
// point; best effort, as switch_root does.
func freeInitramfs() {
	var rootStat unix.Stat_t
	if unix.Stat("/", &rootStat) != nil {
		return
	}
	ents, err := os.ReadDir("/")
	if err != nil {
		return
	}
	for _, e := range ents {
		p := "/" + e.Name()
		var st unix.Stat_t
		if p == newRoot || unix.Lstat(p, &st) != nil || st.Dev != rootStat.Dev {
			continue // another filesystem: a mount point
		}
		_ = os.RemoveAll(p)
	}
}
