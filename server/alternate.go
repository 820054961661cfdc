package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"syscall"
)

// listenAlternate sets up RFC 5780 (Config.Alternate): it finds the
// primary address among listen, opens the UDP sockets of the other
// [IP][port] combinations, and marks every primary socket and the new ones
// with their role. listen must already be open (d.addrs, d.udp).
func (d *Daemon) listenAlternate(listen []string, alternate string) error {
	altHost, altPort, err := net.SplitHostPort(alternate)
	if err != nil {
		return fmt.Errorf("%w: Alternate %q: %v", errConfig, alternate, err)
	}
	port, err := strconv.ParseUint(altPort, 10, 16)
	if err != nil {
		return fmt.Errorf("%w: Alternate %q: bad port", errConfig, alternate)
	}
	var altIP netip.Addr
	if altHost != "" {
		if altIP, err = netip.ParseAddr(altHost); err != nil {
			return fmt.Errorf("%w: Alternate %q: the host must be an IP address", errConfig, alternate)
		}
		altIP = altIP.Unmap()
	}
	// The primary: the first listen address with a concrete IP of the
	// alternate's family (any family when the alternate gives no IP).
	prim := -1
	for i, a := range d.addrs {
		ip := a.Addr().Unmap()
		if ip.IsUnspecified() || altIP.IsValid() && ip.Is4() != altIP.Is4() {
			continue
		}
		if h, _, _ := net.SplitHostPort(listen[i]); h == "" {
			continue
		}
		prim = i
		break
	}
	if prim < 0 {
		return fmt.Errorf("%w: Alternate %q needs a listen address with a concrete IP of the same family (OTHER-ADDRESS must name one)", errConfig, alternate)
	}
	p := d.addrs[prim]
	pIP := p.Addr().Unmap()
	if !altIP.IsValid() {
		altIP = pIP
	}
	a := &rfc5780{twoIPs: altIP != pIP}
	ips := []netip.Addr{pIP, altIP}
	nIP := 1
	if a.twoIPs {
		nIP = 2
	}
	if uint16(port) == p.Port() && port != 0 {
		return fmt.Errorf("%w: Alternate %q: the alternate port must differ from the primary's %d", errConfig, alternate, p.Port())
	}
	// The primary's sockets (every reader of that listen address).
	for _, u := range d.udp {
		if la := u.c.LocalAddr().(*net.UDPAddr).AddrPort(); la.Addr().Unmap() == pIP && la.Port() == p.Port() {
			u.alt, u.altI, u.altJ, u.altIP4 = a, 0, 0, pIP.Is4()
			if a.sock[0][0] == nil {
				a.sock[0][0] = u
			}
		}
	}
	a.addr[0][0] = netip.AddrPortFrom(pIP, p.Port())
	var lastErr error
	for attempt := 0; attempt < 10; attempt++ {
		socks, err := openAlternates(a, ips[:nIP], p.Port(), uint16(port))
		if err == nil {
			for _, u := range socks {
				d.udp = append(d.udp, u)
			}
			d.alt = a
			return nil
		}
		lastErr = err
		if port != 0 || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
	}
	return fmt.Errorf("server: alternate %s: %w", alternate, lastErr)
}

// openAlternates opens the sockets [0][1], and with two IPs [1][1] and
// [1][0], and records them in a. With port 0 the alternate port is the one
// the kernel picks for the first.
func openAlternates(a *rfc5780, ips []netip.Addr, primPort, altPort uint16) ([]*udpSocket, error) {
	var socks []*udpSocket
	fail := func(err error) ([]*udpSocket, error) {
		for _, u := range socks {
			u.c.Close()
		}
		return nil, err
	}
	type slot struct{ i, j uint8 }
	slots := []slot{{0, 1}}
	if len(ips) == 2 {
		slots = append(slots, slot{1, 1}, slot{1, 0})
	}
	for _, s := range slots {
		p := primPort
		if s.j == 1 {
			p = altPort
		}
		pc, err := (&net.ListenConfig{}).ListenPacket(context.Background(), "udp",
			netip.AddrPortFrom(ips[s.i], p).String())
		if err != nil {
			return fail(err)
		}
		c := pc.(*net.UDPConn)
		bound := c.LocalAddr().(*net.UDPAddr).AddrPort()
		if s.j == 1 {
			altPort = bound.Port()
		}
		u := &udpSocket{c: c, alt: a, altI: s.i, altJ: s.j, altIP4: ips[0].Is4()}
		socks = append(socks, u)
		a.addr[s.i][s.j] = netip.AddrPortFrom(ips[s.i], bound.Port())
		a.sock[s.i][s.j] = u
	}
	return socks, nil
}

// AlternateAddrs returns the RFC 5780 addresses the daemon answers on, by
// [IP][port] index ([0][0] the primary), and false when Config.Alternate is
// off. With one IP, only [0][0] and [0][1] are valid.
func (d *Daemon) AlternateAddrs() ([2][2]netip.AddrPort, bool) {
	if d.alt == nil {
		return [2][2]netip.AddrPort{}, false
	}
	return d.alt.addr, true
}
