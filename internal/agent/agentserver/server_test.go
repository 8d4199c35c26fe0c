package agentserver

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newTestServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger()
	}
	s := New(cfg)
	t.Cleanup(func() { s.Close() })
	return s
}

func do(t *testing.T, s *Server, method, target string, body io.Reader, hdr map[string]string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, body)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	return rec
}

// wantError checks a typed error answer.
func wantError(t *testing.T, rec *httptest.ResponseRecorder, status int, code string) {
	t.Helper()
	var eb agent.ErrorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil {
		t.Fatalf("status %d, body %q is not a typed error: %v", rec.Code, rec.Body, err)
	}
	if rec.Code != status || eb.Error.Code != code || eb.Error.Message == "" {
		t.Fatalf("got %d %+v, want %d %s", rec.Code, eb.Error, status, code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("content type %q", ct)
	}
}

func TestHealth(t *testing.T) {
	dir := t.TempDir()
	stages := filepath.Join(dir, "boot-stages.json")
	os.WriteFile(stages, []byte(`[{"name":"modules","duration_ms":12.5},{"name":"mount","duration_ms":3}]`+"\n"), 0o644)
	s := newTestServer(t, Config{Version: "v9.9.9", BootStagesPath: stages})
	rec := do(t, s, "GET", agent.PathHealth, nil, nil)
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var h agent.Health
	if err := json.Unmarshal(rec.Body.Bytes(), &h); err != nil {
		t.Fatal(err)
	}
	var bs []agent.BootStage
	if err := json.Unmarshal(h.BootStages, &bs); err != nil || len(bs) != 2 || bs[0].Name != "modules" || bs[0].DurationMS != 12.5 {
		t.Fatalf("boot stages %s: %v", h.BootStages, err)
	}
	hn, _ := os.Hostname()
	if h.Status != "ok" || h.AgentVersion != "v9.9.9" || h.Kernel.Release == "" || h.Hostname != hn || h.PID1 == "" || h.UptimeSeconds <= 0 {
		t.Fatalf("health %+v", h)
	}
	lo := false
	for _, i := range h.Interfaces {
		if i.Name == "lo" {
			lo = slicesContains(i.Addrs, "127.0.0.1/8")
		}
	}
	if !lo {
		t.Fatalf("no lo 127.0.0.1/8 in %+v", h.Interfaces)
	}

	// Missing stages file: no field, no warning. Invalid: a warning.
	os.Remove(stages)
	if h := s.Health(); h.BootStages != nil || len(h.Warnings) != 0 {
		t.Fatalf("without stages: %+v", h)
	}
	os.WriteFile(stages, []byte("{not json"), 0o644)
	if h := s.Health(); h.BootStages != nil || len(h.Warnings) != 1 {
		t.Fatalf("invalid stages: %+v", h)
	}
}

func slicesContains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func TestRoutingErrors(t *testing.T) {
	s := newTestServer(t, Config{})
	wantError(t, do(t, s, "GET", "/v1/nope", nil, nil), 404, agent.CodeNotFound)
	wantError(t, do(t, s, "GET", "/healthz", nil, nil), 404, agent.CodeNotFound)
	wantError(t, do(t, s, "POST", agent.PathHealth, nil, nil), 405, agent.CodeMethodNotAllowed)
	wantError(t, do(t, s, "GET", agent.PathExec, nil, nil), 405, agent.CodeMethodNotAllowed)
	wantError(t, do(t, s, "DELETE", agent.PathFiles+"?path=/x", nil, nil), 405, agent.CodeMethodNotAllowed)
	wantError(t, do(t, s, "GET", agent.PathPower, nil, nil), 405, agent.CodeMethodNotAllowed)
}

func TestExecRequestErrors(t *testing.T) {
	s := newTestServer(t, Config{})
	up := map[string]string{"Connection": "Upgrade", "Upgrade": agent.ExecUpgradeProtocol}
	// No upgrade headers.
	wantError(t, do(t, s, "POST", agent.PathExec, strings.NewReader(`{"argv":["true"]}`), nil), 426, agent.CodeUpgradeRequired)
	for name, body := range map[string]string{
		"empty body":    ``,
		"not json":      `{argv`,
		"unknown field": `{"argv":["true"],"bogus":1}`,
		"trailing":      `{"argv":["true"]}{}`,
		"empty argv":    `{"argv":[]}`,
		"empty cmd":     `{"argv":[""]}`,
		"bad env":       `{"argv":["true"],"env":["NOEQUALS"]}`,
		"relative cwd":  `{"argv":["true"],"cwd":"tmp"}`,
		"missing cwd":   `{"argv":["true"],"cwd":"/no/such/dir"}`,
		"file cwd":      `{"argv":["true"],"cwd":"/etc/hostname"}`,
		"nul":           `{"argv":["tr\u0000ue"]}`,
		"big rows":      `{"argv":["true"],"rows":70000}`,
	} {
		t.Run(name, func(t *testing.T) {
			wantError(t, do(t, s, "POST", agent.PathExec, strings.NewReader(body), up), 400, agent.CodeBadRequest)
		})
	}
}

func TestLookCommand(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "runme"), []byte("#!/bin/sh\n"), 0o755)
	os.WriteFile(filepath.Join(bin, "noexec"), []byte("#!/bin/sh\n"), 0o644)
	os.Mkdir(filepath.Join(bin, "adir"), 0o755)
	path := bin + ":/usr/bin:/bin"
	cases := []struct {
		name string
		code int
		msg  string
	}{
		{"runme", 0, ""},
		{"sh", 0, ""},
		{"noexec", 126, "banger-agent: noexec: Permission denied"},
		{"adir", 127, "banger-agent: adir: command not found"},
		{"no-such-command", 127, "banger-agent: no-such-command: command not found"},
		{"/no/such/file", 127, "banger-agent: /no/such/file: No such file or directory"},
		{bin, 126, "banger-agent: " + bin + ": Is a directory"},
		{"./bin/runme", 0, ""},
		{"bin/noexec", 126, "banger-agent: bin/noexec: Permission denied"},
	}
	for _, c := range cases {
		p, code, msg := lookCommand(c.name, dir, path)
		if code != c.code || msg != c.msg || (code == 0) != (p != "") {
			t.Errorf("lookCommand(%q) = %q, %d, %q; want %d, %q", c.name, p, code, msg, c.code, c.msg)
		}
	}
	if p, _, _ := lookCommand("runme", dir, path); p != filepath.Join(bin, "runme") {
		t.Errorf("runme resolved to %q", p)
	}
}

func TestMergeEnv(t *testing.T) {
	got := mergeEnv([]string{"PATH=/bin", "HOME=/root"}, []string{"HOME=/home/x", "FOO=a=b", "PATH=/x"})
	want := []string{"PATH=/x", "HOME=/home/x", "FOO=a=b"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("got %q want %q", got, want)
	}
}

func TestFindSerialPort(t *testing.T) {
	dir := t.TempDir()
	dev, sys := filepath.Join(dir, "dev"), filepath.Join(dir, "sys")
	for _, d := range []string{dev, filepath.Join(sys, "vport1p1"), filepath.Join(sys, "vport1p2")} {
		os.MkdirAll(d, 0o755)
	}
	os.WriteFile(filepath.Join(sys, "vport1p1", "name"), []byte("org.qemu.guest_agent.0\n"), 0o644)
	os.WriteFile(filepath.Join(sys, "vport1p2", "name"), []byte("banger.agent\n"), 0o644)

	// Named in sysfs, but no device node yet.
	if _, err := findSerialPort(dev, sys, "banger.agent"); err == nil || !strings.Contains(err.Error(), "vport1p2 is missing") {
		t.Fatalf("missing node: %v", err)
	}
	os.WriteFile(filepath.Join(dev, "vport1p2"), nil, 0o600)
	if p, err := findSerialPort(dev, sys, "banger.agent"); err != nil || p != filepath.Join(dev, "vport1p2") {
		t.Fatalf("sysfs scan: %q %v", p, err)
	}
	// udev's symlink wins.
	os.MkdirAll(filepath.Join(dev, "virtio-ports"), 0o755)
	os.Symlink("../vport1p2", filepath.Join(dev, "virtio-ports", "banger.agent"))
	if p, err := findSerialPort(dev, sys, "banger.agent"); err != nil || p != filepath.Join(dev, "virtio-ports", "banger.agent") {
		t.Fatalf("udev link: %q %v", p, err)
	}
	if _, err := findSerialPort(dev, sys, "other"); err == nil || !strings.Contains(err.Error(), "virtio_console") {
		t.Fatalf("absent port: %v", err)
	}
}

func TestPower(t *testing.T) {
	proc := t.TempDir()
	os.MkdirAll(filepath.Join(proc, "1"), 0o755)
	var mu sync.Mutex
	var calls []string
	done := make(chan struct{}, 4)
	s := newTestServer(t, Config{ProcDir: proc, PowerDelay: time.Millisecond, PowerHook: func(action, method string) {
		mu.Lock()
		calls = append(calls, action+" via "+method)
		mu.Unlock()
		done <- struct{}{}
	}})
	post := func(body string) *httptest.ResponseRecorder {
		return do(t, s, "POST", agent.PathPower, strings.NewReader(body), nil)
	}
	cases := []struct{ comm, exe, action, method string }{
		{"systemd", "/usr/lib/systemd/systemd", "poweroff", "signal 38 to pid1 (systemd)"},
		{"systemd", "", "reboot", "signal 39 to pid1 (systemd)"},
		{"init", "/init-renamed/banger-init", "poweroff", "signal 38 to pid1 (banger-init)"},
		{"sh", "/bin/sh", "reboot", "reboot(2)"},
		{"runit", "/sbin/runit", "poweroff", "runit stage 3 (stopit + SIGCONT to pid1)"},
	}
	for _, c := range cases {
		os.WriteFile(filepath.Join(proc, "1", "comm"), []byte(c.comm+"\n"), 0o644)
		os.Remove(filepath.Join(proc, "1", "exe"))
		if c.exe != "" {
			os.Symlink(c.exe, filepath.Join(proc, "1", "exe"))
		}
		rec := post(`{"action":"` + c.action + `"}`)
		var pr agent.PowerResponse
		if rec.Code != 202 || json.Unmarshal(rec.Body.Bytes(), &pr) != nil || pr.Action != c.action || pr.Method != c.method {
			t.Fatalf("%+v: %d %s", c, rec.Code, rec.Body)
		}
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("power hook not called")
		}
	}
	mu.Lock()
	if len(calls) != 5 || calls[0] != "poweroff via signal 38 to pid1 (systemd)" {
		t.Fatalf("calls %q", calls)
	}
	mu.Unlock()
	if syscall.Signal(38) != sigPoweroff || sigReboot != 39 {
		t.Fatal("systemd signals")
	}
	wantError(t, post(`{"action":"halt"}`), 400, agent.CodeBadRequest)
	wantError(t, post(`{"action":`), 400, agent.CodeBadRequest)
	wantError(t, post(``), 400, agent.CodeBadRequest)
}

// runit shuts down when stopit is executable by its owner; reboot's bit picks restart.
// Debian's runit reads /run/runit.*, Void's /run/runit/*; absent directories are skipped.
func TestRunitShutdownFlags(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "run"), 0o755)
	os.MkdirAll(filepath.Join(root, "etc/runit"), 0o755)
	s := newTestServer(t, Config{RunitRoot: root})
	mode := func(p string) os.FileMode {
		st, err := os.Stat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		return st.Mode().Perm()
	}
	if err := s.runitShutdown(agent.PowerReboot); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"run/runit.stopit", "run/runit.reboot", "etc/runit/stopit", "etc/runit/reboot"} {
		if mode(p) != 0o100 {
			t.Errorf("reboot: %s mode %o", p, mode(p))
		}
	}
	if _, err := os.Stat(filepath.Join(root, "run/runit")); err == nil {
		t.Error("created Void's flag directory on a system without it")
	}
	if err := s.runitShutdown(agent.PowerOff); err != nil {
		t.Fatal(err)
	}
	if mode("run/runit.stopit") != 0o100 || mode("run/runit.reboot") != 0 {
		t.Fatalf("poweroff: stopit %o reboot %o", mode("run/runit.stopit"), mode("run/runit.reboot"))
	}
	empty := newTestServer(t, Config{RunitRoot: t.TempDir()})
	if err := empty.runitShutdown(agent.PowerOff); err == nil {
		t.Fatal("no flag directory at all, yet no error")
	}
}

func TestFilesHandlers(t *testing.T) {
	s := newTestServer(t, Config{})
	dir := t.TempDir()
	p := filepath.Join(dir, "a", "b", "c.txt")
	rec := do(t, s, "PUT", agent.PathFiles+"?path="+p+"&mode=0640&uid=1234&gid=5678", strings.NewReader("content\x00\xff"), nil)
	var fi agent.FileInfo
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &fi) != nil {
		t.Fatalf("put: %d %s", rec.Code, rec.Body)
	}
	if fi != (agent.FileInfo{Path: p, Size: 9, Mode: 0o640, UID: 1234, GID: 5678}) {
		t.Fatalf("info %+v", fi)
	}
	st, err := os.Stat(p)
	if err != nil || st.Mode().Perm() != 0o640 || st.Sys().(*syscall.Stat_t).Uid != 1234 || st.Sys().(*syscall.Stat_t).Gid != 5678 {
		t.Fatalf("stat %v %v", st.Mode(), err)
	}
	if b, _ := os.ReadFile(p); string(b) != "content\x00\xff" {
		t.Fatalf("content %q", b)
	}
	rec = do(t, s, "GET", agent.PathFiles+"?path="+p, nil, nil)
	if rec.Code != 200 || rec.Body.String() != "content\x00\xff" || rec.Header().Get(agent.HeaderFileMode) != "0640" ||
		rec.Header().Get(agent.HeaderFileUID) != "1234" || rec.Header().Get("Content-Length") != "9" {
		t.Fatalf("get: %d %q %v", rec.Code, rec.Body, rec.Header())
	}
	// Replace: no temporary file left behind; default mode 0644, owner unchanged (root).
	rec = do(t, s, "PUT", agent.PathFiles+"?path="+p, bytes.NewReader(nil), nil)
	if rec.Code != 200 {
		t.Fatalf("replace: %d %s", rec.Code, rec.Body)
	}
	if ents, _ := os.ReadDir(filepath.Dir(p)); len(ents) != 1 {
		t.Fatalf("leftovers: %v", ents)
	}
	if st, _ := os.Stat(p); st.Size() != 0 || st.Mode().Perm() != 0o644 {
		t.Fatalf("after replace: %v %d", st.Mode(), st.Size())
	}
	// /proc files have size 0 but content.
	rec = do(t, s, "GET", agent.PathFiles+"?path=/proc/self/status", nil, nil)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "Name:") {
		t.Fatalf("proc file: %d %q", rec.Code, rec.Body)
	}

	wantError(t, do(t, s, "GET", agent.PathFiles+"?path="+filepath.Join(dir, "missing"), nil, nil), 404, agent.CodeNotFound)
	wantError(t, do(t, s, "GET", agent.PathFiles+"?path="+dir, nil, nil), 409, agent.CodeIsDirectory)
	wantError(t, do(t, s, "PUT", agent.PathFiles+"?path="+dir, strings.NewReader("x"), nil), 409, agent.CodeIsDirectory)
	for _, q := range []string{"", "?path=", "?path=relative/x", "?path=/", "?path=/x&mode=999", "?path=/x&mode=rw", "?path=/x&mode=017777", "?path=/x&uid=-5", "?path=/x&gid=abc"} {
		wantError(t, do(t, s, "PUT", agent.PathFiles+q, strings.NewReader("x"), nil), 400, agent.CodeBadRequest)
	}
	wantError(t, do(t, s, "GET", agent.PathFiles+"?path=rel", nil, nil), 400, agent.CodeBadRequest)
	// A parent that is a file.
	wantError(t, do(t, s, "PUT", agent.PathFiles+"?path="+p+"/sub", strings.NewReader("x"), nil), 400, agent.CodeBadRequest)
}
