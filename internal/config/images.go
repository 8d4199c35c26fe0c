package config

import (
	"fmt"
	"net/url"
	"strings"
)

// Images configures image pulls ([images] in the config file).
type Images struct {
	// Default is what `banger image pull` with no name pulls.
	Default string
	// DebianMirror is the Debian archive Debian images and kernels come from.
	DebianMirror string
	// DebianKeyring verifies the archive's signatures.
	DebianKeyring string
	// Kernel: "auto" makes sure a kernel is present with every pull; "none" never fetches one.
	Kernel string
	// Extra adds catalog entries: "NAME=REF" (OCI reference, debian:SUITE, or
	// URL#sha256=HEX for a rootfs tarball).
	Extra []string
	// MaxSize caps an image (decompressed layers, tar contents, imported ext4, build size).
	MaxSize int64
	// MaxLayers caps an OCI image's layer count.
	MaxLayers int
}

func defaultImages() Images {
	return Images{Default: "debian-bookworm", DebianMirror: "http://deb.debian.org/debian",
		DebianKeyring: "/usr/share/keyrings/debian-archive-keyring.gpg", Kernel: "auto", Extra: []string{},
		MaxSize: 32 << 30, MaxLayers: 128}
}

func validMirror(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not an http(s) URL like \"http://deb.debian.org/debian\"", s)
	}
	return nil
}

func validImageName(s string) error {
	if strings.TrimSpace(s) == "" {
		return fmt.Errorf("must not be empty")
	}
	return nil
}

func stringListKey(name, help string, dst *[]string) key {
	return key{name: name, help: help,
		set: func(v any) error {
			list, ok := v.([]any)
			if !ok {
				return fmt.Errorf("want a list of strings, got %s", tomlType(v))
			}
			out := []string{}
			for _, e := range list {
				s, ok := e.(string)
				if !ok {
					return fmt.Errorf("want strings, got %s", tomlType(e))
				}
				if !strings.Contains(s, "=") {
					return fmt.Errorf("%q: want NAME=REF", s)
				}
				out = append(out, s)
			}
			*dst = out
			return nil
		},
		show: func() string { return strings.Join(*dst, ", ") }}
}
