package server_test

import (
	"bytes"
	"errors"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/store"
	"github.com/ewf-project/ewf/store/bolt"
	"github.com/ewf-project/ewf/wire"
)

// Every test here runs through the real listeners on loopback, over UDP and
// TCP, IPv4 and (when the host has it) IPv6.

var transports = []wire.Transport{wire.TransportUDP, wire.TransportTCP}

// forEach runs f for every loopback family and transport against one
// daemon.
func forEach(t *testing.T, d *server.Daemon, f func(t *testing.T, srv netip.AddrPort, tr wire.Transport)) {
	for _, host := range loopbacks(t) {
		srv := addrFor(t, d, host)
		for _, tr := range transports {
			t.Run(tr.String()+"/"+host, func(t *testing.T) { f(t, srv, tr) })
		}
	}
}

func stunRequest(fingerprint bool) []byte {
	setters := []stun.Setter{stun.TransactionID, stun.BindingRequest}
	if fingerprint {
		setters = append(setters, stun.Fingerprint)
	}
	return stun.MustBuild(setters...).Raw
}

func TestSTUNBindingReturnsObservedAddress(t *testing.T) {
	d := startDaemon(t, server.Config{})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		c := dial(t, tr, srv)
		for _, fp := range []bool{false, true} {
			req := stunRequest(fp)
			c.send(req)
			b := c.recv()
			var m stun.Message
			m.Raw = b
			if err := m.Decode(); err != nil {
				t.Fatalf("answer does not decode: %v", err)
			}
			if m.Type != stun.BindingSuccess || !bytes.Equal(m.TransactionID[:], req[8:20]) {
				t.Fatalf("got %v tx %x, want Binding success for tx %x", m.Type, m.TransactionID, req[8:20])
			}
			var xa stun.XORMappedAddress
			if err := xa.GetFrom(&m); err != nil {
				t.Fatal(err)
			}
			got, _ := netip.AddrFromSlice(xa.IP)
			if netip.AddrPortFrom(got.Unmap(), uint16(xa.Port)) != c.local {
				t.Errorf("XOR-MAPPED-ADDRESS %v, want %v", xa, c.local)
			}
			if m.Contains(stun.AttrFingerprint) != fp {
				t.Errorf("FINGERPRINT present = %v, want %v (mirrors the request)", !fp, fp)
			}
			if fp {
				if err := stun.Fingerprint.Check(&m); err != nil {
					t.Errorf("FINGERPRINT: %v", err)
				}
			}
		}
	})
}

func TestRegisterGivesFreshKeyAndRetransmissionGetsSameAnswer(t *testing.T) {
	d := startDaemon(t, server.Config{})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		c := dial(t, tr, srv)
		id := newID()
		first := registerReq(id)
		b := first.AppendTo(nil)
		c.send(b)
		r1 := c.recv()
		var m wire.Message
		if err := m.Decode(r1); err != nil {
			t.Fatal(err)
		}
		wantSuccess(t, &m, wire.MethodRegister)
		if m.Key == (wire.Key{}) {
			t.Fatal("KEY is all zeros")
		}

		// The same transaction again: the same bytes, so the same KEY.
		c.send(b)
		if r2 := c.recv(); !bytes.Equal(r1, r2) {
			t.Fatalf("retransmission got\n% x\nwant\n% x", r2, r1)
		}

		// A new transaction for the same ID, from this or another client:
		// ID conflict.
		wantError(t, c.roundTrip(registerReq(id)), wire.MethodRegister, wire.ReasonIDConflict)
		other := dial(t, tr, srv)
		wantError(t, other.roundTrip(registerReq(id)), wire.MethodRegister, wire.ReasonIDConflict)

		// Another ID gets another KEY.
		_, k2 := c.register()
		if k2 == m.Key {
			t.Fatal("two registrations got the same KEY")
		}
	})
}

func TestRetransmissionFromAnotherSourceIsAnotherTransaction(t *testing.T) {
	d := startDaemon(t, server.Config{})
	srv := addrFor(t, d, "127.0.0.1")
	a, b := dialUDP(t, srv), dialUDP(t, srv)
	m := registerReq(newID())
	wantSuccess(t, a.roundTrip(m), wire.MethodRegister)
	// Same transaction ID, same ID, but another source address.
	wantError(t, b.roundTrip(m), wire.MethodRegister, wire.ReasonIDConflict)
}

func TestBindSuccessAndEveryErrorReason(t *testing.T) {
	d := startDaemon(t, server.Config{})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		c := dial(t, tr, srv)
		id, key := c.register()
		other := wire.TransportTCP
		if tr == wire.TransportTCP {
			other = wire.TransportUDP
		}
		wrongKey := key
		wrongKey[15] ^= 1
		wrongPort := netip.AddrPortFrom(c.local.Addr(), c.local.Port()+1)
		wrongIP := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), c.local.Port())
		for _, tc := range []struct {
			name string
			m    *wire.Message
			want wire.Reason
			ok   bool
		}{
			{"ok", bindReq(id, key, tr, c.local), 0, true},
			{"refresh", bindReq(id, key, tr, c.local), 0, true},
			{"unregistered ID", bindReq(newID(), key, tr, c.local), wire.ReasonNotRegistered, false},
			{"wrong KEY", bindReq(id, wrongKey, tr, c.local), wire.ReasonKeyMismatch, false},
			{"wrong port", bindReq(id, key, tr, wrongPort), wire.ReasonAddressMismatch, false},
			{"wrong IP", bindReq(id, key, tr, wrongIP), wire.ReasonAddressMismatch, false},
			{"wrong transport byte", bindReq(id, key, other, c.local), wire.ReasonAddressMismatch, false},
		} {
			r := c.roundTrip(tc.m)
			if tc.ok {
				wantSuccess(t, r, wire.MethodBind)
				if r.Len() != wire.HeaderSize {
					t.Errorf("%s: BIND success carries attributes", tc.name)
				}
			} else {
				wantError(t, r, wire.MethodBind, tc.want)
			}
		}
		// The refused BINDs bound nothing: QUERY shows the observed address
		// only.
		q := c.roundTrip(queryReq(id))
		wantSuccess(t, q, wire.MethodQuery)
		if q.NumAddresses != 1 || q.Addresses[0] != (wire.Address{Transport: tr, AddrPort: c.local}) {
			t.Fatalf("QUERY after refused BINDs: %v", q.Addresses[:q.NumAddresses])
		}
	})
}

func TestQueryReturnsExactlyTheObservedAddresses(t *testing.T) {
	d := startDaemon(t, server.Config{})
	for _, host := range loopbacks(t) {
		t.Run(host, func(t *testing.T) {
			srv := addrFor(t, d, host)
			u, tc := dialUDP(t, srv), dialTCP(t, srv)
			id, key := u.register()
			asker := dialUDP(t, srv)

			wantError(t, asker.roundTrip(queryReq(newID())), wire.MethodQuery, wire.ReasonNotRegistered)
			wantError(t, asker.roundTrip(queryReq(id)), wire.MethodQuery, wire.ReasonNotBound)

			tc.bind(id, key)
			r := asker.roundTrip(queryReq(id))
			wantSuccess(t, r, wire.MethodQuery)
			if r.NumAddresses != 1 || r.Addresses[0] != (wire.Address{Transport: wire.TransportTCP, AddrPort: tc.local}) {
				t.Fatalf("TCP bound only: got %v, want tcp/%v", r.Addresses[:r.NumAddresses], tc.local)
			}

			u.bind(id, key)
			r = asker.roundTrip(queryReq(id))
			wantSuccess(t, r, wire.MethodQuery)
			want := []wire.Address{{Transport: wire.TransportUDP, AddrPort: u.local}, {Transport: wire.TransportTCP, AddrPort: tc.local}}
			if r.NumAddresses != 2 || r.Addresses[0] != want[0] || r.Addresses[1] != want[1] {
				t.Fatalf("both bound: got %v, want %v (UDP first)", r.Addresses[:r.NumAddresses], want)
			}
			if r.Has(wire.AttrSecret) || r.Has(wire.AttrCandidate) {
				t.Fatal("a plain QUERY got SECRET or CANDIDATE")
			}

			// Over TCP too.
			r = dialTCP(t, srv).roundTrip(queryReq(id))
			wantSuccess(t, r, wire.MethodQuery)
			if r.NumAddresses != 2 || r.Addresses[0] != want[0] {
				t.Fatalf("QUERY over TCP: %v", r.Addresses[:r.NumAddresses])
			}
		})
	}
}

func TestIntroductionAnswersQuerierAndSendsIntroduceToTarget(t *testing.T) {
	d := startDaemon(t, server.Config{})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		target := dialUDP(t, srv)
		tid, tkey := target.register()
		target.bind(tid, tkey)

		querier := dial(t, tr, srv)
		qid, qkey := querier.register()
		querier.bind(qid, qkey)

		cands := []wire.Address{
			{Transport: wire.TransportUDP, AddrPort: netip.MustParseAddrPort("192.168.1.20:4000")},
			{Transport: wire.TransportUDP, AddrPort: netip.MustParseAddrPort("[fd00::20]:4000")},
		}
		r := querier.roundTrip(introReq(tid, qid, qkey, cands...))
		wantSuccess(t, r, wire.MethodQuery)
		if !r.Has(wire.AttrSecret) || r.Secret == (wire.Secret{}) {
			t.Fatal("introduction answer without SECRET")
		}
		if r.NumAddresses != 1 || r.Addresses[0] != (wire.Address{Transport: wire.TransportUDP, AddrPort: target.local}) {
			t.Fatalf("introduction answer addresses %v, want udp/%v", r.Addresses[:r.NumAddresses], target.local)
		}
		if r.Has(wire.AttrCandidate) {
			t.Fatal("the server sent CANDIDATEs to the querier; it keeps none")
		}

		// The target gets the INTRODUCE over its UDP binding.
		b := target.recv()
		var ind wire.Message
		if err := ind.Decode(b); err != nil {
			t.Fatal(err)
		}
		if err := ind.Check(); err != nil {
			t.Fatalf("INTRODUCE breaks the spec: %v", err)
		}
		if ind.Type != (wire.Type{Method: wire.MethodIntroduce, Class: wire.ClassIndication}) {
			t.Fatalf("target got %v, want INTRODUCE indication", ind.Type)
		}
		if ind.SourceID != qid || ind.Secret != r.Secret {
			t.Fatal("INTRODUCE has the wrong SOURCE_ID or SECRET")
		}
		if ind.NumAddresses != 1 || ind.Addresses[0] != (wire.Address{Transport: tr, AddrPort: querier.local}) {
			t.Fatalf("INTRODUCE addresses %v, want %v/%v", ind.Addresses[:ind.NumAddresses], tr, querier.local)
		}
		if ind.NumCandidates != 2 || ind.Candidates[0] != cands[0] || ind.Candidates[1] != cands[1] {
			t.Fatalf("INTRODUCE candidates %v, want %v", ind.Candidates[:ind.NumCandidates], cands)
		}
		if 2*len(introReq(tid, qid, qkey, cands...).AppendTo(nil)) < len(b) {
			t.Fatalf("INTRODUCE of %d bytes is over twice its request", len(b))
		}

		// A second introduction makes a new SECRET.
		r2 := querier.roundTrip(introReq(tid, qid, qkey))
		wantSuccess(t, r2, wire.MethodQuery)
		if r2.Secret == r.Secret {
			t.Fatal("two introductions share a SECRET")
		}
		target.recv()
	})
}

func TestIntroductionErrorReasons(t *testing.T) {
	d := startDaemon(t, server.Config{IntroBurst: 3, IntroRate: 0.001})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		c := dial(t, tr, srv)
		qid, qkey := c.register()
		tid, tkey := c.register()
		wrong := qkey
		wrong[0] ^= 0xff

		wantError(t, c.roundTrip(introReq(tid, newID(), qkey)), wire.MethodQuery, wire.ReasonNotRegistered)
		wantError(t, c.roundTrip(introReq(tid, qid, wrong)), wire.MethodQuery, wire.ReasonKeyMismatch)
		wantError(t, c.roundTrip(introReq(newID(), qid, qkey)), wire.MethodQuery, wire.ReasonNotRegistered)
		// Target registered but not bound.
		wantError(t, c.roundTrip(introReq(tid, qid, qkey)), wire.MethodQuery, wire.ReasonNotBound)
		// Target bound over UDP, querier not bound at all.
		tudp := dialUDP(t, srv)
		tudp.bind(tid, tkey)
		wantError(t, c.roundTrip(introReq(tid, qid, qkey)), wire.MethodQuery, wire.ReasonNotBound)
		// Querier bound: three introductions pass (IntroBurst), then 8.
		c.bind(qid, qkey)
		for range 3 {
			wantSuccess(t, c.roundTrip(introReq(tid, qid, qkey)), wire.MethodQuery)
			tudp.recv()
		}
		wantError(t, c.roundTrip(introReq(tid, qid, qkey)), wire.MethodQuery, wire.ReasonRateLimited)
	})
}

func TestUnservedMethodsAndBadAttributesGetErrors(t *testing.T) {
	d := startDaemon(t, server.Config{})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		c := dial(t, tr, srv)
		for _, tc := range []struct {
			name   string
			m      *wire.Message
			reason wire.Reason
		}{
			{"unknown method", req(0x00A), wire.ReasonUnknownMethod},
			{"PUNCH request", func() *wire.Message {
				m := req(wire.MethodPunch)
				m.SetSourceID(newID())
				m.SetMAC([wire.MACSize]byte{})
				return m
			}(), wire.ReasonUnknownMethod},
			{"INTRODUCE request", req(wire.MethodIntroduce), wire.ReasonUnknownMethod},
			{"REGISTER without ID", req(wire.MethodRegister), wire.ReasonInvalidAttributes},
			{"BIND without KEY", func() *wire.Message {
				m := req(wire.MethodBind)
				m.SetID(newID())
				return m
			}(), wire.ReasonInvalidAttributes},
			{"QUERY with CANDIDATE but no KEY", func() *wire.Message {
				m := queryReq(newID())
				m.AddCandidate(wire.Address{AddrPort: netip.MustParseAddrPort("10.0.0.1:1")})
				return m
			}(), wire.ReasonInvalidAttributes},
		} {
			wantError(t, c.roundTrip(tc.m), tc.m.Type.Method, tc.reason)
		}
		// A body the decoder refuses: unknown comprehension-required
		// attribute 0x0042 in a REGISTER.
		m := registerReq(newID())
		b := m.AppendTo(nil)
		b = append(b, 0x00, 0x42, 0x00, 0x01, 1, 2, 3, 4)
		b[3] += 8
		c.send(b)
		wantError(t, c.recvX(m.TransactionID), wire.MethodRegister, wire.ReasonInvalidAttributes)
	})
}

func TestInvalidHeadersIndicationsAndResponsesGetNoAnswer(t *testing.T) {
	d := startDaemon(t, server.Config{})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		c := dial(t, tr, srv)
		ind := req(wire.MethodQuery)
		ind.Type.Class = wire.ClassIndication
		resp := req(wire.MethodRegister)
		resp.Type.Class = wire.ClassSuccess
		resp.SetKey(wire.Key{})
		stunInd := stunRequest(false)
		stunInd[1] = 0x11 // Binding indication
		stunResp := stunRequest(false)
		stunResp[1] = 0x01
		stunResp[0] = 0x01 // Binding success
		badFP := stunRequest(true)
		badFP[len(badFP)-1] ^= 1
		for _, b := range [][]byte{
			ind.AppendTo(nil), resp.AppendTo(nil), stunInd, stunResp, badFP,
		} {
			c.send(b)
		}
		if tr == wire.TransportUDP {
			good := registerReq(newID()).AppendTo(nil)
			short := good[:len(good)-4] // header length says more than the datagram
			long := append(append([]byte(nil), good...), 0, 0, 0, 0)
			for _, b := range [][]byte{
				[]byte("hello"), make([]byte, 64), short, long,
				{0xc0, 0x02, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x43, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, // bad cookie
			} {
				c.send(b)
			}
		}
		c.expectSilence()
	})
}

func TestUDPRequestsFromManySocketsAreAllAnswered(t *testing.T) {
	// With SO_REUSEPORT several reader sockets share the port; each client
	// must get its answers whatever socket the kernel picks.
	d := startDaemon(t, server.Config{UDPReaders: 4})
	srv := addrFor(t, d, "127.0.0.1")
	for range 16 {
		c := dialUDP(t, srv)
		id, key := c.register()
		c.bind(id, key)
	}
}

func TestListenDefaultsToDualStackWildcard(t *testing.T) {
	d := startDaemon(t, server.Config{Listen: []string{":0"}})
	p := d.Addrs()[0].Port()
	for _, host := range loopbacks(t) {
		c := dialUDP(t, netip.AddrPortFrom(netip.MustParseAddr(host), p))
		c.register()
		dialTCP(t, netip.AddrPortFrom(netip.MustParseAddr(host), p)).register()
	}
}

func TestSTUNAttributesOtherThanFingerprintAreIgnored(t *testing.T) {
	// docs/PROTOCOL.md §12: comprehension-required attributes included, so a
	// CHANGE-REQUEST or ICE check still gets the mapped address.
	d := startDaemon(t, server.Config{})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		c := dial(t, tr, srv)
		for _, extra := range [][]stun.Setter{
			{stun.RawAttribute{Type: stun.AttrChangeRequest, Value: []byte{0, 0, 0, 6}}},
			{stun.RawAttribute{Type: stun.AttrResponsePort, Value: []byte{0x12, 0x34, 0, 0}}},
			{stun.NewUsername("a:b"), stun.RawAttribute{Type: stun.AttrPriority, Value: []byte{1, 2, 3, 4}}},
			{stun.NewSoftware("test"), stun.Fingerprint},
		} {
			req := stun.MustBuild(append([]stun.Setter{stun.TransactionID, stun.BindingRequest}, extra...)...)
			c.send(req.Raw)
			var m stun.Message
			m.Raw = c.recv()
			if err := m.Decode(); err != nil {
				t.Fatal(err)
			}
			if m.Type != stun.BindingSuccess || m.TransactionID != req.TransactionID {
				t.Fatalf("got %v, want Binding success", m.Type)
			}
			var xa stun.XORMappedAddress
			if err := xa.GetFrom(&m); err != nil {
				t.Fatal(err)
			}
			if got, _ := netip.AddrFromSlice(xa.IP); netip.AddrPortFrom(got.Unmap(), uint16(xa.Port)) != c.local {
				t.Fatalf("XOR-MAPPED-ADDRESS %v, want %v", xa, c.local)
			}
		}
	})
}

func TestRegistrationLimitsOverUDPAndTCP(t *testing.T) {
	for _, host := range loopbacks(t) {
		for _, tr := range transports {
			t.Run(tr.String()+"/"+host, func(t *testing.T) {
				// Per source IP: 2 per window.
				d := startDaemon(t, server.Config{RegisterPerIP: 2})
				c := dial(t, tr, addrFor(t, d, host))
				c.register()
				c.register()
				wantError(t, c.roundTrip(registerReq(newID())), wire.MethodRegister, wire.ReasonRegistrationLimit)

				// Global: 1 registration in all.
				g := startDaemon(t, server.Config{MaxRegistrations: 1})
				gc := dial(t, tr, addrFor(t, g, host))
				gc.register()
				wantError(t, gc.roundTrip(registerReq(newID())), wire.MethodRegister, wire.ReasonRegistrationLimit)
			})
		}
	}
}

// failingStore is a real bbolt store whose commits fail, as a full or
// broken disk would make them: the store is not under test here, the
// server's reaction to its failure is.
type failingStore struct {
	*bolt.Store
	fail atomic.Bool
}

func (s *failingStore) Register(id store.ID, key store.Key, now time.Time, done func(error)) {
	if s.fail.Load() {
		go done(errors.New("disk on fire"))
		return
	}
	s.Store.Register(id, key, now, done)
}

func TestStoreFailureGetsServerErrorAndIsNotCached(t *testing.T) {
	fs := &failingStore{Store: openStore(t, bolt.Options{})}
	d := startDaemon(t, server.Config{Store: fs})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		c := dial(t, tr, srv)
		fs.fail.Store(true)
		m := registerReq(newID())
		wantError(t, c.roundTrip(m), wire.MethodRegister, wire.ReasonServerError)
		// The failure is transient: a retransmission is tried again and,
		// the disk being back, succeeds.
		fs.fail.Store(false)
		wantSuccess(t, c.roundTrip(m), wire.MethodRegister)
	})
}

// TestCloseAnswersRegistrationsInFlight: Close finishes the commits under
// way and sends their answers before the sockets close, and every KEY
// answered is in the store afterwards.
func TestCloseAnswersRegistrationsInFlight(t *testing.T) {
	dir := t.TempDir()
	d, err := server.Start(server.Config{DataDir: dir, Listen: []string{"127.0.0.1:0"},
		Rate: 1e6, RegisterPerIP: 1e6, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	c := dialUDP(t, d.Addrs()[0])
	sent := map[wire.TransactionID]wire.ID{}
	for range 300 {
		m := registerReq(newID())
		sent[m.TransactionID] = m.ID
		c.send(m.AppendTo(nil))
	}
	answered := map[wire.ID]wire.Key{}
	collect := func(b []byte) {
		var r wire.Message
		if r.Decode(b) == nil && r.Type.Class == wire.ClassSuccess {
			answered[sent[r.TransactionID]] = r.Key
		}
	}
	// Close once the server is busy with them: the first answer is out.
	collect(c.recv())
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for {
		b, err := c.recvWithin(500 * time.Millisecond)
		if err != nil {
			break
		}
		collect(b)
	}
	st := openStoreAt(t, dir)
	for id, key := range answered {
		if k, ok := st.Lookup(id); !ok || k != key {
			t.Fatalf("answered KEY for %x not in the store after Close", id[:4])
		}
	}
	t.Logf("%d of 300 answered before Close, all durable", len(answered))
}
