package vmm

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestParseProcStat(t *testing.T) {
	// comm may hold spaces and parentheses; fields are counted after the last ')'.
	rest := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21"
	for _, comm := range []string{"(firecracker)", "(fc vm) x)", "((()", "(a b c d e f g h)"} {
		got, err := ParseProcStat([]byte("4242 " + comm + rest))
		if err != nil || got.StartTime != 987654 || got.State != 'S' {
			t.Errorf("%s: %+v, %v", comm, got, err)
		}
	}
	for _, bad := range []string{"", "1 (x) S 1 2", "1 x S", "1 (x)" + strings.Replace(rest, "987654", "nope", 1)} {
		if _, err := ParseProcStat([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestSameProcess(t *testing.T) {
	self, err := ReadProcStat(os.Getpid())
	if err != nil || self.StartTime == 0 {
		t.Fatalf("self: %+v %v", self, err)
	}
	if err := SameProcess(os.Getpid(), self.StartTime); err != nil {
		t.Errorf("self is not itself: %v", err)
	}
	if err := SameProcess(os.Getpid(), self.StartTime+1); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("wrong start time: %v", err)
	}
	if _, err := ReadProcStat(1 << 30); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing pid: %v", err)
	}
}

func TestReadPSS(t *testing.T) {
	pss, err := ReadPSS(os.Getpid())
	if err != nil || pss <= 0 {
		t.Fatalf("own PSS: %d, %v", pss, err)
	}
	if _, err := ReadPSS(1 << 30); err == nil {
		t.Error("PSS of a process that does not exist")
	}
}
