package initramfs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
)

// cacheFiles lists the cache directory, without the lock file.
func cacheFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	must(t, err)
	var out []string
	for _, e := range ents {
		if e.Name() != cacheLockName {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

func TestCacheMissThenHit(t *testing.T) {
	spec := fakeSpec(t)
	c := Cache{Dir: filepath.Join(t.TempDir(), "initramfs")} // created on demand
	ctx := context.Background()

	r1, err := c.Ensure(ctx, spec)
	must(t, err)
	if r1.Hit {
		t.Fatal("first Ensure was a hit")
	}
	if filepath.Dir(r1.Path) != c.Dir || !strings.Contains(filepath.Base(r1.Path), "6.1.0-test") {
		t.Errorf("path = %s", r1.Path)
	}
	r2, err := c.Ensure(ctx, spec)
	must(t, err)
	if !r2.Hit || r2.Path != r1.Path || r2.Key != r1.Key {
		t.Fatalf("second Ensure: %+v", r2)
	}
	// Atomic write: only the finished archive is left (plus the lock file).
	if files := cacheFiles(t, c.Dir); len(files) != 1 || files[0] != filepath.Base(r1.Path) {
		t.Fatalf("cache dir holds %v", files)
	}
	// The cached file is exactly what Build writes.
	want, _ := buildBytes(t, spec)
	got, err := os.ReadFile(r1.Path)
	must(t, err)
	if !bytes.Equal(got, want) {
		t.Fatal("cached archive differs from Build's output")
	}
	if st, _ := os.Stat(r1.Path); st.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", st.Mode())
	}

	// A rebuilt init binary is a new key and a new file; the old one stays
	// (another VM may still boot from it).
	writeFile(t, spec.InitBinary, []byte("\x7fELF banger-init v2"))
	r3, err := c.Ensure(ctx, spec)
	must(t, err)
	if r3.Hit || r3.Key == r1.Key || r3.Path == r1.Path {
		t.Fatalf("new init binary: %+v (old key %s)", r3, r1.Key)
	}
	// So are another banger version and another module list.
	spec.BangerVersion = "v9"
	r4, err := c.Ensure(ctx, spec)
	must(t, err)
	spec.ExtraModules = []string{"vsock"} // already in the set: same archive
	r5, err := c.Ensure(ctx, spec)
	must(t, err)
	if r4.Hit || r4.Key == r3.Key || !r5.Hit || r5.Key != r4.Key {
		t.Fatalf("version/module keys: r4 %+v r5 %+v", r4, r5)
	}
	if files := cacheFiles(t, c.Dir); len(files) != 3 {
		t.Fatalf("cache dir holds %v", files)
	}
}

func TestCacheKeyCoversModuleContent(t *testing.T) {
	spec := fakeSpec(t)
	c := Cache{Dir: t.TempDir()}
	r1, err := c.Ensure(context.Background(), spec)
	must(t, err)
	// Same kernel release, different build of one module.
	writeFile(t, filepath.Join(spec.ModulesDir, "kernel/fs/overlayfs/overlay.ko"), fakeKO(t, "name=overlay", "depends=", "srcversion=OTHER"))
	r2, err := c.Ensure(context.Background(), spec)
	must(t, err)
	if r2.Hit || r2.Key == r1.Key {
		t.Fatal("a changed module did not change the key")
	}
}

func TestCacheReplacesStaleTempAndEmptyFile(t *testing.T) {
	spec := fakeSpec(t)
	c := Cache{Dir: t.TempDir()}
	r1, err := c.Ensure(context.Background(), spec)
	must(t, err)
	// Simulate a builder that crashed mid-write, and a truncated final name.
	stale := filepath.Join(c.Dir, tmpPrefix+"crashed"+tmpSuffix)
	writeFile(t, stale, []byte("half an archive"))
	must(t, os.Truncate(r1.Path, 0))
	r2, err := c.Ensure(context.Background(), spec)
	must(t, err)
	if r2.Hit {
		t.Fatal("empty file taken as a hit")
	}
	if files := cacheFiles(t, c.Dir); len(files) != 1 {
		t.Fatalf("cache dir holds %v after rebuild", files)
	}
}

func TestCacheConcurrentEnsure(t *testing.T) {
	spec := fakeSpec(t)
	c := Cache{Dir: t.TempDir()}
	const n = 8
	var wg sync.WaitGroup
	results := make([]Result, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Separate Cache values, as two daemons would have.
			results[i], errs[i] = Cache{Dir: c.Dir}.Ensure(context.Background(), spec)
		}()
	}
	wg.Wait()
	built := 0
	for i := range n {
		must(t, errs[i])
		if results[i].Path != results[0].Path {
			t.Fatalf("different paths: %s vs %s", results[i].Path, results[0].Path)
		}
		if !results[i].Hit {
			built++
		}
	}
	if built != 1 {
		t.Errorf("%d goroutines built the archive, want exactly 1 (the lock serializes builders)", built)
	}
	if files := cacheFiles(t, c.Dir); len(files) != 1 {
		t.Fatalf("cache dir holds %v", files)
	}
	want, _ := buildBytes(t, spec)
	got, err := os.ReadFile(results[0].Path)
	must(t, err)
	if !bytes.Equal(got, want) {
		t.Fatal("archive built concurrently differs from Build's output")
	}
}

func TestCacheCancelledWhileWaitingForLock(t *testing.T) {
	spec := fakeSpec(t)
	c := Cache{Dir: t.TempDir()}
	unlock, err := lockFile(context.Background(), filepath.Join(c.Dir, cacheLockName))
	must(t, err)
	defer unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Ensure(ctx, spec)
		done <- err
	}()
	cancel()
	if err := <-done; err == nil {
		t.Fatal("Ensure succeeded while another builder held the lock and ctx was cancelled")
	}
	if files := cacheFiles(t, c.Dir); len(files) != 0 {
		t.Fatalf("cache dir holds %v", files)
	}
}

func TestCacheNoDir(t *testing.T) {
	if _, err := (Cache{}).Ensure(context.Background(), fakeSpec(t)); err == nil {
		t.Fatal("empty cache dir accepted")
	}
}

func TestCacheFileName(t *testing.T) {
	key := strings.Repeat("ab", 32)
	if got := cacheFileName("6.1.0-56-cloud-amd64", key); got != "initramfs-6.1.0-56-cloud-amd64-"+key[:24]+".cpio.gz" {
		t.Errorf("name = %s", got)
	}
	if got := cacheFileName("a b/c", key); strings.ContainsAny(got, " /") {
		t.Errorf("unsafe name %s", got)
	}
	if got := cacheFileName("", key); !strings.Contains(got, "nokernel") {
		t.Errorf("name = %s", got)
	}
}

func TestCachePrune(t *testing.T) {
	spec := fakeSpec(t)
	c := Cache{Dir: t.TempDir()}
	old, err := c.Ensure(context.Background(), spec)
	must(t, err)
	spec.BangerVersion = "v2"
	cur, err := c.Ensure(context.Background(), spec)
	must(t, err)
	writeFile(t, filepath.Join(c.Dir, "unrelated.txt"), []byte("x"))
	removed, err := c.Prune(context.Background(), cur.Path)
	must(t, err)
	if len(removed) != 1 || removed[0] != old.Path {
		t.Fatalf("removed %v, want [%s]", removed, old.Path)
	}
	if files := cacheFiles(t, c.Dir); len(files) != 2 {
		t.Fatalf("cache dir holds %v", files)
	}
	if r, err := c.Ensure(context.Background(), spec); err != nil || !r.Hit {
		t.Fatalf("kept archive gone: %+v %v", r, err)
	}
	if removed, err := (Cache{Dir: filepath.Join(t.TempDir(), "none")}).Prune(context.Background()); err != nil || removed != nil {
		t.Fatalf("missing dir: %v %v", removed, err)
	}
}

// With a Memo, an unchanged spec is answered from memory; a replaced input, a removed
// archive or another spec goes through the full path again.
func TestCacheMemo(t *testing.T) {
	spec := fakeSpec(t)
	ctx := context.Background()
	c := Cache{Dir: filepath.Join(t.TempDir(), "initramfs"), Memo: NewMemo()}
	r1, err := c.Ensure(ctx, spec)
	must(t, err)
	r2, err := c.Ensure(ctx, spec)
	must(t, err)
	if r1.Hit || !r2.Hit || r2.Path != r1.Path || r2.Key != r1.Key {
		t.Fatalf("miss then memo hit: %+v then %+v", r1, r2)
	}
	// The memo answers without reading the inputs: an unreadable (but unchanged) binary
	// is not noticed. Root reads anything, so this half only runs unprivileged.
	if os.Geteuid() != 0 {
		must(t, os.Chmod(spec.AgentBinary, 0))
		if r, err := c.Ensure(ctx, spec); err != nil || r.Path != r1.Path {
			t.Fatalf("memo hit read the inputs: %+v %v", r, err)
		}
		must(t, os.Chmod(spec.AgentBinary, 0o755))
	}

	// banger upgraded: the agent binary is replaced (a new file renamed over it).
	next := spec.AgentBinary + ".new"
	must(t, os.WriteFile(next, []byte("a newer agent"), 0o755))
	must(t, os.Rename(next, spec.AgentBinary))
	r3, err := c.Ensure(ctx, spec)
	must(t, err)
	if r3.Hit || r3.Key == r1.Key {
		t.Fatalf("after replacing the agent: %+v, want a new archive", r3)
	}

	// The archive removed behind the memo's back is rebuilt.
	must(t, os.Remove(r3.Path))
	r4, err := c.Ensure(ctx, spec)
	must(t, err)
	if r4.Hit || r4.Path != r3.Path {
		t.Fatalf("after removing the archive: %+v", r4)
	}
	if _, err := os.Stat(r4.Path); err != nil {
		t.Fatal(err)
	}

	// Another banger version is another key.
	spec.BangerVersion = "other"
	r5, err := c.Ensure(ctx, spec)
	must(t, err)
	if r5.Hit || r5.Key == r4.Key {
		t.Fatalf("another version: %+v", r5)
	}
}
