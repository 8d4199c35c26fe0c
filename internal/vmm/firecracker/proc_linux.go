package firecracker

import (
	"errors"
	"os"

	"github.com/banger-vm/banger/internal/vmm"
)

// errNoProcess means /proc has no such process.
var errNoProcess = errors.New("no such process")

// processStartTime returns the process start time that, with the PID, identifies the VMM.
func processStartTime(pid int) (uint64, error) {
	st, err := vmm.ReadProcStat(pid)
	if errors.Is(err, os.ErrNotExist) {
		return 0, errNoProcess
	}
	if err != nil {
		return 0, err
	}
	return st.StartTime, nil
}

// processState returns the process state letter ("R", "S", "Z", ...).
func processState(pid int) (string, error) {
	st, err := vmm.ReadProcStat(pid)
	if err != nil {
		return "", errNoProcess
	}
	return string(st.State), nil
}
