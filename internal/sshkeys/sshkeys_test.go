package sshkeys

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

func TestUserKeyCreatedOnceAndReadableByOpenSSH(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), "ssh"))
	// Concurrent first uses agree on one key.
	var wg sync.WaitGroup
	lines := make([][]byte, 8)
	for i := range lines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := s.EnsureUserKey()
			if err != nil {
				t.Error(err)
			}
			lines[i] = l
		}()
	}
	wg.Wait()
	for _, l := range lines[1:] {
		if string(l) != string(lines[0]) {
			t.Fatalf("different keys: %q vs %q", l, lines[0])
		}
	}
	st, err := os.Stat(s.UserKeyPath())
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("private key: %v %v", st, err)
	}
	signer, err := s.UserSigner()
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(lines[0])
	if err != nil || string(pub.Marshal()) != string(signer.PublicKey().Marshal()) {
		t.Fatalf("public line does not match the private key: %v", err)
	}
	// OpenSSH itself must accept the private key file (ssh -i).
	if kg, err := exec.LookPath("ssh-keygen"); err == nil {
		out, err := exec.Command(kg, "-y", "-f", s.UserKeyPath()).CombinedOutput()
		if err != nil || !strings.HasPrefix(string(out), "ssh-ed25519 ") || !strings.Contains(string(lines[0]), strings.Fields(string(out))[1]) {
			t.Fatalf("ssh-keygen -y: %s %v", out, err)
		}
	} else {
		t.Log("no ssh-keygen on PATH: OpenSSH's reading of the key not checked")
	}
}

func TestPinsCheckAndUnpin(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), "ssh"))
	_, pubA, err := NewKey("a")
	if err != nil {
		t.Fatal(err)
	}
	_, pubB, _ := NewKey("b")
	_, pubC, _ := NewKey("c")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Pin(HostAlias("a"), pubA))
	must(s.Pin(HostAlias("b"), pubB))
	must(s.Pin(HostAlias("b"), pubC)) // re-pin replaces
	cb, err := s.HostKeyCallback()
	must(err)
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}
	key := func(line []byte) ssh.PublicKey {
		k, _, _, _, err := ssh.ParseAuthorizedKey(line)
		must(err)
		return k
	}
	if err := cb(HostAlias("a")+":22", addr, key(pubA)); err != nil {
		t.Errorf("pinned key refused: %v", err)
	}
	if err := cb(HostAlias("b")+":22", addr, key(pubC)); err != nil {
		t.Errorf("re-pinned key refused: %v", err)
	}
	var ke *knownhosts.KeyError
	if err := cb(HostAlias("b")+":22", addr, key(pubB)); err == nil {
		t.Error("the replaced key was accepted")
	} else if !errorsAs(err, &ke) || len(ke.Want) == 0 {
		t.Errorf("want a key mismatch, got %v", err)
	}
	if err := cb(HostAlias("a")+":22", addr, key(pubC)); err == nil {
		t.Error("another VM's key accepted")
	}
	must(s.Unpin(HostAlias("a")))
	data, _ := os.ReadFile(s.KnownHostsPath())
	if strings.Contains(string(data), HostAlias("a")) || !strings.Contains(string(data), HostAlias("b")) {
		t.Fatalf("after unpin: %q", data)
	}
	if _, err := s.UserSigner(); err == nil || !strings.Contains(err.Error(), "created with the first VM") {
		t.Errorf("missing user key: %v", err)
	}
}

func errorsAs(err error, target **knownhosts.KeyError) bool {
	ke, ok := err.(*knownhosts.KeyError)
	if ok {
		*target = ke
	}
	return ok
}

func TestOwnUserKey(t *testing.T) {
	dir := t.TempDir()
	priv, pub, err := NewKey("mine")
	if err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(dir, "mykey")
	if err := os.WriteFile(own, priv, 0o600); err != nil {
		t.Fatal(err)
	}
	s := New(filepath.Join(dir, "ssh")).WithUserKey(own)
	// No .pub: derived from the (unencrypted) private key.
	got, err := s.EnsureUserKey()
	if err != nil || strings.Fields(string(got))[1] != strings.Fields(string(pub))[1] {
		t.Fatalf("own key: %q %v, want %q", got, err, pub)
	}
	if _, err := os.Stat(filepath.Join(dir, "ssh", UserKeyFile)); err == nil {
		t.Fatal("banger created its own key although one is configured")
	}
	missing := New(filepath.Join(dir, "ssh")).WithUserKey(filepath.Join(dir, "nope"))
	if _, err := missing.EnsureUserKey(); err == nil || !strings.Contains(err.Error(), "runtime.ssh_key_path") {
		t.Fatalf("missing own key: %v", err)
	}
}
