package server_test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"math"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/store/bolt"
	"github.com/ewf-project/ewf/wire"
)

// Tests of the core through Handle, with an injected clock and a real bbolt
// store, for what depends on time or on volume.

type core struct {
	t   testing.TB
	srv *server.Server
	h   *server.Handler
	rec *recorder
	clk *fakeClock
	st  *bolt.Store
}

func newCore(t testing.TB, cfg server.Config, opts bolt.Options) *core {
	t.Helper()
	clk := newFakeClock()
	cfg.Now = clk.Now
	if cfg.Rate == 0 {
		cfg.Rate = 1e9
	}
	if cfg.RegisterPerIP == 0 {
		cfg.RegisterPerIP = 1e9
	}
	opts.Now = clk.Now
	st := openStore(t, opts)
	srv, err := server.New(st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	return &core{t: t, srv: srv, h: srv.NewHandler(wire.TransportUDP, rec), rec: rec, clk: clk, st: st}
}

// do handles m from src and returns the decoded synchronous answer, or nil.
func (c *core) do(m *wire.Message, src netip.AddrPort) *wire.Message {
	c.t.Helper()
	b := c.h.Handle(c.clk.Now(), m.AppendTo(nil), src, nil)
	if len(b) == 0 {
		return nil
	}
	var r wire.Message
	if err := r.Decode(b); err != nil {
		c.t.Fatal(err)
	}
	return &r
}

// register registers id from src and waits for the late answer.
func (c *core) register(id wire.ID, src netip.AddrPort) *wire.Message {
	c.t.Helper()
	m := registerReq(id)
	if r := c.do(m, src); r != nil {
		return r // refused at once
	}
	s := c.rec.next(c.t)
	if s.to != src {
		c.t.Fatalf("late answer went to %v, want %v", s.to, src)
	}
	var r wire.Message
	if err := r.Decode(s.b); err != nil {
		c.t.Fatal(err)
	}
	if r.TransactionID != m.TransactionID {
		c.t.Fatal("late answer has another transaction ID")
	}
	return &r
}

func (c *core) gauge(name, transport string) float64 {
	c.t.Helper()
	mfs, err := c.srv.Registry().Gather()
	if err != nil {
		c.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if transport == "" || labelIs(m, "transport", transport) {
				return m.GetGauge().GetValue()
			}
		}
	}
	c.t.Fatalf("no metric %s", name)
	return 0
}

func labelIs(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

var (
	src1 = netip.MustParseAddrPort("198.51.100.1:40000")
	src2 = netip.MustParseAddrPort("198.51.100.2:40000")
)

func TestBindingExpiresWithoutRefresh(t *testing.T) {
	c := newCore(t, server.Config{BindingTTL: 120 * time.Second}, bolt.Options{})
	id := newID()
	key := c.register(id, src1).Key
	wantSuccess(t, c.do(bindReq(id, key, wire.TransportUDP, src1), src1), wire.MethodBind)
	if g := c.gauge("ewfd_bindings", "udp"); g != 1 {
		t.Fatalf("bindings gauge %v after a BIND, want 1", g)
	}

	c.clk.Advance(100 * time.Second)
	wantSuccess(t, c.do(queryReq(id), src2), wire.MethodQuery)
	// A refresh at 100 s carries the binding to 220 s.
	wantSuccess(t, c.do(bindReq(id, key, wire.TransportUDP, src1), src1), wire.MethodBind)
	c.clk.Advance(119 * time.Second)
	wantSuccess(t, c.do(queryReq(id), src2), wire.MethodQuery)
	c.clk.Advance(2 * time.Second)
	wantError(t, c.do(queryReq(id), src2), wire.MethodQuery, wire.ReasonNotBound)

	c.srv.Sweep(c.clk.Now())
	if g := c.gauge("ewfd_bindings", "udp"); g != 0 {
		t.Fatalf("bindings gauge %v after expiry and sweep, want 0", g)
	}
	// The registration outlives the binding.
	wantSuccess(t, c.do(bindReq(id, key, wire.TransportUDP, src1), src1), wire.MethodBind)
}

func TestRegisterRetransmissionWindowIs40Seconds(t *testing.T) {
	c := newCore(t, server.Config{}, bolt.Options{})
	m := registerReq(newID())
	if c.do(m, src1) != nil {
		t.Fatal("REGISTER answered before its commit")
	}
	first := c.rec.next(t).b

	c.clk.Advance(39 * time.Second)
	if got := c.h.Handle(c.clk.Now(), m.AppendTo(nil), src1, nil); !bytes.Equal(got, first) {
		t.Fatalf("retransmission at 39 s: got % x, want the first answer", got)
	}
	c.clk.Advance(2 * time.Second)
	wantError(t, c.do(m, src1), wire.MethodRegister, wire.ReasonIDConflict)
}

func TestRegisterRetransmissionDuringCommitGetsOneAnswer(t *testing.T) {
	c := newCore(t, server.Config{}, bolt.Options{})
	m := registerReq(newID())
	b := m.AppendTo(nil)
	var sync [][]byte
	for range 5 {
		if r := c.h.Handle(c.clk.Now(), b, src1, nil); len(r) > 0 {
			sync = append(sync, r)
		}
	}
	late := c.rec.next(t).b
	for _, r := range sync {
		// Only a retransmission after the commit is answered at once, and
		// with the very same bytes.
		if !bytes.Equal(r, late) {
			t.Fatalf("answers differ:\n% x\n% x", r, late)
		}
	}
	select {
	case <-c.rec.ch:
		t.Fatal("a second late answer for one transaction")
	default:
	}
}

func TestRegisterLimitPerSourceAndGlobal(t *testing.T) {
	c := newCore(t, server.Config{RegisterPerIP: 3, RegisterWindow: time.Hour}, bolt.Options{MaxRegistrations: 5})
	for i := range 3 {
		src := netip.AddrPortFrom(src1.Addr(), uint16(1000+i)) // the port does not matter
		wantSuccess(t, c.register(newID(), src), wire.MethodRegister)
	}
	over := registerReq(newID())
	r := c.do(over, src1)
	if r == nil {
		t.Fatal("4th REGISTER from one IP not refused at once")
	}
	wantError(t, r, wire.MethodRegister, wire.ReasonRegistrationLimit)
	// Its retransmission is answered from the cache, not charged again.
	wantError(t, c.do(over, src1), wire.MethodRegister, wire.ReasonRegistrationLimit)
	// Another source may register until the global cap of 5 is reached.
	wantSuccess(t, c.register(newID(), src2), wire.MethodRegister)
	wantSuccess(t, c.register(newID(), src2), wire.MethodRegister)
	wantError(t, c.register(newID(), src2), wire.MethodRegister, wire.ReasonRegistrationLimit)
	// An hour later src1's window has refilled, but the global cap holds.
	c.clk.Advance(time.Hour)
	wantError(t, c.register(newID(), src1), wire.MethodRegister, wire.ReasonRegistrationLimit)
}

func TestRegisterLimitPerIPv6Prefix(t *testing.T) {
	c := newCore(t, server.Config{RegisterPerIP: 2}, bolt.Options{})
	a := netip.MustParseAddrPort("[2001:db8:1:2::1]:5000")
	b := netip.MustParseAddrPort("[2001:db8:1:2:ffff::9]:5000")
	other := netip.MustParseAddrPort("[2001:db8:1:3::1]:5000")
	wantSuccess(t, c.register(newID(), a), wire.MethodRegister)
	wantSuccess(t, c.register(newID(), b), wire.MethodRegister)
	wantError(t, c.register(newID(), a), wire.MethodRegister, wire.ReasonRegistrationLimit)
	wantSuccess(t, c.register(newID(), other), wire.MethodRegister)
}

func TestRateLimitDropsOverBudgetPerSource(t *testing.T) {
	c := newCore(t, server.Config{Rate: 1, Burst: 5}, bolt.Options{})
	stun := stunRequest(false)
	answered := func(src netip.AddrPort, n int) int {
		k := 0
		for range n {
			if len(c.h.Handle(c.clk.Now(), stun, src, nil)) > 0 {
				k++
			}
		}
		return k
	}
	if got := answered(src1, 20); got != 5 {
		t.Fatalf("burst: %d of 20 answered, want 5", got)
	}
	if got := answered(src2, 3); got != 3 {
		t.Fatalf("another source: %d of 3 answered, want 3", got)
	}
	c.clk.Advance(2 * time.Second)
	if got := answered(src1, 20); got != 2 {
		t.Fatalf("2 s later: %d answered, want 2", got)
	}
}

func TestFloodsDoNotGrowMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("floods 600k packets")
	}
	c := newCore(t, server.Config{Rate: 10, MaxSources: 1 << 12}, bolt.Options{})
	taken := newID()
	c.register(taken, src1)
	var out [wire.MaxMessageSize]byte
	stun := stunRequest(false)
	bind := bindReq(newID(), wire.Key{}, wire.TransportUDP, src1).AppendTo(nil)
	conflict := registerReq(taken)
	flood := func(n int) {
		var ip [16]byte
		ip[0] = 0x20
		for i := range n {
			// A fresh /64 per packet, as a spoofing attacker would send.
			binary.BigEndian.PutUint64(ip[1:9], uint64(i)*0x9e3779b97f4a7c15)
			src := netip.AddrPortFrom(netip.AddrFrom16(ip), uint16(i))
			c.h.Handle(c.clk.Now(), stun, src, out[:0])
			c.h.Handle(c.clk.Now(), bind, src, out[:0])
			rand.Read(conflict.TransactionID[:])
			c.h.Handle(c.clk.Now(), conflict.AppendTo(out[:0]), src, out[:0])
		}
	}
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	flood(100_000) // fill the fixed tables and the retransmission cache
	before := heap()
	flood(100_000)
	after := heap()
	if after > before+(4<<20) {
		t.Fatalf("heap grew from %d to %d bytes over a flood of 300k packets", before, after)
	}
}

func TestConfigRejectsNegativeValues(t *testing.T) {
	st := openStore(t, bolt.Options{})
	for _, cfg := range []server.Config{
		{BindingTTL: -1},
		{BindingTTL: time.Millisecond},
		{Rate: -1},
		{Rate: math.Inf(1)},
		{IntroRate: math.NaN()},
		{MaxTCPConns: -1},
		{RegisterPerIP: -5},
		{UDPBatch: 5000},
	} {
		if _, err := server.New(st, cfg); err == nil {
			t.Errorf("New accepted %+v", cfg)
		}
	}
	if _, err := server.New(nil, server.Config{}); err == nil {
		t.Error("New accepted a nil store")
	}
	if _, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}}); err == nil {
		t.Error("Start accepted a Config without DataDir or Store")
	}
}

func TestTwoServersHaveSeparateRegistries(t *testing.T) {
	st := openStore(t, bolt.Options{})
	a, err := server.New(st, server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := server.New(st, server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if a.Registry() == b.Registry() || a.Registry() == prometheus.DefaultRegisterer {
		t.Fatal("servers share a metrics registry")
	}
}

func TestIntroductionsPerTargetAddressAreLimitedWithoutStarvingTheTarget(t *testing.T) {
	c := newCore(t, server.Config{Rate: 5, Burst: 5}, bolt.Options{})
	tid := newID()
	tkey := c.register(tid, src1).Key
	wantSuccess(t, c.do(bindReq(tid, tkey, wire.TransportUDP, src1), src1), wire.MethodBind)
	for i := range 8 {
		// Every querier its own ID and address, so only the target's
		// address is common.
		qsrc := netip.AddrPortFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 7000)
		qid := newID()
		qkey := c.register(qid, qsrc).Key
		wantSuccess(t, c.do(bindReq(qid, qkey, wire.TransportUDP, qsrc), qsrc), wire.MethodBind)
		r := c.do(introReq(tid, qid, qkey), qsrc)
		if i < 5 {
			wantSuccess(t, r, wire.MethodQuery)
			if s := c.rec.next(t); s.to != src1 {
				t.Fatalf("INTRODUCE went to %v, want %v", s.to, src1)
			}
		} else {
			wantError(t, r, wire.MethodQuery, wire.ReasonRateLimited)
		}
	}
	// The target's own requests are not charged for what it received.
	wantSuccess(t, c.do(bindReq(tid, tkey, wire.TransportUDP, src1), src1), wire.MethodBind)
}
