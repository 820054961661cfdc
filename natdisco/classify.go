package natdisco

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/pion/stun/v3"
)

// Conn is one UDP socket the classifier may use. UDPConn adapts a
// *net.UDPConn; the lab and the tests hand in their own.
type Conn interface {
	// LocalAddr is the socket's bound address (its IP may be unspecified).
	LocalAddr() netip.AddrPort
	// WriteTo sends one datagram.
	WriteTo(b []byte, to netip.AddrPort) error
	// ReadFrom waits until a datagram arrives or the deadline passes, when
	// it returns an error.
	ReadFrom(b []byte, deadline time.Time) (n int, from netip.AddrPort, err error)
	Close() error
}

// Config says where to probe and with what.
type Config struct {
	// Server is the RFC 5780 server (ewfd with --alternate): its primary
	// address. Its family decides which family's NAT is classified.
	Server netip.AddrPort

	// Server6 is an IPv6 address of a STUN server (ewfd answers on both
	// families), used to test global IPv6 reachability. Invalid means:
	// report IPv6 when the host has a global unicast IPv6 address (GlobalIPv6).
	Server6 netip.AddrPort

	// Listen opens a fresh UDP socket of network "udp4" or "udp6" on an
	// ephemeral port; Classify closes every socket it opened. Required.
	Listen func(network string) (Conn, error)

	// LocalAddrs lists the host's own addresses, to tell "no NAT" when a
	// socket is bound to the unspecified address. Nil means the interface
	// addresses (net.InterfaceAddrs).
	LocalAddrs func() ([]netip.Addr, error)

	// Now is the clock the deadlines are computed with. Nil means time.Now.
	Now func() time.Time

	// Timeout is how long to wait for one answer. Zero means 300 ms.
	Timeout time.Duration

	// Tries is how many times a request is sent before the test concludes
	// that no answer comes. Zero means 3. A filtering test that gets no
	// answer (the packet was filtered or lost every time) reports the
	// stricter behaviour, which is the safe mistake.
	Tries int

	// PortSamples is how many extra sockets make one new mapping each, in
	// sequence, to learn the port allocation pattern. Zero means 4.
	PortSamples int

	// Partial, if set, is called once the mapping and the port pattern are
	// known, before the filtering and hairpin tests, which wait seconds for
	// answers that a strict NAT never lets in: a punch that only needs the
	// mapping role can start from it. Filtering is unknown and Hairpin and
	// IPv6 false in that Result's Class; Ports and Mapped are final.
	Partial func(Result)
}

// Result is a Class with the evidence behind it, for `ewf nat -v` and logs.
type Result struct {
	Class Class
	// Mapped is the public address of the first socket, as the server saw it.
	Mapped netip.AddrPort
	// Other is the server's OTHER-ADDRESS; invalid when the server does not
	// do RFC 5780.
	Other netip.AddrPort
	// Ports lists the public ports of the new mappings in the order they
	// were made (the input of the port pattern).
	Ports []uint16
	// Mapped6 is the IPv6 address the server saw, if any.
	Mapped6 netip.AddrPort
}

// Errors of Classify.
var (
	// ErrNoAnswer: the server never answered a plain Binding request;
	// UDP is blocked or the server is down. The Result is the zero Class
	// (with IPv6 possibly set).
	ErrNoAnswer = errors.New("natdisco: no answer from the STUN server")
	// ErrConfig: Server or Listen missing.
	ErrConfig = errors.New("natdisco: Config needs Server and Listen")
)

// CHANGE-REQUEST flags, RFC 5780 §7.2.
const (
	changeIP   = 0x04
	changePort = 0x02
)

// answer is what one Binding answer said.
type answer struct {
	from, mapped, origin, other netip.AddrPort
}

type classifier struct {
	cfg Config
	ctx context.Context
	buf [1500]byte

	mu     sync.Mutex
	conns  []Conn
	closed bool // closeAll ran: open refuses
}

func (c *classifier) open(network string) (Conn, error) {
	if err := c.ctx.Err(); err != nil {
		return nil, err
	}
	s, err := c.cfg.Listen(network)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		s.Close()
		return nil, c.ctx.Err()
	}
	c.conns = append(c.conns, s)
	return s, nil
}

// closeAll closes every socket. It runs when Classify returns and as soon
// as its context ends: a read waiting for an answer that will not come
// then fails at once instead of at its deadline (Timeout, 300 ms by
// default), so that a caller that cancels (a node closing) is not held up.
func (c *classifier) closeAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	for _, s := range c.conns {
		s.Close()
	}
}

// roundTrip sends a Binding request from s to dst, with CHANGE-REQUEST
// flags when change is not 0, and returns the matching answer. ok is false
// after Tries unanswered sends.
func (c *classifier) roundTrip(s Conn, dst netip.AddrPort, change byte) (answer, bool, error) {
	m := stun.New()
	m.Type = stun.BindingRequest
	if err := m.NewTransactionID(); err != nil {
		return answer{}, false, err
	}
	m.WriteHeader()
	if change != 0 {
		m.Add(stun.AttrChangeRequest, []byte{0, 0, 0, change})
	}
	// FINGERPRINT makes the request long enough for an IPv6 answer to
	// carry both RFC 5780 attributes (docs/PROTOCOL.md §12.1).
	if err := stun.Fingerprint.AddTo(m); err != nil {
		return answer{}, false, err
	}
	for range c.cfg.Tries {
		if err := c.ctx.Err(); err != nil {
			return answer{}, false, err
		}
		if err := s.WriteTo(m.Raw, dst); err != nil {
			return answer{}, false, err
		}
		deadline := c.cfg.Now().Add(c.cfg.Timeout)
		for {
			n, from, err := s.ReadFrom(c.buf[:], deadline)
			if err != nil {
				break // the deadline passed (or the socket failed): send again
			}
			if a, ok := parseAnswer(c.buf[:n], m.TransactionID); ok {
				a.from = unmap(from)
				return a, true, nil
			}
		}
	}
	return answer{}, false, nil
}

func parseAnswer(b []byte, tx [stun.TransactionIDSize]byte) (answer, bool) {
	var r stun.Message
	r.Raw = b
	if r.Decode() != nil || r.Type != stun.BindingSuccess || r.TransactionID != tx {
		return answer{}, false
	}
	var a answer
	var x stun.XORMappedAddress
	if x.GetFrom(&r) != nil {
		return answer{}, false
	}
	a.mapped = addrPort(x.IP, x.Port)
	var o stun.ResponseOrigin
	if o.GetFrom(&r) == nil {
		a.origin = addrPort(o.IP, o.Port)
	}
	var oa stun.OtherAddress
	if oa.GetFrom(&r) == nil {
		a.other = addrPort(oa.IP, oa.Port)
	}
	return a, true
}

func addrPort(ip []byte, port int) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

// Classify runs the tests of RFC 5780 §4 and a few of its own and returns
// what it learned. It takes a few round trips when the NAT is kind, and up
// to about 2 × Tries × Timeout more when filtering tests go unanswered.
//
// With two server IPs it tells all three mapping and filtering behaviours.
// With a second port only, an address-dependent mapping reads as
// endpoint-independent and endpoint-independent filtering as
// address-dependent: one IP cannot tell them apart. Without RFC 5780 at
// the server, mapping and filtering are unknown; the port pattern,
// hairpinning and IPv6 are still measured.
func Classify(ctx context.Context, cfg Config) (Result, error) {
	if !cfg.Server.IsValid() || cfg.Listen == nil {
		return Result{}, ErrConfig
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 300 * time.Millisecond
	}
	if cfg.Tries == 0 {
		cfg.Tries = 3
	}
	if cfg.PortSamples == 0 {
		cfg.PortSamples = 4
	}
	if cfg.LocalAddrs == nil {
		cfg.LocalAddrs = interfaceAddrs
	}
	cfg.Server = unmap(cfg.Server)
	c := &classifier{cfg: cfg, ctx: ctx}
	defer c.closeAll()
	stop := context.AfterFunc(ctx, c.closeAll)
	defer stop()
	var res Result
	err := c.run(&res)
	// IPv6 is measured even when IPv4 got no answer; its own failures
	// just mean "no IPv6".
	_ = c.ipv6(&res)
	if ctx.Err() != nil {
		// Cancelled: what went unanswered may be the closed sockets'
		// doing, so the result is incomplete for that reason.
		err = ctx.Err()
	}
	return res, err
}

func (c *classifier) run(res *Result) error {
	cfg := &c.cfg
	network := "udp4"
	if !cfg.Server.Addr().Is4() {
		network = "udp6"
	}
	P := cfg.Server
	s0, err := c.open(network)
	if err != nil {
		return err
	}
	a1, ok, err := c.roundTrip(s0, P, 0)
	if err != nil {
		return err
	}
	if !ok {
		return ErrNoAnswer
	}
	res.Mapped, res.Other = a1.mapped, a1.other
	// mappings collects each new mapping's public and local port in the
	// order the NAT made them.
	type sample struct{ public, local uint16 }
	var mappings []sample
	add := func(s Conn, a answer) {
		mappings = append(mappings, sample{a.mapped.Port(), s.LocalAddr().Port()})
	}
	add(s0, a1)
	cl := &res.Class
	cl.Public = c.isLocal(s0.LocalAddr(), a1.mapped)

	O := a1.other
	rfc := O.IsValid() && O.Addr().Is4() == P.Addr().Is4() && O != P
	twoIPs := rfc && O.Addr() != P.Addr()

	// Mapping, RFC 5780 §4.3: the same socket to the other IP (or port),
	// then to the other IP and port.
	if rfc {
		dst2 := netip.AddrPortFrom(O.Addr(), P.Port())
		if !twoIPs {
			dst2 = netip.AddrPortFrom(P.Addr(), O.Port())
		}
		a2, ok2, err := c.roundTrip(s0, dst2, 0)
		if err != nil {
			return err
		}
		switch {
		case !ok2:
		case a2.mapped == a1.mapped:
			cl.Mapping = MappingEIM
		case !twoIPs:
			cl.Mapping = MappingAPDM
			add(s0, a2)
		default:
			add(s0, a2)
			a3, ok3, err := c.roundTrip(s0, O, 0)
			if err != nil {
				return err
			}
			if ok3 {
				if a3.mapped == a2.mapped {
					cl.Mapping = MappingADM
				} else {
					cl.Mapping = MappingAPDM
					add(s0, a3)
				}
			}
		}
	}

	// Port pattern: more fresh sockets, one new mapping each, in sequence.
	for range cfg.PortSamples {
		s, err := c.open(network)
		if err != nil {
			return err
		}
		a, ok, err := c.roundTrip(s, P, 0)
		if err != nil {
			return err
		}
		if ok {
			add(s, a)
		}
		// The sample socket stays open until the end: closing it would let
		// a NAT reuse its port for the next sample and fake "sequential".
	}
	for _, m := range mappings {
		res.Ports = append(res.Ports, m.public)
	}
	preserved := len(mappings) > 0
	for _, m := range mappings {
		preserved = preserved && m.public == m.local
	}
	switch {
	case preserved:
		cl.Ports = PortsPreserved
	case len(mappings) >= 3:
		cl.Ports, cl.Delta = portPattern(res.Ports)
	}

	// Mapping and ports are what a punch needs to pick its strategy; the
	// filtering and hairpin tests below wait for answers that may never
	// come (seconds), so report what is known now.
	if cfg.Partial != nil {
		cfg.Partial(*res)
	}

	// Filtering, RFC 5780 §4.4, from a socket that has talked to P only.
	s1, err := c.open(network)
	if err != nil {
		return err
	}
	_, ok, err = c.roundTrip(s1, P, 0)
	if err != nil {
		return err
	}
	if rfc && ok {
		cl.Filtering = FilteringAPDF
		if twoIPs {
			bb, okb, err := c.roundTrip(s1, P, changeIP|changePort)
			if err != nil {
				return err
			}
			if okb && bb.from.Addr() != P.Addr() {
				cl.Filtering = FilteringEIF
			}
		}
		if cl.Filtering == FilteringAPDF {
			bc, okc, err := c.roundTrip(s1, P, changePort)
			if err != nil {
				return err
			}
			if okc && bc.from.Port() != P.Port() {
				cl.Filtering = FilteringADF
			}
		}
	}

	// Hairpinning, RFC 5780 §4.5: from another socket to s0's mapping.
	if cl.Public {
		cl.Hairpin = true // delivered by the host itself
	} else {
		h, err := c.hairpin(s1, s0, a1.mapped)
		if err != nil {
			return err
		}
		cl.Hairpin = h
	}
	return nil
}

// portPattern finds a constant small step between consecutive ports. A
// sequential NAT is shared: another host's flows (or this host's own, a
// punch opening sockets meanwhile) take ports in between, which shows as a
// bigger step in the same direction; and its counter wraps at the end of
// its range, a big step back (seen in the lab: [22044 22046 22047 20002
// 20003 20004] from a counter over 20000-22047). So one step of any size,
// either way, is forgiven as long as all the others agree; random ports
// do not agree on five steps out of six by chance.
//
// One sample may also be an outlier, off the run altogether: a mapping
// that already existed (a conntrack entry of an earlier socket that had
// the same local port and talked to the same server) or a port taken
// from elsewhere, e.g. [21679 21680 21681 21526 21683 21684 21685] seen in
// the lab. With at least outlierMin samples, the pattern may drop one and
// judge the rest by the rule above; the rest are still at least five
// ports whose steps must nearly all agree, which random ports do with a
// probability below 10⁻⁹ (TestPortPatternRandomStaysRandom).
func portPattern(ports []uint16) (Ports, int8) {
	if p, d := seqPattern(ports); p == PortsSequential {
		return p, d
	}
	if len(ports) < outlierMin {
		return PortsRandom, 0
	}
	rest := make([]uint16, 0, len(ports)-1)
	var best int8
	for i := range ports {
		rest = append(append(rest[:0], ports[:i]...), ports[i+1:]...)
		p, d := seqPattern(rest)
		if p != PortsSequential {
			continue
		}
		if best != 0 && best != d {
			return PortsRandom, 0 // two readings disagree: no pattern
		}
		best = d
	}
	if best == 0 {
		return PortsRandom, 0
	}
	return PortsSequential, best
}

// outlierMin is the fewest samples from which portPattern drops one: six
// leave five ports, four steps of which must agree.
const outlierMin = 6

// seqPattern is portPattern without the outlier: every port is in the run.
func seqPattern(ports []uint16) (Ports, int8) {
	if len(ports) < 2 {
		return PortsRandom, 0
	}
	diffs := make([]int, 0, len(ports)-1)
	for i := 1; i < len(ports); i++ {
		diffs = append(diffs, int(int16(ports[i]-ports[i-1])))
	}
	counts := map[int]int{}
	for _, d := range diffs {
		counts[d]++
	}
	best, n := 0, 0
	for d, k := range counts {
		if k > n || k == n && abs(d) < abs(best) {
			best, n = d, k
		}
	}
	const maxStep = 16 // a bigger "step" is indistinguishable from chance
	if best == 0 || abs(best) > maxStep || n < len(diffs)-1 || n < 2 {
		return PortsRandom, 0
	}
	for _, d := range diffs {
		if d == 0 {
			return PortsRandom, 0
		}
	}
	return PortsSequential, int8(best)
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// hairpin sends a Binding request from s to dst, the public mapping of
// target, and reports whether target receives it.
func (c *classifier) hairpin(s, target Conn, dst netip.AddrPort) (bool, error) {
	m := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	for range c.cfg.Tries {
		if err := s.WriteTo(m.Raw, dst); err != nil {
			return false, err
		}
		deadline := c.cfg.Now().Add(c.cfg.Timeout)
		for {
			n, _, err := target.ReadFrom(c.buf[:], deadline)
			if err != nil {
				break
			}
			var r stun.Message
			r.Raw = c.buf[:n]
			if r.Decode() == nil && r.Type == stun.BindingRequest && r.TransactionID == m.TransactionID {
				return true, nil
			}
		}
		if err := c.ctx.Err(); err != nil {
			return false, err
		}
	}
	return false, nil
}

// ipv6 sets Class.IPv6: with Server6, whether a Binding request over IPv6
// from a global address is answered; without, whether the host has a
// global unicast IPv6 address.
func (c *classifier) ipv6(res *Result) error {
	if !c.cfg.Server6.IsValid() {
		addrs, err := c.cfg.LocalAddrs()
		if err != nil {
			return err
		}
		res.Class.IPv6 = slices.ContainsFunc(addrs, GlobalIPv6)
		return nil
	}
	s, err := c.open("udp6")
	if err != nil {
		return nil // no IPv6 socket: no IPv6
	}
	a, ok, err := c.roundTrip(s, c.cfg.Server6, 0)
	if err != nil || !ok {
		return err
	}
	res.Mapped6 = a.mapped
	res.Class.IPv6 = GlobalIPv6(a.mapped.Addr())
	return nil
}

// GlobalIPv6 reports whether a is a global unicast IPv6 address: not
// IPv4 or IPv4-mapped, link-local, loopback, multicast or unique-local
// (fc00::/7). Documentation space (2001:db8::/32) counts as global, so
// that the lab can use it.
func GlobalIPv6(a netip.Addr) bool {
	return a.Is6() && !a.Is4In6() && a.IsGlobalUnicast() && !a.IsPrivate()
}

// isLocal reports whether mapped is the socket's own address: no NAT.
func (c *classifier) isLocal(local, mapped netip.AddrPort) bool {
	if local.Port() != mapped.Port() {
		return false
	}
	if !local.Addr().IsUnspecified() {
		return local.Addr().Unmap() == mapped.Addr()
	}
	addrs, err := c.cfg.LocalAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if a.Unmap() == mapped.Addr() {
			return true
		}
	}
	return false
}
