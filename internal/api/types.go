// Package api holds the wire types of the owner daemon's HTTP API (over its Unix socket)
// and the one client the CLI and the tests use to talk to it.
package api

import (
	"fmt"
	"net/http"
	"time"
)

// Version is the API path prefix; a breaking change gets a new prefix, not a changed meaning.
const Version = "v1"

// ErrorCode is a stable, machine-readable error identifier: scripts may match on it.
type ErrorCode string

const (
	CodeBadRequest       ErrorCode = "bad_request"
	CodeNotFound         ErrorCode = "not_found"
	CodeMethodNotAllowed ErrorCode = "method_not_allowed"
	CodeConflict         ErrorCode = "conflict"
	CodeUnavailable      ErrorCode = "unavailable"
	CodeInternal         ErrorCode = "internal"
	// CodeDaemonNotRunning is produced by the client, never by the daemon.
	CodeDaemonNotRunning ErrorCode = "daemon_not_running"
	// CodeUnsafeSocket is produced by the client: the socket may not be our daemon's.
	CodeUnsafeSocket ErrorCode = "unsafe_socket"
)

// HTTPStatus maps a code to the status the daemon answers with.
func (c ErrorCode) HTTPStatus() int {
	switch c {
	case CodeBadRequest:
		return http.StatusBadRequest
	case CodeNotFound:
		return http.StatusNotFound
	case CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case CodeConflict:
		return http.StatusConflict
	case CodeUnavailable, CodeDaemonNotRunning:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// Error is the body of every non-2xx answer: {"error": {...}}.
type Error struct {
	Code    ErrorCode `json:"code"`
	Message string    `json:"message"`
	// Hint says what the user can do about it.
	Hint string `json:"hint,omitempty"`
}

func (e *Error) Error() string {
	if e.Hint != "" {
		return fmt.Sprintf("%s (%s)", e.Message, e.Hint)
	}
	return e.Message
}

// Errorf builds a typed error.
func Errorf(code ErrorCode, hint, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), Hint: hint}
}

// ErrorBody wraps Error on the wire.
type ErrorBody struct {
	Error *Error `json:"error"`
}

// StatusResponse answers GET /v1/status.
type StatusResponse struct {
	Version    string    `json:"version"`
	APIVersion string    `json:"api_version"`
	PID        int       `json:"pid"`
	UID        int       `json:"uid"`
	StartedAt  time.Time `json:"started_at"`
	Socket     string    `json:"socket"`
	DataDir    string    `json:"data_dir"`
	StateDB    string    `json:"state_db"`
	LogFile    string    `json:"log_file,omitempty"`
	ConfigFile string    `json:"config_file"`
	// Startup lists the stages the daemon went through when it started.
	Startup []Stage `json:"startup"`
}

// Stage is one timed step of a lifecycle operation.
type Stage struct {
	Name       string  `json:"name"`
	DurationMS float64 `json:"duration_ms"`
	Error      string  `json:"error,omitempty"`
}

// Event is one recorded lifecycle stage.
type Event struct {
	ID         int64     `json:"id"`
	At         time.Time `json:"at"`
	Operation  string    `json:"operation"`
	Subject    string    `json:"subject,omitempty"`
	Stage      string    `json:"stage"`
	DurationMS float64   `json:"duration_ms"`
	Error      string    `json:"error,omitempty"`
}

// EventsResponse answers GET /v1/events.
type EventsResponse struct {
	Events []Event `json:"events"`
}

// CheckStatus is a doctor verdict.
type CheckStatus string

const (
	Pass CheckStatus = "PASS"
	Warn CheckStatus = "WARN"
	Fail CheckStatus = "FAIL"
)

// CheckResult is one doctor check.
type CheckResult struct {
	Name   string      `json:"name"`
	Status CheckStatus `json:"status"`
	Detail string      `json:"detail"`
	Hint   string      `json:"hint,omitempty"`
}

// DoctorResponse answers GET /v1/doctor.
type DoctorResponse struct {
	Checks []CheckResult `json:"checks"`
}

// ShutdownRequest asks the daemon to stop; it answers before it goes.
type ShutdownRequest struct {
	Reason string `json:"reason,omitempty"`
}
