//go:build integration

package e2e

// Warm start from the built binary: a template of the busybox test image, two clones of it
// started at once, each its own machine, and the fallbacks to a cold boot.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/system"
)

func (e *env) inspectImage(name string) api.ImageInspect {
	e.t.Helper()
	var in api.ImageInspect
	if err := json.Unmarshal([]byte(e.must("image", "inspect", name, "--json").stdout), &in); err != nil {
		e.t.Fatal(err)
	}
	return in
}

func (e *env) inspectVM(name string) api.VM {
	e.t.Helper()
	var vm api.VM
	if err := json.Unmarshal([]byte(e.must("vm", "inspect", name, "--json").stdout), &vm); err != nil {
		e.t.Fatal(err)
	}
	return vm
}

// templateSums is the sha256 of each file of a template directory.
func templateSums(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, en := range ents {
		f, err := os.Open(filepath.Join(dir, en.Name()))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[en.Name()] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

func TestWarmStart(t *testing.T) {
	e := setupWith(t, "")
	shape := []string{"--image", "bb", "--memory", "512M"}
	r := e.must(append([]string{"image", "warm", "bb", "--json"}, shape[2:]...)...)
	var tpl api.Template
	if err := json.Unmarshal([]byte(r.stdout), &tpl); err != nil {
		t.Fatalf("image warm output: %v\n%s", err, r.stdout)
	}
	if tpl.MemoryMiB != 512 || !tpl.Current || tpl.Dir == "" {
		t.Fatalf("template %+v", tpl)
	}
	found := false
	for _, it := range e.inspectImage("bb").Templates {
		found = found || it.Key == tpl.Key
	}
	if !found {
		t.Fatalf("image inspect does not list template %s", tpl.Key)
	}
	before := templateSums(t, tpl.Dir)

	// Two clones at once.
	names := []string{"warm-a", "warm-b"}
	var wg sync.WaitGroup
	results := make([]result, len(names))
	for i, n := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = e.run(append([]string{"vm", "create", n, "--start"}, shape...)...)
		}()
	}
	wg.Wait()
	type seen struct {
		vm              api.VM
		machineID, rand string
	}
	var got []seen
	for i, n := range names {
		if results[i].code != 0 {
			t.Fatalf("create %s: %s", n, results[i].stderr)
		}
		vm := e.inspectVM(n)
		if vm.Boot == nil || vm.Boot.Mode != api.BootWarm || vm.Boot.Template != tpl.Key {
			t.Fatalf("%s boot %+v, want warm from %s", n, vm.Boot, tpl.Key)
		}
		if !strings.Contains(e.must("vm", "inspect", n).stdout, "boot:      warm") {
			t.Errorf("%s: vm inspect does not show the warm boot", n)
		}
		stages := []string{}
		for _, s := range vm.Stages {
			stages = append(stages, s.Name)
		}
		if !strings.Contains(strings.Join(stages, ","), "taking on its identity") {
			t.Errorf("%s stages %v lack the identity stage", n, stages)
		}
		// getrandom just after the restore, the clock, the hostname, the machine-id.
		hostBefore := time.Now().Unix()
		out := e.must("vm", "exec", n, "--", "sh", "-c",
			"head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s; hostname; cat /etc/machine-id").stdout
		hostAfter := time.Now().Unix()
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 4 {
			t.Fatalf("%s exec output %q", n, out)
		}
		if secs, err := strconv.ParseInt(lines[1], 10, 64); err != nil || secs < hostBefore-1 || secs > hostAfter+1 {
			t.Errorf("%s: guest clock %q, host %d-%d", n, lines[1], hostBefore, hostAfter)
		}
		if lines[2] != n {
			t.Errorf("%s: hostname %q", n, lines[2])
		}
		got = append(got, seen{vm: vm, rand: lines[0], machineID: lines[3]})
		e.checkNetwork(vm)
	}
	a, b := got[0], got[1]
	if a.rand == b.rand || len(a.rand) != 32 {
		t.Errorf("getrandom after restore: %q and %q", a.rand, b.rand)
	}
	if a.machineID == b.machineID || len(a.machineID) != 32 {
		t.Errorf("machine-ids %q and %q", a.machineID, b.machineID)
	}
	if a.vm.SSH.HostKey == b.vm.SSH.HostKey || a.vm.SSH.HostKey == "" {
		t.Errorf("host keys %q and %q", a.vm.SSH.HostKey, b.vm.SSH.HostKey)
	}
	if e.netns != "" && (a.vm.Network.IP == b.vm.Network.IP || a.vm.Network.MAC == b.vm.Network.MAC) {
		t.Errorf("networks %+v and %+v", a.vm.Network, b.vm.Network)
	}
	// Each clone serves its own host key (the guest's file is the pinned one).
	for _, s := range got {
		key := strings.TrimSpace(e.must("vm", "exec", s.vm.Name, "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout)
		if f := strings.Fields(key); len(f) < 2 || !strings.Contains(s.vm.SSH.HostKey, f[1]) {
			t.Errorf("%s: guest host key %q, pinned %q", s.vm.Name, key, s.vm.SSH.HostKey)
		}
	}
	e.must("vm", "exec", "warm-a", "--", "sh", "-c", "echo mine > /root/only-a && sync")
	if r := e.run("vm", "exec", "warm-b", "--", "cat", "/root/only-a"); r.code == 0 {
		t.Errorf("warm-b sees warm-a's /root file: %q", r.stdout)
	}
	// The template is untouched by its clones.
	for f, sum := range templateSums(t, tpl.Dir) {
		if before[f] != sum {
			t.Errorf("template file %s changed while clones ran", f)
		}
	}
	for _, n := range names {
		e.must("vm", "rm", "--force", n)
	}

	t.Run("first start of a VM created without --start", func(t *testing.T) {
		e.must(append([]string{"vm", "create", "later-a"}, shape...)...)
		e.must("vm", "start", "later-a")
		vm := e.inspectVM("later-a")
		if vm.Boot == nil || vm.Boot.Mode != api.BootWarm || vm.Boot.Template != tpl.Key {
			t.Errorf("first start: boot %+v, want warm from %s", vm.Boot, tpl.Key)
		}
		if got := strings.TrimSpace(e.must("vm", "exec", "later-a", "--", "hostname").stdout); got != "later-a" {
			t.Errorf("hostname %q", got)
		}
		key := strings.TrimSpace(e.must("vm", "exec", "later-a", "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub").stdout)
		if f := strings.Fields(key); len(f) < 2 || !strings.Contains(vm.SSH.HostKey, f[1]) {
			t.Errorf("guest host key %q, pinned %q", key, vm.SSH.HostKey)
		}
		if aside, _ := filepath.Glob(filepath.Join(e.dir, "data/banger/vms/*/*.before-warm-start")); len(aside) != 0 {
			t.Errorf("the replaced disks were left: %v", aside)
		}
		e.must("vm", "exec", "later-a", "--", "sh", "-c", "echo kept > /root/kept && sync")
		e.must("vm", "stop", "later-a")
		e.must("vm", "start", "later-a")
		if vm := e.inspectVM("later-a"); vm.Boot == nil || vm.Boot.Mode != api.BootCold || !strings.Contains(vm.Boot.Reason, "later starts") {
			t.Errorf("second start: boot %+v", vm.Boot)
		}
		if got := e.must("vm", "exec", "later-a", "--", "cat", "/root/kept").stdout; got != "kept\n" {
			t.Errorf("after a restart /root/kept reads %q", got)
		}
		e.must("vm", "rm", "--force", "later-a")
	})
	t.Run("--cold", func(t *testing.T) {
		e.must(append([]string{"vm", "create", "cold-a", "--start", "--cold"}, shape...)...)
		if vm := e.inspectVM("cold-a"); vm.Boot == nil || vm.Boot.Mode != api.BootCold || !strings.Contains(vm.Boot.Reason, "--cold") {
			t.Errorf("boot %+v", vm.Boot)
		}
		e.must("vm", "rm", "--force", "cold-a")
	})
	t.Run("corrupt state file", func(t *testing.T) {
		// Rewrite the state with garbage of the same size: the VMM rejects it on restore.
		var meta struct {
			StateFile string `json:"state_file"`
		}
		b, err := os.ReadFile(filepath.Join(tpl.Dir, "template.json"))
		if err != nil || json.Unmarshal(b, &meta) != nil {
			t.Fatalf("template.json: %v", err)
		}
		state := filepath.Join(tpl.Dir, meta.StateFile)
		fi, err := os.Stat(state)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(state, []byte(strings.Repeat("x", int(fi.Size()))), 0o600); err != nil {
			t.Fatal(err)
		}
		e.must(append([]string{"vm", "create", "corrupt-a", "--start"}, shape...)...)
		vm := e.inspectVM("corrupt-a")
		if vm.Boot == nil || vm.Boot.Mode != api.BootCold || !strings.Contains(vm.Boot.Reason, "restoring the template failed") {
			t.Errorf("boot %+v", vm.Boot)
		}
		if r := e.must("vm", "exec", "corrupt-a", "--", "hostname"); strings.TrimSpace(r.stdout) != "corrupt-a" {
			t.Errorf("the cold fallback's hostname %q", r.stdout)
		}
		// The broken template was retired; a rebuild at the same key may already be back
		// (the fallback queues one), but never with the corrupt state.
		if got, err := os.ReadFile(state); err == nil && string(got) == strings.Repeat("x", int(fi.Size())) {
			t.Errorf("the broken template %s is still registered", tpl.Dir)
		}
		e.must("vm", "rm", "--force", "corrupt-a")
	})
	t.Run("missing memory file", func(t *testing.T) {
		r := e.must(append([]string{"image", "warm", "bb", "--json"}, shape[2:]...)...)
		var tpl2 api.Template
		if err := json.Unmarshal([]byte(r.stdout), &tpl2); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(filepath.Join(tpl2.Dir, "memory")); err != nil {
			t.Fatal(err)
		}
		e.must(append([]string{"vm", "create", "nomem-a", "--start"}, shape...)...)
		vm := e.inspectVM("nomem-a")
		if vm.Boot == nil || vm.Boot.Mode != api.BootCold || !strings.Contains(vm.Boot.Reason, "memory is missing") {
			t.Errorf("boot %+v", vm.Boot)
		}
		e.must("vm", "rm", "--force", "nomem-a")
	})
	t.Run("changed agent build", func(t *testing.T) {
		// The fallbacks above queued rebuilds: start from a registered, whole template.
		var current api.Template
		for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
			if current = e.currentTemplate("bb", 512); current.Key != "" {
				if _, err := os.Stat(filepath.Join(current.Dir, "memory")); err == nil {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no whole template of bb after the fallbacks: %+v", e.inspectImage("bb").Templates)
			}
		}
		// Trailing bytes change the agent's content (so the initramfs and the template key)
		// without changing what it does: an ELF's loader ignores them.
		agentBin := filepath.Join(e.bin, "banger-agent")
		f, err := os.OpenFile(agentBin, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteString("\nbanger e2e: another agent build\n")
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		e.must(append([]string{"vm", "create", "newagent-a", "--start"}, shape...)...)
		vm := e.inspectVM("newagent-a")
		if vm.Boot == nil || vm.Boot.Mode != api.BootCold || !strings.Contains(vm.Boot.Reason, "guest agent build") {
			t.Errorf("boot with a changed agent: %+v", vm.Boot)
		}
		e.must("vm", "rm", "--force", "newagent-a")
		// The cold boot queued a rebuild: the new template replaces the old one.
		deadline := time.Now().Add(3 * time.Minute)
		var rebuilt api.Template
		for {
			if rebuilt = e.currentTemplate("bb", 512); rebuilt.Key != "" && rebuilt.Key != current.Key {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no template of the new agent build after 3 minutes: %+v", e.inspectImage("bb").Templates)
			}
			time.Sleep(500 * time.Millisecond)
		}
		e.must(append([]string{"vm", "create", "newagent-b", "--start"}, shape...)...)
		if vm := e.inspectVM("newagent-b"); vm.Boot == nil || vm.Boot.Mode != api.BootWarm || vm.Boot.Template != rebuilt.Key {
			t.Errorf("boot after the rebuild: %+v, want warm from %s", vm.Boot, rebuilt.Key)
		}
		e.must("vm", "rm", "--force", "newagent-b")
		if _, err := os.Stat(current.Dir); err == nil {
			t.Errorf("the superseded template %s is still registered", current.Dir)
		}
	})
	t.Run("daemon killed while it builds a template", func(t *testing.T) {
		// Another shape, so no template of it exists yet.
		warm := e.command("image", "warm", "bb", "--memory", "384M")
		if err := warm.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = warm.Process.Kill(); _ = warm.Wait() }()
		templates := filepath.Join(e.dir, "data/banger/templates")
		deadline := time.Now().Add(90 * time.Second)
		for {
			staged, _ := filepath.Glob(filepath.Join(templates, ".staging-*"))
			if len(staged) > 0 && len(vmmProcesses(filepath.Join(templates, ".staging-"))) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the template's builder VM never ran (staging %v)", staged)
			}
			time.Sleep(50 * time.Millisecond)
		}
		e.killDaemon()
		_ = warm.Wait()
		e.daemon("start")
		waitNoVMM(t, filepath.Join(templates, ".staging-"))
		if tpl := e.currentTemplate("bb", 384); tpl.Key != "" {
			t.Errorf("a template was registered by the killed build: %+v", tpl)
		}
		if ents, _ := filepath.Glob(filepath.Join(templates, ".staging-*")); len(ents) != 0 {
			t.Errorf("staging left after the restart: %v", ents)
		}
		if vms := e.vms(); len(vms) != 0 {
			t.Errorf("VMs after the restart: %+v", vms)
		}
		// And the same build works afterwards.
		e.must("image", "warm", "bb", "--memory", "384M")
		if tpl := e.currentTemplate("bb", 384); tpl.Key == "" {
			t.Errorf("no template after the rebuild: %+v", e.inspectImage("bb").Templates)
		}
	})
	t.Run("full disk while saving", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root, to mount a small tmpfs for the templates")
		}
		uid, gid := uint32(0), uint32(0)
		if e.cred != nil {
			uid, gid = e.cred.Uid, e.cred.Gid
		}
		// The templates on a filesystem of their own, room for one small build. The daemon
		// may run in a mount namespace of its own (ip netns exec makes one): the tmpfs is
		// mounted there, and the test reaches it through /proc/PID/root.
		templates := filepath.Join(e.dir, "data/banger/templates")
		opts := fmt.Sprintf("size=448m,mode=0700,uid=%d,gid=%d", uid, gid)
		pid := e.daemonPID()
		inNS := func(argv ...string) {
			t.Helper()
			if e.netns != "" {
				argv = append([]string{"nsenter", "-t", strconv.Itoa(pid), "-m", "--"}, argv...)
			}
			if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
				t.Fatalf("%v: %v\n%s", argv, err, out)
			}
		}
		inNS("mount", "-t", "tmpfs", "-o", opts, "tmpfs", templates)
		defer inNS("umount", "-l", templates)
		seenTemplates := filepath.Join(fmt.Sprintf("/proc/%d/root", pid), templates)
		logPath := filepath.Join(e.dir, "state/banger/daemon.log")
		settling := "letting the template's guest settle"
		seen := logCount(logPath, settling)
		warm := e.command("image", "warm", "bb", "--memory", "256M")
		var stderr strings.Builder
		warm.Stderr = &stderr
		if err := warm.Start(); err != nil {
			t.Fatal(err)
		}
		// Once the guest is booted and settling, fill the disk: the save has no room.
		for deadline := time.Now().Add(2 * time.Minute); logCount(logPath, settling) == seen; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the build never reached its settle stage: %s", stderr.String())
			}
		}
		free, err := system.FreeBytes(seenTemplates)
		if err != nil {
			t.Fatal(err)
		}
		filler, err := os.Create(filepath.Join(seenTemplates, "filler"))
		if err != nil {
			t.Fatal(err)
		}
		err = unix.Fallocate(int(filler.Fd()), 0, 0, int64(free)-4<<20)
		filler.Close()
		if err != nil {
			t.Fatal(err)
		}
		werr := warm.Wait()
		if werr == nil || !strings.Contains(stderr.String(), "not enough free space") {
			t.Fatalf("image warm on a full disk: %v\n%s", werr, stderr.String())
		}
		t.Logf("image warm said: %s", strings.TrimSpace(stderr.String()))
		waitNoVMM(t, filepath.Join(templates, ".staging-"))
		left, _ := os.ReadDir(seenTemplates)
		for _, en := range left {
			if en.Name() != "filler" {
				t.Errorf("left on the full disk: %s", en.Name())
			}
		}
		if tpl := e.currentTemplate("bb", 256); tpl.Key != "" {
			t.Errorf("a template was registered: %+v", tpl)
		}
		if vms := e.vms(); len(vms) != 0 {
			t.Errorf("VMs after the failed build: %+v", vms)
		}
		// With the space back, the same build works.
		if err := os.Remove(filepath.Join(seenTemplates, "filler")); err != nil {
			t.Fatal(err)
		}
		e.must("image", "warm", "bb", "--memory", "256M")
		if tpl := e.currentTemplate("bb", 256); tpl.Key == "" {
			t.Errorf("no template after the space came back: %+v", e.inspectImage("bb").Templates)
		}
	})
	e.requireNoLeaks()
}

// daemonPID is the running daemon's pid.
func (e *env) daemonPID() int {
	e.t.Helper()
	var st struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(e.must("daemon", "status", "--json").stdout), &st); err != nil || st.PID == 0 {
		e.t.Fatalf("daemon status: %v", err)
	}
	return st.PID
}

// logCount is how many times the daemon log at path says s.
func logCount(path, s string) int {
	data, _ := os.ReadFile(path)
	return strings.Count(string(data), s)
}

// currentTemplate is the image's current template of memMiB (the other shape fields at
// their defaults), or a zero Template.
func (e *env) currentTemplate(image string, memMiB int) api.Template {
	e.t.Helper()
	for _, t := range e.inspectImage(image).Templates {
		if t.Current && t.MemoryMiB == memMiB {
			return t
		}
	}
	return api.Template{}
}
