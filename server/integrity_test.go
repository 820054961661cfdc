package server_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/integrity"
)

// These tests prove docs/PROTOCOL.md §18 through the real listeners: the
// integrity form of BIND and introductions, the server's signed answers,
// and each refusal with its documented reason.

// signedBytes encodes m (which carries no KEY) with TIMESTAMP ts and a MAC
// keyed by key.
func signedBytes(m *wire.Message, key wire.Key, ts time.Time) []byte {
	m.SetTimestamp(uint64(ts.UnixMilli()))
	return integrity.NewSigner().Append(nil, m, key[:])
}

func bindSigned(id wire.ID, key wire.Key, tr wire.Transport, ap netip.AddrPort, ts time.Time) (*wire.Message, []byte) {
	m := req(wire.MethodBind)
	m.SetID(id)
	if err := m.AddAddress(wire.Address{Transport: tr, AddrPort: ap}); err != nil {
		panic(err)
	}
	return m, signedBytes(m, key, ts)
}

func introSigned(target, self wire.ID, key wire.Key, ts time.Time) (*wire.Message, []byte) {
	m := queryReq(target)
	m.SetSourceID(self)
	return m, signedBytes(m, key, ts)
}

// sendRaw sends b and returns the answer with b's transaction ID, decoded,
// and its raw bytes.
func (c *client) sendRaw(b []byte) (*wire.Message, []byte) {
	c.t.Helper()
	c.send(b)
	tx := wire.TransactionID(b[8:20])
	for {
		raw := c.recv()
		var r wire.Message
		if err := r.Decode(raw); err != nil {
			c.t.Fatalf("answer does not decode: %v (% x)", err, raw)
		}
		if r.TransactionID == tx {
			if err := r.Check(); err != nil {
				c.t.Fatalf("answer breaks the spec: %v", err)
			}
			return &r, raw
		}
	}
}

// wantSigned fails unless raw ends in a MAC keyed by key, and one that
// does not verify with any other key.
func wantSigned(t testing.TB, raw []byte, key wire.Key) {
	t.Helper()
	s := integrity.NewSigner()
	if !s.Verify(raw, key[:]) {
		t.Fatalf("answer is not signed with the KEY: % x", raw)
	}
	other := key
	other[0] ^= 1
	if s.Verify(raw, other[:]) {
		t.Fatal("answer verifies with another key")
	}
}

func wantUnsigned(t testing.TB, r *wire.Message) {
	t.Helper()
	if r.Has(wire.AttrMAC) {
		t.Fatalf("answer carries a MAC, want none (reason %v)", r.Reason)
	}
}

func TestIntegrityBindAndIntroductionAreAnsweredSigned(t *testing.T) {
	d := startDaemon(t, server.Config{})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		// The peer binds over UDP (introductions need it), in the
		// integrity form.
		pc := dialUDP(t, srv)
		pid, pkey := pc.register()
		_, b := bindSigned(pid, pkey, wire.TransportUDP, pc.local, time.Now())
		r, raw := pc.sendRaw(b)
		wantSuccess(t, r, wire.MethodBind)
		wantSigned(t, raw, pkey)

		c := dial(t, tr, srv)
		id, key := c.register()
		_, b = bindSigned(id, key, tr, c.local, time.Now())
		r, raw = c.sendRaw(b)
		wantSuccess(t, r, wire.MethodBind)
		wantSigned(t, raw, key)

		_, b = introSigned(pid, id, key, time.Now())
		r, raw = c.sendRaw(b)
		wantSuccess(t, r, wire.MethodQuery)
		wantSigned(t, raw, key)
		if !r.Has(wire.AttrSecret) {
			t.Fatal("introduction answered without SECRET")
		}
		if a, ok := r.Address(wire.TransportUDP); !ok || a != pc.local {
			t.Fatalf("peer address %v, want %v", a, pc.local)
		}
		// The peer hears of it, as with the KEY form.
		ind := pc.recv()
		var in wire.Message
		if err := in.Decode(ind); err != nil || in.Type.Method != wire.MethodIntroduce || in.SourceID != id || in.Secret != r.Secret {
			t.Fatalf("INTRODUCE: %v %+v", err, in.Type)
		}

		// An authenticated error is signed too: the address claimed is
		// not the one the server sees.
		wrong := netip.AddrPortFrom(c.local.Addr(), c.local.Port()^1)
		_, b = bindSigned(id, key, tr, wrong, time.Now())
		r, raw = c.sendRaw(b)
		wantError(t, r, wire.MethodBind, wire.ReasonAddressMismatch)
		wantSigned(t, raw, key)
	})
}

func TestIntegrityRefusalsHaveTheirReasons(t *testing.T) {
	d := startDaemon(t, server.Config{})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		c := dial(t, tr, srv)
		id, key := c.register()
		now := time.Now()

		t.Run("wrong KEY", func(t *testing.T) {
			wrongKey := key
			wrongKey[3] ^= 0x40
			_, b := bindSigned(id, wrongKey, tr, c.local, now)
			r, _ := c.sendRaw(b)
			wantError(t, r, wire.MethodBind, wire.ReasonKeyMismatch)
			wantUnsigned(t, r)
		})
		t.Run("flipped MAC byte", func(t *testing.T) {
			_, b := bindSigned(id, key, tr, c.local, now)
			b[len(b)-7] ^= 0x01
			r, _ := c.sendRaw(b)
			wantError(t, r, wire.MethodBind, wire.ReasonKeyMismatch)
			wantUnsigned(t, r)
		})
		t.Run("flipped byte under the MAC", func(t *testing.T) {
			_, b := bindSigned(id, key, tr, c.local, now)
			b[len(b)-40] ^= 0x01 // inside TIMESTAMP
			r, _ := c.sendRaw(b)
			wantError(t, r, wire.MethodBind, wire.ReasonKeyMismatch)
		})
		t.Run("unregistered ID", func(t *testing.T) {
			_, b := bindSigned(newID(), key, tr, c.local, now)
			r, _ := c.sendRaw(b)
			wantError(t, r, wire.MethodBind, wire.ReasonNotRegistered)
			wantUnsigned(t, r)
		})
		for _, skew := range []time.Duration{-31 * time.Second, 31 * time.Second, -time.Hour} {
			t.Run("stale "+skew.String(), func(t *testing.T) {
				_, b := bindSigned(id, key, tr, c.local, now.Add(skew))
				r, raw := c.sendRaw(b)
				wantError(t, r, wire.MethodBind, wire.ReasonStale)
				wantSigned(t, raw, key)
				// The server tells its clock, authenticated, so the
				// client can correct its offset.
				if got := time.UnixMilli(int64(r.Timestamp)); !r.Has(wire.AttrTimestamp) || got.Sub(time.Now()).Abs() > 5*time.Second {
					t.Fatalf("stale error TIMESTAMP %v (present %v), want about now", got, r.Has(wire.AttrTimestamp))
				}
			})
		}
		t.Run("within the window", func(t *testing.T) {
			_, b := bindSigned(id, key, tr, c.local, now.Add(-25*time.Second))
			r, _ := c.sendRaw(b)
			wantSuccess(t, r, wire.MethodBind)
		})

		// One good request, then its copies.
		_, good := bindSigned(id, key, tr, c.local, now)
		r, _ := c.sendRaw(good)
		wantSuccess(t, r, wire.MethodBind)
		t.Run("retransmission from the same source", func(t *testing.T) {
			r, raw := c.sendRaw(good)
			wantSuccess(t, r, wire.MethodBind)
			wantSigned(t, raw, key)
		})
		t.Run("replay from another source", func(t *testing.T) {
			eve := dial(t, tr, srv)
			r, raw := eve.sendRaw(good)
			wantError(t, r, wire.MethodBind, wire.ReasonStale)
			wantSigned(t, raw, key)
		})
		t.Run("replay with a new transaction ID and the old TIMESTAMP", func(t *testing.T) {
			// Without the KEY nobody can re-sign; with it, an old
			// TIMESTAMP is still refused.
			m, _ := bindSigned(id, key, tr, c.local, now)
			m.TransactionID = newTx()
			b := signedBytes(m, key, now.Add(-40*time.Second))
			r, _ := c.sendRaw(b)
			wantError(t, r, wire.MethodBind, wire.ReasonStale)
		})
	})
}

// TestReplayedIntroductionIsRefused: the harmful replay. An eavesdropper
// who resends someone's introduction from its own address would get a
// fresh SECRET for that pair; the replay cache refuses it.
func TestReplayedIntroductionIsRefused(t *testing.T) {
	d := startDaemon(t, server.Config{})
	srv := addrFor(t, d, "127.0.0.1")
	pc := dialUDP(t, srv)
	pid, pkey := pc.register()
	pc.bind(pid, pkey)
	c := dialUDP(t, srv)
	id, key := c.register()
	c.bind(id, key)
	_, b := introSigned(pid, id, key, time.Now())
	r, _ := c.sendRaw(b)
	wantSuccess(t, r, wire.MethodQuery)
	eve := dialUDP(t, srv)
	r, raw := eve.sendRaw(b)
	wantError(t, r, wire.MethodQuery, wire.ReasonStale)
	wantSigned(t, raw, key)
	if r.Has(wire.AttrSecret) {
		t.Fatal("the replayer got a SECRET")
	}
	if n := requestsTotal(t, d, "introduction", "replayed"); n != 1 {
		t.Fatalf(`ewfd_requests_total{kind="introduction",outcome="replayed"} = %v, want 1`, n)
	}
}

func TestRequireIntegrityRefusesTheKeyForm(t *testing.T) {
	d := startDaemon(t, server.Config{RequireIntegrity: true})
	forEach(t, d, func(t *testing.T, srv netip.AddrPort, tr wire.Transport) {
		pc := dialUDP(t, srv)
		pid, pkey := pc.register() // REGISTER needs no proof
		_, b := bindSigned(pid, pkey, wire.TransportUDP, pc.local, time.Now())
		r, _ := pc.sendRaw(b)
		wantSuccess(t, r, wire.MethodBind)

		c := dial(t, tr, srv)
		id, key := c.register()
		r = c.roundTrip(bindReq(id, key, tr, c.local))
		wantError(t, r, wire.MethodBind, wire.ReasonIntegrityRequired)
		wantUnsigned(t, r)
		_, b = bindSigned(id, key, tr, c.local, time.Now())
		r, _ = c.sendRaw(b)
		wantSuccess(t, r, wire.MethodBind)

		r = c.roundTrip(introReq(pid, id, key))
		wantError(t, r, wire.MethodQuery, wire.ReasonIntegrityRequired)
		_, b = introSigned(pid, id, key, time.Now())
		r, _ = c.sendRaw(b)
		wantSuccess(t, r, wire.MethodQuery)
		pc.recv() // the INTRODUCE

		// A plain lookup proves nothing and needs nothing.
		r = c.roundTrip(queryReq(pid))
		wantSuccess(t, r, wire.MethodQuery)
	})
	if n := requestsTotal(t, d, "bind", "integrity_required"); n < 2 {
		t.Fatalf(`ewfd_requests_total{kind="bind",outcome="integrity_required"} = %v`, n)
	}
}

func requestsTotal(t testing.TB, d *server.Daemon, kind, outcome string) float64 {
	t.Helper()
	mfs, err := d.Server().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ewfd_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelIs(m, "kind", kind) && labelIs(m, "outcome", outcome) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
