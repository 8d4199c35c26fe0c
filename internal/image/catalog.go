// Package image pulls and builds banger images: root filesystems as ext4 (from the Debian
// archive, OCI registries, rootfs tarballs or local files), each with a work seed built from
// its /root and a package-manifest sidecar, and the kernels VMs boot, as their own shared
// artifacts. Everything is built in a staging directory and registered atomically.
package image

import (
	"fmt"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// Kind is how an image is obtained.
type Kind string

const (
	KindDebian  Kind = "debian"  // built from the Debian archive (mmdebstrap)
	KindOCI     Kind = "oci"     // pulled from an OCI/Docker registry
	KindTarball Kind = "tarball" // a rootfs tarball from a URL, checksum verified
	KindImport  Kind = "import"  // a local tar or ext4 file
)

// Entry is one named image in the catalog.
type Entry struct {
	Name string `json:"name"`
	Kind Kind   `json:"kind"`
	// Suite is the Debian suite (KindDebian).
	Suite string `json:"suite,omitempty"`
	// Ref is the OCI reference (KindOCI) or the tarball URL (KindTarball).
	Ref string `json:"ref,omitempty"`
	// SHA256 is the tarball's expected checksum (hex), or SHA256URL a sha256sum-style file
	// listing it by the tarball's base name. One of them is required for tarballs.
	SHA256    string `json:"sha256,omitempty"`
	SHA256URL string `json:"sha256_url,omitempty"`
	// KernelSuite is the Debian suite whose linux-image-cloud-amd64 the image boots with.
	KernelSuite  string `json:"kernel_suite,omitempty"`
	Experimental bool   `json:"experimental,omitempty"`
	Description  string `json:"description,omitempty"`
}

// Source is a human-readable origin, stored with the image.
func (e Entry) Source() string {
	switch e.Kind {
	case KindDebian:
		return "debian:" + e.Suite
	default:
		return string(e.Kind) + ":" + e.Ref
	}
}

// DefaultImage is what `banger image pull` with no name pulls.
const DefaultImage = "debian-bookworm"

// BuiltinCatalog lists the images banger knows by name.
func BuiltinCatalog() []Entry {
	return []Entry{
		{Name: "debian-bookworm", Kind: KindDebian, Suite: "bookworm", KernelSuite: "bookworm", Description: "Debian 12 with systemd and OpenSSH (the default)"},
		{Name: "debian-trixie", Kind: KindDebian, Suite: "trixie", KernelSuite: "trixie", Description: "Debian 13 with systemd and OpenSSH"},
		{Name: "void", Kind: KindTarball, Experimental: true, KernelSuite: "bookworm",
			Ref:         "https://repo-default.voidlinux.org/live/current/void-x86_64-ROOTFS-20250202.tar.xz",
			SHA256URL:   "https://repo-default.voidlinux.org/live/current/sha256sum.txt",
			Description: "Void Linux glibc rootfs (experimental)"},
	}
}

// Catalog resolves image names.
type Catalog struct {
	entries map[string]Entry
}

// NewCatalog is the built-in catalog plus extras; an extra with a built-in's name replaces it.
func NewCatalog(extras ...Entry) Catalog {
	c := Catalog{entries: map[string]Entry{}}
	for _, e := range BuiltinCatalog() {
		c.entries[e.Name] = e
	}
	for _, e := range extras {
		c.entries[e.Name] = e
	}
	return c
}

// Entries lists the catalog by name.
func (c Catalog) Entries() []Entry {
	out := make([]Entry, 0, len(c.entries))
	for _, e := range c.entries {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func (c Catalog) names() string {
	var n []string
	for _, e := range c.Entries() {
		n = append(n, e.Name)
	}
	return strings.Join(n, ", ")
}

// Resolve maps what the user typed to an entry: a catalog name, or an OCI reference
// (something with a registry, repository path, tag or digest, e.g.
// docker.io/library/ubuntu:24.04). A bare word that is not in the catalog is an error rather
// than a guess at Docker Hub.
func (c Catalog) Resolve(arg string) (Entry, error) {
	if arg == "" {
		arg = DefaultImage
	}
	if e, ok := c.entries[arg]; ok {
		return e, nil
	}
	if strings.HasPrefix(arg, "oci:") || strings.HasPrefix(arg, "docker://") {
		arg = strings.TrimPrefix(strings.TrimPrefix(arg, "oci:"), "docker://")
	} else if !strings.ContainsAny(arg, "/:@") {
		return Entry{}, fmt.Errorf("unknown image %q: not in the catalog (%s) and not an OCI reference; give a full reference such as docker.io/library/%s:latest", arg, c.names(), arg)
	}
	if _, err := name.ParseReference(arg, name.StrictValidation); err != nil {
		if _, err2 := name.ParseReference(arg); err2 != nil {
			return Entry{}, fmt.Errorf("unknown image %q: not in the catalog (%s) and not a valid OCI reference: %v", arg, c.names(), err2)
		}
	}
	return Entry{Name: arg, Kind: KindOCI, Ref: arg, KernelSuite: "bookworm"}, nil
}

// ParseExtra parses a catalog extra from config: "NAME=REF" where REF is an OCI reference
// (optionally prefixed oci:), "debian:SUITE", or an http(s) tarball URL followed by
// "#sha256=HEX" (or "#sha256-url=URL").
func ParseExtra(s string) (Entry, error) {
	parse := name.ParseReference
	name, ref, ok := strings.Cut(s, "=")
	name, ref = strings.TrimSpace(name), strings.TrimSpace(ref)
	if !ok || name == "" || ref == "" {
		return Entry{}, fmt.Errorf("catalog entry %q: want NAME=REF (REF: an OCI reference, debian:SUITE, or URL#sha256=HEX)", s)
	}
	if strings.ContainsAny(name, "/ \t") {
		return Entry{}, fmt.Errorf("catalog entry %q: the name must not contain '/' or spaces", s)
	}
	e := Entry{Name: name, KernelSuite: "bookworm"}
	switch {
	case strings.HasPrefix(ref, "debian:"):
		e.Kind, e.Suite = KindDebian, strings.TrimPrefix(ref, "debian:")
		e.KernelSuite = e.Suite
	case strings.HasPrefix(ref, "http://") || strings.HasPrefix(ref, "https://"):
		u, frag, _ := strings.Cut(ref, "#")
		e.Kind, e.Ref = KindTarball, u
		switch {
		case strings.HasPrefix(frag, "sha256="):
			e.SHA256 = strings.ToLower(strings.TrimPrefix(frag, "sha256="))
		case strings.HasPrefix(frag, "sha256-url="):
			e.SHA256URL = strings.TrimPrefix(frag, "sha256-url=")
		default:
			return Entry{}, fmt.Errorf("catalog entry %q: a tarball URL needs #sha256=HEX or #sha256-url=URL so its download can be verified", s)
		}
	default:
		e.Kind, e.Ref = KindOCI, strings.TrimPrefix(ref, "oci:")
		if _, err := parse(e.Ref); err != nil {
			return Entry{}, fmt.Errorf("catalog entry %q: %v", s, err)
		}
	}
	return e, nil
}
