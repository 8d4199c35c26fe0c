// Package sshtransport reaches a banger daemon on another machine through the system ssh:
// each connection is `ssh [OPTIONS] HOST -- banger daemon proxy`, whose stdin and stdout
// are a byte stream to that host's daemon socket (BANGER_HOST=ssh://user@host:port).
package sshtransport

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// DefaultRemoteBanger is the banger the remote side runs when nothing says otherwise: the
// one on the remote user's PATH.
const DefaultRemoteBanger = "banger"

// Host is a parsed ssh://[user@]host[:port][?banger=/path] address.
type Host struct {
	User string // "" lets ssh pick (its config, else the local user name)
	Name string // a host name or an IP address (IPv6 without brackets)
	Port int    // 0 lets ssh pick
	// Banger is the banger binary on the remote host (default "banger", from its PATH).
	Banger string
}

// maxHostURL bounds the address; nothing sane is longer.
const maxHostURL = 1024

// ParseHost parses and validates a remote daemon address. It is strict because its parts
// end up on ssh's command line: a user or host that ssh could read as an option (a leading
// '-'), spaces, control characters, a password, a path or unknown query keys are refused.
func ParseHost(raw string) (Host, error) {
	bad := func(why string) (Host, error) {
		return Host{}, fmt.Errorf("remote host %q: %s; want ssh://[USER@]HOST[:PORT][?banger=/path/to/banger]", clip(raw), why)
	}
	if len(raw) > maxHostURL {
		return bad(fmt.Sprintf("longer than %d bytes", maxHostURL))
	}
	for _, r := range raw {
		if r <= 0x20 || r == 0x7f {
			return bad("it contains a space or a control character")
		}
	}
	if !strings.HasPrefix(raw, "ssh://") {
		return bad("only ssh:// is supported")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad(err.Error())
	}
	if u.Opaque != "" || u.Fragment != "" || u.RawFragment != "" {
		return bad("unexpected parts")
	}
	if u.Path != "" && u.Path != "/" {
		return bad("a path is not allowed")
	}
	h := Host{Banger: DefaultRemoteBanger}
	if u.User != nil {
		if _, hasPass := u.User.Password(); hasPass {
			return bad("a password cannot be given (ssh uses keys: BatchMode)")
		}
		h.User = u.User.Username()
		if err := checkUser(h.User); err != nil {
			return bad(err.Error())
		}
	}
	h.Name = u.Hostname()
	if err := checkHostName(h.Name); err != nil {
		return bad(err.Error())
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return bad("the port must be 1-65535")
		}
		h.Port = n
	} else if strings.HasSuffix(u.Host, ":") {
		return bad("an empty port")
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return bad(err.Error())
	}
	for k, v := range q {
		if k != "banger" || len(v) != 1 {
			return bad(fmt.Sprintf("unknown or repeated query %q (only banger=/path/to/banger)", k))
		}
		if err := CheckRemoteBanger(v[0]); err != nil {
			return bad(err.Error())
		}
		h.Banger = v[0]
	}
	return h, nil
}

// CheckRemoteBanger accepts an absolute path or a plain command name for the remote banger.
// It reaches the remote shell quoted, so this is about mistakes, not injection.
func CheckRemoteBanger(p string) error {
	if p == "" || len(p) > 4096 {
		return errors.New("the remote banger path must be 1-4096 bytes")
	}
	if strings.HasPrefix(p, "-") {
		return fmt.Errorf("the remote banger %q starts with '-'", clip(p))
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return errors.New("the remote banger path contains a control character")
		}
	}
	if !strings.HasPrefix(p, "/") && strings.Contains(p, "/") {
		return fmt.Errorf("the remote banger %q must be an absolute path or a command name on the remote PATH", clip(p))
	}
	return nil
}

func checkUser(u string) error {
	if u == "" {
		return errors.New("an empty user name")
	}
	if strings.HasPrefix(u, "-") {
		return errors.New("a user name cannot start with '-'")
	}
	if len(u) > 64 {
		return errors.New("a user name longer than 64 bytes")
	}
	for _, r := range u {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._-", r)) {
			return fmt.Errorf("the user name has %q (allowed: letters, digits, . _ -)", r)
		}
	}
	return nil
}

func checkHostName(h string) error {
	if h == "" {
		return errors.New("no host")
	}
	if strings.HasPrefix(h, "-") {
		return errors.New("a host cannot start with '-'")
	}
	if net.ParseIP(h) != nil {
		return nil
	}
	if len(h) > 253 {
		return errors.New("a host name longer than 253 bytes")
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("the host name has %q (allowed: letters, digits, . - _, or an IP address)", r)
		}
	}
	return nil
}

// String is the address as ssh:// again (without the default banger).
func (h Host) String() string {
	u := url.URL{Scheme: "ssh", Host: h.Name}
	if strings.Contains(h.Name, ":") {
		u.Host = "[" + h.Name + "]"
	}
	if h.Port != 0 {
		u.Host += ":" + strconv.Itoa(h.Port)
	}
	if h.User != "" {
		u.User = url.User(h.User)
	}
	if h.Banger != "" && h.Banger != DefaultRemoteBanger {
		u.RawQuery = url.Values{"banger": {h.Banger}}.Encode()
	}
	return u.String()
}

// clip shortens a value quoted in an error.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
