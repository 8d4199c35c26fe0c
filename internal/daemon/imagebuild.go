package daemon

// Image builds: the new image's root filesystem (a copy of the base) boots read-write in a
// temporary builder VM, which the daemon provisions over SSH (through the agent, so no guest
// network is needed for local files and .debs): upload, install, run, each step's output
// streamed to the user. The builder VM, its TAP and its lease are always removed; a failed
// step fails the build with its output, and the half-built image is removed by the image
// manager.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/sshclient"
	"github.com/banger-vm/banger/internal/sshkeys"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/units"
	"github.com/banger-vm/banger/internal/vmm"
)

// buildScratch is where uploads wait in the guest; removed before the image is sealed.
const buildScratch = "/var/cache/banger-build"

// buildPlan is a validated build request.
type buildPlan struct {
	req       api.ImageBuildRequest
	base      store.Image
	sizeBytes int64
	params    createParams
}

func (d *Daemon) handleImageBuild(w http.ResponseWriter, r *http.Request) error {
	var req api.ImageBuildRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	plan, err := d.planBuild(r.Context(), req)
	if err != nil {
		return err
	}
	d.runStreamed(w, r, "image.build", req.Name, func(ctx context.Context, p image.ProgressFunc) (any, error) {
		img, err := d.images.Build(ctx, image.BuildOptions{Name: req.Name, Base: plan.base, SizeBytes: plan.sizeBytes, Progress: p,
			Provision: func(ctx context.Context, rootfs string, p image.ProgressFunc) error {
				return d.provision(ctx, plan, rootfs, p)
			}})
		if err != nil {
			return nil, err
		}
		return d.imageAdded(ctx, img, p), nil
	})
	return nil
}

// planBuild checks a build request before anything is built, so bad input is a plain 4xx.
func (d *Daemon) planBuild(ctx context.Context, req api.ImageBuildRequest) (buildPlan, error) {
	plan := buildPlan{req: req}
	if err := validImageName(req.Name); err != nil {
		return plan, err
	}
	if req.From == "" {
		return plan, api.Errorf(api.CodeBadRequest, "pass --from BASE (an image from `banger image ls`)", "no base image")
	}
	if req.From == req.Name {
		return plan, api.Errorf(api.CodeBadRequest, "give the new image another name", "an image cannot be built from itself")
	}
	base, err := d.store.GetImageByName(ctx, req.From)
	if errors.Is(err, store.ErrNotFound) {
		return plan, api.Errorf(api.CodeNotFound, "pull it with `banger image pull "+req.From+"` or pick one from `banger image ls`", "base image %q not found", req.From)
	} else if err != nil {
		return plan, err
	}
	plan.base = base
	if req.Size != "" {
		n, err := units.ParseSize(req.Size)
		if err != nil || n < minDiskBytes || n > maxDiskBytes {
			return plan, api.Errorf(api.CodeBadRequest, "pass --size like 4G (the root filesystem only grows)", "invalid size %q", req.Size)
		}
		plan.sizeBytes = n &^ (1<<20 - 1)
	}
	for _, c := range req.Copies {
		if !filepath.IsAbs(c.Src) || !path.IsAbs(c.Dst) {
			return plan, api.Errorf(api.CodeBadRequest, "use --copy SRC:DST with DST an absolute guest path", "copy %s -> %s: paths must be absolute", c.Src, c.Dst)
		}
		if _, err := os.Stat(c.Src); err != nil {
			return plan, api.Errorf(api.CodeBadRequest, "check the path given to --copy", "copy source: %v", err)
		}
	}
	for _, s := range req.Scripts {
		if st, err := os.Stat(s); err != nil || !st.Mode().IsRegular() {
			return plan, api.Errorf(api.CodeBadRequest, "--run takes a script file on this machine", "script %s: not a readable file (%v)", s, err)
		}
	}
	for _, p := range req.Packages {
		if strings.HasPrefix(p, "/") {
			if _, err := os.Stat(p); err != nil {
				return plan, api.Errorf(api.CodeBadRequest, "a package is a name or the path of a local .deb", "package file: %v", err)
			}
		} else if strings.ContainsAny(p, " \t\n'\"$`;&|<>\\") || p == "" || strings.HasPrefix(p, "-") {
			return plan, api.Errorf(api.CodeBadRequest, "a package is a name like git or libssl3=3.0.15-1", "invalid package name %q", p)
		}
	}
	p, err := d.validateCreate(ctx, api.VMCreateRequest{Name: "build-" + randomHex(3), Image: base.Name, CPUs: req.CPUs, Memory: req.Memory})
	if err != nil {
		return plan, err
	}
	plan.params = p
	return plan, nil
}

func validImageName(name string) error {
	if err := validVMName(name); err != nil {
		return api.Errorf(api.CodeBadRequest, "use 1-32 lowercase letters, digits and single '-', starting with a letter", "invalid image name %q", name)
	}
	return nil
}

// builderFiles are what the builder VM needs for SSH, written into the image before it
// boots and taken out again before it is sealed.
type builderFiles struct {
	hostPub      []byte
	authorized   []byte // what /root/.ssh/authorized_keys held before, nil if absent
	hadSSHDir    bool
	hadAuthorize bool
}

func (d *Daemon) prepareBuilderRootfs(ctx context.Context, rootfs string) (builderFiles, error) {
	var bf builderFiles
	e := d.images.Ext4
	userKey, err := d.vms.keys.EnsureUserKey()
	if err != nil {
		return bf, fmt.Errorf("banger's SSH key: %w", err)
	}
	hostPriv, hostPub, err := sshkeys.NewKey("banger image builder")
	if err != nil {
		return bf, err
	}
	bf.hostPub = hostPub
	if st, err := e.StatExt4(ctx, rootfs, "/root/.ssh"); err == nil && st.Mode.IsDir() {
		bf.hadSSHDir = true
		if data, err := e.ReadExt4File(ctx, rootfs, "/root/.ssh/authorized_keys"); err == nil {
			bf.authorized, bf.hadAuthorize = data, true
		}
	}
	err = e.WriteExt4Files(ctx, rootfs, append(authorizedKeysEntries("/root", bf.authorized, userKey), hostKeyEntries("", hostPriv, hostPub)...))
	return bf, err
}

// provision boots rootfs in a builder VM and runs the plan's steps in it over SSH.
func (d *Daemon) provision(ctx context.Context, plan buildPlan, rootfs string, progress image.ProgressFunc) (err error) {
	report := func(stage, msg string) {
		if progress != nil {
			progress(image.Progress{Stage: stage, Message: msg})
		}
	}
	report("preparing the builder VM", "")
	bf, err := d.prepareBuilderRootfs(ctx, rootfs)
	if err != nil {
		return fmt.Errorf("prepare the builder: %w", err)
	}
	vm, err := d.startBuilder(ctx, plan, rootfs, bf, report)
	if vm.ID != "" {
		// Always: the builder VM, its TAP, lease, pin and directories go.
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			if rerr := d.removeVM(cctx, api.VMRemoveRequest{Name: vm.ID, Force: true}); rerr != nil {
				d.log.Warn("could not remove the builder VM", "vm", vm.Name, "err", rerr)
				err = errors.Join(err, fmt.Errorf("remove builder VM %s: %w", vm.Name, rerr))
			}
		}()
	}
	if err != nil {
		return err
	}
	m := d.machine(vm.ID)
	if m == nil {
		return fmt.Errorf("the builder VM %s stopped", vm.Name)
	}
	client, err := d.builderSSH(ctx, m, vm.ID)
	if err != nil {
		return err
	}
	defer client.Close()
	steps := buildSteps(plan.req, bf)
	for i, st := range steps {
		name := fmt.Sprintf("step %d/%d: %s", i+1, len(steps), st.name)
		report(name, "")
		start := time.Now()
		out := &outputLines{emit: func(line string) { report(name, line) }}
		var stdin io.Reader
		if st.stdin != nil {
			r, err := st.stdin()
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			stdin = r
		}
		code, err := sshclient.Run(ctx, client, st.cmd, stdin, out, out)
		if c, ok := stdin.(io.Closer); ok {
			// An upload's file or tar pipe: released even when the guest stopped reading
			// early (a failed step, a cancelled build), or its goroutine and fd leak.
			_ = c.Close()
		}
		out.flush()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if code != 0 {
			return api.Errorf(api.CodeBadRequest, "fix the step and build again; the builder VM was removed and no image was registered",
				"%s failed with exit code %d; its last output:\n  %s", name, code, strings.Join(out.tail(), "\n  "))
		}
		report(name, fmt.Sprintf("done in %.1f s", time.Since(start).Seconds()))
	}
	report("shutting the builder VM down", "")
	unlock := d.lockVM(vm.ID)
	_, err = d.stopLocked(ctx, vm.ID, 60, false)
	unlock()
	return err
}

// startBuilder registers and boots the builder VM; the returned VM has an ID once a row
// exists (the caller removes it).
func (d *Daemon) startBuilder(ctx context.Context, plan buildPlan, rootfs string, bf builderFiles, report func(string, string)) (store.VM, error) {
	choice, err := d.chooseVMM()
	if err != nil {
		return store.VM{}, err
	}
	p := plan.params
	id := randomHex(6)
	rec := d.newVMRecord(id, p, choice)
	rec.DiskBytes = 0
	rec.Builder, rec.Rootfs, rec.SSHHostKey = true, rootfs, string(bf.hostPub)
	row := store.VM{ID: id, Name: p.name, ImageID: plan.base.ID, State: store.VMCreated, VMM: choice.Driver, Spec: rec.raw()}
	unlock := d.lockVM(id)
	defer unlock()
	if err := d.store.PutVM(ctx, row); err != nil {
		return store.VM{}, err
	}
	if err := os.MkdirAll(rec.Dir, 0o700); err != nil {
		return row, err
	}
	if err := d.vms.keys.Pin(sshkeys.HostAlias(id), bf.hostPub); err != nil {
		return row, err
	}
	timings := lifecycle.New("image.build.vm", id, d.log, d.store).Deferred()
	defer timings.Flush(context.WithoutCancel(ctx))
	vm, err := d.startLocked(ctx, row, timings, func(pr api.Progress) {
		if pr.Message != "" {
			report("booting the builder VM "+p.name, pr.Stage+" "+pr.Message)
		}
	}, builderBootProfile(rootfs))
	if err != nil {
		return row, err
	}
	if got, err := parseRecord(vm); err != nil || !got.SSHReady {
		return row, api.Errorf(api.CodeBadRequest, "build from an image with OpenSSH's server (debian-bookworm has it)",
			"image %q cannot be provisioned: %s", plan.base.Name, got.SSHNote)
	}
	return vm, nil
}

// builderBootProfile boots the image being built itself, read-write (no overlay, no work
// disk), and needs its sshd: the build provisions over SSH.
func builderBootProfile(rootfs string) bootProfile {
	return bootProfile{
		drives: func(mods []vmm.Drive) []vmm.Drive {
			return append([]vmm.Drive{{ID: "rootfs", Path: rootfs, Role: vmm.RoleRoot}}, mods...)
		},
		cmdline: "banger.rootrw=1",
		ssh:     sshRequire,
	}
}

func (d *Daemon) builderSSH(ctx context.Context, m vmm.Machine, id string) (*ssh.Client, error) {
	signer, err := d.vms.keys.UserSigner()
	if err != nil {
		return nil, err
	}
	hostKeys, err := d.vms.keys.HostKeyCallback()
	if err != nil {
		return nil, err
	}
	conn, err := m.Agent().Forward(ctx, 22)
	if err != nil {
		return nil, fmt.Errorf("reach the builder's sshd: %w", err)
	}
	return sshclient.Dial(ctx, conn, "root", sshkeys.HostAlias(id), signer, hostKeys)
}
