package punch

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// This file is a tiny deterministic network for driving two Machines back
// to back with a fake clock: hosts with local addresses, optional NAT boxes
// (endpoint-independent or symmetric mapping, port-restricted filtering, no
// hairpinning), per-direction delays and a drop rule. Time is a Duration
// since the start of the run; nothing sleeps.

var (
	epoch      = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	serverAddr = netip.MustParseAddrPort("192.0.2.100:3478")
)

// natBox is a NAT for IPv4. Mappings are per internal address and, when
// symmetric, per destination; external ports are handed out from 40000 up.
type natBox struct {
	ip        netip.Addr
	symmetric bool // endpoint-dependent mapping: a new port per destination
	filter    bool // port-restricted: inbound only from addresses sent to
	nextPort  uint16
	mappings  map[mapKey]uint16
	ports     map[uint16]mapKey
	opened    map[mapKey]bool // (internal, remote) pairs we sent to
}

type mapKey struct{ in, dst netip.AddrPort }

func newNAT(ip string, symmetric, filter bool) *natBox {
	return &natBox{
		ip: netip.MustParseAddr(ip), symmetric: symmetric, filter: filter, nextPort: 40000,
		mappings: map[mapKey]uint16{}, ports: map[uint16]mapKey{}, opened: map[mapKey]bool{},
	}
}

// outbound maps a packet from in to dst and returns its external source.
func (n *natBox) outbound(in, dst netip.AddrPort) netip.AddrPort {
	k := mapKey{in: in}
	if n.symmetric {
		k.dst = dst
	}
	p, ok := n.mappings[k]
	if !ok {
		p = n.nextPort
		n.nextPort++
		n.mappings[k] = p
		n.ports[p] = mapKey{in: in, dst: dst}
	}
	n.opened[mapKey{in: in, dst: dst}] = true
	return netip.AddrPortFrom(n.ip, p)
}

// inbound returns the internal address a packet from src to port goes to.
func (n *natBox) inbound(src netip.AddrPort, port uint16) (netip.AddrPort, bool) {
	k, ok := n.ports[port]
	switch {
	case !ok:
		return netip.AddrPort{}, false
	case n.symmetric:
		// Symmetric NATs filter per mapping: only its destination answers.
		return k.in, k.dst == src
	case n.filter:
		return k.in, n.opened[mapKey{in: k.in, dst: src}]
	}
	return k.in, true
}

type host struct {
	name   string
	addrs  []netip.AddrPort // the socket's addresses, at most one per family
	lan    string           // hosts on the same non-empty LAN reach each other's addrs
	nat    *natBox          // translates IPv4; nil: addrs are public
	public netip.AddrPort   // what the server saw: the "bound" address
	start  time.Duration    // when the Machine is created (introduction)
	cfg    Config
	m      *Machine

	upAt, failAt time.Duration // -1 until it happens
	delivered    int           // PUNCH messages handed to Receive
	dropped      int           // arrived before the Machine existed
}

func (h *host) owns(a netip.AddrPort) bool { return slices.Contains(h.addrs, a) }

func (h *host) addrFor(v4 bool) (netip.AddrPort, bool) {
	for _, a := range h.addrs {
		if a.Addr().Is4() == v4 {
			return a, true
		}
	}
	return netip.AddrPort{}, false
}

type flight struct {
	sentAt, at time.Duration
	from, to   *host
	src, dst   netip.AddrPort
	data       []byte
}

type sim struct {
	t     *testing.T
	now   time.Duration
	hosts []*host
	queue []flight
	// delay is the one-way delay from one host to another; default 10 ms.
	delay func(from, to *host) time.Duration
	// drop, if set, drops a routed packet.
	drop func(f *flight) bool
}

func (s *sim) addHost(name, lan string, nat *natBox, addrs ...string) *host {
	h := &host{name: name, lan: lan, nat: nat, upAt: -1, failAt: -1}
	for _, a := range addrs {
		h.addrs = append(h.addrs, netip.MustParseAddrPort(a))
	}
	h.public = h.addrs[0]
	if nat != nil {
		// The client learned its public address from the server with
		// STUN over the same socket: that is the server's mapping.
		h.public = nat.outbound(h.addrs[0], serverAddr)
	}
	s.hosts = append(s.hosts, h)
	return h
}

// introduce configures a and b to punch to each other as the server would:
// the peer's bound address first, then its host candidates.
func (s *sim) introduce(a, b *host, secret wire.Secret) {
	for _, p := range [][2]*host{{a, b}, {b, a}} {
		self, peer := p[0], p[1]
		self.cfg = Config{
			Self: idOf(self.name), Peer: idOf(peer.name), Secret: secret,
			Candidates: append([]netip.AddrPort{peer.public}, peer.addrs...),
		}
	}
}

func idOf(name string) wire.ID {
	var id wire.ID
	copy(id[:], name)
	id[15] = 1
	return id
}

// source returns the source address a packet from h to dst carries on
// the way, mapping it through h's NAT at send time.
func (s *sim) source(h *host, dst netip.AddrPort) (netip.AddrPort, bool) {
	v4 := dst.Addr().Is4()
	local, ok := h.addrFor(v4)
	if !ok {
		return netip.AddrPort{}, false
	}
	if s.sameLAN(h, dst) != nil || !v4 || h.nat == nil {
		return local, true // same LAN: no NAT on the way
	}
	return h.nat.outbound(local, dst), true
}

func (s *sim) sameLAN(h *host, dst netip.AddrPort) *host {
	for _, o := range s.hosts {
		if o != h && o.lan != "" && o.lan == h.lan && o.owns(dst) {
			return o
		}
	}
	return nil
}

// destination returns the host a packet from h (source src) to dst reaches
// at arrival time, when NAT filtering is decided.
func (s *sim) destination(h *host, src, dst netip.AddrPort) *host {
	if o := s.sameLAN(h, dst); o != nil {
		return o
	}
	v4 := dst.Addr().Is4()
	for _, o := range s.hosts {
		if o == h {
			continue
		}
		if v4 && o.nat != nil {
			if o.nat.ip != dst.Addr() || o.nat == h.nat {
				continue // not this NAT, or hairpinning, which it lacks
			}
			if in, ok := o.nat.inbound(src, dst.Port()); ok && o.owns(in) {
				return o
			}
			continue
		}
		if o.owns(dst) {
			return o
		}
	}
	return nil
}

func (s *sim) send(h *host, pkts []Packet) {
	for _, p := range pkts {
		src, ok := s.source(h, p.To)
		if !ok {
			continue
		}
		d := 10 * time.Millisecond
		if s.delay != nil {
			// Delays are per pair of hosts; route as if it arrives.
			if to := s.destinationHost(h, p.To); to != nil {
				d = s.delay(h, to)
			}
		}
		f := flight{sentAt: s.now, at: s.now + d, from: h, src: src, dst: p.To,
			data: slices.Clone(p.Data)}
		if s.drop != nil && s.drop(&f) {
			continue
		}
		// Keep the queue ordered by arrival, FIFO among equal times.
		i, _ := slices.BinarySearchFunc(s.queue, f.at, func(q flight, at time.Duration) int {
			if q.at <= at {
				return -1
			}
			return 1
		})
		s.queue = slices.Insert(s.queue, i, f)
	}
}

// destinationHost guesses the receiving host by address alone, for delays.
func (s *sim) destinationHost(h *host, dst netip.AddrPort) *host {
	for _, o := range s.hosts {
		if o != h && (o.owns(dst) || o.public == dst || (o.nat != nil && o.nat.ip == dst.Addr())) {
			return o
		}
	}
	return nil
}

func (s *sim) deliver(f flight) {
	f.to = s.destination(f.from, f.src, f.dst)
	if f.to == nil {
		return // no route, or filtered by a NAT
	}
	var msg wire.Message
	if wire.Classify(f.data) != wire.KindX || msg.Decode(f.data) != nil || msg.Type.Method != wire.MethodPunch {
		s.t.Fatalf("%s sent a packet that is not a PUNCH: %x", f.from.name, f.data)
	}
	if f.to.m == nil {
		f.to.dropped++
		return
	}
	f.to.delivered++
	s.send(f.to, f.to.m.Receive(&msg, f.src, epoch.Add(s.now)))
}

func (s *sim) observe(h *host) {
	switch h.m.State() {
	case Connected:
		if h.upAt < 0 {
			h.upAt = s.now
		}
	case Failed:
		if h.failAt < 0 {
			h.failAt = s.now
		}
	}
}

func (s *sim) nextEvent() (time.Duration, bool) {
	next, ok := time.Duration(0), false
	consider := func(t time.Duration) {
		if !ok || t < next {
			next, ok = t, true
		}
	}
	for _, h := range s.hosts {
		if h.m == nil {
			consider(h.start)
		} else if n := h.m.Next(); !n.IsZero() {
			consider(n.Sub(epoch))
		}
	}
	if len(s.queue) > 0 {
		consider(s.queue[0].at)
	}
	return next, ok
}

// run plays events until nothing is left or limit is passed.
func (s *sim) run(limit time.Duration) {
	for {
		t, ok := s.nextEvent()
		if !ok || t > limit {
			return
		}
		if t < s.now {
			s.t.Fatalf("time went backwards: %v after %v", t, s.now)
		}
		s.now = t
		now := epoch.Add(t)
		for _, h := range s.hosts {
			if h.m == nil && h.start == t {
				m, err := New(h.cfg, now)
				if err != nil {
					s.t.Fatalf("%s: New: %v", h.name, err)
				}
				h.m = m
			}
		}
		for len(s.queue) > 0 && s.queue[0].at == t {
			f := s.queue[0]
			s.queue = s.queue[1:]
			s.deliver(f)
		}
		for _, h := range s.hosts {
			if h.m == nil {
				continue
			}
			if n := h.m.Next(); !n.IsZero() && !n.After(now) {
				s.send(h, h.m.Tick(now))
			}
			s.observe(h)
		}
	}
}
