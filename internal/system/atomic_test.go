package system

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o755); err != nil {
		t.Fatal(err)
	}
}

func wantContent(t *testing.T, p, want string) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil || string(b) != want {
		t.Errorf("%s: got %q (%v), want %q", p, b, err, want)
	}
}

func wantMissing(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s should not exist (%v)", p, err)
	}
}

func TestAtomicReplace(t *testing.T) {
	const suf = ".previous"
	setup := func(t *testing.T) (dir, src, dst string) {
		dir = t.TempDir()
		src, dst = filepath.Join(dir, "banger.new"), filepath.Join(dir, "banger")
		writeFile(t, src, "v2")
		return
	}
	t.Run("happy path", func(t *testing.T) {
		_, src, dst := setup(t)
		writeFile(t, dst, "v1")
		if err := AtomicReplace(src, dst, suf); err != nil {
			t.Fatal(err)
		}
		wantContent(t, dst, "v2")
		wantContent(t, dst+suf, "v1")
		wantMissing(t, src)
		if err := AtomicReplaceRollback(dst, suf); err != nil {
			t.Fatal(err)
		}
		wantContent(t, dst, "v1")
		wantMissing(t, dst+suf)
	})
	t.Run("fresh install", func(t *testing.T) {
		_, src, dst := setup(t)
		if err := AtomicReplace(src, dst, suf); err != nil {
			t.Fatal(err)
		}
		wantContent(t, dst, "v2")
		wantMissing(t, dst+suf)
	})
	t.Run("stale backup with dst", func(t *testing.T) {
		_, src, dst := setup(t)
		writeFile(t, dst, "v1")
		writeFile(t, dst+suf, "v0-stale")
		if err := AtomicReplace(src, dst, suf); err != nil {
			t.Fatal(err)
		}
		wantContent(t, dst, "v2")
		wantContent(t, dst+suf, "v1")
	})
	t.Run("stale backup without dst", func(t *testing.T) {
		// An earlier run moved dst away and died: the backup is the only
		// copy of the previous binary and must survive.
		_, src, dst := setup(t)
		writeFile(t, dst+suf, "v1")
		if err := AtomicReplace(src, dst, suf); err != nil {
			t.Fatal(err)
		}
		wantContent(t, dst, "v2")
		wantContent(t, dst+suf, "v1")
	})
	t.Run("empty suffix refused", func(t *testing.T) {
		_, src, dst := setup(t)
		writeFile(t, dst, "v1")
		if err := AtomicReplace(src, dst, ""); err == nil || !strings.Contains(err.Error(), "suffix") {
			t.Fatalf("got %v", err)
		}
		if err := AtomicReplaceRollback(dst, ""); err == nil {
			t.Fatal("rollback with empty suffix accepted")
		}
		wantContent(t, dst, "v1")
		wantContent(t, src, "v2")
	})
	t.Run("rollback without backup", func(t *testing.T) {
		_, src, dst := setup(t)
		if err := AtomicReplace(src, dst, suf); err != nil {
			t.Fatal(err)
		}
		if err := AtomicReplaceRollback(dst, suf); err != nil {
			t.Fatal(err)
		}
		wantMissing(t, dst)
		if err := AtomicReplaceRollback(dst, suf); err != nil {
			t.Fatalf("second rollback: %v", err)
		}
	})
	t.Run("dst exists throughout", func(t *testing.T) {
		// A kill -9 right before the final rename must still leave a working binary at dst.
		_, src, dst := setup(t)
		writeFile(t, dst, "v1")
		err := atomicReplace(src, dst, suf, func(from, to string) error {
			wantContent(t, dst, "v1")
			wantContent(t, dst+suf, "v1")
			return os.Rename(from, to)
		})
		if err != nil {
			t.Fatal(err)
		}
		wantContent(t, dst, "v2")
		wantContent(t, dst+suf, "v1")
	})
	t.Run("rename failure restores original", func(t *testing.T) {
		_, src, dst := setup(t)
		writeFile(t, dst, "v1")
		boom := errors.New("injected rename failure")
		err := atomicReplace(src, dst, suf, func(string, string) error { return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("got %v", err)
		}
		wantContent(t, dst, "v1")
		wantMissing(t, dst+suf)
		wantContent(t, src, "v2")
	})
	t.Run("real rename failure across filesystems", func(t *testing.T) {
		dir := t.TempDir()
		dst := filepath.Join(dir, "banger")
		writeFile(t, dst, "v1")
		// /dev/shm is tmpfs: renaming from it into TempDir gives EXDEV.
		shm, err := os.MkdirTemp("/dev/shm", "banger-test-")
		if err != nil {
			t.Skipf("no writable /dev/shm to force a cross-device rename: %v", err)
		}
		defer os.RemoveAll(shm)
		var a, b syscall.Stat_t
		if syscall.Stat(shm, &a) != nil || syscall.Stat(dir, &b) != nil || a.Dev == b.Dev {
			t.Skip("/dev/shm is on the same filesystem as the temp dir")
		}
		src := filepath.Join(shm, "banger.new")
		writeFile(t, src, "v2")
		if err := AtomicReplace(src, dst, suf); err == nil {
			t.Fatal("cross-device replace succeeded")
		}
		wantContent(t, dst, "v1")
		wantMissing(t, dst+suf)
	})
	t.Run("missing new file", func(t *testing.T) {
		dir := t.TempDir()
		dst := filepath.Join(dir, "banger")
		writeFile(t, dst, "v1")
		if err := AtomicReplace(filepath.Join(dir, "nope"), dst, suf); err == nil {
			t.Fatal("accepted a missing source")
		}
		wantContent(t, dst, "v1")
	})
}

func TestCloneFileSparse(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	// 1 GiB with two small data islands.
	if _, err := f.WriteAt([]byte("head"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("middle"), 512<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 30); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dst := filepath.Join(dir, "dst")
	reflinked, err := CloneFile(context.Background(), src, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reflinked=%v", reflinked)
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 1<<30 || st.Blocks*512 > 16<<20 {
		t.Errorf("clone size %d allocated %d: want sparse 1 GiB", st.Size, st.Blocks*512)
	}
	g, _ := os.Open(dst)
	defer g.Close()
	buf := make([]byte, 6)
	if _, err := g.ReadAt(buf, 512<<20); err != nil || string(buf) != "middle" {
		t.Errorf("data at 512 MiB %q %v", buf, err)
	}
	if _, err := CloneFile(context.Background(), src, dst); err == nil {
		t.Error("clone over an existing file succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := CloneFile(ctx, filepath.Join(dir, "missing"), filepath.Join(dir, "x")); err == nil {
		t.Error("clone of a missing file succeeded")
	}
	wantMissing(t, filepath.Join(dir, "x"))
}

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	writeFile(t, p, "old")
	if err := WriteFileAtomic(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	wantContent(t, p, "new")
	if fi, _ := os.Stat(p); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode())
	}
	// A failed write leaves the old file and no temporary file.
	boom := errors.New("boom")
	if err := WriteAtomic(p, 0o644, func(w io.Writer) error { w.Write([]byte("half")); return boom }); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	wantContent(t, p, "new")
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("leftovers: %v", ents)
	}
}
