package hostinfo

import (
	"strings"
	"testing"
)

func TestTSCFromCPUInfo(t *testing.T) {
	in := "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu MHz\t\t: 2596.098\n\nprocessor\t: 1\ncpu MHz\t\t: 1200.000\n"
	n, err := tscFromCPUInfo(strings.NewReader(in))
	if err != nil || n != 2596098 {
		t.Fatalf("got %d, %v", n, err)
	}
	if _, err := tscFromCPUInfo(strings.NewReader("processor\t: 0\n")); err == nil {
		t.Fatal("no cpu MHz accepted")
	}
	if _, err := tscFromCPUInfo(strings.NewReader("cpu MHz : fast\n")); err == nil {
		t.Fatal("garbage accepted")
	}
}

func TestTSCKHzHere(t *testing.T) {
	n, err := TSCKHz()
	if err != nil {
		t.Skipf("this host does not report a TSC frequency: %v", err)
	}
	// Any x86 CPU made this century runs its TSC between 500 MHz and 10 GHz.
	if n < 500_000 || n > 10_000_000 {
		t.Fatalf("TSC %d kHz is implausible", n)
	}
}
