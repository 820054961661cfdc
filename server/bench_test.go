package server_test

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/store/bolt"
	"github.com/ewf-project/ewf/wire"
)

// discard is a Replier that sends nothing, for measuring the core alone.
type discard struct{}

func (discard) Reply([]byte, netip.AddrPort) {}

// hotPath is a Server with one registered and bound peer, and the requests
// of the hot path ready to hand to Handle.
type hotPath struct {
	h                          *server.Handler
	now                        time.Time
	stun, bind, query, intro   []byte
	badAttr, unknown, notBound []byte
	// The integrity form (docs/PROTOCOL.md §18), stamped at now.
	bindSigned, introSigned []byte
}

func newHotPath(t testing.TB) *hotPath {
	t.Helper()
	st := openStore(t, bolt.Options{})
	srv, err := server.New(st, server.Config{Rate: 1e12, IntroRate: 1e12, IntroBurst: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	h := srv.NewHandler(wire.TransportUDP, discard{})
	now := time.Now()
	reg := func(id wire.ID) wire.Key {
		var key wire.Key
		key[0] = id[0] ^ 0x5a
		if err := registerSync(st, id, key); err != nil {
			t.Fatal(err)
		}
		return key
	}
	peer, self := newID(), newID()
	pk, sk := reg(peer), reg(self)
	idle := newID()
	reg(idle)
	p := &hotPath{h: h, now: now}
	p.stun = stunRequest(true)
	p.bind = bindReq(peer, pk, wire.TransportUDP, src1).AppendTo(nil)
	if r := h.Handle(now, p.bind, src1, nil); len(r) != wire.HeaderSize {
		t.Fatalf("setup BIND failed: % x", r)
	}
	if r := h.Handle(now, bindReq(self, sk, wire.TransportUDP, src2).AppendTo(nil), src2, nil); len(r) != wire.HeaderSize {
		t.Fatalf("setup BIND failed: % x", r)
	}
	p.query = queryReq(peer).AppendTo(nil)
	p.intro = introReq(peer, self, sk, wire.Address{AddrPort: netip.MustParseAddrPort("10.1.2.3:4567")}).AppendTo(nil)
	p.badAttr = req(wire.MethodBind).AppendTo(nil)
	p.unknown = req(0x0ff).AppendTo(nil)
	p.notBound = queryReq(idle).AppendTo(nil)
	_, p.bindSigned = bindSigned(peer, pk, wire.TransportUDP, src1, now)
	_, p.introSigned = introSigned(peer, self, sk, now)
	return p
}

func registerSync(st *bolt.Store, id wire.ID, key wire.Key) error {
	ch := make(chan error, 1)
	st.Register(id, key, time.Now(), func(err error) { ch <- err })
	return <-ch
}

// TestHotPathDoesNotAllocate locks in the zero-allocation claim for every
// request that is answered synchronously.
func TestHotPathDoesNotAllocate(t *testing.T) {
	p := newHotPath(t)
	now := p.now
	out := make([]byte, 0, wire.MaxMessageSize)
	for _, tc := range []struct {
		name string
		req  []byte
		src  netip.AddrPort
	}{
		{"STUN Binding", p.stun, src1},
		{"BIND refresh", p.bind, src1},
		{"QUERY", p.query, src2},
		{"QUERY introduction", p.intro, src2},
		{"BIND with integrity", p.bindSigned, src1},
		{"QUERY introduction with integrity", p.introSigned, src2},
		{"QUERY not bound", p.notBound, src2},
		{"invalid attributes", p.badAttr, src2},
		{"unknown method", p.unknown, src2},
		{"junk", []byte("not a message at all, just junk...."), src2},
	} {
		var n int
		allocs := testing.AllocsPerRun(1000, func() {
			n = len(p.h.Handle(now, tc.req, tc.src, out[:0]))
		})
		if n == 0 && tc.name != "junk" {
			t.Errorf("%s: no answer", tc.name)
		}
		if allocs != 0 {
			t.Errorf("%s: %v allocations per request, want 0", tc.name, allocs)
		}
	}
}

// BenchmarkHandle measures the core per request kind, without sockets:
//
//	go test -run '^$' -bench BenchmarkHandle -benchmem ./server
//
// "bind" and "bind_integrity" are the same BIND in the KEY form and in the
// integrity form (MAC verified, replay cache, signed answer).
func BenchmarkHandle(b *testing.B) {
	p := newHotPath(b)
	now := p.now
	for _, bc := range []struct {
		name string
		req  []byte
		src  netip.AddrPort
	}{
		{"stun", p.stun, src1},
		{"bind", p.bind, src1},
		{"bind_integrity", p.bindSigned, src1},
		{"query", p.query, src2},
		{"introduction", p.intro, src2},
		{"introduction_integrity", p.introSigned, src2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			out := make([]byte, 0, wire.MaxMessageSize)
			b.ReportAllocs()
			for b.Loop() {
				if len(p.h.Handle(now, bc.req, bc.src, out[:0])) == 0 {
					b.Fatal("no answer")
				}
			}
		})
	}
	b.Run("register", benchmarkRegister)
}

// counter is a Replier that counts late answers.
type counter struct {
	n    atomic.Int64
	slot chan struct{}
}

func (c *counter) Reply([]byte, netip.AddrPort) {
	c.n.Add(1)
	<-c.slot
}

// benchmarkRegister measures durable REGISTERs: every one is answered only
// after its group commit (fsync) to a real bbolt file. 4096 clients keep
// one REGISTER each in flight, as a crowd of clients waiting for answers
// would.
func benchmarkRegister(b *testing.B) {
	st := openStore(b, bolt.Options{})
	srv, err := server.New(st, server.Config{Rate: 1e12, RegisterPerIP: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	c := &counter{slot: make(chan struct{}, 4096)}
	h := srv.NewHandler(wire.TransportUDP, c)
	m := registerReq(wire.ID{})
	buf := make([]byte, 0, 64)
	var ip [4]byte
	b.ReportAllocs()
	i := uint32(0)
	start := time.Now()
	now := start
	for b.Loop() {
		i++
		binary.BigEndian.PutUint32(m.ID[:4], i)
		binary.BigEndian.PutUint32(m.ID[4:8], uint32(start.UnixNano()))
		binary.BigEndian.PutUint32(m.TransactionID[:4], i)
		binary.BigEndian.PutUint32(ip[:], 0x0a000000|i&0xffffff)
		c.slot <- struct{}{}
		if r := h.Handle(now, m.AppendTo(buf[:0]), netip.AddrPortFrom(netip.AddrFrom4(ip), 9), buf[:0]); len(r) > 0 {
			b.Fatalf("REGISTER answered at once: % x", r)
		}
	}
	for int(c.n.Load()) < int(i) {
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(i)/time.Since(start).Seconds(), "registers/s")
}

// TestServingDoesNotAllocate measures whole round trips through the real
// listeners, the test's client included (it does not allocate either):
// AllocsPerRun counts every goroutine's allocations, so this covers the
// batch reader, the TCP connection loop and the handler together.
func TestServingDoesNotAllocate(t *testing.T) {
	if testing.Short() {
		t.Skip("round trips on loopback")
	}
	d := startDaemon(t, server.Config{UDPReaders: 1})
	srv := addrFor(t, d, "127.0.0.1")
	u := dialUDP(t, srv)
	id, key := u.register()
	u.bind(id, key)
	tc := dialTCP(t, srv)
	tc.bind(id, key)
	stun := stunRequest(false)
	query := queryReq(id).AppendTo(nil)
	bindU := bindReq(id, key, wire.TransportUDP, u.local).AppendTo(nil)
	buf := make([]byte, 1500)
	for _, c := range []struct {
		name string
		req  []byte
		tr   wire.Transport
	}{
		{"udp stun", stun, wire.TransportUDP},
		{"udp bind", bindU, wire.TransportUDP},
		{"udp query", query, wire.TransportUDP},
		{"tcp stun", stun, wire.TransportTCP},
		{"tcp query", query, wire.TransportTCP},
	} {
		rt := func() {
			if c.tr == wire.TransportUDP {
				u.udp.Write(c.req)
				if _, err := u.udp.Read(buf); err != nil {
					t.Fatal(err)
				}
				return
			}
			tc.tcp.Write(c.req)
			if _, _, err := tc.fr.Next(); err != nil {
				t.Fatal(err)
			}
		}
		rt() // warm up: buffers, timers
		u.udp.SetReadDeadline(time.Time{})
		tc.tcp.SetReadDeadline(time.Time{})
		if allocs := testing.AllocsPerRun(500, rt); allocs > 0.05 {
			t.Errorf("%s: %.2f allocations per round trip, want 0", c.name, allocs)
		}
	}
}
