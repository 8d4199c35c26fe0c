package image

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/banger-vm/banger/internal/system/ext4"
)

// OCI whiteout conventions (image-spec layer.md, "Whiteouts").
const (
	whiteoutPrefix = ".wh."
	whiteoutOpaque = ".wh..wh..opq"
)

// layerState is what the layers above the one being scanned decided.
type layerState struct {
	present  map[string]bool // path -> is a directory
	whiteout map[string]bool // path and everything below it removed
	opaque   map[string]bool // everything below path removed
}

func newLayerState() *layerState {
	return &layerState{present: map[string]bool{}, whiteout: map[string]bool{}, opaque: map[string]bool{}}
}

// visible reports whether entry k of a lower layer survives the upper layers.
func (s *layerState) visible(k string) bool {
	if s.whiteout[k] {
		return false
	}
	if _, ok := s.present[k]; ok {
		return false // an upper layer has its own entry for k (a dir's children stay visible)
	}
	if s.opaque[""] && k != "" {
		return false
	}
	for a := k; ; {
		i := strings.LastIndexByte(a, '/')
		if i < 0 {
			break
		}
		a = a[:i]
		if s.whiteout[a] || s.opaque[a] {
			return false
		}
		if isDir, ok := s.present[a]; ok && !isDir {
			return false
		}
	}
	return true
}

// flattenPlan says, per layer (bottom first), which tar entries (by ordinal) survive.
type flattenPlan struct {
	keep         [][]bool
	contentBytes int64 // file data of the kept entries: what the flattened tar holds
}

// planFlatten scans the layer tars top-down, reading only headers (the files are seekable,
// so archive/tar skips the data), and marks each entry that no upper layer shadows,
// whites out or hides under an opaque directory.
func planFlatten(layers []string) (*flattenPlan, error) {
	p := &flattenPlan{keep: make([][]bool, len(layers))}
	st := newLayerState()
	for i := len(layers) - 1; i >= 0; i-- {
		f, err := os.Open(layers[i])
		if err != nil {
			return nil, err
		}
		add := newLayerState()
		var keep []bool
		tr := tar.NewReader(f)
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("layer %d: read tar: %w (the layer is corrupt)", i+1, err)
			}
			k, err := ext4.CheckTarHeader(hdr)
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("layer %d: %w", i+1, err)
			}
			dir, base := path.Split(k)
			dir = strings.TrimSuffix(dir, "/")
			switch {
			case base == whiteoutOpaque:
				add.opaque[dir] = true
				keep = append(keep, false)
				continue
			case strings.HasPrefix(base, whiteoutPrefix+whiteoutPrefix):
				keep = append(keep, false) // other aufs metadata (.wh..wh.plnk, ...)
				continue
			case strings.HasPrefix(base, whiteoutPrefix):
				add.whiteout[path.Join(dir, strings.TrimPrefix(base, whiteoutPrefix))] = true
				keep = append(keep, false)
				continue
			}
			if hdr.Typeflag == tar.TypeXGlobalHeader {
				keep = append(keep, false)
				continue
			}
			vis := st.visible(k)
			keep = append(keep, vis)
			if vis && (hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA) {
				p.contentBytes += hdr.Size
			}
			add.present[k] = hdr.Typeflag == tar.TypeDir
		}
		f.Close()
		p.keep[i] = keep
		for k, v := range add.present {
			if _, ok := st.present[k]; !ok {
				st.present[k] = v
			}
		}
		for k := range add.whiteout {
			st.whiteout[k] = true
		}
		for k := range add.opaque {
			st.opaque[k] = true
		}
	}
	return p, nil
}

// writeFlattened streams the surviving entries of every layer, bottom first, as one tar.
// Names are normalised; PAX records (xattrs such as security.capability), owners, modes and
// device numbers pass through unchanged.
func writeFlattened(layers []string, p *flattenPlan, w io.Writer) error {
	tw := tar.NewWriter(w)
	emitted := map[string]bool{}
	buf := make([]byte, 1<<20)
	for i, lp := range layers {
		f, err := os.Open(lp)
		if err != nil {
			return err
		}
		tr := tar.NewReader(f)
		for n := 0; ; n++ {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				f.Close()
				return fmt.Errorf("layer %d: read tar: %w (the layer is corrupt)", i+1, err)
			}
			if n >= len(p.keep[i]) || !p.keep[i][n] {
				continue
			}
			k, _ := ext4.CleanTarName(hdr.Name)
			if hdr.Typeflag == tar.TypeLink {
				t, err := ext4.CleanTarName(hdr.Linkname)
				if err != nil {
					f.Close()
					return fmt.Errorf("layer %d: hard link %q: %w", i+1, hdr.Name, err)
				}
				if !emitted[t] {
					f.Close()
					return fmt.Errorf("layer %d: hard link %q -> %q: the target is not in the flattened image (removed or replaced by a later layer); this layering is not supported", i+1, hdr.Name, hdr.Linkname)
				}
				hdr.Linkname = t
			}
			if k == "" {
				hdr.Name = "./"
			} else {
				hdr.Name = k
				if hdr.Typeflag == tar.TypeDir {
					hdr.Name += "/"
				}
			}
			if hdr.Typeflag != tar.TypeDir {
				emitted[k] = true
			}
			hdr.Format = tar.FormatPAX
			if err := tw.WriteHeader(hdr); err != nil {
				f.Close()
				return fmt.Errorf("layer %d: %s: %w", i+1, k, err)
			}
			if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA {
				if _, err := io.CopyBuffer(tw, tr, buf); err != nil {
					f.Close()
					return fmt.Errorf("layer %d: %s: %w", i+1, k, err)
				}
			}
		}
		f.Close()
	}
	return tw.Close()
}
