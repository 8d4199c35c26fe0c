package daemon

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/api"
)

func TestBenchStat(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want api.BenchStat
	}{
		{nil, api.BenchStat{}},
		{[]float64{5}, api.BenchStat{N: 1, MedianMS: 5, MinMS: 5, MaxMS: 5}},
		{[]float64{3, 1, 2}, api.BenchStat{N: 3, MedianMS: 2, MinMS: 1, MaxMS: 3}},
		{[]float64{4, 1, 2, 10}, api.BenchStat{N: 4, MedianMS: 3, MinMS: 1, MaxMS: 10}},
		{[]float64{1.111, 3.337}, api.BenchStat{N: 2, MedianMS: 2.22, MinMS: 1.11, MaxMS: 3.34}},
	} {
		if got := stat(c.in); got != c.want {
			t.Errorf("stat(%v) = %+v, want %+v", c.in, got, c.want)
		}
	}
}

func TestSummarizeBench(t *testing.T) {
	stages := func(disks, agent, ssh float64) []api.Stage {
		s := []api.Stage{{Name: stageDisks, DurationMS: disks}, {Name: "starting the vmm", DurationMS: 10}, {Name: stageAgent, DurationMS: agent}}
		if ssh > 0 {
			s = append(s, api.Stage{Name: stageSSH, DurationMS: ssh})
		}
		return s
	}
	res := api.BenchCreateResult{RunDetails: []api.BenchRun{
		{Index: 1, Stages: stages(20, 1000, 300), AgentReadyMS: 1040, SSHReadyMS: 1340, HostSideMS: 40, UnstagedMS: 10, BareAgentReadyMS: 1000},
		{Index: 2, Stages: stages(40, 1100, 0), AgentReadyMS: 1160, HostSideMS: 60, UnstagedMS: 10, BareAgentReadyMS: 1000},
		{Index: 3, Stages: stages(30, 2000, 350), AgentReadyMS: 2050, SSHReadyMS: 2400, HostSideMS: 50, UnstagedMS: 10, BareAgentReadyMS: 900},
	}, SSHNote: "the image has no sshd"}
	summarizeBench(&res)
	var names []string
	for _, s := range res.Stages {
		names = append(names, s.Name)
		if s.Guest != (s.Name == stageAgent || s.Name == stageSSH) {
			t.Errorf("stage %q guest = %v", s.Name, s.Guest)
		}
	}
	if got := strings.Join(names, ","); got != strings.Join([]string{stageDisks, "starting the vmm", stageAgent, stageSSH}, ",") {
		t.Errorf("stage order %s", got)
	}
	if res.Stages[0].MedianMS != 30 || res.Stages[3].N != 2 {
		t.Errorf("stages %+v", res.Stages)
	}
	if res.AgentReady.MedianMS != 1160 || res.BareAgentReady.MedianMS != 1000 || res.Ratio != 1.16 || res.HostSide.MedianMS != 50 {
		t.Errorf("agent %+v bare %+v ratio %v host %+v", res.AgentReady, res.BareAgentReady, res.Ratio, res.HostSide)
	}
	if res.SSHReady == nil || res.SSHReady.N != 2 || res.SSHNote == "" {
		t.Errorf("ssh-ready %+v note %q: want 2 samples and the note kept (one run had no sshd)", res.SSHReady, res.SSHNote)
	}
	if len(res.Goals) != 2 || !res.Goals[0].Pass || res.Goals[1].Pass || res.Pass {
		t.Errorf("goals %+v pass %v: want host-side PASS, ratio 1.16 FAIL", res.Goals, res.Pass)
	}
}

func TestBenchAPIRefusesBadInput(t *testing.T) {
	d, _ := leakDaemon(t) // no root helper: the host's network is not touched
	c := api.NewClient(d.opts.Layout.Socket, "test")
	for _, req := range []api.BenchCreateRequest{{Runs: -1}, {Runs: benchMaxRuns + 1}, {Runs: 1, Image: "nope"}, {Runs: 1, Memory: "1K"}} {
		_, err := c.BenchCreate(context.Background(), req, nil)
		var ae *api.Error
		if !errors.As(err, &ae) || (ae.Code != api.CodeBadRequest && ae.Code != api.CodeNotFound) || ae.Hint == "" {
			t.Errorf("bench %+v: %v, want a 4xx with a hint", req, err)
		}
	}
}

func TestNormalizeArgv(t *testing.T) {
	banger := []string{"/usr/bin/qemu-system-x86_64", "-m", "512", "-append", "console=ttyS0 banger.hostname=bench-1 banger.ip=172.30.0.2/24 banger.gw=172.30.0.1 banger.dns=1.1.1.1 banger.agent=serial",
		"-chardev", "file,id=con,path=/r/v/abc/console.log", "-drive", "id=work,file=/d/vms/abc/work.ext4,format=raw",
		"-netdev", "tap,id=net0,ifname=tap-pool-0", "-device", "virtio-net-device,netdev=net0", "-device", "vhost-vsock-device,guest-cid=1234"}
	bare := []string{"/usr/bin/qemu-system-x86_64", "-m", "512", "-append", "console=ttyS0 banger.hostname=bench-bare-9 banger.agent=serial",
		"-chardev", "file,id=con,path=/r/v/b9/console.log", "-drive", "id=work,file=/d/vms/.bench-9/work.ext4,format=raw",
		"-device", "vhost-vsock-device,guest-cid=99"}
	a := normalizeArgv(banger, "bench-1", "/d/vms/abc", "/r/v/abc")
	b := normalizeArgv(bare, "bench-bare-9", "/d/vms/.bench-9", "/r/v/b9")
	if !slices.Equal(a, b) {
		t.Fatalf("normalized command lines differ: %s\nbanger %q\nbare   %q", firstArgvDiff(a, b), a, b)
	}
	b = normalizeArgv(append(bare, "-drive", "id=modules,file=/cache/m.ext4"), "bench-bare-9", "/d/vms/.bench-9", "/r/v/b9")
	if slices.Equal(a, b) || !strings.Contains(firstArgvDiff(a, b), "arguments") {
		t.Fatalf("an extra drive went unnoticed: %s", firstArgvDiff(a, b))
	}
}
