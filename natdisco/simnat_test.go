package natdisco_test

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf/natdisco"
)

// simNAT is a userspace NAT in front of the real ewfd on loopback: each
// mapping is a real UDP socket on the NAT's "public" address 127.0.0.3,
// so the server sees and answers real mapped addresses; the NAT applies
// its mapping, filtering, port allocation and hairpinning rules in
// between. It is the test fixture that lets the classifier be checked
// against every behaviour without root; internal/natlab checks it against
// real nftables NATs.
type simNAT struct {
	t         *testing.T
	pub       netip.Addr
	mapping   natdisco.Mapping
	filtering natdisco.Filtering
	ports     natdisco.Ports
	delta     int
	hairpin   bool
	blockUDP  bool
	// outlierAt, if positive, makes the outlierAt-th new mapping of a
	// sequential NAT an outlier, as another host sharing the counter does
	// in the lab: its port goes to someone else and this mapping gets an
	// older one (a mapping that was still there).
	outlierAt int
	made      int // new mappings so far

	mu     sync.Mutex
	nextID int
	next   int // next sequential port
	maps   map[mapKey]*simMapping
	wg     sync.WaitGroup
}

type mapKey struct {
	conn int
	dst  netip.AddrPort // zero for EIM; port zero for ADM
}

type simMapping struct {
	sock  *net.UDPConn
	inner *simConn
	mu    sync.Mutex
	sent  map[netip.AddrPort]bool
}

type packet struct {
	b    []byte
	from netip.AddrPort
}

type simConn struct {
	nat      *simNAT
	id       int
	local    netip.AddrPort
	pre      *net.UDPConn // preserved ports: the mapping socket, bound first
	in       chan packet
	closed   chan struct{}
	closeOne sync.Once
}

func newSimNAT(t *testing.T, m natdisco.Mapping, f natdisco.Filtering, p natdisco.Ports, hairpin bool) *simNAT {
	n := &simNAT{t: t, pub: netip.MustParseAddr("127.0.0.3"), mapping: m, filtering: f, ports: p, delta: 1,
		hairpin: hairpin, maps: map[mapKey]*simMapping{}, next: 20000 + rand.IntN(20000)}
	t.Cleanup(n.close)
	return n
}

func (n *simNAT) close() {
	n.mu.Lock()
	for _, m := range n.maps {
		m.sock.Close()
	}
	n.mu.Unlock()
	n.wg.Wait()
}

// listen is Config.Listen for hosts behind the NAT.
func (n *simNAT) listen(string) (natdisco.Conn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.nextID++
	c := &simConn{nat: n, id: n.nextID, in: make(chan packet, 64), closed: make(chan struct{})}
	port := uint16(30000 + n.nextID)
	if n.ports == natdisco.PortsPreserved {
		s, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(n.pub, 0)))
		if err != nil {
			return nil, err
		}
		c.pre = s
		port = s.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	}
	c.local = netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), port)
	return c, nil
}

func (n *simNAT) localAddrs() ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("10.0.0.2")}, nil
}

// mappingFor returns (making it if new) the mapping c's packets to dst use.
func (n *simNAT) mappingFor(c *simConn, dst netip.AddrPort) (*simMapping, error) {
	k := mapKey{conn: c.id}
	switch n.mapping {
	case natdisco.MappingADM:
		k.dst = netip.AddrPortFrom(dst.Addr(), 0)
	case natdisco.MappingAPDM:
		k.dst = dst
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if m := n.maps[k]; m != nil {
		return m, nil
	}
	var s *net.UDPConn
	var err error
	switch {
	case c.pre != nil:
		s, c.pre = c.pre, nil
	case n.ports == natdisco.PortsSequential && n.made+1 == n.outlierAt:
		n.next += n.delta // taken by another host
		for i := range 10 {
			// An older port, behind the run: a step back, which the rule
			// for one forward jump does not forgive.
			p := n.next - (300+i)*n.delta
			s, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(n.pub, uint16(p))))
			if err == nil {
				break
			}
		}
	case n.ports == natdisco.PortsSequential:
		for range 10 {
			p := n.next
			n.next += n.delta
			s, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(n.pub, uint16(p))))
			if err == nil {
				break
			}
		}
	default:
		s, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(n.pub, 0)))
	}
	if err != nil {
		return nil, err
	}
	n.made++
	m := &simMapping{sock: s, inner: c, sent: map[netip.AddrPort]bool{}}
	n.maps[k] = m
	n.wg.Add(1)
	go n.serve(m)
	return m, nil
}

// serve delivers inbound packets of one mapping that its filter admits.
func (n *simNAT) serve(m *simMapping) {
	defer n.wg.Done()
	buf := make([]byte, 1500)
	for {
		k, from, err := m.sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		m.mu.Lock()
		ok := false
		switch {
		case from.Addr() == n.pub:
			ok = n.hairpin // hairpinned: filtered endpoint-independently, as in the lab
		case n.filtering == natdisco.FilteringEIF:
			ok = true
		case n.filtering == natdisco.FilteringADF:
			for a := range m.sent {
				ok = ok || a.Addr() == from.Addr()
			}
		default:
			ok = m.sent[from]
		}
		m.mu.Unlock()
		if !ok {
			continue
		}
		select {
		case m.inner.in <- packet{append([]byte(nil), buf[:k]...), from}:
		default:
		}
	}
}

func (c *simConn) LocalAddr() netip.AddrPort { return c.local }

func (c *simConn) WriteTo(b []byte, to netip.AddrPort) error {
	n := c.nat
	if n.blockUDP || !n.hairpin && to.Addr() == n.pub {
		return nil
	}
	m, err := n.mappingFor(c, to)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.sent[to] = true
	m.mu.Unlock()
	_, err = m.sock.WriteToUDPAddrPort(b, to)
	return err
}

var errDeadline = errors.New("deadline")

func (c *simConn) ReadFrom(b []byte, deadline time.Time) (int, netip.AddrPort, error) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case p := <-c.in:
		return copy(b, p.b), p.from, nil
	case <-t.C:
		return 0, netip.AddrPort{}, errDeadline
	case <-c.closed:
		return 0, netip.AddrPort{}, net.ErrClosed
	}
}

func (c *simConn) Close() error {
	c.closeOne.Do(func() {
		close(c.closed)
		if c.pre != nil {
			c.pre.Close()
		}
	})
	return nil
}
