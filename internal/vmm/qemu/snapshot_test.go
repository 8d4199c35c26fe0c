package qemu

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/sshkeys"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// TestSnapshotAndClones boots a real guest with its RAM in a file, snapshots it, and runs
// two clones of it at once, each on its own copies of the disks: both come up with the
// template's memory (its boot_id, a file it wrote to its RAM-only /dev/shm) without
// booting, and what one clone writes the other does not see.
func TestSnapshotAndClones(t *testing.T) {
	f, qemu := getFixture(t)
	d := testDriver(qemu, f)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	snapDir := t.TempDir()
	tv, spec := newVM(t, f)
	spec.MemoryFile = filepath.Join(snapDir, "memory")
	// With TAPs (root), the template has a NIC and each clone gets its own address and MAC.
	taps := []string{makeTAPn(t, 1), makeTAPn(t, 2), makeTAPn(t, 3)}
	withNIC := taps[0] != "" && taps[1] != "" && taps[2] != ""
	if withNIC {
		spec.NICs = []vmm.NIC{{TAP: taps[0], MAC: net.HardwareAddr{2, 0xbb, 0, 0, 0, 1}}}
		spec.Cmdline += " banger.ip=10.213.99.1/24"
	}
	m := start(t, d, spec)
	waitReady(t, m)
	templateMachineID := execOut(t, m.Agent(), "sh", "-c", "cat /etc/machine-id 2>/dev/null; true")
	bootID := execOut(t, m.Agent(), "cat", "/proc/sys/kernel/random/boot_id")
	execOut(t, m.Agent(), "sh", "-c", "mkdir -p /dev/shm && mount -t tmpfs shm /dev/shm 2>/dev/null; echo in-ram > /dev/shm/marker")

	snap, err := m.(vmm.Snapshotter).Snapshot(ctx, snapDir)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	fi, err := os.Stat(snap.StateFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("state file %d bytes", fi.Size())
	if fi.Size() > 16<<20 {
		t.Errorf("state file is %d bytes: the RAM went into it (x-ignore-shared not in effect)", fi.Size())
	}
	// The clones' disks are the template's as of the snapshot: copied while it is paused.
	type clone struct {
		spec vmm.MachineSpec
		m    vmm.Machine
	}
	var clones []clone
	for i := range 2 {
		cv, cspec := newVM(t, f)
		copyDisks(t, tv, cv)
		cspec.Name = "clone" + string(rune('a'+i))
		if withNIC {
			cspec.NICs = []vmm.NIC{{TAP: taps[1+i], MAC: net.HardwareAddr{2, 0xbb, 0, 0, 0, byte(2 + i)}}}
		}
		clones = append(clones, clone{spec: cspec})
	}
	if err := m.Kill(); err != nil {
		t.Fatal(err)
	}
	for i := range clones {
		c := &clones[i]
		began := time.Now()
		cm, err := d.Restore(ctx, c.spec, snap)
		if err != nil {
			t.Fatalf("restore %s: %v", c.spec.Name, err)
		}
		c.m = cm
		t.Cleanup(func() { cm.Kill(); cm.Close() })
		waitReady(t, cm)
		t.Logf("%s: agent ready %s after Restore was called", c.spec.Name, time.Since(began).Round(time.Millisecond))
		if got := execOut(t, cm.Agent(), "cat", "/proc/sys/kernel/random/boot_id"); got != bootID {
			t.Errorf("%s: boot_id %q, template's %q: the clone booted instead of resuming", c.spec.Name, got, bootID)
		}
		if got := execOut(t, cm.Agent(), "cat", "/dev/shm/marker"); got != "in-ram\n" {
			t.Errorf("%s: the template's RAM-only file reads %q", c.spec.Name, got)
		}
		if st := cm.State(); st.MemoryFile != snap.MemoryFile {
			t.Errorf("%s: state memory file %q", c.spec.Name, st.MemoryFile)
		}

		// The clone takes on its own identity.
		priv, pub, err := sshkeys.NewKey("banger vm " + c.spec.Name)
		if err != nil {
			t.Fatal(err)
		}
		entropy := make([]byte, 64)
		rand.Read(entropy)
		req := agent.IdentityRequest{Hostname: c.spec.Name, Entropy: entropy, UnixNano: time.Now().UnixNano(),
			SSHHostKey: &agent.SSHHostKey{Private: string(priv), Public: string(pub)}}
		ip := fmt.Sprintf("10.213.99.%d", 10+i)
		if withNIC {
			req.Network = &agent.IdentityNetwork{Address: ip + "/24", Gateway: "10.213.99.254", DNS: []string{"10.213.99.254"}, MAC: c.spec.NICs[0].MAC.String()}
		}
		res, err := cm.Agent().Identity(ctx, req)
		if err != nil {
			t.Fatalf("%s: identity: %v", c.spec.Name, err)
		}
		t.Logf("%s: identity %+v", c.spec.Name, res)
		if got := strings.TrimSpace(execOut(t, cm.Agent(), "hostname")); got != c.spec.Name {
			t.Errorf("%s: hostname %q", c.spec.Name, got)
		}
		if got := execOut(t, cm.Agent(), "cat", "/etc/machine-id"); strings.TrimSpace(got) != res.MachineID || got == templateMachineID || len(res.MachineID) != 32 {
			t.Errorf("%s: machine-id %q (answer %q, template %q)", c.spec.Name, got, res.MachineID, templateMachineID)
		}
		if got := execOut(t, cm.Agent(), "cat", "/etc/ssh/ssh_host_ed25519_key.pub"); strings.TrimSpace(got) != strings.TrimSpace(string(pub)) {
			t.Errorf("%s: host key %q, want %q", c.spec.Name, got, pub)
		}
		// The clock stopped with the template; now it is the host's (give or take the
		// exec round trip under TCG).
		out := strings.TrimSpace(execOut(t, cm.Agent(), "date", "+%s"))
		if secs, err := strconv.ParseInt(out, 10, 64); err != nil || time.Since(time.Unix(secs, 0)).Abs() > time.Minute {
			t.Errorf("%s: guest clock %q, host %d", c.spec.Name, out, time.Now().Unix())
		}
		if withNIC {
			got := execOut(t, cm.Agent(), "sh", "-c", "ip -4 addr show eth0; cat /sys/class/net/eth0/address; ip route; cat /etc/resolv.conf")
			for _, w := range []string{ip + "/24", c.spec.NICs[0].MAC.String(), "default via 10.213.99.254", "nameserver 10.213.99.254"} {
				if !strings.Contains(got, w) {
					t.Errorf("%s: network lacks %q:\n%s", c.spec.Name, w, got)
				}
			}
			if strings.Contains(got, "10.213.99.1/24") {
				t.Errorf("%s: still has the template's address:\n%s", c.spec.Name, got)
			}
		}
	}
	for _, c := range clones {
		pss, _ := vmm.ReadPSS(c.m.PID())
		t.Logf("%s: PSS %d MiB with the other clone up", c.spec.Name, pss>>20)
	}
	execOut(t, clones[0].m.Agent(), "sh", "-c", "echo mine > /dev/shm/only-a && echo mine > /root/only-a")
	if out := execOut(t, clones[1].m.Agent(), "sh", "-c", "ls /dev/shm /root"); strings.Contains(out, "only-a") {
		t.Errorf("clone b sees clone a's files: %q", out)
	}
	// The template's memory file is not written by its clones (share=off).
	ver, err := system.FileVersion(snap.MemoryFile)
	if err != nil {
		t.Fatal(err)
	}
	execOut(t, clones[0].m.Agent(), "sh", "-c", "dd if=/dev/zero of=/dev/shm/big bs=1M count=8 2>/dev/null; sync")
	if ver2, _ := system.FileVersion(snap.MemoryFile); ver2 != ver {
		t.Errorf("a clone changed the template's memory file (%s -> %s)", ver, ver2)
	}
}

// TestRestoreRejects: a snapshot of another driver or shape is refused before QEMU runs.
func TestRestoreRejects(t *testing.T) {
	dir := t.TempDir()
	mem := filepath.Join(dir, "memory")
	if err := os.WriteFile(mem, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := vmm.MachineSpec{Name: "c", MemoryMiB: 512}
	d := New(Config{})
	for _, c := range []struct {
		snap vmm.Snapshot
		want string
	}{
		{vmm.Snapshot{Driver: "firecracker", MemoryFile: mem}, `the snapshot is "firecracker"'s`},
		{vmm.Snapshot{Driver: DriverName, MemoryFile: filepath.Join(dir, "none")}, "memory file: stat"},
		{vmm.Snapshot{Driver: DriverName, MemoryFile: mem, StateFile: filepath.Join(dir, "state")}, "the snapshot is of another shape"},
	} {
		if _, err := d.Restore(context.Background(), spec, c.snap); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("restore of %+v: %v, want %q", c.snap, err, c.want)
		}
	}
}

// BenchmarkRestoreVsBoot times to agent-ready a clone restored from a snapshot and a cold
// boot of the same guest, alternating, and reports their medians and ratio. The disks are
// copied with the clock stopped. It also reports the PSS of each at agent-ready: the clones
// stay up until the end, sharing the snapshot's memory file, as a host's clones would; each
// cold boot is alone. Run with -benchtime 5x.
func BenchmarkRestoreVsBoot(b *testing.B) {
	f, qemu := getFixture(b)
	d := testDriver(qemu, f)
	ctx := context.Background()
	snapDir := b.TempDir()
	tv, spec := newVM(b, f)
	spec.MemoryFile = filepath.Join(snapDir, "memory")
	m := start(b, d, spec)
	waitReady(b, m)
	snap, err := m.(vmm.Snapshotter).Snapshot(ctx, snapDir)
	if err != nil {
		b.Fatal(err)
	}
	var restored, returned, booted, clonePSS, bootPSS []float64
	for i := 0; i < b.N; i++ {
		cv, cspec := newVM(b, f)
		copyDisks(b, tv, cv)
		began := time.Now()
		cm, err := d.Restore(ctx, cspec, snap)
		if err != nil {
			b.Fatal(err)
		}
		returned = append(returned, float64(time.Since(began).Microseconds())/1000)
		waitReady(b, cm)
		restored = append(restored, float64(time.Since(began).Microseconds())/1000)
		// The clones stay up until the end: they share the memory file's pages.
		b.Cleanup(func() { cm.Kill(); cm.Close() })
		if pss, err := vmm.ReadPSS(cm.PID()); err == nil {
			clonePSS = append(clonePSS, float64(pss)/(1<<20))
		}
		_, bspec := newVM(b, f)
		began = time.Now()
		bm, err := d.Start(ctx, bspec)
		if err != nil {
			b.Fatal(err)
		}
		waitReady(b, bm)
		booted = append(booted, float64(time.Since(began).Microseconds())/1000)
		if pss, err := vmm.ReadPSS(bm.PID()); err == nil {
			bootPSS = append(bootPSS, float64(pss)/(1<<20))
		}
		bm.Kill()
		bm.Close()
	}
	m.Kill()
	r, c := median(restored), median(booted)
	b.ReportMetric(r, "restore-ms")
	b.ReportMetric(median(returned), "restore-returned-ms")
	b.ReportMetric(median(clonePSS), "clone-pss-MiB")
	b.ReportMetric(median(bootPSS), "boot-pss-MiB")
	b.ReportMetric(c, "boot-ms")
	b.ReportMetric(c/r, "boot/restore")
	b.ReportMetric(0, "ns/op")
	b.Logf("n=%d restore %v boot %v", len(restored), restored, booted)
}

// copyDisks replaces clone's writable disks with copies of template's, as of its snapshot.
func copyDisks(t testing.TB, template, clone vmFiles) {
	t.Helper()
	for _, p := range [][2]string{{template.layer, clone.layer}, {template.work, clone.work}} {
		if err := os.Remove(p[1]); err != nil {
			t.Fatal(err)
		}
		if _, err := system.CloneFile(context.Background(), p[0], p[1]); err != nil {
			t.Fatal(err)
		}
	}
}
