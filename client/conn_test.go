package client

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// Timing for tests over real loopback sockets. Answers arrive in well
// under a millisecond, but a busy machine may delay them: the budget
// (20 ms × (1+2+…+32) + 16 × 20 ms ≈ 1.6 s) only bounds how long a wrong
// test takes to fail; passing never depends on it.
var fast = Config{RTO: 20 * time.Millisecond}

// A silent server is given up on quickly with this timing.
var quick = Config{RTO: 5 * time.Millisecond, MaxAttempts: 3, LastWait: 2}

func dialUDP(t *testing.T, server netip.AddrPort, cfg Config) *Conn {
	t.Helper()
	c, err := DialUDPFrom(t.Context(), server.String(), netip.MustParseAddrPort("127.0.0.1:0"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialTCP(t *testing.T, server netip.AddrPort, cfg Config) *Conn {
	t.Helper()
	c, err := DialTCP(t.Context(), server.String(), netip.MustParseAddrPort("127.0.0.1:0"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// register learns the public address, registers a random ID and binds it.
func register(t *testing.T, c *Conn, tr wire.Transport) (wire.ID, wire.Key, netip.AddrPort) {
	t.Helper()
	ctx := t.Context()
	pub, err := c.PublicAddress(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := randomID()
	key, err := c.Register(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Bind(ctx, id, key, wire.Address{Transport: tr, AddrPort: pub}); err != nil {
		t.Fatal(err)
	}
	return id, key, pub
}

// The whole rendezvous over real sockets: STUN, REGISTER, BIND over UDP
// and TCP, and QUERY finds both bindings, UDP first.
func TestRendezvousOverUDPAndTCP(t *testing.T) {
	r := newResponder()
	us, ts := startUDP(t, r), startTCP(t, r)
	u := dialUDP(t, us.addr(), fast)
	tc := dialTCP(t, ts.addr(), fast)

	id, key, upub := register(t, u, wire.TransportUDP)
	if upub != u.LocalAddr() {
		t.Errorf("UDP public address %v, local %v", upub, u.LocalAddr())
	}
	tpub, err := tc.PublicAddress(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if tpub != tc.LocalAddr() {
		t.Errorf("TCP public address %v, local %v", tpub, tc.LocalAddr())
	}
	if err := tc.Bind(t.Context(), id, key, wire.Address{Transport: wire.TransportTCP, AddrPort: tpub}); err != nil {
		t.Fatalf("TCP BIND: %v", err)
	}
	q := dialUDP(t, us.addr(), fast)
	addrs, err := q.Query(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	want := []wire.Address{{Transport: wire.TransportUDP, AddrPort: upub}, {Transport: wire.TransportTCP, AddrPort: tpub}}
	if len(addrs) != 2 || addrs[0] != want[0] || addrs[1] != want[1] {
		t.Errorf("Query = %v, want %v", addrs, want)
	}
	// BIND with an address the server did not observe.
	err = u.Bind(t.Context(), id, key, wire.Address{AddrPort: netip.MustParseAddrPort("127.0.0.1:1")})
	if !errors.Is(err, ErrAddressMismatch) {
		t.Errorf("BIND of a foreign address: %v", err)
	}
}

// Every reason the server can give maps to its own error value, and to no
// other; the error names server, method and reason.
func TestErrorReasonMapping(t *testing.T) {
	sentinels := []error{ErrUnknownMethod, ErrInvalidAttributes, ErrNotRegistered, ErrKeyMismatch,
		ErrIDConflict, ErrAddressMismatch, ErrNotBound, ErrRegistrationLimit, ErrRateLimited,
		ErrServerError, ErrUnknownReason}
	tests := []struct {
		reason wire.Reason
		want   error
	}{
		{wire.ReasonUnknownMethod, ErrUnknownMethod},
		{wire.ReasonInvalidAttributes, ErrInvalidAttributes},
		{wire.ReasonNotRegistered, ErrNotRegistered},
		{wire.ReasonKeyMismatch, ErrKeyMismatch},
		{wire.ReasonIDConflict, ErrIDConflict},
		{wire.ReasonAddressMismatch, ErrAddressMismatch},
		{wire.ReasonNotBound, ErrNotBound},
		{wire.ReasonRegistrationLimit, ErrRegistrationLimit},
		{wire.ReasonRateLimited, ErrRateLimited},
		{wire.ReasonServerError, ErrServerError},
		{wire.ReasonTryLater, ErrTryLater},
		{wire.ReasonUnknown, ErrUnknownReason},
		{0x0000BEEF, ErrUnknownReason}, // a reason from a newer server
	}
	r := newResponder()
	s := startUDP(t, r)
	c := dialUDP(t, s.addr(), fast)
	for _, tt := range tests {
		reason := tt.reason
		r.set(func(r *responder) { r.force = &reason })
		_, err := c.Query(t.Context(), wire.ID{1})
		for _, s := range sentinels {
			if errors.Is(err, s) != (s == tt.want) {
				t.Errorf("reason %#x: errors.Is(%v, %v) = %v", uint32(tt.reason), err, s, !(s == tt.want))
			}
		}
		var re *ReasonError
		if !errors.As(err, &re) || re.Reason != tt.reason || re.Method != wire.MethodQuery || re.Server != s.addr() {
			t.Errorf("reason %#x: ReasonError = %+v", uint32(tt.reason), re)
			continue
		}
		for _, part := range []string{s.addr().String(), "QUERY", tt.reason.String()} {
			if !strings.Contains(err.Error(), part) {
				t.Errorf("reason %#x: %q does not contain %q", uint32(tt.reason), err, part)
			}
		}
	}
	if err := (&ReasonError{Reason: 0xBEEF}).Error(); !strings.Contains(err, "0xbeef") {
		t.Errorf("unrecognised reason text %q does not show the value", err)
	}
}

// Real UDP: a server that loses the first requests is retried until it
// answers; one that loses REGISTER answers gives the same KEY again.
func TestRetransmitOverUDP(t *testing.T) {
	r := newResponder()
	s := startUDP(t, r)
	c := dialUDP(t, s.addr(), fast)
	r.set(func(r *responder) { r.dropRequests = 2 })
	if _, err := c.PublicAddress(t.Context()); err != nil {
		t.Fatalf("after 2 lost requests: %v", err)
	}
	r.set(func(r *responder) { r.dropResponses = 2 })
	id := randomID()
	key, err := c.Register(t.Context(), id)
	if err != nil {
		t.Fatalf("after 2 lost answers: %v", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.regs[id] != key {
		t.Errorf("key %x, server holds %x", key, r.regs[id])
	}
	n := 0
	for _, g := range r.got {
		if g.method == wire.MethodRegister {
			n++
			if g.tx != r.got[len(r.got)-1].tx {
				t.Error("REGISTER retransmitted with another transaction ID")
			}
		}
	}
	if n != 3 {
		t.Errorf("%d REGISTER transmissions, want 3", n)
	}
}

// A server that never answers ends every request with ErrTimeout within
// the configured bound, naming the server.
func TestSilentServer(t *testing.T) {
	silent, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	addr := silent.LocalAddr().(*net.UDPAddr).AddrPort()
	c := dialUDP(t, addr, quick)
	_, err = c.PublicAddress(t.Context())
	if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), addr.String()) || !strings.Contains(err.Error(), "3 attempts") {
		t.Errorf("err = %v", err)
	}
	_, err = c.Register(t.Context(), wire.ID{1})
	if !errors.Is(err, ErrTimeout) {
		t.Errorf("err = %v", err)
	}
}

// Introductions: the querier gets the target's address and a SECRET; the
// target gets an INTRODUCE with the querier's ID, addresses, candidates
// and the same SECRET.
func TestIntroduce(t *testing.T) {
	r := newResponder()
	s := startUDP(t, r)
	intro := make(chan Introduction, 1)
	target := dialUDP(t, s.addr(), Config{RTO: fast.RTO, OnIntroduce: func(in Introduction) { intro <- in }})
	querier := dialUDP(t, s.addr(), fast)
	tid, _, tpub := register(t, target, wire.TransportUDP)
	qid, qkey, qpub := register(t, querier, wire.TransportUDP)

	cands := []wire.Address{{AddrPort: netip.MustParseAddrPort("10.1.2.3:4000")}, {AddrPort: netip.MustParseAddrPort("[fd00::1]:4000")}}
	got, err := querier.Introduce(t.Context(), qid, qkey, tid, cands)
	if err != nil {
		t.Fatal(err)
	}
	if got.Peer != tid || len(got.Addresses) != 1 || got.Addresses[0].AddrPort != tpub || got.Secret == (wire.Secret{}) {
		t.Errorf("querier got %+v", got)
	}
	var in Introduction
	select {
	case in = <-intro:
	case <-time.After(10 * time.Second):
		t.Fatal("no INTRODUCE reached the target")
	}
	if in.Peer != qid || in.Secret != got.Secret || len(in.Addresses) != 1 || in.Addresses[0].AddrPort != qpub ||
		len(in.Candidates) != 2 || in.Candidates[0] != cands[0] || in.Candidates[1] != cands[1] {
		t.Errorf("target got %+v", in)
	}

	if _, err := querier.Introduce(t.Context(), qid, wire.Key{}, tid, nil); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("introduction with a wrong KEY: %v", err)
	}
	if _, err := querier.Introduce(t.Context(), qid, qkey, tid, make([]wire.Address, wire.MaxCandidates+1)); !errors.Is(err, wire.ErrTooManyCandidates) {
		t.Errorf("too many candidates: %v", err)
	}
	if _, err := querier.Query(t.Context(), randomID()); !errors.Is(err, ErrNotRegistered) {
		t.Errorf("QUERY of an unknown ID: %v", err)
	}
	lonely := randomID()
	if _, err := querier.Register(t.Context(), lonely); err != nil {
		t.Fatal(err)
	}
	if _, err := querier.Query(t.Context(), lonely); !errors.Is(err, ErrNotBound) {
		t.Errorf("QUERY of an unbound ID: %v", err)
	}
}

// TCP: the local port can be reused for the hole-punching listener, a
// server that hangs up ends requests at once, a refused connection is a
// clear error.
func TestTCP(t *testing.T) {
	r := newResponder()
	ts := startTCP(t, r)
	c := dialTCP(t, ts.addr(), Config{Timeout: time.Hour})

	lc := net.ListenConfig{Control: ReusePortControl}
	ln, err := lc.Listen(t.Context(), "tcp4", c.LocalAddr().String())
	if err != nil {
		t.Fatalf("listening on the client's TCP port %v: %v", c.LocalAddr(), err)
	}
	ln.Close()

	ts.mu.Lock()
	ts.closeOnFrame = true
	ts.mu.Unlock()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	_, err = c.Register(ctx, wire.ID{1})
	if !errors.Is(err, ErrClosed) || errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), ts.addr().String()) {
		t.Errorf("server hung up: err = %v", err)
	}
	if _, err := c.PublicAddress(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("request after the connection ended: %v", err)
	}

	ln2, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln2.Addr().String()
	ln2.Close()
	_, err = DialTCP(t.Context(), refused, netip.AddrPort{}, Config{})
	if err == nil || !strings.Contains(err.Error(), refused) {
		t.Errorf("DialTCP to a closed port: %v", err)
	}
}

// Close ends requests in flight with ErrClosed and joins the reader
// (goleak checks the join); later requests fail at once.
func TestConnClose(t *testing.T) {
	silent, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	c, err := DialUDP(t.Context(), silent.LocalAddr().String(), Config{RTO: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error)
	go func() {
		_, err := c.Query(t.Context(), wire.ID{1})
		errc <- err
	}()
	// Wait until the request is outstanding, then close under it.
	for {
		c.mu.Lock()
		n := len(c.pending)
		c.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("request in flight: %v", err)
	}
	if _, err := c.Register(t.Context(), wire.ID{1}); !errors.Is(err, ErrClosed) {
		t.Errorf("request after Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Datagrams from anyone but the server are ignored by Conn's reader.
func TestConnIgnoresOtherSources(t *testing.T) {
	silent, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	c := dialUDP(t, silent.LocalAddr().(*net.UDPAddr).AddrPort(), quick)
	spoof, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer spoof.Close()
	errc := make(chan error)
	go func() {
		_, err := c.Register(t.Context(), wire.ID{1})
		errc <- err
	}()
	buf := make([]byte, 1500)
	n, _, err := silent.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	resp := xMsg(wire.MethodRegister, wire.ClassSuccess, txOf(buf[:n]), func(m *wire.Message) { m.SetKey(wire.Key{1}) })
	spoof.WriteToUDPAddrPort(resp, c.LocalAddr())
	if err := <-errc; !errors.Is(err, ErrTimeout) {
		t.Errorf("answer from a stranger was accepted: %v", err)
	}
}

func TestResolveServer(t *testing.T) {
	tests := []struct {
		in   string
		want string
		bad  bool
	}{
		{in: "127.0.0.1:9", want: "127.0.0.1:9"},
		{in: "127.0.0.1", want: "127.0.0.1:3478"},
		{in: "[::1]:9", want: "[::1]:9"},
		{in: "::1", want: "[::1]:3478"},
		{in: "[::ffff:127.0.0.1]:9", want: "127.0.0.1:9"},
		{in: "127.0.0.1:http", bad: true},
		{in: "127.0.0.1:0", bad: true},
		{in: ":9", bad: true},
		{in: "[::1]:99999", bad: true},
	}
	// A name is resolved only if /etc/hosts has it: tests send nothing to
	// a DNS server off this machine.
	if hosts, err := os.ReadFile("/etc/hosts"); err == nil && strings.Contains(string(hosts), "127.0.0.1 localhost") {
		tests = append(tests, struct {
			in   string
			want string
			bad  bool
		}{in: "localhost:9", want: "127.0.0.1:9"})
	}
	for _, tt := range tests {
		got, err := ResolveServer(t.Context(), tt.in)
		if tt.bad {
			if err == nil || !strings.Contains(err.Error(), tt.in) {
				t.Errorf("ResolveServer(%q) = %v, %v; want an error naming it", tt.in, got, err)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ResolveServer(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}
