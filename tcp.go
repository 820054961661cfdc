package ewf

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/streammux"
	"github.com/ewf-project/ewf/wire"
)

// tcpSide is a node's TCP presence in one address family. The bound side
// (Node.tcp) is a connection to the server from one local port, which
// holds the NAT's TCP mapping and the TCP binding, and from which the node
// later dials peers (RFC 5128 §3.4: the simultaneous open must leave from
// the port whose mapping the peer was told). The host side (Node.tcpHost,
// conn nil) is a port of the other family on one of the host's own
// addresses, offered to peers as a TCP candidate, as the UDP socket offers
// its global IPv6 addresses: so TCP races over IPv6 too when the server is
// reached over IPv4, and the other way round (docs/PROTOCOL.md §20.4).
//
// The acceptor listens on that port for the whole life of the side and
// hands each connection to the race it belongs to (tcpaccept.go); nil if
// the port could not be listened on, and then races only dial.
type tcpSide struct {
	conn   *client.Conn // nil for the host side
	local  netip.AddrPort
	public atomic.Value
	acc    *tcpAcceptor
}

func (t *tcpSide) close() {
	if t.conn != nil {
		t.conn.Close()
	}
	if t.acc != nil {
		t.acc.close()
	}
}

// is4 reports whether the side dials and accepts IPv4.
func (t *tcpSide) is4() bool { return t.local.Addr().Unmap().Is4() }

// tcpSides returns the node's TCP sides: the bound one first, then the
// host side of the other family, if any.
func (n *Node) tcpSides() []*tcpSide {
	var out []*tcpSide
	for _, t := range []*tcpSide{n.tcp.Load(), n.tcpHost.Load()} {
		if t != nil {
			out = append(out, t)
		}
	}
	return out
}

// hostTCPAddr picks the address of the host side in the family is4 names
// from the host's interface addresses: the first offerable one, and for
// IPv6 a global one before a unique local one (a ULA reaches only the
// same site). An invalid Addr when there is none.
func hostTCPAddr(addrs []netip.Addr, is4 bool) netip.Addr {
	var ula netip.Addr
	for _, ip := range addrs {
		ip = ip.Unmap().WithZone("")
		if !offerable(ip) || ip.Is4() != is4 {
			continue
		}
		if is4 || !ip.IsPrivate() {
			return ip
		}
		if !ula.IsValid() {
			ula = ip
		}
	}
	return ula
}

// syncTCPHost makes the host side match the bound side and the host's
// addresses (nil: read them now): a port on hostTCPAddr of the family the
// bound side is not, made again when that address changes, none when the
// host has no such address or the node has no TCP binding. The port is
// any free one: the address is the host's own, with no NAT to predict (a
// host whose IPv6 is translated gets no IPv6 TCP path, as for UDP).
func (n *Node) syncTCPHost(addrs []netip.Addr) {
	bound := n.tcp.Load()
	if bound == nil {
		return
	}
	if addrs == nil {
		addrs = interfaceAddrs()
	}
	ip := hostTCPAddr(addrs, !bound.is4())
	n.tcpHostMu.Lock()
	defer n.tcpHostMu.Unlock()
	if n.ctx.Err() != nil {
		return // Close has closed the host side, or is about to
	}
	cur := n.tcpHost.Load()
	if cur != nil && cur.local.Addr() == ip {
		return
	}
	var nt *tcpSide
	if ip.IsValid() {
		acc, err := listenTCP(netip.AddrPortFrom(ip, 0), n.log)
		if err != nil {
			n.log.Debug("no TCP port of the other family", "addr", ip, "err", err)
		} else {
			nt = &tcpSide{local: acc.addr(), acc: acc}
			nt.public.Store(nt.local)
			n.log.Debug("TCP host side", "local", nt.local)
		}
	}
	if old := n.tcpHost.Swap(nt); old != nil {
		old.close()
	}
}

// closeTCPHost closes the host side for good (Node.Close, after cancel).
func (n *Node) closeTCPHost() {
	n.tcpHostMu.Lock()
	defer n.tcpHostMu.Unlock()
	if old := n.tcpHost.Swap(nil); old != nil {
		old.close()
	}
}

// bindTCP connects to the server over TCP, learns the public TCP address
// and binds it.
func (n *Node) bindTCP(ctx context.Context, self wire.ID, key wire.Key) (*tcpSide, error) {
	c, err := client.DialTCP(ctx, n.currentServer().String(), netip.AddrPort{}, client.Config{
		Logger:      n.log,
		OnIntroduce: n.onIntroduce,
		OnSignal:    n.onSignal, // a node whose UDP is blocked gets SIGNALs here (blocked.go)
	})
	if err != nil {
		return nil, fmt.Errorf("ewf: TCP to server: %w", serverErr(err))
	}
	public, err := c.PublicAddress(ctx)
	if err == nil {
		err = c.Bind(ctx, self, key, wire.Address{Transport: wire.TransportTCP, AddrPort: public})
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("ewf: TCP binding: %w", serverErr(err))
	}
	t := &tcpSide{conn: c, local: c.LocalAddr()}
	t.public.Store(public)
	if t.acc, err = listenTCP(t.local, n.log); err != nil {
		n.log.Warn("cannot listen on the TCP binding's port; TCP races will only dial", "port", t.local, "err", err)
	}
	return t, nil
}

// tcpRetry is the pause between connect attempts while the peer's NAT is
// still closed; the kernel's own SYN retransmission (1 s, then 2 s) is too
// slow for a fast connect.
const tcpRetry = 200 * time.Millisecond

// dialTCP makes a TCP connection with peer by simultaneous open: from the
// port of the side of the target's family (the bound port, or the host
// side's) it connects again and again to every target (the peer's public
// TCP address, and the LAN and global IPv6 candidates the peer signals,
// which join while the race runs), and at the same time takes the
// connections the node's acceptors route to this race (tcpaccept.go). The
// first connection to form wins, whatever its family, as for UDP. Then
// TLS, with the dialer as the TLS client.
//
// With several targets two different connections can form (one through
// the router's hairpin, one on the LAN), and each side might pick another.
// So the TLS client takes the first connection and closes the rest, and
// the TLS server handshakes on every connection that forms: the one the
// client chose is the one whose handshake completes.
func (n *Node) dialTCP(ctx context.Context, peer wire.ID, secret wire.Secret, tg *tcpTargets, isClient bool) (*Conn, error) {
	conf, err := n.tlsConfig(secret, peer, isClient)
	if err != nil {
		return nil, err
	}
	// The handshakes outlive the race (the client ends the race once it
	// has a connection) but not the caller's ctx: a dialer the peer
	// refused meanwhile (signal.go) stops at once.
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, n.cfg.PunchTimeout)
	defer cancel()
	start := time.Now()
	// One side per family: each target is dialled from the side of its
	// family, and both sides' acceptors route this race's connections.
	sides := n.tcpSides()
	sideFor := func(a netip.AddrPort) *tcpSide {
		for _, s := range sides {
			if s.is4() == a.Addr().Unmap().Is4() {
				return s
			}
		}
		return nil
	}

	// raws is what the wait loop below receives from (nil once the race
	// is over); send keeps its own copy, which never changes.
	raws := make(chan net.Conn)
	toWait := raws
	send := func(c net.Conn) {
		select {
		case toWait <- c:
		case <-ctx.Done():
			c.Close()
		}
	}
	var wg sync.WaitGroup
	// The acceptors route this race's connections to its registrations:
	// by address, or (as the TLS server) by the SNI of this introduction.
	type registration struct {
		acc *tcpAcceptor
		w   *tcpWaiter
	}
	var regs []registration
	sni := ""
	if !isClient {
		sni = serverName(secret)
	}
	for _, s := range sides {
		if s.acc != nil {
			regs = append(regs, registration{s.acc, s.acc.register(tg, sni)})
		}
	}
	// The registrations end as soon as this side has decided about the
	// peer, so that nothing more is routed to a race that is over.
	unregister := func() {
		for _, r := range regs {
			r.acc.unregister(r.w)
		}
	}
	defer unregister()
	if !isClient {
		verify := conf.VerifyPeerCertificate
		conf.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
			err := verify(raw, chains)
			if err != nil {
				unregister() // before the alert goes out
			}
			return err
		}
	}
	for _, r := range regs {
		wg.Go(func() {
			for {
				select {
				case c := <-r.w.ch:
					send(c)
				case <-ctx.Done():
					return
				}
			}
		})
	}
	dial := func(addr, local netip.AddrPort) {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Control: client.ReusePortControl, Timeout: time.Second}
		for ctx.Err() == nil {
			c, err := d.DialContext(ctx, "tcp", addr.String())
			if err == nil {
				send(c)
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(tcpRetry):
			}
		}
	}
	wg.Go(func() {
		started := map[netip.AddrPort]bool{}
		for {
			addrs, changed := tg.snapshot()
			for _, a := range addrs {
				if s := sideFor(a); s != nil && !started[a] {
					started[a] = true
					wg.Go(func() { dial(a, s.local) })
				}
			}
			for _, r := range regs {
				r.acc.rematch(r.w) // parked connections from the new targets
			}
			select {
			case <-changed:
			case <-ctx.Done():
				return
			}
		}
	})

	type handshake struct {
		tc  *tls.Conn
		dur time.Duration
		err error
	}
	hsc := make(chan handshake)
	stop := make(chan struct{})
	hctx, hcancel := context.WithCancel(parent)
	var hwg sync.WaitGroup
	run := func(raw net.Conn) {
		hwg.Go(func() {
			var tc *tls.Conn
			// Beneath TLS, so that a stream Write's short frame
			// leaves with a full one (streammux.Batcher); writes
			// go to the TCP connection itself, for writev.
			w := raw
			if pc, ok := raw.(*prefixConn); ok {
				w = pc.Conn
			}
			bc := streammux.NewBatchConn(raw, w)
			if isClient {
				tc = tls.Client(bc, conf)
			} else {
				tc = tls.Server(bc, conf)
			}
			c, cc := context.WithTimeout(hctx, 10*time.Second)
			hs := time.Now()
			err := tc.HandshakeContext(c)
			// The handshake is one round trip on either side's clock
			// (the RTT estimate below). The dialer does not wait for
			// the welcome: its Conn reads it first (welcomeConn).
			dur := time.Since(hs)
			if err == nil && !isClient {
				unregister() // before the welcome goes out
				tc.SetWriteDeadline(time.Now().Add(10 * time.Second))
				_, err = tc.Write(welcome[:])
				tc.SetWriteDeadline(time.Time{})
			}
			cc()
			if err != nil {
				raw.Close()
				tc = nil
			}
			select {
			case hsc <- handshake{tc, dur, err}:
			case <-stop:
				if tc != nil {
					tc.Close()
				}
			}
		})
	}

	var (
		win      handshake
		got      bool
		pending  int
		conns    int
		lastErr  error
		raceDone = ctx.Done()
		rtt      time.Duration
	)
wait:
	for {
		select {
		case raw := <-raws:
			conns++
			if conns == 1 {
				rtt = time.Since(start)
			}
			if isClient && conns > 1 {
				raw.Close() // the client uses one connection
				continue
			}
			if isClient {
				cancel() // no other connection will be used
			}
			pending++
			run(raw)
		case h := <-hsc:
			pending--
			if h.err == nil {
				win, got = h, true
				break wait
			}
			lastErr = h.err
			// A peer refused in the handshake gets no second try on
			// another connection: it would present the same certificate.
			if isClient || isAuthFailure(h.err) || (raceDone == nil && pending == 0) {
				break wait
			}
		case <-raceDone:
			raceDone, raws = nil, nil
			if pending == 0 {
				break wait
			}
		}
	}
	// Stop the race and every other handshake; close what they made.
	cancel()
	unregister()
	wg.Wait()
	hcancel()
	close(stop)
	hwg.Wait()
	switch {
	case got:
	case conns == 0:
		targets, _ := tg.snapshot()
		return nil, n.noPath(peer, fmt.Sprintf("TCP simultaneous open with %v did not complete", targets))
	default:
		return nil, handshakeErr("TLS", "peer "+peer.String(), lastErr)
	}
	// A TLS 1.3 handshake takes one round trip on each side's clock; it is
	// a better estimate than the connect time, which includes waiting for
	// the peer's NAT to open.
	if win.dur < rtt {
		rtt = win.dur
	}
	c := newTLSConn(win.tc, peer, rtt, isClient, n.cfg.IdleTimeout)
	c.auth = authOf(peer)
	return c, nil
}
