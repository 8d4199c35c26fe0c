package agentserver

// POST /v1/sync and /v1/clock: around a pause. The host asks for a sync right before it
// saves the VM, so that its disks hold everything written before the pause even if the
// saved state is later discarded; after a resume it sets the clock (which stopped with the
// VM) and reseeds the random pool.

import (
	"fmt"
	"net/http"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
)

func (s *Server) handleSync(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	// sync(2) waits for every filesystem's data and metadata to reach its device.
	unix.Sync()
	writeJSON(w, http.StatusOK, agent.SyncResponse{DurationMS: float64(time.Since(start).Microseconds()) / 1000})
}

// checkClock validates a ClockRequest in full, before anything changes.
func checkClock(req agent.ClockRequest) (time.Time, error) {
	if err := checkWallClock(req.UnixNano); err != nil {
		return time.Time{}, err
	}
	if n := len(req.Entropy); n != 0 && (n < agent.MinIdentityEntropy || n > agent.MaxIdentityEntropy) {
		return time.Time{}, fmt.Errorf("entropy: %d bytes, want none or %d-%d", n, agent.MinIdentityEntropy, agent.MaxIdentityEntropy)
	}
	return time.Unix(0, req.UnixNano), nil
}

// checkWallClock refuses a time before 2020 or after 2200: not a clock to set.
func checkWallClock(unixNano int64) error {
	if unixNano < 1577836800*int64(time.Second) || unixNano > 7258118400*int64(time.Second) {
		return fmt.Errorf("unix_nano %d is not a plausible wall clock", unixNano)
	}
	return nil
}

func (s *Server) handleClock(w http.ResponseWriter, r *http.Request) {
	var req agent.ClockRequest
	if !decodeJSON(w, r, &req) {
		return
	}
	now, err := checkClock(req)
	if err != nil {
		writeError(w, agent.CodeBadRequest, err.Error())
		return
	}
	step := time.Until(now)
	ts := unix.NsecToTimespec(now.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		writeError(w, agent.CodeInternal, "set the clock: "+err.Error())
		return
	}
	res := agent.ClockResponse{StepMS: float64(step.Microseconds()) / 1000}
	if len(req.Entropy) > 0 {
		note, err := reseed(req.Entropy)
		if err != nil {
			writeError(w, agent.CodeInternal, "reseed the random pool: "+err.Error())
			return
		}
		res.Note = note
	}
	s.log.Info("clock set", "step_ms", res.StepMS)
	writeJSON(w, http.StatusOK, res)
}
