//go:build !unix

package client

import "syscall"

// ReusePortControl is a no-op where SO_REUSEPORT does not exist; TCP hole
// punching is then unavailable, the rendezvous itself still works.
func ReusePortControl(network, address string, rc syscall.RawConn) error { return nil }
