package ext4

import (
	"archive/tar"
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testExt4(t testing.TB) *Toolkit {
	t.Helper()
	e := New()
	if err := e.Check(); err != nil {
		t.Skipf("e2fsprogs tools missing (%v): install e2fsprogs", err)
	}
	return e
}

func mustFsck(t testing.TB, e *Toolkit, image string) {
	t.Helper()
	if err := e.FsckExt4(context.Background(), image); err != nil {
		t.Fatalf("image %s is not clean: %v", image, err)
	}
}

func mustStat(t testing.TB, e *Toolkit, image, p string) *Ext4Stat {
	t.Helper()
	st, err := e.StatExt4(context.Background(), image, p)
	if err != nil {
		t.Fatalf("stat %s: %v", p, err)
	}
	return st
}

// wantMeta checks owner and mode (type + permission bits) of p.
func wantMeta(t testing.TB, e *Toolkit, image, p string, uid, gid uint32, mode fs.FileMode) *Ext4Stat {
	t.Helper()
	st := mustStat(t, e, image, p)
	if st.UID != uid || st.GID != gid || st.Mode != mode {
		t.Errorf("%s: got %d:%d %v, want %d:%d %v", p, st.UID, st.GID, st.Mode, uid, gid, mode)
	}
	return st
}

// noLeftovers fails if dir holds anything but the named entries.
func noLeftovers(t testing.TB, dir string, keep ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range ents {
		ok := false
		for _, k := range keep {
			if ent.Name() == k {
				ok = true
			}
		}
		if !ok {
			t.Errorf("leftover %s in %s", ent.Name(), dir)
		}
	}
}

type tarEnt struct {
	hdr  tar.Header
	data []byte
}

func buildTar(t testing.TB, ents []tarEnt) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, ent := range ents {
		h := ent.hdr
		if h.ModTime.IsZero() {
			h.ModTime = time.Unix(1700000000, 0)
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(ent.data))
		}
		if h.Format == tar.FormatUnknown && len(h.PAXRecords) > 0 {
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if len(ent.data) > 0 {
			if _, err := tw.Write(ent.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func dirEnt(name string, mode int64, uid, gid int) tarEnt {
	return tarEnt{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: gid}}
}

func fileEnt(name string, mode int64, uid, gid int, data string) tarEnt {
	return tarEnt{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: gid}, data: []byte(data)}
}

func linkEnt(name, target string) tarEnt {
	return tarEnt{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

// capV2 is a security.capability value granting cap_net_bind_service.
var capV2 = []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

func imagePath(t testing.TB, name string) string {
	return filepath.Join(t.TempDir(), name)
}

func contains(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
