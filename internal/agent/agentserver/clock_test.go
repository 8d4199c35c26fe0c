package agentserver

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/internal/agent"
)

// TestClockRejectsBadRequests: a clock or entropy the guest must not take is refused
// before the clock changes (only refusals are sent here: a valid request sets this host's
// clock; the e2e pause test sends real ones). Sync works as any user.
func TestClockRejectsBadRequests(t *testing.T) {
	s := New(Config{IdentityRoot: t.TempDir(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	now := time.Now().UnixNano()
	if _, err := checkClock(agent.ClockRequest{UnixNano: now}); err != nil {
		t.Fatalf("a clock without entropy is refused: %v", err)
	}
	cases := []struct {
		name string
		req  string
		want string
	}{
		{"clock at zero", `{"unix_nano":0}`, "wall clock"},
		{"clock negative", `{"unix_nano":-5}`, "wall clock"},
		{"clock far future", `{"unix_nano":9000000000000000000}`, "wall clock"},
		{"too little entropy", `{"unix_nano":` + jsonInt(now) + `,"entropy":"AAAA"}`, "entropy"},
		{"too much entropy", `{"unix_nano":` + jsonInt(now) + `,"entropy":"` + strings.Repeat("A", 8000) + `"}`, "entropy"},
		{"not JSON", `unix_nano=1`, ""},
		{"unknown field", `{"unix_nano":` + jsonInt(now) + `,"cmd":"reboot"}`, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rec := do(t, s, "POST", agent.PathClock, strings.NewReader(c.req), map[string]string{"Content-Type": "application/json"})
			wantError(t, rec, 400, agent.CodeBadRequest)
			if !strings.Contains(rec.Body.String(), c.want) {
				t.Errorf("error %s lacks %q", rec.Body, c.want)
			}
		})
	}
	wantError(t, do(t, s, "GET", agent.PathClock, nil, nil), 405, agent.CodeMethodNotAllowed)
	wantError(t, do(t, s, "GET", agent.PathSync, nil, nil), 405, agent.CodeMethodNotAllowed)

	rec := do(t, s, "POST", agent.PathSync, bytes.NewReader(nil), nil)
	var sr agent.SyncResponse
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &sr) != nil || sr.DurationMS < 0 {
		t.Fatalf("sync = %d %s", rec.Code, rec.Body)
	}
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }
