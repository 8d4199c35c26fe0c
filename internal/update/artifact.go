package update

import (
	"archive/tar"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// ArtifactName is the file name of version's release artifact for platform ("linux-amd64"):
// banger-VERSION-OS-ARCH.tar.gz.
func ArtifactName(version, platform string) string {
	return "banger-" + version + "-" + platform + ".tar.gz"
}

// WriteArtifact writes the release artifact of the binaries in dir to w: a gzip-compressed
// (at level, e.g. gzip.DefaultCompression) tar of exactly Binaries(), as regular files
// with mode 0755, owner 0 and time 0, so the same binaries always make the same tar.
// Extract reads it back.
func WriteArtifact(w io.Writer, dir string, level int) error {
	zw, err := gzip.NewWriterLevel(w, level)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	for _, name := range Binaries() {
		if err := addBinary(tw, filepath.Join(dir, name), name); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

func addBinary(tw *tar.Writer, path, name string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if st.Size() > maxBinarySize {
		return fmt.Errorf("%s is %d bytes, more than banger update accepts (%d)", path, st.Size(), maxBinarySize)
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o755, Size: st.Size(), Typeflag: tar.TypeReg,
		ModTime: time.Unix(0, 0), Format: tar.FormatUSTAR}); err != nil {
		return err
	}
	n, err := io.Copy(tw, f)
	if err != nil {
		return fmt.Errorf("pack %s: %w", path, err)
	}
	if n != st.Size() {
		return fmt.Errorf("pack %s: it changed while being read (%d bytes, then %d)", path, st.Size(), n)
	}
	return nil
}
