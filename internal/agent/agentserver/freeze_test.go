package agentserver

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
)

// TestWritableBlockMounts: only read-write freezable filesystems on block devices, each
// once, with escapes decoded; hostile lines (relative or unclean paths, bad escapes, huge
// lines) are skipped, never frozen.
func TestWritableBlockMounts(t *testing.T) {
	table := strings.Join([]string{
		"/dev/vda / ext4 ro,relatime 0 0",
		"overlay / overlay rw,lowerdir=/a,upperdir=/b 0 0",
		"/dev/vdb /mnt/layer ext4 rw,relatime 0 0",
		"/dev/vdc /root ext4 rw,relatime 0 0",
		"/dev/vdc /root ext4 rw,relatime 0 0",
		`/dev/vdd /mnt/with\040space xfs rw 0 0`,
		"proc /proc proc rw 0 0",
		"tmpfs /dev/shm tmpfs rw 0 0",
		"/dev/vde relative ext4 rw 0 0",
		"/dev/vdf /a/../etc ext4 rw 0 0",
		`/dev/vdg /bad\09 ext4 rw 0 0`,
		`/dev/vdh /trunc\04 ext4 rw 0 0`,
		"/dev/vdi /x vfat rw 0 0",
		"/dev/vdj /y ext4 rwx,ro 0 0",
		"/dev/vdk " + strings.Repeat("a", 70<<10) + " ext4 rw 0 0",
		"/dev/vdl /" + strings.Repeat("b", 70<<10) + " ext4 ro 0 0",
		"short line",
	}, "\n")
	got, err := writableBlockMounts(strings.NewReader(table + "\n/dev/vdm /last ext4 rw 0 0\n"))
	want := []string{"/mnt/layer", "/root", "/mnt/with space", "/last"}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("mounts %q %v, want %q", got, err, want)
	}
	// The table is read up to 1 MiB: what lies beyond is not seen.
	got, _ = writableBlockMounts(strings.NewReader(strings.Repeat("x\n", maxMountsBytes/2) + "/dev/vdb /root ext4 rw 0 0\n"))
	if len(got) != 0 {
		t.Fatalf("read past the bound: %q", got)
	}
	got, err = writableBlockMounts(strings.NewReader("/dev/vdb /root ext4 rw 0 0\n"))
	if err != nil || !slices.Equal(got, []string{"/root"}) {
		t.Fatalf("mounts %q %v", got, err)
	}
}

func freezeServer(t *testing.T, mounts string) *Server {
	t.Helper()
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(proc, "self", "mounts"), []byte(mounts), 0o644); err != nil {
		t.Fatal(err)
	}
	return New(Config{IdentityRoot: t.TempDir(), ProcDir: proc, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

// TestFreezeRequests: bad requests are refused before anything is frozen; a freeze of
// nothing freezable and a thaw of nothing answer empty lists.
func TestFreezeRequests(t *testing.T) {
	s := freezeServer(t, "proc /proc proc rw 0 0\n/dev/vda / ext4 ro 0 0\n")
	ctype := map[string]string{"Content-Type": "application/json"}
	for _, body := range []string{`{}`, `{"thaw_after_ms":5}`, `{"thaw_after_ms":999999999}`, `{"thaw_after_ms":-1}`, `{"thaw_after_ms":5000,"x":1}`, `nope`} {
		rec := do(t, s, "POST", agent.PathFreeze, strings.NewReader(body), ctype)
		wantError(t, rec, 400, agent.CodeBadRequest)
	}
	wantError(t, do(t, s, "GET", agent.PathFreeze, nil, nil), 405, agent.CodeMethodNotAllowed)
	wantError(t, do(t, s, "GET", agent.PathThaw, nil, nil), 405, agent.CodeMethodNotAllowed)
	var fr agent.FreezeResponse
	decode(t, do(t, s, "POST", agent.PathFreeze, strings.NewReader(`{"thaw_after_ms":5000}`), ctype), &fr)
	if len(fr.Frozen) != 0 || len(fr.Skipped) != 0 {
		t.Fatalf("freeze of nothing freezable: %+v", fr)
	}
	var tr agent.ThawResponse
	decode(t, do(t, s, "POST", agent.PathThaw, bytes.NewReader(nil), nil), &tr)
	if tr.Thawed == nil || len(tr.Thawed) != 0 {
		t.Fatalf("thaw of nothing: %+v", tr)
	}
}

// TestFreezeSkipsWhatCannotFreeze: the real ioctl on a filesystem without freeze (tmpfs)
// fails, and the mount is reported skipped, not frozen. Only a tmpfs is ever named here: a
// test must never freeze the host's own disks.
func TestFreezeSkipsWhatCannotFreeze(t *testing.T) {
	dir, err := os.MkdirTemp("/dev/shm", "banger-freeze-")
	if err != nil {
		t.Skipf("no /dev/shm to test on: %v", err)
	}
	defer os.RemoveAll(dir)
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Skipf("/dev/shm is not a tmpfs here (%v): the test would freeze a real filesystem", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("FIFREEZE needs CAP_SYS_ADMIN: not root")
	}
	s := freezeServer(t, "/dev/fake "+dir+" ext4 rw 0 0\n")
	var fr agent.FreezeResponse
	decode(t, do(t, s, "POST", agent.PathFreeze, strings.NewReader(`{"thaw_after_ms":5000}`), map[string]string{"Content-Type": "application/json"}), &fr)
	if len(fr.Frozen) != 0 || len(fr.Skipped) != 1 || !strings.HasPrefix(fr.Skipped[0], dir+": ") {
		t.Fatalf("freeze of a tmpfs: %+v", fr)
	}
}

// decode fails the test unless rec is a 200 whose body decodes into v.
func decode(t *testing.T, rec *httptest.ResponseRecorder, v any) {
	t.Helper()
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), v); err != nil {
		t.Fatalf("body %s: %v", rec.Body, err)
	}
}

// TestResizeFSRefuses: a path that is not a clean absolute mount point, a size below 1 MiB,
// a path no mount table line names, and a filesystem that is not ext4 on a disk are refused
// before any ioctl.
func TestResizeFSRefuses(t *testing.T) {
	s := freezeServer(t, "/dev/vdc /root ext4 rw 0 0\ntmpfs /tmp tmpfs rw 0 0\n/dev/vdd /x xfs rw 0 0\n")
	ctype := map[string]string{"Content-Type": "application/json"}
	for body, code := range map[string]string{
		`{"path":"root","size_bytes":1073741824}`:         agent.CodeBadRequest,
		`{"path":"/root/../etc","size_bytes":1073741824}`: agent.CodeBadRequest,
		`{"path":"/root","size_bytes":5}`:                 agent.CodeBadRequest,
		`{"path":"/nosuch","size_bytes":1073741824}`:      agent.CodeNotFound,
		`{"path":"/tmp","size_bytes":1073741824}`:         agent.CodeBadRequest,
		`{"path":"/x","size_bytes":1073741824}`:           agent.CodeBadRequest,
		`{"path":"/root","size_bytes":1,"rm":"-rf"}`:      agent.CodeBadRequest,
	} {
		rec := do(t, s, "POST", agent.PathResizeFS, strings.NewReader(body), ctype)
		status := map[string]int{agent.CodeBadRequest: 400, agent.CodeNotFound: 404}[code]
		wantError(t, rec, status, code)
	}
}
