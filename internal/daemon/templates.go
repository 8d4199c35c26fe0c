package daemon

// Warm-start templates. A template is a paused snapshot of a fresh VM of an image, one per
// image × kernel × guest binaries × VMM × machine shape (the key hashes all of them): its
// memory file, its VMM state and its two writable disks as of the snapshot. A new VM of that
// shape starts as a clone of it (vmclone.go) instead of booting.
//
// Templates live in <data>/templates/<key>/. A build boots a builder VM (a row marked
// Builder, so reconcile and the leak check know it) whose directory is
// .staging-<key>-<id> there; the snapshot is written into that directory, which is renamed
// to <key> once complete: a template is registered whole or not at all. A template is
// unregistered by renaming it to .old-<key>-<id>; it is deleted once no running clone maps
// its memory file (clones map it copy-on-write, so it must not change under them).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/lifecycle"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/units"
	"github.com/banger-vm/banger/internal/vmm"
)

// templateFormat is bumped when what a template holds changes. 2: QEMU names the RAM
// block microvm.ram (it was "ram"), so templates of 1 would not restore.
const templateFormat = 2

const (
	templateMetaName  = "template.json"
	templateMemory    = "memory"
	templateStaging   = ".staging-"
	templateRetired   = ".old-"
	templateMetaLimit = 64 << 10
	// templateStateLimit bounds a VMM state file: with the RAM in the memory file it is
	// tens of KB; anything near this is not a state banger wrote.
	templateStateLimit = 64 << 20
	// templateBuildDeadline bounds a whole build (a TCG boot takes seconds; a loaded host
	// needs slack).
	templateBuildDeadline = 5 * time.Minute
)

// templateShape is the machine a template is of.
type templateShape struct {
	CPUs      int   `json:"cpus"`
	MemoryMiB int   `json:"memory_mib"`
	DiskBytes int64 `json:"disk_bytes"`
	Network   bool  `json:"network"`
}

// templateInputs is everything a template's guest state depends on; its hash is the key,
// so a change of any of them (a new agent build, another kernel, a re-imported image)
// makes the old template unused.
type templateInputs struct {
	Format    int    `json:"format"`
	ImageID   string `json:"image_id"`
	Rootfs    string `json:"rootfs"`
	WorkSeed  string `json:"work_seed,omitempty"`
	Kernel    string `json:"kernel"`
	Initramfs string `json:"initramfs"` // content-keyed: banger-init, the agent, boot modules
	Modules   string `json:"modules,omitempty"`
	Driver    string `json:"driver"`
	Accel     string `json:"accel,omitempty"`
	UserKey   string `json:"user_key"` // the work disk authorizes banger's key
	templateShape
}

func (in templateInputs) key() string {
	b, _ := json.Marshal(in) // plain data: cannot fail
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:12])
}

// templateMeta is a template's template.json.
type templateMeta struct {
	Key       string         `json:"key"`
	Inputs    templateInputs `json:"inputs"`
	ImageName string         `json:"image_name"`
	CreatedAt time.Time      `json:"created_at"`
	BuildMS   float64        `json:"build_ms"`
	// StateFile is the VMM state file's name in the template's directory.
	StateFile string `json:"state_file"`
}

// template is a registered template, checked whole.
type template struct {
	dir  string
	meta templateMeta
}

func (t *template) snapshot() vmm.Snapshot {
	return vmm.Snapshot{Driver: t.meta.Inputs.Driver, MemoryFile: filepath.Join(t.dir, templateMemory), StateFile: filepath.Join(t.dir, t.meta.StateFile)}
}
func (t *template) workDisk() string  { return filepath.Join(t.dir, "work.ext4") }
func (t *template) layerDisk() string { return filepath.Join(t.dir, "layer.ext4") }

// templates is the daemon's template state: one build at a time (a build boots a VM), the
// keys queued for a background build, and the background builds' lifetime.
type templates struct {
	dir     string
	build   sync.Mutex
	mu      sync.Mutex
	queued  map[string]bool
	bg      context.Context
	stopBG  context.CancelFunc
	running sync.WaitGroup
}

func newTemplates(dir string) *templates {
	ctx, cancel := context.WithCancel(context.Background())
	return &templates{dir: dir, queued: map[string]bool{}, bg: ctx, stopBG: cancel}
}

// stop cancels the background builds and waits for them to undo themselves.
func (t *templates) stop() {
	t.stopBG()
	t.running.Wait()
}

// loadTemplate reads and checks the template in dir: a template that fails any check is
// broken (the reason says how) and is not restored.
func loadTemplate(dir string) (*template, error) {
	f, err := os.Open(filepath.Join(dir, templateMetaName))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, templateMetaLimit+1))
	if err != nil {
		return nil, err
	}
	if len(data) > templateMetaLimit {
		return nil, fmt.Errorf("%s is over %d bytes", templateMetaName, templateMetaLimit)
	}
	t := &template{dir: dir}
	if err := json.Unmarshal(data, &t.meta); err != nil {
		return nil, fmt.Errorf("%s does not decode: %w", templateMetaName, err)
	}
	if t.meta.Key != filepath.Base(dir) || t.meta.Inputs.key() != t.meta.Key {
		return nil, fmt.Errorf("%s is not this template's (key %q)", templateMetaName, t.meta.Key)
	}
	if t.meta.StateFile == "" || filepath.Base(t.meta.StateFile) != t.meta.StateFile || strings.HasPrefix(t.meta.StateFile, ".") {
		return nil, fmt.Errorf("%s names a bad state file %q", templateMetaName, t.meta.StateFile)
	}
	checks := []struct {
		path     string
		min, max int64
	}{
		{filepath.Join(dir, templateMemory), int64(t.meta.Inputs.MemoryMiB) << 20, int64(t.meta.Inputs.MemoryMiB) << 20},
		{filepath.Join(dir, t.meta.StateFile), 1, templateStateLimit},
		{t.workDisk(), t.meta.Inputs.DiskBytes, t.meta.Inputs.DiskBytes},
		{t.layerDisk(), 1, layerDiskBytes},
	}
	for _, c := range checks {
		fi, err := os.Lstat(c.path)
		switch {
		case err != nil:
			return nil, fmt.Errorf("%s is missing", filepath.Base(c.path))
		case !fi.Mode().IsRegular():
			return nil, fmt.Errorf("%s is not a regular file", filepath.Base(c.path))
		case fi.Size() < c.min || fi.Size() > c.max:
			return nil, fmt.Errorf("%s is %d bytes, want %d-%d", filepath.Base(c.path), fi.Size(), c.min, c.max)
		}
	}
	return t, nil
}

// templateInputs computes the key inputs of a template of img on kernel k, the VMM choice
// and shape: it resolves the initramfs and modules disk a start would use (cached).
func (d *Daemon) templateInputs(ctx context.Context, img store.Image, k image.Kernel, choice vmm.Choice, shape templateShape) (templateInputs, error) {
	in := templateInputs{Format: templateFormat, ImageID: img.ID, Kernel: k.ID, Driver: choice.Driver, Accel: choice.Accel, templateShape: shape}
	var err error
	if in.Rootfs, err = system.FileVersion(img.RootfsPath); err != nil {
		return in, fmt.Errorf("image rootfs: %w", err)
	}
	if img.WorkSeedPath != "" {
		if in.WorkSeed, err = system.FileVersion(img.WorkSeedPath); err != nil {
			return in, fmt.Errorf("image work seed: %w", err)
		}
	}
	if in.Initramfs, err = d.ensureInitramfs(ctx, k); err != nil {
		return in, err
	}
	if mods, err := d.modulesDrives(ctx, k); err == nil && len(mods) > 0 {
		in.Modules = mods[0].Path
	}
	userKey, err := d.vms.keys.EnsureUserKey()
	if err != nil {
		return in, err
	}
	h := sha256.Sum256(userKey)
	in.UserKey = hex.EncodeToString(h[:8])
	return in, nil
}

// shapeOf is the template shape of a create.
func (d *Daemon) shapeOf(p createParams) templateShape {
	return templateShape{CPUs: p.cpus, MemoryMiB: p.memoryMiB, DiskBytes: p.diskBytes, Network: d.networkReady()}
}

// restorer is the driver of choice when it can restore snapshots, with why not otherwise.
func (d *Daemon) restorer(ctx context.Context, choice vmm.Choice) (vmm.Restorer, string) {
	drv, err := d.driver(choice.Driver, choice.Accel)
	if err != nil {
		return nil, err.Error()
	}
	r, ok := drv.(vmm.Restorer)
	if !ok {
		return nil, fmt.Sprintf("the %s driver cannot restore snapshots here", choice.Driver)
	}
	if p, ok := drv.(vmm.RestoreProber); ok {
		if err := p.CanRestore(ctx); err != nil {
			return nil, err.Error()
		}
	}
	return r, ""
}

// buildTemplate builds (or, unless rebuild, finds) the template of img for shape: it boots a
// builder VM with its RAM in a file, waits for its agent and sshd, snapshots it and
// registers the result. Whatever fails, the builder VM and the staging files go.
func (d *Daemon) buildTemplate(ctx context.Context, img store.Image, k image.Kernel, shape templateShape, rebuild bool, progress progressFunc) (*template, error) {
	choice, err := d.chooseVMM()
	if err != nil {
		return nil, err
	}
	if _, why := d.restorer(ctx, choice); why != "" {
		return nil, api.Errorf(api.CodeUnavailable, "VMs of this host cold-boot; see `banger doctor`", "cannot build a template: %s", why)
	}
	in, err := d.templateInputs(ctx, img, k, choice, shape)
	if err != nil {
		return nil, err
	}
	key := in.key()
	t := d.vms.tpl
	t.build.Lock()
	defer t.build.Unlock()
	final := filepath.Join(t.dir, key)
	if tpl, err := loadTemplate(final); err == nil && !rebuild {
		return tpl, nil
	}
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return nil, err
	}
	// The memory file fills as the guest touches its RAM: a disk that runs full under it
	// kills the VMM (SIGBUS) mid-boot, so room for all of it is asked for up front.
	if err := checkFreeSpace(t.dir, int64(shape.MemoryMiB)<<20+templateSpaceSlack,
		fmt.Sprintf("a template of %d MiB of RAM (its memory file, disks and state)", shape.MemoryMiB)); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, templateBuildDeadline)
	defer cancel()
	began := time.Now()
	id := randomHex(6)
	p := createParams{name: "warm-" + key[:8] + "-" + id[:4], img: img, kernel: k, cpus: shape.CPUs, memoryMiB: shape.MemoryMiB, diskBytes: shape.DiskBytes}
	rec := d.newVMRecord(id, p, choice)
	rec.Dir = filepath.Join(t.dir, templateStaging+key+"-"+id)
	rec.Builder, rec.Template = true, key
	row := store.VM{ID: id, Name: p.name, ImageID: img.ID, State: store.VMCreated, VMM: choice.Driver, Spec: rec.raw()}
	if err := d.store.PutVM(ctx, row); err != nil {
		return nil, err
	}
	// Always: the builder VM, its TAP, lease and run dir go, and its directory unless it
	// became the template.
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if rerr := d.removeVM(cctx, api.VMRemoveRequest{Name: id, Force: true}); rerr != nil {
			d.log.Warn("could not remove a template's builder VM", "vm", p.name, "err", rerr)
		}
	}()
	staged, err := d.bootAndSnapshot(ctx, row, rec, p, shape, progress)
	if err != nil {
		return nil, fmt.Errorf("build the template of image %q: %w", img.Name, err)
	}
	meta := templateMeta{Key: key, Inputs: in, ImageName: img.Name, CreatedAt: time.Now().UTC(), BuildMS: lifecycle.Millis(time.Since(began)),
		StateFile: filepath.Base(staged.StateFile)}
	if err := d.registerTemplate(rec.Dir, final, meta); err != nil {
		return nil, fmt.Errorf("register the template of image %q: %w", img.Name, err)
	}
	d.supersedeTemplates(img.ID, shape, key)
	tpl, err := loadTemplate(final)
	if err != nil {
		return nil, fmt.Errorf("the new template of image %q is broken: %w", img.Name, err)
	}
	d.log.Info("built a warm-start template", "image", img.Name, "key", key, "took", time.Since(began).Round(time.Millisecond))
	return tpl, nil
}

// bootAndSnapshot boots the builder VM and saves it into its directory; the VMM is gone
// when it returns.
func (d *Daemon) bootAndSnapshot(ctx context.Context, row store.VM, rec vmRecord, p createParams, shape templateShape, progress progressFunc) (vmm.Snapshot, error) {
	unlock := d.lockVM(row.ID)
	defer unlock()
	if progress == nil {
		progress = func(api.Progress) {}
	}
	if err := os.MkdirAll(rec.Dir, 0o700); err != nil {
		return vmm.Snapshot{}, err
	}
	timings := lifecycle.New("image.warm", row.ID, d.log, d.store).Deferred()
	defer timings.Flush(context.WithoutCancel(ctx))
	if err := runStage(ctx, timings, progress, disksStage(), func(ctx context.Context) error {
		_, err := d.buildDisks(ctx, rec.vmSpec, p)
		return err
	}); err != nil {
		return vmm.Snapshot{}, err
	}
	profile := bootProfile{
		drives:     func(mods []vmm.Drive) []vmm.Drive { return vmDrives(p.img.RootfsPath, rec.vmSpec, mods) },
		memoryFile: filepath.Join(rec.Dir, templateMemory),
		boot:       api.VMBoot{Mode: api.BootCold, Reason: "a template's builder boots the image"},
	}
	vm, err := d.startLocked(ctx, row, timings, progress, profile)
	if err != nil {
		return vmm.Snapshot{}, err
	}
	if got, _ := parseRecord(vm); (got.Network.TAP != "") != shape.Network {
		_, _ = d.stopLocked(ctx, row.ID, 0, true)
		return vmm.Snapshot{}, fmt.Errorf("the network changed during the build (%s)", got.Network.Note)
	}
	m := d.machine(row.ID)
	s, ok := m.(vmm.Snapshotter)
	if m == nil || !ok {
		_, _ = d.stopLocked(ctx, row.ID, 0, true)
		return vmm.Snapshot{}, errors.New("the builder VM cannot be snapshotted")
	}
	if err := runStage(ctx, timings, progress, stage{"letting the guest settle", settleMax + 10*time.Second,
		"the builder's agent stopped answering: read the console (`banger vm logs`) of the image's VMs"}, func(ctx context.Context) error {
		d.log.Info("letting the template's guest settle", "vm", p.name)
		note, err := settleGuest(ctx, m)
		d.log.Info("template guest settled", "vm", p.name, "note", note)
		return err
	}); err != nil {
		_, _ = d.stopLocked(ctx, row.ID, 0, true)
		return vmm.Snapshot{}, err
	}
	var snap vmm.Snapshot
	err = runStage(ctx, timings, progress, stage{"saving the template", time.Minute, "check free space in the data dir"}, func(ctx context.Context) error {
		if err := d.fault("template snapshot"); err != nil {
			return err
		}
		if err := checkFreeSpace(rec.Dir, templateSaveSlack, "saving the template's state"); err != nil {
			return err
		}
		var err error
		snap, err = s.Snapshot(ctx, rec.Dir)
		return err
	})
	// The VM is paused (or resumed, when the save failed): either way it ends here.
	if _, kerr := d.stopLocked(context.WithoutCancel(ctx), row.ID, 0, true); kerr != nil && err == nil {
		err = kerr
	}
	return snap, err
}

// Free space a template build asks for beyond its memory file, and that its save needs.
const (
	templateSpaceSlack = 64 << 20
	templateSaveSlack  = 16 << 20
)

// checkFreeSpace fails with what to do when dir's filesystem has less than need bytes
// free for what.
func checkFreeSpace(dir string, need int64, what string) error {
	return checkFreeSpaceFor(dir, need, what, "free space there, build a smaller shape, or turn warm start off ([vm] warm_start = false)")
}

// checkFreeSpaceFor is checkFreeSpace with its own hint.
func checkFreeSpaceFor(dir string, need int64, what, hint string) error {
	free, err := system.FreeBytes(dir)
	if err != nil {
		return err
	}
	if free < uint64(need) {
		return api.Errorf(api.CodeUnavailable, hint,
			"not enough free space in %s: %s free, %s needs %s", dir, units.FormatSize(int64(free)), what, units.FormatSize(need))
	}
	return nil
}

// registerTemplate writes staging's template.json and renames it into place; a template
// already at final (a rebuild) is retired first.
func (d *Daemon) registerTemplate(staging, final string, meta templateMeta) error {
	if err := d.fault("template register"); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(meta, "", "  ")
	if err := system.WriteFileAtomic(filepath.Join(staging, templateMetaName), b, 0o600); err != nil {
		return err
	}
	if err := system.SyncDir(staging); err != nil {
		return err
	}
	if _, err := os.Lstat(final); err == nil {
		d.retireTemplate(final)
	}
	if err := os.Rename(staging, final); err != nil {
		return err
	}
	return system.SyncDir(filepath.Dir(final))
}

// retireTemplate unregisters the template in dir (no VM restores it from now on) and
// deletes it unless a running clone maps its memory.
func (d *Daemon) retireTemplate(dir string) {
	old := filepath.Join(filepath.Dir(dir), templateRetired+filepath.Base(dir)+"-"+randomHex(4))
	if err := os.Rename(dir, old); err != nil {
		d.log.Warn("could not retire a template", "dir", dir, "err", err)
		return
	}
	d.gcTemplates(context.Background())
}

// supersedeTemplates retires the templates of the image and shape other than key: they are
// of older guest binaries, kernels or VMMs.
func (d *Daemon) supersedeTemplates(imageID string, shape templateShape, key string) {
	for _, t := range d.listTemplates() {
		if t.meta.Key != key && t.meta.Inputs.ImageID == imageID && t.meta.Inputs.templateShape == shape {
			d.retireTemplate(t.dir)
		}
	}
}

// removeTemplatesOf retires all templates of an image (it is being removed).
func (d *Daemon) removeTemplatesOf(imageID string) {
	for _, t := range d.listTemplates() {
		if t.meta.Inputs.ImageID == imageID {
			d.retireTemplate(t.dir)
		}
	}
}

// listTemplates is every registered template that loads.
func (d *Daemon) listTemplates() []*template {
	ents, err := os.ReadDir(d.vms.tpl.dir)
	if err != nil {
		return nil
	}
	var out []*template
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") || !e.IsDir() {
			continue
		}
		if t, err := loadTemplate(filepath.Join(d.vms.tpl.dir, e.Name())); err == nil {
			out = append(out, t)
		}
	}
	return out
}

// mappedTemplates is, for each template directory a running (or starting) clone maps the
// memory of, the clones' names.
func (d *Daemon) mappedTemplates(ctx context.Context) (map[string][]string, error) {
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	for _, vm := range vms {
		rec, err := parseRecord(vm)
		if err != nil || rec.VMM == nil || rec.VMM.MemoryFile == "" || rec.Builder {
			continue
		}
		if vm.State == store.VMRunning || vm.State == store.VMStarting || vm.State == store.VMStopping {
			dir := filepath.Dir(rec.VMM.MemoryFile)
			out[dir] = append(out[dir], vm.Name)
		}
	}
	return out, nil
}

// gcTemplates deletes retired templates no clone maps, the staging of builds no builder VM
// row owns (a killed daemon's), and unregisters broken templates.
func (d *Daemon) gcTemplates(ctx context.Context) {
	t := d.vms.tpl
	ents, err := os.ReadDir(t.dir)
	if err != nil {
		return
	}
	mapped, err := d.mappedTemplates(ctx)
	if err != nil {
		d.log.Warn("could not list VMs to clean templates", "err", err)
		return
	}
	owned := map[string]bool{}
	if vms, err := d.store.ListVMs(ctx); err == nil {
		for _, vm := range vms {
			if rec, err := parseRecord(vm); err == nil && rec.Builder {
				owned[filepath.Clean(rec.Dir)] = true
			}
		}
	}
	for _, e := range ents {
		p := filepath.Join(t.dir, e.Name())
		switch {
		case strings.HasPrefix(e.Name(), templateRetired):
			if len(mapped[p]) == 0 && !mappedUnder(mapped, p) {
				_ = os.RemoveAll(p)
			}
		case strings.HasPrefix(e.Name(), templateStaging):
			if !owned[p] {
				_ = os.RemoveAll(p)
			}
		}
	}
}

// mappedUnder reports whether a clone maps a memory file that was in a template's directory
// before it was retired (the clone's record names the old path).
func mappedUnder(mapped map[string][]string, retired string) bool {
	name := strings.TrimPrefix(filepath.Base(retired), templateRetired)
	if i := strings.LastIndexByte(name, '-'); i > 0 {
		name = name[:i]
	}
	return len(mapped[filepath.Join(filepath.Dir(retired), name)]) > 0
}

// queueTemplateBuild builds the template of img for shape in the background, once per key
// at a time, when warm start is on and the VMM can restore.
func (d *Daemon) queueTemplateBuild(img store.Image, k image.Kernel, shape templateShape, key string) {
	if !d.opts.Config.VM.WarmStart {
		return
	}
	t := d.vms.tpl
	t.mu.Lock()
	if t.queued[key] || t.bg.Err() != nil {
		t.mu.Unlock()
		return
	}
	t.queued[key] = true
	t.running.Add(1)
	t.mu.Unlock()
	go func() {
		defer t.running.Done()
		defer func() {
			t.mu.Lock()
			delete(t.queued, key)
			t.mu.Unlock()
		}()
		if _, err := d.buildTemplate(t.bg, img, k, shape, false, nil); err != nil && t.bg.Err() == nil {
			d.log.Warn("could not build a warm-start template: VMs of the image cold-boot", "image", img.Name, "err", err)
		}
	}()
}

// warmImageTemplate queues the default-shape template of a newly added image.
func (d *Daemon) warmImageTemplate(ctx context.Context, img store.Image) {
	if !d.opts.Config.VM.WarmStart {
		return
	}
	p, err := d.validateCreate(ctx, api.VMCreateRequest{Name: "warm", Image: img.Name})
	if err != nil {
		return
	}
	choice, err := d.chooseVMM()
	if err != nil {
		return
	}
	if _, why := d.restorer(ctx, choice); why != "" {
		return
	}
	shape := d.shapeOf(p)
	in, err := d.templateInputs(ctx, img, p.kernel, choice, shape)
	if err != nil {
		return
	}
	d.queueTemplateBuild(img, p.kernel, shape, in.key())
}

// templatesToAPI lists img's templates for image inspect.
func (d *Daemon) templatesToAPI(ctx context.Context, img store.Image) []api.Template {
	out := []api.Template{}
	mapped, _ := d.mappedTemplates(ctx)
	choice, _ := d.chooseVMM()
	for _, t := range d.listTemplates() {
		in := t.meta.Inputs
		if in.ImageID != img.ID {
			continue
		}
		at := api.Template{Key: t.meta.Key, Image: t.meta.ImageName, Kernel: in.Kernel, Driver: in.Driver, Accel: in.Accel,
			CPUs: in.CPUs, MemoryMiB: in.MemoryMiB, DiskBytes: in.DiskBytes, Network: in.Network, Dir: t.dir,
			CreatedAt: t.meta.CreatedAt, BuildMS: t.meta.BuildMS, Clones: mapped[t.dir]}
		if k, err := d.images.Kernel(in.Kernel); err == nil {
			if cur, err := d.templateInputs(ctx, img, k, choice, in.templateShape); err == nil {
				at.Current = cur.key() == t.meta.Key
			}
		}
		for _, f := range []string{templateMemory, t.meta.StateFile, "work.ext4", "layer.ext4"} {
			var st unixStat
			if statFile(filepath.Join(t.dir, f), &st) == nil {
				at.SizeBytes += st.used
			}
		}
		out = append(out, at)
	}
	return out
}

// handleImageWarm builds (or confirms) an image's template for a machine shape, streaming
// the builder's stages; the result is the template.
func (d *Daemon) handleImageWarm(w http.ResponseWriter, r *http.Request) error {
	var req api.ImageWarmRequest
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if _, err := d.imageByName(r.Context(), req.Name); err != nil {
		return err
	}
	// The create's validation: the same defaults and limits as the VMs that will use it.
	p, err := d.validateCreate(r.Context(), api.VMCreateRequest{Name: "warm", Image: req.Name, CPUs: req.CPUs, Memory: req.Memory, DiskSize: req.DiskSize})
	if err != nil {
		return err
	}
	d.runStreamed(w, r, "image.warm", req.Name, func(ctx context.Context, pf image.ProgressFunc) (any, error) {
		tpl, err := d.buildTemplate(ctx, p.img, p.kernel, d.shapeOf(p), req.Rebuild, func(pr api.Progress) {
			pf(image.Progress(pr))
		})
		if err != nil {
			return nil, err
		}
		for _, t := range d.templatesToAPI(ctx, p.img) {
			if t.Key == tpl.meta.Key {
				return t, nil
			}
		}
		return nil, fmt.Errorf("the template of image %q was removed while it was built", p.img.Name)
	})
	return nil
}
