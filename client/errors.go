package client

import (
	"errors"

	"github.com/banger-vm/banger/internal/api"
)

// Error is an error the daemon (or the client, for the connection codes) returns: a stable
// Code to branch on, a Message, and a Hint saying what the user can do about it. Match it
// with errors.As, or with IsNotFound and the other helpers.
type Error = api.Error

// ErrorCode is a stable, machine-readable error identifier.
type ErrorCode = api.ErrorCode

// The error codes. New codes may be added; an unknown code is best treated as
// CodeInternal.
const (
	// CodeBadRequest: the request is invalid (a bad name, size or path); the Message says
	// which part.
	CodeBadRequest = api.CodeBadRequest
	// CodeNotFound: no VM, image, snapshot or kernel has that name.
	CodeNotFound = api.CodeNotFound
	// CodeMethodNotAllowed: the daemon does not serve that method on the endpoint.
	CodeMethodNotAllowed = api.CodeMethodNotAllowed
	// CodeConflict: the name is taken, or the object is in a state that refuses the
	// operation (a running VM to remove without Force, a snapshot in use).
	CodeConflict = api.CodeConflict
	// CodeUnavailable: something the operation needs is missing on the host (a VMM,
	// KVM, the root helper) or the VM's agent does not answer.
	CodeUnavailable = api.CodeUnavailable
	// CodeInternal: a bug or an unexpected failure; the daemon log has details.
	CodeInternal = api.CodeInternal
	// CodeDaemonNotRunning: no daemon answers on the socket (the client's own code).
	CodeDaemonNotRunning = api.CodeDaemonNotRunning
	// CodeUnsafeSocket: the client refused the socket before sending anything: its
	// directory is not private, or another user serves it (the client's own code).
	CodeUnsafeSocket = api.CodeUnsafeSocket
)

// ErrorCodeOf returns the code of err (an *Error anywhere in its chain), or "" when err
// is nil or carries no code (a context cancellation, a local I/O error).
func ErrorCodeOf(err error) ErrorCode {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// IsNotFound reports whether err says the named VM, image, snapshot or kernel does not
// exist.
func IsNotFound(err error) bool { return ErrorCodeOf(err) == CodeNotFound }

// IsConflict reports whether err says the name is taken or the object's state refuses
// the operation.
func IsConflict(err error) bool { return ErrorCodeOf(err) == CodeConflict }

// IsBadRequest reports whether err says the request itself is invalid.
func IsBadRequest(err error) bool { return ErrorCodeOf(err) == CodeBadRequest }

// IsUnavailable reports whether err says something the operation needs is missing or
// not answering (a VMM, the root helper, the VM's agent).
func IsUnavailable(err error) bool { return ErrorCodeOf(err) == CodeUnavailable }

// IsDaemonNotRunning reports whether err says no daemon answers on the socket.
func IsDaemonNotRunning(err error) bool { return ErrorCodeOf(err) == CodeDaemonNotRunning }
