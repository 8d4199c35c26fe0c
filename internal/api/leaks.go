package api

import (
	"context"
)

// LeakKind groups what the leak check looks for.
type LeakKind string

const (
	LeakProcess LeakKind = "process" // a VMM process under banger's runtime dir no VM references
	LeakSocket  LeakKind = "socket"  // a socket under the runtime dir no running VM uses
	LeakDir     LeakKind = "dir"     // a VM dir or run dir no VM row references
	LeakLease   LeakKind = "lease"   // an address lease whose VM is gone
	LeakTAP     LeakKind = "tap"     // a TAP beyond the warm pool no running VM uses
	LeakStaging LeakKind = "staging" // leftover staging or temp files of an interrupted build
)

// LeakKinds lists the kinds in the order the checks report them.
func LeakKinds() []LeakKind {
	return []LeakKind{LeakProcess, LeakSocket, LeakDir, LeakLease, LeakTAP, LeakStaging}
}

// Leak is one thing banger made that nothing references any more.
type Leak struct {
	Kind LeakKind `json:"kind"`
	// What names it: a path, "pid N", a TAP name or a lease's address.
	What   string `json:"what"`
	PID    int    `json:"pid,omitempty"`
	Detail string `json:"detail"`
	// Fix says how to clean it by hand; Fixable means `banger doctor --leaks --fix` does.
	Fix     string `json:"fix"`
	Fixable bool   `json:"fixable"`
}

// LeaksResponse answers GET /v1/leaks (a scan) and POST /v1/leaks (clean the fixable
// leaks, then scan again).
type LeaksResponse struct {
	Leaks []Leak `json:"leaks"`
	// Checked counts what was looked at, by kind.
	Checked map[LeakKind]int `json:"checked"`
	// Skipped says which kinds could not be checked, and why (no root helper for TAPs).
	Skipped map[LeakKind]string `json:"skipped,omitempty"`
	// Fixed lists what a POST removed; FixErrors what it could not.
	Fixed     []Leak   `json:"fixed,omitempty"`
	FixErrors []string `json:"fix_errors,omitempty"`
}

// Leaks asks the daemon what it owns that nothing references.
func (c *Client) Leaks(ctx context.Context) (LeaksResponse, error) {
	return get[LeaksResponse](ctx, c, "/leaks", nil)
}

// FixLeaks has the daemon remove the leaks it can remove safely, and scan again.
func (c *Client) FixLeaks(ctx context.Context) (LeaksResponse, error) {
	return post[LeaksResponse](ctx, c, "/leaks", struct{}{})
}
