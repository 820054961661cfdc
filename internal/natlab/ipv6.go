//go:build linux

package natlab

import (
	"fmt"
	"net"
	"net/netip"
)

// IPv6 in the lab (RouterSpec.IPv6). The public segment carries
// 2001:db8::/64 (RFC 3849 documentation space) beside 203.0.113.0/24:
// the server has 2001:db8::1 and 2001:db8::2, router n has 2001:db8::100:n
// on its WAN and routes 2001:db8:0:n::/64 to its LAN, where it is ::1 and
// its hosts ::2 and up. There is no NAT66: a host's IPv6 address is its
// public address. The server and every IPv6 router hold a route to every
// other IPv6 router's LAN prefix (no routing protocol, no default route).
// Namespaces without IPv6 routers keep IPv6 disabled, as before.
var (
	publicNet6   = netip.MustParsePrefix("2001:db8::/64")
	serverAddr6a = netip.MustParseAddr("2001:db8::1")
	serverAddr6b = netip.MustParseAddr("2001:db8::2")
)

// ServerAddrs6 are the server host's two public IPv6 addresses.
func (l *Lab) ServerAddrs6() (netip.Addr, netip.Addr) { return serverAddr6a, serverAddr6b }

// Addr6 is a host's global IPv6 address, and false for a host without one
// (behind a router without IPv6, or public).
func (l *Lab) Addr6(hostName string) (netip.Addr, bool) {
	h := l.host(hostName)
	return h.addr6, h.addr6.IsValid()
}

// ListenUDP6 opens an IPv6 UDP socket inside a host's namespace, on all
// addresses. Close it when done.
func (l *Lab) ListenUDP6(hostName string, port uint16) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := inNetns(l.host(hostName).ns, func() error {
		var err error
		c, err = net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6unspecified, Port: int(port)})
		return err
	})
	return c, err
}

// enableIPv6 turns IPv6 on in a namespace that addNetns made without it,
// for every interface, with duplicate address detection off (addresses are
// usable at once) and no router advertisements (routes are static).
func enableIPv6(ns string) error {
	return sysctl(ns,
		"net.ipv6.conf.all.accept_dad=0",
		"net.ipv6.conf.default.accept_dad=0",
		"net.ipv6.conf.all.accept_ra=0",
		"net.ipv6.conf.default.accept_ra=0",
		"net.ipv6.conf.all.disable_ipv6=0",
		"net.ipv6.conf.default.disable_ipv6=0",
	)
}

// firewall6 is the stateful IPv6 firewall of a dual-stack router: it
// forwards everything from the LAN, and from the WAN only packets of
// connections conntrack already knows (a reply to an inside host's own
// traffic, which for UDP means from the exact remote address and port it
// sent to: address-and-port-dependent filtering, no mapping at all).
// ICMPv6 errors of known flows come in as related.
const firewall6 = `table ip6 ewffw6 {
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "wan0" ct state established,related accept
    iifname "wan0" drop
  }
}
`

func (l *Lab) addRouterIPv6(r *router) error {
	r.wan6 = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: 0x01, 15: byte(r.idx)})
	r.lan6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 6: byte(r.idx >> 8), 7: byte(r.idx), 15: 1}), 64)
	if err := enableIPv6(r.ns); err != nil {
		return err
	}
	if err := sysctl(r.ns, "net.ipv6.conf.all.forwarding=1"); err != nil {
		return err
	}
	if err := ipn(r.ns, "-6", "addr", "add", netip.PrefixFrom(r.wan6, publicNet6.Bits()).String(), "dev", "wan0", "nodad"); err != nil {
		return err
	}
	if err := ipn(r.ns, "-6", "addr", "add", r.lan6.String(), "dev", "lan0", "nodad"); err != nil {
		return err
	}
	return nftLoad(r.ns, firewall6)
}

// routeIPv6 gives the server and every IPv6 router a route to each other
// IPv6 router's LAN prefix.
func (l *Lab) routeIPv6() error {
	var v6 []*router
	for _, rs := range l.spec.Routers {
		if r := l.routers[rs.Name]; r.spec.IPv6 {
			v6 = append(v6, r)
		}
	}
	for _, r := range v6 {
		nss := []string{l.hosts[ServerHost].ns}
		for _, o := range v6 {
			if o != r {
				nss = append(nss, o.ns)
			}
		}
		for _, ns := range nss {
			if err := ipn(ns, "-6", "route", "add", r.lan6.Masked().String(), "via", r.wan6.String()); err != nil {
				return fmt.Errorf("natlab: route %v: %w", r.lan6, err)
			}
		}
	}
	return nil
}

func addHostIPv6(h *host, r *router) error {
	a := r.lan6.Addr().As16()
	a[15] = byte(1 + r.nextHost)
	h.addr6 = netip.AddrFrom16(a)
	if err := enableIPv6(h.ns); err != nil {
		return err
	}
	if err := ipn(h.ns, "-6", "addr", "add", netip.PrefixFrom(h.addr6, 64).String(), "dev", "eth0", "nodad"); err != nil {
		return err
	}
	return ipn(h.ns, "-6", "route", "add", "default", "via", r.lan6.Addr().String())
}
