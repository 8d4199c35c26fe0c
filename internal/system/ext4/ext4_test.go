package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCreateExt4SparseRootOwned(t *testing.T) {
	e := testExt4(t)
	img := imagePath(t, "disk.ext4")
	if err := e.CreateExt4(context.Background(), img, 8<<30, CreateOptions{Label: "work"}); err != nil {
		t.Fatal(err)
	}
	mustFsck(t, e, img)
	var st syscall.Stat_t
	if err := syscall.Stat(img, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 8<<30 || st.Blocks*512 > 256<<20 {
		t.Errorf("size %d allocated %d: want 8 GiB sparse", st.Size, st.Blocks*512)
	}
	wantMeta(t, e, img, "/", 0, 0, fs.ModeDir|0o755)
	// Existing path is refused and left alone.
	if err := e.CreateExt4(context.Background(), img, 1<<30, CreateOptions{}); err == nil {
		t.Fatal("CreateExt4 over an existing file succeeded")
	}
	mustFsck(t, e, img)
}

func TestMissingToolsClearError(t *testing.T) {
	e := NewWithPath("")
	dir := t.TempDir()
	img := filepath.Join(dir, "x.ext4")
	err := e.CreateExt4(context.Background(), img, 64<<20, CreateOptions{})
	if err == nil || !strings.Contains(err.Error(), "mkfs.ext4 not found") || !strings.Contains(err.Error(), "apt-get install e2fsprogs") {
		t.Fatalf("want a missing mkfs.ext4 error with install hint, got %v", err)
	}
	_, err = e.BuildExt4FromTar(context.Background(), img, bytes.NewReader(nil), 0)
	if err == nil || !strings.Contains(err.Error(), "install e2fsprogs") {
		t.Fatalf("tar build: got %v", err)
	}
	_, err = e.BuildWorkDisk(context.Background(), WorkDiskSpec{Path: img})
	if err == nil || !strings.Contains(err.Error(), "install e2fsprogs") {
		t.Fatalf("work disk: got %v", err)
	}
	if err := e.Check(); err == nil || !strings.Contains(err.Error(), "debugfs not found") {
		t.Fatalf("Check: got %v", err)
	}
	noLeftovers(t, dir)
	// Explicit tool paths work too.
	good := New()
	e2 := NewWithTools(map[string]string{"mkfs.ext4": good.tools[toolMkfs]})
	if err := e2.CreateExt4(context.Background(), img, 64<<20, CreateOptions{}); err != nil {
		t.Skipf("mkfs.ext4 unavailable: %v", err)
	}
}

func TestBadImagesRejected(t *testing.T) {
	e := testExt4(t)
	ctx := context.Background()
	dir := t.TempDir()
	notExt4 := filepath.Join(dir, "junk.img")
	if err := os.WriteFile(notExt4, bytes.Repeat([]byte("junk"), 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(string) error{
		"stat":  func(p string) error { _, err := e.StatExt4(ctx, p, "/"); return err },
		"mkdir": func(p string) error { return e.MkdirExt4(ctx, p, "/a", 0, 0, 0o755) },
		"write": func(p string) error { return e.WriteExt4FileOwned(ctx, p, "/a", []byte("x"), 0, 0, 0o644) },
		"grow":  func(p string) error { return e.GrowExt4(ctx, p, 1<<30) },
		"seed":  func(p string) error { _, err := e.BuildWorkSeed(ctx, p, filepath.Join(dir, "seed.ext4")); return err },
		"disk": func(p string) error {
			_, err := e.BuildWorkDisk(ctx, WorkDiskSpec{Path: filepath.Join(dir, "disk.ext4"), SeedPath: p})
			return err
		},
	} {
		if err := f(notExt4); err == nil || !strings.Contains(err.Error(), "not an ext4 image") {
			t.Errorf("%s on non-ext4: got %v", name, err)
		}
	}
	// A truncated image: real superblock, cut short.
	trunc := filepath.Join(dir, "trunc.ext4")
	if err := e.CreateExt4(ctx, trunc, 64<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(trunc, 8<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := e.StatExt4(ctx, trunc, "/"); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("truncated image: got %v", err)
	}
	if _, err := e.BuildWorkDisk(ctx, WorkDiskSpec{Path: filepath.Join(dir, "disk.ext4"), SeedPath: trunc}); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("work disk from truncated seed: got %v", err)
	}
	noLeftovers(t, dir, "junk.img", "trunc.ext4")
}

func TestMkdirWriteReadList(t *testing.T) {
	e := testExt4(t)
	ctx := context.Background()
	img := imagePath(t, "x.ext4")
	if err := e.CreateExt4(ctx, img, 64<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	weird := `/with space/q"uote/deep`
	if err := e.MkdirExt4(ctx, img, weird, 1000, 1001, 0o750|fs.ModeSetgid); err != nil {
		t.Fatal(err)
	}
	// Existing directories are left alone: a second call is a no-op.
	if err := e.MkdirExt4(ctx, img, weird, 0, 0, 0o700); err != nil {
		t.Fatal(err)
	}
	mustFsck(t, e, img)
	wantMeta(t, e, img, "/with space", 1000, 1001, fs.ModeDir|fs.ModeSetgid|0o750)
	wantMeta(t, e, img, weird, 1000, 1001, fs.ModeDir|fs.ModeSetgid|0o750)

	f := weird + "/file name"
	if err := e.WriteExt4FileOwned(ctx, img, f, []byte("first"), 1000, 1000, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteExt4FileOwned(ctx, img, f, []byte("second version"), 0, 0, 0o4755); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteExt4FileOwned(ctx, img, "/new/parent/f", []byte("p"), 5, 6, 0o600); err != nil {
		t.Fatal(err)
	}
	mustFsck(t, e, img)
	wantMeta(t, e, img, f, 0, 0, fs.ModeSetuid|0o755)
	wantMeta(t, e, img, "/new/parent", 0, 0, fs.ModeDir|0o755)
	wantMeta(t, e, img, "/new/parent/f", 5, 6, 0o600)
	got, err := e.ReadExt4File(ctx, img, f)
	if err != nil || string(got) != "second version" {
		t.Fatalf("read back %q, %v", got, err)
	}
	ents, err := e.ListExt4Dir(ctx, img, weird)
	if err != nil || len(ents) != 1 || ents[0].Name != "file name" || ents[0].Size != int64(len("second version")) {
		t.Fatalf("list: %+v %v", ents, err)
	}
	// Errors: file in the way of a directory, directory in the way of a file.
	if err := e.MkdirExt4(ctx, img, f+"/sub", 0, 0, 0o755); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("mkdir under a file: %v", err)
	}
	if err := e.WriteExt4FileOwned(ctx, img, weird, []byte("x"), 0, 0, 0o644); err == nil {
		t.Error("write over a directory succeeded")
	}
	if _, err := e.ReadExt4File(ctx, img, "/missing"); err == nil || !strings.Contains(err.Error(), "not exist") {
		t.Errorf("read missing: %v", err)
	}
	if _, err := e.ReadExt4File(ctx, img, weird); err == nil {
		t.Error("read of a directory succeeded")
	}
	mustFsck(t, e, img)
}

func TestWriteIntoFullImage(t *testing.T) {
	e := testExt4(t)
	ctx := context.Background()
	img := imagePath(t, "tiny.ext4")
	if err := e.CreateExt4(ctx, img, 2<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := e.WriteExt4FileOwned(ctx, img, "/big", bytes.Repeat([]byte{1}, 4<<20), 0, 0, 0o644)
	if err == nil || !strings.Contains(err.Error(), "full") {
		t.Fatalf("want a filesystem-full error, got %v", err)
	}
}

func TestGrowAndRdump(t *testing.T) {
	e := testExt4(t)
	ctx := context.Background()
	img := imagePath(t, "g.ext4")
	if err := e.CreateExt4(ctx, img, 32<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteExt4FileOwned(ctx, img, "/d/sub/f", []byte("data"), 0, 0, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := e.GrowExt4(ctx, img, 256<<20); err != nil {
		t.Fatal(err)
	}
	mustFsck(t, e, img)
	if st, _ := os.Stat(img); st.Size() != 256<<20 {
		t.Fatalf("size %d", st.Size())
	}
	if err := e.GrowExt4(ctx, img, 1<<20); err == nil {
		t.Fatal("shrink accepted")
	}
	out := filepath.Join(t.TempDir(), "out")
	if _, err := e.RdumpExt4Dir(ctx, img, "/d", out); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "sub", "f"))
	if err != nil || string(b) != "data" {
		t.Fatalf("rdump: %q %v", b, err)
	}
	if fi, _ := os.Stat(filepath.Join(out, "sub", "f")); fi.Mode().Perm() != 0o640 {
		t.Errorf("rdump mode %v", fi.Mode())
	}
}

func TestBuildExt4FromDir(t *testing.T) {
	e := testExt4(t)
	src := t.TempDir()
	if err := os.MkdirAll(filepath.Join(src, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "a", "b", "f"), []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("b/f", filepath.Join(src, "a", "l")); err != nil {
		t.Fatal(err)
	}
	img := imagePath(t, "d.ext4")
	if err := e.BuildExt4FromDir(context.Background(), img, src, 0); err != nil {
		t.Fatal(err)
	}
	mustFsck(t, e, img)
	uid, gid := uint32(os.Getuid()), uint32(os.Getgid())
	wantMeta(t, e, img, "/a/b/f", uid, gid, 0o600)
	if st := mustStat(t, e, img, "/a/l"); st.LinkTarget != "b/f" {
		t.Errorf("link target %q", st.LinkTarget)
	}
}

func TestTarToExt4KeepsEverything(t *testing.T) {
	e := testExt4(t)
	longTarget := "../" + strings.Repeat("long-target/", 10) + "x"
	ents := []tarEnt{
		dirEnt("./", 0o755, 0, 0),
		dirEnt("./usr/", 0o755, 0, 0),
		dirEnt("./usr/bin/", 0o755, 0, 0),
		fileEnt("./usr/bin/sudo", 0o4755, 0, 0, "#!/bin/sh\n"),
		fileEnt("./usr/bin/wall", 0o2755, 0, 5, "wall"),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "./usr/bin/ping", Mode: 0o755, PAXRecords: map[string]string{
			"SCHILY.xattr.security.capability": string(capV2),
			"SCHILY.xattr.user.note":           "hello",
		}}, data: []byte("ping")},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "./usr/bin/sudoedit", Linkname: "./usr/bin/sudo"}},
		linkEnt("./bin", "usr/bin"),
		linkEnt("./usr/bin/long", longTarget),
		dirEnt("./tmp/", 0o1777, 0, 0),
		dirEnt("./home/dev/", 0o700, 1000, 1000),
		fileEnt("./home/dev/with space \"q\".txt", 0o000, 1000, 1000, "secret"),
		dirEnt("./ro/", 0o555, 0, 0),
		fileEnt("./ro/inside", 0o444, 0, 0, "ro"),
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "./dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "./dev/sda", Mode: 0o660, Gid: 6, Devmajor: 8, Devminor: 0}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "./run/initctl", Mode: 0o600}},
		fileEnt("./etc/dup", 0o644, 0, 0, "old"),
		fileEnt("./etc/dup", 0o600, 0, 0, "new"),
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "./empty-with-xattr", Mode: 0o644, PAXRecords: map[string]string{"SCHILY.xattr.user.empty": ""}}},
	}
	img := imagePath(t, "root.ext4")
	stats, err := e.BuildExt4FromTar(context.Background(), img, bytes.NewReader(buildTar(t, ents)), 0)
	if err != nil {
		t.Fatal(err)
	}
	mustFsck(t, e, img)
	if stats.Specials != 3 || stats.Hardlinks != 1 || stats.Symlinks != 2 {
		t.Errorf("stats %+v", stats)
	}
	wantMeta(t, e, img, "/", 0, 0, fs.ModeDir|0o755)
	wantMeta(t, e, img, "/usr/bin/sudo", 0, 0, fs.ModeSetuid|0o755)
	wantMeta(t, e, img, "/usr/bin/wall", 0, 5, fs.ModeSetgid|0o755)
	ping := wantMeta(t, e, img, "/usr/bin/ping", 0, 0, 0o755)
	if !bytes.Equal(ping.Xattrs["security.capability"], capV2) || string(ping.Xattrs["user.note"]) != "hello" {
		t.Errorf("ping xattrs %v", ping.Xattrs)
	}
	sudo := mustStat(t, e, img, "/usr/bin/sudo")
	edit := mustStat(t, e, img, "/usr/bin/sudoedit")
	if sudo.Inode != edit.Inode || sudo.Links != 2 {
		t.Errorf("hard link: sudo ino %d links %d, sudoedit ino %d", sudo.Inode, sudo.Links, edit.Inode)
	}
	if st := wantMeta(t, e, img, "/bin", 0, 0, fs.ModeSymlink|0o777); st.LinkTarget != "usr/bin" {
		t.Errorf("/bin -> %q", st.LinkTarget)
	}
	if st := mustStat(t, e, img, "/usr/bin/long"); st.LinkTarget != longTarget {
		t.Errorf("long link -> %q", st.LinkTarget)
	}
	wantMeta(t, e, img, "/tmp", 0, 0, fs.ModeDir|fs.ModeSticky|0o777)
	wantMeta(t, e, img, "/home/dev", 1000, 1000, fs.ModeDir|0o700)
	wantMeta(t, e, img, `/home/dev/with space "q".txt`, 1000, 1000, 0)
	wantMeta(t, e, img, "/ro", 0, 0, fs.ModeDir|0o555)
	wantMeta(t, e, img, "/ro/inside", 0, 0, 0o444)
	if st := wantMeta(t, e, img, "/dev/null", 0, 0, fs.ModeDevice|fs.ModeCharDevice|0o666); st.Major != 1 || st.Minor != 3 {
		t.Errorf("/dev/null %d:%d", st.Major, st.Minor)
	}
	if st := wantMeta(t, e, img, "/dev/sda", 0, 6, fs.ModeDevice|0o660); st.Major != 8 || st.Minor != 0 {
		t.Errorf("/dev/sda %d:%d", st.Major, st.Minor)
	}
	wantMeta(t, e, img, "/run/initctl", 0, 0, fs.ModeNamedPipe|0o600)
	wantMeta(t, e, img, "/dev", 0, 0, fs.ModeDir|0o755) // implicit parent
	wantMeta(t, e, img, "/etc/dup", 0, 0, 0o600)
	if b, err := e.ReadExt4File(context.Background(), img, "/etc/dup"); err != nil || string(b) != "new" {
		t.Errorf("dup: %q %v", b, err)
	}
	if b, err := e.ReadExt4File(context.Background(), img, `/home/dev/with space "q".txt`); err != nil || string(b) != "secret" {
		t.Errorf("secret: %q %v", b, err)
	}
	noLeftovers(t, filepath.Dir(img), "root.ext4")
}

func TestTarRejectsEscapesAndCleansUp(t *testing.T) {
	e := testExt4(t)
	cases := map[string][]tarEnt{
		"absolute":        {fileEnt("/etc/passwd", 0o644, 0, 0, "x")},
		"dotdot":          {fileEnt("a/../../etc/passwd", 0o644, 0, 0, "x")},
		"through symlink": {linkEnt("evil", "/etc"), fileEnt("evil/passwd", 0o644, 0, 0, "x")},
		"hardlink escape": {{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "../../etc/passwd"}}},
		"newline":         {fileEnt("a\nb", 0o644, 0, 0, "x")},
	}
	for name, ents := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "x.ext4")
			_, err := e.BuildExt4FromTar(context.Background(), img, bytes.NewReader(buildTar(t, ents)), 0)
			if err == nil || !(strings.Contains(err.Error(), "refused") || strings.Contains(err.Error(), "escape")) {
				t.Fatalf("want a refusal, got %v", err)
			}
			noLeftovers(t, dir)
		})
	}
	t.Run("not a tar", func(t *testing.T) {
		dir := t.TempDir()
		_, err := e.BuildExt4FromTar(context.Background(), filepath.Join(dir, "x.ext4"), strings.NewReader(strings.Repeat("garbage!", 200)), 0)
		if err == nil || !strings.Contains(err.Error(), "tar") {
			t.Fatalf("got %v", err)
		}
		noLeftovers(t, dir)
	})
	t.Run("image too small", func(t *testing.T) {
		dir := t.TempDir()
		ents := []tarEnt{fileEnt("big", 0o644, 0, 0, strings.Repeat("x", 8<<20))}
		_, err := e.BuildExt4FromTar(context.Background(), filepath.Join(dir, "x.ext4"), bytes.NewReader(buildTar(t, ents)), 4<<20)
		if err == nil || !strings.Contains(err.Error(), "too small") {
			t.Fatalf("want a too-small error, got %v", err)
		}
		noLeftovers(t, dir)
	})
}

func TestWriteExt4FilesBatch(t *testing.T) {
	e := testExt4(t)
	ctx := context.Background()
	img := imagePath(t, "batch.ext4")
	if err := e.CreateExt4(ctx, img, 64<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteExt4FileOwned(ctx, img, "/keep/old", []byte("old"), 7, 7, 0o644); err != nil {
		t.Fatal(err)
	}
	// One call: an explicit private dir, files under parents that do not exist yet, a
	// replaced file, and a directory entry that exists already (left alone).
	err := e.WriteExt4Files(ctx, img, []Ext4Entry{
		{Path: "/upper/etc/ssh", Dir: true, Mode: 0o755},
		{Path: "/upper/etc/ssh/key", Data: []byte("secret"), Mode: 0o600},
		{Path: "/upper/etc/ssh/key.pub", Data: []byte("public"), Mode: 0o644},
		{Path: "/.ssh", Dir: true, Mode: 0o700},
		{Path: "/.ssh/authorized_keys", Data: []byte("ssh-ed25519 AAAA x\n"), Mode: 0o600},
		{Path: "/keep", Dir: true, UID: 1, GID: 1, Mode: 0o700},
		{Path: "/keep/old", Data: []byte("new"), UID: 0, GID: 0, Mode: 0o640},
	})
	if err != nil {
		t.Fatal(err)
	}
	mustFsck(t, e, img)
	wantMeta(t, e, img, "/upper", 0, 0, fs.ModeDir|0o755)
	wantMeta(t, e, img, "/upper/etc/ssh", 0, 0, fs.ModeDir|0o755)
	wantMeta(t, e, img, "/upper/etc/ssh/key", 0, 0, 0o600)
	wantMeta(t, e, img, "/.ssh", 0, 0, fs.ModeDir|0o700)
	wantMeta(t, e, img, "/.ssh/authorized_keys", 0, 0, 0o600)
	wantMeta(t, e, img, "/keep", 0, 0, fs.ModeDir|0o755)
	wantMeta(t, e, img, "/keep/old", 0, 0, 0o640)
	for p, want := range map[string]string{"/upper/etc/ssh/key": "secret", "/upper/etc/ssh/key.pub": "public", "/keep/old": "new"} {
		if got, err := e.ReadExt4File(ctx, img, p); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", p, got, err, want)
		}
	}
	// A file in the way of a directory fails before anything is written.
	if err := e.WriteExt4Files(ctx, img, []Ext4Entry{{Path: "/keep/old/x", Data: []byte("x"), Mode: 0o644}}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("write under a file: %v", err)
	}
	mustFsck(t, e, img)
}

func TestAddExt4Files(t *testing.T) {
	e := testExt4(t)
	ctx := context.Background()
	img := filepath.Join(t.TempDir(), "img.ext4")
	if err := e.CreateExt4(ctx, img, 64<<20, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteExt4Files(ctx, img, []Ext4Entry{{Path: "/etc/ssh", Dir: true, Mode: 0o755}}); err != nil {
		t.Fatal(err)
	}
	key := []Ext4Entry{{Path: "/etc/ssh/key", Data: []byte("secret\n"), Mode: 0o600, UID: 7, GID: 8}}
	if err := e.AddExt4Files(ctx, img, key); err != nil {
		t.Fatal(err)
	}
	mustFsck(t, e, img)
	st, err := e.StatExt4(ctx, img, "/etc/ssh/key")
	if err != nil || st.Mode.Perm() != 0o600 || st.UID != 7 || st.GID != 8 {
		t.Fatalf("added file: %+v, %v", st, err)
	}
	if got, err := e.ReadExt4File(ctx, img, "/etc/ssh/key"); err != nil || string(got) != "secret\n" {
		t.Fatalf("added file reads %q, %v", got, err)
	}
	// It never looks first, so what it assumes must hold: a taken name or a missing parent
	// fails instead of doing something else.
	if err := e.AddExt4Files(ctx, img, key); err == nil {
		t.Error("adding over an existing name succeeded")
	}
	if err := e.AddExt4Files(ctx, img, []Ext4Entry{{Path: "/nope/key", Data: []byte("x")}}); err == nil {
		t.Error("adding into a missing directory succeeded")
	}
	if err := e.AddExt4Files(ctx, img, []Ext4Entry{{Path: "/etc/dir", Dir: true}}); err == nil {
		t.Error("adding a directory succeeded")
	}
	mustFsck(t, e, img)
}
