package client_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/wire"
)

// TestSignalThroughServer: after an introduction, the target SIGNALs its
// candidates back through the real ewfd; the querier receives them with a
// SIGNAL_MAC that verifies under the introduction's SECRET and under no
// other, and a tampered copy does not verify.
func TestSignalThroughServer(t *testing.T) {
	addr := startServer(t)
	srv := addr.String()
	ctx := t.Context()

	signals := make(chan client.Signal, 1)
	a := dial(t, srv, client.Config{RTO: rto.RTO, OnSignal: func(s client.Signal) { signals <- s }})
	aid, _ := up(t, a, srv)
	intros := make(chan client.Introduction, 1)
	b := dial(t, srv, client.Config{RTO: rto.RTO, OnIntroduce: func(in client.Introduction) { intros <- in }})
	bid, _ := up(t, b, srv)

	in, err := a.Introduce(ctx, aid.ID, aid.Keys[srv], bid.ID, nil)
	if err != nil {
		t.Fatal(err)
	}
	var bin client.Introduction
	select {
	case bin = <-intros:
	case <-time.After(5 * time.Second):
		t.Fatal("no INTRODUCE")
	}
	sent := client.Signal{
		Candidates: []wire.Address{
			{AddrPort: netip.MustParseAddrPort("192.168.7.2:4000")},
			{Transport: wire.TransportTCP, AddrPort: netip.MustParseAddrPort("[2001:db8::7]:4001")},
		},
		Relayed:  []wire.Address{{AddrPort: netip.MustParseAddrPort("203.0.113.9:50000")}},
		NATClass: wire.MakeNATClass(3, 3, 3, 0, 0),
		HasNAT:   true,
	}
	if err := b.Signal(ctx, bid.ID, bid.Keys[srv], aid.ID, bin.Secret, sent); err != nil {
		t.Fatalf("SIGNAL: %v", err)
	}
	var got client.Signal
	select {
	case got = <-signals:
	case <-time.After(5 * time.Second):
		t.Fatal("no SIGNAL indication")
	}
	if got.Peer != bid.ID || len(got.Candidates) != 2 || got.Candidates[0] != sent.Candidates[0] ||
		got.Candidates[1] != sent.Candidates[1] || len(got.Relayed) != 1 || got.Relayed[0] != sent.Relayed[0] ||
		!got.HasNAT || got.NATClass != sent.NATClass {
		t.Fatalf("received %+v, sent %+v", got, sent)
	}
	if !got.Verify(aid.ID, in.Secret) {
		t.Fatal("SIGNAL_MAC does not verify under the introduction's SECRET")
	}
	other := in.Secret
	other[0] ^= 1
	if got.Verify(aid.ID, other) {
		t.Error("SIGNAL_MAC verifies under another SECRET")
	}
	if got.Verify(bid.ID, in.Secret) {
		t.Error("SIGNAL_MAC verifies for the wrong recipient")
	}
	tampered := got
	tampered.Candidates = append([]wire.Address(nil), got.Candidates...)
	tampered.Candidates[0].AddrPort = netip.MustParseAddrPort("198.51.100.1:4000")
	if tampered.Verify(aid.ID, in.Secret) {
		t.Error("a SIGNAL with a changed candidate verifies")
	}
	dropped := got
	dropped.HasNAT = false
	if dropped.Verify(aid.ID, in.Secret) {
		t.Error("a SIGNAL without its NAT_CLASS verifies")
	}

	// To a peer that is not bound: the server says so.
	err = b.Signal(ctx, bid.ID, bid.Keys[srv], wire.ID{1}, bin.Secret, client.Signal{})
	if !errors.Is(err, client.ErrNotRegistered) {
		t.Errorf("SIGNAL to an unknown ID: %v, want ErrNotRegistered", err)
	}
	// Too many candidates: refused before sending.
	many := client.Signal{Candidates: make([]wire.Address, wire.MaxCandidates+1)}
	if err := b.Signal(ctx, bid.ID, bid.Keys[srv], aid.ID, bin.Secret, many); !errors.Is(err, wire.ErrTooManyCandidates) {
		t.Errorf("9 candidates: %v", err)
	}
}
