package ewf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/relayclient"
	"github.com/ewf-project/ewf/wire"
)

// RelayMode says when a connection may go through a TURN relay.
type RelayMode string

// The relay modes (Config.Relay).
const (
	// RelayFallback relays only when hole punching found no direct path.
	// The allocation is made while punching, so it is ready when the
	// punch gives up. The default; without a relay offered by the server
	// it is RelayNever.
	RelayFallback RelayMode = "fallback"
	// RelayNever never relays: no direct path is ErrNoDirectPath.
	RelayNever RelayMode = "never"
	// RelayAlways connects through the relay, not trying a direct path.
	RelayAlways RelayMode = "always"
)

// Path is how a connection reaches the peer.
type Path string

// The paths of a connection.
const (
	PathDirect Path = "direct"
	PathRelay  Path = "relay"
)

// relayWait bounds how long the relayed path may take to come up once a
// dialer turns to it.
const relayWait = 10 * time.Second

// relayPath is one side's relayed endpoint for one introduction: a TURN
// allocation (package relayclient, its own socket), a punch attempt whose
// packets leave from the relayed address, and a QUIC transport on it that
// dials (dialer) or accepts (listener). Each side of an introduction makes
// one and signals its relayed address to the other; each attempt punches
// to the peer's public address, its candidates and its relayed address,
// so the path between two relayed endpoints crosses the relay twice at
// most, and once when one side can reach the other's relayed address
// directly. The relay only ever sees QUIC ciphertext.
type relayPath struct {
	n       *Node
	peer    wire.ID
	secret  wire.Secret
	overTCP bool // TURN over TCP even though UDP works: a TCP dial

	ready    chan struct{} // closed once the allocation is up (or failed: err set)
	err      error
	punching chan struct{} // closed once the relayed attempt exists
	done     chan struct{} // closed by close

	// Set before ready is closed.
	alloc *relayclient.Allocation
	a     *attempt
	ps    *pathSwitch // the socket QUIC reads and writes (migrate.go)
	tr    *quic.Transport
	ln    *quic.Listener

	mu       sync.Mutex
	closed   bool
	inUse    bool // a connection runs on it: only that connection's Close ends it
	released bool // the connection moved to a direct path: the allocation is gone
}

// startRelay begins a relayed endpoint for the introduction with peer in
// the background: credentials from the server, an allocation, permissions
// for every address of the peer, the punch attempt, and a SIGNAL of the
// relayed address to the peer. It returns nil when this node does not
// relay. now says that the allocation need not wait for NAT discovery
// (awaitNATPattern): the relay is the only path (RelayAlways, or UDP
// blocked on either side), or no UDP punch runs (a TCP dial). overTCP
// asks for TURN over TCP (a TCP dial, dialTCPOrRelay).
func (n *Node) startRelay(peer wire.ID, secret wire.Secret, now, overTCP bool) *relayPath {
	if n.cfg.Relay == RelayNever || n.noRelay.Load() {
		return nil
	}
	rp := &relayPath{n: n, peer: peer, secret: secret, overTCP: overTCP,
		ready: make(chan struct{}), punching: make(chan struct{}), done: make(chan struct{})}
	n.mu.Lock()
	old := n.relays[peer]
	n.relays[peer] = rp
	n.mu.Unlock()
	if old != nil {
		n.wg.Add(1)
		// Unless a connection runs on it: that one lives on until closed.
		go func() { defer n.wg.Done(); old.close(false) }()
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if now || n.awaitNATPattern(rp.done, n.cfg.PunchTimeout/2) {
			rp.err = rp.setUp()
		} else {
			rp.err = net.ErrClosed // a direct connection came first
		}
		if rp.err != nil {
			n.log.Debug("relay", "peer", peer, "err", rp.err)
		}
		close(rp.ready)
		rp.addTargets(n.PeerRelayed(peer)) // signalled before the allocation was up
		// An unused endpoint ends with the introduction.
		t := time.NewTimer(2*n.cfg.PunchTimeout + 30*time.Second)
		defer t.Stop()
		select {
		case <-t.C:
			rp.close(false)
		case <-rp.done:
			return
		case <-n.ctx.Done():
			rp.close(true)
			return
		}
		// In use: the connection's Close ends it, or the node's.
		select {
		case <-rp.done:
		case <-n.ctx.Done():
			rp.close(true)
		}
	}()
	return rp
}

// awaitNATPattern waits, at most d, until NAT discovery has learned this
// node's port allocation pattern, or is not running. A TURN allocation
// opens a socket of its own, and so a new mapping on the node's NAT;
// behind a NAT that allocates ports in sequence, one made while discovery
// samples the ports makes the pattern look random, and two sequential NATs
// that meet directly (birthday.go) then fall back to the relay instead:
// the lab matrix showed it. Discovery learns the pattern within a few
// round trips, and the relay is needed only once the punch gives up. It
// reports false when done closed while it waited (a direct connection
// ended the endpoint first): then no allocation is needed at all.
func (n *Node) awaitNATPattern(done <-chan struct{}, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		n.nat.mu.Lock()
		busy := n.nat.running && !n.nat.known
		n.nat.mu.Unlock()
		if !busy || !time.Now().Before(deadline) {
			return true
		}
		select {
		case <-n.ctx.Done():
			return true // setUp ends at once on the node's context
		case <-done:
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (rp *relayPath) setUp() error {
	n := rp.n
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.PunchTimeout)
	defer cancel()
	creds, err := n.ctl().Relay(ctx, n.self, n.currentKey())
	if errors.Is(err, client.ErrNoRelay) {
		n.noRelay.Store(true) // the server offers none: stop asking
		return err
	}
	if err != nil {
		return fmt.Errorf("relay credentials: %w", err)
	}
	urls := creds.URLs
	if n.UDPBlocked() {
		// TURN over TCP at once: over UDP it would only time out.
		urls = tcpURLs(urls)
	} else if t := tcpURLs(urls); rp.overTCP && len(t) > 0 {
		// A TCP dial keeps this host's packets on TCP, as asked, where
		// the relay offers TURN over TCP; over UDP otherwise.
		urls = t
	}
	alloc, err := relayclient.Allocate(ctx, relayclient.Config{
		URLs: urls, Username: creds.Username, Password: creds.Password, Logger: n.log,
	})
	if err != nil {
		return err
	}
	rp.mu.Lock()
	if rp.closed {
		rp.mu.Unlock()
		alloc.Close()
		return net.ErrClosed
	}
	rp.alloc = alloc
	rp.mu.Unlock()
	// QUIC runs on a path switch over the relayed socket, so that the
	// connection can move to a direct path later (migrate.go).
	rp.ps = newPathSwitch(n, alloc.PacketConn(), rp.receive)
	rp.tr = &quic.Transport{Conn: rp.ps, ConnectionIDGenerator: rp.ps.cids}
	rp.ln, err = rp.tr.Listen(&tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{alpn},
		GetConfigForClient: n.configForClient,
	}, n.quicConfig())
	if err != nil {
		return err
	}
	n.wg.Add(1)
	go func() { defer n.wg.Done(); rp.accept() }()
	n.log.Debug("relay allocated", "peer", rp.peer, "relayed", alloc.Relayed(),
		"server", alloc.Server(), "transport", alloc.Transport())
	if err := n.SignalRelayed(ctx, rp.peer, []netip.AddrPort{alloc.Relayed()}); err != nil {
		return fmt.Errorf("signal the relayed address: %w", err)
	}
	return nil
}

// receive hands a PUNCH that arrived at the relayed address to the
// relayed attempt, once there is one.
func (rp *relayPath) receive(m *wire.Message, from netip.AddrPort) {
	rp.mu.Lock()
	a := rp.a
	rp.mu.Unlock()
	if a != nil && m.SourceID == rp.peer {
		a.receive(m, from)
	}
}

// addTargets adds relayed addresses of the peer (signalled) to the relayed
// attempt, making it with the first. The relayed attempt punches only
// between relayed addresses, and the node's own attempt only between the
// node's socket and the peer's addresses, so that no path is taken for
// direct that is not.
func (rp *relayPath) addTargets(addrs []netip.AddrPort) {
	if len(addrs) == 0 {
		return
	}
	select {
	case <-rp.ready:
	default:
		// setUp adds what was signalled meanwhile (PeerRelayed) when done.
		return
	}
	if rp.err != nil {
		return
	}
	var ips []netip.Addr
	for _, a := range addrs {
		ips = append(ips, a.Addr())
	}
	if err := rp.alloc.Permit(ips...); err != nil {
		rp.n.log.Debug("relay permission", "peer", rp.peer, "addrs", addrs, "err", err)
	}
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if rp.closed {
		return
	}
	if rp.a != nil {
		rp.a.addCandidates(addrs)
		return
	}
	pc := rp.alloc.PacketConn()
	// The relayed attempt is the last resort: it gets relayWait even
	// when the punch timeout is shorter.
	a, err := rp.n.newAttempt(rp.peer, rp.secret, addrs, func(b []byte, to netip.AddrPort) {
		pc.WriteTo(b, net.UDPAddrFromAddrPort(to))
	}, max(rp.n.cfg.PunchTimeout, relayWait))
	if err != nil {
		rp.n.log.Debug("relayed punch", "peer", rp.peer, "err", err)
		return
	}
	rp.a = a
	close(rp.punching)
	rp.n.wg.Add(1)
	go a.drive() // drive calls n.wg.Done
}

// relayedSignalled is the SIGNAL hook: the peer's relayed addresses join
// this node's relayed attempt with it.
func (n *Node) relayedSignalled(peer wire.ID, relayed []wire.Address) {
	n.mu.Lock()
	rp := n.relays[peer]
	n.mu.Unlock()
	if rp == nil {
		return
	}
	var addrs []netip.AddrPort
	for _, r := range relayed {
		if r.Transport == wire.TransportUDP {
			addrs = append(addrs, r.AddrPort)
		}
	}
	rp.addTargets(addrs)
}

// wait blocks until the relayed attempt has a path, and returns it. It
// waits at most signalGrace for the peer's relayed address: after a punch
// that gave up, the peer has had the punch timeout to allocate and signal,
// and a peer that never relays never signals, so the dialer need not wait
// the full relayWait for it.
func (rp *relayPath) wait(ctx context.Context, signalGrace time.Duration) (netip.AddrPort, time.Duration, error) {
	select {
	case <-rp.ready:
	case <-ctx.Done():
		return netip.AddrPort{}, 0, ctx.Err()
	}
	if rp.err != nil {
		return netip.AddrPort{}, 0, rp.err
	}
	ctx, cancel := context.WithTimeout(ctx, relayWait)
	defer cancel()
	grace := time.NewTimer(signalGrace)
	defer grace.Stop()
	select {
	case <-rp.punching:
	case <-grace.C:
		return netip.AddrPort{}, 0, errors.New("the peer signalled no relayed address (it does not relay)")
	case <-ctx.Done():
		return netip.AddrPort{}, 0, fmt.Errorf("the peer signalled no relayed address: %w", ctx.Err())
	}
	rp.mu.Lock()
	a := rp.a
	rp.mu.Unlock()
	return a.wait(ctx)
}

// dial opens the QUIC connection to the peer over the relayed path.
func (rp *relayPath) dial(ctx context.Context, path netip.AddrPort, rtt time.Duration) (*Conn, error) {
	n := rp.n
	conf, err := n.tlsConfig(rp.secret, rp.peer, true)
	if err != nil {
		return nil, err
	}
	qc, err := rp.tr.Dial(ctx, net.UDPAddrFromAddrPort(path), conf, n.quicConfig())
	if err != nil {
		return nil, handshakeErr("QUIC", fmt.Sprint(path, " over the relay"), err)
	}
	c, err := openConn(ctx, qc, rp.peer, rtt)
	if err != nil {
		return nil, err
	}
	rp.adopt(c)
	return c, nil
}

// accept delivers the connections the peer makes to the relayed address.
func (rp *relayPath) accept() {
	rp.n.serveQUIC(rp.ln, "accept over the relay", rp.adopt)
}

// adopt marks c as running over this relayed endpoint, which then lives
// until c is closed.
func (rp *relayPath) adopt(c *Conn) {
	rp.mu.Lock()
	rp.inUse = true
	rp.mu.Unlock()
	c.path, c.relay, c.relayTr = PathRelay, rp.alloc.Relayed(), Transport(rp.alloc.Transport())
	prev := c.onClose
	c.onClose = func() {
		rp.close(true)
		if prev != nil {
			prev()
		}
	}
	rp.n.startMigrator(rp, c)
}

// release closes the allocation and the relayed attempt of a connection
// that moved to a direct path, keeping the QUIC transport on the path
// switch, which now carries the connection.
func (rp *relayPath) release() {
	rp.mu.Lock()
	if rp.closed || rp.released {
		rp.mu.Unlock()
		return
	}
	rp.released = true
	a := rp.a
	rp.mu.Unlock()
	rp.ps.released.Store(true)
	if a != nil {
		a.stop()
	}
	rp.alloc.Close()
	rp.n.log.Debug("relay released", "peer", rp.peer, "relayed", rp.alloc.Relayed())
}

// close ends the endpoint unless a connection uses it and force is false.
// It waits for the set-up to finish, so it must not run on a goroutine the
// set-up waits for.
func (rp *relayPath) close(force bool) {
	rp.mu.Lock()
	if rp.closed || (rp.inUse && !force) {
		rp.mu.Unlock()
		return
	}
	rp.closed = true
	close(rp.done)
	rp.mu.Unlock()
	n := rp.n
	n.mu.Lock()
	if n.relays[rp.peer] == rp {
		delete(n.relays, rp.peer)
	}
	n.mu.Unlock()
	<-rp.ready // setUp runs under the node's context: this is short on Close
	rp.mu.Lock()
	a := rp.a
	rp.mu.Unlock()
	if a != nil {
		a.stop()
	}
	if rp.ln != nil {
		rp.ln.Close()
	}
	if rp.tr != nil {
		rp.tr.Close()
	}
	if rp.ps != nil {
		rp.ps.Close()
	}
	if rp.alloc != nil {
		rp.alloc.Close()
	}
}

// openConn opens the connection's stream on a new QUIC connection and
// sends the preamble (node.go). It does not wait for the acceptor's
// welcome (tls.go): the Conn's first Read takes it, so Dial returns when
// the handshake is done, a peer round trip sooner.
func openConn(ctx context.Context, qc *quic.Conn, peer wire.ID, rtt time.Duration) (*Conn, error) {
	st, err := qc.OpenStreamSync(ctx)
	if err == nil {
		_, err = st.Write(preamble[:])
	}
	if err != nil {
		qc.CloseWithError(0, "")
		if isAuthFailure(err) {
			// The acceptor's refusal (CRYPTO_ERROR) can end the
			// connection before the stream opens.
			return nil, handshakeErr("QUIC", qc.RemoteAddr(), err)
		}
		return nil, fmt.Errorf("ewf: open stream to %s: %w", qc.RemoteAddr(), err)
	}
	c := newQUICConn(qc, st, peer, rtt)
	c.welcomed.Store(false)
	c.auth = authOf(peer)
	return c, nil
}

// settlePath is called for every connection made on the node's own
// socket: it marks c as relayed when its remote address is a relayed
// address the peer signalled (a relayed path all the same), and otherwise
// ends the relayed endpoint made for the peer, which a direct connection
// does not need.
func (n *Node) settlePath(c *Conn) {
	n.viaPeerRelay(c)
	if c.path != PathDirect {
		return
	}
	n.mu.Lock()
	rp := n.relays[c.peer]
	n.mu.Unlock()
	if rp != nil {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); rp.close(false) }()
	}
}

func (n *Node) viaPeerRelay(c *Conn) {
	ua, ok := c.RemoteAddr().(*net.UDPAddr)
	if !ok {
		return
	}
	ap := ua.AddrPort()
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	for _, r := range n.PeerRelayed(c.peer) {
		if r == ap {
			// This side sends UDP from its own socket to the peer's
			// relayed address.
			c.path, c.relay, c.relayTr = PathRelay, r, TransportUDP
		}
	}
}

// afterPunchGrace is how long a dialer whose punch gave up still waits
// for the peer's relayed address (signalGrace of relayPath.wait).
const afterPunchGrace = 5 * time.Second

// dialTCPOrRelay is Dial over TCP: the simultaneous open (tcp.go) and,
// when it finds no path, the relay, as a UDP dial falls back. TLS over TCP
// cannot run over TURN, which relays datagrams (RFC 8656; TCP relaying,
// RFC 6062, is neither in pion/turn nor in the TURN-over-TCP connection a
// UDP-blocked node already uses), so the relayed session is the same QUIC
// session as a UDP dial's, end to end, reported transport=udp path=relay;
// this side reaches the relay over TURN over TCP where the relay offers
// it, so that its own packets stay on TCP as asked (Conn.RelayTransport,
// relay_transport=tcp). The allocation is made while the race runs, as
// for UDP, so it is ready when the race gives up.
func (n *Node) dialTCPOrRelay(ctx context.Context, peer wire.ID, secret wire.Secret, tg *tcpTargets) (*Conn, error) {
	always := n.cfg.Relay == RelayAlways
	rp := n.startRelay(peer, secret, true, true)
	if rp != nil && always {
		return n.dialFallback(ctx, rp, ErrNoDirectPath, false)
	}
	c, err := n.dialTCP(ctx, peer, secret, tg, true)
	if err != nil {
		return n.dialFallback(ctx, rp, err, true)
	}
	if rp != nil {
		// Direct: the relayed endpoint is not needed.
		n.wg.Add(1)
		go func() { defer n.wg.Done(); rp.close(false) }()
	}
	return c, nil
}

// dialFallback is Dial's relayed path after the direct attempt ended with
// derr (or, with RelayAlways, instead of one: punched false): over this
// node's relayed endpoint, if it has one.
func (n *Node) dialFallback(ctx context.Context, rp *relayPath, derr error, punched bool) (*Conn, error) {
	if rp == nil || !errors.Is(derr, ErrNoDirectPath) {
		return nil, derr
	}
	grace := relayWait
	if punched {
		grace = afterPunchGrace
	}
	path, rtt, err := rp.wait(ctx, grace)
	if err != nil {
		rp.close(true)
		return nil, fmt.Errorf("%w; no relayed path either: %w", derr, err)
	}
	c, err := rp.dial(ctx, path, rtt)
	if err != nil {
		rp.close(true)
		return nil, err
	}
	n.log.Debug("relayed", "peer", rp.peer, "relayed", c.relay, "path", path)
	return c, nil
}
