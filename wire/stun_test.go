package wire_test

import (
	"bytes"
	"net"
	"testing"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/stunx"
)

// RFC 5769 test vectors, as printed in the RFC (one row per 4 bytes, the
// RFC's own annotations as comments). They apply to ewfd because it parses
// every STUN message that reaches it and answers Binding requests with
// XOR-MAPPED-ADDRESS: the request (§2.1) must pass the demultiplexer and
// the strict check, and the responses (§2.2, §2.3) are what a client
// parses. Each vector is checked for its fields, FINGERPRINT, and
// MESSAGE-INTEGRITY with the RFC's credentials.
const (
	rfc5769Password = "VOkJxbRl1RmTxUk/WvJxBt" // §2: short-term password of §2.1–2.3

	// §2.1 Sample Request
	rfc5769Request = "" +
		"00010058" + // Request type and message length
		"2112a442" + // Magic cookie
		"b7e7a701" + // }
		"bc34d686" + // }  Transaction ID
		"fa87dfae" + // }
		"80220010" + // SOFTWARE attribute header
		"5354554e" + // }
		"20746573" + // }  User-agent...
		"7420636c" + // }  ...name
		"69656e74" + // }
		"00240004" + // PRIORITY attribute header
		"6e0001ff" + // ICE priority value
		"80290008" + // ICE-CONTROLLED attribute header
		"932ff9b1" + // }  Pseudo-random tie breaker...
		"51263b36" + // }   ...for ICE control
		"00060009" + // USERNAME attribute header
		"6576746a" + // }
		"3a683676" + // }  Username (9 bytes) and padding (3 bytes)
		"59202020" + // }
		"00080014" + // MESSAGE-INTEGRITY attribute header
		"9aeaa70c" + // }
		"bfd8cb56" + // }
		"781ef2b5" + // }  HMAC-SHA1 fingerprint
		"b2d3f249" + // }
		"c1b571a2" + // }
		"80280004" + // FINGERPRINT attribute header
		"e57a3bcf" //    CRC32 fingerprint

	// §2.2 Sample IPv4 Response
	rfc5769ResponseIPv4 = "" +
		"0101003c" + // Response type and message length
		"2112a442" + // Magic cookie
		"b7e7a701" + // }
		"bc34d686" + // }  Transaction ID
		"fa87dfae" + // }
		"8022000b" + // SOFTWARE attribute header
		"74657374" + // }
		"20766563" + // }  UTF-8 server name
		"746f7220" + // }
		"00200008" + // XOR-MAPPED-ADDRESS attribute header
		"0001a147" + // Address family (IPv4) and xor'd mapped port number
		"e112a643" + // Xor'd mapped IPv4 address
		"00080014" + // MESSAGE-INTEGRITY attribute header
		"2b91f599" + // }
		"fd9e90c3" + // }
		"8c7489f9" + // }  HMAC-SHA1 fingerprint
		"2af9ba53" + // }
		"f06be7d7" + // }
		"80280004" + // FINGERPRINT attribute header
		"c07d4c96" //    CRC32 fingerprint

	// §2.3 Sample IPv6 Response
	rfc5769ResponseIPv6 = "" +
		"01010048" + // Response type and message length
		"2112a442" + // Magic cookie
		"b7e7a701" + // }
		"bc34d686" + // }  Transaction ID
		"fa87dfae" + // }
		"8022000b" + // SOFTWARE attribute header
		"74657374" + // }
		"20766563" + // }  UTF-8 server name
		"746f7220" + // }
		"00200014" + // XOR-MAPPED-ADDRESS attribute header
		"0002a147" + // Address family (IPv6) and xor'd mapped port number
		"0113a9fa" + // }
		"a5d3f179" + // }  Xor'd mapped IPv6 address
		"bc25f4b5" + // }
		"bed2b9d9" + // }
		"00080014" + // MESSAGE-INTEGRITY attribute header
		"a382954e" + // }
		"4be67bf1" + // }
		"1784c97c" + // }  HMAC-SHA1 fingerprint
		"8292c275" + // }
		"bfe3ed41" + // }
		"80280004" + // FINGERPRINT attribute header
		"c8fb0b4c" //    CRC32 fingerprint

	// §2.4 Sample Request with Long-Term Authentication
	rfc5769RequestLongTerm = "" +
		"00010060" + // Request type and message length
		"2112a442" + // Magic cookie
		"78ad3433" + // }
		"c6ad72c0" + // }  Transaction ID
		"29da412e" + // }
		"00060012" + // USERNAME attribute header
		"e3839ee3" + // }
		"8388e383" + // }
		"aae38383" + // }  Username value (18 bytes) and padding (2 bytes)
		"e382afe3" + // }
		"82b90000" + // }
		"0015001c" + // NONCE attribute header
		"662f2f34" + // }
		"39396b39" + // }
		"35346436" + // }
		"4f4c3334" + // }  Nonce value
		"6f4c3946" + // }
		"53547679" + // }
		"36347341" + // }
		"0014000b" + // REALM attribute header
		"6578616d" + // }
		"706c652e" + // }  Realm value (11 bytes) and padding (1 byte)
		"6f726700" + // }
		"00080014" + // MESSAGE-INTEGRITY attribute header
		"f6702465" + // }
		"6dd64a3e" + // }
		"02b8e071" + // }  HMAC-SHA1 fingerprint
		"2e85c9a2" + // }
		"8ca89666" //  }
)

// decodeSTUN runs a vector through what ewfd runs it through: the
// demultiplexer, then the strict check and pion (stunx.Decode).
func decodeSTUN(t *testing.T, hexs string) *stun.Message {
	t.Helper()
	b := unhex(t, hexs)
	if k := wire.Classify(b); k != wire.KindSTUN {
		t.Fatalf("Classify = %v, want STUN", k)
	}
	var x wire.Message
	if err := x.Decode(b); err == nil {
		t.Fatal("the X decoder accepted a STUN message")
	}
	m := new(stun.Message)
	if err := stunx.Decode(b, m); err != nil {
		t.Fatalf("stunx.Decode: %v", err)
	}
	return m
}

func TestRFC5769SampleRequest(t *testing.T) {
	m := decodeSTUN(t, rfc5769Request)
	if m.Type != stun.BindingRequest {
		t.Fatalf("type %v, want Binding request", m.Type)
	}
	if got := m.TransactionID; !bytes.Equal(got[:], unhex(t, txHex)) {
		t.Fatalf("transaction ID %x", got)
	}
	var sw stun.Software
	if err := sw.GetFrom(m); err != nil || sw.String() != "STUN test client" {
		t.Fatalf("SOFTWARE %q, %v", sw, err)
	}
	var user stun.Username
	if err := user.GetFrom(m); err != nil || user.String() != "evtj:h6vY" {
		t.Fatalf("USERNAME %q, %v", user, err)
	}
	prio, err := m.Get(stun.AttrPriority)
	if err != nil || !bytes.Equal(prio, []byte{0x6e, 0x00, 0x01, 0xff}) {
		t.Fatalf("PRIORITY %x, %v", prio, err)
	}
	ctl, err := m.Get(stun.AttrICEControlled)
	if err != nil || !bytes.Equal(ctl, unhex(t, "932ff9b151263b36")) {
		t.Fatalf("ICE-CONTROLLED %x, %v", ctl, err)
	}
	if err := stun.Fingerprint.Check(m); err != nil {
		t.Fatalf("FINGERPRINT: %v", err)
	}
	if err := stun.NewShortTermIntegrity(rfc5769Password).Check(m); err != nil {
		t.Fatalf("MESSAGE-INTEGRITY: %v", err)
	}
	if err := stun.NewShortTermIntegrity("wrong").Check(m); err == nil {
		t.Fatal("MESSAGE-INTEGRITY verified with the wrong password")
	}
	// What ewfd answers to it: the Binding success of stunx, with a
	// FINGERPRINT because the request had one, readable by pion.
	out := stunx.AppendBindingSuccess(nil, m, addr4)
	var resp stun.Message
	if err := stunx.Decode(out, &resp); err != nil {
		t.Fatal(err)
	}
	var xma stun.XORMappedAddress
	if err := xma.GetFrom(&resp); err != nil || !xma.IP.Equal(net.IPv4(192, 0, 2, 1)) || xma.Port != 32853 {
		t.Fatalf("XOR-MAPPED-ADDRESS %v, %v", xma, err)
	}
	if err := stun.Fingerprint.Check(&resp); err != nil {
		t.Fatal(err)
	}
}

func TestRFC5769SampleResponses(t *testing.T) {
	for _, c := range []struct {
		name string
		hex  string
		ip   string
		xma  string // the XOR-MAPPED-ADDRESS attribute, as stunx writes it too
	}{
		{"IPv4", rfc5769ResponseIPv4, "192.0.2.1", "00200008" + "0001a147e112a643"},
		{"IPv6", rfc5769ResponseIPv6, "2001:db8:1234:5678:11:2233:4455:6677", "00200014" + "0002a147" + "0113a9faa5d3f179bc25f4b5bed2b9d9"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := decodeSTUN(t, c.hex)
			if m.Type != stun.BindingSuccess {
				t.Fatalf("type %v", m.Type)
			}
			var sw stun.Software
			if err := sw.GetFrom(m); err != nil || sw.String() != "test vector" {
				t.Fatalf("SOFTWARE %q, %v", sw, err)
			}
			var xma stun.XORMappedAddress
			if err := xma.GetFrom(m); err != nil {
				t.Fatal(err)
			}
			if !xma.IP.Equal(net.ParseIP(c.ip)) || xma.Port != 32853 {
				t.Fatalf("XOR-MAPPED-ADDRESS %v, want %s port 32853", xma, c.ip)
			}
			if err := stun.Fingerprint.Check(m); err != nil {
				t.Fatalf("FINGERPRINT: %v", err)
			}
			if err := stun.NewShortTermIntegrity(rfc5769Password).Check(m); err != nil {
				t.Fatalf("MESSAGE-INTEGRITY: %v", err)
			}
			// stunx's response to the §2.1 request for the same address
			// carries the very same attribute bytes.
			req := decodeSTUN(t, rfc5769Request)
			ap := addr4
			if c.name == "IPv6" {
				ap = addr6
			}
			out := stunx.AppendBindingSuccess(nil, req, ap)
			if !bytes.Contains(out, unhex(t, c.xma)) {
				t.Fatalf("stunx response %x lacks %s", out, c.xma)
			}
		})
	}
}

func TestRFC5769LongTermRequest(t *testing.T) {
	m := decodeSTUN(t, rfc5769RequestLongTerm)
	if m.Type != stun.BindingRequest {
		t.Fatalf("type %v", m.Type)
	}
	var (
		user  stun.Username
		nonce stun.Nonce
		realm stun.Realm
	)
	if err := m.Parse(&user, &nonce, &realm); err != nil {
		t.Fatal(err)
	}
	// The username and password after SASLprep, as the RFC gives them:
	// "マトリックス" (MaTrIx in katakana) and "TheMatrIX".
	const username = "\u30DE\u30C8\u30EA\u30C3\u30AF\u30B9"
	if user.String() != username || nonce.String() != "f//499k954d6OL34oL9FSTvy64sA" || realm.String() != "example.org" {
		t.Fatalf("USERNAME %q NONCE %q REALM %q", user, nonce, realm)
	}
	if err := stun.NewLongTermIntegrity(username, "example.org", "TheMatrIX").Check(m); err != nil {
		t.Fatalf("MESSAGE-INTEGRITY: %v", err)
	}
	if m.Contains(stun.AttrFingerprint) {
		t.Fatal("this vector has no FINGERPRINT")
	}
	// Without FINGERPRINT, the answer has none either.
	if out := stunx.AppendBindingSuccess(nil, m, addr6); len(out) != wire.HeaderSize+24 {
		t.Fatalf("response of %d bytes, want %d (no FINGERPRINT)", len(out), wire.HeaderSize+24)
	}
}

// TestRFC5769FingerprintCatchesCorruption: the strict check refuses each
// vector with its FINGERPRINT's last bit flipped, before pion sees it.
func TestRFC5769FingerprintCatchesCorruption(t *testing.T) {
	for _, v := range []string{rfc5769Request, rfc5769ResponseIPv4, rfc5769ResponseIPv6} {
		b := unhex(t, v)
		b[len(b)-1] ^= 1
		if err := stunx.Check(b); err != stunx.ErrFingerprint {
			t.Fatalf("Check = %v, want ErrFingerprint", err)
		}
	}
}
