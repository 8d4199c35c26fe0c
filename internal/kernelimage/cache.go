package kernelimage

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Ensure returns the path of an ELF vmlinux for the kernel at kernelPath. An ELF input is
// checked and returned as is. A bzImage is extracted once into cacheDir, keyed by the
// SHA-256 of its content (so a kernel replaced in place is extracted again), and written
// atomically: concurrent callers, in this process or others, may both extract, but each
// renames a complete file into place, so a reader never sees a partial vmlinux.
func Ensure(cacheDir, kernelPath string) (string, error) {
	path, _, err := EnsureInfo(cacheDir, kernelPath)
	return path, err
}

// EnsureInfo is Ensure that also returns the vmlinux's facts.
func EnsureInfo(cacheDir, kernelPath string) (string, Info, error) {
	data, err := os.ReadFile(kernelPath)
	if err != nil {
		return "", Info{}, fmt.Errorf("read kernel: %w", err)
	}
	if bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		info, err := InspectELF(data)
		if err != nil {
			return "", Info{}, fmt.Errorf("kernel %s: %w", kernelPath, err)
		}
		return kernelPath, info, nil
	}
	sum := sha256.Sum256(data)
	dst := filepath.Join(cacheDir, "vmlinux-"+hex.EncodeToString(sum[:]))
	if cached, err := os.ReadFile(dst); err == nil {
		// Files only appear here by rename of a complete extraction; still check the
		// header, so a damaged cache entry is replaced rather than handed to a VMM.
		if info, err := InspectELF(cached); err == nil {
			v, _ := bzImageVersion(data)
			info.Version = v
			info.Compression, _ = detectFromImage(data)
			return dst, info, nil
		}
	}
	vmlinux, info, err := Extract(data)
	if err != nil {
		return "", Info{}, fmt.Errorf("kernel %s: %w", kernelPath, err)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", Info{}, fmt.Errorf("kernel cache: %w", err)
	}
	if err := writeAtomic(dst, bytes.NewReader(vmlinux)); err != nil {
		return "", Info{}, fmt.Errorf("kernel cache: %w", err)
	}
	return dst, info, nil
}

func bzImageVersion(image []byte) (string, error) {
	_, v, err := bzImagePayload(image)
	return v, err
}

func detectFromImage(image []byte) (Compression, error) {
	p, _, err := bzImagePayload(image)
	if err != nil {
		return "", err
	}
	return detect(p)
}

// writeAtomic writes r to dst through a temporary file in the same directory, synced and
// renamed over dst, so dst is either absent, the old file, or the whole new one.
func writeAtomic(dst string, r io.Reader) (err error) {
	f, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = io.Copy(f, r); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), dst)
}
