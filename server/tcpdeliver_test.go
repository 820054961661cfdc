package server_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

// recvInd reads the next message on c and checks it is an indication of
// method from src.
func recvInd(t *testing.T, c *client, method wire.Method, src wire.ID) *wire.Message {
	t.Helper()
	var ind wire.Message
	if err := ind.Decode(c.recv()); err != nil {
		t.Fatal(err)
	}
	if err := ind.Check(); err != nil {
		t.Fatalf("indication breaks the spec: %v", err)
	}
	if ind.Type != (wire.Type{Method: method, Class: wire.ClassIndication}) || ind.SourceID != src {
		t.Fatalf("got %v from %v, want a %v indication from %v", ind.Type, ind.SourceID, method, src)
	}
	return &ind
}

// TestDeliverOverTCPBinding: a target whose UDP is blocked holds only a
// TCP binding; the INTRODUCE and the SIGNALs for it travel over that
// binding's connection, the querier learns only the TCP address. Once the
// connection ends nothing is sent (peer unreachable, not a silent
// success); once the target also binds UDP, UDP is used again.
func TestDeliverOverTCPBinding(t *testing.T) {
	d := startDaemon(t, server.Config{})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		q := dial(t, tr, srv)
		qid, qkey := q.register()
		q.bind(qid, qkey)
		target := dialTCP(t, srv)
		tid, tkey := target.register()
		target.bind(tid, tkey)

		r := q.roundTrip(introReq(tid, qid, qkey))
		wantSuccess(t, r, wire.MethodQuery)
		if r.NumAddresses != 1 || r.Addresses[0] != (wire.Address{Transport: wire.TransportTCP, AddrPort: target.local}) {
			t.Fatalf("introduction answer addresses %v, want tcp/%v", r.Addresses[:r.NumAddresses], target.local)
		}
		ind := recvInd(t, target, wire.MethodIntroduce, qid)
		if ind.Secret != r.Secret {
			t.Fatal("INTRODUCE over TCP has the wrong SECRET")
		}
		if ind.NumAddresses != 1 || ind.Addresses[0] != (wire.Address{Transport: tr, AddrPort: q.local}) {
			t.Fatalf("INTRODUCE addresses %v, want %v/%v", ind.Addresses[:ind.NumAddresses], tr, q.local)
		}

		// SIGNAL both ways: to the TCP-only target over its connection,
		// and from it to the querier.
		relayed := []wire.Address{{Transport: wire.TransportUDP, AddrPort: netip.MustParseAddrPort("192.0.2.9:50000")}}
		mac := [wire.MACSize]byte{9}
		wantSuccess(t, q.roundTrip(signalReq(tid, qid, qkey, mac, nil, relayed)), wire.MethodSignal)
		sig := recvInd(t, target, wire.MethodSignal, qid)
		if sig.NumRelayed != 1 || sig.Relayed[0] != relayed[0] || sig.SignalMAC != mac {
			t.Fatalf("SIGNAL over TCP: relayed %v mac %x", sig.Relayed[:sig.NumRelayed], sig.SignalMAC)
		}
		wantSuccess(t, target.roundTrip(signalReq(qid, tid, tkey, mac, nil, relayed)), wire.MethodSignal)
		recvInd(t, q, wire.MethodSignal, tid)

		// The connection ends: its binding lives on until it expires,
		// but nothing can reach the target, and the querier is told.
		// (The server notices the close when its read returns: poll.)
		target.tcp.Close()
		for deadline := time.Now().Add(3 * time.Second); ; {
			r := q.roundTrip(introReq(tid, qid, qkey))
			if r.Type.Class == wire.ClassError || time.Now().After(deadline) {
				wantError(t, r, wire.MethodQuery, wire.ReasonPeerUnreachable)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		wantError(t, q.roundTrip(signalReq(tid, qid, qkey, mac, nil, nil)), wire.MethodSignal, wire.ReasonPeerUnreachable)

		// Both bindings: the INTRODUCE goes over UDP, not TCP.
		t2 := dialTCP(t, srv)
		t2.bind(tid, tkey)
		u := dialUDP(t, srv)
		u.bind(tid, tkey)
		wantSuccess(t, q.roundTrip(introReq(tid, qid, qkey)), wire.MethodQuery)
		recvInd(t, u, wire.MethodIntroduce, qid)
		t2.expectSilence()
	})
}
