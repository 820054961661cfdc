package server_test

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/store/bolt"
	"github.com/ewf-project/ewf/wire"
)

func signalReq(peer, self wire.ID, key wire.Key, mac [wire.MACSize]byte, cands, relayed []wire.Address) *wire.Message {
	m := req(wire.MethodSignal)
	m.SetID(peer)
	m.SetSourceID(self)
	m.SetKey(key)
	for _, c := range cands {
		if err := m.AddCandidate(c); err != nil {
			panic(err)
		}
	}
	for _, c := range relayed {
		if err := m.AddRelayed(c); err != nil {
			panic(err)
		}
	}
	m.SetSignalMAC(mac)
	return m
}

// TestSignalRelaysCandidatesToPeer: a SIGNAL from a bound, authenticated
// client reaches the peer over the peer's UDP binding as an indication with
// the sender's SOURCE_ID, its candidates and relayed addresses in order,
// the SIGNAL_MAC unchanged, and a fresh transaction ID; the sender gets a
// success. Both directions, over either transport for the sender.
func TestSignalRelaysCandidatesToPeer(t *testing.T) {
	d := startDaemon(t, server.Config{})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		a := dialUDP(t, srv)
		aid, akey := a.register()
		a.bind(aid, akey)
		b := dial(t, tr, srv)
		bid, bkey := b.register()
		b.bind(bid, bkey)

		cands := []wire.Address{
			{Transport: wire.TransportUDP, AddrPort: netip.MustParseAddrPort("192.168.1.20:4000")},
			{Transport: wire.TransportTCP, AddrPort: netip.MustParseAddrPort("[2001:db8::20]:4001")},
		}
		relayed := []wire.Address{{Transport: wire.TransportUDP, AddrPort: netip.MustParseAddrPort("[2001:db8::99]:50000")}}
		mac := [wire.MACSize]byte{1, 2, 3, 31: 0xff}
		rq := signalReq(aid, bid, bkey, mac, cands, relayed)
		wantSuccess(t, b.roundTrip(rq), wire.MethodSignal)

		raw := a.recv()
		var ind wire.Message
		if err := ind.Decode(raw); err != nil {
			t.Fatal(err)
		}
		if err := ind.Check(); err != nil {
			t.Fatalf("indication breaks the spec: %v", err)
		}
		if ind.Type != (wire.Type{Method: wire.MethodSignal, Class: wire.ClassIndication}) {
			t.Fatalf("peer got %v, want SIGNAL indication", ind.Type)
		}
		if ind.SourceID != bid || ind.SignalMAC != mac {
			t.Fatal("indication has the wrong SOURCE_ID or SIGNAL_MAC")
		}
		if ind.TransactionID == rq.TransactionID {
			t.Fatal("indication reuses the request's transaction ID")
		}
		if ind.NumCandidates != 2 || ind.Candidates[0] != cands[0] || ind.Candidates[1] != cands[1] ||
			ind.NumRelayed != 1 || ind.Relayed[0] != relayed[0] {
			t.Fatalf("indication carries %v / %v", ind.Candidates[:ind.NumCandidates], ind.Relayed[:ind.NumRelayed])
		}
		// The end-to-end MAC input is the same on both sides.
		if !bytes.Equal(wire.AppendSignalMACInput(nil, bid, aid, rq), wire.AppendSignalMACInput(nil, ind.SourceID, aid, &ind)) {
			t.Fatal("SIGNAL_MAC input differs between request and indication")
		}
		if len(raw) > len(rq.AppendTo(nil)) {
			t.Fatalf("indication of %d bytes is larger than its request", len(raw))
		}

		// The other way, when b is bound over UDP.
		if tr == wire.TransportUDP {
			wantSuccess(t, a.roundTrip(signalReq(bid, aid, akey, mac, nil, nil)), wire.MethodSignal)
			var back wire.Message
			if err := back.Decode(b.recv()); err != nil || back.SourceID != aid || back.NumCandidates != 0 {
				t.Fatalf("reverse SIGNAL: %v %+v", err, back)
			}
		}
	})
}

func TestSignalErrorReasons(t *testing.T) {
	d := startDaemon(t, server.Config{IntroBurst: 3, IntroRate: 0.001})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		c := dial(t, tr, srv)
		sid, skey := c.register()
		pid, pkey := c.register()
		wrong := skey
		wrong[0] ^= 0xff
		var mac [wire.MACSize]byte

		wantError(t, c.roundTrip(signalReq(pid, newID(), skey, mac, nil, nil)), wire.MethodSignal, wire.ReasonNotRegistered)
		wantError(t, c.roundTrip(signalReq(pid, sid, wrong, mac, nil, nil)), wire.MethodSignal, wire.ReasonKeyMismatch)
		// Sender not bound.
		wantError(t, c.roundTrip(signalReq(pid, sid, skey, mac, nil, nil)), wire.MethodSignal, wire.ReasonNotBound)
		c.bind(sid, skey)
		// Peer unknown, then registered but not bound (a peer bound over
		// TCP only: TestDeliverOverTCPBinding).
		wantError(t, c.roundTrip(signalReq(newID(), sid, skey, mac, nil, nil)), wire.MethodSignal, wire.ReasonNotRegistered)
		wantError(t, c.roundTrip(signalReq(pid, sid, skey, mac, nil, nil)), wire.MethodSignal, wire.ReasonNotBound)
		// Without SIGNAL_MAC: invalid attributes, nothing forwarded.
		p := dialUDP(t, srv)
		p.bind(pid, pkey)
		noMAC := req(wire.MethodSignal)
		noMAC.SetID(pid)
		noMAC.SetSourceID(sid)
		noMAC.SetKey(skey)
		wantError(t, c.roundTrip(noMAC), wire.MethodSignal, wire.ReasonInvalidAttributes)
		// Three pass (IntroBurst), then rate limited. The failures above
		// were not charged.
		for range 3 {
			wantSuccess(t, c.roundTrip(signalReq(pid, sid, skey, mac, nil, nil)), wire.MethodSignal)
			p.recv()
		}
		wantError(t, c.roundTrip(signalReq(pid, sid, skey, mac, nil, nil)), wire.MethodSignal, wire.ReasonRateLimited)
		p.expectSilence()
	})
}

// TestDeliver covers the function a cross-server deployment calls: it
// sends an indication over the peer's UDP binding, refuses what is not an
// indication, and says why nothing was sent.
func TestDeliver(t *testing.T) {
	c := newCore(t, server.Config{}, bolt.Options{})
	s, clock, rec := c.srv, c.clk, c.rec
	src := netip.MustParseAddrPort("198.51.100.7:40000")
	id := newID()
	key := c.register(id, src).Key

	ind := req(wire.MethodSignal)
	ind.Type.Class = wire.ClassIndication
	ind.SetSourceID(newID())
	ind.SetSignalMAC([wire.MACSize]byte{7})
	b := ind.AppendTo(nil)

	if ok, why := s.Deliver(clock.Now(), newID(), b); ok || why != wire.ReasonNotRegistered {
		t.Errorf("unknown peer: %v %v", ok, why)
	}
	if ok, why := s.Deliver(clock.Now(), id, b); ok || why != wire.ReasonNotBound {
		t.Errorf("unbound peer: %v %v", ok, why)
	}
	wantSuccess(t, c.do(bindReq(id, key, wire.TransportUDP, src), src), wire.MethodBind)
	if ok, why := s.Deliver(clock.Now(), id, b); !ok {
		t.Fatalf("bound peer: %v", why)
	}
	got := rec.next(t)
	if got.to != src || !bytes.Equal(got.b, b) {
		t.Fatalf("delivered %x to %v, want %x to %v", got.b, got.to, b, src)
	}
	// A request or a response is not delivered in the server's name.
	for _, c := range []wire.Class{wire.ClassRequest, wire.ClassSuccess, wire.ClassError} {
		m := *ind
		m.Type.Class = c
		if ok, _ := s.Deliver(clock.Now(), id, m.AppendTo(nil)); ok {
			t.Errorf("delivered a %v", c)
		}
	}
	if ok, _ := s.Deliver(clock.Now(), id, b[:len(b)-4]); ok {
		t.Error("delivered a truncated message")
	}
	// The binding expires: not bound any more.
	clock.Advance(server.DefaultBindingTTL + time.Second)
	if ok, why := s.Deliver(clock.Now(), id, b); ok || why != wire.ReasonNotBound {
		t.Errorf("expired binding: %v %v", ok, why)
	}
}
