package firecracker

// The bare baseline of `banger bench create`: the same VM Start configures over the API,
// given to `firecracker --no-api --config-file` instead, and timed to the guest agent.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-vm/banger/internal/agent"
	"github.com/banger-vm/banger/internal/kernelimage"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/proc"
)

// bareConfigName is the --config-file BootBare writes into the run directory.
const bareConfigName = "bare-config.json"

// bareConfig is Firecracker's --config-file document: the bodies Start PUTs, by resource.
type bareConfig struct {
	BootSource        BootSource         `json:"boot-source"`
	Drives            []Drive            `json:"drives"`
	MachineConfig     MachineConfig      `json:"machine-config"`
	NetworkInterfaces []NetworkInterface `json:"network-interfaces"`
	Vsock             Vsock              `json:"vsock"`
}

// BootBare boots spec the way Start configures it (same vmlinux, initramfs, boot arguments,
// drives, NICs and hybrid vsock), but as one `firecracker --no-api --config-file` process
// without the jailer, timed from the process start to the guest agent answering
// /v1/healthz. Firecracker is killed and its vsock socket removed before BootBare returns.
//
// Untested where no firecracker binary and usable KVM exist (the hosts banger is developed
// on): the config document uses the same types the contract tests check against
// Firecracker's API description.
func (d *Driver) BootBare(ctx context.Context, spec vmm.MachineSpec) (_ vmm.BareBoot, err error) {
	if err := spec.Validate(); err != nil {
		return vmm.BareBoot{}, err
	}
	if spec.AgentPort == 0 {
		spec.AgentPort = agent.DefaultVsockPort
	}
	bin, err := d.binary()
	if err != nil {
		return vmm.BareBoot{}, err
	}
	cacheDir, err := d.kernelCacheDir()
	if err != nil {
		return vmm.BareBoot{}, err
	}
	vmlinux, err := kernelimage.Ensure(cacheDir, spec.Kernel)
	if err != nil {
		return vmm.BareBoot{}, fmt.Errorf("prepare the kernel for firecracker: %w", err)
	}
	cmdline, err := bootArgs(spec, spec.AgentPort)
	if err != nil {
		return vmm.BareBoot{}, err
	}
	vsockHost := filepath.Join(spec.RunDir, vsockSocketName)
	if err := proc.CheckSocketPath(vsockHost); err != nil {
		return vmm.BareBoot{}, err
	}
	if err := clearStaleSockets(vsockHost); err != nil {
		return vmm.BareBoot{}, err
	}
	cfg := bareConfig{
		BootSource:    BootSource{KernelImagePath: vmlinux, InitrdPath: spec.Initramfs, BootArgs: cmdline},
		MachineConfig: MachineConfig{VCPUCount: spec.VCPUs, MemSizeMiB: spec.MemoryMiB},
		Vsock:         Vsock{GuestCID: GuestCID, UDSPath: vsockHost},
		// Empty lists, not null: Firecracker's config parser wants arrays.
		Drives:            []Drive{},
		NetworkInterfaces: []NetworkInterface{},
	}
	for _, dr := range spec.Drives {
		cfg.Drives = append(cfg.Drives, Drive{DriveID: dr.ID, PathOnHost: dr.Path, IsReadOnly: dr.ReadOnly})
	}
	for i, n := range spec.NICs {
		ni := NetworkInterface{IfaceID: fmt.Sprintf("eth%d", i), HostDevName: n.TAP}
		if len(n.MAC) > 0 {
			ni.GuestMAC = n.MAC.String()
		}
		cfg.NetworkInterfaces = append(cfg.NetworkInterfaces, ni)
	}
	doc, err := json.Marshal(cfg)
	if err != nil {
		return vmm.BareBoot{}, err
	}
	cfgPath := filepath.Join(spec.RunDir, bareConfigName)
	if err := os.WriteFile(cfgPath, doc, 0o600); err != nil {
		return vmm.BareBoot{}, fmt.Errorf("bare boot %s: %w", spec.Name, err)
	}
	argv := []string{bin, "--no-api", "--config-file", cfgPath}
	out := vmm.BareBoot{Argv: argv}

	consolePath := filepath.Join(spec.RunDir, consoleLogName)
	// A bare boot must not outlive the daemon that measures it.
	start := time.Now()
	p, err := proc.Spawn(proc.Options{Argv: argv, Dir: spec.RunDir, Console: d.console(spec.RunDir), DieWithParent: true})
	if err != nil {
		return out, fmt.Errorf("start %s: %w", argv[0], err)
	}
	defer func() {
		_ = p.Kill()
		_ = os.Remove(vsockHost)
	}()

	a := agentClient(vsockHost, spec.AgentPort)
	defer a.Close()
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-p.Done():
			cancel(fmt.Errorf("firecracker exited: %v", p.ProcessState()))
		case <-actx.Done():
		}
	}()
	if _, err := a.WaitReady(actx); err != nil {
		if c := context.Cause(actx); c != nil && ctx.Err() == nil {
			err = c
		}
		return out, fmt.Errorf("bare boot %s: %w\nlast console lines:\n  %s", spec.Name, err, strings.Join(proc.ConsoleTail(consolePath, 10), "\n  "))
	}
	out.AgentReady = time.Since(start)
	return out, nil
}
