package ewf

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/wire"
)

// Node is one host's presence at the rendezvous server: its identity, its
// UDP socket (shared by the server conversation, hole punching and QUIC),
// its bindings, kept alive, and optionally a TCP binding. Listen and Dial
// are built on it; use a Node directly to accept and dial on one identity.
type Node struct {
	cfg     Config
	log     *slog.Logger
	self    wire.ID
	keyMu   sync.Mutex
	key     wire.Key           // changes when the node registers again: read with currentKey
	idKey   ed25519.PrivateKey // nil for a legacy identity; fixed for the node's life
	ident   string             // the identity file's path
	server  netip.AddrPort     // the first of servers
	servers []netip.AddrPort   // Config.Server, resolved (failover.go)
	srvIdx  atomic.Int32       // index of the current one, modulo len(servers)

	sock   *net.UDPConn
	sc     *sockConn // sock as quic-go reads it: STUN and X taken out (mux.go)
	rc     *client.Client
	tr     *quic.Transport
	ql     *quic.Listener
	bound  bool                    // start got past binding (Open's failover loop)
	tcp    atomic.Pointer[tcpSide] // nil unless EnableTCP and bound, or UDP is blocked (blocked.go)
	udpUp  atomic.Bool             // the UDP binding is made; false: UDP is blocked (blocked.go)
	public atomic.Value

	// tcpHost is the TCP side of the other family (tcp.go), set by
	// syncTCPHost under tcpHostMu; nil when the host has no such address.
	tcpHost   atomic.Pointer[tcpSide]
	tcpHostMu sync.Mutex

	mu       sync.Mutex
	attempts map[wire.ID]*attempt     // by peer ID: routes PUNCH messages
	sessions map[wire.ID]*session     // by peer ID: routes SIGNALs (signal.go)
	relays   map[wire.ID]*relayPath   // by peer ID: relayed endpoints (relay.go)
	live     map[*quic.Conn]*liveConn // direct QUIC connections that follow a move (roam.go)
	// migrators, by peer ID: background punching of relayed connections
	// (migrate.go); divertMu serialises changes of sc.diverts.
	migrators map[wire.ID]*migrator
	divertMu  sync.Mutex
	noRelay   atomic.Bool // the server offers no relay
	// pendingSignals holds SIGNALs that came before their introduction.
	pendingSignals map[wire.ID]client.Signal
	intros         map[string]*intro // by TLS server name: picks the certificate

	nat natState

	accepted chan *Conn
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	closed   sync.Once
}

// intro is what a listener remembers of an introduction until the
// connection it announced is made or it expires.
type intro struct {
	peer    wire.ID
	secret  wire.Secret
	tls     *tls.Config
	expires time.Time
}

// Open registers this host with the server (creating its identity on first
// use), learns its public address, binds it and keeps it bound until Close.
func Open(ctx context.Context, cfg Config) (*Node, error) {
	if err := cfg.populate(); err != nil {
		return nil, err
	}
	servers, err := resolveServers(ctx, cfg.Server)
	if err != nil {
		return nil, err
	}
	server := servers[0]
	laddr, err := net.ResolveUDPAddr("udp", cfg.LocalAddr)
	if err != nil {
		return nil, fmt.Errorf("ewf: local address %q: %w", cfg.LocalAddr, err)
	}
	sock, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, fmt.Errorf("ewf: open UDP socket: %w", err)
	}
	n := &Node{
		cfg:            cfg,
		log:            cfg.Logger,
		server:         server,
		servers:        servers,
		sock:           sock,
		attempts:       make(map[wire.ID]*attempt),
		sessions:       make(map[wire.ID]*session),
		relays:         make(map[wire.ID]*relayPath),
		migrators:      make(map[wire.ID]*migrator),
		pendingSignals: make(map[wire.ID]client.Signal),
		intros:         make(map[string]*intro),
		accepted:       make(chan *Conn, 16),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.public.Store(netip.AddrPort{}) // until the UDP binding is made
	rcfg := client.Config{
		Server: server, // names the first server in errors (failover.go)
		Send: func(b []byte) error {
			if cfg.blockUDP != nil && cfg.blockUDP.Load() {
				return nil // tests: a network that drops UDP (blocked_test.go)
			}
			_, err := n.tr.WriteTo(b, net.UDPAddrFromAddrPort(n.currentServer()))
			return err
		},
		Logger:      cfg.Logger,
		OnIntroduce: n.onIntroduce,
		OnSignal:    n.onSignal,
	}
	if len(servers) > 1 {
		rcfg.MaxAttempts, rcfg.LastWait = failoverAttempts, failoverLastWait
		rcfg.KeepGiveUp = refreshGiveUp
	}
	n.rc = client.New(rcfg)
	// quic-go reads the socket from here on, also for the rendezvous
	// client (mux.go); the listener only accepts peers introduced later.
	n.sc = newSockConn(sock, servers)
	n.sc.toServer = func(b []byte) { n.rc.HandlePacket(b) }
	n.sc.toPunch = n.routePunch
	n.sc.dropPeers = cfg.dropPeers
	n.tr = &quic.Transport{Conn: n.sc}
	n.ql, err = n.tr.Listen(&tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{alpn},
		GetConfigForClient: n.configForClient,
	}, n.quicConfig())
	if err != nil {
		n.tr.Close()
		sock.Close()
		return nil, fmt.Errorf("ewf: start QUIC: %w", err)
	}
	for tried := 1; ; tried++ {
		err := n.start(ctx)
		if err == nil {
			break
		}
		// A server of the list that does not answer: try the next one,
		// once each (failover.go). start fails before it is bound then.
		if n.bound || tried == len(servers) || ctx.Err() != nil || !n.failover(n.currentServer(), err, false) {
			n.Close()
			return nil, err
		}
	}
	return n, nil
}

func (n *Node) start(ctx context.Context) error {
	path := n.cfg.IdentityFile
	if path == "" {
		p, err := client.DefaultIdentityPath()
		if err != nil {
			return err
		}
		path = p
	}
	n.ident = path
	register := n.registerOpen // over TLS when Config.ServerTLS is set (servertls.go), over TCP when UDP is blocked (blocked.go)
	if err := adoptListKey(path, n.cfg.Server); err != nil {
		return err
	}
	ident := n.cfg.forged
	if ident == nil {
		var err error
		if ident, err = client.EnsureRegistered(ctx, path, n.cfg.Server, register); err != nil {
			return serverErr(err)
		}
	}
	n.idKey = ident.PrivateKey
	n.self, n.key = ident.ID, ident.Keys[n.cfg.Server]

	// The TCP binding needs its own connection and three round trips;
	// make them while the UDP binding is made. Without EnableTCP, it is
	// made only if UDP has no answer within Config.UDPWait (blocked.go).
	tr, udp, err := n.bindBoth(ctx, ident, path, register)
	if err != nil {
		return err
	}

	n.bound = true
	n.wg.Add(1)
	go n.acceptQUIC()
	if udp.err == nil {
		n.udpUp.Store(true)
		n.wg.Add(1)
		go n.keepUDP()
		n.checkNAT()
	}

	switch {
	case tr.side != nil:
		n.tcp.Store(tr.side)
		n.syncTCPHost(nil)
		n.wg.Add(1)
		go n.keepTCP(tr.side, nil)
	case tr.err != nil && n.cfg.Transport == TransportTCP:
		return tr.err
	case tr.err != nil && n.cfg.EnableTCP:
		// A listener still serves UDP peers when the server's TCP port
		// is out of reach or refused the binding (rate limited, a
		// connection closed during set-up), and is ready at once; the
		// TCP binding is tried again in the background, with backoff,
		// as after the connection of a TCP binding ends.
		n.log.Warn("TCP binding failed; accepting UDP peers only until it is made (retrying)", "err", tr.err)
		n.wg.Add(1)
		go n.keepTCP(nil, tr.err)
	case tr.err != nil:
		n.log.Warn("TCP binding failed; accepting UDP peers only", "err", tr.err)
	}
	if udp.err != nil {
		n.log.Warn("UDP to the server has no answer: bound over TCP only; peers connect through the relay",
			"udp", "blocked", "err", udp.err)
		n.wg.Add(1)
		go n.udpLater(udp.later, ident, path, register)
	}
	return nil
}

type tcpResult struct {
	side *tcpSide
	err  error
}

// bindUDP learns the public UDP address and binds it. If the server has
// forgotten our registration (it expired, or its data was reset), it
// registers the same ID again under a new KEY and reports rekeyed.
func (n *Node) bindUDP(ctx context.Context, ident *client.Identity, path string,
	register func(context.Context, wire.ID) (wire.Key, error)) (rekeyed bool, err error) {
	public, err := n.rc.PublicAddress(ctx)
	if err != nil {
		return false, serverErr(err)
	}
	err = n.rc.Bind(ctx, n.self, n.key, wire.Address{Transport: wire.TransportUDP, AddrPort: public})
	if errors.Is(err, client.ErrNotRegistered) {
		// The saved KEY is replaced only once the server has given a new
		// one: "not registered" comes unsigned (docs/PROTOCOL.md §18.4),
		// so anyone on the path can forge it, and a server that still
		// holds the ID answers the REGISTER with ID conflict.
		key, rerr := register(ctx, n.self)
		if rerr != nil {
			return false, serverErr(fmt.Errorf("ewf: the server said ID %v is not registered, but registering it again failed (KEY kept): %w", n.self, rerr))
		}
		rekeyed = true
		ident.Keys[n.cfg.Server] = key
		if err := ident.Save(path); err != nil {
			return rekeyed, err
		}
		n.keyMu.Lock() // bindUDP may run in the background (udpLater)
		n.key = key
		n.keyMu.Unlock()
		err = n.rc.Bind(ctx, n.self, key, wire.Address{Transport: wire.TransportUDP, AddrPort: public})
	}
	if err != nil {
		return rekeyed, serverErr(err)
	}
	n.public.Store(public)
	return rekeyed, nil
}

// keepUDP holds the UDP binding until the node closes. The refresh itself
// rides out a server that does not answer for a while (a restart) and
// binds a changed public address (a NAT rebinding, a new network). What
// it cannot do alone is bind an ID the server no longer knows (the
// registration expired while the host was away, or the server lost its
// data): then the node registers the same ID again, which the server
// allows once the ID is gone, and keeps the new KEY.
func (n *Node) keepUDP() {
	defer n.wg.Done()
	backoff := time.Second
	for {
		err := n.keep(n.rc, wire.TransportUDP, func(a netip.AddrPort) {
			old := n.PublicAddr()
			n.public.Store(a)
			n.checkNAT()
			if old.IsValid() && old != a {
				n.roamed(old, a) // roam.go
			}
		})
		if errors.Is(err, client.ErrNotRegistered) {
			err = n.registerAgain(n.ctx)
			if err == nil {
				n.log.Warn("registration was gone; registered the same ID again", "id", n.self)
				backoff = time.Second
				continue
			}
			n.log.Warn("registering again failed", "err", err)
		}
		// Anything else (a KEY the server refuses): try again, slowly.
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// registerAgainTCP is keepUDP's registering again for a node bound over
// TCP only (UDP blocked, blocked.go), where no UDP keepalive runs to learn
// that the registration is gone: when err (of a TCP refresh or binding)
// says the ID is not registered, it registers it again and reports
// whether that worked. With UDP up, keepUDP does it and the TCP binding
// picks up the new KEY.
func (n *Node) registerAgainTCP(err error) bool {
	if !errors.Is(err, client.ErrNotRegistered) || n.udpUp.Load() || n.ctx.Err() != nil {
		return false
	}
	if err := n.registerAgain(n.ctx); err != nil {
		n.log.Warn("registering again failed", "err", err)
		return false
	}
	n.log.Warn("registration was gone; registered the same ID again", "id", n.self, "udp", "blocked")
	return true
}

// registerAgain registers the node's ID again under a new KEY and saves
// the KEY in the identity file.
func (n *Node) registerAgain(ctx context.Context) error {
	ident, err := client.LoadIdentity(n.ident)
	if err != nil {
		return err
	}
	if ident.ID != n.self {
		return fmt.Errorf("ewf: identity file %s now holds ID %s, not %s", n.ident, ident.ID, n.self)
	}
	// As in bindUDP: the old KEY goes only when the server gives a new
	// one, so a forged "not registered" cannot make the node lose it.
	key, err := n.registerNow(ctx, n.self)
	if err != nil {
		return serverErr(fmt.Errorf("ewf: registering ID %v again (KEY kept): %w", n.self, err))
	}
	if ident.Keys == nil {
		ident.Keys = map[string]wire.Key{}
	}
	ident.Keys[n.cfg.Server] = key
	if err := ident.Save(n.ident); err != nil {
		return err
	}
	n.keyMu.Lock()
	n.key = key
	n.keyMu.Unlock()
	return nil
}

// currentKey is the node's KEY at the server.
func (n *Node) currentKey() wire.Key {
	n.keyMu.Lock()
	defer n.keyMu.Unlock()
	return n.key
}

// keep refreshes a binding until the node closes or the binding is lost,
// and returns why it ended.
func (n *Node) keep(rc *client.Client, tr wire.Transport, onChange func(netip.AddrPort)) error {
	interval := n.cfg.KeepaliveInterval
	if interval == nil {
		interval = client.DefaultKeepInterval
	}
	err := rc.Keep(n.ctx, n.self, n.currentKey(), tr, interval, func(a netip.AddrPort) {
		n.log.Debug("public address", "transport", tr.String(), "addr", a)
		onChange(a)
	}, func(err error) {
		n.log.Warn("binding refresh failed", "transport", tr.String(), "err", err)
		if tr == wire.TransportUDP {
			n.failover(n.currentServer(), err, false)
		}
	})
	if err != nil && n.ctx.Err() == nil {
		n.log.Warn("binding lost", "transport", tr.String(), "err", err)
	}
	return err
}

// keepTCP holds the TCP binding until the node closes. Unlike UDP, the
// binding lives on a connection, which ends when the server restarts or a
// NAT drops it; then it is made again on a new connection (bindTCPAgain).
// t is nil when Open's attempt failed with err: then the binding is
// tried again in the same way, so that a listener whose first TCP BIND
// was refused (rate limited, the server's TCP port not up yet) becomes
// reachable over TCP too rather than staying UDP-only for its life.
func (n *Node) keepTCP(t *tcpSide, err error) {
	defer n.wg.Done()
	for {
		ended := t != nil
		if ended {
			err = n.keep(t.conn.Client, wire.TransportTCP, func(a netip.AddrPort) { t.public.Store(a) })
			n.registerAgainTCP(err)
		}
		if t = n.bindTCPAgain(err, ended); t == nil {
			return // the node closed
		}
	}
}

// Backoff of bindTCPAgain: the first try tcpBindFirst after the failure,
// then doubling up to the keepalive interval (at least tcpBindFirst), so
// that a listener is bound over TCP again within about one keepalive
// interval of its server's return, as over UDP. After a "rate limited" or
// "try again later" answer the next try waits at least tcpBindLater: the
// server asked to slow down (docs/PROTOCOL.md §8.1, §9.1), and within a
// second another request over the rate only gets the connection closed.
const (
	tcpBindFirst = time.Second
	tcpBindLater = 4 * time.Second
)

// tcpBindJitter spreads a wait d over [3d/4, d], so that the listeners of
// a server that restarted (whose TCP connections all ended at once) do
// not all connect again in the same instant.
func tcpBindJitter(d time.Duration) time.Duration {
	return d - rand.N(d/4+1)
}

// bindTCPAgain makes the TCP binding again after err (the connection of
// the last one ended when ended is set, else Open's attempt failed), with
// backoff, until it is made or the node closes (nil). With several
// servers, after a connection ended each server is tried once at once
// (the one that ended the connection has likely died), then with backoff.
func (n *Node) bindTCPAgain(err error, ended bool) *tcpSide {
	quick := 0
	if ended && len(n.servers) >= 2 {
		quick = len(n.servers)
	}
	interval := n.cfg.KeepaliveInterval
	if interval == nil {
		interval = client.DefaultKeepInterval
	}
	for backoff := tcpBindFirst; ; {
		wait := time.Duration(0)
		if quick > 0 {
			quick--
		} else {
			if errors.Is(err, client.ErrRateLimited) || errors.Is(err, client.ErrTryLater) {
				backoff = max(backoff, tcpBindLater)
			}
			wait = tcpBindJitter(backoff)
			backoff = min(2*backoff, max(interval(), tcpBindFirst))
		}
		select {
		case <-n.ctx.Done():
			return nil
		case <-time.After(wait):
		}
		srv := n.currentServer()
		var nt *tcpSide
		nt, err = n.bindTCP(n.ctx, n.self, n.currentKey())
		if err != nil {
			n.log.Debug("TCP binding again", "err", err)
			if n.registerAgainTCP(err) {
				backoff, err = tcpBindFirst, nil // bind with the new KEY soon
				continue
			}
			n.failover(srv, err, true)
			continue
		}
		if old := n.tcp.Swap(nt); old != nil {
			old.close()
		}
		if n.ctx.Err() != nil { // Close ran meanwhile and closed the old one
			nt.close()
			return nil
		}
		if ended {
			n.log.Debug("TCP bound again", "public", nt.public.Load())
		} else {
			n.log.Info("TCP bound after the first attempt failed", "public", nt.public.Load())
		}
		n.syncTCPHost(nil) // the new server may be of the other family
		return nt
	}
}

// ID returns this node's ID.
func (n *Node) ID() ID { return n.self }

// Server returns the rendezvous server the node is bound at now (one of
// Config.Server's, which may change on failover).
func (n *Node) Server() netip.AddrPort { return n.currentServer() }

// PublicAddr returns this node's public UDP address as the server sees it.
func (n *Node) PublicAddr() netip.AddrPort { return n.public.Load().(netip.AddrPort) }

// PublicTCPAddr returns the public TCP address, if TCP is enabled.
func (n *Node) PublicTCPAddr() (netip.AddrPort, bool) {
	t := n.tcp.Load()
	if t == nil {
		return netip.AddrPort{}, false
	}
	return t.public.Load().(netip.AddrPort), true
}

// Close ends the node's bindings refresh, closes its sockets and every
// connection it made, and waits for its goroutines.
func (n *Node) Close() error {
	n.closed.Do(func() {
		n.cancel()
		if n.ql != nil {
			n.ql.Close()
		}
		if n.tr != nil {
			n.tr.Close()
		}
		if t := n.tcp.Load(); t != nil {
			t.close()
		}
		n.closeTCPHost()
		n.sock.Close()
		n.wg.Wait()
		n.mu.Lock()
		for _, a := range n.attempts {
			a.stop()
		}
		n.mu.Unlock()
	})
	return nil
}

// Accept waits for the next peer that connects, over either transport.
func (n *Node) Accept(ctx context.Context) (*Conn, error) {
	select {
	case c := <-n.accepted:
		return c, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-n.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Dial connects to peer over transport tr ("" means the Config's).
func (n *Node) Dial(ctx context.Context, peer ID, tr Transport) (*Conn, error) {
	if tr == "" {
		tr = n.cfg.Transport
	}
	if tr == TransportTCP && n.tcp.Load() == nil {
		if n.cfg.EnableTCP {
			return nil, errors.New("ewf: no TCP binding at the server yet (it is being tried again)")
		}
		return nil, errors.New("ewf: TCP dial needs Config.EnableTCP")
	}
	for k := 0; ; k++ {
		c, err := n.dialIntroduced(ctx, peer, tr, k < maxReintroductions)
		if errors.Is(err, errUnheard) {
			n.log.Info("no word from the peer since the introduction (INTRODUCE lost?): introducing again", "peer", peer)
			continue
		}
		if err != nil && k > 0 {
			// Say so: a failure after re-introductions is not the
			// punch's alone.
			err = fmt.Errorf("%w (introduction %d: the peer gave no sign of the earlier ones)", err, k+1)
		}
		return c, err
	}
}

// dialIntroduced is one introduction of Dial and what follows it. With
// watch, it gives up with errUnheard when the peer has neither SIGNALled
// nor punched reintroduceAfter after the introduction (its INTRODUCE was
// probably lost: docs/PROTOCOL.md §9.2), so that Dial introduces again.
func (n *Node) dialIntroduced(ctx context.Context, peer ID, tr Transport, watch bool) (*Conn, error) {
	began := time.Now()
	in, err := n.ctl().Introduce(ctx, n.self, n.currentKey(), peer, n.candidates())
	if err != nil {
		return nil, peerErr(err)
	}
	queryRTT := time.Since(began)
	// A peer whose allow list we are not on answers the introduction
	// with a refusal instead of punching (signal.go): it cancels ctx, and
	// Dial returns it. So does a peer unheard of (watchUnheard).
	ctx, refuse := context.WithCancelCause(ctx)
	defer refuse(nil)
	unheard := func(err error) error {
		if err != nil && errors.Is(context.Cause(ctx), errUnheard) {
			return errUnheard
		}
		return refusedErr(ctx, err)
	}
	if tr == TransportTCP {
		addr, ok := addressOf(in.Addresses, wire.TransportTCP)
		if !ok {
			return nil, fmt.Errorf("%w: peer %s has no TCP binding", ErrPeerOffline, peer)
		}
		// The peer SIGNALs its LAN TCP candidates once introduced; they
		// join the race as they come.
		tg := newTCPTargets(addr)
		s := n.addSession(peer, in.Secret, tg)
		n.watchRefusal(s, refuse)
		if watch {
			n.watchUnheard(ctx, s, peer, reintroduceAfter(queryRTT, n.cfg.PunchTimeout), refuse)
		}
		c, err := n.dialTCPOrRelay(ctx, peer, in.Secret, tg)
		return c, unheard(err)
	}
	s := n.addSession(peer, in.Secret, nil)
	n.watchRefusal(s, refuse)
	if watch {
		n.watchUnheard(ctx, s, peer, reintroduceAfter(queryRTT, n.cfg.PunchTimeout), refuse)
	}
	// Without UDP on either side no punch can succeed: straight to the
	// relay (blocked.go).
	_, peerUDP := addressOf(in.Addresses, wire.TransportUDP)
	relayOnly := n.cfg.Relay == RelayAlways || n.UDPBlocked() || !peerUDP
	rp := n.startRelay(peer, in.Secret, relayOnly, false)
	if rp != nil && relayOnly {
		c, err := n.dialFallback(ctx, rp, ErrNoDirectPath, false)
		return c, unheard(err)
	}
	a, err := n.startAttempt(peer, in.Secret, in.Addresses, nil, true)
	if err != nil {
		return nil, err
	}
	if _, ok := n.NAT(); ok {
		// The peer learns this side's NAT class, for birthday probing.
		n.signalBack(peer, in.Secret, nil)
	}
	path, rtt, err := a.wait(ctx)
	if err := unheard(err); errors.Is(err, errUnheard) {
		// The next introduction's startRelay replaces rp.
		return nil, err
	}
	if err := refusedErr(ctx, err); errors.Is(err, errRefused) {
		if rp != nil {
			n.wg.Add(1)
			go func() { defer n.wg.Done(); rp.close(true) }()
		}
		return nil, err
	}
	if err != nil {
		return n.dialFallback(ctx, rp, err, true)
	}
	conf, err := n.tlsConfig(in.Secret, peer, true)
	if err != nil {
		return nil, err
	}
	qtr := n.tr
	sock := a.takeHanded()
	if sock != nil {
		// The path came up on an extra socket of birthday probing: QUIC
		// runs there, on a transport of its own.
		qtr = n.quicOn(sock)
	}
	qc, err := qtr.Dial(ctx, net.UDPAddrFromAddrPort(path), conf, n.quicConfig())
	if err != nil {
		if sock != nil {
			qtr.Close()
			sock.Close()
		}
		return nil, handshakeErr("QUIC", path, err)
	}
	if sock != nil {
		n.closeWith(qc, qtr, sock)
	}
	c, err := openConn(ctx, qc, peer, rtt)
	if err != nil {
		return nil, err
	}
	if sock == nil {
		n.track(c, in.Secret, true) // roam.go
	}
	n.settlePath(c)
	return c, nil
}

// preamble opens every stream, because QUIC only tells the accepting side
// about a stream once data arrives on it, and a net.Conn must be usable
// before either side writes.
var preamble = [4]byte{'e', 'w', 'f', '1'}

// onIntroduce runs when the server tells us a peer wants to connect: punch
// towards it over UDP, and over TCP when it bound TCP and so do we; or,
// when the allow list does not name the peer, refuse it.
func (n *Node) onIntroduce(in client.Introduction) {
	if n.ctx.Err() != nil {
		return
	}
	if d := n.cfg.dropIntroduces; d != nil && d.Add(-1) >= 0 {
		return // tests: the INTRODUCE datagram was lost
	}
	if n.cfg.Allow != nil && !n.cfg.Allow(in.Peer) {
		n.wg.Add(1)
		go func() { defer n.wg.Done(); n.refuseIntroduction(in) }()
		return
	}
	n.answerIntroduction(in)
}

// refuseIntroduction tells a peer that is not on the allow list, through
// the server, that we will not connect to it (SIGNAL with REFUSED,
// docs/PROTOCOL.md §20.7), and does not punch: its Dial fails with
// ErrPeerAuth one server round trip after the introduction, and it gets no
// path to us. If the server does not relay the refusal (one older than
// REFUSED answers the SIGNAL with invalid attributes), we answer the
// introduction as before and refuse the peer in the TLS handshake.
func (n *Node) refuseIntroduction(in client.Introduction) {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.PunchTimeout)
	defer cancel()
	err := n.ctl().Signal(ctx, n.self, n.currentKey(), in.Peer, in.Secret,
		client.Signal{Refused: true, Refusal: wire.ReasonRefused})
	if err == nil {
		n.refused(in.Peer, errNotAllowed)
		return
	}
	if n.ctx.Err() != nil {
		return
	}
	n.log.Debug("refusal not relayed; refusing in the handshake", "peer", in.Peer, "err", err)
	n.answerIntroduction(in)
}

// answerIntroduction punches towards the peer of an introduction.
func (n *Node) answerIntroduction(in client.Introduction) {
	conf, err := n.tlsConfig(in.Secret, in.Peer, false)
	if err != nil {
		n.log.Warn("introduction", "err", err)
		return
	}
	n.mu.Lock()
	now := time.Now()
	for name, it := range n.intros {
		if now.After(it.expires) {
			delete(n.intros, name)
		}
	}
	n.intros[serverName(in.Secret)] = &intro{
		peer: in.Peer, secret: in.Secret, tls: conf,
		expires: now.Add(n.cfg.PunchTimeout + 30*time.Second),
	}
	n.mu.Unlock()
	n.log.Debug("introduced", "peer", in.Peer, "addresses", len(in.Addresses), "candidates", len(in.Candidates))
	// TCP: the querier's public TCP address and its LAN TCP candidates.
	var tg *tcpTargets
	if n.tcp.Load() != nil {
		var targets []netip.AddrPort
		for _, list := range [][]wire.Address{in.Addresses, in.Candidates} {
			for _, a := range list {
				if a.Transport == wire.TransportTCP {
					targets = append(targets, a.AddrPort)
				}
			}
		}
		if len(targets) > 0 {
			tg = newTCPTargets(targets...)
		}
	}
	s := n.addSession(in.Peer, in.Secret, tg)
	_, peerUDP := addressOf(in.Addresses, wire.TransportUDP)
	n.startRelay(in.Peer, in.Secret, n.cfg.Relay == RelayAlways || n.UDPBlocked() || !peerUDP, false)
	if n.UDPBlocked() {
		// No UDP punch from here: the relay (blocked.go).
	} else if _, err := n.startAttempt(in.Peer, in.Secret, in.Addresses, in.Candidates, false); err != nil {
		n.log.Warn("punch", "peer", in.Peer, "err", err)
	}
	// INTRODUCE brought the querier's candidates; ours go back by SIGNAL.
	n.signalBack(in.Peer, in.Secret, nil)
	if tg != nil {
		ctx, cancel := context.WithCancel(n.ctx)
		n.mu.Lock()
		s.stopTCP = cancel
		n.mu.Unlock()
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			defer cancel()
			c, err := n.dialTCP(ctx, in.Peer, in.Secret, tg, false)
			if err != nil {
				n.log.Debug("tcp punch", "peer", in.Peer, "err", err)
				return
			}
			n.deliver(c)
		}()
	}
}

func (n *Node) deliver(c *Conn) {
	select {
	case n.accepted <- c:
	case <-n.ctx.Done():
		c.Close()
	}
}

// configForClient picks the TLS configuration of the introduction the
// dialer names, refusing dialers nobody introduced.
func (n *Node) configForClient(hello *tls.ClientHelloInfo) (*tls.Config, error) {
	n.mu.Lock()
	it := n.intros[hello.ServerName]
	n.mu.Unlock()
	if it == nil {
		return nil, ErrPeerAuth
	}
	return it.tls, nil
}

func (n *Node) acceptQUIC() {
	defer n.wg.Done()
	n.serveQUIC(n.ql, "accept", n.settlePath)
}

// serveQUIC delivers the connections ln accepts, each once its stream is
// open and settle has marked its path, until ln or the node closes.
func (n *Node) serveQUIC(ln *quic.Listener, what string, settle func(*Conn)) {
	for {
		qc, err := ln.Accept(n.ctx)
		if err != nil {
			return
		}
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			c, err := n.acceptStream(qc)
			if err != nil {
				n.log.Debug(what, "remote", qc.RemoteAddr(), "err", err)
				qc.CloseWithError(1, "")
				return
			}
			settle(c)
			n.deliver(c)
		}()
	}
}

func (n *Node) acceptStream(qc *quic.Conn) (*Conn, error) {
	n.mu.Lock()
	it := n.intros[qc.ConnectionState().TLS.ServerName]
	n.mu.Unlock()
	if it == nil {
		return nil, ErrPeerAuth
	}
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	st, err := qc.AcceptStream(ctx)
	if err != nil {
		return nil, err
	}
	var pre [len(preamble)]byte
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(st, pre[:]); err != nil || pre != preamble {
		return nil, errors.New("ewf: bad stream preamble")
	}
	st.SetReadDeadline(time.Time{})
	st.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := st.Write(welcome[:]); err != nil {
		return nil, err
	}
	st.SetWriteDeadline(time.Time{})
	var rtt time.Duration
	n.mu.Lock()
	a := n.attempts[it.peer]
	n.mu.Unlock()
	if a != nil {
		_, rtt, _ = a.result()
	}
	// The dialer chose QUIC: the TCP race of this introduction is idle.
	n.stopTCPRace(it.peer, it.secret)
	c := newQUICConn(qc, st, it.peer, rtt)
	c.auth = authOf(it.peer)
	n.track(c, it.secret, false) // roam.go
	return c, nil
}

func addressOf(as []wire.Address, tr wire.Transport) (netip.AddrPort, bool) {
	for _, a := range as {
		if a.Transport == tr {
			return a.AddrPort, true
		}
	}
	return netip.AddrPort{}, false
}

// serverErr names the server in errors about talking to it.
// Every step of Open is a round trip with the server, so a caller's
// deadline passing there means the server did not answer in time.
func serverErr(err error) error {
	if errors.Is(err, client.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: %w", ErrServerUnreachable, err)
	}
	return err
}

// peerErr turns the server's answers about a peer into ewf's errors.
func peerErr(err error) error {
	switch {
	case errors.Is(err, client.ErrNotRegistered):
		return fmt.Errorf("%w: %w", ErrUnknownPeer, err)
	case errors.Is(err, client.ErrNotBound):
		return fmt.Errorf("%w: %w", ErrPeerOffline, err)
	}
	return serverErr(err)
}
