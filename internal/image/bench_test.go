package image

import (
	"context"
	"fmt"
	"math/rand"
	"testing"
)

// BenchmarkOCIPull100MB pulls and converts a ~100 MB (compressed and uncompressed: random
// data) three-layer image with 3000 files from an in-process registry: download, digest
// checks, flattening, tar -> ext4, work seed, manifest, fsck and registration.
func BenchmarkOCIPull100MB(b *testing.B) {
	m := newTestManager(b)
	host := serveRegistry(b, nil)
	rng := rand.New(rand.NewSource(1))
	var layers [][]byte
	for l := 0; l < 3; l++ {
		ents := []ent{dir("./", 0o755), dir(fmt.Sprintf("l%d/", l), 0o755)}
		for i := 0; i < 1000; i++ {
			body := make([]byte, 8<<10+rng.Intn(50<<10))
			rng.Read(body)
			ents = append(ents, file(fmt.Sprintf("l%d/f%04d", l, i), string(body), 0o644))
		}
		layers = append(layers, mkTar(b, ents))
	}
	var total int
	for _, l := range layers {
		total += len(l)
	}
	ref, _ := pushImage(b, host, "bench/big:v1", layers...)
	b.SetBytes(int64(total))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := m.Pull(context.Background(), PullOptions{Ref: ref, NoKernel: true}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total)/(1<<20), "MiB/image")
}
