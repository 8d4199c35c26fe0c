package initramfs

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
)

// realBenchSpec uses the test kernel and, as stand-ins for banger-init and
// banger-agent, busybox from the test assets when present (a ~2 MB static
// binary, close to the real ones), else two small generated files.
func realBenchSpec(tb testing.TB) Spec {
	k := testAssets(tb)
	bb := filepath.Join(filepath.Dir(k.Root), "busybox", "bin", "busybox")
	if _, err := os.Stat(bb); err == nil {
		return Spec{InitBinary: bb, AgentBinary: bb, ModulesDir: k.ModulesDir, BangerVersion: "bench"}
	}
	i, a := fakeBinaries(tb, string(bytes.Repeat([]byte("init"), 1<<18)), string(bytes.Repeat([]byte("agent"), 1<<18)))
	return Spec{InitBinary: i, AgentBinary: a, ModulesDir: k.ModulesDir, BangerVersion: "bench"}
}

// BenchmarkBuildRealKernel is a cold build: index, resolve, read, compress.
func BenchmarkBuildRealKernel(b *testing.B) {
	spec := realBenchSpec(b)
	var n int64
	for b.Loop() {
		cw := &countWriter{}
		if _, err := Build(context.Background(), spec, cw); err != nil {
			b.Fatal(err)
		}
		n = cw.n
	}
	b.ReportMetric(float64(n), "archive-bytes")
}

// BenchmarkEnsureHitRealKernel is the cost paid at every VM start when the archive is
// cached: "hashed" resolves the module list and hashes all inputs (every start before the
// daemon kept a Memo); "memo" checks the inputs' identities through a Memo, as the daemon
// does now.
func BenchmarkEnsureHitRealKernel(b *testing.B) {
	spec := realBenchSpec(b)
	for _, bc := range []struct {
		name string
		memo *Memo
	}{{"hashed", nil}, {"memo", NewMemo()}} {
		b.Run(bc.name, func(b *testing.B) {
			c := Cache{Dir: b.TempDir(), Memo: bc.memo}
			if _, err := c.Ensure(context.Background(), spec); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				r, err := c.Ensure(context.Background(), spec)
				if err != nil || !r.Hit {
					b.Fatal(err, r.Hit)
				}
			}
		})
	}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

// TestMeasureRealKernel logs sizes and times (never asserted: speed is for
// benchmarks). Run with -v to see them.
func TestMeasureRealKernel(t *testing.T) {
	spec := realBenchSpec(t)
	ctx := context.Background()

	start := time.Now()
	var full bytes.Buffer
	m, err := Build(ctx, spec, &full)
	must(t, err)
	cold := time.Since(start)

	noMods := spec
	noMods.ModulesDir, noMods.KernelRelease = "", m.KernelRelease
	var bare bytes.Buffer
	_, err = Build(ctx, noMods, &bare)
	must(t, err)

	var modRaw int64
	for _, mod := range m.Modules {
		st, err := os.Stat(filepath.Join(spec.ModulesDir, mod.Source))
		must(t, err)
		modRaw += st.Size()
	}
	zr, err := gzip.NewReader(bytes.NewReader(full.Bytes()))
	must(t, err)
	cpioLen, err := io.Copy(io.Discard, zr)
	must(t, err)

	c := Cache{Dir: t.TempDir()}
	start = time.Now()
	_, err = c.Ensure(ctx, spec)
	must(t, err)
	miss := time.Since(start)
	start = time.Now()
	r, err := c.Ensure(ctx, spec)
	must(t, err)
	hit := time.Since(start)
	if !r.Hit {
		t.Fatal("second Ensure missed")
	}
	t.Logf("stand-ins: init %s, agent %s", spec.InitBinary, spec.AgentBinary)
	t.Logf("%d modules, %d bytes uncompressed; modules part of the gzip archive ~%d bytes",
		len(m.Modules), modRaw, full.Len()-bare.Len())
	t.Logf("archive: %d bytes gzip (%d bytes cpio); without modules %d bytes", full.Len(), cpioLen, bare.Len())
	t.Logf("times: Build %v, Ensure miss %v, Ensure hit %v", cold, miss, hit)
}
