// Package guestident writes a guest's identity into its root filesystem: hostname, hosts,
// resolv.conf, machine-id. banger-init uses it at boot, the agent when a clone of a
// snapshot takes on its own identity.
package guestident

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// ValidHostname reports whether s is one DNS label: letters, digits and '-', 1-63
// characters, no '-' at either end.
func ValidHostname(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// WriteHostname writes /etc/hostname and /etc/hosts under root for hostname (which the
// caller checked with ValidHostname).
func WriteHostname(root, hostname string) error {
	if err := ReplaceFile(filepath.Join(root, "etc/hostname"), hostname+"\n", 0o644); err != nil {
		return err
	}
	hosts := "127.0.0.1\tlocalhost\n127.0.1.1\t" + hostname + "\n::1\tlocalhost ip6-localhost ip6-loopback\n"
	return ReplaceFile(filepath.Join(root, "etc/hosts"), hosts, 0o644)
}

// ResolvConf is a resolv.conf naming dns, with header as its first comment line.
func ResolvConf(header string, dns []netip.Addr) string {
	var sb strings.Builder
	sb.WriteString("# " + header + "\n")
	for _, a := range dns {
		sb.WriteString("nameserver " + a.String() + "\n")
	}
	return sb.String()
}

// NewMachineID writes a new random machine-id (32 lowercase hex digits) to
// root/etc/machine-id and returns it.
func NewMachineID(root string) (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b[:])
	if err := ReplaceFile(filepath.Join(root, "etc/machine-id"), id+"\n", 0o444); err != nil {
		return "", fmt.Errorf("machine-id: %w", err)
	}
	return id, nil
}

// ReplaceFile writes content at path, replacing a symlink (resolv.conf often is one) rather
// than following it out of the image.
func ReplaceFile(path, content string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		if err := os.Remove(path); err != nil {
			return err
		}
	}
	tmp := path + ".banger-tmp"
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}
