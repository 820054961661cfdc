package server_test

import (
	"context"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewf-project/ewf/internal/loadgen"
	"github.com/ewf-project/ewf/internal/redistest"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/store"
	"github.com/ewf-project/ewf/store/bolt"
	"github.com/ewf-project/ewf/wire"
)

// startShared starts n daemons on one shared store URL, IPv4 loopback.
func startShared(t *testing.T, url string, n int) []netip.AddrPort {
	t.Helper()
	var out []netip.AddrPort
	for range n {
		d := startDaemon(t, server.Config{StoreURL: url, Listen: []string{"127.0.0.1:0"}})
		if d.Server().Name() == "" {
			t.Fatal("daemon on a shared store has no name")
		}
		out = append(out, d.Addrs()[0])
	}
	return out
}

// testAcrossServers: registered and bound at A, the peer is found through
// B (UDP and TCP), binds again at C without registering there, and an
// introduction asked at B reaches it from A's socket — the connected test
// socket of the target receives only from A.
func testAcrossServers(t *testing.T, url string) {
	srv := startShared(t, url, 3)
	a, b, c := srv[0], srv[1], srv[2]

	target := dialUDP(t, a)
	tid, tkey := target.register()
	target.bind(tid, tkey)
	tcpTarget := dialTCP(t, a)
	tcpTarget.bind(tid, tkey)

	for _, tr := range []wire.Transport{wire.TransportUDP, wire.TransportTCP} {
		q := dial(t, tr, b)
		var r *wire.Message
		// The binding is shared in the background: give it a moment.
		for deadline := time.Now().Add(2 * time.Second); ; {
			r = q.roundTrip(queryReq(tid))
			if r.Type.Class == wire.ClassSuccess && r.NumAddresses == 2 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		wantSuccess(t, r, wire.MethodQuery)
		want := []wire.Address{{Transport: wire.TransportUDP, AddrPort: target.local}, {Transport: wire.TransportTCP, AddrPort: tcpTarget.local}}
		if r.NumAddresses != 2 || r.Addresses[0] != want[0] || r.Addresses[1] != want[1] {
			t.Fatalf("QUERY at B over %v: %v, want %v", tr, r.Addresses[:r.NumAddresses], want)
		}
		wantError(t, q.roundTrip(queryReq(newID())), wire.MethodQuery, wire.ReasonNotRegistered)
	}

	// A client registered at A binds at C: C reads the KEY from the store.
	other := dialUDP(t, a)
	oid, okey := other.register()
	atC := dialUDP(t, c)
	atC.bind(oid, okey)
	wrong := okey
	wrong[0] ^= 1
	wantError(t, atC.roundTrip(bindReq(oid, wrong, wire.TransportUDP, atC.local)), wire.MethodBind, wire.ReasonKeyMismatch)
	wantError(t, atC.roundTrip(bindReq(newID(), okey, wire.TransportUDP, atC.local)), wire.MethodBind, wire.ReasonNotRegistered)

	// Introduction asked at B, for a target bound at A: A sends it.
	for _, tr := range []wire.Transport{wire.TransportUDP, wire.TransportTCP} {
		q := dial(t, tr, b)
		qid, qkey := q.register()
		q.bind(qid, qkey)
		cand := wire.Address{Transport: wire.TransportUDP, AddrPort: netip.MustParseAddrPort("192.168.1.20:4000")}
		r := q.roundTrip(introReq(tid, qid, qkey, cand))
		wantSuccess(t, r, wire.MethodQuery)
		if r.Secret == (wire.Secret{}) || r.NumAddresses != 2 || r.Addresses[0].AddrPort != target.local {
			t.Fatalf("introduction answer: %v secret %x", r.Addresses[:r.NumAddresses], r.Secret)
		}
		var ind wire.Message
		if err := ind.Decode(target.recv()); err != nil {
			t.Fatal(err)
		}
		if ind.Type != (wire.Type{Method: wire.MethodIntroduce, Class: wire.ClassIndication}) ||
			ind.SourceID != qid || ind.Secret != r.Secret ||
			ind.NumAddresses != 1 || ind.Addresses[0] != (wire.Address{Transport: tr, AddrPort: q.local}) ||
			ind.NumCandidates != 1 || ind.Candidates[0] != cand {
			t.Fatalf("INTRODUCE %+v", ind)
		}
	}

	// The querier bound at C, asking at B: its binding is read from the
	// store too.
	qc := dialUDP(t, c)
	qid, qkey := qc.register()
	qc.bind(qid, qkey)
	time.Sleep(100 * time.Millisecond) // the binding is shared in the background
	r := dialUDP(t, b).roundTrip(introReq(tid, qid, qkey))
	wantSuccess(t, r, wire.MethodQuery)
	var ind wire.Message
	if err := ind.Decode(target.recv()); err != nil || ind.NumAddresses != 1 || ind.Addresses[0].AddrPort != qc.local {
		t.Fatalf("INTRODUCE for a querier bound at C: %v %+v", err, ind.Addresses[:ind.NumAddresses])
	}

	// A SIGNAL sent at C for the target bound at A leaves from A's socket
	// too: the same deliverToBound path.
	mac := [wire.MACSize]byte{7, 31: 7}
	cand := wire.Address{Transport: wire.TransportUDP, AddrPort: netip.MustParseAddrPort("10.1.2.3:4567")}
	wantSuccess(t, qc.roundTrip(signalReq(tid, qid, qkey, mac, []wire.Address{cand}, nil)), wire.MethodSignal)
	var sig wire.Message
	if err := sig.Decode(target.recv()); err != nil || sig.Type != (wire.Type{Method: wire.MethodSignal, Class: wire.ClassIndication}) ||
		sig.SourceID != qid || sig.SignalMAC != mac || sig.NumCandidates != 1 || sig.Candidates[0] != cand {
		t.Fatalf("SIGNAL across servers: %v %+v", err, sig.Type)
	}
}

func TestAcrossServersSingleRedis(t *testing.T) {
	testAcrossServers(t, redistest.Start(t, redistest.Options{}).URL())
}

func TestAcrossServersRedisCluster(t *testing.T) {
	testAcrossServers(t, redistest.StartCluster(t, 3).URL())
}

// A target whose server stopped is not introduced: the querier hears "not
// bound" instead of a success nobody acts on.
func TestIntroductionToAStoppedServersPeer(t *testing.T) {
	url := redistest.Start(t, redistest.Options{}).URL()
	b := startShared(t, url, 1)[0]
	da := startDaemon(t, server.Config{StoreURL: url, Listen: []string{"127.0.0.1:0"}})
	target := dialUDP(t, da.Addrs()[0])
	tid, tkey := target.register()
	target.bind(tid, tkey)
	q := dialUDP(t, b)
	qid, qkey := q.register()
	q.bind(qid, qkey)
	time.Sleep(100 * time.Millisecond)
	wantSuccess(t, q.roundTrip(introReq(tid, qid, qkey)), wire.MethodQuery)
	target.recv()
	if err := da.Close(); err != nil {
		t.Fatal(err)
	}
	wantError(t, q.roundTrip(introReq(tid, qid, qkey)), wire.MethodQuery, wire.ReasonNotBound)
}

// Losing Redis: STUN, and BIND and QUERY that memory can answer, go on;
// REGISTER gets "try again later" and never a KEY; all resumes by itself.
func TestRedisOutage(t *testing.T) {
	r := redistest.Start(t, redistest.Options{AOF: true})
	srv := startShared(t, r.URL(), 2)
	a, b := srv[0], srv[1]
	c := dialUDP(t, a)
	id, key := c.register()
	c.bind(id, key)
	q := dialUDP(t, a)

	r.Stop()
	c.send(stunRequest(false))
	if _, err := c.recvWithin(replyTimeout); err != nil {
		t.Fatalf("STUN with Redis down: %v", err)
	}
	c.bind(id, key) // KEY cached, binding local
	wantSuccess(t, q.roundTrip(queryReq(id)), wire.MethodQuery)
	m := registerReq(newID())
	// The first REGISTER may be the one that finds Redis gone (after its
	// timeout); every answer must be "try again later".
	for range 3 {
		wantError(t, q.roundTrip(m), wire.MethodRegister, wire.ReasonTryLater)
	}
	// At B nothing about id is in memory: that needs Redis.
	wantError(t, dialUDP(t, b).roundTrip(queryReq(id)), wire.MethodQuery, wire.ReasonTryLater)

	r.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp := q.roundTrip(registerReq(newID()))
		if resp.Type.Class == wire.ClassSuccess {
			break
		}
		if resp.Reason != wire.ReasonTryLater || time.Now().After(deadline) {
			t.Fatalf("after Redis restart: %v %q", resp.Type, resp.Reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The registration made before the outage is still there (AOF), and
	// B, once its own probe found Redis back, finds the binding c
	// refreshed.
	c.bind(id, key)
	qb := dialUDP(t, b)
	for {
		resp := qb.roundTrip(queryReq(id))
		if resp.Type.Class == wire.ClassSuccess && resp.NumAddresses == 1 && resp.Addresses[0].AddrPort == c.local {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("QUERY at B after the outage: %v %q", resp.Type, resp.Reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A's subscription came back by itself: an introduction asked at B
	// reaches c through A again.
	qid, qkey := qb.register()
	qb.bind(qid, qkey)
	for {
		resp := qb.roundTrip(introReq(id, qid, qkey))
		if resp.Type.Class == wire.ClassSuccess {
			if b, err := c.recvWithin(2 * time.Second); err == nil {
				var ind wire.Message
				if ind.Decode(b) == nil && ind.Type.Method == wire.MethodIntroduce && ind.SourceID == qid {
					break
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("introduction across servers after the outage: %v %q", resp.Type, resp.Reason)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop and restart Redis (AOF, fsync always) in the middle of a REGISTER
// flood: every KEY a client was given is still there afterwards and binds
// at another server, which has to read it from Redis.
func TestRegisterFloodAcrossRedisRestart(t *testing.T) {
	r := redistest.Start(t, redistest.Options{AOF: true})
	srv := startShared(t, r.URL(), 2)
	type reg struct {
		id  wire.ID
		key wire.Key
	}
	const clients = 4
	results := make(chan []reg, clients)
	tryLater := make(chan int, clients)
	stop := make(chan struct{})
	for range clients {
		c := dialUDP(t, srv[0])
		go func() {
			var got []reg
			n := 0
			for {
				select {
				case <-stop:
					results <- got
					tryLater <- n
					return
				default:
				}
				id := newID()
				m := registerReq(id)
				c.send(m.AppendTo(nil))
				b, err := c.recvWithin(3 * time.Second)
				if err != nil {
					continue // dropped (queue full): a real client retransmits; this one moves on
				}
				var resp wire.Message
				if resp.Decode(b) != nil || resp.TransactionID != m.TransactionID {
					continue
				}
				switch {
				case resp.Type.Class == wire.ClassSuccess:
					got = append(got, reg{id, resp.Key})
				case resp.Reason == wire.ReasonTryLater:
					n++
				}
			}
		}()
	}
	time.Sleep(150 * time.Millisecond)
	r.Stop()
	time.Sleep(200 * time.Millisecond)
	r.Restart()
	time.Sleep(700 * time.Millisecond) // the store's probe finds Redis back within 500 ms
	close(stop)
	var all []reg
	later := 0
	for range clients {
		all = append(all, <-results...)
		later += <-tryLater
	}
	if later == 0 {
		t.Fatal("no REGISTER was answered \"try again later\": the outage was not exercised")
	}
	if len(all) == 0 {
		t.Fatal("no REGISTER succeeded")
	}
	b := dialUDP(t, srv[1])
	for _, x := range all {
		b.bind(x.id, x.key)
	}
	t.Logf("%d acknowledged registrations all bind at the other server after the Redis restart; %d answered try-later", len(all), later)
}

// The bench's cross-server runs (bench/redis.sh) are checked here once:
// one generator binds its sockets at A and keeps them bound, another asks
// for introductions to them at B; every answer must be a valid success
// (loadgen checks the SECRET and the address), and B must have handed the
// INTRODUCEs to A.
func TestLoadgenIntroductionsAcrossServers(t *testing.T) {
	url := redistest.Start(t, redistest.Options{}).URL()
	var addrs []netip.AddrPort
	var ds []*server.Daemon
	for range 2 {
		d := startDaemon(t, server.Config{StoreURL: url, Listen: []string{"127.0.0.1:0"}, IntroRate: 1e6, IntroBurst: 1e6})
		ds = append(ds, d)
		addrs = append(addrs, d.Addrs()[0])
	}
	targets := make(chan []loadgen.Target, 1)
	bindDone := make(chan error, 1)
	go func() {
		_, err := loadgen.Run(context.Background(), loadgen.Config{Server: addrs[0], Mode: loadgen.ModeBind,
			Sockets: 8, Depth: 1, Duration: 1500 * time.Millisecond, Timeout: 2 * time.Second,
			OnSetup: func(t []loadgen.Target) { targets <- t }})
		bindDone <- err
	}()
	tg := <-targets
	time.Sleep(100 * time.Millisecond) // the BINDs reach Redis in the background
	r, err := loadgen.Run(context.Background(), loadgen.Config{Server: addrs[1], Mode: loadgen.ModeIntro,
		Sockets: 4, Depth: 2, Duration: 500 * time.Millisecond, Timeout: 2 * time.Second, Targets: tg})
	if err != nil || r.OK == 0 || r.Bad != 0 {
		t.Fatalf("introductions at B: %v; ok %d bad %d %v", err, r.OK, r.Bad, r.BadReasons)
	}
	if err := <-bindDone; err != nil {
		t.Fatalf("binding run at A (receives the INTRODUCEs): %v", err)
	}
	if f := counterValue(t, ds[1], "ewfd_shared_total", "forwarded"); f < float64(r.OK) {
		t.Fatalf("B forwarded %v INTRODUCEs for %d introductions", f, r.OK)
	}
}

// counterValue reads a counter of d's registry with the given label value.
func counterValue(t *testing.T, d *server.Daemon, name, label string) float64 {
	t.Helper()
	mfs, err := d.Server().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// sharedStub is a real bolt store presented as a store.Shared whose sharing
// does nothing but count: the allocation test below then measures the
// Handler with its shared-store hooks on, without a Redis client's
// background writers allocating in the same measurement.
type sharedStub struct {
	*bolt.Store
	puts atomic.Int64
}

func (s *sharedStub) Fetch(context.Context, store.ID) (store.Key, bool, error) {
	return store.Key{}, false, store.ErrUnavailable
}
func (s *sharedStub) PutBinding(store.ID, int, store.Binding, time.Duration) bool {
	s.puts.Add(1)
	return true
}
func (s *sharedStub) Bindings(context.Context, store.ID) ([2]store.Binding, [2]bool, error) {
	return [2]store.Binding{}, [2]bool{}, store.ErrUnavailable
}
func (s *sharedStub) Send(context.Context, string, []byte) (bool, error) { return false, nil }
func (s *sharedStub) LastFailure() time.Time                             { return time.Time{} }
func (s *sharedStub) Listen(string, func([]byte)) error                  { return nil }

// With a shared store, what a server answers from memory (a cached KEY, a
// binding made on it) still allocates nothing: sharing the binding is a
// channel send.
func TestSharedHotPathDoesNotAllocate(t *testing.T) {
	st := &sharedStub{Store: openStore(t, bolt.Options{})}
	srv, err := server.New(st, server.Config{Rate: 1e12})
	if err != nil {
		t.Fatal(err)
	}
	if srv.Name() == "" {
		t.Fatal("a Server on a store.Shared has no name")
	}
	h := srv.NewHandler(wire.TransportUDP, discard{})
	id := newID()
	var key wire.Key
	key[0] = 7
	if err := registerSync(st.Store, id, key); err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddrPort("192.0.2.1:4000")
	bind := bindReq(id, key, wire.TransportUDP, src).AppendTo(nil)
	query := queryReq(id).AppendTo(nil)
	now := time.Now()
	out := make([]byte, 0, wire.MaxMessageSize)
	for _, req := range [][]byte{bind, query} {
		if len(h.Handle(now, req, src, out[:0])) == 0 {
			t.Fatal("no answer")
		}
		if n := testing.AllocsPerRun(1000, func() { h.Handle(now, req, src, out[:0]) }); n != 0 {
			t.Errorf("%v allocations per request, want 0", n)
		}
	}
	// Refreshes of an unchanged binding within one half-TTL window are
	// written once; a new address, and the next window, are written again.
	if n := st.puts.Load(); n != 1 {
		t.Errorf("%d bindings shared for 1000+ refreshes of one binding in one window, want 1", n)
	}
	src2 := netip.MustParseAddrPort("192.0.2.1:4001")
	h.Handle(now, bindReq(id, key, wire.TransportUDP, src2).AppendTo(nil), src2, out[:0])
	if n := st.puts.Load(); n != 2 {
		t.Errorf("a changed address was not shared (%d writes)", n)
	}
	later := now.Add(server.DefaultBindingTTL / 2)
	h.Handle(later, bindReq(id, key, wire.TransportUDP, src2).AppendTo(nil), src2, out[:0])
	if n := st.puts.Load(); n != 3 {
		t.Errorf("the first refresh of the next window was not shared (%d writes)", n)
	}
}

// When the workers are behind (here: none started, so the queue of 4,096
// fills), a request that needs the shared store is answered "try again
// later" at once instead of silently dropped.
func TestSharedQueueFullAnswersTryLater(t *testing.T) {
	st := &sharedStub{Store: openStore(t, bolt.Options{})}
	srv, err := server.New(st, server.Config{Rate: 1e12})
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	h := srv.NewHandler(wire.TransportUDP, rec)
	src := netip.MustParseAddrPort("192.0.2.1:4000")
	now := time.Now()
	var last *wire.Message
	for range 4097 {
		last = bindReq(newID(), wire.Key{}, wire.TransportUDP, src)
		if out := h.Handle(now, last.AppendTo(nil), src, nil); len(out) != 0 {
			t.Fatal("a BIND of an uncached ID was answered at once while the queue had room")
		}
	}
	s := rec.next(t)
	var r wire.Message
	if err := r.Decode(s.b); err != nil || r.TransactionID != last.TransactionID || r.Reason != wire.ReasonTryLater || s.to != src {
		t.Fatalf("queue full: got %v %q to %v, want try again later for the last BIND", err, r.Reason, s.to)
	}
}

// A target bound over TCP only at A (its network drops UDP) gets an
// introduction asked at B over its TCP connection to A: B hands it to A,
// which falls back to the TCP binding (PROTOCOL.md §23).
func TestAcrossServersTCPOnlyTarget(t *testing.T) {
	srv := startShared(t, redistest.Start(t, redistest.Options{}).URL(), 2)
	a, b := srv[0], srv[1]
	target := dialTCP(t, a)
	tid, tkey := target.register()
	target.bind(tid, tkey)
	q := dialUDP(t, b)
	qid, qkey := q.register()
	q.bind(qid, qkey)
	time.Sleep(100 * time.Millisecond) // the bindings are shared in the background
	r := q.roundTrip(introReq(tid, qid, qkey))
	wantSuccess(t, r, wire.MethodQuery)
	ind := recvInd(t, target, wire.MethodIntroduce, qid)
	if ind.Secret != r.Secret {
		t.Fatal("INTRODUCE across servers over TCP: wrong SECRET")
	}
	mac := [wire.MACSize]byte{5}
	wantSuccess(t, q.roundTrip(signalReq(tid, qid, qkey, mac, nil, nil)), wire.MethodSignal)
	recvInd(t, target, wire.MethodSignal, qid)
}
