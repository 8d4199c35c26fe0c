package sshkeys

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
)

// A user key whose .pub went missing (deleted by hand, or a crash between the two writes)
// must be kept: every existing VM authorizes it. Regenerating it locks them all out.
func TestEnsureUserKeyKeepsPrivateKeyWithoutPub(t *testing.T) {
	s := New(filepath.Join(t.TempDir(), "ssh"))
	first, err := s.EnsureUserKey()
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.ReadFile(s.UserKeyPath())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(s.UserKeyPath() + ".pub"); err != nil {
		t.Fatal(err)
	}
	again, err := s.EnsureUserKey()
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(s.UserKeyPath())
	if string(after) != string(before) {
		t.Fatal("EnsureUserKey replaced the existing private key because its .pub was missing")
	}
	k1, _, _, _, err1 := ssh.ParseAuthorizedKey(first)
	k2, _, _, _, err2 := ssh.ParseAuthorizedKey(again)
	if err1 != nil || err2 != nil || string(k1.Marshal()) != string(k2.Marshal()) {
		t.Fatalf("public key changed: %q -> %q", first, again)
	}
	if pub, err := os.ReadFile(s.UserKeyPath() + ".pub"); err != nil || string(pub) != string(again) {
		t.Fatalf(".pub not restored: %q %v", pub, err)
	}
}
