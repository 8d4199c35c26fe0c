package image

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/internal/store"
)

// capability is a real security.capability value (cap_net_raw+ep, VFS_CAP_REVISION_2).
var capability = string([]byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})

func multiLayer(t testing.TB) [][]byte {
	base := []ent{
		dir("./", 0o755), dir("etc/", 0o755), dir("bin/", 0o755), dir("usr/", 0o755), dir("usr/bin/", 0o755),
		dir("dev/", 0o755), dir("opt/", 0o755), dir("opt/old/", 0o750), dir("root/", 0o700),
		dir("var/", 0o755), dir("var/cache/", 0o755), dir("var/cache/junk/", 0o755), dir("srv/", 0o755), dir("srv/data/", 0o755),
		file("etc/passwd", "root:x:0:0:old\n", 0o644),
		file("etc/removed", "bye\n", 0o644),
		file("opt/old/a", "a\n", 0o644), file("opt/old/b", "b\n", 0o644),
		file("var/cache/junk/x", "x\n", 0o644),
		file("srv/data/inner", "inner\n", 0o644),
		file("bin/busybox", strings.Repeat("B", 5000), 0o755),
		symlink("bin/sh", "busybox"),
		hardlink("bin/ls", "bin/busybox"),
		{name: "usr/bin/sudo", body: "sudo", typ: '0', mode: 0o4755, uid: 0, gid: 0},
		{name: "usr/bin/ping", body: "ping", typ: '0', mode: 0o755, pax: map[string]string{"SCHILY.xattr.security.capability": capability}},
		{name: "dev/null", typ: '3', mode: 0o666, major: 1, minor: 3},
		{name: "dev/sda", typ: '4', mode: 0o660, gid: 6, major: 8, minor: 0},
		file("root/.bashrc", "PS1=banger\n", 0o644),
		{name: "home/user/own", body: "mine", typ: '0', mode: 0o600, uid: 1000, gid: 1000},
	}
	upper := []ent{
		file("etc/.wh.removed", "", 0o644),
		file("opt/old/.wh..wh..opq", "", 0o644),
		file("opt/old/c", "c\n", 0o644),
		file("var/cache/.wh.junk", "", 0o644),
		file("etc/passwd", "root:x:0:0:new\n", 0o644),
		symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
	}
	top := []ent{
		file("usr/bin/x", "same inode", 0o755),
		hardlink("usr/bin/y", "usr/bin/x"),
		file("srv/data", "now a file\n", 0o644),
		dir("opt/", 0o711), // dir metadata replaced, children kept
	}
	return [][]byte{mkTar(t, base), mkTar(t, upper), mkTar(t, top)}
}

func TestOCIPullMultiLayer(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	host := serveRegistry(t, nil)
	ref, _ := pushImage(t, host, "test/multi:v1", multiLayer(t)...)
	var stages []string
	img, err := m.Pull(ctx, PullOptions{Ref: ref, NoKernel: true, Progress: func(p Progress) { stages = append(stages, p.Stage) }})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(img.Digest, "sha256:") || img.Source != "oci:"+ref || img.Name != ref {
		t.Errorf("image row: %+v", img)
	}
	if len(stages) == 0 {
		t.Error("no progress reported")
	}
	rootfs := img.RootfsPath
	if err := m.Ext4.FsckExt4(ctx, rootfs); err != nil {
		t.Fatal(err)
	}
	stat := func(p string) *fsStat {
		st, err := m.Ext4.StatExt4(ctx, rootfs, p)
		if err != nil {
			t.Fatalf("stat %s: %v", p, err)
		}
		return (*fsStat)(st)
	}
	gone := func(p string) {
		if _, err := m.Ext4.StatExt4(ctx, rootfs, p); !errors.Is(err, fs.ErrNotExist) && (err == nil || !strings.Contains(err.Error(), "not a directory")) {
			t.Errorf("%s should be gone (whiteout/opaque), got %v", p, err)
		}
	}
	gone("/etc/removed")
	gone("/opt/old/a")
	gone("/opt/old/b")
	gone("/var/cache/junk")
	gone("/srv/data/inner")
	if st := stat("/opt/old/c"); !st.Mode.IsRegular() {
		t.Errorf("opt/old/c: %v", st.Mode)
	}
	if st := stat("/opt/old"); st.Mode.Perm() != 0o750 || !st.Mode.IsDir() {
		t.Errorf("opaque dir lost its metadata: %v", st.Mode)
	}
	if st := stat("/opt"); st.Mode.Perm() != 0o711 {
		t.Errorf("upper dir metadata not applied: %v", st.Mode)
	}
	stat("/var/cache")
	if st := stat("/srv/data"); !st.Mode.IsRegular() {
		t.Errorf("srv/data should be a file now: %v", st.Mode)
	}
	if data, err := m.Ext4.ReadExt4File(ctx, rootfs, "/etc/passwd"); err != nil || string(data) != "root:x:0:0:new\n" {
		t.Errorf("etc/passwd = %q, %v", data, err)
	}
	if st := stat("/bin/sh"); st.Mode&fs.ModeSymlink == 0 || st.LinkTarget != "busybox" {
		t.Errorf("bin/sh: %v -> %q", st.Mode, st.LinkTarget)
	}
	if st := stat("/etc/localtime"); st.LinkTarget != "/usr/share/zoneinfo/UTC" {
		t.Errorf("etc/localtime -> %q", st.LinkTarget)
	}
	bb, ls := stat("/bin/busybox"), stat("/bin/ls")
	if bb.Inode != ls.Inode || bb.Links != 2 || bb.Size != 5000 {
		t.Errorf("hard link: busybox inode %d links %d, ls inode %d", bb.Inode, bb.Links, ls.Inode)
	}
	if x, y := stat("/usr/bin/x"), stat("/usr/bin/y"); x.Inode != y.Inode || x.Links != 2 {
		t.Errorf("same-layer hard link: %d vs %d links %d", x.Inode, y.Inode, x.Links)
	}
	if st := stat("/usr/bin/sudo"); st.Mode&fs.ModeSetuid == 0 || st.Mode.Perm() != 0o755 || st.UID != 0 {
		t.Errorf("setuid binary: %v uid %d", st.Mode, st.UID)
	}
	if st := stat("/dev/null"); st.Mode&fs.ModeCharDevice == 0 || st.Major != 1 || st.Minor != 3 {
		t.Errorf("dev/null: %v %d:%d", st.Mode, st.Major, st.Minor)
	}
	if st := stat("/dev/sda"); st.Mode&fs.ModeDevice == 0 || st.Mode&fs.ModeCharDevice != 0 || st.Major != 8 || st.GID != 6 {
		t.Errorf("dev/sda: %v %d:%d gid %d", st.Mode, st.Major, st.Minor, st.GID)
	}
	if st := stat("/usr/bin/ping"); !bytes.Equal(st.Xattrs["security.capability"], []byte(capability)) {
		t.Errorf("security.capability = %x", st.Xattrs["security.capability"])
	}
	if st := stat("/home/user/own"); st.UID != 1000 || st.GID != 1000 || st.Mode.Perm() != 0o600 {
		t.Errorf("owner: %d:%d %v", st.UID, st.GID, st.Mode)
	}
	// Work seed from /root, manifest sidecar (no package db here), files in place.
	if data, err := m.Ext4.ReadExt4File(ctx, img.WorkSeedPath, "/.bashrc"); err != nil || string(data) != "PS1=banger\n" {
		t.Errorf("work seed .bashrc = %q, %v", data, err)
	}
	man, err := Manifest(img)
	if err != nil || man.Format != "none" {
		t.Errorf("manifest: %+v %v", man, err)
	}
	// Staging and layer files are gone; only the image dir remains.
	ents, _ := os.ReadDir(m.ImagesDir)
	if len(ents) != 1 {
		t.Errorf("images dir holds %d entries, want 1", len(ents))
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(rootfs), "layers")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("layer tars left behind: %v", err)
	}

	// Pulling again replaces the image atomically: same ID, new files, old dir gone.
	img2, err := m.Pull(ctx, PullOptions{Ref: ref, NoKernel: true})
	if err != nil {
		t.Fatal(err)
	}
	if img2.ID != img.ID || img2.RootfsPath == img.RootfsPath {
		t.Errorf("re-pull: id %s->%s path %s->%s", img.ID, img2.ID, img.RootfsPath, img2.RootfsPath)
	}
	if _, err := os.Stat(filepath.Dir(img.RootfsPath)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("old image dir not removed: %v", err)
	}

	// rm is refused while a VM uses the image, naming the VM.
	if err := m.Store.PutVM(ctx, store.VM{ID: "vm1", Name: "devbox", ImageID: img2.ID, State: store.VMStopped}); err != nil {
		t.Fatal(err)
	}
	err = m.Remove(ctx, ref)
	if !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), "devbox") {
		t.Fatalf("rm of an image in use: %v", err)
	}
	if _, err := os.Stat(img2.RootfsPath); err != nil {
		t.Errorf("refused rm touched the files: %v", err)
	}
	if err := m.Store.DeleteVM(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(ctx, ref); err != nil {
		t.Fatal(err)
	}
	assertNothingRegistered(t, m)
}

type fsStat = struct {
	Inode      uint64
	Mode       fs.FileMode
	UID, GID   uint32
	Size       int64
	Links      int
	LinkTarget string
	Major      uint32
	Minor      uint32
	Xattrs     map[string][]byte
}

func TestOCIPullBadInput(t *testing.T) {
	ctx := context.Background()
	good := mkTar(t, []ent{dir("./", 0o755), file("etc/os-release", "ID=test\n", 0o644)})
	host := serveRegistry(t, nil)
	ref, img := pushImage(t, host, "test/good:v1", good)
	escRef, _ := pushImage(t, host, "test/escape:v1", mkTar(t, []ent{dir("./", 0o755), file("../../evil", "x", 0o644)}))

	// A registry that corrupts one layer blob in transit.
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	badHost := serveRegistry(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+ld.String()) {
				rec := &captureWriter{h: w.Header()}
				h.ServeHTTP(rec, r)
				body := rec.buf.Bytes()
				if len(body) > 40 {
					body[len(body)/2] ^= 0xff
				}
				w.WriteHeader(rec.code)
				_, _ = w.Write(body)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	corruptRef, _ := pushImage(t, badHost, "test/good:v1", good)

	cases := []struct {
		name, ref, want string
	}{
		{"unknown name", "no-such-image", "unknown image"},
		{"unreachable registry", closedPort(t) + "/test/good:v1", "cannot reach registry"},
		{"wrong digest", strings.Split(ref, ":v1")[0] + "@sha256:" + strings.Repeat("ab", 32), "not found"},
		{"corrupt layer", corruptRef, "corrupt"},
		{"path escape", escRef, "path escape"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := newTestManager(t)
			_, err := m.Pull(ctx, PullOptions{Ref: c.ref, NoKernel: true})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error containing %q", err, c.want)
			}
			t.Logf("error: %v", err)
			assertNothingRegistered(t, m)
		})
	}
	t.Run("rm unknown", func(t *testing.T) {
		m := newTestManager(t)
		if err := m.Remove(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("rm of unknown image: %v", err)
		}
	})
	t.Run("cancelled pull", func(t *testing.T) {
		m := newTestManager(t)
		cctx, cancel := context.WithCancel(ctx)
		_, err := m.Pull(cctx, PullOptions{Ref: ref, NoKernel: true, Progress: func(p Progress) {
			if strings.HasPrefix(p.Stage, "converting") || strings.HasPrefix(p.Stage, "flattening") {
				cancel()
			}
		}})
		cancel()
		if err == nil {
			t.Skip("pull finished before it could be cancelled")
		}
		assertNothingRegistered(t, m)
	})
}

type captureWriter struct {
	h    http.Header
	buf  bytes.Buffer
	code int
}

func (c *captureWriter) Header() http.Header { return c.h }
func (c *captureWriter) Write(p []byte) (int, error) {
	if c.code == 0 {
		c.code = 200
	}
	return c.buf.Write(p)
}
func (c *captureWriter) WriteHeader(code int) { c.code = code }

func TestCleanupRemovesStrays(t *testing.T) {
	m := newTestManager(t)
	ctx := context.Background()
	for _, d := range []string{filepath.Join(m.ImagesDir, stagingPrefix+"123"), filepath.Join(m.ImagesDir, "img-dead-2026"), filepath.Join(m.KernelsDir, stagingPrefix+"9")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		_ = os.WriteFile(filepath.Join(d, RootfsFile), []byte("partial"), 0o600)
	}
	removed, err := m.Cleanup(ctx)
	if err != nil || len(removed) != 3 {
		t.Fatalf("cleanup removed %v, %v", removed, err)
	}
	assertNothingRegistered(t, m)
}
