package udpio

import (
	"errors"
	"net"
	"net/netip"
)

func netipUnmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
