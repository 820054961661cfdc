package ewf

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ewf-project/ewf/natdisco"
	"github.com/ewf-project/ewf/punch"
	"github.com/ewf-project/ewf/wire"
)

// Birthday probing in the node (punch/birthday.go has the mechanism and
// its bounds): the attempt decides which side of it this node is from what
// it knows of both NATs, opens the hard side's extra sockets, reads them,
// and hands the socket the path came up on to QUIC.

// natRole is what a node knows or guesses of one side's NAT mapping.
type natRole uint8

const (
	roleUnknown natRole = iota
	roleEasy            // endpoint-independent mapping: one public port
	roleHard            // a new, unpredictable port per destination
	roleSeq             // a new port per destination, in sequence (delta)
)

// roleOf turns a discovered class into a role; delta is the step of a
// sequential allocation.
func roleOf(c natdisco.Class) (natRole, int) {
	switch {
	case c.Public || c.Mapping == natdisco.MappingEIM:
		return roleEasy, 0
	case c.Mapping == natdisco.MappingADM || c.Mapping == natdisco.MappingAPDM:
		if c.Ports == natdisco.PortsSequential && c.Delta != 0 {
			return roleSeq, int(c.Delta)
		}
		return roleHard, 0
	}
	return roleUnknown, 0
}

// guessRole guesses from one observation when discovery has not answered:
// a NAT that kept the local port is most likely endpoint-independent; one
// that did not may map per destination. A wrong guess costs at most one
// attempt's probes; discovery's answer replaces it as soon as it comes.
func guessRole(public netip.AddrPort, localPorts []uint16) natRole {
	if !public.IsValid() || len(localPorts) == 0 {
		return roleUnknown
	}
	for _, p := range localPorts {
		if p == public.Port() {
			return roleEasy
		}
	}
	return roleHard
}

// birthdayDelay is how long an attempt punches normally before birthday
// probing starts on guessed roles: two NATs that get along connect within
// a round trip or two, and then no extra socket is opened.
const birthdayDelay = 250 * time.Millisecond

// selfRole is this node's role: discovered, or guessed from its binding.
func (n *Node) selfRole() (natRole, int, bool) {
	if c, ok := n.NAT(); ok && c.Known() {
		r, d := roleOf(c)
		return r, d, true
	}
	pub, _ := n.public.Load().(netip.AddrPort)
	return guessRole(pub, []uint16{n.sock.LocalAddr().(*net.UDPAddr).AddrPort().Port()}), 0, false
}

// peerRole is the peer's role: signalled, or guessed from its public
// address and the ports of its host candidates.
func (a *attempt) peerRole() (natRole, int, bool) {
	if c, ok := a.n.peerNATClass(a.peer); ok {
		if r, d := roleOf(natdisco.FromWire(c)); r != roleUnknown {
			return r, d, true
		}
	}
	a.mu.Lock()
	ports := a.peerPorts
	a.mu.Unlock()
	return guessRole(a.peerPublic, ports), 0, false
}

// considerBirthday starts birthday probing when one side is hard and the
// other easy: the hard side opens extra sockets towards the easy side's
// public address, the easy side sprays the hard side's public IP (or its
// predicted ports). It runs from the driver on every wake-up until it has
// decided; it does nothing once the machine is no longer punching.
func (a *attempt) considerBirthday(now time.Time) {
	if a.bdayDecided || !a.peerPublic.IsValid() || !a.peerPublic.Addr().Is4() {
		return
	}
	self, _, selfKnown := a.n.selfRole()
	peer, delta, peerKnown := a.peerRole()
	if (!selfKnown || !peerKnown) && now.Sub(a.start) < birthdayDelay {
		return
	}
	switch {
	case (self == roleHard || self == roleSeq) && peer == roleEasy:
		// A sequential NAT gets the extra sockets too: its class may be
		// a misreading (a NAT that picks a hashed port per destination
		// and then counts up looks sequential to discovery), and 256
		// mappings in a row are as easy to hit as 256 scattered ones.
		a.bdayDecided = true
		ports, err := openPorts(a, punch.MaxPorts)
		if err != nil && ports == nil {
			a.n.log.Debug("birthday: no extra sockets", "err", err)
			return
		}
		a.mu.Lock()
		a.ports = ports
		k := a.m.EnablePorts(len(ports.socks), a.peerPublic, 0, now)
		a.mu.Unlock()
		ports.start()
		a.n.log.Debug("birthday: hard side", "peer", a.peer, "sockets", k, "target", a.peerPublic,
			"known", selfKnown && peerKnown)
	case self == roleEasy && (peer == roleHard || peer == roleSeq):
		a.bdayDecided = true
		s := punch.Spray{IP: a.peerPublic.Addr()}
		if peer == roleSeq {
			s.Base, s.Delta = a.peerBase(), delta
		}
		a.mu.Lock()
		ok := a.m.EnableSpray(s, now)
		a.mu.Unlock()
		a.n.log.Debug("birthday: easy side", "peer", a.peer, "started", ok, "ip", s.IP, "sequential", peer == roleSeq,
			"known", selfKnown && peerKnown)
	case self == roleSeq && peer == roleSeq:
		// Both sequential: both spray a window of the peer's predicted
		// ports from the main socket, the dialer skewed so that the two
		// counters meet whatever each NAT spent since its binding
		// (punch.SeqCycle).
		a.bdayDecided = true
		s := punch.Spray{IP: a.peerPublic.Addr(), Base: a.peerBase(), Delta: delta,
			Predict: punch.SeqOtherProbes, Probes: punch.SeqOtherProbes}
		if a.dialer {
			s.Cycle, s.Predict, s.Probes = punch.SeqCycle, punch.SeqDialerProbes, punch.SeqDialerProbes
		}
		a.mu.Lock()
		ok := a.m.EnableSpray(s, now)
		a.mu.Unlock()
		a.n.log.Debug("birthday: both sequential", "peer", a.peer, "started", ok, "dialer", a.dialer, "base", s.Base, "delta", delta)
	}
}

// peerBase is where a sequential peer's predicted ports count from: the
// counter hint of its SIGNAL when it sent one, else its bound port.
func (a *attempt) peerBase() uint16 {
	if p, ok := a.n.peerCounter(a.peer, a.peerPublic); ok {
		return p
	}
	return a.peerPublic.Port()
}

// portSet is the hard side's extra sockets: socks[i-1] is punch port i.
type portSet struct {
	a     *attempt
	socks []*net.UDPConn
	stops []atomic.Bool
	done  []chan struct{}

	mu     sync.Mutex
	taken  map[int]bool    // ports handed to QUIC
	closed bool            // close ran
	early  map[int][]dgram // QUIC packets that came before the handover
	wg     sync.WaitGroup
}

type dgram struct {
	b    []byte
	from netip.AddrPort
}

// openPorts opens up to n UDP sockets on the node's local IPv4 address
// (any port). It returns what it could open; an error only with none.
func openPorts(a *attempt, n int) (*portSet, error) {
	var ip net.IP
	if la := a.n.sock.LocalAddr().(*net.UDPAddr); la.IP.To4() != nil && !la.IP.IsUnspecified() {
		ip = la.IP
	}
	ps := &portSet{a: a, early: map[int][]dgram{}}
	var err error
	for range n {
		var c *net.UDPConn
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ip})
		if err != nil {
			break // out of file descriptors or ports: use what we have
		}
		ps.socks = append(ps.socks, c)
	}
	if len(ps.socks) == 0 {
		return nil, err
	}
	ps.stops = make([]atomic.Bool, len(ps.socks))
	ps.done = make([]chan struct{}, len(ps.socks))
	for i := range ps.done {
		ps.done[i] = make(chan struct{})
	}
	return ps, nil
}

// start runs one reader per socket: PUNCHes go to the attempt, anything
// else (QUIC arriving before the socket is handed over) is kept, a few
// packets per socket.
func (ps *portSet) start() {
	for i, c := range ps.socks {
		port := i + 1
		ps.wg.Go(func() {
			defer close(ps.done[i])
			var msg wire.Message
			buf := make([]byte, 2048)
			for !ps.stops[i].Load() {
				k, from, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, net.ErrClosed) {
						return
					}
					continue
				}
				from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
				b := buf[:k]
				if ps.punch(&msg, b, from, port) {
					continue
				}
				ps.mu.Lock()
				if q := ps.early[port]; len(q) < 8 {
					ps.early[port] = append(q, dgram{append([]byte(nil), b...), from})
				}
				ps.mu.Unlock()
			}
		})
	}
}

// punch hands b to the attempt if it is an X message, and reports
// whether it was one: a PUNCH from the peer goes to the machine, which
// answers from the same socket; anything else of X is dropped (QUIC cannot
// use it).
func (ps *portSet) punch(msg *wire.Message, b []byte, from netip.AddrPort, port int) bool {
	if wire.Classify(b) != wire.KindX {
		return false
	}
	if msg.Decode(b) == nil && msg.Type.Method == wire.MethodPunch && msg.SourceID == ps.a.peer {
		ps.a.receiveOn(msg, from, port)
	}
	return true
}

func (ps *portSet) send(port int, b []byte, to netip.AddrPort) {
	if port >= 1 && port <= len(ps.socks) {
		ps.socks[port-1].WriteToUDPAddrPort(b, to)
	}
}

// take stops the reader of port and hands its socket over, with the
// packets that came early; close then leaves it open.
func (ps *portSet) take(port int) (net.PacketConn, bool) {
	ps.mu.Lock()
	if ps.closed || ps.taken[port] || port < 1 || port > len(ps.socks) {
		ps.mu.Unlock()
		return nil, false
	}
	if ps.taken == nil {
		ps.taken = map[int]bool{}
	}
	ps.taken[port] = true
	ps.mu.Unlock()
	c := ps.socks[port-1]
	ps.stops[port-1].Store(true)
	c.SetReadDeadline(time.Now())
	<-ps.done[port-1]
	c.SetReadDeadline(time.Time{})
	ps.mu.Lock()
	early := ps.early[port]
	ps.mu.Unlock()
	return &replayConn{c: c, early: early, ps: ps, port: port}, true
}

// close closes every socket but those taken and waits for the readers.
func (ps *portSet) close() {
	ps.mu.Lock()
	if ps.closed {
		ps.mu.Unlock()
		return
	}
	ps.closed = true
	taken := ps.taken
	ps.mu.Unlock()
	for i, c := range ps.socks {
		if !taken[i+1] {
			c.Close()
		}
	}
	ps.wg.Wait()
}

// replayConn is a socket handed to QUIC that first returns the packets
// its punch reader kept (the peer's first QUIC packets). It is a plain
// net.PacketConn on purpose: given the *net.UDPConn's own methods, quic-go
// would read with ReadMsgUDP and never see the kept packets.
//
// It goes on answering the peer's PUNCHes after the handover: a side whose
// own request was answered is Connected and hands its socket over at
// once, while the peer may still be waiting for the answer to the request
// it triggered. Swallowed by QUIC, that request would leave the peer
// punching until it gives up (the birthday misses with a symmetric
// listener, docs/NATLAB.md).
type replayConn struct {
	c     *net.UDPConn
	mu    sync.Mutex
	early []dgram
	ps    *portSet
	port  int
	msg   wire.Message // ReadFrom's, which quic-go calls from one goroutine
}

func (r *replayConn) ReadFrom(p []byte) (int, net.Addr, error) {
	r.mu.Lock()
	if len(r.early) > 0 {
		d := r.early[0]
		r.early = r.early[1:]
		r.mu.Unlock()
		return copy(p, d.b), net.UDPAddrFromAddrPort(d.from), nil
	}
	r.mu.Unlock()
	for {
		n, from, err := r.c.ReadFromUDPAddrPort(p)
		if err != nil {
			return n, nil, err
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if r.ps != nil && r.ps.punch(&r.msg, p[:n], from, r.port) {
			continue
		}
		return n, net.UDPAddrFromAddrPort(from), nil
	}
}

func (r *replayConn) WriteTo(p []byte, a net.Addr) (int, error) { return r.c.WriteTo(p, a) }
func (r *replayConn) Close() error                              { return r.c.Close() }
func (r *replayConn) LocalAddr() net.Addr                       { return r.c.LocalAddr() }
func (r *replayConn) SetDeadline(t time.Time) error             { return r.c.SetDeadline(t) }
func (r *replayConn) SetReadDeadline(t time.Time) error         { return r.c.SetReadDeadline(t) }
func (r *replayConn) SetWriteDeadline(t time.Time) error        { return r.c.SetWriteDeadline(t) }

// quicOn runs QUIC on a socket the path came up on: a transport of its own,
// closed with the socket when the connection ends or the node closes.
func (n *Node) quicOn(c net.PacketConn) *quic.Transport {
	return &quic.Transport{Conn: c}
}

// closeWith closes tr and its socket once qc ends or the node closes.
func (n *Node) closeWith(qc *quic.Conn, tr *quic.Transport, c net.PacketConn) {
	n.wg.Go(func() {
		select {
		case <-qc.Context().Done():
		case <-n.ctx.Done():
		}
		tr.Close()
		c.Close()
	})
}

// serveOn accepts the one QUIC connection the dialer makes over a path
// that came up on an extra socket (this node listens and was the hard
// side). The dialer chose the path: when more than one guess hit, this
// side cannot know which, so it serves QUIC on every socket the peer's
// requests reached, and the first connection accepted ends the others.
func (n *Node) serveOn(socks []net.PacketConn) {
	ctx, cancel := context.WithTimeout(n.ctx, 30*time.Second)
	var once sync.Once
	for _, c := range socks {
		n.serveOne(ctx, c, func() bool {
			won := false
			once.Do(func() { won = true; cancel() })
			return won
		})
	}
	n.wg.Go(func() { <-ctx.Done(); cancel() })
}

func (n *Node) serveOne(ctx context.Context, c net.PacketConn, win func() bool) {
	tr := n.quicOn(c)
	ln, err := tr.Listen(n.serverTLS(), n.quicConfig())
	if err != nil {
		tr.Close()
		c.Close()
		return
	}
	n.wg.Go(func() {
		qc, err := ln.Accept(ctx)
		ln.Close()
		if err == nil && !win() {
			qc.CloseWithError(0, "")
			err = net.ErrClosed
		}
		if err != nil {
			tr.Close()
			c.Close()
			return
		}
		n.closeWith(qc, tr, c)
		conn, err := n.acceptStream(qc)
		if err != nil {
			n.log.Debug("accept", "remote", qc.RemoteAddr(), "err", err)
			qc.CloseWithError(1, "")
			return
		}
		n.deliver(conn)
	})
}

// serverTLS is the TLS configuration of every QUIC listener of the node:
// the certificate of the introduction the dialer names.
func (n *Node) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{alpn},
		GetConfigForClient: n.configForClient,
	}
}
