package image

import (
	"bufio"
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io/fs"
	"sort"
	"strings"

	"github.com/banger-vm/banger/internal/system/ext4"
)

// Package is one installed package.
type Package struct {
	Name    string `json:"name"`
	Version string `json:"version"`
	Arch    string `json:"arch,omitempty"`
}

// PackageManifest is the sidecar kept with each image (packages.json).
type PackageManifest struct {
	Format   string    `json:"format"` // dpkg, xbps, apk, or none
	Packages []Package `json:"packages"`
}

// Package databases, read straight from the built image.
const (
	dpkgStatus = "/var/lib/dpkg/status"
	xbpsPkgdb  = "/var/db/xbps/pkgdb-0.38.plist"
	apkDB      = "/lib/apk/db/installed"
)

// maxPackageDB bounds a package database read from an image (a full Debian desktop's
// dpkg status is ~10 MiB).
const maxPackageDB = 64 << 20

// readManifest reads the image's package database without mounting it.
func readManifest(ctx context.Context, e *ext4.Toolkit, rootfs string) (PackageManifest, error) {
	for _, db := range []struct {
		path, format string
		parse        func([]byte) []Package
	}{{dpkgStatus, "dpkg", parseDpkgStatus}, {xbpsPkgdb, "xbps", parseXbpsPkgdb}, {apkDB, "apk", parseApkDB}} {
		data, err := e.ReadExt4FileMax(ctx, rootfs, db.path, maxPackageDB)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return PackageManifest{}, err
		}
		pk := db.parse(data)
		sort.Slice(pk, func(i, j int) bool { return pk[i].Name < pk[j].Name })
		return PackageManifest{Format: db.format, Packages: pk}, nil
	}
	return PackageManifest{Format: "none", Packages: []Package{}}, nil
}

// parseDeb822 splits RFC822-style stanzas (dpkg status, Packages, Release) into field maps;
// continuation lines are appended to the previous field.
func parseDeb822(data []byte) []map[string]string {
	var out []map[string]string
	cur := map[string]string{}
	last := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			if len(cur) > 0 {
				out = append(out, cur)
				cur = map[string]string{}
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				cur[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = k
		cur[k] = strings.TrimSpace(v)
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

func parseDpkgStatus(data []byte) []Package {
	var out []Package
	for _, s := range parseDeb822(data) {
		if !strings.HasSuffix(s["Status"], " installed") || s["Package"] == "" {
			continue
		}
		out = append(out, Package{Name: s["Package"], Version: s["Version"], Arch: s["Architecture"]})
	}
	return out
}

func parseApkDB(data []byte) []Package {
	var out []Package
	var p Package
	for _, line := range strings.Split(string(data)+"\n\n", "\n") {
		switch {
		case line == "":
			if p.Name != "" {
				out = append(out, p)
			}
			p = Package{}
		case strings.HasPrefix(line, "P:"):
			p.Name = line[2:]
		case strings.HasPrefix(line, "V:"):
			p.Version = line[2:]
		case strings.HasPrefix(line, "A:"):
			p.Arch = line[2:]
		}
	}
	return out
}

// parseXbpsPkgdb reads xbps's plist: a top-level dict of package name -> dict with pkgver
// ("name-version_revision") and architecture.
func parseXbpsPkgdb(data []byte) []Package {
	dec := xml.NewDecoder(bytes.NewReader(data))
	var out []Package
	depth := 0
	var key, pkgName, text string
	var cur *Package
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		switch t := tok.(type) {
		case xml.StartElement:
			if t.Name.Local == "dict" {
				depth++
				if depth == 2 {
					pkgName = key
					cur = &Package{Name: pkgName}
				}
			}
			text = ""
		case xml.CharData:
			text += string(t)
		case xml.EndElement:
			switch t.Name.Local {
			case "key":
				key = text
			case "string":
				if depth == 2 && cur != nil {
					switch key {
					case "pkgver":
						cur.Version = strings.TrimPrefix(text, cur.Name+"-")
					case "architecture":
						cur.Arch = text
					}
				}
			case "dict":
				if depth == 2 && cur != nil && cur.Name != "" {
					out = append(out, *cur)
					cur = nil
				}
				depth--
			}
		}
	}
	return out
}
