package client

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
)

// capture is a Client whose requests are kept for the test to answer by
// hand through HandlePacket.
type capture struct {
	c    *Client
	mu   sync.Mutex
	reqs [][]byte
}

func newCapture(cfg Config) *capture {
	k := &capture{}
	cfg.Send = func(b []byte) error {
		k.mu.Lock()
		k.reqs = append(k.reqs, append([]byte(nil), b...))
		k.mu.Unlock()
		return nil
	}
	cfg.Server = netip.MustParseAddrPort("127.0.0.1:3478")
	k.c = New(cfg)
	return k
}

func (k *capture) last() []byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.reqs[len(k.reqs)-1]
}

func xMsg(method wire.Method, class wire.Class, tx wire.TransactionID, set func(*wire.Message)) []byte {
	var m wire.Message
	m.Type = wire.Type{Method: method, Class: class}
	m.TransactionID = tx
	if set != nil {
		set(&m)
	}
	return m.AppendTo(nil)
}

func stunMsg(t *testing.T, tx wire.TransactionID, setters ...stun.Setter) []byte {
	t.Helper()
	m, err := stun.Build(append([]stun.Setter{stun.NewTransactionIDSetter(tx)}, setters...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m.Raw
}

func txOf(b []byte) wire.TransactionID { return wire.TransactionID(b[8:20]) }

// HandlePacket accepts only a valid response of the right method and kind
// to an outstanding transaction, once; everything else is dropped, and the
// request goes on waiting for a good one.
func TestHandlePacketValidatesXResponses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := newCapture(Config{})
		var key wire.Key
		var err error
		done := make(chan struct{})
		go func() {
			key, err = k.c.Register(t.Context(), wire.ID{1})
			close(done)
		}()
		synctest.Wait()
		tx := txOf(k.last())
		want := wire.Key{0xAA}
		good := xMsg(wire.MethodRegister, wire.ClassSuccess, tx, func(m *wire.Message) { m.SetKey(want) })
		tests := []struct {
			name string
			b    []byte
			ok   bool
		}{
			{"unknown transaction", xMsg(wire.MethodRegister, wire.ClassSuccess, wire.TransactionID{9}, func(m *wire.Message) { m.SetKey(want) }), false},
			{"success without KEY", xMsg(wire.MethodRegister, wire.ClassSuccess, tx, nil), false},
			{"other method", xMsg(wire.MethodBind, wire.ClassSuccess, tx, nil), false},
			{"request with our transaction ID", xMsg(wire.MethodRegister, wire.ClassRequest, tx, func(m *wire.Message) { m.SetID(wire.ID{1}) }), false},
			{"error without reason", xMsg(wire.MethodRegister, wire.ClassError, tx, nil), false},
			{"STUN for an X request", stunMsg(t, tx, stun.BindingSuccess, &stun.XORMappedAddress{IP: []byte{1, 2, 3, 4}, Port: 5}), false},
			{"length does not match datagram", append(append([]byte(nil), good...), 0, 0, 0, 0), false},
			{"truncated", good[:len(good)-4], false},
			{"junk", []byte("not a STUN or X message at all"), false},
			{"empty", nil, false},
			{"valid", good, true},
			{"duplicate", good, false},
		}
		for _, tt := range tests {
			if got := k.c.HandlePacket(tt.b); got != tt.ok {
				t.Errorf("%s: HandlePacket = %v, want %v", tt.name, got, tt.ok)
			}
		}
		<-done
		if err != nil || key != want {
			t.Errorf("Register = %x, %v; want %x", key, err, want)
		}
	})
}

// When only invalid responses came, the timeout error says so.
func TestBadResponseKeptAsLastError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := newCapture(Config{})
		var err error
		done := make(chan struct{})
		go func() {
			_, err = k.c.Query(t.Context(), wire.ID{1})
			close(done)
		}()
		synctest.Wait()
		tx := txOf(k.last())
		k.c.HandlePacket(xMsg(wire.MethodQuery, wire.ClassSuccess, tx, nil)) // no NETWORK_ADDRESS
		<-done
		if !errors.Is(err, ErrTimeout) || !errors.Is(err, ErrBadResponse) {
			t.Fatalf("err = %v, want ErrTimeout and ErrBadResponse", err)
		}
		if !errors.Is(err, wire.ErrInvalidAttributes) || !strings.Contains(err.Error(), "required attribute") {
			t.Errorf("err = %v does not carry the validation problem", err)
		}
	})
}

// An introduction's answer must carry SECRET.
func TestIntroduceRequiresSecret(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := newCapture(Config{RTO: 10, MaxAttempts: 1, LastWait: 1})
		var err error
		done := make(chan struct{})
		go func() {
			_, err = k.c.Introduce(t.Context(), wire.ID{1}, wire.Key{2}, wire.ID{3}, nil)
			close(done)
		}()
		synctest.Wait()
		addr := wire.Address{AddrPort: netip.MustParseAddrPort("192.0.2.9:9")}
		if k.c.HandlePacket(xMsg(wire.MethodQuery, wire.ClassSuccess, txOf(k.last()), func(m *wire.Message) { m.AddAddress(addr) })) {
			t.Error("introduction answer without SECRET accepted")
		}
		<-done
		if !errors.Is(err, ErrBadResponse) || !errors.Is(err, errNoSecret) {
			t.Errorf("err = %v", err)
		}
	})
}

func TestHandlePacketValidatesSTUN(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		k := newCapture(Config{})
		var got netip.AddrPort
		var err error
		done := make(chan struct{})
		go func() {
			got, err = k.c.PublicAddress(t.Context())
			close(done)
		}()
		synctest.Wait()
		req := k.last()
		var m stun.Message
		if e := stun.Decode(req, &m); e != nil || m.Type != stun.BindingRequest {
			t.Fatalf("request is not a STUN Binding request: %v %v", e, m.Type)
		}
		if e := stun.Fingerprint.Check(&m); e != nil {
			t.Errorf("request FINGERPRINT: %v", e)
		}
		tx := txOf(req)
		want := netip.MustParseAddrPort("[2001:db8::1]:4242")
		xa := &stun.XORMappedAddress{IP: want.Addr().AsSlice(), Port: int(want.Port())}
		good := stunMsg(t, tx, stun.BindingSuccess, xa, stun.Fingerprint)
		badFP := append([]byte(nil), good...)
		badFP[len(badFP)-1] ^= 1
		tests := []struct {
			name string
			b    []byte
			ok   bool
		}{
			{"unknown transaction", stunMsg(t, wire.TransactionID{9}, stun.BindingSuccess, xa), false},
			{"no XOR-MAPPED-ADDRESS", stunMsg(t, tx, stun.BindingSuccess, stun.Fingerprint), false},
			{"bad FINGERPRINT", badFP, false},
			{"error response", stunMsg(t, tx, stun.BindingError, stun.CodeBadRequest), false},
			{"trailing bytes", append(append([]byte(nil), good...), 0, 0, 0, 0), false},
			{"X for a STUN request", xMsg(wire.MethodRegister, wire.ClassSuccess, tx, func(m *wire.Message) { m.SetKey(wire.Key{1}) }), false},
			{"valid", good, true},
			{"duplicate", good, false},
		}
		for _, tt := range tests {
			if ok := k.c.HandlePacket(tt.b); ok != tt.ok {
				t.Errorf("%s: HandlePacket = %v, want %v", tt.name, ok, tt.ok)
			}
		}
		<-done
		if err != nil || got != want {
			t.Errorf("PublicAddress = %v, %v; want %v", got, err, want)
		}
	})
}

// A valid INTRODUCE indication reaches OnIntroduce with the querier's
// data; an invalid one does not.
func TestHandlePacketIntroduce(t *testing.T) {
	var got []Introduction
	k := newCapture(Config{OnIntroduce: func(in Introduction) { got = append(got, in) }})
	tcp := wire.Address{Transport: wire.TransportTCP, AddrPort: netip.MustParseAddrPort("198.51.100.1:443")}
	udp := wire.Address{Transport: wire.TransportUDP, AddrPort: netip.MustParseAddrPort("198.51.100.1:5000")}
	cand := wire.Address{AddrPort: netip.MustParseAddrPort("10.0.0.2:5000")}
	valid := xMsg(wire.MethodIntroduce, wire.ClassIndication, wire.TransactionID{1}, func(m *wire.Message) {
		m.SetSourceID(wire.ID{5})
		m.SetSecret(wire.Secret{6})
		m.AddAddress(tcp)
		m.AddAddress(udp)
		m.AddCandidate(cand)
	})
	noSecret := xMsg(wire.MethodIntroduce, wire.ClassIndication, wire.TransactionID{2}, func(m *wire.Message) {
		m.SetSourceID(wire.ID{5})
		m.AddAddress(udp)
	})
	if k.c.HandlePacket(noSecret) {
		t.Error("INTRODUCE without SECRET accepted")
	}
	if !k.c.HandlePacket(valid) {
		t.Fatal("valid INTRODUCE refused")
	}
	if len(got) != 1 {
		t.Fatalf("OnIntroduce called %d times, want 1", len(got))
	}
	in := got[0]
	if in.Peer != (wire.ID{5}) || in.Secret != (wire.Secret{6}) ||
		len(in.Addresses) != 2 || in.Addresses[0] != udp || in.Addresses[1] != tcp ||
		len(in.Candidates) != 1 || in.Candidates[0] != cand {
		t.Errorf("Introduction = %+v", in)
	}
	if !New(Config{Send: func([]byte) error { return nil }}).HandlePacket(valid) {
		t.Error("valid INTRODUCE refused when nobody listens")
	}
}

// The packet paths an attacker or a stray sender can reach allocate
// nothing: unsolicited responses, junk, and invalid responses to an
// outstanding transaction.
func TestHandlePacketNoAllocs(t *testing.T) {
	c := New(Config{Send: func([]byte) error { return nil }})
	tr, tx, err := c.newTxn(wire.KindX, wire.MethodRegister, false)
	if err != nil {
		t.Fatal(err)
	}
	_ = tr
	stunResp := stunMsg(t, wire.TransactionID{9}, stun.BindingSuccess,
		&stun.XORMappedAddress{IP: []byte{1, 2, 3, 4}, Port: 5}, stun.Fingerprint)
	cases := map[string][]byte{
		"unsolicited X":      xMsg(wire.MethodRegister, wire.ClassSuccess, wire.TransactionID{9}, func(m *wire.Message) { m.SetKey(wire.Key{1}) }),
		"unsolicited STUN":   stunResp,
		"junk":               []byte("0123456789abcdef0123456789abcdef"),
		"bad X for pending":  xMsg(wire.MethodBind, wire.ClassSuccess, tx, nil),
		"STUN for pending X": stunMsg(t, tx, stun.BindingSuccess, &stun.XORMappedAddress{IP: []byte{1, 2, 3, 4}, Port: 5}),
		"INTRODUCE, nobody listening": xMsg(wire.MethodIntroduce, wire.ClassIndication, wire.TransactionID{3}, func(m *wire.Message) {
			m.SetSourceID(wire.ID{5})
			m.SetSecret(wire.Secret{6})
			m.AddAddress(wire.Address{AddrPort: netip.MustParseAddrPort("198.51.100.1:5000")})
		}),
	}
	for name, b := range cases {
		if n := testing.AllocsPerRun(100, func() { c.HandlePacket(b) }); n != 0 {
			t.Errorf("%s: %v allocations per packet, want 0", name, n)
		}
	}
}

func BenchmarkHandlePacketUnsolicited(b *testing.B) {
	c := New(Config{Send: func([]byte) error { return nil }})
	msg := xMsg(wire.MethodQuery, wire.ClassSuccess, wire.TransactionID{9}, func(m *wire.Message) {
		m.AddAddress(wire.Address{AddrPort: netip.MustParseAddrPort("198.51.100.1:5000")})
	})
	b.ReportAllocs()
	for b.Loop() {
		c.HandlePacket(msg)
	}
}

// BenchmarkRequestResponse measures a whole REGISTER round trip through
// HandlePacket with an in-process answer: the client's own cost per request.
func BenchmarkRequestResponse(b *testing.B) {
	var c *Client
	resp := make([]byte, 0, 64)
	c = New(Config{Send: func(req []byte) error {
		var m wire.Message
		if err := m.Decode(req); err != nil {
			return err
		}
		resp = xMsg(wire.MethodRegister, wire.ClassSuccess, m.TransactionID, func(m *wire.Message) { m.SetKey(wire.Key{1}) })
		c.HandlePacket(resp)
		return nil
	}})
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Register(ctx, wire.ID{1}); err != nil {
			b.Fatal(err)
		}
	}
}
