//go:build !linux

package api

import (
	"errors"
	"net"
)

// peerUID needs SO_PEERCRED; banger's daemon runs on Linux only.
func peerUID(net.Conn) (int, error) {
	return -1, errors.New("checking the daemon's user needs Linux (SO_PEERCRED)")
}
