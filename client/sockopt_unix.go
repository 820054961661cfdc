//go:build unix

package client

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// ReusePortControl sets SO_REUSEADDR and SO_REUSEPORT before bind, so that a
// TCP connection to the server and the later hole-punching listener and
// simultaneous-open dials can share one local port. Use it as the Control
// of a net.Dialer or net.ListenConfig.
func ReusePortControl(network, address string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}
