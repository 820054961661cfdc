package server_test

import (
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

// Abuse through the real listeners: after each attack, a well-behaved
// client is still served.

// wellBehaved checks that a fresh client can register, bind and query over
// UDP and TCP.
func wellBehaved(t *testing.T, srv netip.AddrPort) {
	t.Helper()
	u := dialUDP(t, srv)
	id, key := u.register()
	u.bind(id, key)
	tc := dialTCP(t, srv)
	tc.bind(id, key)
	r := tc.roundTrip(queryReq(id))
	wantSuccess(t, r, wire.MethodQuery)
	if r.NumAddresses != 2 {
		t.Fatalf("QUERY after abuse: %v", r.Addresses[:r.NumAddresses])
	}
}

// waitClosed reads from c until the server closes it, failing if it is
// still open after replyTimeout (the server's deadlines are much shorter in
// these tests).
func waitClosed(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(replyTimeout))
	_, err := io.Copy(io.Discard, c)
	if isTimeout(err) {
		t.Fatal("server did not close the connection")
	}
}

func TestRandomDatagramsGetNoAnswerAndDoNotHurt(t *testing.T) {
	d := startDaemon(t, server.Config{})
	srv := addrFor(t, d, "127.0.0.1")
	c := dialUDP(t, srv)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		n := rng.IntN(200)
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if i%3 == 0 && n >= 20 {
			// Make it look like X or STUN with a wrong length, so it gets
			// past the first checks.
			b[0] &= 0xC0 | 0x3f
			binary.BigEndian.PutUint32(b[4:8], wire.MagicCookie)
			binary.BigEndian.PutUint16(b[2:4], uint16(n-20+4))
		}
		c.send(b)
	}
	c.expectSilence()
	wellBehaved(t, srv)
}

func TestTCPAbuseClosesOnlyTheAbusiveConnection(t *testing.T) {
	d := startDaemon(t, server.Config{TCPIdle: 300 * time.Millisecond})
	srv := addrFor(t, d, "127.0.0.1")
	good := registerReq(newID()).AppendTo(nil)
	oversized := append([]byte(nil), good[:20]...)
	binary.BigEndian.PutUint16(oversized[2:4], 2000) // over MaxMessageSize
	for _, tc := range []struct {
		name string
		send []byte
		half bool // close the write side after sending
	}{
		{"random bytes", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), false},
		{"oversized frame", oversized, false},
		{"truncated frame then EOF", good[:len(good)-8], true},
		{"one byte then silence", good[:1], false},
		{"a whole header then silence", good[:20], false},
		{"nothing at all", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", srv.String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if len(tc.send) > 0 {
				if _, err := c.Write(tc.send); err != nil {
					t.Fatal(err)
				}
			}
			if tc.half {
				c.(*net.TCPConn).CloseWrite()
			}
			waitClosed(t, c)
			wellBehaved(t, srv)
		})
	}
}

// refused checks that a connection from local to srv is closed at once. The
// server resets it, which may even reach the client inside connect.
func refused(t *testing.T, local string, srv netip.AddrPort) {
	t.Helper()
	c, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}).Dial("tcp", srv.String())
	if err != nil {
		return
	}
	defer c.Close()
	waitClosed(t, c)
}

func TestTCPConnectionCaps(t *testing.T) {
	d := startDaemon(t, server.Config{MaxTCPPerIP: 2, MaxTCPConns: 3})
	srv := addrFor(t, d, "127.0.0.1")
	a, b := dialTCP(t, srv), dialTCP(t, srv)
	a.register()
	b.register()
	// A third from 127.0.0.1 is over the per-IP cap.
	refused(t, "127.0.0.1", srv)
	// Another loopback IP may connect, once: then the total cap is reached.
	la := &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}
	dl := net.Dialer{LocalAddr: la}
	c3, err := dl.Dial("tcp", srv.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	cl := &client{t: t, tr: wire.TransportTCP, tcp: c3, fr: wire.NewFramer(c3), local: c3.LocalAddr().(*net.TCPAddr).AddrPort()}
	cl.register()
	refused(t, "127.0.0.3", srv)
	// Closing one frees a slot.
	a.tcp.Close()
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", srv.String())
		if err != nil {
			t.Fatal(err)
		}
		cl := &client{t: t, tr: wire.TransportTCP, tcp: c, fr: wire.NewFramer(c)}
		cl.send(stunRequest(false))
		if _, err := cl.recvWithin(replyTimeout); err == nil {
			c.Close()
			break
		}
		c.Close()
		if i == 100 {
			t.Fatal("slot not freed after a connection closed")
		}
		time.Sleep(10 * time.Millisecond) // the server notices the close asynchronously
	}
}

func TestFloodOverRateLimitSparesOtherSources(t *testing.T) {
	d := startDaemon(t, server.Config{Rate: 5, Burst: 10})
	srv := addrFor(t, d, "127.0.0.1")
	flooder := dialUDP(t, srv)
	stun := stunRequest(false)
	// 200 datagrams: few enough to fit the server's socket buffer even at
	// the kernel's default size, so every one reaches the rate limiter.
	for range 200 {
		flooder.send(stun)
	}
	// At most the burst (plus what refilled meanwhile) was answered.
	answered := 0
	for {
		if _, err := flooder.recvWithin(200 * time.Millisecond); err != nil {
			break
		}
		answered++
	}
	if answered < 1 || answered > 60 {
		t.Fatalf("%d of 200 flood requests answered, want about the burst of 10", answered)
	}
	// Another source IP is served normally.
	other := dialUDPFrom(t, netip.MustParseAddrPort("127.0.0.2:0"), srv)
	id, key := other.register()
	other.bind(id, key)
	mfs, err := d.Server().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var dropped float64
	for _, mf := range mfs {
		if mf.GetName() == "ewfd_dropped_total" {
			for _, m := range mf.GetMetric() {
				if labelIs(m, "reason", "rate_limited") {
					dropped = m.GetCounter().GetValue()
				}
			}
		}
	}
	if dropped < 140 {
		t.Fatalf("ewfd_dropped_total{reason=rate_limited} = %v after a flood of 200", dropped)
	}
}

// TestTCPOverRateAnswered: over TCP, whose handshake verified the source, a
// request over the per-source rate is answered ReasonRateLimited at once
// (a TCP client does not retransmit, so a drop would cost it its whole
// timeout); a second one within the answer interval closes the connection;
// after the interval a request over the rate is answered again.
func TestTCPOverRateAnswered(t *testing.T) {
	clk := newFakeClock()
	d := startDaemon(t, server.Config{Rate: 0.001, Burst: 2, Now: clk.Now})
	c := dialTCP(t, addrFor(t, d, "127.0.0.1"))
	id := newID()
	for range 2 { // the burst: answered as usual
		wantError(t, c.roundTrip(queryReq(id)), wire.MethodQuery, wire.ReasonNotRegistered)
	}
	wantError(t, c.roundTrip(queryReq(id)), wire.MethodQuery, wire.ReasonRateLimited)
	// The interval has passed, the rate has not refilled a token: told again.
	clk.Advance(1100 * time.Millisecond)
	wantError(t, c.roundTrip(bindReq(id, wire.Key{}, wire.TransportTCP, c.local)), wire.MethodBind, wire.ReasonRateLimited)
	// Within the interval: no answer, the connection closes.
	c.send(queryReq(id).AppendTo(nil))
	if b, err := c.recvWithin(replyTimeout); err != io.EOF {
		t.Fatalf("after a second request over the rate within the interval: %v (% x), want the connection closed", err, b)
	}
	mfs, err := d.Server().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var closed, answered float64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch {
			case mf.GetName() == "ewfd_tcp_closed_total" && labelIs(m, "reason", "rate_limited"):
				closed = m.GetCounter().GetValue()
			case mf.GetName() == "ewfd_requests_total" && labelIs(m, "outcome", "rate_limited"):
				answered += m.GetCounter().GetValue()
			}
		}
	}
	if closed != 1 || answered != 2 {
		t.Fatalf("ewfd_tcp_closed_total{reason=rate_limited} = %v, ewfd_requests_total{outcome=rate_limited} = %v; want 1 and 2", closed, answered)
	}
}

// TestTCPOverRateFloodBounded: a flood over one TCP connection gets the
// answers within the burst, one ReasonRateLimited and the end of the
// connection, not an answer per request.
func TestTCPOverRateFloodBounded(t *testing.T) {
	d := startDaemon(t, server.Config{Rate: 1, Burst: 5})
	c := dialTCP(t, addrFor(t, d, "127.0.0.1"))
	id := newID()
	var flood []byte
	for range 200 {
		flood = queryReq(id).AppendTo(flood)
	}
	c.send(flood)
	var ok, limited int
	for {
		b, err := c.recvWithin(replyTimeout)
		if err == io.EOF || errors.Is(err, syscall.ECONNRESET) {
			// Reset when the server closed with the rest of the flood
			// unread; the answers before may then be lost too.
			break
		}
		if err != nil {
			t.Fatalf("after %d answers and %d rate-limited: %v, want the connection closed", ok, limited, err)
		}
		var r wire.Message
		if err := r.Decode(b); err != nil {
			t.Fatal(err)
		}
		if r.Reason == wire.ReasonRateLimited {
			limited++
		} else {
			ok++
		}
	}
	if ok > 10 || limited > 1 {
		t.Fatalf("%d answered and %d rate-limited of a flood of 200, want at most the burst of 5 and one", ok, limited)
	}
}
