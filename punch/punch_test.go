package punch

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"io"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ewf-project/ewf/wire"
)

var (
	idA       = idOf("a")
	idB       = idOf("b")
	peerAddr  = netip.MustParseAddrPort("203.0.113.2:40000")
	peerLocal = netip.MustParseAddrPort("10.1.0.2:5000")
	t0        = epoch
)

// newA returns a Machine of side A punching to B at peerAddr and peerLocal.
func newA(t testing.TB, mod func(*Config)) *Machine {
	t.Helper()
	cfg := Config{Self: idA, Peer: idB, Secret: testSecret,
		Candidates: []netip.AddrPort{peerAddr, peerLocal}}
	if mod != nil {
		mod(&cfg)
	}
	m, err := New(cfg, t0)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// build encodes a PUNCH independently of the package: it computes the MAC
// over the bytes before the last 36 (the MAC attribute) by hand, a second
// opinion on wire.MACInput and the Machine's own encoder.
func build(class wire.Class, tx wire.TransactionID, src wire.ID, secret wire.Secret) []byte {
	var msg wire.Message
	msg.Type = wire.Type{Method: wire.MethodPunch, Class: class}
	msg.TransactionID = tx
	msg.SetSourceID(src)
	msg.SetMAC([wire.MACSize]byte{})
	b := msg.AppendTo(nil)
	h := hmac.New(sha256.New, secret[:])
	h.Write(b[:len(b)-4-wire.MACSize])
	copy(b[len(b)-wire.MACSize:], h.Sum(nil))
	return b
}

func decode(t testing.TB, b []byte) *wire.Message {
	t.Helper()
	msg := new(wire.Message)
	if err := msg.Decode(b); err != nil {
		t.Fatalf("decode %x: %v", b, err)
	}
	return msg
}

// fromB is a valid message from B: the peer's own.
func fromB(t testing.TB, class wire.Class, tx wire.TransactionID) *wire.Message {
	return decode(t, build(class, tx, idB, testSecret))
}

func txid(b byte) wire.TransactionID {
	var tx wire.TransactionID
	for i := range tx {
		tx[i] = b + byte(i)
	}
	return tx
}

// requestTx returns the transaction ID of the first request in pkts to to.
func requestTx(t testing.TB, pkts []Packet, to netip.AddrPort) wire.TransactionID {
	t.Helper()
	for _, p := range pkts {
		msg := decode(t, p.Data)
		if p.To == to && msg.Type.Class == wire.ClassRequest {
			return msg.TransactionID
		}
	}
	t.Fatalf("no request to %v in %d packets", to, len(pkts))
	return wire.TransactionID{}
}

// TestMessagesAreAuthenticatedPunches checks what a Machine sends against
// the spec, through an independent MAC computation: requests to every
// candidate with SOURCE_ID = self and a MAC a peer verifies.
func TestMessagesAreAuthenticatedPunches(t *testing.T) {
	m := newA(t, nil)
	pkts := m.Tick(t0)
	if len(pkts) != 2 || pkts[0].To != peerAddr || pkts[1].To != peerLocal {
		t.Fatalf("first Tick sent %v, want one request to each candidate in order", pkts)
	}
	txs := map[wire.TransactionID]bool{}
	for _, p := range pkts {
		if len(p.Data) != packetSize || wire.Classify(p.Data) != wire.KindX {
			t.Fatalf("packet of %d bytes, kind %v", len(p.Data), wire.Classify(p.Data))
		}
		msg := decode(t, p.Data)
		if err := msg.Check(); err != nil {
			t.Fatalf("sent message fails Check: %v", err)
		}
		if msg.Type != (wire.Type{Method: wire.MethodPunch, Class: wire.ClassRequest}) || msg.SourceID != idA {
			t.Fatalf("sent %v from %v", msg.Type, msg.SourceID)
		}
		if want := build(wire.ClassRequest, msg.TransactionID, idA, testSecret); !bytes.Equal(p.Data, want) {
			t.Fatalf("sent\n%x\nwant (independent encoding)\n%x", p.Data, want)
		}
		if !Verify(msg, idA, testSecret) {
			t.Fatal("the peer's Verify rejects our request")
		}
		txs[msg.TransactionID] = true
	}
	if len(txs) != 2 {
		t.Fatal("two requests share a transaction ID")
	}
}

// TestForgedPunchIsIgnored is the done-when: a forged or misrouted
// punch is ignored, counted by reason, sends nothing, learns nothing and
// never brings the Machine up.
func TestForgedPunchIsIgnored(t *testing.T) {
	stranger := netip.MustParseAddrPort("198.18.0.66:6666")
	otherSecret := testSecret
	otherSecret[0] ^= 1
	tests := []struct {
		name   string
		msg    func(t *testing.T, m *Machine, sent []Packet) *wire.Message
		reason func(Stats) uint64
		// authentic: SOURCE_ID and MAC are genuine (Verify says yes),
		// only the transaction is wrong.
		authentic bool
	}{{
		name: "request with a flipped MAC bit",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			b := build(wire.ClassRequest, txid(1), idB, testSecret)
			b[len(b)-1] ^= 0x80
			return decode(t, b)
		},
		reason: func(s Stats) uint64 { return s.BadMAC },
	}, {
		name: "success response to our request with a flipped MAC bit",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			b := build(wire.ClassSuccess, requestTx(t, sent, peerAddr), idB, testSecret)
			b[len(b)-wire.MACSize] ^= 1
			return decode(t, b)
		},
		reason: func(s Stats) uint64 { return s.BadMAC },
	}, {
		name: "success response keyed by another secret",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			return decode(t, build(wire.ClassSuccess, requestTx(t, sent, peerAddr), idB, otherSecret))
		},
		reason: func(s Stats) uint64 { return s.BadMAC },
	}, {
		name: "request keyed by another secret",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			return decode(t, build(wire.ClassRequest, txid(1), idB, otherSecret))
		},
		reason: func(s Stats) uint64 { return s.BadMAC },
	}, {
		name: "valid request with the class rewritten to success",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			b := build(wire.ClassRequest, requestTx(t, sent, peerAddr), idB, testSecret)
			v := wire.Type{Method: wire.MethodPunch, Class: wire.ClassSuccess}.Value()
			b[0], b[1] = byte(v>>8), byte(v)
			return decode(t, b)
		},
		reason: func(s Stats) uint64 { return s.BadMAC },
	}, {
		name: "valid success response with the transaction ID rewritten to ours",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			b := build(wire.ClassSuccess, txid(1), idB, testSecret)
			tx := requestTx(t, sent, peerAddr)
			copy(b[8:20], tx[:])
			return decode(t, b)
		},
		reason: func(s Stats) uint64 { return s.BadMAC },
	}, {
		name: "valid MAC but SOURCE_ID of a stranger",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			return decode(t, build(wire.ClassSuccess, requestTx(t, sent, peerAddr), idOf("mallory"), testSecret))
		},
		reason: func(s Stats) uint64 { return s.WrongPeer },
	}, {
		name: "our own request reflected back at us",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			return decode(t, slices.Clone(sent[0].Data))
		},
		reason: func(s Stats) uint64 { return s.WrongPeer },
	}, {
		name: "valid success response to a transaction ID we never used",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			return decode(t, build(wire.ClassSuccess, txid(7), idB, testSecret))
		},
		reason:    func(s Stats) uint64 { return s.UnknownTxID },
		authentic: true,
	}, {
		name: "valid success response with our prefix but a sequence number never sent",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			tx := requestTx(t, sent, peerAddr)
			tx[11] += 100
			return decode(t, build(wire.ClassSuccess, tx, idB, testSecret))
		},
		reason:    func(s Stats) uint64 { return s.UnknownTxID },
		authentic: true,
	}, {
		name: "valid success response from an earlier attempt (same peer and secret)",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			old := newA(t, nil)
			return decode(t, build(wire.ClassSuccess, requestTx(t, old.Tick(t0), peerAddr), idB, testSecret))
		},
		reason:    func(s Stats) uint64 { return s.UnknownTxID },
		authentic: true,
	}, {
		name: "PUNCH error response",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			var msg wire.Message
			msg.Type = wire.Type{Method: wire.MethodPunch, Class: wire.ClassError}
			msg.TransactionID = requestTx(t, sent, peerAddr)
			msg.SetReason(wire.ReasonUnknown)
			return decode(t, msg.AppendTo(nil))
		},
		reason: func(s Stats) uint64 { return s.Malformed },
	}, {
		name: "not a PUNCH",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			var msg wire.Message
			msg.Type = wire.Type{Method: wire.MethodBind, Class: wire.ClassSuccess}
			msg.TransactionID = requestTx(t, sent, peerAddr)
			return decode(t, msg.AppendTo(nil))
		},
		reason: func(s Stats) uint64 { return s.Malformed },
	}, {
		name: "hand-built message with a correct MAC field but no Raw bytes",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			msg := fromB(t, wire.ClassSuccess, requestTx(t, sent, peerAddr))
			msg.Raw = nil
			return msg
		},
		reason: func(s Stats) uint64 { return s.Malformed },
	}, {
		name: "decoded message whose fields no longer match Raw",
		msg: func(t *testing.T, m *Machine, sent []Packet) *wire.Message {
			msg := fromB(t, wire.ClassSuccess, txid(9))
			msg.TransactionID = requestTx(t, sent, peerAddr)
			return msg
		},
		reason: func(s Stats) uint64 { return s.Malformed },
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newA(t, nil)
			sent := clonePackets(m.Tick(t0))
			msg := tt.msg(t, m, sent)
			if m.Verify(msg) != tt.authentic {
				t.Errorf("Machine.Verify = %v, want %v", m.Verify(msg), tt.authentic)
			}
			if out := m.Receive(msg, stranger, t0.Add(ms)); out != nil {
				t.Errorf("Receive answered with %d packets", len(out))
			}
			st := m.Stats()
			if tt.reason(st) != 1 || st.Ignored != 1 || st.Received != 0 {
				t.Errorf("stats %+v: want exactly this reason counted once", st)
			}
			if _, _, ok := m.Path(); ok || m.State() != Punching {
				t.Errorf("state %v after a forged punch", m.State())
			}
			if got := m.Candidates(nil); len(got) != 2 {
				t.Errorf("candidates %v: a forged punch planted an address", got)
			}
			if !m.LastHeard().IsZero() {
				t.Error("LastHeard moved")
			}
			// The forgery did not spoil the real exchange.
			tx := requestTx(t, sent, peerAddr)
			m.Receive(fromB(t, wire.ClassSuccess, tx), peerAddr, t0.Add(2*ms))
			if m.State() != Connected {
				t.Errorf("genuine response after the forgery: state %v", m.State())
			}
		})
	}
}

// TestReplayedResponseIsIgnored: a success response counts once; the same
// response again (a duplicate or a replay) is counted as Replayed.
func TestReplayedResponseIsIgnored(t *testing.T) {
	m := newA(t, nil)
	tx := requestTx(t, m.Tick(t0), peerAddr)
	resp := build(wire.ClassSuccess, tx, idB, testSecret)
	m.Receive(decode(t, resp), peerAddr, t0.Add(30*ms))
	if m.State() != Connected {
		t.Fatalf("state %v", m.State())
	}
	other := netip.MustParseAddrPort("198.18.0.66:6666")
	if out := m.Receive(decode(t, resp), other, t0.Add(40*ms)); out != nil {
		t.Error("a replayed response was answered")
	}
	if addr, rtt, _ := m.Path(); addr != peerAddr || rtt != 30*ms {
		t.Errorf("path %v rtt %v changed by a replay", addr, rtt)
	}
	if st := m.Stats(); st.Replayed != 1 || st.Received != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestReplayedRequestFromElsewhereIsIgnored: someone who captured a valid
// request and replays it from another address must not plant a candidate
// or make us send there; the same request again from where it came is a
// duplicate and is answered again.
func TestReplayedRequestFromElsewhereIsIgnored(t *testing.T) {
	m := newA(t, nil)
	m.Tick(t0)
	req := build(wire.ClassRequest, txid(1), idB, testSecret)
	if out := m.Receive(decode(t, req), peerAddr, t0.Add(ms)); len(out) == 0 {
		t.Fatal("the genuine request was not answered")
	}
	attacker := netip.MustParseAddrPort("198.18.0.66:6666")
	if out := m.Receive(decode(t, req), attacker, t0.Add(2*ms)); out != nil {
		t.Errorf("replay from %v answered: %v", attacker, out)
	}
	if slices.Contains(m.Candidates(nil), attacker) {
		t.Error("the replay planted a candidate")
	}
	out := m.Receive(decode(t, req), peerAddr, t0.Add(3*ms))
	if len(out) != 1 || out[0].To != peerAddr || decode(t, out[0].Data).TransactionID != txid(1) {
		t.Errorf("duplicate from the same address: got %v, want the response again", out)
	}
	if st := m.Stats(); st.Replayed != 1 || st.Received != 2 {
		t.Errorf("stats %+v", st)
	}
}

// TestRequestBeforeFirstTick: introduced after the peer, a Machine answers
// a request that arrives before it has sent anything, at once, and probes
// back.
func TestRequestBeforeFirstTick(t *testing.T) {
	m := newA(t, nil)
	out := m.Receive(fromB(t, wire.ClassRequest, txid(1)), peerAddr, t0)
	if len(out) != 2 {
		t.Fatalf("got %d packets, want a response and a triggered request", len(out))
	}
	resp, req := decode(t, out[0].Data), decode(t, out[1].Data)
	if out[0].To != peerAddr || resp.Type.Class != wire.ClassSuccess || resp.TransactionID != txid(1) ||
		resp.SourceID != idA || !Verify(resp, idA, testSecret) {
		t.Errorf("response %v to %v: want a verified success with the request's transaction ID", resp.Type, out[0].To)
	}
	if out[1].To != peerAddr || req.Type.Class != wire.ClassRequest || !Verify(req, idA, testSecret) {
		t.Errorf("second packet %v to %v: want a request to the peer", req.Type, out[1].To)
	}
	// The triggered request replaced the first scheduled one to that
	// address; the other candidate is still due at once.
	pkts := m.Tick(t0)
	if len(pkts) != 1 || pkts[0].To != peerLocal {
		t.Errorf("Tick sent %v, want only the untouched candidate", pkts)
	}
}

// TestConnectedStillAnswers: the peer may not have its path up when ours
// is; a Connected Machine keeps answering its requests (from any address)
// but sends nothing of its own.
func TestConnectedStillAnswers(t *testing.T) {
	m := newA(t, nil)
	tx := requestTx(t, m.Tick(t0), peerAddr)
	m.Receive(fromB(t, wire.ClassSuccess, tx), peerAddr, t0.Add(20*ms))
	if m.State() != Connected || !m.Next().IsZero() {
		t.Fatalf("state %v next %v", m.State(), m.Next())
	}
	newPort := netip.MustParseAddrPort("203.0.113.2:40007")
	for i, from := range []netip.AddrPort{peerAddr, newPort} {
		out := m.Receive(fromB(t, wire.ClassRequest, txid(byte(10*i))), from, t0.Add(30*ms))
		if len(out) != 1 || out[0].To != from || decode(t, out[0].Data).Type.Class != wire.ClassSuccess {
			t.Errorf("request from %v: got %v, want just a response", from, out)
		}
	}
	if pkts := m.Tick(t0.Add(time.Second)); len(pkts) != 0 {
		t.Errorf("Tick after Connected sent %d packets", len(pkts))
	}
	if addr, rtt, ok := m.Path(); !ok || addr != peerAddr || rtt != 20*ms {
		t.Errorf("path %v %v %v", addr, rtt, ok)
	}
	if slices.Contains(m.Candidates(nil), newPort) {
		t.Error("learned a candidate after Connected")
	}
}

// TestPeerReflexive: a valid request from an address the peer never
// advertised is answered there, and that address becomes a candidate with
// its own schedule, starting with a triggered request.
func TestPeerReflexive(t *testing.T) {
	m := newA(t, nil)
	m.Tick(t0)
	prflx := netip.MustParseAddrPort("[2001:db8::9]:7000")
	// Packet data is only valid until the next call: keep a copy.
	out := clonePackets(m.Receive(fromB(t, wire.ClassRequest, txid(1)), prflx, t0.Add(5*ms)))
	if len(out) != 2 || out[0].To != prflx || out[1].To != prflx {
		t.Fatalf("got %v, want a response and a triggered request to %v", out, prflx)
	}
	if got := m.Candidates(nil); len(got) != 3 || got[2] != prflx {
		t.Fatalf("candidates %v", got)
	}
	// Its fast phase starts when it was learned: the next request to it
	// is due one Interval after the triggered one.
	if next := m.Next(); next != t0.Add(DefaultInterval) {
		t.Errorf("next %v", next.Sub(t0))
	}
	tick := m.Tick(t0.Add(5*ms + DefaultInterval))
	if !slices.ContainsFunc(tick, func(p Packet) bool { return p.To == prflx }) {
		t.Errorf("no scheduled request to the peer-reflexive candidate: %v", tick)
	}
	// A success response from it brings the path up there.
	tx := requestTx(t, out, prflx)
	m.Receive(fromB(t, wire.ClassSuccess, tx), prflx, t0.Add(40*ms))
	if addr, rtt, ok := m.Path(); !ok || addr != prflx || rtt != 35*ms {
		t.Errorf("path %v rtt %v ok %v", addr, rtt, ok)
	}
	if st := m.Stats(); st.Reflexive != 1 || st.Triggered != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestTriggeredRequestsDoNotDoubleTheRate: a peer that keeps sending only
// triggers requests when we have not just sent to it.
func TestTriggeredRequestsDoNotDoubleTheRate(t *testing.T) {
	m := newA(t, nil)
	m.Tick(t0)
	// First request from peerAddr: triggered although we sent 1 ms ago.
	if out := m.Receive(fromB(t, wire.ClassRequest, txid(1)), peerAddr, t0.Add(ms)); len(out) != 2 {
		t.Fatalf("first request: %d packets, want response + triggered", len(out))
	}
	// 5 ms later: just sent there, answer only.
	if out := m.Receive(fromB(t, wire.ClassRequest, txid(2)), peerAddr, t0.Add(6*ms)); len(out) != 1 {
		t.Fatalf("second request: %d packets, want the response only", len(out))
	}
	// Half an interval after our last request: triggered again.
	if out := m.Receive(fromB(t, wire.ClassRequest, txid(3)), peerAddr, t0.Add(ms+DefaultInterval/2)); len(out) != 2 {
		t.Fatalf("third request: %d packets, want response + triggered", len(out))
	}
}

// TestBoundedUnderFlood: candidates are capped, and a flood of forged
// packets leaves no state behind.
func TestBoundedUnderFlood(t *testing.T) {
	m := newA(t, nil)
	m.Tick(t0)
	for i := range 100 {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), 1000)
		if out := m.Receive(fromB(t, wire.ClassRequest, txid(byte(i))), from, t0.Add(ms)); len(out) == 0 {
			t.Fatalf("valid request %d not answered", i)
		}
	}
	st := m.Stats()
	if n := len(m.Candidates(nil)); n != MaxCandidates {
		t.Errorf("%d candidates, want the cap %d", n, MaxCandidates)
	}
	if st.Reflexive != MaxCandidates-2 || st.ReflexiveDropped != 100-(MaxCandidates-2) || st.Responses != 100 {
		t.Errorf("stats %+v", st)
	}
	if pkts := m.Tick(t0.Add(time.Second)); len(pkts) > MaxCandidates {
		t.Errorf("Tick sent %d packets", len(pkts))
	}

	f := newA(t, nil)
	f.Tick(t0)
	var tx wire.TransactionID
	for i := range 10000 {
		tx[0], tx[1] = byte(i), byte(i>>8)
		b := build(wire.ClassRequest, tx, idB, testSecret)
		b[len(b)-1] ^= 1
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 1000)
		if f.Receive(decode(t, b), from, t0.Add(ms)) != nil {
			t.Fatal("forged request answered")
		}
	}
	if st := f.Stats(); st.BadMAC != 10000 || st.Ignored != 10000 {
		t.Errorf("stats %+v", st)
	}
	if f.nseen != 0 || len(f.Candidates(nil)) != 2 {
		t.Errorf("forged flood left state: %d seen, candidates %v", f.nseen, f.Candidates(nil))
	}
}

// TestOutstandingWindow: a response to a request older than the ring is an
// unknown transaction; one inside it is accepted with the right RTT.
func TestOutstandingWindow(t *testing.T) {
	m := newA(t, func(c *Config) { c.Candidates, c.Timeout = c.Candidates[:1], time.Hour })
	first := requestTx(t, m.Tick(t0), peerAddr)
	var last wire.TransactionID
	now := t0
	for range OutstandingWindow {
		now = m.Next()
		last = requestTx(t, m.Tick(now), peerAddr)
	}
	m.Receive(fromB(t, wire.ClassSuccess, first), peerAddr, now)
	if st := m.Stats(); st.UnknownTxID != 1 || m.State() != Punching {
		t.Fatalf("response to an evicted request: stats %+v state %v", st, m.State())
	}
	m.Receive(fromB(t, wire.ClassSuccess, last), peerAddr, now.Add(42*ms))
	if _, rtt, ok := m.Path(); !ok || rtt != 42*ms {
		t.Errorf("rtt %v ok %v", rtt, ok)
	}
}

func TestRTT(t *testing.T) {
	tests := []struct {
		name    string
		respond time.Duration // when the response arrives
		sentAt  time.Duration // which request it answers
		want    time.Duration
	}{
		{"answer to the first request", 137 * ms, 0, 137 * ms},
		{"answer to a later request", 160 * ms, 150 * ms, 10 * ms},
		{"clock stepped back: clamped", 100 * ms, 150 * ms, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newA(t, func(c *Config) { c.Candidates = c.Candidates[:1] })
			var tx wire.TransactionID
			for now := t0; !now.After(t0.Add(tt.sentAt)); now = m.Next() {
				if pkts := m.Tick(now); len(pkts) > 0 && now.Sub(t0) == tt.sentAt {
					tx = requestTx(t, pkts, peerAddr)
				}
			}
			m.Receive(fromB(t, wire.ClassSuccess, tx), peerAddr, t0.Add(tt.respond))
			if _, rtt, ok := m.Path(); !ok || rtt != tt.want {
				t.Errorf("rtt %v ok %v, want %v", rtt, ok, tt.want)
			}
		})
	}
}

// schedule drives m alone (nothing answers) and returns the times of its
// requests to each candidate, and when it failed.
func schedule(t *testing.T, m *Machine) (sends []time.Duration, failed time.Duration) {
	t.Helper()
	for i := 0; m.State() == Punching; i++ {
		if i > 10000 {
			t.Fatal("schedule does not end")
		}
		now := m.Next()
		for _, p := range m.Tick(now) {
			if p.To == peerAddr {
				sends = append(sends, now.Sub(t0))
			}
		}
		if m.State() == Failed {
			failed = now.Sub(t0)
		}
	}
	return sends, failed
}

func TestSchedule(t *testing.T) {
	// seq returns from, from+step, … up to and including to.
	seq := func(from, to, step time.Duration) []time.Duration {
		var s []time.Duration
		for d := from; d <= to; d += step {
			s = append(s, d)
		}
		return s
	}
	tests := []struct {
		name string
		cfg  func(*Config)
		want []time.Duration
		fail time.Duration
	}{{
		name: "defaults: 25 ms for 500 ms, then doubling to 500 ms, until 10 s",
		want: slices.Concat(
			seq(0, 500*ms, 25*ms),
			[]time.Duration{550 * ms, 650 * ms, 850 * ms, 1250 * ms},
			seq(1750*ms, 9750*ms, 500*ms)),
		fail: 10 * time.Second,
	}, {
		name: "custom: 40 ms for 200 ms, ×1.5 to 300 ms, 2 s timeout",
		cfg: func(c *Config) {
			c.Interval, c.FastPeriod, c.Backoff, c.MaxInterval, c.Timeout = 40*ms, 200*ms, 1.5, 300*ms, 2*time.Second
		},
		// 0..200 every 40; then gaps 60, 90, 135, 202.5, 300, 300, …
		want: slices.Concat(
			seq(0, 200*ms, 40*ms),
			[]time.Duration{260 * ms, 350 * ms, 485 * ms, 687500 * time.Microsecond},
			seq(987500*time.Microsecond, 1887500*time.Microsecond, 300*ms)),
		fail: 2 * time.Second,
	}, {
		name: "Backoff 1: a constant interval",
		cfg: func(c *Config) {
			c.Interval, c.Backoff, c.Timeout = 100*ms, 1, time.Second
		},
		want: seq(0, 900*ms, 100*ms),
		fail: time.Second,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newA(t, tt.cfg)
			got, failed := schedule(t, m)
			if !slices.Equal(got, tt.want) {
				t.Errorf("requests at\n%v\nwant\n%v", got, tt.want)
			}
			if failed != tt.fail {
				t.Errorf("failed at %v, want %v", failed, tt.fail)
			}
			st := m.Stats()
			if st.Requests != uint64(2*len(tt.want)) || st.Sent != st.Requests {
				t.Errorf("stats %+v, want %d requests", st, 2*len(tt.want))
			}
			if !m.Next().IsZero() || m.Tick(t0.Add(time.Hour)) != nil {
				t.Error("a Failed Machine still schedules or sends")
			}
		})
	}
}

// TestTickLate: a Tick long overdue sends one request per candidate, not
// the missed ones, and the schedule continues from there.
func TestTickLate(t *testing.T) {
	m := newA(t, nil)
	m.Tick(t0)
	late := t0.Add(3 * time.Second)
	if pkts := m.Tick(late); len(pkts) != 2 {
		t.Fatalf("late Tick sent %d packets, want one per candidate", len(pkts))
	}
	if next := m.Next(); !next.After(late) {
		t.Errorf("next %v is not after the late Tick", next.Sub(t0))
	}
}

// TestFailed: at Timeout the Machine fails, whichever call comes first, and
// then ignores everything, valid or not.
func TestFailed(t *testing.T) {
	for _, first := range []string{"Tick", "Receive"} {
		t.Run(first, func(t *testing.T) {
			m := newA(t, func(c *Config) { c.Timeout = time.Second })
			tx := requestTx(t, m.Tick(t0), peerAddr)
			if m.Next() != t0.Add(DefaultInterval) {
				t.Fatalf("next %v", m.Next())
			}
			deadline := t0.Add(time.Second)
			if first == "Tick" {
				m.Tick(deadline)
			}
			// A response arriving at the deadline is too late.
			if out := m.Receive(fromB(t, wire.ClassSuccess, tx), peerAddr, deadline); out != nil {
				t.Error("answered")
			}
			if out := m.Receive(fromB(t, wire.ClassRequest, txid(1)), peerAddr, deadline); out != nil {
				t.Error("answered a request after failing")
			}
			if st := m.Stats(); m.State() != Failed || st.Late != 2 || st.Received != 0 {
				t.Errorf("state %v stats %+v", m.State(), st)
			}
			if _, _, ok := m.Path(); ok {
				t.Error("path after failing")
			}
		})
	}
}

func TestKeepalive(t *testing.T) {
	a := newA(t, nil)
	aAddr := netip.MustParseAddrPort("192.0.2.1:4000")
	b, err := New(Config{Self: idB, Peer: idA, Secret: testSecret,
		Candidates: []netip.AddrPort{aAddr}}, t0)
	if err != nil {
		t.Fatal(err)
	}
	// Keepalives flow on a path that is up: b is Connected, so it has no
	// deadline any more.
	tx := requestTx(t, b.Tick(t0), aAddr)
	b.Receive(decode(t, build(wire.ClassSuccess, tx, idA, testSecret)), aAddr, t0.Add(ms))
	if b.State() != Connected {
		t.Fatal(b.State())
	}
	buf := a.Keepalive([]byte("prefix"))
	if string(buf[:6]) != "prefix" {
		t.Fatal("Keepalive did not append")
	}
	k1 := decode(t, buf[6:])
	k2 := decode(t, a.Keepalive(nil))
	if k1.Type.Class != wire.ClassIndication || k1.SourceID != idA || !Verify(k1, idA, testSecret) {
		t.Fatalf("keepalive %v from %v does not verify", k1.Type, k1.SourceID)
	}
	if k1.TransactionID == k2.TransactionID {
		t.Error("two keepalives share a transaction ID")
	}
	at := t0.Add(17 * time.Second)
	if out := b.Receive(k1, aAddr, at); out != nil {
		t.Error("an indication was answered")
	}
	if st := b.Stats(); st.Received != 2 || b.LastHeard() != at {
		t.Errorf("stats %+v last heard %v", st, b.LastHeard())
	}
	if a.Stats().Keepalives != 2 {
		t.Errorf("keepalives %d", a.Stats().Keepalives)
	}
}

func TestVerify(t *testing.T) {
	other := testSecret
	other[15] ^= 0xff
	mangled := build(wire.ClassRequest, txid(1), idB, testSecret)
	mangled[30] ^= 1 // inside SOURCE_ID
	noRaw := fromB(t, wire.ClassRequest, txid(1))
	noRaw.Raw = nil
	tests := []struct {
		name string
		msg  *wire.Message
		want bool
	}{
		{"request", fromB(t, wire.ClassRequest, txid(1)), true},
		{"success", fromB(t, wire.ClassSuccess, txid(1)), true},
		{"indication", fromB(t, wire.ClassIndication, txid(1)), true},
		{"other secret", decode(t, build(wire.ClassRequest, txid(1), idB, other)), false},
		{"other sender", decode(t, build(wire.ClassRequest, txid(1), idA, testSecret)), false},
		{"SOURCE_ID altered", decode(t, mangled), false},
		{"no Raw", noRaw, false},
		{"empty message", new(wire.Message), false},
	}
	m := newA(t, nil)
	for _, tt := range tests {
		if got := Verify(tt.msg, idB, testSecret); got != tt.want {
			t.Errorf("%s: Verify = %v, want %v", tt.name, got, tt.want)
		}
		if got := m.Verify(tt.msg); got != tt.want {
			t.Errorf("%s: Machine.Verify = %v, want %v", tt.name, got, tt.want)
		}
	}
	if st := m.Stats(); st != (Stats{}) {
		t.Errorf("Machine.Verify changed stats: %+v", st)
	}
}

func TestNew(t *testing.T) {
	ok := Config{Self: idA, Peer: idB, Secret: testSecret, Candidates: []netip.AddrPort{peerAddr}}
	tests := []struct {
		name string
		mod  func(*Config)
		err  error
	}{
		{"zero secret", func(c *Config) { c.Secret = wire.Secret{} }, ErrNoSecret},
		{"zero peer", func(c *Config) { c.Peer = wire.ID{} }, ErrNoPeer},
		{"zero self", func(c *Config) { c.Self = wire.ID{} }, ErrNoSelf},
		{"self is peer", func(c *Config) { c.Peer = idA }, ErrSelfIsPeer},
		{"no candidates", func(c *Config) { c.Candidates = nil }, ErrNoCandidates},
		{"only unusable candidates", func(c *Config) {
			c.Candidates = []netip.AddrPort{{}, netip.MustParseAddrPort("0.0.0.0:1"),
				netip.MustParseAddrPort("192.0.2.1:0"), netip.MustParseAddrPort("[ff02::1]:5")}
		}, ErrNoCandidates},
		{"negative timeout", func(c *Config) { c.Timeout = -1 }, ErrBadSchedule},
		{"backoff below 1", func(c *Config) { c.Backoff = 0.5 }, ErrBadSchedule},
		{"max interval below interval", func(c *Config) { c.Interval = time.Second }, ErrBadSchedule},
		{"rand fails", func(c *Config) { c.Rand = bytes.NewReader(make([]byte, 5)) }, io.ErrUnexpectedEOF},
		{"valid", nil, nil},
	}
	for _, tt := range tests {
		cfg := ok
		if tt.mod != nil {
			tt.mod(&cfg)
		}
		m, err := New(cfg, t0)
		if !errors.Is(err, tt.err) || (err == nil) != (m != nil) {
			t.Errorf("%s: New = %v, %v; want %v", tt.name, m, err, tt.err)
		}
	}
}

func TestCandidatesNormalised(t *testing.T) {
	in := []netip.AddrPort{
		netip.MustParseAddrPort("[::ffff:203.0.113.2]:40000"), // mapped: same as the next
		peerAddr,
		netip.MustParseAddrPort("0.0.0.0:9"),
		netip.MustParseAddrPort("[2001:db8::2]:5000"),
		peerLocal,
	}
	for i := range 20 {
		in = append(in, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 9, 0, byte(i)}), 1))
	}
	m := newA(t, func(c *Config) { c.Candidates = in })
	got := m.Candidates(nil)
	if len(got) != MaxConfigured || got[0] != peerAddr ||
		got[1] != netip.MustParseAddrPort("[2001:db8::2]:5000") || got[2] != peerLocal {
		t.Errorf("candidates %v", got)
	}
	// A request from the mapped form of a known address is not new.
	mapped := netip.MustParseAddrPort("[::ffff:203.0.113.2]:40000")
	out := m.Receive(fromB(t, wire.ClassRequest, txid(1)), mapped, t0)
	if len(out) == 0 || out[0].To != peerAddr || len(m.Candidates(nil)) != MaxConfigured {
		t.Errorf("request from a mapped address: out %v, candidates %v", out, m.Candidates(nil))
	}
}

// TestRandSeedsTransactionIDs: Config.Rand makes transaction IDs
// reproducible; by default two Machines differ.
func TestRandSeedsTransactionIDs(t *testing.T) {
	seed := bytes.Repeat([]byte{0xab}, 12)
	mk := func(r io.Reader) wire.TransactionID {
		m := newA(t, func(c *Config) { c.Rand = r })
		return requestTx(t, m.Tick(t0), peerAddr)
	}
	a, b := mk(bytes.NewReader(seed)), mk(bytes.NewReader(seed))
	if a != b || [8]byte(a[:8]) != [8]byte(seed[:8]) {
		t.Errorf("seeded IDs %x %x", a, b)
	}
	if mk(nil) == mk(nil) {
		t.Error("crypto/rand gave two Machines the same transaction ID")
	}
}

func clonePackets(pkts []Packet) []Packet {
	out := slices.Clone(pkts)
	for i := range out {
		out[i].Data = slices.Clone(out[i].Data)
	}
	return out
}

func TestPacketDataDoesNotOverlap(t *testing.T) {
	m := newA(t, nil)
	pkts := m.Tick(t0)
	second := slices.Clone(pkts[1].Data)
	_ = append(pkts[0].Data, 0xff) // a careless caller
	if !bytes.Equal(pkts[1].Data, second) {
		t.Error("appending to one packet overwrote the next")
	}
}

func TestStateString(t *testing.T) {
	for s, want := range map[State]string{Punching: "punching", Connected: "connected", Failed: "failed", 9: "unknown"} {
		if s.String() != want {
			t.Errorf("%d: %q", s, s.String())
		}
	}
}

// TestNoAllocs locks in that the per-packet paths do not allocate: forged
// floods cost no garbage, and neither does honest traffic.
func TestNoAllocs(t *testing.T) {
	forged := build(wire.ClassRequest, txid(1), idB, testSecret)
	forged[len(forged)-1] ^= 1
	stranger := decode(t, build(wire.ClassRequest, txid(1), idOf("mallory"), testSecret))
	unknown := fromB(t, wire.ClassSuccess, txid(3))
	reqs := make([]*wire.Message, 200)
	for i := range reqs {
		reqs[i] = fromB(t, wire.ClassRequest, txid(byte(i)))
	}
	m := newA(t, nil)
	m.Tick(t0)
	m.Receive(reqs[199], peerAddr, t0) // warm up the HMAC state
	forgedMsg := decode(t, forged)
	i := 0
	now := t0
	tests := []struct {
		name string
		fn   func()
	}{
		{"Receive forged (bad MAC)", func() { m.Receive(forgedMsg, peerAddr, t0) }},
		{"Receive wrong SOURCE_ID", func() { m.Receive(stranger, peerAddr, t0) }},
		{"Receive unknown transaction", func() { m.Receive(unknown, peerAddr, t0) }},
		{"Receive valid request", func() { m.Receive(reqs[i%len(reqs)], peerAddr, t0); i++ }},
		{"Tick", func() { now = now.Add(DefaultInterval); m.Tick(now) }},
		{"Verify", func() { m.Verify(reqs[0]) }},
		{"Keepalive", func() { m.Keepalive(forged[:0]) }},
	}
	for _, tt := range tests {
		if n := testing.AllocsPerRun(100, tt.fn); n != 0 {
			t.Errorf("%s: %v allocations", tt.name, n)
		}
	}
}
