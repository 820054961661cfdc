package wire_test

import (
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// TestClassify is the expected-outcome table of the demultiplexer: what
// each kind of packet that can reach an ewf socket is taken for.
func TestClassify(t *testing.T) {
	x := unhex(t, goldens[0].hex)
	rep := func(n int, b byte) string {
		s := make([]byte, 2*n)
		for i := range s {
			s[i] = "0123456789abcdef"[b>>4]
			if i%2 == 1 {
				s[i] = "0123456789abcdef"[b&0xf]
			}
		}
		return string(s)
	}
	for _, c := range []struct {
		name string
		hex  string
		want wire.Kind
	}{
		{"X REGISTER request", goldens[0].hex, wire.KindX},
		{"X header only", hdr("c103", "0000"), wire.KindX},
		{"STUN Binding request", "00010000" + "2112a442" + txHex, wire.KindSTUN},
		{"STUN Binding indication", "00110000" + "2112a442" + txHex, wire.KindSTUN},
		{"STUN with attributes", "00010008" + "2112a442" + txHex + "8028000400000000", wire.KindSTUN},
		// The length need not match the buffer: Classify also reads the
		// header of a TCP frame before the body has arrived.
		{"X header announcing a body not yet read", hdr("c002", "0014"), wire.KindX},
		{"19 bytes", (hdr("c103", "0000"))[:38], wire.KindOther},
		{"empty", "", wire.KindOther},
		{"leading bits 01 with cookie", "40010000" + "2112a442" + txHex, wire.KindOther},
		{"leading bits 10 with cookie", "80010000" + "2112a442" + txHex, wire.KindOther},
		{"X bits, wrong cookie", "c0020000" + "2112a443" + txHex, wire.KindOther},
		{"STUN bits, RFC 3489 (no cookie)", "00010000" + "00000000" + txHex, wire.KindOther},
		{"X with length not a multiple of 4", "c0020013" + "2112a442" + txHex, wire.KindOther},
		{"STUN with length not a multiple of 4", "00010002" + "2112a442" + txHex, wire.KindOther},
		// QUIC long headers (RFC 9000 §17.2, RFC 9369): first byte 11xxxxxx
		// like X, but bytes 4..7 are the version's last byte, the DCID
		// length and the first DCID bytes.
		{"QUIC v1 Initial", "c3" + "00000001" + "08" + "0123456789abcdef" + "08" + "fedcba9876543210" + "00" + "4496" + rep(40, 0xaa), wire.KindOther},
		{"QUIC v1 Initial, 0-length DCID", "c0" + "00000001" + "00" + "08" + "fedcba9876543210" + rep(40, 0x55), wire.KindOther},
		{"QUIC v2 Initial", "d3" + "6b3343cf" + "14" + rep(20, 0x21) + "00" + rep(40, 0), wire.KindOther},
		{"QUIC version negotiation", "80" + "00000000" + "08" + "0123456789abcdef" + "08" + "fedcba9876543210" + "00000001" + "6b3343cf", wire.KindOther},
		{"QUIC 1-RTT short header", "40" + "0123456789abcdef" + rep(40, 0x12), wire.KindOther},
		// The one QUIC shape that would read as X, documented in Classify:
		// a version ending in 0x21 (whose middle bytes, read as the length,
		// are a multiple of 4) with an 18-byte DCID starting a4 42. No
		// version ewf runs ends in 0x21.
		{"QUIC-like with version ..21, DCID len 0x12, DCID a442...", "c0" + "abcd0021" + "12" + "a442" + rep(16, 0) + "00" + rep(20, 0), wire.KindX},
		{"DTLS 1.2 ClientHello", "16" + "fefd" + "0000000000000000" + "0036" + rep(60, 1), wire.KindOther},
		{"RTP", "80" + "60" + "1234" + "00000001" + "deadbeef" + rep(40, 0), wire.KindOther},
		{"all zeros", rep(20, 0), wire.KindOther},
		{"all ones", rep(20, 0xff), wire.KindOther},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := wire.Classify(unhex(t, c.hex)); got != c.want {
				t.Fatalf("Classify = %v, want %v", got, c.want)
			}
		})
	}
	// Classify reads only the header: the same header with any body is
	// the same kind.
	if k := wire.Classify(append(x[:wire.HeaderSize:wire.HeaderSize], make([]byte, 3)...)); k != wire.KindX {
		t.Fatalf("header + unaligned junk: %v", k)
	}
}

func TestKindAndNamesString(t *testing.T) {
	for _, c := range []struct{ got, want string }{
		{wire.KindX.String(), "X"},
		{wire.KindSTUN.String(), "STUN"},
		{wire.KindOther.String(), "other"},
		{wire.Type{Method: wire.MethodQuery, Class: wire.ClassSuccess}.String(), "QUERY success response"},
		{wire.Type{Method: 0x123, Class: wire.ClassIndication}.String(), "unknown indication"},
		{wire.MethodRegister.String() + wire.MethodBind.String() + wire.MethodIntroduce.String() + wire.MethodPunch.String(), "REGISTERBINDINTRODUCEPUNCH"},
		{wire.ClassRequest.String() + "/" + wire.ClassError.String(), "request/error response"},
		{wire.AttrNetworkAddress.String() + " " + wire.AttrMAC.String() + " " + wire.AttrType(0x8000).String(), "NETWORK_ADDRESS MAC unknown"},
		{wire.ReasonAddressMismatch.String(), "address mismatch"},
		{wire.Reason(0x42).String(), "unrecognised reason"},
		{wire.Address{Transport: wire.TransportTCP, AddrPort: addr4}.String(), "tcp/192.0.2.1:32853"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
