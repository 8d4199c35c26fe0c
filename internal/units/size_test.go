package units

import "testing"

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"4096": 4096, "8GiB": 8 << 30, "8gib": 8 << 30, "512M": 512 << 20, "1.5G": 3 << 29,
		"10GB": 10_000_000_000, " 2 KiB ": 2048, "0": 0,
	}
	for in, want := range good {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "-1G", "ten", "1e400", "NaN"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) succeeded, want error", in)
		}
	}
}

func TestFormatSize(t *testing.T) {
	cases := map[int64]string{0: "0B", 1023: "1023B", 8 << 30: "8GiB", 3 << 19: "1.5MiB"}
	for in, want := range cases {
		if got := FormatSize(in); got != want {
			t.Errorf("FormatSize(%d) = %q, want %q", in, got, want)
		}
	}
}
