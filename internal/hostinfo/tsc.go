// Package hostinfo reads facts about the host that VM setup depends on.
package hostinfo

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// TSCKHz returns the host's TSC frequency in kHz. Guests under software emulation get it as
// tsc_early_khz=, which stops the guest kernel from calibrating its clock against an
// emulated timer — the calibration that hangs boots on a loaded host.
func TSCKHz() (int, error) {
	// Some kernels export it directly (tsc_freq_khz, from CPUID leaf 0x15 or a patch).
	if data, err := os.ReadFile("/sys/devices/system/cpu/cpu0/tsc_freq_khz"); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && n > 0 {
			return n, nil
		}
	}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("read the TSC frequency: %w", err)
	}
	defer f.Close()
	return tscFromCPUInfo(f)
}

// tscFromCPUInfo takes "cpu MHz" of the first CPU: on x86 with a constant TSC (every CPU
// KVM or QEMU runs on today) it is the frequency the kernel measured for the TSC.
func tscFromCPUInfo(r io.Reader) (int, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(key) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil || mhz <= 0 {
			return 0, fmt.Errorf("bad cpu MHz line %q in /proc/cpuinfo", sc.Text())
		}
		return int(mhz * 1000), nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no cpu MHz in /proc/cpuinfo: cannot tell the TSC frequency")
}
