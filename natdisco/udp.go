package natdisco

import (
	"net"
	"net/netip"
	"time"
)

// UDPConn adapts a *net.UDPConn to Conn.
func UDPConn(c *net.UDPConn) Conn { return udpConn{c} }

type udpConn struct{ c *net.UDPConn }

func (u udpConn) LocalAddr() netip.AddrPort {
	return unmap(u.c.LocalAddr().(*net.UDPAddr).AddrPort())
}

func (u udpConn) WriteTo(b []byte, to netip.AddrPort) error {
	_, err := u.c.WriteToUDPAddrPort(b, to)
	return err
}

func (u udpConn) ReadFrom(b []byte, deadline time.Time) (int, netip.AddrPort, error) {
	if err := u.c.SetReadDeadline(deadline); err != nil {
		return 0, netip.AddrPort{}, err
	}
	return u.c.ReadFromUDPAddrPort(b)
}

func (u udpConn) Close() error { return u.c.Close() }

// ListenUDP is the default Config.Listen: a socket on an ephemeral port of
// every local address of the network's family.
func ListenUDP(network string) (Conn, error) {
	c, err := net.ListenUDP(network, nil)
	if err != nil {
		return nil, err
	}
	return UDPConn(c), nil
}

func interfaceAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out = append(out, p.Addr().Unmap())
		}
	}
	return out, nil
}
