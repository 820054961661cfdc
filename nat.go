package ewf

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ewf-project/ewf/natdisco"
	"github.com/ewf-project/ewf/wire"
)

// natState is the node's NAT discovery: the class of the network it is on,
// cached per network for the node's life, so that moving back to a known
// network costs nothing and a change of address triggers a new check.
type natState struct {
	mu      sync.Mutex
	cache   map[string]natdisco.Class // by network key
	cur     string                    // key of the network the node is on
	class   natdisco.Class
	known   bool
	running bool
	again   bool // the network changed while a check ran
	// last is the public port of the newest mapping discovery saw, when
	// the ports are sequential: where the NAT's counter was, which a peer
	// predicting this node's next ports counts from (counterHint).
	last uint16
}

// NAT returns what discovery learned about this node's NAT (package
// natdisco) and true, or false while the first check has not yet learned
// the mapping or when discovery is off (Config.DisableNATDiscovery). It is
// true a few round trips after start, as soon as the mapping and the port
// pattern are known (what a punch needs); Filtering stays unknown, and
// Hairpin and IPv6 false, until the rest of the check ends, seconds later
// behind a strict NAT. A server without RFC 5780 (ewfd --alternate)
// leaves mapping and filtering unknown.
func (n *Node) NAT() (natdisco.Class, bool) {
	n.nat.mu.Lock()
	defer n.nat.mu.Unlock()
	return n.nat.class, n.nat.known
}

// checkNAT makes sure the class is the one of the network the node is on
// now: from the cache, or measured in the background. It never blocks:
// the node is ready before discovery ends. It runs at start and whenever
// the public address changes.
func (n *Node) checkNAT() {
	if n.cfg.DisableNATDiscovery || n.ctx.Err() != nil {
		return
	}
	key := n.networkKey()
	s := &n.nat
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cache == nil {
		s.cache = make(map[string]natdisco.Class)
	}
	if key == s.cur && (s.known || s.running) {
		return
	}
	s.cur = key
	if c, ok := s.cache[key]; ok {
		s.class, s.known = c, true
		s.last = 0 // the counter has moved since: no hint
		return
	}
	s.known = false
	if s.running {
		s.again = true
		return
	}
	s.running = true
	n.wg.Add(1)
	go n.discoverNAT(key)
}

func (n *Node) discoverNAT(key string) {
	defer n.wg.Done()
	for {
		ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
		s := &n.nat
		res, err := natdisco.Classify(ctx, natdisco.Config{
			Server:  n.currentServer(), // the one answering now (failover.go)
			Server6: n.server6(ctx),
			Listen:  n.natListen,
			Partial: func(r natdisco.Result) {
				if !r.Class.Known() {
					return
				}
				s.mu.Lock()
				if key == s.cur && !s.known {
					s.class, s.known, s.last = r.Class, true, lastPort(r)
				}
				s.mu.Unlock()
			},
		})
		cancel()
		if err != nil {
			n.log.Debug("NAT discovery", "err", err)
		} else {
			n.log.Debug("NAT discovery", "class", res.Class.String(), "mapped", res.Mapped, "ports", res.Ports)
		}
		s.mu.Lock()
		if err == nil || res.Class.IPv6 {
			s.cache[key] = res.Class
		}
		if key == s.cur {
			s.class, s.known = res.Class, true
			if l := lastPort(res); l != 0 || err == nil {
				s.last = l
			}
		}
		if !s.again || n.ctx.Err() != nil {
			s.running = false
			s.mu.Unlock()
			return
		}
		s.again = false
		key = s.cur
		s.mu.Unlock()
	}
}

// lastPort is the port of the newest mapping of a sequential NAT in r, or
// 0 when the ports are not sequential.
func lastPort(r natdisco.Result) uint16 {
	if r.Class.Ports != natdisco.PortsSequential || len(r.Ports) == 0 {
		return 0
	}
	return r.Ports[len(r.Ports)-1]
}

// counterHint is the UDP address this node adds to its SIGNAL when its
// NAT allocates ports in sequence: its public IP and the port of the
// newest mapping discovery saw. A peer that predicts this node's next
// mappings counts from it rather than from the bound port, which can be
// far from the counter: an old mapping the NAT gave the node's socket
// back, or a counter that wrapped since (docs/PROTOCOL.md §20.6).
func (n *Node) counterHint() (wire.Address, bool) {
	n.nat.mu.Lock()
	c, known, last := n.nat.class, n.nat.known, n.nat.last
	n.nat.mu.Unlock()
	pub, _ := n.public.Load().(netip.AddrPort)
	if !known || c.Ports != natdisco.PortsSequential || last == 0 || !pub.Addr().Is4() || last == pub.Port() {
		return wire.Address{}, false
	}
	return wire.Address{Transport: wire.TransportUDP, AddrPort: netip.AddrPortFrom(pub.Addr(), last)}, true
}

// natListen opens discovery's sockets on the node's local address (any
// port), so that they leave through the same interface as the node's.
func (n *Node) natListen(network string) (natdisco.Conn, error) {
	var ip net.IP
	if host, _, err := net.SplitHostPort(n.cfg.LocalAddr); err == nil && host != "" {
		if a, err := netip.ParseAddr(host); err == nil && a.Is4() == (network == "udp4") {
			ip = a.AsSlice()
		}
	}
	c, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
	if err != nil {
		return nil, err
	}
	return natdisco.UDPConn(c), nil
}

// server6 returns an IPv6 address of the server, if its name has one, to
// test global IPv6 reachability.
func (n *Node) server6(ctx context.Context) netip.AddrPort {
	if cur := n.currentServer(); !cur.Addr().Is4() {
		return cur
	}
	host, _, err := net.SplitHostPort(n.cfg.Server)
	if err != nil {
		return netip.AddrPort{}
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPort{} // an IPv4 literal names no IPv6 address
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip6", host)
	if err != nil || len(ips) == 0 {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ips[0], n.server.Port())
}

// networkKey names the network the node is on: its public IPv4 address
// and its own interface addresses. A NAT class belongs to a network; a
// laptop that moves from home to the office and back finds its class in
// the cache.
func (n *Node) networkKey() string {
	var parts []string
	if a, ok := n.public.Load().(netip.AddrPort); ok {
		parts = append(parts, a.Addr().String())
	}
	if as, err := net.InterfaceAddrs(); err == nil {
		for _, a := range as {
			parts = append(parts, a.String())
		}
	}
	slices.Sort(parts[min(1, len(parts)):])
	return strings.Join(parts, ",")
}
