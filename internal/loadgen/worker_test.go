package loadgen

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
)

// newTestWorker returns a worker on a real socket "connected" to a
// loopback address that nothing needs to answer: handle is driven by hand.
func newTestWorker(t testing.TB, mode Mode) *worker {
	t.Helper()
	cfg, err := Config{Server: netip.MustParseAddrPort("127.0.0.1:9"), Mode: mode, Sockets: 1}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(cfg.Server))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return newWorker(&cfg, 0, conn, [32]byte{1})
}

// TestHandleDoesNotAllocate locks in that checking a response, the
// generator's per-packet work besides the syscalls, allocates nothing.
func TestHandleDoesNotAllocate(t *testing.T) {
	for _, mode := range []Mode{ModeSTUN, ModeQuery} {
		t.Run(mode.String(), func(t *testing.T) {
			w, resp := workerWithResponse(t, mode)
			arm(w)
			w.handle(resp, 2*time.Millisecond)
			if w.c.ok != 1 || w.c.badTotal() != 0 {
				t.Fatalf("response not accepted: ok %d bad %v", w.c.ok, w.c.bad)
			}
			if n := testing.AllocsPerRun(100, func() {
				arm(w)
				w.handle(resp, 2*time.Millisecond)
			}); n != 0 {
				t.Errorf("handle allocates %v times per response", n)
			}
		})
	}
}

func BenchmarkHandle(b *testing.B) {
	for _, mode := range []Mode{ModeSTUN, ModeQuery} {
		b.Run(mode.String(), func(b *testing.B) {
			w, resp := workerWithResponse(b, mode)
			b.ReportAllocs()
			for b.Loop() {
				arm(w)
				w.handle(resp, 2*time.Millisecond)
			}
		})
	}
}

// workerWithResponse returns a worker and a valid response to its request
// with sequence number 7 (see arm).
func workerWithResponse(t testing.TB, mode Mode) (*worker, []byte) {
	w := newTestWorker(t, mode)
	if mode == ModeSTUN {
		resp := stun.MustBuild(stun.NewTransactionIDSetter(w.txid(7)), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: w.local.Addr().AsSlice(), Port: int(w.local.Port())}, stun.Fingerprint)
		return w, resp.Raw
	}
	w.peers = []peer{{addr: netip.MustParseAddrPort("127.0.0.1:4000")}}
	var m wire.Message
	m.Type = wire.Type{Method: wire.MethodQuery, Class: wire.ClassSuccess}
	m.TransactionID = w.txid(7)
	_ = m.AddAddress(wire.Address{Transport: wire.TransportUDP, AddrPort: w.peers[0].addr})
	return w, m.AppendTo(nil)
}

// arm puts request 7, a QUERY of peer 0 in the query modes, in flight.
func arm(w *worker) {
	w.slots[0] = slot{active: true, measured: true, seq: 7, method: wire.MethodQuery, sent: time.Millisecond}
	w.active = 1
}
