package ewf

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ewf-project/ewf/client"
)

// tcpAcceptor is the one listener on a node's bound TCP port. It lives as
// long as the TCP binding (tcpSide) and hands every connection it accepts
// to the TCP race (dialTCP) it belongs to.
//
// Races cannot each listen on the port themselves: with SO_REUSEPORT the
// kernel gives a connection to any of the listeners, and two races whose
// peers share an IP (the loopback, one NAT) would take, and kill, each
// other's connections. So a connection goes to a race
//
//   - by its exact source address, when that is one of the race's targets
//     (the peer's public TCP address, its signalled LAN candidates);
//   - otherwise, when this side is the TLS server, by the SNI of the
//     dialer's ClientHello: serverName of the introduction's secret, as
//     for QUIC (configForClient). The ClientHello is read, not consumed:
//     the race's own TLS server reads it again;
//   - otherwise, for a race where this side is the TLS client (whose peer
//     sends nothing first), by source IP, when no race of the other role
//     could claim the connection by SNI (a peer behind a NAT whose mapping
//     depends on the destination comes from a port nobody signalled).
//
// A connection may arrive before its race exists: the dialer connects as
// soon as the server answers its introduction, which may be before the
// listener has handled the INTRODUCE. Such a connection is parked for up
// to parkTimeout (its ClientHello read meanwhile), and a race that starts
// takes the parked connections that are its own. Parking is bounded in
// number, overall and per source IP; what nobody claims is closed.
type tcpAcceptor struct {
	ln  net.Listener
	log *slog.Logger
	wg  sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	waiters []*tcpWaiter // the running races, oldest first
	parked  []*parkedConn
}

// tcpWaiter is one race's registration with the acceptor.
type tcpWaiter struct {
	tg *tcpTargets
	// sni is the introduction's serverName when this side is the TLS
	// server; "" when it is the TLS client.
	sni string
	ch  chan net.Conn // never blocks the acceptor: sends beyond its room close the connection

	// Guarded by tcpAcceptor.mu.
	done bool
	n    int // connections handed over
}

// parkedConn is a connection no race has claimed yet.
type parkedConn struct {
	c      net.Conn
	remote netip.AddrPort
	wake   chan struct{} // cap 1: a race claimed it, or the acceptor closes

	// Guarded by tcpAcceptor.mu.
	peeking bool       // the ClientHello is being read
	hello   bool       // the ClientHello was read; sni is its server name
	sni     string     //
	claim   *tcpWaiter // the race that took it
}

// parkTimeout bounds how long an accepted connection waits for its race,
// and for its ClientHello. A variable for the tests.
var parkTimeout = 5 * time.Second

const (
	// maxParked and maxParkedPerIP bound the connections waiting: anyone
	// can connect to the port, and what no race wants costs a socket and
	// a goroutine for parkTimeout.
	maxParked      = 64
	maxParkedPerIP = 8
	// maxWaiterConns is how many connections one race takes, as the
	// per-race listener's accept loop did: two per target.
	maxWaiterConns = 2 * maxTCPTargets
)

// listenTCP starts the acceptor on local, the bound port of the node's
// connection to the server (SO_REUSEPORT, like that connection and the
// races' dials from it).
func listenTCP(local netip.AddrPort, log *slog.Logger) (*tcpAcceptor, error) {
	lc := net.ListenConfig{Control: client.ReusePortControl}
	ln, err := lc.Listen(context.Background(), "tcp", local.String())
	if err != nil {
		return nil, err
	}
	a := &tcpAcceptor{ln: ln, log: log}
	a.wg.Add(1)
	go a.loop()
	return a, nil
}

// addr is the address and port the acceptor listens on.
func (a *tcpAcceptor) addr() netip.AddrPort {
	ap, _ := netip.ParseAddrPort(a.ln.Addr().String())
	return unmapped(ap)
}

// close stops accepting, closes the parked connections and waits for the
// acceptor's goroutines. Connections already handed to a race are the
// race's.
func (a *tcpAcceptor) close() {
	a.mu.Lock()
	a.closed = true
	for _, p := range a.parked {
		p.c.Close() // ends a read of the ClientHello
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
	a.mu.Unlock()
	a.ln.Close()
	a.wg.Wait()
}

func (a *tcpAcceptor) loop() {
	defer a.wg.Done()
	for {
		c, err := a.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: do not spin.
			a.log.Debug("tcp accept", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		a.admit(c)
	}
}

func unmapped(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap().WithZone(""), ap.Port())
}

// admit hands c to its race at once if its address says which, or parks
// it and reads its ClientHello.
func (a *tcpAcceptor) admit(c net.Conn) {
	ra, _ := netip.ParseAddrPort(c.RemoteAddr().String())
	ra = unmapped(ra)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		c.Close()
		return
	}
	if w := a.byAddressLocked(ra, false); w != nil {
		a.deliverLocked(w, c, nil)
		return
	}
	perIP := 0
	for _, p := range a.parked {
		if p.remote.Addr() == ra.Addr() {
			perIP++
		}
	}
	if len(a.parked) >= maxParked || perIP >= maxParkedPerIP {
		c.Close()
		return
	}
	p := &parkedConn{c: c, remote: ra, wake: make(chan struct{}, 1), peeking: true}
	a.parked = append(a.parked, p)
	a.wg.Add(1)
	go a.peek(p)
}

// byAddressLocked picks the race a connection from ra belongs to by its
// address alone, or nil when the address does not tell (nobody's target,
// or a race where this side is the TLS server might claim it by SNI).
// With clientOnly, races where this side is the TLS server are not
// candidates: the connection brought no ClientHello, so it is not theirs.
func (a *tcpAcceptor) byAddressLocked(ra netip.AddrPort, clientOnly bool) *tcpWaiter {
	var exact, sameIP []*tcpWaiter
	serverIP := false
	for _, w := range a.waiters {
		if clientOnly && w.sni != "" {
			continue
		}
		switch {
		case w.tg.has(ra):
			exact = append(exact, w)
		case w.tg.hasIP(ra.Addr()):
			sameIP = append(sameIP, w)
			serverIP = serverIP || w.sni != ""
		}
	}
	allClient := func(ws []*tcpWaiter) bool {
		return !slices.ContainsFunc(ws, func(w *tcpWaiter) bool { return w.sni != "" })
	}
	switch {
	case len(exact) == 1:
		return exact[0]
	case len(exact) > 1:
		// Two races with the same peer address (crossing introductions,
		// or two dials of one peer): only a ClientHello tells them
		// apart; between TLS clients nothing does, and the first takes it.
		if allClient(exact) {
			return exact[0]
		}
		return nil
	case len(sameIP) > 0 && !serverIP:
		return sameIP[0]
	}
	return nil
}

// bySNILocked is the race where this side is the TLS server for the
// introduction whose serverName is sni.
func (a *tcpAcceptor) bySNILocked(sni string) *tcpWaiter {
	if sni == "" {
		return nil
	}
	for _, w := range a.waiters {
		if w.sni == sni {
			return w
		}
	}
	return nil
}

// deliverLocked hands c (with the bytes already read from it, pre) to w,
// or closes it when w is over or full.
func (a *tcpAcceptor) deliverLocked(w *tcpWaiter, c net.Conn, pre []byte) {
	if w.done || w.n >= maxWaiterConns {
		c.Close()
		return
	}
	if len(pre) > 0 {
		c = &prefixConn{Conn: c, pre: pre}
	}
	select {
	case w.ch <- c:
		w.n++
	default:
		c.Close()
	}
}

func (a *tcpAcceptor) unparkLocked(p *parkedConn) {
	a.parked = slices.DeleteFunc(a.parked, func(x *parkedConn) bool { return x == p })
}

// errPeeked ends the handshake that only reads the ClientHello.
var errPeeked = errors.New("ewf: ClientHello read")

// peek reads p's ClientHello, if the peer sends one, while p waits for a
// race to claim it; then hands it over or closes it.
func (a *tcpAcceptor) peek(p *parkedConn) {
	defer a.wg.Done()
	deadline := time.Now().Add(parkTimeout)
	rec := &recordConn{Conn: p.c}
	var sni string
	var hello bool
	p.c.SetReadDeadline(deadline)
	// crypto/tls parses the ClientHello (however many records it spans);
	// the handshake stops there, and the alert it then writes goes
	// nowhere. Everything read is kept for the race's own handshake.
	tls.Server(rec, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		sni, hello = h.ServerName, true
		return nil, errPeeked
	}}).Handshake()

	a.mu.Lock()
	p.peeking = false
	switch {
	case a.closed:
	case p.claim != nil:
	case hello:
		p.hello, p.sni = true, sni
		p.claim = a.bySNILocked(sni)
	case len(rec.buf) == 0:
		// Nothing came: the peer waits for our ClientHello, so only a
		// race where this side is the TLS client can want it.
		p.claim = a.byAddressLocked(p.remote, true)
	}
	if p.claim == nil && hello && !a.closed {
		// Its race has not started yet: wait for it, until the deadline.
		a.mu.Unlock()
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-p.wake:
		case <-t.C:
		}
		t.Stop()
		a.mu.Lock()
	}
	a.unparkLocked(p)
	if p.claim != nil && !a.closed {
		// Under the lock: a claim may have set a deadline in the past
		// to stop the read, after the read ended.
		p.c.SetReadDeadline(time.Time{})
		a.deliverLocked(p.claim, p.c, rec.buf)
	} else {
		p.c.Close()
	}
	a.mu.Unlock()
}

// register makes the acceptor hand w's connections to its race: those
// that come from tg's addresses or (sni != "": this side is the TLS
// server) name sni in their ClientHello. Parked ones it claims at once.
func (a *tcpAcceptor) register(tg *tcpTargets, sni string) *tcpWaiter {
	w := &tcpWaiter{tg: tg, sni: sni, ch: make(chan net.Conn, maxWaiterConns)}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		w.done = true
		return w
	}
	a.waiters = append(a.waiters, w)
	a.claimLocked(w)
	return w
}

// rematch lets w claim parked connections again after its targets grew.
func (a *tcpAcceptor) rematch(w *tcpWaiter) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !w.done && !a.closed {
		a.claimLocked(w)
	}
}

func (a *tcpAcceptor) claimLocked(w *tcpWaiter) {
	for _, p := range a.parked {
		if p.claim != nil {
			continue
		}
		switch {
		case p.hello:
			if w.sni == "" || p.sni != w.sni {
				continue
			}
		case !p.peeking:
			continue // being closed
		case w.tg.has(p.remote):
		case w.sni == "" && w.tg.hasIP(p.remote.Addr()) && !a.serverHasIPLocked(p.remote.Addr()):
		default:
			continue
		}
		p.claim = w
		if p.peeking {
			p.c.SetReadDeadline(time.Now()) // stop reading; what was read goes along
		}
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

func (a *tcpAcceptor) serverHasIPLocked(ip netip.Addr) bool {
	return slices.ContainsFunc(a.waiters, func(w *tcpWaiter) bool { return w.sni != "" && w.tg.hasIP(ip) })
}

// unregister ends w: no more connections go to it, and those handed over
// but not taken are closed. Safe to call more than once.
func (a *tcpAcceptor) unregister(w *tcpWaiter) {
	a.mu.Lock()
	if !w.done {
		w.done = true
		a.waiters = slices.DeleteFunc(a.waiters, func(x *tcpWaiter) bool { return x == w })
	}
	a.mu.Unlock()
	for {
		select {
		case c := <-w.ch:
			c.Close()
		default:
			return
		}
	}
}

// recordConn keeps what is read through it and drops what is written: the
// ClientHello is read through it and must reach the race's handshake too,
// and the alert that ends the reading handshake must not reach the peer.
type recordConn struct {
	net.Conn
	buf []byte
}

func (r *recordConn) Read(b []byte) (int, error) {
	n, err := r.Conn.Read(b)
	r.buf = append(r.buf, b[:n]...)
	return n, err
}

func (r *recordConn) Write(b []byte) (int, error) { return len(b), nil }

// prefixConn reads pre before the connection's own bytes.
type prefixConn struct {
	net.Conn
	pre []byte
}

func (c *prefixConn) Read(b []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(b, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(b)
}
