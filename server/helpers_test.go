package server_test

import (
	"crypto/rand"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/store/bolt"
	"github.com/ewf-project/ewf/wire"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testLogger logs to the test's output when -v is given, so failures come
// with the server's side of the story.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

// loopbacks returns the loopback addresses to test on: IPv4 always, IPv6 if
// the host has it.
func loopbacks(t testing.TB) []string {
	out := []string{"127.0.0.1"}
	if c, err := net.ListenPacket("udp", "[::1]:0"); err == nil {
		c.Close()
		out = append(out, "::1")
	}
	return out
}

// startDaemon starts a Daemon on ephemeral loopback ports with a bbolt
// store in a temporary directory.
func startDaemon(t testing.TB, cfg server.Config) *server.Daemon {
	t.Helper()
	if cfg.DataDir == "" && cfg.Store == nil {
		cfg.DataDir = t.TempDir()
	}
	if cfg.Listen == nil {
		for _, h := range loopbacks(t) {
			cfg.Listen = append(cfg.Listen, net.JoinHostPort(h, "0"))
		}
	}
	if cfg.UDPReaders == 0 {
		cfg.UDPReaders = 2
	}
	// Every test client is 127.0.0.1 or ::1, so the per-source limits
	// would make the tests about them; the tests of the limits set them.
	if cfg.Rate == 0 {
		cfg.Rate = 1e6
	}
	if cfg.RegisterPerIP == 0 {
		cfg.RegisterPerIP = 1e6
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	d, err := server.Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

// addrFor returns the daemon's address of ip's family.
func addrFor(t testing.TB, d *server.Daemon, host string) netip.AddrPort {
	want := netip.MustParseAddr(host)
	for _, a := range d.Addrs() {
		if a.Addr() == want {
			return a
		}
	}
	t.Fatalf("daemon does not listen on %s: %v", host, d.Addrs())
	return netip.AddrPort{}
}

// client is a test client over one UDP socket or TCP connection.
type client struct {
	t     testing.TB
	tr    wire.Transport
	udp   *net.UDPConn
	tcp   net.Conn
	fr    *wire.Framer
	local netip.AddrPort
}

const replyTimeout = 10 * time.Second

func dialUDP(t testing.TB, server netip.AddrPort) *client {
	return dialUDPFrom(t, netip.AddrPort{}, server)
}

// dialUDPFrom dials from a given local address (127.0.0.2 and up are all
// loopback on Linux), so a test can act as several source IPs.
func dialUDPFrom(t testing.TB, local, server netip.AddrPort) *client {
	t.Helper()
	var la *net.UDPAddr
	if local.IsValid() {
		la = net.UDPAddrFromAddrPort(local)
	}
	c, err := net.DialUDP("udp", la, net.UDPAddrFromAddrPort(server))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, tr: wire.TransportUDP, udp: c, local: c.LocalAddr().(*net.UDPAddr).AddrPort()}
}

func dialTCP(t testing.TB, server netip.AddrPort) *client {
	t.Helper()
	c, err := net.Dial("tcp", server.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, tr: wire.TransportTCP, tcp: c, fr: wire.NewFramer(c),
		local: c.LocalAddr().(*net.TCPAddr).AddrPort()}
}

func dial(t testing.TB, tr wire.Transport, server netip.AddrPort) *client {
	if tr == wire.TransportUDP {
		return dialUDP(t, server)
	}
	return dialTCP(t, server)
}

func (c *client) send(b []byte) {
	c.t.Helper()
	var err error
	if c.udp != nil {
		_, err = c.udp.Write(b)
	} else {
		_, err = c.tcp.Write(b)
	}
	if err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// recv returns the next message, failing the test after replyTimeout.
func (c *client) recv() []byte {
	c.t.Helper()
	b, err := c.recvWithin(replyTimeout)
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	return b
}

func (c *client) recvWithin(d time.Duration) ([]byte, error) {
	if c.udp != nil {
		c.udp.SetReadDeadline(time.Now().Add(d))
		buf := make([]byte, 2048)
		n, err := c.udp.Read(buf)
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
	c.tcp.SetReadDeadline(time.Now().Add(d))
	b, _, err := c.fr.Next()
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), b...), nil
}

// roundTrip sends m and returns the decoded answer, which must have m's
// transaction ID.
func (c *client) roundTrip(m *wire.Message) *wire.Message {
	c.t.Helper()
	c.send(m.AppendTo(nil))
	return c.recvX(m.TransactionID)
}

// recvX reads until an X message with transaction ID tx arrives.
func (c *client) recvX(tx wire.TransactionID) *wire.Message {
	c.t.Helper()
	for {
		b := c.recv()
		var r wire.Message
		if err := r.Decode(b); err != nil {
			c.t.Fatalf("answer does not decode: %v (% x)", err, b)
		}
		if r.TransactionID == tx {
			return &r
		}
	}
}

func newTx() wire.TransactionID {
	var tx wire.TransactionID
	rand.Read(tx[:])
	return tx
}

func newID() wire.ID {
	var id wire.ID
	rand.Read(id[:])
	return id
}

func req(method wire.Method) *wire.Message {
	return &wire.Message{Type: wire.Type{Method: method, Class: wire.ClassRequest}, TransactionID: newTx()}
}

func registerReq(id wire.ID) *wire.Message {
	m := req(wire.MethodRegister)
	m.SetID(id)
	return m
}

func bindReq(id wire.ID, key wire.Key, tr wire.Transport, ap netip.AddrPort) *wire.Message {
	m := req(wire.MethodBind)
	m.SetID(id)
	m.SetKey(key)
	if err := m.AddAddress(wire.Address{Transport: tr, AddrPort: ap}); err != nil {
		panic(err)
	}
	return m
}

func queryReq(id wire.ID) *wire.Message {
	m := req(wire.MethodQuery)
	m.SetID(id)
	return m
}

func introReq(target, self wire.ID, key wire.Key, cands ...wire.Address) *wire.Message {
	m := queryReq(target)
	m.SetSourceID(self)
	m.SetKey(key)
	for _, c := range cands {
		if err := m.AddCandidate(c); err != nil {
			panic(err)
		}
	}
	return m
}

// wantSuccess fails unless r is the success response of method.
func wantSuccess(t testing.TB, r *wire.Message, method wire.Method) {
	t.Helper()
	if r.Type != (wire.Type{Method: method, Class: wire.ClassSuccess}) {
		if r.Type.Class == wire.ClassError {
			t.Fatalf("%v: got error %q, want success", method, r.Reason)
		}
		t.Fatalf("got %v, want %v success", r.Type, method)
	}
	if err := r.Check(); err != nil {
		t.Fatalf("success response breaks the spec: %v", err)
	}
}

// wantError fails unless r is an error response of method with reason.
func wantError(t testing.TB, r *wire.Message, method wire.Method, reason wire.Reason) {
	t.Helper()
	if r.Type != (wire.Type{Method: method, Class: wire.ClassError}) {
		t.Fatalf("got %v, want %v error response (%q)", r.Type, method, reason)
	}
	if r.Reason != reason {
		t.Fatalf("got reason %q, want %q", r.Reason, reason)
	}
}

// register registers a fresh ID through c and returns it with its KEY.
func (c *client) register() (wire.ID, wire.Key) {
	c.t.Helper()
	id := newID()
	r := c.roundTrip(registerReq(id))
	wantSuccess(c.t, r, wire.MethodRegister)
	return id, r.Key
}

// bind binds id over c at the address the server sees, c.local.
func (c *client) bind(id wire.ID, key wire.Key) {
	c.t.Helper()
	r := c.roundTrip(bindReq(id, key, c.tr, c.local))
	wantSuccess(c.t, r, wire.MethodBind)
}

// expectSilence checks that nothing but the answer to a probe arrives: it
// sends a STUN Binding request after whatever the test sent, and the first
// thing back must be that probe's answer. Over one socket the server
// handles datagrams in order, so this needs no timer.
func (c *client) expectSilence() {
	c.t.Helper()
	probe := stunRequest(false)
	c.send(probe)
	b := c.recv()
	if wire.Classify(b) != wire.KindSTUN || string(b[8:20]) != string(probe[8:20]) {
		c.t.Fatalf("got an answer to something that should have been dropped: % x", b)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded)
}

// fakeClock is an injected clock that tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_800_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// openStore opens a real bbolt store in a temporary directory.
func openStore(t testing.TB, opts bolt.Options) *bolt.Store {
	t.Helper()
	s, err := bolt.Open(t.TempDir(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// recorder is a Replier that keeps what it is asked to send, for tests of
// the core without sockets.
type recorder struct {
	mu  sync.Mutex
	out []sent
	ch  chan struct{}
}

type sent struct {
	b  []byte
	to netip.AddrPort
}

func newRecorder() *recorder { return &recorder{ch: make(chan struct{}, 1<<16)} }

func (r *recorder) Reply(b []byte, to netip.AddrPort) {
	r.mu.Lock()
	r.out = append(r.out, sent{append([]byte(nil), b...), to})
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
}

// wait returns the next message sent, in order.
func (r *recorder) next(t testing.TB) sent {
	t.Helper()
	select {
	case <-r.ch:
	case <-time.After(replyTimeout):
		t.Fatal("no late reply")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.out[0]
	r.out = r.out[1:]
	return s
}

var _ io.Writer = tWriter{}

func openStoreAt(t testing.TB, dir string) *bolt.Store {
	t.Helper()
	s, err := bolt.Open(dir, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
