//go:build !unix

package client

import "syscall"

// reuseControl is a no-op where SO_REUSEPORT does not exist; TCP hole
// punching is then unavailable, the rendezvous itself still works.
func reuseControl(network, address string, rc syscall.RawConn) error { return nil }
