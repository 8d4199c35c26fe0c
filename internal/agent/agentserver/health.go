package agentserver

import (
	"encoding/json"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/agent"
)

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.Health())
}

// Health gathers the facts /v1/healthz reports. Facts that cannot be read are left empty
// and named in Warnings: health is about the agent answering, not about every fact.
func (s *Server) Health() agent.Health {
	h := agent.Health{
		Status:             "ok",
		AgentVersion:       s.cfg.Version,
		AgentUptimeSeconds: time.Since(s.start).Seconds(),
		Time:               time.Now().UTC(),
		Interfaces:         []agent.Interface{},
	}
	warn := func(what string, err error) { h.Warnings = append(h.Warnings, what+": "+err.Error()) }

	if b, err := os.ReadFile(filepath.Join(s.cfg.ProcDir, "uptime")); err != nil {
		warn("uptime", err)
	} else if f := strings.Fields(string(b)); len(f) > 0 {
		if v, err := strconv.ParseFloat(f[0], 64); err == nil {
			h.UptimeSeconds = v
		}
	}

	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		warn("uname", err)
	} else {
		h.Kernel = agent.Kernel{
			Release: unix.ByteSliceToString(u.Release[:]),
			Version: unix.ByteSliceToString(u.Version[:]),
			Machine: unix.ByteSliceToString(u.Machine[:]),
		}
	}

	if hn, err := os.Hostname(); err != nil {
		warn("hostname", err)
	} else {
		h.Hostname = hn
	}

	if ifs, err := net.Interfaces(); err != nil {
		warn("interfaces", err)
	} else {
		for _, ifc := range ifs {
			e := agent.Interface{Name: ifc.Name, Up: ifc.Flags&net.FlagUp != 0, Addrs: []string{}}
			if len(ifc.HardwareAddr) > 0 {
				e.MAC = ifc.HardwareAddr.String()
			}
			if addrs, err := ifc.Addrs(); err == nil {
				for _, a := range addrs {
					e.Addrs = append(e.Addrs, a.String())
				}
			}
			h.Interfaces = append(h.Interfaces, e)
		}
	}

	if comm, err := os.ReadFile(filepath.Join(s.cfg.ProcDir, "1", "comm")); err != nil {
		warn("pid1", err)
	} else {
		h.PID1 = strings.TrimSpace(string(comm))
	}

	if b, err := os.ReadFile(s.cfg.BootStagesPath); err == nil {
		if json.Valid(b) {
			h.BootStages = json.RawMessage(b)
		} else {
			h.Warnings = append(h.Warnings, "boot stages: "+s.cfg.BootStagesPath+" is not valid JSON")
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		warn("boot stages", err)
	}
	return h
}
