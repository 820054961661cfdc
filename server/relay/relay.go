// Package relay is ewfd's embedded TURN relay (RFC 8656), built on
// github.com/pion/turn: the fallback for two clients that cannot reach each
// other directly (both behind NATs that pick a new port per destination, or
// one on a network that drops all UDP).
//
// What this package adds to pion/turn is policy:
//
//   - Authentication with the short-lived TURN REST credentials that ewfd's
//     RELAY answer hands out (cred.go), and only for IDs whose registration
//     is still in the store.
//   - A peer-address filter (policy.go) that keeps the relay from being a
//     proxy into loopback, private, link-local, multicast and reserved
//     space, in every IPv6 encoding of an IPv4 address.
//   - Quotas per ID and per source IP: allocations, bandwidth and lifetime.
//   - Metrics on the caller's registry.
//
// The relay serves TURN on its own UDP and TCP port (3480 by default), not
// on ewfd's 3478: pion/turn owns its sockets, and putting TURN into the
// STUN/X demultiplexer would add it to the hot path of every request.
// Relayed (peer-facing) sockets are UDP only, from a port range; TURN over
// TCP is served for clients whose UDP is blocked, but TCP relaying (RFC
// 6062) is refused.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v4"
	"github.com/pion/turn/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/ewf-project/ewf/internal/pionlog"
)

// Config configures a Relay. The zero value of each field is the default
// named in its comment, except where it says "required".
type Config struct {
	// Listen is the host:port served on UDP and TCP. Empty means
	// ":3480" (3479 is the RFC 5780 alternate port of -alternate). Port 0
	// picks one free for both (tests).
	Listen string

	// RelayIPs are the addresses the relayed sockets are reached at, given
	// to clients in XOR-RELAYED-ADDRESS: at most one IPv4 and one IPv6.
	// An allocation of a family with none is refused. Required. A
	// relayed socket is bound to its relay IP if that is an address of
	// this host, else to the unspecified address of its family (a relay
	// behind a 1:1 NAT).
	RelayIPs []netip.Addr

	// PortMin and PortMax bound the relayed ports. Zero means
	// 49152–65535.
	PortMin, PortMax uint16

	// Secret is the shared secret of the credentials (cred.go). Required.
	Secret []byte

	// Realm is the TURN realm. Empty means "ewf".
	Realm string

	// Registered reports whether id's registration is alive; an
	// allocation request of any other ID is refused. Required.
	Registered func(id [16]byte) bool

	// Policy filters peer addresses.
	Policy Policy

	// MaxAllocs caps allocations in total; zero means 10,000.
	// MaxAllocsPerID and MaxAllocsPerIP cap them per ID and per client
	// source IP (IPv6: per /64); zero means 4 and 32.
	MaxAllocs, MaxAllocsPerID, MaxAllocsPerIP int

	// BandwidthPerID and BandwidthPerIP cap the bytes per second relayed
	// for one ID and one client source IP, both directions together;
	// packets beyond are dropped (the relay is UDP, so congestion control
	// adapts). Zero means 4 MB/s and 16 MB/s; the burst is one second's
	// worth.
	BandwidthPerID, BandwidthPerIP float64

	// MaxLifetime ends an allocation this long after it was made,
	// however often it is refreshed. Zero means one hour.
	MaxLifetime time.Duration

	// AllocationLifetime is the lifetime granted when a client asks for
	// none; clients refresh before it ends. Zero means 10 minutes.
	AllocationLifetime time.Duration

	// Logger receives the relay's logs; pion/turn's own go to Debug.
	Logger *slog.Logger

	// Registry receives the relay's metrics. Required.
	Registry *prometheus.Registry

	// Now is the clock of credential expiry. Nil means time.Now.
	Now func() time.Time
}

// Defaults of Config.
const (
	DefaultPort               = 3480
	DefaultPortMin            = 49152
	DefaultPortMax            = 65535
	DefaultRealm              = "ewf"
	DefaultMaxAllocs          = 10_000
	DefaultMaxAllocsPerID     = 4
	DefaultMaxAllocsPerIP     = 32
	DefaultBandwidthPerID     = 4 << 20
	DefaultBandwidthPerIP     = 16 << 20
	DefaultMaxLifetime        = time.Hour
	DefaultAllocationLifetime = 10 * time.Minute
)

// ErrConfig marks a bad Config.
var ErrConfig = errors.New("relay: invalid config")

func (c Config) populate() (Config, error) {
	if c.Listen == "" {
		c.Listen = ":" + strconv.Itoa(DefaultPort)
	}
	var fams [2]int
	ips := make([]netip.Addr, 0, len(c.RelayIPs))
	for _, a := range c.RelayIPs {
		a = a.Unmap().WithZone("")
		if !a.IsValid() || a.IsUnspecified() {
			return c, fmt.Errorf("%w: relay IP %v: a relay IP must be a specific address", ErrConfig, a)
		}
		f := 0
		if a.Is6() {
			f = 1
		}
		if fams[f]++; fams[f] > 1 {
			return c, fmt.Errorf("%w: at most one relay IP per address family", ErrConfig)
		}
		ips = append(ips, a)
	}
	if len(ips) == 0 {
		return c, fmt.Errorf("%w: a relay IP is required", ErrConfig)
	}
	c.RelayIPs = ips
	if c.PortMin == 0 {
		c.PortMin = DefaultPortMin
	}
	if c.PortMax == 0 {
		c.PortMax = DefaultPortMax
	}
	if c.PortMin > c.PortMax {
		return c, fmt.Errorf("%w: relay ports %d-%d: empty range", ErrConfig, c.PortMin, c.PortMax)
	}
	if len(c.Secret) == 0 {
		return c, fmt.Errorf("%w: Secret is required", ErrConfig)
	}
	if c.Registered == nil || c.Registry == nil {
		return c, fmt.Errorf("%w: Registered and Registry are required", ErrConfig)
	}
	if c.Realm == "" {
		c.Realm = DefaultRealm
	}
	for _, f := range []struct {
		v   *int
		def int
	}{{&c.MaxAllocs, DefaultMaxAllocs}, {&c.MaxAllocsPerID, DefaultMaxAllocsPerID}, {&c.MaxAllocsPerIP, DefaultMaxAllocsPerIP}} {
		if *f.v < 0 {
			return c, fmt.Errorf("%w: allocation caps must not be negative", ErrConfig)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	for _, f := range []struct {
		v   *float64
		def float64
	}{{&c.BandwidthPerID, DefaultBandwidthPerID}, {&c.BandwidthPerIP, DefaultBandwidthPerIP}} {
		if !(*f.v >= 0) || *f.v > 1e12 {
			return c, fmt.Errorf("%w: bandwidth must be a finite number of bytes per second, not negative", ErrConfig)
		}
		if *f.v == 0 {
			*f.v = f.def
		}
	}
	if c.MaxLifetime < 0 || c.AllocationLifetime < 0 {
		return c, fmt.Errorf("%w: lifetimes must not be negative", ErrConfig)
	}
	if c.MaxLifetime == 0 {
		c.MaxLifetime = DefaultMaxLifetime
	}
	if c.AllocationLifetime == 0 {
		c.AllocationLifetime = DefaultAllocationLifetime
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// Relay is a running TURN relay. Close stops it.
type Relay struct {
	cfg  Config
	srv  *turn.Server
	udp  net.PacketConn
	tcp  net.Listener
	addr netip.AddrPort
	gen  *generator
	q    *quotas
	met  *metrics

	closeOnce sync.Once
	closeErr  error
}

// Start listens on cfg.Listen (UDP and TCP) and serves TURN until Close.
func Start(cfg Config) (*Relay, error) {
	cfg, err := cfg.populate()
	if err != nil {
		return nil, err
	}
	r := &Relay{cfg: cfg}
	if r.met, err = newMetrics(cfg.Registry, r); err != nil {
		return nil, fmt.Errorf("relay: metrics: %w", err)
	}
	r.q = newQuotas(cfg, r.met)
	if err := r.listen(); err != nil {
		return nil, err
	}
	r.gen = &generator{r: r}
	for _, ip := range cfg.RelayIPs {
		bind := ip
		if !isLocal(bind) {
			bind = netip.IPv4Unspecified()
			if ip.Is6() {
				bind = netip.IPv6Unspecified()
			}
		}
		g := &turn.RelayAddressGeneratorPortRange{
			RelayAddress: net.IP(ip.AsSlice()),
			Address:      bind.String(),
			MinPort:      cfg.PortMin,
			MaxPort:      cfg.PortMax,
			MaxRetries:   64,
		}
		if ip.Is4() {
			r.gen.v4 = g
		} else {
			r.gen.v6 = g
		}
	}
	perm := func(_ net.Addr, peer net.IP) bool {
		a, ok := netip.AddrFromSlice(peer)
		if ok {
			if ok, _ = cfg.Policy.Allowed(a); ok {
				return true
			}
		}
		r.met.refuse(refusePeerAddress)
		return false
	}
	logs := pionlog.Factory(cfg.Logger)
	srv, err := turn.NewServer(turn.ServerConfig{
		Realm:              cfg.Realm,
		AuthHandler:        r.auth,
		QuotaHandler:       r.q.admit,
		LoggerFactory:      logs,
		AllocationLifetime: cfg.AllocationLifetime,
		PacketConnConfigs: []turn.PacketConnConfig{{
			PacketConn: r.udp, RelayAddressGenerator: r.gen, PermissionHandler: perm,
		}},
		ListenerConfigs: []turn.ListenerConfig{{
			Listener: r.tcp, RelayAddressGenerator: r.gen, PermissionHandler: perm,
		}},
	})
	if err != nil {
		r.udp.Close()
		r.tcp.Close()
		return nil, fmt.Errorf("relay: %w", err)
	}
	r.srv = srv
	cfg.Logger.Info("relay serving", "listen", r.addr, "relay_ips", cfg.RelayIPs,
		"ports", fmt.Sprintf("%d-%d", cfg.PortMin, cfg.PortMax), "allow", cfg.Policy.Allow)
	return r, nil
}

// isLocal reports whether a is an address of this host, by binding to it.
func isLocal(a netip.Addr) bool {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 0)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// listen opens the UDP socket and the TCP listener on one port.
func (r *Relay) listen() error {
	host, port, err := net.SplitHostPort(r.cfg.Listen)
	if err != nil {
		return fmt.Errorf("relay: listen address %q: %w", r.cfg.Listen, err)
	}
	var lastErr error
	for range 10 {
		pc, err := net.ListenPacket("udp", r.cfg.Listen)
		if err != nil {
			return fmt.Errorf("relay: listen udp %s: %w", r.cfg.Listen, err)
		}
		bound := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp",
			net.JoinHostPort(host, strconv.Itoa(int(bound.Port()))))
		if err != nil {
			pc.Close()
			lastErr = err
			if port == "0" {
				continue
			}
			return fmt.Errorf("relay: listen tcp %s: %w", r.cfg.Listen, err)
		}
		r.udp, r.tcp = pc, ln
		r.addr = netip.AddrPortFrom(bound.Addr().Unmap(), bound.Port())
		return nil
	}
	return fmt.Errorf("relay: no port free for both UDP and TCP: %w", lastErr)
}

func (r *Relay) isRelayIP(a netip.Addr) bool {
	a = a.Unmap()
	for _, ip := range r.cfg.RelayIPs {
		if a == ip {
			return true
		}
	}
	return false
}

// Addr returns the address served on UDP and TCP.
func (r *Relay) Addr() netip.AddrPort { return r.addr }

// Allocations returns the number of live allocations.
func (r *Relay) Allocations() int { return r.q.live() }

// Close stops the relay: every allocation ends and its sockets close.
func (r *Relay) Close() error {
	r.closeOnce.Do(func() { r.closeErr = r.srv.Close() })
	return r.closeErr
}

// auth is pion's AuthHandler: it checks the username's form, expiry and
// registration and returns the long-term key of its password; pion then
// checks the request's MESSAGE-INTEGRITY with that key.
//
// Expiry bounds when an allocation can be made. Requests on an existing
// allocation (Refresh, CreatePermission, ChannelBind) are accepted after
// it, as long as the registration lives: the allocation ends at
// MaxLifetime anyway, and a client cannot swap credentials in the middle
// of an allocation.
func (r *Relay) auth(ra *turn.RequestAttributes) (string, []byte, bool) {
	exp, id, err := ParseUsername(ra.Username)
	if err != nil {
		r.met.refuse(refuseAuthMalformed)
		return "", nil, false
	}
	if ra.Method == stun.MethodAllocate && !r.cfg.Now().Before(exp) {
		r.met.refuse(refuseAuthExpired)
		return "", nil, false
	}
	if !r.cfg.Registered(id) {
		r.met.refuse(refuseAuthUnregistered)
		return "", nil, false
	}
	pw := AppendPassword(nil, r.cfg.Secret, []byte(ra.Username))
	return ra.Username[len(ra.Username)-32:], turn.GenerateAuthKey(ra.Username, ra.Realm, string(pw)), true
}

// generator hands out relayed sockets from the port range, wrapped to
// enforce the quotas; TCP relaying is refused.
type generator struct {
	r      *Relay
	v4, v6 *turn.RelayAddressGeneratorPortRange // nil: no relay IP of that family
}

var errTCPRelay = errors.New("relay: TCP relaying (RFC 6062) is not offered")
var errNoAdmission = errors.New("relay: allocation not admitted by the quota handler")
var errPort = errors.New("relay: requested port outside the relay range")
var errFamily = errors.New("relay: no relay IP of the requested address family")

func (g *generator) Validate() error {
	for _, x := range []*turn.RelayAddressGeneratorPortRange{g.v4, g.v6} {
		if x != nil {
			if err := x.Validate(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (g *generator) AllocatePacketConn(c turn.AllocateListenerConfig) (net.PacketConn, net.Addr, error) {
	t := g.r.q.take(c.UserID)
	if t == nil {
		// EVEN-PORT probing and anything else that did not pass admit.
		g.r.met.refuse(refuseNotAdmitted)
		return nil, nil, errNoAdmission
	}
	if c.RequestedPort != 0 && (c.RequestedPort < int(g.r.cfg.PortMin) || c.RequestedPort > int(g.r.cfg.PortMax)) {
		t.release()
		g.r.met.refuse(refusePort)
		return nil, nil, errPort
	}
	inner := g.v4
	if c.Network == "udp6" {
		inner = g.v6
	}
	if inner == nil {
		t.release()
		g.r.met.refuse(refuseFamily)
		return nil, nil, errFamily
	}
	pc, addr, err := inner.AllocatePacketConn(c)
	if err != nil {
		t.release()
		g.r.met.refuse(refuseNoPort)
		return nil, nil, err
	}
	_ = pc.SetReadDeadline(time.Now().Add(g.r.cfg.MaxLifetime))
	g.r.met.allocs.Inc()
	return &relayedConn{PacketConn: pc, t: t, r: g.r}, addr, nil
}

func (g *generator) AllocateListener(c turn.AllocateListenerConfig) (net.Listener, net.Addr, error) {
	if t := g.r.q.take(c.UserID); t != nil {
		t.release()
	}
	g.r.met.refuse(refuseTCPRelay)
	return nil, nil, errTCPRelay
}

func (g *generator) AllocateConn(turn.AllocateConnConfig) (net.Conn, error) {
	g.r.met.refuse(refuseTCPRelay)
	return nil, errTCPRelay
}

// relayedConn is one allocation's peer-facing socket. It charges the
// bandwidth quotas, keeps peers off the relay host's other ports, ends the
// allocation at MaxLifetime (a read deadline: pion deletes an allocation
// whose socket fails), and gives the allocation's quota back on Close.
type relayedConn struct {
	net.PacketConn
	t         *ticket
	r         *Relay
	closeOnce sync.Once
}

func (c *relayedConn) allow(n int) bool {
	now := time.Now()
	return c.t.id.lim.AllowN(now, n) && c.t.ip.lim.AllowN(now, n)
}

func (c *relayedConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		n, from, err := c.PacketConn.ReadFrom(p)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.r.met.refuse(refuseLifetime)
			}
			return n, from, err
		}
		if !c.allow(n) {
			c.r.met.refuse(refuseBandwidth)
			continue
		}
		c.r.met.bytesIn.Add(float64(n))
		return n, from, nil
	}
}

func (c *relayedConn) WriteTo(p []byte, to net.Addr) (int, error) {
	if ua, ok := to.(*net.UDPAddr); ok {
		ap := ua.AddrPort()
		// The relay's own address is a valid peer (both clients relayed
		// through this relay), but only on its relayed ports: anything
		// else there is ewfd, the TURN port or the metrics endpoint.
		if c.r.isRelayIP(ap.Addr()) && (ap.Port() < c.r.cfg.PortMin || ap.Port() > c.r.cfg.PortMax) {
			c.r.met.refuse(refuseSelfPort)
			return len(p), nil
		}
	}
	if !c.allow(len(p)) {
		c.r.met.refuse(refuseBandwidth)
		return len(p), nil // dropped, as the network would
	}
	n, err := c.PacketConn.WriteTo(p, to)
	c.r.met.bytesOut.Add(float64(n))
	return n, err
}

func (c *relayedConn) Close() error {
	c.closeOnce.Do(c.t.release)
	return c.PacketConn.Close()
}

// quotas counts allocations per ID, per source IP and in total, and holds
// the bandwidth buckets they share.
type quotas struct {
	cfg Config
	met *metrics

	mu      sync.Mutex
	total   int
	ids     map[string]*bucket
	ips     map[netip.Prefix]*bucket
	pending map[string][]*ticket // admitted by admit, not yet taken by the generator
}

type bucket struct {
	n   int
	lim *rate.Limiter
}

// ticket is one admitted allocation's share of the quotas.
type ticket struct {
	q        *quotas
	userID   string
	ipKey    netip.Prefix
	id, ip   *bucket
	admitted time.Time
	released atomic.Bool
}

func newQuotas(cfg Config, met *metrics) *quotas {
	return &quotas{cfg: cfg, met: met, ids: map[string]*bucket{}, ips: map[netip.Prefix]*bucket{}, pending: map[string][]*ticket{}}
}

// ipKey is the unit of the per-IP quota: an IPv4 address or an IPv6 /64.
func ipKey(a net.Addr) netip.Prefix {
	var ip netip.Addr
	switch v := a.(type) {
	case *net.UDPAddr:
		ip = v.AddrPort().Addr()
	case *net.TCPAddr:
		ip = v.AddrPort().Addr()
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}

// pendingTTL bounds how long an admitted allocation may wait for its
// socket; pion makes the socket right after admitting, so an older ticket
// belongs to an allocation that failed in between, and is given back.
const pendingTTL = 5 * time.Second

// admit is pion's QuotaHandler, called once per Allocate request that
// passed authentication.
func (q *quotas) admit(userID, _ string, src net.Addr) bool {
	now := time.Now()
	k := ipKey(src)
	q.mu.Lock()
	defer q.mu.Unlock()
	for u, ts := range q.pending {
		for len(ts) > 0 && now.Sub(ts[0].admitted) > pendingTTL {
			q.releaseLocked(ts[0])
			ts = ts[1:]
		}
		if len(ts) == 0 {
			delete(q.pending, u)
		} else {
			q.pending[u] = ts
		}
	}
	idb, ipb := q.ids[userID], q.ips[k]
	switch {
	case q.total >= q.cfg.MaxAllocs:
		q.met.refuse(refuseQuotaTotal)
		return false
	case idb != nil && idb.n >= q.cfg.MaxAllocsPerID:
		q.met.refuse(refuseQuotaID)
		return false
	case ipb != nil && ipb.n >= q.cfg.MaxAllocsPerIP:
		q.met.refuse(refuseQuotaIP)
		return false
	}
	if idb == nil {
		idb = &bucket{lim: rate.NewLimiter(rate.Limit(q.cfg.BandwidthPerID), burst(q.cfg.BandwidthPerID))}
		q.ids[userID] = idb
	}
	if ipb == nil {
		ipb = &bucket{lim: rate.NewLimiter(rate.Limit(q.cfg.BandwidthPerIP), burst(q.cfg.BandwidthPerIP))}
		q.ips[k] = ipb
	}
	idb.n++
	ipb.n++
	q.total++
	q.pending[userID] = append(q.pending[userID], &ticket{q: q, userID: userID, ipKey: k, id: idb, ip: ipb, admitted: now})
	return true
}

// burst is one second's worth of bytes, and at least one large datagram.
func burst(perSecond float64) int { return max(int(perSecond), 64<<10) }

// take hands the oldest admitted ticket of userID to its socket.
func (q *quotas) take(userID string) *ticket {
	q.mu.Lock()
	defer q.mu.Unlock()
	ts := q.pending[userID]
	if len(ts) == 0 {
		return nil
	}
	t := ts[0]
	if len(ts) == 1 {
		delete(q.pending, userID)
	} else {
		q.pending[userID] = ts[1:]
	}
	return t
}

func (t *ticket) release() {
	t.q.mu.Lock()
	defer t.q.mu.Unlock()
	t.q.releaseLocked(t)
}

func (q *quotas) releaseLocked(t *ticket) {
	if t.released.Swap(true) {
		return
	}
	q.total--
	if t.id.n--; t.id.n == 0 {
		delete(q.ids, t.userID)
	}
	if t.ip.n--; t.ip.n == 0 {
		delete(q.ips, t.ipKey)
	}
}

func (q *quotas) live() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := q.total
	for _, ts := range q.pending {
		n -= len(ts)
	}
	return n
}
