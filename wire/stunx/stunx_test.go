package stunx_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/stunx"
)

// Hand-written vectors. The transaction ID and the XOR-MAPPED-ADDRESS
// values are those of RFC 5769 §2.2 and §2.3; the FINGERPRINTs were
// computed outside Go with python3 zlib.crc32(msg) ^ 0x5354554e.
const (
	tx = "b7e7a701bc34d686fa87dfae"
	// Binding request, no attributes.
	reqBare = "00010000" + "2112a442" + tx
	// Binding request with FINGERPRINT only.
	reqFP = "00010008" + "2112a442" + tx + "80280004" + "fdf6ae02"
	// Binding indication (class 01: bit 4), no attributes.
	indBare = "00110000" + "2112a442" + tx

	xma4 = "00200008" + "0001a147" + "e112a643"
	xma6 = "00200014" + "0002a147" + "0113a9faa5d3f179bc25f4b5bed2b9d9"

	resp4   = "0101000c" + "2112a442" + tx + xma4
	resp4FP = "01010014" + "2112a442" + tx + xma4 + "80280004" + "7d281f59"
	resp6   = "01010018" + "2112a442" + tx + xma6
	resp6FP = "01010020" + "2112a442" + tx + xma6 + "80280004" + "68d5c950"
)

var (
	src4 = netip.MustParseAddrPort("192.0.2.1:32853")
	src6 = netip.MustParseAddrPort("[2001:db8:1234:5678:11:2233:4455:6677]:32853")
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func decode(t testing.TB, s string) *stun.Message {
	t.Helper()
	m := new(stun.Message)
	if err := stunx.Decode(unhex(t, s), m); err != nil {
		t.Fatalf("Decode(%s): %v", s, err)
	}
	return m
}

func TestAppendBindingSuccessGolden(t *testing.T) {
	for _, c := range []struct {
		name string
		req  string
		src  netip.AddrPort
		want string
	}{
		{"ipv4", reqBare, src4, resp4},
		{"ipv4 fingerprint", reqFP, src4, resp4FP},
		{"ipv6", reqBare, src6, resp6},
		{"ipv6 fingerprint", reqFP, src6, resp6FP},
		// The address a dual-stack socket reports for an IPv4 peer.
		{"ipv4-mapped is sent as ipv4", reqFP, netip.MustParseAddrPort("[::ffff:192.0.2.1]:32853"), resp4FP},
		{"zone is dropped", reqBare, netip.MustParseAddrPort("[2001:db8:1234:5678:11:2233:4455:6677%eth0]:32853"), resp6},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := decode(t, c.req)
			prefix := []byte("keep")
			out := stunx.AppendBindingSuccess(append([]byte(nil), prefix...), req, c.src)
			if !bytes.HasPrefix(out, prefix) {
				t.Fatal("prefix lost")
			}
			got := out[len(prefix):]
			if want := unhex(t, c.want); !bytes.Equal(got, want) {
				t.Fatalf("got\n%x\nwant\n%x", got, want)
			}
			if len(got) > stunx.MaxBindingSuccessSize {
				t.Fatalf("%d bytes > MaxBindingSuccessSize", len(got))
			}
			// Second opinion: pion reads back what we wrote.
			var m stun.Message
			if err := stun.Decode(got, &m); err != nil {
				t.Fatal(err)
			}
			if m.Type != stun.BindingSuccess || m.TransactionID != req.TransactionID {
				t.Fatalf("type %v tx %x", m.Type, m.TransactionID)
			}
			var xma stun.XORMappedAddress
			if err := xma.GetFrom(&m); err != nil {
				t.Fatal(err)
			}
			want := c.src.Addr().Unmap().WithZone("")
			if ip, _ := netip.AddrFromSlice(xma.IP); ip.Unmap() != want || xma.Port != int(c.src.Port()) {
				t.Fatalf("XOR-MAPPED-ADDRESS %v, want %v", xma, c.src)
			}
			if req.Contains(stun.AttrFingerprint) {
				if err := stun.Fingerprint.Check(&m); err != nil {
					t.Fatal(err)
				}
			} else if m.Contains(stun.AttrFingerprint) {
				t.Fatal("FINGERPRINT in a response to a request without one")
			}
		})
	}
}

func TestAppendBindingSuccessInvalidSource(t *testing.T) {
	req := decode(t, reqBare)
	b := []byte("x")
	if out := stunx.AppendBindingSuccess(b, req, netip.AddrPort{}); !bytes.Equal(out, b) {
		t.Fatalf("appended %x for an invalid source", out)
	}
}

func TestAppendBindingSuccessGrowsSmallBuffer(t *testing.T) {
	req := decode(t, reqFP)
	out := stunx.AppendBindingSuccess(make([]byte, 3, 3), req, src6)
	if !bytes.Equal(out[3:], unhex(t, resp6FP)) {
		t.Fatalf("got %x", out[3:])
	}
}

func TestDecodeAcceptsIndicationForCallerToIgnore(t *testing.T) {
	m := decode(t, indBare)
	if m.Type.Class != stun.ClassIndication || m.Type == stun.BindingRequest {
		t.Fatalf("type %v", m.Type)
	}
}

// TestCheckRejects covers every rule of Check with one message that breaks
// only that rule.
func TestCheckRejects(t *testing.T) {
	valid := reqFP
	long := make([]byte, wire.MaxMessageSize+4)
	copy(long, unhex(t, reqBare))
	long[2], long[3] = byte((len(long)-20)>>8), byte(len(long)-20)
	for _, c := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, stunx.ErrMalformed},
		{"19 bytes", unhex(t, reqBare)[:19], stunx.ErrMalformed},
		{"over MaxMessageSize", long, stunx.ErrMalformed},
		{"leading bits 01", unhex(t, "4001"+valid[4:]), stunx.ErrMalformed},
		{"leading bits 10", unhex(t, "8001"+valid[4:]), stunx.ErrMalformed},
		{"leading bits 11 (X)", unhex(t, "c001"+valid[4:]), stunx.ErrMalformed},
		{"bad cookie", unhex(t, "00010000"+"2112a443"+tx), stunx.ErrMalformed},
		{"RFC 3489 (no cookie)", unhex(t, "00010000"+"00000000"+tx), stunx.ErrMalformed},
		{"length not a multiple of 4", unhex(t, "00010001"+"2112a442"+tx+"00"), stunx.ErrMalformed},
		{"length short of datagram", unhex(t, "00010000"+"2112a442"+tx+"00000000"), stunx.ErrMalformed},
		{"length past datagram", unhex(t, "00010008"+"2112a442"+tx+"80220000"), stunx.ErrMalformed},
		{"attribute past end", unhex(t, "00010008"+"2112a442"+tx+"80220008"+"41414141"), stunx.ErrMalformed},
		{"padding past end", unhex(t, "00010008"+"2112a442"+tx+"80220005"+"41414141"), stunx.ErrMalformed},
		{"FINGERPRINT not last", unhex(t, "0001000c"+"2112a442"+tx+"80280004"+"fdf6ae02"+"80220000"), stunx.ErrFingerprint},
		{"FINGERPRINT wrong length", unhex(t, "0001000c"+"2112a442"+tx+"80280008"+"fdf6ae0200000000"), stunx.ErrFingerprint},
		{"FINGERPRINT wrong CRC", unhex(t, "00010008"+"2112a442"+tx+"80280004"+"fdf6ae03"), stunx.ErrFingerprint},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := c.b
			if err := stunx.Check(b); !errors.Is(err, c.want) {
				t.Fatalf("Check = %v, want %v", err, c.want)
			}
			var m stun.Message
			m.Raw = []byte("stale")
			if err := stunx.Decode(b, &m); !errors.Is(err, c.want) {
				t.Fatalf("Decode = %v, want %v", err, c.want)
			}
			if len(m.Raw) != 0 {
				t.Fatal("Decode left stale bytes in m after an error")
			}
		})
	}
}

// TestCheckEveryPrefix: no prefix of a valid message is valid.
func TestCheckEveryPrefix(t *testing.T) {
	for _, s := range []string{reqFP, resp6FP} {
		b := unhex(t, s)
		for i := range len(b) {
			if err := stunx.Check(b[:i]); err == nil {
				t.Fatalf("%s[:%d] accepted", s, i)
			}
		}
	}
}

// TestCheckEveryBitFlip: with a FINGERPRINT, every single-bit change is
// caught, by a structural rule or by the CRC, unless it turns the message
// into one without a FINGERPRINT (a longer attribute length that swallows
// it, or a changed FINGERPRINT type), which is a different valid message.
func TestCheckEveryBitFlip(t *testing.T) {
	b := unhex(t, resp6FP)
	for i := range 8 * len(b) {
		c := bytes.Clone(b)
		c[i/8] ^= 1 << (i % 8)
		if err := stunx.Check(c); err == nil {
			var m stun.Message
			if err := stunx.Decode(c, &m); err != nil || m.Contains(stun.AttrFingerprint) {
				t.Fatalf("bit %d flipped and accepted with its FINGERPRINT", i)
			}
		}
	}
}

func TestNoAllocs(t *testing.T) {
	req := unhex(t, reqFP)
	bad := unhex(t, "00010008"+"2112a442"+tx+"80220008"+"41414141")
	var m stun.Message
	if err := stunx.Decode(req, &m); err != nil { // warm m.Attributes
		t.Fatal(err)
	}
	out := make([]byte, 0, 1500)
	for _, c := range []struct {
		name string
		f    func()
	}{
		{"Decode", func() { _ = stunx.Decode(req, &m) }},
		{"Decode malformed", func() { _ = stunx.Decode(bad, &m) }},
		{"AppendBindingSuccess ipv4", func() { _ = stunx.Decode(req, &m); out = stunx.AppendBindingSuccess(out[:0], &m, src4) }},
		{"AppendBindingSuccess ipv6", func() { _ = stunx.Decode(req, &m); out = stunx.AppendBindingSuccess(out[:0], &m, src6) }},
	} {
		if n := testing.AllocsPerRun(200, c.f); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", c.name, n)
		}
	}
}

// TestPionAllocations records why this package exists: the figures pion
// itself gives (reported in the package doc and docs/PROTOCOL.md). It
// asserts only that the measurement ran; a pion that stops allocating is
// good news, not a failure.
func TestPionAllocations(t *testing.T) {
	bad := unhex(t, "00010008"+"2112a442"+tx+"80220008"+"41414141")
	var m stun.Message
	malformed := testing.AllocsPerRun(100, func() {
		m.Raw = append(m.Raw[:0], bad...)
		_ = m.Decode()
	})
	var id [stun.TransactionIDSize]byte
	build4 := testing.AllocsPerRun(100, func() {
		_, _ = stun.Build(stun.NewTransactionIDSetter(id), stun.BindingSuccess,
			&stun.XORMappedAddress{IP: net.IPv4(192, 0, 2, 1), Port: 32853}, stun.Fingerprint)
	})
	t.Logf("pion: Decode of a malformed message %v allocs; stun.Build of an IPv4 Binding success %v allocs", malformed, build4)
}

func BenchmarkDecode(b *testing.B) {
	req := unhex(b, reqFP)
	var m stun.Message
	b.ReportAllocs()
	b.SetBytes(int64(len(req)))
	for b.Loop() {
		if err := stunx.Decode(req, &m); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendBindingSuccess(b *testing.B) {
	req := decode(b, reqFP)
	out := make([]byte, 0, 1500)
	b.ReportAllocs()
	for b.Loop() {
		out = stunx.AppendBindingSuccess(out[:0], req, src6)
	}
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{reqBare, reqFP, indBare, resp4FP, resp6FP} {
		f.Add(unhex(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m stun.Message
		err := stunx.Decode(b, &m)
		if err != nil {
			if !errors.Is(err, stunx.ErrMalformed) && !errors.Is(err, stunx.ErrFingerprint) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if k := wire.Classify(b); k != wire.KindSTUN {
			t.Fatalf("Decode accepted what Classify calls %v", k)
		}
		// pion agrees it is a message.
		var p stun.Message
		if err := stun.Decode(b, &p); err != nil {
			t.Fatalf("pion rejects what Decode accepted: %v", err)
		}
		if p.Contains(stun.AttrFingerprint) {
			if err := stun.Fingerprint.Check(&p); err != nil {
				t.Fatalf("pion rejects the FINGERPRINT Check accepted: %v", err)
			}
		}
		out := stunx.AppendBindingSuccess(nil, &m, src6)
		if err := stunx.Check(out); err != nil {
			t.Fatalf("own response fails Check: %v", err)
		}
	})
}
