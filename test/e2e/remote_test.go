//go:build integration

package e2e

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/internal/api"
)

// remoteSide is a real sshd on loopback in front of the test's daemon, and a local banger
// environment of its own (no daemon, autostart on) that reaches it with BANGER_HOST.
type remoteSide struct {
	e       *env
	port    int
	host    string // the BANGER_HOST value
	vars    []string
	local   string // the local side's directory
	sshArgs string // BANGER_HOST_SSH_ARGS
}

// writeKey writes a fresh ed25519 key pair: the private key at path (OpenSSH format) and
// returns the public key.
func writeKey(t *testing.T, path string) ssh.PublicKey {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

// startSSHD starts sshd on 127.0.0.1 with its own host key, config and authorized key,
// letting in the user the daemon runs as, with the daemon's XDG environment (SetEnv), so
// that `banger daemon proxy` there finds the test's daemon.
func startSSHD(t *testing.T, e *env) *remoteSide {
	const sshd = "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		t.Skipf("no %s: apt install openssh-server (scripts/lib.sh installs it)", sshd)
	}
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("no ssh client: apt install openssh-client")
	}
	if os.Geteuid() != 0 {
		t.Skip("sshd must run as root to log in as the daemon's user: run the e2e tests as root")
	}
	login := "root"
	if e.cred != nil {
		u, err := user.LookupId(strconv.Itoa(int(e.cred.Uid)))
		if err != nil {
			t.Fatal(err)
		}
		login = u.Username
	}
	dir := filepath.Join(e.dir, "sshd")
	local := filepath.Join(e.dir, "local")
	for _, d := range []string{dir, local, filepath.Join(local, "home"), filepath.Join(local, "run"), filepath.Join(local, "cfg")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// sshd reads authorized_keys as the user logging in.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// sshd's privilege separation directory, as the package's service makes it.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	hostPub := writeKey(t, filepath.Join(dir, "host_key"))
	clientPub := writeKey(t, filepath.Join(local, "id"))
	writeKey(t, filepath.Join(local, "stranger")) // a key sshd does not know
	if err := os.WriteFile(filepath.Join(dir, "authorized_keys"), ssh.MarshalAuthorizedKey(clientPub), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	if err := os.WriteFile(filepath.Join(local, "known_hosts"),
		[]byte(fmt.Sprintf("[127.0.0.1]:%d %s", port, ssh.MarshalAuthorizedKey(hostPub))), 0o644); err != nil {
		t.Fatal(err)
	}
	// The remote session gets the daemon's environment (the harness's XDG dirs).
	var setenv []string
	for _, v := range e.vars {
		if k, val, _ := strings.Cut(v, "="); val != "" && (strings.HasPrefix(k, "XDG_") || k == "HOME") {
			setenv = append(setenv, v)
		}
	}
	// UsePAM yes: without PAM, sshd refuses every login to an account whose password is
	// locked ("!"), which useradd's accounts (banger-ci) are; PAM's account check does not.
	cfg := fmt.Sprintf(`ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
StrictModes no
UsePAM yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers %s
PidFile none
SetEnv %s
`, filepath.Join(dir, "host_key"), filepath.Join(dir, "authorized_keys"), login, strings.Join(setenv, " "))
	cfgPath := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	var log bytes.Buffer
	cmd := exec.Command(sshd, "-D", "-e", "-f", cfgPath, "-p", strconv.Itoa(port))
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", tail(log.String(), 30))
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), time.Second)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd did not listen on 127.0.0.1:%d within 15s:\n%s", port, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if e.cred != nil { // the local CLI runs as that user too: its key must be its own
		if err := filepath.Walk(local, func(p string, _ os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, int(e.cred.Uid), int(e.cred.Gid))
		}); err != nil {
			t.Fatal(err)
		}
	}
	r := &remoteSide{e: e, port: port, local: local,
		host: fmt.Sprintf("ssh://%s@127.0.0.1:%d?%s", login, port, url.Values{"banger": {filepath.Join(e.bin, "banger")}}.Encode()),
		sshArgs: fmt.Sprintf("-F /dev/null -i %s -o IdentitiesOnly=yes -o UserKnownHostsFile=%s -o GlobalKnownHostsFile=/dev/null",
			filepath.Join(local, "id"), filepath.Join(local, "known_hosts"))}
	// The local side: directories of its own and no daemon; autostart stays on (the
	// default), so a local daemon started by mistake would show.
	r.vars = []string{"HOME=" + filepath.Join(local, "home"), "XDG_RUNTIME_DIR=" + filepath.Join(local, "run"),
		"XDG_CONFIG_HOME=" + filepath.Join(local, "cfg"), "XDG_DATA_HOME=" + filepath.Join(local, "data"),
		"XDG_STATE_HOME=" + filepath.Join(local, "state"), "XDG_CACHE_HOME=" + filepath.Join(local, "cache"), "BANGER_CONFIG="}
	return r
}

// command is banger on the local side with BANGER_HOST and the ssh options set (extra
// variables override them).
func (r *remoteSide) command(extra []string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(r.e.bin, "banger"), args...)
	cmd.Env = append(append(append(os.Environ(), r.vars...), "BANGER_HOST="+r.host, "BANGER_HOST_SSH_ARGS="+r.sshArgs), extra...)
	if r.e.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.e.cred}
	}
	return cmd
}

func (r *remoteSide) run(args ...string) result {
	r.e.t.Helper()
	return r.e.runCmd(r.command(nil, args...), args)
}

// must runs banger through the remote host and fails t unless it exits 0.
func (r *remoteSide) must(t *testing.T, args ...string) result {
	t.Helper()
	res := r.run(args...)
	if res.code != 0 {
		t.Fatalf("BANGER_HOST=%s banger %s: exit %d\nstdout: %s\nstderr: %s", r.host, strings.Join(args, " "), res.code, res.stdout, res.stderr)
	}
	return res
}

// bridges lists the processes of this test's transport still alive: local ssh clients to
// the test's port and remote `banger daemon proxy` bridges.
func (r *remoteSide) bridges() []string {
	var alive []string
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		data, _ := os.ReadFile(p)
		status, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "status"))
		if bytes.Contains(status, []byte("State:\tZ")) {
			continue
		}
		words := strings.Split(strings.TrimRight(string(data), "\x00"), "\x00")
		line := strings.Join(words, " ")
		isSSH := len(words) > 0 && filepath.Base(words[0]) == "ssh" && strings.Contains(line, "-p "+strconv.Itoa(r.port))
		isProxy := strings.Contains(line, filepath.Join(r.e.bin, "banger")+" daemon proxy") && !strings.Contains(line, "sshd")
		if isSSH || isProxy {
			alive = append(alive, line)
		}
	}
	return alive
}

func TestRemoteHost(t *testing.T) {
	e := setup(t)
	r := startSSHD(t, e)
	vmFlags := []string{"--image", "bb", "--memory", "512M"}

	t.Run("status and ls through ssh", func(t *testing.T) {
		var st api.StatusResponse
		if err := json.Unmarshal([]byte(r.must(t, "daemon", "status", "--json").stdout), &st); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(st.Socket, filepath.Join(e.dir, "run")) {
			t.Fatalf("BANGER_HOST reached the daemon on %s, not the test's (%s/run)", st.Socket, e.dir)
		}
		if r := r.must(t, "image", "ls"); !strings.Contains(r.stdout, "bb") {
			t.Fatalf("image ls through ssh: %q", r.stdout)
		}
	})

	t.Run("vm run: output and exit code exact", func(t *testing.T) {
		res := r.run(append(append([]string{"vm", "run", "-q"}, vmFlags...), "--", "sh", "-c", "echo out; echo err >&2; exit 7")...)
		if res.stdout != "out\n" || res.stderr != "err\n" || res.code != 7 {
			t.Fatalf("vm run through ssh: stdout %q stderr %q exit %d; want \"out\\n\" \"err\\n\" 7", res.stdout, res.stderr, res.code)
		}
		if vms := e.vms(); len(vms) != 0 {
			t.Fatalf("vm run left VMs behind: %+v", vms)
		}
	})

	t.Run("vm exec -t with a local terminal", func(t *testing.T) {
		r.must(t, append([]string{"vm", "create", "rdev", "--start"}, vmFlags...)...)
		// The busybox image has no init system: banger-init, staying PID 1, mounted the
		// devpts that /dev/ptmx needs and a /dev/shm, as a distro's init would.
		r.must(t, "vm", "exec", "rdev", "--", "sh", "-c", "grep -q ' /dev/pts devpts ' /proc/mounts && grep -q ' /dev/shm tmpfs ' /proc/mounts")
		cmd := r.command(nil, "vm", "exec", "-t", "rdev", "--", "sh", "-c", "tty; stty size; exit 5")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		if e.cred != nil {
			cmd.SysProcAttr.Credential = e.cred
		}
		ptmx, err := pty.StartWithAttrs(cmd, &pty.Winsize{Rows: 33, Cols: 101}, cmd.SysProcAttr)
		if err != nil {
			t.Fatal(err)
		}
		defer ptmx.Close()
		var out bytes.Buffer
		copied := make(chan struct{})
		go func() { _, _ = io.Copy(&out, ptmx); close(copied) }() // EIO once the CLI exits
		err = cmd.Wait()
		select {
		case <-copied:
		case <-time.After(5 * time.Second):
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 5 {
			t.Fatalf("vm exec -t: %v (want exit 5); terminal said %q", err, out.String())
		}
		got := out.String()
		if !strings.Contains(got, "/dev/pts/") || !strings.Contains(got, "33 101") {
			t.Fatalf("vm exec -t through ssh: terminal said %q; want a /dev/pts tty of 33x101", got)
		}
	})

	t.Run("vm cp both ways", func(t *testing.T) {
		src := filepath.Join(r.local, "home", "note.txt")
		if err := os.WriteFile(src, []byte("from the laptop\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if e.cred != nil {
			_ = os.Chown(src, int(e.cred.Uid), int(e.cred.Gid))
		}
		r.must(t, "vm", "cp", src, "rdev:/root/")
		if res := r.must(t, "vm", "exec", "rdev", "--", "cat", "/root/note.txt"); res.stdout != "from the laptop\n" {
			t.Fatalf("copied in: %q", res.stdout)
		}
		if res := r.must(t, "vm", "cp", "rdev:/root/note.txt", "-"); !strings.Contains(res.stdout, "from the laptop") {
			t.Fatalf("copied out as tar: %q", res.stdout)
		}
	})

	t.Run("port-forward listens here", func(t *testing.T) {
		r.must(t, "vm", "exec", "rdev", "--", "sh", "-c", guestHTTPD)
		cmd := r.command(nil, "vm", "port-forward", "rdev", "8080")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() {
			_ = cmd.Process.Signal(syscall.SIGINT)
			_ = cmd.Wait()
		}()
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil {
			t.Fatalf("port-forward printed %q, %v; stderr %s", line, err, stderr.String())
		}
		addr, _, _ := strings.Cut(line, " ")
		// Where the test runs, not in the daemon's namespace: the forward is this machine's.
		var body string
		for range 20 {
			resp, err := http.Get("http://" + addr + "/")
			if err == nil {
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				body = string(b)
				if resp.StatusCode == 200 {
					break
				}
			}
			time.Sleep(250 * time.Millisecond)
		}
		if body != "hello-rdev\n" {
			t.Fatalf("GET %s through the local forward: %q; port-forward said %q %s", addr, body, line, stderr.String())
		}
	})

	t.Run("vm ssh runs there", func(t *testing.T) {
		// The busybox image has no sshd: the remote banger's own answer comes back.
		res := r.run("vm", "ssh", "rdev", "--", "true")
		if res.code == 0 || !strings.Contains(res.stderr, "no SSH in VM rdev") {
			t.Fatalf("vm ssh through ssh: exit %d stderr %q; want the remote banger's refusal", res.code, res.stderr)
		}
	})

	t.Run("vm ssh into a Debian guest, through the remote host", func(t *testing.T) {
		e.importSSHImage() // image import is the daemon host's: done there
		r.must(t, "vm", "create", "rssh", "--image", "deb", "--memory", "768M", "--start")
		// Three shells in a row (the remote host's, then the guest's) see these words
		// exactly once each: quoting survives every hop.
		for _, client := range []string{"", "-"} {
			args := []string{"vm", "ssh", "rssh", "--", "sh", "-c", "echo \"$(hostname) uid=$(id -u) $1\"; exit 6", "sh", "two 'words' $HOME"}
			if client != "" {
				args = append(args[:2], append([]string{"--ssh", client}, args[2:]...)...)
			}
			res := r.run(args...)
			if res.stdout != "rssh uid=0 two 'words' $HOME\n" || res.code != 6 {
				t.Fatalf("BANGER_HOST=... banger %s: stdout %q stderr %q exit %d", strings.Join(args, " "), res.stdout, res.stderr, res.code)
			}
		}
		r.must(t, "vm", "rm", "--force", "rssh")
	})

	t.Run("ssh failures say why", func(t *testing.T) {
		stranger := strings.Replace(r.sshArgs, filepath.Join(r.local, "id"), filepath.Join(r.local, "stranger"), 1)
		res := r.e.runCmd(r.command([]string{"BANGER_HOST_SSH_ARGS=" + stranger}, "vm", "ls"), nil)
		if res.code == 0 || !strings.Contains(res.stderr, "Permission denied") || !strings.Contains(res.stderr, "hint:") {
			t.Fatalf("an unknown key: exit %d stderr %q; want ssh's words and a hint", res.code, res.stderr)
		}
		missing := fmt.Sprintf("BANGER_HOST=ssh://127.0.0.1:%d?banger=/nonexistent/banger", r.port)
		res = r.e.runCmd(r.command([]string{missing}, "vm", "ls"), nil)
		if res.code == 0 || !strings.Contains(res.stderr, "/nonexistent/banger") || !strings.Contains(res.stderr, "?banger=") {
			t.Fatalf("a missing remote banger: exit %d stderr %q", res.code, res.stderr)
		}
		res = r.run("daemon", "stop")
		if res.code == 0 || !strings.Contains(res.stderr, "this machine") {
			t.Fatalf("daemon stop with a remote host: exit %d stderr %q", res.code, res.stderr)
		}
	})

	t.Run("rm leaves nothing", func(t *testing.T) {
		r.must(t, "vm", "rm", "--force", "rdev")
		if vms := e.vms(); len(vms) != 0 {
			t.Fatalf("VMs left: %+v", vms)
		}
		if res := e.run("doctor", "--leaks"); res.code != 0 {
			t.Fatalf("doctor --leaks: exit %d\n%s%s", res.code, res.stdout, res.stderr)
		}
		// No local daemon was started, and no bridge outlives its command.
		if _, err := os.Stat(filepath.Join(r.local, "run", "banger")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the local side has a runtime dir (a local daemon?): %v", err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for len(r.bridges()) > 0 && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if b := r.bridges(); len(b) > 0 {
			t.Errorf("bridges still running after their commands ended:\n%s", strings.Join(b, "\n"))
		}
	})
}
