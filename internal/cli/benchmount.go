package cli

// `banger bench mount`: the throughput of a host folder (--mount) against the VM's own work
// disk, timed by the client the way a user waits for `vm exec`. Everything it creates is
// removed afterwards, on failure and on Ctrl-C too.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/internal/api"
	"github.com/banger-vm/banger/internal/termutil"
)

// Bounds of one bench mount.
const (
	benchMountMaxRuns  = 20
	benchMountMaxMB    = 4096
	benchMountMaxFiles = 100000
	// benchMountGuestDir is where the host folder is mounted in the bench VM.
	benchMountGuestDir = "/mnt/banger-bench"
	// benchMountFilesPerDir spreads the tree's files like a source tree's.
	benchMountFilesPerDir = 100
)

type benchMountOptions struct {
	create api.VMCreateRequest
	runs   int
	sizeMB int
	files  int
	tmpDir string
}

func (a *app) benchMountCommand() *cobra.Command {
	var o benchMountOptions
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "mount",
		Short: "Time a host folder (--mount) against the VM's own disk: MB/s and a tree walk",
		Long: `Creates a VM with a fresh host folder mounted at ` + benchMountGuestDir + `, then times, in
the guest, as the client sees the commands end:
  - a sequential write of --size-mb MiB (dd, fsync'd) and its read back after the
    guest's caches were dropped, on the host folder and on the VM's work disk (/root);
  - over a tree of --files small files made on the host: find (names), ls -lR (a stat
    of every file, as 'git status' does), and 'git status' itself when the image has git
    (after a 'git init' and commit in the guest).
The host checks what it sees: the written file's size and the tree's file count. Each
figure is the median of --runs; the exec round trip of 'true' is reported beside them.
The VM and the folder are removed afterwards, also on failure or Ctrl-C.

  banger bench mount --image debian-bookworm --size-mb 200 --files 10000 --runs 3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := errors.Join(checkBenchFlag("runs", o.runs, benchMountMaxRuns), checkBenchFlag("size-mb", o.sizeMB, benchMountMaxMB),
				checkBenchFlag("files", o.files, benchMountMaxFiles)); err != nil {
				return err
			}
			return runClientBench(a, cmd, asJSON, func(ctx context.Context, c *client.Client, progress func(string, ...any)) (api.BenchMountResult, error) {
				return runMountBench(ctx, c, o, progress)
			}, printMountBench)
		},
	}
	addBootFlags(cmd, &o.create.Image, &o.create.Kernel, &o.create.CPUs, &o.create.Memory)
	cmd.Flags().IntVar(&o.runs, "runs", 3, "rounds of each measure")
	cmd.Flags().IntVar(&o.sizeMB, "size-mb", 200, "MiB written and read sequentially")
	cmd.Flags().IntVar(&o.files, "files", 10000, "files in the tree that is walked")
	cmd.Flags().StringVar(&o.tmpDir, "dir", "", "host directory to make the shared folder in (default: the system's temp dir)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON (no progress)")
	return cmd
}

// runMountBench runs the bench. Whatever it created is removed before it returns.
func runMountBench(ctx context.Context, c *client.Client, o benchMountOptions, progress func(string, ...any)) (res api.BenchMountResult, err error) {
	host, err := os.MkdirTemp(o.tmpDir, "banger-bench-mount-")
	if err != nil {
		return res, fmt.Errorf("make the shared folder: %w", err)
	}
	defer func() {
		if rerr := os.RemoveAll(host); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove the bench folder %s: %w", host, rerr))
		}
	}()
	progress("making %d files on the host", o.files)
	if err := makeBenchTree(filepath.Join(host, "tree"), o.files); err != nil {
		return res, err
	}

	tag := "bm-" + strconv.FormatInt(time.Now().UnixNano()&0xffffff, 16)
	cleanup := context.WithoutCancel(ctx)
	o.create.Name, o.create.Start = tag, true
	o.create.Mounts = []string{host + ":" + benchMountGuestDir}
	progress("creating VM %s with %s at %s", tag, host, benchMountGuestDir)
	vm, err := c.CreateVM(ctx, o.create, nil)
	defer func() {
		if rerr := c.RemoveVM(cleanup, api.VMRemoveRequest{Name: tag, Force: true}); rerr != nil && !isNotFound(rerr) {
			err = errors.Join(err, fmt.Errorf("remove the bench VM %s: %w", tag, rerr))
		}
	}()
	if err != nil {
		return res, err
	}
	if len(vm.Mounts) != 1 || !vm.Mounts[0].Mounted {
		why := "no mount recorded"
		if len(vm.Mounts) == 1 {
			why = vm.Mounts[0].Error
		}
		return res, fmt.Errorf("the host folder is not mounted in %s: %s", tag, termutil.SanitizeString(why))
	}
	res = api.BenchMountResult{Runs: o.runs, SizeMB: o.sizeMB, Files: o.files, Driver: vm.Driver, Accel: vm.Accel, Image: vm.Image, CPUs: vm.CPUs, MemoryMiB: vm.MemoryMiB}

	b := &mountBench{ctx: ctx, c: c, vm: tag, measures: map[string][]float64{}}
	gitTree := benchMountGuestDir + "/tree"
	hasGit := b.ok("command -v git")
	if hasGit {
		// gc.auto 0: a background git gc would pack and delete loose objects while the
		// walks below run (10k files are past its threshold).
		progress("git init and commit of the tree in the guest")
		if _, err := b.timed("", `cd "$1" && git init -q && git config gc.auto 0 && git add -A && git -c user.name=bench -c user.email=bench@banger commit -qm bench`, gitTree); err != nil {
			return res, fmt.Errorf("git commit of the tree: %w", err)
		}
	} else {
		res.Note = "the image has no git: 'git status' was not timed (ls -lR stats every file the same way)"
	}
	for i := range o.runs {
		if err := b.round(o, host, hasGit); err != nil {
			return res, fmt.Errorf("run %d: %w", i+1, err)
		}
		progress("run %d/%d: write %.1f / %.1f MB/s, read %.1f / %.1f MB/s (folder / work disk), ls -lR %.0f ms", i+1, o.runs,
			mbps(o.sizeMB, last(b.measures["write:mount"])), mbps(o.sizeMB, last(b.measures["write:root"])),
			mbps(o.sizeMB, last(b.measures["read:mount"])), mbps(o.sizeMB, last(b.measures["read:root"])), last(b.measures["lsr:mount"]))
	}
	m := b.measures
	for _, side := range []struct {
		name string
		out  *api.BenchMountSide
	}{{"mount", &res.Mount}, {"root", &res.WorkDisk}} {
		*side.out = api.BenchMountSide{
			Write: api.SummarizeMS(m["write:"+side.name]), Read: api.SummarizeMS(m["read:"+side.name]),
			Find: api.SummarizeMS(m["find:"+side.name]), LsR: api.SummarizeMS(m["lsr:"+side.name]),
		}
		side.out.WriteMBps = mbps(o.sizeMB, side.out.Write.MedianMS)
		side.out.ReadMBps = mbps(o.sizeMB, side.out.Read.MedianMS)
	}
	if hasGit {
		st := api.SummarizeMS(m["git:mount"])
		res.Mount.GitStatus = &st
	}
	res.ExecTrue = api.SummarizeMS(m["true"])
	return res, nil
}

// mountBench runs the bench's guest commands and keeps their times by measure.
type mountBench struct {
	ctx      context.Context
	c        *client.Client
	vm       string
	measures map[string][]float64
}

// timed runs script (sh -c, with args as $1...) and records its client-side time under
// measure ("" records nothing). A non-zero exit is an error with the guest's stderr.
func (b *mountBench) timed(measure, script string, args ...string) (string, error) {
	var out, stderr bytes.Buffer
	began := time.Now()
	st, err := b.c.Exec(b.ctx, b.vm, client.Command{Argv: append([]string{"sh", "-c", script, "sh"}, args...),
		Stdout: &limitWriter{w: &out, max: 4096}, Stderr: &limitWriter{w: &stderr, max: 4096}})
	ms := msSince(began)
	if err != nil {
		return "", err
	}
	if st.Code != 0 {
		return "", fmt.Errorf("%s exited %d: %s", strings.Fields(script)[0], st.Code, termutil.SanitizeString(strings.TrimSpace(stderr.String())))
	}
	if measure != "" {
		b.measures[measure] = append(b.measures[measure], ms)
	}
	return out.String(), nil
}

func (b *mountBench) ok(script string) bool {
	_, err := b.timed("", script)
	return err == nil
}

// dropCaches empties the guest's page cache, so a read comes from the disk or the host.
func (b *mountBench) dropCaches() error {
	_, err := b.timed("", "sync; echo 3 > /proc/sys/vm/drop_caches")
	return err
}

// round is one run of every measure, on the host folder and on the work disk.
func (b *mountBench) round(o benchMountOptions, host string, hasGit bool) error {
	if _, err := b.timed("true", "true"); err != nil {
		return err
	}
	count := strconv.Itoa(o.sizeMB)
	for _, side := range []struct{ name, dir string }{{"mount", benchMountGuestDir}, {"root", "/root/banger-bench"}} {
		file := side.dir + "/seq.bin"
		if _, err := b.timed("", `mkdir -p "$1"`, side.dir); err != nil {
			return err
		}
		if _, err := b.timed("write:"+side.name, `dd if=/dev/zero of="$1" bs=1M count="$2" conv=fsync 2>/dev/null`, file, count); err != nil {
			return fmt.Errorf("write on %s: %w", side.dir, err)
		}
		if err := b.dropCaches(); err != nil {
			return err
		}
		if _, err := b.timed("read:"+side.name, `dd if="$1" of=/dev/null bs=1M 2>/dev/null`, file); err != nil {
			return fmt.Errorf("read on %s: %w", side.dir, err)
		}
		if side.name == "mount" {
			fi, err := os.Stat(filepath.Join(host, "seq.bin"))
			if err != nil || fi.Size() != int64(o.sizeMB)<<20 {
				return fmt.Errorf("the host sees the guest's %d MiB file wrongly: %v %v", o.sizeMB, fi, err)
			}
		}
		if _, err := b.timed("", `rm -f "$1"`, file); err != nil {
			return err
		}
	}
	// The tree: the host's copy on the folder; a copy made in the guest on the work disk.
	if _, err := b.timed("", `[ -d /root/banger-bench/tree ] || cp -a "$1" /root/banger-bench/tree`, benchMountGuestDir+"/tree"); err != nil {
		return fmt.Errorf("copy the tree to the work disk: %w", err)
	}
	for _, side := range []struct{ name, dir string }{{"mount", benchMountGuestDir + "/tree"}, {"root", "/root/banger-bench/tree"}} {
		if err := b.dropCaches(); err != nil {
			return err
		}
		out, err := b.timed("find:"+side.name, `find "$1" -type f -name 'f*.go' | wc -l`, side.dir)
		if err != nil {
			return err
		}
		if n, _ := strconv.Atoi(strings.TrimSpace(out)); n != o.files {
			return fmt.Errorf("find saw %d files in %s, the host made %d", n, side.dir, o.files)
		}
		if err := b.dropCaches(); err != nil {
			return err
		}
		if _, err := b.timed("lsr:"+side.name, `ls -lR "$1" >/dev/null`, side.dir); err != nil {
			return err
		}
	}
	if hasGit {
		if err := b.dropCaches(); err != nil {
			return err
		}
		out, err := b.timed("git:mount", `cd "$1" && git status --porcelain`, benchMountGuestDir+"/tree")
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "" {
			return fmt.Errorf("git status in the guest sees changes in an untouched tree: %s", termutil.SanitizeString(out))
		}
	}
	return nil
}

// makeBenchTree writes n small files, benchMountFilesPerDir to a directory.
func makeBenchTree(root string, n int) error {
	for i := range n {
		dir := filepath.Join(root, fmt.Sprintf("d%03d", i/benchMountFilesPerDir))
		if i%benchMountFilesPerDir == 0 {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return fmt.Errorf("make the bench tree: %w", err)
			}
		}
		body := fmt.Sprintf("package p%d\n\n// file %d of the bench tree\n", i, i)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%05d.go", i)), []byte(body), 0o644); err != nil {
			return fmt.Errorf("make the bench tree: %w", err)
		}
	}
	return nil
}

// limitWriter keeps the first max bytes and drops the rest.
type limitWriter struct {
	w   io.Writer
	max int
	n   int
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if room := l.max - l.n; room > 0 {
		k := min(room, len(p))
		if _, err := l.w.Write(p[:k]); err != nil {
			return 0, err
		}
		l.n += k
	}
	return len(p), nil
}

func mbps(sizeMB int, ms float64) float64 {
	if ms <= 0 {
		return 0
	}
	return float64(sizeMB) * 1048576 / 1e6 / (ms / 1000)
}

func last(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return v[len(v)-1]
}

func printMountBench(a *app, r api.BenchMountResult) {
	w := a.env.Stdout
	accel := ""
	if r.Accel != "" {
		accel = "/" + r.Accel
	}
	fmt.Fprintf(w, "banger bench mount: %d runs, %s%s, image %s, %d vCPUs, %d MiB; %d MiB sequential, %d files\n\n",
		r.Runs, r.Driver, accel, r.Image, r.CPUs, r.MemoryMiB, r.SizeMB, r.Files)
	rows := [][]string{{"MEASURE", "HOST FOLDER", "WORK DISK", "UNIT"},
		{"sequential write (median)", fmt.Sprintf("%.1f", r.Mount.WriteMBps), fmt.Sprintf("%.1f", r.WorkDisk.WriteMBps), "MB/s"},
		{"sequential read (median)", fmt.Sprintf("%.1f", r.Mount.ReadMBps), fmt.Sprintf("%.1f", r.WorkDisk.ReadMBps), "MB/s"},
		{"find (names, median)", benchMS(r.Mount.Find.MedianMS), benchMS(r.WorkDisk.Find.MedianMS), "ms"},
		{"ls -lR (stat all, median)", benchMS(r.Mount.LsR.MedianMS), benchMS(r.WorkDisk.LsR.MedianMS), "ms"}}
	if r.Mount.GitStatus != nil {
		rows = append(rows, []string{"git status (median)", benchMS(r.Mount.GitStatus.MedianMS), "-", "ms"})
	}
	rows = append(rows, []string{"exec round trip of true", benchMS(r.ExecTrue.MedianMS), "", "ms"})
	table(w, rows)
	if r.Note != "" {
		fmt.Fprintf(w, "\nnote: %s\n", r.Note)
	}
}
