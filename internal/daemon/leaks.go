package daemon

// The leak check (`banger doctor --leaks`, scripts/verify): what banger made that nothing
// references any more. The daemon answers it because it knows the references: VM rows,
// running machines, the TAP pool. Processes are found through /proc (cmdline, cwd), in Go.

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/helper"
	"github.com/banger-vm/banger/internal/image"
	"github.com/banger-vm/banger/internal/shellquote"
	"github.com/banger-vm/banger/internal/store"
)

// leakScope is where the leak check looks; tests point it at their own directories.
type leakScope struct {
	procDir    string   // /proc
	runtimeDir string   // VM run dirs are <runtimeDir>/v/<id>
	vmsDir     string   // VM disks are <vmsDir>/<id>
	stagingIn  []string // dirs whose ".staging-*" entries are interrupted builds
	initramfs  string   // the initramfs cache (".initramfs-*.tmp" are partial writes)
	disks      string   // the disk templates ("*.building" are partial builds)
	templates  string   // warm-start templates (".staging-*" no builder VM owns are leftovers)
	tmpDirs    []string // where disk builds stage (/dev/shm, the temp dir)
	keep       []string // sockets that are not VMs' (the daemon's, the helper's)
}

func (d *Daemon) leakScope() leakScope {
	l := d.opts.Layout
	s := leakScope{
		procDir: "/proc", runtimeDir: l.RuntimeDir, vmsDir: l.VMsDir,
		stagingIn: []string{l.ImagesDir, filepath.Join(l.DataDir, "kernels"), filepath.Join(l.DataDir, "snapshots")},
		initramfs: filepath.Join(l.CacheDir, "initramfs"),
		disks:     filepath.Join(l.CacheDir, "disks"),
		templates: filepath.Join(l.DataDir, "templates"),
		tmpDirs:   []string{"/dev/shm", os.TempDir()},
		keep:      []string{l.Socket, d.opts.Config.Network.HelperSocket},
	}
	if d.images != nil {
		s.stagingIn = []string{d.images.ImagesDir, d.images.KernelsDir, d.snapshotsDir()}
	}
	return s
}

func (d *Daemon) handleLeaks(w http.ResponseWriter, r *http.Request) error {
	res, err := d.findLeaks(r.Context(), d.leakScope())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (d *Daemon) handleLeaksFix(w http.ResponseWriter, r *http.Request) error {
	var req struct{}
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	res, err := d.fixLeaks(r.Context(), d.leakScope())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// leakRefs is what the VM rows and live machines reference.
type leakRefs struct {
	vmIDs    map[string]string // id -> name
	dirs     map[string]string // VM dir or run dir -> VM name
	pids     map[int]string    // VMM pid of a running VM -> name
	liveRuns map[string]string // run dirs of VMs whose VMM runs or is being started
	taps     map[string]string // TAPs of running (or starting) VMs
	building map[string]bool   // VM dirs whose disks are being built
	stopped  map[string]string // run dir -> "VM x (stopped)", for the detail text
}

func (d *Daemon) leakRefs(ctx context.Context) (leakRefs, error) {
	refs := leakRefs{vmIDs: map[string]string{}, dirs: map[string]string{}, pids: map[int]string{},
		liveRuns: map[string]string{}, taps: map[string]string{}, building: map[string]bool{}, stopped: map[string]string{}}
	vms, err := d.store.ListVMs(ctx)
	if err != nil {
		return refs, err
	}
	for _, vm := range vms {
		spec, err := parseRecord(vm)
		if err != nil {
			// Its directories are where create puts them: never offer them as leaks.
			d.log.Warn("a VM's record does not decode; keeping its directories", "vm", vm.Name, "err", err)
			spec = d.defaultRecord(vm.ID)
		}
		refs.vmIDs[vm.ID] = vm.Name
		for _, dir := range []string{spec.Dir, spec.RunDir} {
			if dir != "" {
				refs.dirs[filepath.Clean(dir)] = vm.Name
			}
		}
		if spec.Creating {
			refs.building[filepath.Clean(spec.Dir)] = true
		}
		live := d.machine(vm.ID) != nil
		switch vm.State {
		case store.VMStarting, store.VMStopping:
			live = true // the VMM may run before (or after) the row says so
		case store.VMRunning:
			live = live || spec.VMM != nil
		}
		if m := d.machine(vm.ID); m != nil {
			refs.pids[m.PID()] = vm.Name
		}
		if live && spec.VMM != nil && spec.VMM.PID > 0 {
			refs.pids[spec.VMM.PID] = vm.Name
		}
		if live {
			refs.liveRuns[filepath.Clean(spec.RunDir)] = vm.Name
			if spec.Network.TAP != "" {
				refs.taps[spec.Network.TAP] = vm.Name
			}
		} else if spec.RunDir != "" {
			refs.stopped[filepath.Clean(spec.RunDir)] = fmt.Sprintf("VM %s (%s)", vm.Name, vm.State)
		}
	}
	return refs, nil
}

// findLeaks scans everything in scope against the references.
func (d *Daemon) findLeaks(ctx context.Context, sc leakScope) (api.LeaksResponse, error) {
	res := api.LeaksResponse{Leaks: []api.Leak{}, Checked: map[api.LeakKind]int{}, Skipped: map[api.LeakKind]string{}}
	// The start's warm-up builds templates: its scratch files are not leftovers.
	if err := d.waitWarmUp(ctx); err != nil {
		return res, err
	}
	refs, err := d.leakRefs(ctx)
	if err != nil {
		return res, fmt.Errorf("list VMs: %w", err)
	}
	add := func(l api.Leak) { res.Leaks = append(res.Leaks, l) }

	// VMM processes whose run dir is under the runtime dir.
	procs, err := scanVMMProcs(sc.procDir, sc.runtimeDir)
	if err != nil {
		res.Skipped[api.LeakProcess] = err.Error()
	}
	res.Checked[api.LeakProcess] = len(procs)
	for _, p := range procs {
		if _, ok := refs.pids[p.pid]; ok {
			continue
		}
		if vm, ok := refs.liveRuns[p.runDir]; ok && !pidKnownFor(refs, vm) {
			continue // a VM being started: its pid is not recorded yet
		}
		if benchDirBusy(p.runDir) {
			continue // a bench's bare boot in progress
		}
		owner := "no VM"
		if o, ok := refs.stopped[p.runDir]; ok {
			owner = o
		} else if o, ok := refs.liveRuns[p.runDir]; ok {
			owner = "VM " + o + " (it runs another process)"
		}
		add(api.Leak{Kind: api.LeakProcess, What: "pid " + strconv.Itoa(p.pid), PID: p.pid, Fixable: true,
			Detail: fmt.Sprintf("%s runs in %s but %s references it", p.name, p.runDir, owner),
			Fix:    fmt.Sprintf("kill %d", p.pid)})
	}

	// Sockets under the runtime dir.
	keep := map[string]bool{}
	for _, k := range sc.keep {
		keep[filepath.Clean(k)] = true
	}
	socks := findSockets(sc.runtimeDir, 3)
	res.Checked[api.LeakSocket] = len(socks)
	for _, s := range socks {
		dir := filepath.Dir(s)
		if keep[s] || benchDirBusy(dir) {
			continue
		}
		if _, ok := refs.liveRuns[dir]; ok {
			continue
		}
		who := "in a directory no VM references"
		if o, ok := refs.stopped[dir]; ok {
			who = "of " + o
		}
		add(api.Leak{Kind: api.LeakSocket, What: s, Fixable: true, Detail: "socket " + who, Fix: "rm " + shellquote.Quote(s)})
	}

	// VM dirs and run dirs no row references.
	for _, parent := range []string{sc.vmsDir, filepath.Join(sc.runtimeDir, "v")} {
		ents, err := os.ReadDir(parent)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			res.Skipped[api.LeakDir] = err.Error()
		}
		for _, e := range ents {
			p := filepath.Join(parent, e.Name())
			res.Checked[api.LeakDir]++
			if _, ok := refs.dirs[p]; ok {
				if e.IsDir() && !refs.building[p] {
					d.stagingIn(p, &res)
				}
				continue
			}
			if benchDirBusy(p) {
				continue
			}
			what := "VM directory"
			if parent != sc.vmsDir {
				what = "VM run directory"
			}
			add(api.Leak{Kind: api.LeakDir, What: p, Fixable: true,
				Detail: what + " that no VM references (" + dirSummary(p) + ")", Fix: "rm -rf " + shellquote.Quote(p)})
		}
	}

	// Leases whose VM is gone.
	leases, err := d.store.ListLeases(ctx)
	if err != nil {
		res.Skipped[api.LeakLease] = err.Error()
	}
	res.Checked[api.LeakLease] = len(leases)
	for _, l := range leases {
		if _, ok := refs.vmIDs[l.VMID]; ok {
			continue
		}
		add(api.Leak{Kind: api.LeakLease, What: l.IP.String(), Fixable: true,
			Detail: fmt.Sprintf("address %s (MAC %s) is leased to VM %q, which does not exist", l.IP, l.MAC, l.VMID),
			Fix:    "`banger doctor --leaks --fix` releases it"})
	}

	d.findTAPLeaks(ctx, refs, &res)

	// Staging and temp files of interrupted builds.
	for _, dir := range sc.stagingIn {
		d.stagingEntries(dir, func(name string) bool { return strings.HasPrefix(name, ".staging-") }, "interrupted image or kernel build", false, &res)
	}
	d.stagingEntries(sc.initramfs, func(name string) bool {
		return strings.HasPrefix(name, ".initramfs-") && strings.HasSuffix(name, ".tmp")
	}, "partial initramfs archive", false, &res)
	d.stagingEntries(sc.disks, func(name string) bool {
		return strings.HasSuffix(name, templateTmpSuffix)
	}, "partial disk template", false, &res)
	for _, dir := range sc.tmpDirs {
		d.stagingEntries(dir, isDiskStaging, "disk build staging", false, &res)
	}
	// A template build in progress is its builder VM's directory; any other staging is a
	// killed build's.
	d.stagingEntries(sc.templates, func(name string) bool {
		_, owned := refs.dirs[filepath.Join(sc.templates, name)]
		return strings.HasPrefix(name, templateStaging) && !owned
	}, "interrupted warm-start template build", true, &res)
	return res, nil
}

// pidKnownFor reports whether a live VM already has its VMM pid recorded.
func pidKnownFor(refs leakRefs, vm string) bool {
	for _, n := range refs.pids {
		if n == vm {
			return true
		}
	}
	return false
}

// isDiskStaging matches the names the ext4 toolkit gives its staging trees and scratch files
// (see ext4.Toolkit's stagingDir, WriteExt4Files, dump).
func isDiskStaging(name string) bool {
	for _, p := range []string{"." + image.RootfsFile + ".", "." + image.WorkSeedFile + ".", ".work.ext4.", ".layer.ext4.", "banger-write-", "banger-dump-"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// stagingIn reports dot-entries left inside a referenced VM dir by an interrupted disk build.
func (d *Daemon) stagingIn(dir string, res *api.LeaksResponse) {
	d.stagingEntries(dir, func(name string) bool { return strings.HasPrefix(name, ".") }, "disk build staging in a VM directory", true, res)
}

// stagingEntries reports the entries of dir, owned by this user, that match.
// With alwaysFix (a VM dir, whose builds hold the VM's row in "creating") --fix removes them
// whatever their age.
func (d *Daemon) stagingEntries(dir string, match func(string) bool, what string, alwaysFix bool, res *api.LeaksResponse) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !match(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		fi, err := os.Lstat(p)
		if err != nil || !ownedByUs(fi) {
			continue
		}
		res.Checked[api.LeakStaging]++
		if benchDirBusy(filepath.Dir(p)) {
			continue
		}
		// A build in progress (a pull, an initramfs, a disk of another process of this user)
		// looks the same as a leftover: only old ones are removed by --fix.
		age := time.Since(fi.ModTime())
		res.Leaks = append(res.Leaks, api.Leak{Kind: api.LeakStaging, What: p, Fixable: alwaysFix || age > stagingFixAge,
			Detail: fmt.Sprintf("%s, %s old", what, age.Round(time.Second)),
			Fix:    "if no image pull, import or VM create is running: rm -rf " + shellquote.Quote(p) + " (the daemon also removes image staging when it starts)"})
	}
}

// stagingFixAge is how old staging must be for --fix to remove it: builds take minutes.
const stagingFixAge = time.Hour

// findTAPLeaks lists per-VM TAPs no running VM uses and pool TAPs beyond the pool's size.
func (d *Daemon) findTAPLeaks(ctx context.Context, refs leakRefs, res *api.LeaksResponse) {
	if d.net == nil {
		res.Skipped[api.LeakTAP] = "networking is disabled (see the daemon log)"
		return
	}
	devs, err := d.net.client.List(ctx)
	if err != nil {
		res.Skipped[api.LeakTAP] = "the root helper did not answer: " + err.Error()
		return
	}
	used := d.net.pool.Used()
	var freePool []string
	for _, dev := range devs {
		if !helper.IsTAPName(dev.Name) {
			continue
		}
		res.Checked[api.LeakTAP]++
		_, byVM := refs.taps[dev.Name]
		_, inUse := used[dev.Name]
		switch {
		case byVM || inUse:
		case helper.IsPoolTAP(dev.Name):
			freePool = append(freePool, dev.Name)
		default:
			res.Leaks = append(res.Leaks, api.Leak{Kind: api.LeakTAP, What: dev.Name, Fixable: true,
				Detail: "per-VM TAP that no running VM uses",
				Fix:    "`banger doctor --leaks --fix` deletes it through the helper (or restart the daemon)"})
		}
	}
	size := d.opts.Config.Network.TAPPoolSize
	slices.SortFunc(freePool, func(a, b string) int {
		x, _ := helper.PoolTAPIndex(a)
		y, _ := helper.PoolTAPIndex(b)
		return x - y
	})
	if len(freePool) > size {
		for _, name := range freePool[size:] {
			res.Leaks = append(res.Leaks, api.Leak{Kind: api.LeakTAP, What: name,
				Detail: fmt.Sprintf("pool TAP beyond network.tap_pool_size = %d (%d free)", size, len(freePool)),
				Fix:    "restart the daemon: its reconcile trims the pool to its size"})
		}
	}
}

// fixLeaks removes what can be removed safely, then scans again. Processes go first (they
// hold sockets); pool TAPs are left to the daemon's reconcile.
func (d *Daemon) fixLeaks(ctx context.Context, sc leakScope) (api.LeaksResponse, error) {
	return d.fixLeaksOf(ctx, sc, api.LeakKinds())
}

// fixLeaksOf removes the fixable leaks of the given kinds, then scans again.
func (d *Daemon) fixLeaksOf(ctx context.Context, sc leakScope, kinds []api.LeakKind) (api.LeaksResponse, error) {
	found, err := d.findLeaks(ctx, sc)
	if err != nil {
		return found, err
	}
	var fixed []api.Leak
	var errs []string
	order := map[api.LeakKind]int{}
	for i, k := range api.LeakKinds() {
		order[k] = i
	}
	leaks := slices.Clone(found.Leaks)
	slices.SortStableFunc(leaks, func(a, b api.Leak) int { return order[a.Kind] - order[b.Kind] })
	for _, l := range leaks {
		if !l.Fixable || !slices.Contains(kinds, l.Kind) {
			continue
		}
		var err error
		switch l.Kind {
		case api.LeakProcess:
			err = killStray(sc.procDir, l.PID, sc.runtimeDir)
		case api.LeakSocket:
			err = os.Remove(l.What)
		case api.LeakDir, api.LeakStaging:
			err = removeAllWritable(l.What)
		case api.LeakLease:
			var ip netip.Addr
			if ip, err = netip.ParseAddr(l.What); err == nil {
				err = d.store.DeleteLease(ctx, ip)
			}
		case api.LeakTAP:
			err = d.net.client.DeleteTAP(ctx, l.What)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Sprintf("%s %s: %v", l.Kind, l.What, err))
			continue
		}
		d.log.Warn("removed a leak", "kind", l.Kind, "what", l.What, "detail", l.Detail)
		fixed = append(fixed, l)
	}
	res, err := d.findLeaks(ctx, sc)
	res.Fixed, res.FixErrors = fixed, errs
	return res, err
}

// removeAllWritable removes a tree, making its directories writable first (image staging
// trees may hold read-only directories).
func removeAllWritable(p string) error {
	if err := os.RemoveAll(p); err == nil {
		return nil
	}
	_ = filepath.WalkDir(p, func(q string, e os.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			_ = os.Chmod(q, 0o700)
		}
		return nil
	})
	return os.RemoveAll(p)
}

// findSockets lists socket files under dir, down to depth levels.
func findSockets(dir string, depth int) []string {
	var out []string
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		switch {
		case e.Type()&os.ModeSocket != 0:
			out = append(out, p)
		case e.IsDir() && depth > 1:
			out = append(out, findSockets(p, depth-1)...)
		}
	}
	return out
}

// dirSummary says briefly what a stray directory holds.
func dirSummary(p string) string {
	fi, err := os.Lstat(p)
	if err != nil {
		return err.Error()
	}
	if !fi.IsDir() {
		return fmt.Sprintf("a file of %d bytes", fi.Size())
	}
	ents, _ := os.ReadDir(p)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) == 0 {
		return "empty"
	}
	if len(names) > 4 {
		names = append(names[:4], "...")
	}
	return "holds " + strings.Join(names, ", ")
}

func ownedByUs(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Getuid()
}

// cleanLeftovers runs at daemon start, after the VMs are reconciled: what banger made that
// no VM references any more (stray VMM processes, sockets, VM directories, leases,
// staging old enough to be dead) goes. TAPs are left to the network reconcile, which
// talks to the helper.
func (d *Daemon) cleanLeftovers(ctx context.Context) {
	res, err := d.fixLeaksOf(ctx, d.leakScope(), []api.LeakKind{api.LeakProcess, api.LeakSocket, api.LeakDir, api.LeakLease, api.LeakStaging})
	if err != nil {
		d.log.Warn("could not clean leftovers", "err", err)
		return
	}
	for _, e := range res.FixErrors {
		d.log.Warn("could not remove a leftover", "err", e)
	}
	if len(res.Fixed) > 0 {
		d.log.Info("cleaned leftovers nothing referenced", "count", len(res.Fixed))
	}
}
