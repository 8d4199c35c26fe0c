package update

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWriteArtifactRoundTrips: what WriteArtifact packs is what Extract accepts and
// unpacks, byte for byte, and packing is deterministic.
func TestWriteArtifactRoundTrips(t *testing.T) {
	src := t.TempDir()
	for _, b := range Binaries() {
		if err := os.WriteFile(filepath.Join(src, b), []byte("#!/bin/sh\necho "+b+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var one, two bytes.Buffer
	if err := WriteArtifact(&one, src, gzip.BestSpeed); err != nil {
		t.Fatal(err)
	}
	if err := WriteArtifact(&two, src, gzip.BestSpeed); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(one.Bytes(), two.Bytes()) {
		t.Error("packing the same binaries twice made different artifacts")
	}
	tarball := filepath.Join(t.TempDir(), ArtifactName("v1.2.3", "linux-amd64"))
	if err := os.WriteFile(tarball, one.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := t.TempDir()
	if err := Extract(tarball, dst); err != nil {
		t.Fatalf("Extract refuses what WriteArtifact wrote: %v", err)
	}
	for _, b := range Binaries() {
		got, err := os.ReadFile(filepath.Join(dst, b))
		if err != nil {
			t.Fatal(err)
		}
		if want := "#!/bin/sh\necho " + b + "\n"; string(got) != want {
			t.Errorf("%s extracted as %q, want %q", b, got, want)
		}
		if st, _ := os.Stat(filepath.Join(dst, b)); st.Mode().Perm() != 0o755 {
			t.Errorf("%s extracted with mode %v", b, st.Mode())
		}
	}
	if got := filepath.Base(tarball); got != "banger-v1.2.3-linux-amd64.tar.gz" {
		t.Errorf("ArtifactName = %q", got)
	}
}

func TestWriteArtifactRefusesMissingOrOddBinaries(t *testing.T) {
	src := t.TempDir()
	os.WriteFile(filepath.Join(src, "banger"), []byte("x"), 0o755)
	os.WriteFile(filepath.Join(src, "banger-agent"), []byte("x"), 0o755)
	var buf bytes.Buffer
	if err := WriteArtifact(&buf, src, gzip.BestSpeed); err == nil || !strings.Contains(err.Error(), "banger-init") {
		t.Errorf("without banger-init: %v", err)
	}
	os.Mkdir(filepath.Join(src, "banger-init"), 0o755)
	if err := WriteArtifact(&buf, src, gzip.BestSpeed); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("banger-init a directory: %v", err)
	}
}
