package server_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/store/bolt"
	"github.com/ewf-project/ewf/wire"
)

// FuzzHandle feeds arbitrary bytes to the core, as UDP from IPv4 and IPv6
// sources and as TCP, and checks what may come back:
//
//   - nothing for a packet that is neither STUN nor X or has a bad header;
//   - over UDP, an X answer at most twice the request;
//   - an X answer is a well-formed response (or error response) to the
//     request's method and transaction ID.
//
// Run beyond the seeds with: go test -run '^$' -fuzz FuzzHandle ./server
func FuzzHandle(f *testing.F) {
	f.Add(stunRequest(false), uint8(0))
	f.Add(stunRequest(true), uint8(1))
	id := wire.ID{1, 2, 3}
	key := wire.Key{9}
	src := netip.MustParseAddrPort("192.0.2.1:1000")
	for _, m := range []*wire.Message{
		registerReq(id), bindReq(id, key, wire.TransportUDP, src), queryReq(id),
		introReq(id, wire.ID{4}, key, wire.Address{AddrPort: src}), req(0x0ff), req(wire.MethodPunch),
	} {
		f.Add(m.AppendTo(nil), uint8(0))
		f.Add(m.AppendTo(nil), uint8(2))
	}
	f.Add([]byte("junk"), uint8(0))

	st := openStore(f, bolt.Options{})
	if err := registerSync(st, id, key); err != nil {
		f.Fatal(err)
	}
	srv, err := server.New(st, server.Config{Rate: 1e12, RegisterPerIP: 1e9})
	if err != nil {
		f.Fatal(err)
	}
	udp := srv.NewHandler(wire.TransportUDP, discard{})
	tcp := srv.NewHandler(wire.TransportTCP, discard{})
	srcs := []netip.AddrPort{src, netip.MustParseAddrPort("[2001:db8::1]:1000")}
	now := time.Now()

	f.Fuzz(func(t *testing.T, b []byte, mode uint8) {
		h := udp
		if mode%3 == 2 {
			h = tcp
		}
		from := srcs[int(mode)%2]
		out := h.Handle(now, b, from, nil)
		if len(out) == 0 {
			return
		}
		k := wire.Classify(b)
		if k == wire.KindOther || wire.MessageLength(b) != len(b) {
			t.Fatalf("answered a packet with an invalid header: % x", b)
		}
		if k == wire.KindSTUN {
			return // checked against pion in the loopback tests
		}
		var in wire.Message
		if err := in.Decode(b); errors.Is(err, wire.ErrInvalidHeader) {
			t.Fatalf("answered an invalid header: % x", b)
		}
		if h == udp && len(out) > 2*len(b) {
			t.Fatalf("%d-byte answer to a %d-byte request", len(out), len(b))
		}
		var r wire.Message
		if err := r.Decode(out); err != nil {
			t.Fatalf("answer does not decode: %v", err)
		}
		if err := r.Check(); err != nil {
			t.Fatalf("answer breaks the spec: %v (%v)", err, r.Type)
		}
		if r.TransactionID != in.TransactionID || r.Type.Method != in.Type.Method ||
			(r.Type.Class != wire.ClassSuccess && r.Type.Class != wire.ClassError) {
			t.Fatalf("answer %v does not match request %v", r.Type, in.Type)
		}
	})
}
