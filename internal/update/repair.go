package update

import (
	"errors"
	"fmt"
)

// RepairReport says what Repair found and did.
type RepairReport struct {
	// InProgress: another process holds the update lock; nothing was looked at.
	InProgress bool `json:"in_progress,omitempty"`
	// Interrupted is the journal of an update that did not finish, when there was one.
	Interrupted *Journal `json:"interrupted,omitempty"`
	Actions     []string `json:"actions,omitempty"`
}

// Empty reports whether nothing needed repairing.
func (r RepairReport) Empty() bool {
	return !r.InProgress && r.Interrupted == nil && len(r.Actions) == 0
}

// Repair finishes off an interrupted update of in: it takes the update lock, puts back the
// previous binaries when an update stopped before it was verified (the previous version
// was known good; the new one never passed doctor), and removes leftover staging files.
func Repair(in Install) (RepairReport, error) {
	l, err := in.TryLock()
	if errors.Is(err, ErrLocked) {
		return RepairReport{InProgress: true}, nil
	}
	if err != nil {
		return RepairReport{}, err
	}
	defer l.Unlock()
	return repairLocked(in)
}

func repairLocked(in Install) (RepairReport, error) {
	var rep RepairReport
	j, ok, err := in.ReadJournal()
	if err != nil {
		return rep, fmt.Errorf("%w: check that banger, banger-init and banger-agent in %s run (`banger version`), then remove the journal", err, in.Dir)
	}
	if ok {
		rep.Interrupted = &j
		acts, err := in.Restore(j)
		rep.Actions = append(rep.Actions, acts...)
		if err != nil {
			return rep, err
		}
		if err := in.RemoveJournal(); err != nil {
			return rep, fmt.Errorf("remove the update journal: %w", err)
		}
		rep.Actions = append(rep.Actions, fmt.Sprintf("ended the interrupted update %s -> %s (phase %s); banger %s is installed", j.From, j.To, j.Phase, j.From))
	}
	for _, p := range in.Cleanup() {
		rep.Actions = append(rep.Actions, "removed leftover "+p)
	}
	return rep, nil
}
