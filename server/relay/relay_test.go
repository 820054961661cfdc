package relay_test

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/turn/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/ewf-project/ewf/server/relay"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func unixTime(s int64) time.Time { return time.Unix(s, 0) }

var secret = []byte("test secret")

// The relayed ports of the tests sit below Linux's ephemeral range start
// (32768), so a peer socket on an ephemeral port is never mistaken for a
// relayed one.
const portMin, portMax = 20000, 20999

type env struct {
	r   *relay.Relay
	reg *prometheus.Registry
	mu  sync.Mutex
	ids map[[16]byte]bool // registered IDs
}

func (e *env) register(id [16]byte, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ids[id] = ok
}

// startRelay runs a relay on 127.0.0.1 and ::1 with the test's changes.
func startRelay(t *testing.T, mod func(*relay.Config)) *env {
	t.Helper()
	e := &env{reg: prometheus.NewRegistry(), ids: map[[16]byte]bool{}}
	cfg := relay.Config{
		Listen:   "127.0.0.1:0",
		RelayIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
		PortMin:  portMin, PortMax: portMax,
		Secret:   secret,
		Registry: e.reg,
		Registered: func(id [16]byte) bool {
			e.mu.Lock()
			defer e.mu.Unlock()
			return e.ids[id]
		},
	}
	if mod != nil {
		mod(&cfg)
	}
	r, err := relay.Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	e.r = r
	return e
}

// counter reads one series of the relay's metrics.
func (e *env) counter(t *testing.T, name, reason string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason == "" || labelIs(m, reason) {
				if m.Counter != nil {
					return m.Counter.GetValue()
				}
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}

func labelIs(m *dto.Metric, v string) bool {
	for _, l := range m.GetLabel() {
		if l.GetValue() == v {
			return true
		}
	}
	return false
}

type creds struct{ user, pass string }

func mint(id [16]byte, expiry time.Time, key []byte) creds {
	u := relay.AppendUsername(nil, expiry, id)
	return creds{string(u), string(relay.AppendPassword(nil, key, u))}
}

func validCreds(id [16]byte) creds { return mint(id, time.Now().Add(time.Minute), secret) }

// client is a real pion/turn client with its own socket (UDP, or TCP for
// TURN over TCP) on loopback.
type client struct {
	c       *turn.Client
	relayed net.PacketConn
}

func dialTURN(t *testing.T, e *env, c creds, tcp bool, fam turn.RequestedAddressFamily) (*client, error) {
	t.Helper()
	var conn net.PacketConn
	if tcp {
		tc, err := net.Dial("tcp", e.r.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conn = turn.NewSTUNConn(tc)
	} else {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		conn = pc
	}
	tc, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr:         e.r.Addr().String(),
		TURNServerAddr:         e.r.Addr().String(),
		Username:               c.user,
		Password:               c.pass,
		Conn:                   conn,
		RTO:                    100 * time.Millisecond,
		RequestedAddressFamily: fam,
	})
	if err != nil {
		conn.Close()
		t.Fatal(err)
	}
	if err := tc.Listen(); err != nil {
		tc.Close()
		conn.Close()
		t.Fatal(err)
	}
	cl := &client{c: tc}
	t.Cleanup(func() {
		if cl.relayed != nil {
			cl.relayed.Close()
		}
		tc.Close()
		conn.Close()
	})
	cl.relayed, err = tc.Allocate()
	if err != nil {
		return cl, err
	}
	return cl, nil
}

func mustDial(t *testing.T, e *env, id [16]byte, tcp bool) *client {
	t.Helper()
	e.register(id, true)
	c, err := dialTURN(t, e, validCreds(id), tcp, turn.RequestedAddressFamilyIPv4)
	if err != nil {
		t.Fatalf("Allocate: %v", err)
	}
	return c
}

func idN(n byte) [16]byte { return [16]byte{15: n, 0: 0xee} }

// TestPeerFilterThroughRealRelay: a real pion/turn client asks the real
// relay for a permission to each address of the policy table; every
// refused one is refused by the filter (the refusal counter moves), every
// allowed one is granted. CreatePermission sends nothing to the peer.
func TestPeerFilterThroughRealRelay(t *testing.T) {
	e := startRelay(t, nil)
	id := idN(1)
	e.register(id, true)
	v4, err := dialTURN(t, e, validCreds(id), false, turn.RequestedAddressFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	v6, err := dialTURN(t, e, validCreds(id), false, turn.RequestedAddressFamilyIPv6)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range policyCases {
		t.Run(c.name, func(t *testing.T) {
			a := netip.MustParseAddr(c.addr).WithZone("")
			cl := v6
			if a.Unmap().Is4() {
				cl = v4 // pion sends a mapped address as IPv4, as the wire would
			}
			before := e.counter(t, "ewfd_relay_refused_total", "peer_address")
			err := cl.c.CreatePermission(net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 9)))
			after := e.counter(t, "ewfd_relay_refused_total", "peer_address")
			if c.ok {
				if err != nil {
					t.Fatalf("CreatePermission(%s) refused: %v", c.addr, err)
				}
				if after != before {
					t.Fatal("refusal counted for an allowed peer")
				}
				return
			}
			if err == nil {
				t.Fatalf("CreatePermission(%s) granted", c.addr)
			}
			if after != before+1 {
				t.Fatalf("refused, but not by the peer filter (counter %v → %v): %v", before, after, err)
			}
		})
	}
}

// TestRelayBothWays: data goes client → relay → peer and back, the peer
// sees only the relayed address, and the bytes are counted. The peer is on
// 127.0.0.2, allowed for this test only.
func TestRelayBothWays(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		name := map[bool]string{false: "turn-over-udp", true: "turn-over-tcp"}[tcp]
		t.Run(name, func(t *testing.T) {
			e := startRelay(t, func(c *relay.Config) {
				c.Policy.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
			})
			cl := mustDial(t, e, idN(2), tcp)
			peer := listenPeer(t)
			msg := []byte("hello through the relay")
			if _, err := cl.relayed.WriteTo(msg, peer.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1500)
			peer.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, from, err := peer.ReadFrom(buf)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf[:n], msg) {
				t.Fatalf("peer got %q", buf[:n])
			}
			if from.String() != cl.relayed.LocalAddr().String() {
				t.Fatalf("peer saw %v, want the relayed address %v", from, cl.relayed.LocalAddr())
			}
			if p := from.(*net.UDPAddr).Port; p < portMin || p > portMax {
				t.Fatalf("relayed port %d outside %d-%d", p, portMin, portMax)
			}
			if _, err := peer.WriteTo([]byte("and back"), from); err != nil {
				t.Fatal(err)
			}
			cl.relayed.SetReadDeadline(time.Now().Add(5 * time.Second))
			n, from2, err := cl.relayed.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "and back" || from2.String() != peer.LocalAddr().String() {
				t.Fatalf("client got %q from %v, %v", buf[:n], from2, err)
			}
			// The relay counts after its write returns, which may be after
			// the peer has the datagram.
			waitFor(t, "to_peer bytes", func() bool {
				return e.counter(t, "ewfd_relay_bytes_total", "to_peer") == float64(len(msg))
			})
			if in := e.counter(t, "ewfd_relay_bytes_total", "from_peer"); in != 8 {
				t.Fatalf("from_peer bytes %v, want 8", in)
			}
			if got := e.counter(t, "ewfd_relay_allocations", ""); got != 1 {
				t.Fatalf("live allocations %v, want 1", got)
			}
		})
	}
}

func listenPeer(t *testing.T) net.PacketConn {
	t.Helper()
	p, err := net.ListenPacket("udp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// TestRelayKeepsOffItsOwnPorts: with loopback allowed (the relay's own
// address), a datagram to the relay's TURN port is dropped, not relayed:
// the relay host's services are not peers.
func TestRelayKeepsOffItsOwnPorts(t *testing.T) {
	e := startRelay(t, func(c *relay.Config) {
		c.Policy.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	})
	cl := mustDial(t, e, idN(3), false)
	self := net.UDPAddrFromAddrPort(e.r.Addr())
	if _, err := cl.relayed.WriteTo([]byte("x"), self); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "self_port refusal", func() bool { return e.counter(t, "ewfd_relay_refused_total", "self_port") == 1 })
	if got := e.counter(t, "ewfd_relay_bytes_total", "to_peer"); got != 0 {
		t.Fatalf("%v bytes went to the relay's own port", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRelayAuthentication: only fresh credentials of a registered ID with
// the right secret get an allocation, each refusal counted by its reason.
func TestRelayAuthentication(t *testing.T) {
	e := startRelay(t, nil)
	id := idN(4)
	e.register(id, true)
	gone := idN(5)
	e.register(gone, false) // its registration expired
	for _, c := range []struct {
		name   string
		creds  creds
		reason string
	}{
		{"expired credentials", mint(id, time.Now().Add(-time.Second), secret), "auth_expired"},
		{"registration expired", validCreds(gone), "auth_unregistered"},
		{"not expiry:ID", creds{"alice", "pw"}, "auth_malformed"},
		{"wrong secret", mint(id, time.Now().Add(time.Minute), []byte("other")), ""},
		{"password of another ID", creds{validCreds(id).user, validCreds(idN(6)).pass}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := 0.0
			if c.reason != "" {
				before = e.counter(t, "ewfd_relay_refused_total", c.reason)
			}
			if _, err := dialTURN(t, e, c.creds, false, turn.RequestedAddressFamilyIPv4); err == nil {
				t.Fatal("allocation granted")
			}
			if c.reason != "" && e.counter(t, "ewfd_relay_refused_total", c.reason) <= before {
				t.Fatalf("refusal not counted as %s", c.reason)
			}
		})
	}
	if got := e.counter(t, "ewfd_relay_allocations_total", ""); got != 0 {
		t.Fatalf("%v allocations made", got)
	}
	if _, err := dialTURN(t, e, validCreds(id), false, turn.RequestedAddressFamilyIPv4); err != nil {
		t.Fatalf("valid credentials refused: %v", err)
	}
}

// TestRelayAllocationQuotas: per ID and per source IP, and an allocation
// gives its share back when it ends.
func TestRelayAllocationQuotas(t *testing.T) {
	e := startRelay(t, func(c *relay.Config) { c.MaxAllocsPerID = 2; c.MaxAllocsPerIP = 3 })
	id := idN(7)
	a := mustDial(t, e, id, false)
	mustDial(t, e, id, false)
	if _, err := dialTURN(t, e, validCreds(id), false, turn.RequestedAddressFamilyIPv4); err == nil {
		t.Fatal("a third allocation of one ID was granted")
	}
	if e.counter(t, "ewfd_relay_refused_total", "quota_id") != 1 {
		t.Fatal("quota_id not counted")
	}
	// Another ID from the same IP: the IP's third allocation is fine, the
	// fourth is not.
	mustDial(t, e, idN(8), false)
	other := idN(9)
	e.register(other, true)
	if _, err := dialTURN(t, e, validCreds(other), false, turn.RequestedAddressFamilyIPv4); err == nil {
		t.Fatal("a fourth allocation from one IP was granted")
	}
	if e.counter(t, "ewfd_relay_refused_total", "quota_ip") != 1 {
		t.Fatal("quota_ip not counted")
	}
	// Ending one allocation frees its share.
	a.relayed.Close()
	waitFor(t, "the allocation to end", func() bool { return e.r.Allocations() == 2 })
	if _, err := dialTURN(t, e, validCreds(id), false, turn.RequestedAddressFamilyIPv4); err != nil {
		t.Fatalf("allocation after one ended: %v", err)
	}
}

// TestRelayBandwidthQuota: an ID sending far over its bandwidth gets
// about its rate through, and the drops are counted.
func TestRelayBandwidthQuota(t *testing.T) {
	const rate = 100_000 // bytes per second; the burst is then 100 kB
	e := startRelay(t, func(c *relay.Config) {
		c.BandwidthPerID = rate
		c.Policy.Allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}
	})
	cl := mustDial(t, e, idN(10), false)
	peer := listenPeer(t)
	got := make(chan int)
	go func() {
		total, buf := 0, make([]byte, 2000)
		for {
			peer.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			n, _, err := peer.ReadFrom(buf)
			if err != nil {
				got <- total
				return
			}
			total += n
		}
	}()
	start := time.Now()
	pkt := make([]byte, 1000)
	for i := range 400 { // 400 kB, paced so that the relay's socket buffer does not overflow
		if _, err := cl.relayed.WriteTo(pkt, peer.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	elapsed := time.Since(start)
	received := <-got
	limit := rate + int(rate*elapsed.Seconds()) + 2000
	if received == 0 || received > limit {
		t.Fatalf("peer received %d bytes in %v, want 1..%d", received, elapsed, limit)
	}
	if e.counter(t, "ewfd_relay_refused_total", "bandwidth") == 0 {
		t.Fatal("no bandwidth drop counted")
	}
}

// TestRelayMaxLifetime: an allocation ends at MaxLifetime even while its
// client keeps it refreshed.
func TestRelayMaxLifetime(t *testing.T) {
	e := startRelay(t, func(c *relay.Config) { c.MaxLifetime = 300 * time.Millisecond })
	mustDial(t, e, idN(11), false)
	if e.r.Allocations() != 1 {
		t.Fatal("no allocation")
	}
	waitFor(t, "the allocation to end", func() bool { return e.r.Allocations() == 0 })
	if e.counter(t, "ewfd_relay_refused_total", "lifetime") != 1 {
		t.Fatal("lifetime end not counted")
	}
}

// TestRelayRefusesTCPRelaying: RFC 6062 allocations are refused.
func TestRelayRefusesTCPRelaying(t *testing.T) {
	e := startRelay(t, nil)
	id := idN(12)
	e.register(id, true)
	tc, err := net.Dial("tcp", e.r.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := validCreds(id)
	cl, err := turn.NewClient(&turn.ClientConfig{
		TURNServerAddr: e.r.Addr().String(), Username: c.user, Password: c.pass,
		Conn: turn.NewSTUNConn(tc), RTO: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { cl.Close(); tc.Close() }()
	if err := cl.Listen(); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.AllocateTCP(); err == nil {
		t.Fatal("TCP relaying granted")
	}
	if e.counter(t, "ewfd_relay_refused_total", "tcp_relay") == 0 {
		t.Fatal("not refused as tcp_relay")
	}
	if e.r.Allocations() != 0 {
		t.Fatal("quota not given back")
	}
}

func TestConfigErrors(t *testing.T) {
	reg := prometheus.NewRegistry()
	ok := relay.Config{
		Listen: "127.0.0.1:0", RelayIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Secret: secret, Registry: reg, Registered: func([16]byte) bool { return true },
	}
	for name, mod := range map[string]func(*relay.Config){
		"no relay IP":      func(c *relay.Config) { c.RelayIPs = nil },
		"unspecified IP":   func(c *relay.Config) { c.RelayIPs = []netip.Addr{netip.IPv4Unspecified()} },
		"two IPv4":         func(c *relay.Config) { c.RelayIPs = append(c.RelayIPs, netip.MustParseAddr("127.0.0.2")) },
		"no secret":        func(c *relay.Config) { c.Secret = nil },
		"empty port range": func(c *relay.Config) { c.PortMin, c.PortMax = 30000, 29999 },
		"negative quota":   func(c *relay.Config) { c.MaxAllocsPerID = -1 },
		"NaN bandwidth":    func(c *relay.Config) { c.BandwidthPerIP = nan() },
	} {
		c := ok
		mod(&c)
		if r, err := relay.Start(c); !errors.Is(err, relay.ErrConfig) {
			if r != nil {
				r.Close()
			}
			t.Errorf("%s: Start = %v, want ErrConfig", name, err)
		}
	}
}

func nan() float64 { z := 0.0; return z / z }
