package image

import "fmt"

// Defaults of Limits.
const (
	DefaultMaxImageBytes int64 = 32 << 30
	DefaultMaxLayers           = 128
)

// Limits bound what an image may make banger download, decompress and store. Images are
// untrusted: a few kilobytes of archive can claim terabytes.
type Limits struct {
	// MaxBytes caps an image: the decompressed bytes of all its OCI layers together (so
	// of each layer), the file data of a tar, an imported ext4's size, a build's --size.
	// 0 = DefaultMaxImageBytes (config images.max_size).
	MaxBytes int64
	// MaxLayers caps an OCI image's layer count. 0 = DefaultMaxLayers (config
	// images.max_layers).
	MaxLayers int
}

func (m *Manager) limits() Limits {
	l := m.Limits
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxImageBytes
	}
	if l.MaxLayers <= 0 {
		l.MaxLayers = DefaultMaxLayers
	}
	return l
}

// LimitError is an image refused for exceeding Limits.
type LimitError struct{ msg string }

func (e *LimitError) Error() string { return e.msg }

// tooBig is the error for an image over MaxBytes.
func (l Limits) tooBig(what string, n int64) error {
	return &LimitError{fmt.Sprintf("%s: %d MiB, more than the %d MiB an image may hold: refused (raise images.max_size if it is meant to be this big)", what, n>>20, l.MaxBytes>>20)}
}
