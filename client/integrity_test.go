package client

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/integrity"
)

// These tests prove the client's side of docs/PROTOCOL.md §18: requests
// that need a KEY prove it instead of carrying it, and answers are accepted
// only when signed with it.

// TestKeyNeverTravels: BIND, introductions and their retransmissions carry
// TIMESTAMP and MAC, never the KEY's bytes.
func TestKeyNeverTravels(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newResponder()
		p := newPipe(r, Config{})
		defer p.close()
		self, peer := wire.ID{1}, wire.ID{2}
		key, err := p.c.Register(t.Context(), self)
		if err != nil {
			t.Fatal(err)
		}
		pkey, _ := p.c.Register(t.Context(), peer)
		r.set(func(r *responder) { r.dropRequests = 2 }) // force two retransmissions
		if err := p.c.Bind(t.Context(), self, key, wire.Address{AddrPort: p.src}); err != nil {
			t.Fatal(err)
		}
		if err := p.c.Bind(t.Context(), peer, pkey, wire.Address{AddrPort: p.src}); err != nil {
			t.Fatal(err)
		}
		if _, err := p.c.Introduce(t.Context(), self, key, peer, nil); err != nil {
			t.Fatal(err)
		}
		var stamps []uint64
		for _, q := range r.requests() {
			if q.method == wire.MethodRegister {
				continue
			}
			if bytes.Contains(q.raw, key[:]) || bytes.Contains(q.raw, pkey[:]) {
				t.Fatalf("%v request carries a KEY: % x", q.method, q.raw)
			}
			var m wire.Message
			if err := m.Decode(q.raw); err != nil || !m.HasIntegrity() {
				t.Fatalf("%v request not in the integrity form: %v", q.method, err)
			}
			if q.method == wire.MethodBind && m.ID == self {
				stamps = append(stamps, m.Timestamp)
				if !integrity.NewSigner().Verify(q.raw, key[:]) {
					t.Fatal("a retransmission's MAC does not verify")
				}
			}
		}
		if r.keyForm != 0 {
			t.Fatalf("%d requests in the KEY form", r.keyForm)
		}
		// Three transmissions (two lost), each re-stamped: 0, 0.5, 1.5 s.
		if len(stamps) != 3 || stamps[1]-stamps[0] != 500 || stamps[2]-stamps[1] != 1000 {
			t.Fatalf("BIND TIMESTAMPs %v, want three, 0.5 s and 1 s apart", stamps)
		}
	})
}

// TestForgedAnswersAreDropped: an answer whose MAC does not verify, a
// success without MAC, and an unsigned error with a reason ewfd only sends
// signed are all treated as no answer: the request retransmits, and gives
// up with an error matching ErrTimeout, ErrBadResponse and the cause.
func TestForgedAnswersAreDropped(t *testing.T) {
	notBound, mismatch := wire.ReasonNotBound, wire.ReasonAddressMismatch
	for _, c := range []struct {
		name  string
		knobs func(r *responder)
		why   error
	}{
		{"success with a byte of its MAC flipped", func(r *responder) { r.tamper = func(b []byte) { b[len(b)-1] ^= 1 } }, errBadMAC},
		{"signed error with its reason changed", func(r *responder) {
			r.force = &mismatch
			r.tamper = func(b []byte) { b[27] ^= 0x01 } // 5 → 4, ID conflict
		}, errBadMAC},
		{"success without MAC", func(r *responder) { r.unsigned = true }, errNoMAC},
		{"unsigned not-bound error", func(r *responder) { r.unsigned = true; r.force = &notBound }, errUnsignedReason},
	} {
		t.Run(c.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newResponder()
				p := newPipe(r, Config{MaxAttempts: 3})
				defer p.close()
				id := wire.ID{1}
				key, err := p.c.Register(t.Context(), id)
				if err != nil {
					t.Fatal(err)
				}
				r.set(c.knobs)
				err = p.c.Bind(t.Context(), id, key, wire.Address{AddrPort: p.src})
				if !errors.Is(err, ErrTimeout) || !errors.Is(err, ErrBadResponse) || !errors.Is(err, c.why) {
					t.Fatalf("Bind = %v, want a timeout matching ErrBadResponse and %v", err, c.why)
				}
				n := 0
				for _, q := range r.requests() {
					if q.method == wire.MethodBind {
						n++
					}
				}
				if n != 3 {
					t.Fatalf("%d BIND transmissions, want all 3: a forged answer must not end the transaction", n)
				}
			})
		})
	}
}

// TestErrorsSayWhetherTheyWereAuthenticated: errors the server signs
// (address mismatch) and those it cannot (KEY mismatch: it has no KEY the
// client would accept) are both delivered, and say which they are.
func TestErrorsSayWhetherTheyWereAuthenticated(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newResponder()
		p := newPipe(r, Config{})
		defer p.close()
		id := wire.ID{1}
		key, err := p.c.Register(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		var re *ReasonError
		other := wire.Address{AddrPort: netip.AddrPortFrom(p.src.Addr(), p.src.Port()+1)}
		err = p.c.Bind(t.Context(), id, key, other)
		if !errors.As(err, &re) || !errors.Is(err, ErrAddressMismatch) || !re.Authenticated {
			t.Fatalf("Bind from elsewhere = %v (%+v), want an authenticated address mismatch", err, re)
		}
		wrong := key
		wrong[0] ^= 1
		err = p.c.Bind(t.Context(), id, wrong, wire.Address{AddrPort: p.src})
		if !errors.As(err, &re) || !errors.Is(err, ErrKeyMismatch) || re.Authenticated {
			t.Fatalf("Bind with a wrong KEY = %v (%+v), want an unauthenticated KEY mismatch", err, re)
		}
	})
}

// TestClockOffsetIsLearnt: a client whose clock is two hours behind the
// server's is told the server's time in an authenticated stale error,
// adopts the offset and succeeds on the second try; later requests are
// stamped right the first time.
func TestClockOffsetIsLearnt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newResponder()
		r.skew = 2 * time.Hour
		p := newPipe(r, Config{})
		defer p.close()
		id := wire.ID{1}
		key, err := p.c.Register(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := p.c.Bind(t.Context(), id, key, wire.Address{AddrPort: p.src}); err != nil {
				t.Fatal(err)
			}
		}
		n := 0
		for _, q := range r.requests() {
			if q.method == wire.MethodBind {
				n++
			}
		}
		if n != 3 {
			t.Fatalf("%d BINDs for two Binds, want 3 (one refused as stale, once)", n)
		}
		if off := time.Duration(p.c.offset.Load()) * time.Millisecond; (off - 2*time.Hour).Abs() > time.Second {
			t.Fatalf("offset %v, want 2h", off)
		}
	})
}

// A forged stale error cannot move the clock: without a valid MAC it is
// not even accepted (TestForgedAnswersAreDropped covers the mechanism);
// here the responder's stale answers are unsigned.
func TestUnsignedStaleErrorDoesNotMoveTheClock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newResponder()
		r.skew = 2 * time.Hour
		p := newPipe(r, Config{MaxAttempts: 2})
		defer p.close()
		id := wire.ID{1}
		key, err := p.c.Register(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		r.set(func(r *responder) { r.unsigned = true })
		err = p.c.Bind(t.Context(), id, key, wire.Address{AddrPort: p.src})
		if !errors.Is(err, errUnsignedReason) || p.c.offset.Load() != 0 {
			t.Fatalf("Bind = %v, offset %d ms; want the unsigned stale error dropped and no offset", err, p.c.offset.Load())
		}
	})
}
