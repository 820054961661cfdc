package wire_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// The golden vectors below are written by hand from docs/PROTOCOL.md, not
// produced by the encoder under test. They reuse the transaction ID and the
// addresses of RFC 5769 §2.2 and §2.3, so every XOR-ed address is also
// checked against an independent, published computation:
//
//	transaction ID  b7e7a701 bc34d686 fa87dfae
//	192.0.2.1:32853 port 0x8055^0x2112 = a147, address c0000201^2112a442 = e112a643
//	[2001:db8:1234:5678:11:2233:4455:6677]:32853
//	                address XOR (2112a442 ‖ transaction ID)
//	                = 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
//
// The MACs of the PUNCH vectors were computed outside Go, with
//
//	xxd -r -p <<< "$MAC_INPUT_HEX" | openssl dgst -sha256 -mac HMAC -macopt hexkey:303132…3f
const (
	txHex  = "b7e7a701bc34d686fa87dfae"
	idHex  = "000102030405060708090a0b0c0d0e0f"
	keyHex = "101112131415161718191a1b1c1d1e1f"
	srcHex = "202122232425262728292a2b2c2d2e2f"
	secHex = "303132333435363738393a3b3c3d3e3f"

	// Attribute values, type and length in words first.
	attrID     = "00010004" + idHex
	attrKey    = "00030004" + keyHex
	attrSource = "00040004" + srcHex
	attrSecret = "00050004" + secHex
	udp4       = "00020002" + "0001a147e112a643"                              // NETWORK_ADDRESS udp 192.0.2.1:32853
	tcp4       = "00020002" + "0101a147e112a643"                              // NETWORK_ADDRESS tcp 192.0.2.1:32853
	tcp6       = "00020005" + "0102a147" + "0113a9faa5d3f179bc25f4b5bed2b9d9" // NETWORK_ADDRESS tcp [2001:db8:…]:32853
	cand4      = "00060002" + "0001a147e112a643"                              // CANDIDATE udp 192.0.2.1:32853
	cand6      = "00060005" + "0002a147" + "0113a9faa5d3f179bc25f4b5bed2b9d9" // CANDIDATE udp [2001:db8:…]:32853

	macReq = "cb36aca4b5e0e7105b049b59b3c1c5d7f144b71a61462a38aa353b0464b93038"
	macRes = "9f41636165872f20d4a811a5dbab31ddf3759fb5269a745acaba813301a27869"
	macInd = "9c6a9abe70d6a45201348f701597a478b7773aaa131d43e7b4c5821945229be3"

	// Integrity (docs/PROTOCOL.md §17): TIMESTAMP 1764667309056 ms
	// (2025-12-02 09:21:49.056 UTC) and MACs keyed by KEY 101112…1f,
	// computed outside Go with hexkey:101112131415161718191a1b1c1d1e1f.
	tsHex         = "0000019ade5e3c00"
	attrTimestamp = "00080002" + tsHex
	macBindReq    = "fa3a92dbf716c0902eea42dfafc08832b10fa69f6a8da151e3aa972cb4aec2b5"
	macBindOK     = "e694a6d09b15cee8245d04b9260b3de1e754fb8c3495faf09aa3917423b419a3"
	macQueryReq   = "5b0b6ab6af4e0f34b9c634264490e6c07cf7b76f9612a530a09203a146d3c358"
	macStale      = "e8ad69e8b4bb009f358d8f2796f5d287d8c8890fc9ddc8031623f38909f77d51" // server clock 1764667313116
	macNotBound   = "e7ea4f012161b0c4b9afb71f6bb6e3c829daef1a13e54c08022c713d87dcf9d0"
)

// hdr is a header: message type, length in bytes, cookie, transaction ID.
func hdr(typ, length string) string { return typ + length + "2112a442" + txHex }

func reason(r string) string { return "00000001" + r }

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatalf("bad hex in test: %v", err)
	}
	return b
}

var (
	tx       wire.TransactionID
	testID   wire.ID
	testKey  wire.Key
	testSrc  wire.ID
	testSec  wire.Secret
	addr4    = netip.MustParseAddrPort("192.0.2.1:32853")
	addr6    = netip.MustParseAddrPort("[2001:db8:1234:5678:11:2233:4455:6677]:32853")
	mustHex  = func(s string) []byte { b, _ := hex.DecodeString(s); return b }
	_        = copy(tx[:], mustHex(txHex))
	_        = copy(testID[:], mustHex(idHex))
	_        = copy(testKey[:], mustHex(keyHex))
	_        = copy(testSrc[:], mustHex(srcHex))
	_        = copy(testSec[:], mustHex(secHex))
	macReqV  = [wire.MACSize]byte(mustHex(macReq))
	macResV  = [wire.MACSize]byte(mustHex(macRes))
	macIndV  = [wire.MACSize]byte(mustHex(macInd))
	macKeyed = func(s string) func(*wire.Message) { return withMAC([wire.MACSize]byte(mustHex(s))) }
	udpAddr4 = wire.Address{Transport: wire.TransportUDP, AddrPort: addr4}
	tcpAddr4 = wire.Address{Transport: wire.TransportTCP, AddrPort: addr4}
	tcpAddr6 = wire.Address{Transport: wire.TransportTCP, AddrPort: addr6}
	udpAddr6 = wire.Address{Transport: wire.TransportUDP, AddrPort: addr6}
)

// msg builds an expected message with the setters, the way a server or
// client would.
func msg(m wire.Method, c wire.Class, set ...func(*wire.Message)) wire.Message {
	v := wire.Message{Type: wire.Type{Method: m, Class: c}, TransactionID: tx}
	for _, f := range set {
		f(&v)
	}
	return v
}

func withID(m *wire.Message)     { m.SetID(testID) }
func withKey(m *wire.Message)    { m.SetKey(testKey) }
func withSource(m *wire.Message) { m.SetSourceID(testSrc) }
func withSecret(m *wire.Message) { m.SetSecret(testSec) }
func withTS(ms uint64) func(*wire.Message) {
	return func(m *wire.Message) { m.SetTimestamp(ms) }
}
func withReason(r wire.Reason) func(*wire.Message) {
	return func(m *wire.Message) { m.SetReason(r) }
}
func withMAC(mac [wire.MACSize]byte) func(*wire.Message) {
	return func(m *wire.Message) { m.SetMAC(mac) }
}
func withAddr(a wire.Address) func(*wire.Message) {
	return func(m *wire.Message) {
		if err := m.AddAddress(a); err != nil {
			panic(err)
		}
	}
}
func withCand(a wire.Address) func(*wire.Message) {
	return func(m *wire.Message) {
		if err := m.AddCandidate(a); err != nil {
			panic(err)
		}
	}
}

type golden struct {
	name string
	hex  string
	want wire.Message
}

// goldens holds one vector per X message kind of docs/PROTOCOL.md §5, each
// in canonical attribute order (the order AppendTo writes).
var goldens = []golden{
	{"register-request", hdr("c002", "0014") + attrID,
		msg(wire.MethodRegister, wire.ClassRequest, withID)},
	{"register-success", hdr("c102", "0014") + attrKey,
		msg(wire.MethodRegister, wire.ClassSuccess, withKey)},
	{"register-error-id-conflict", hdr("c112", "0008") + reason("00000004"),
		msg(wire.MethodRegister, wire.ClassError, withReason(wire.ReasonIDConflict))},
	{"register-error-limit", hdr("c112", "0008") + reason("00000007"),
		msg(wire.MethodRegister, wire.ClassError, withReason(wire.ReasonRegistrationLimit))},
	{"bind-request-udp4", hdr("c003", "0034") + attrID + attrKey + udp4,
		msg(wire.MethodBind, wire.ClassRequest, withID, withKey, withAddr(udpAddr4))},
	{"bind-request-tcp4", hdr("c003", "0034") + attrID + attrKey + tcp4,
		msg(wire.MethodBind, wire.ClassRequest, withID, withKey, withAddr(tcpAddr4))},
	{"bind-request-tcp6", hdr("c003", "0040") + attrID + attrKey + tcp6,
		msg(wire.MethodBind, wire.ClassRequest, withID, withKey, withAddr(tcpAddr6))},
	{"bind-success", hdr("c103", "0000"),
		msg(wire.MethodBind, wire.ClassSuccess)},
	{"bind-error-key-mismatch", hdr("c113", "0008") + reason("00000003"),
		msg(wire.MethodBind, wire.ClassError, withReason(wire.ReasonKeyMismatch))},
	{"bind-error-address-mismatch", hdr("c113", "0008") + reason("00000005"),
		msg(wire.MethodBind, wire.ClassError, withReason(wire.ReasonAddressMismatch))},
	{"query-request", hdr("c004", "0014") + attrID,
		msg(wire.MethodQuery, wire.ClassRequest, withID)},
	{"query-request-introduction", hdr("c004", "003c") + attrID + attrSource + attrKey,
		msg(wire.MethodQuery, wire.ClassRequest, withID, withSource, withKey)},
	{"query-request-introduction-candidates", hdr("c004", "0060") + attrID + attrSource + attrKey + cand4 + cand6,
		msg(wire.MethodQuery, wire.ClassRequest, withID, withSource, withKey, withCand(udpAddr4), withCand(udpAddr6))},
	{"query-success-udp4", hdr("c104", "000c") + udp4,
		msg(wire.MethodQuery, wire.ClassSuccess, withAddr(udpAddr4))},
	{"query-success-udp4-tcp6", hdr("c104", "0024") + udp4 + tcp6,
		msg(wire.MethodQuery, wire.ClassSuccess, withAddr(udpAddr4), withAddr(tcpAddr6))},
	{"query-success-introduction", hdr("c104", "0020") + udp4 + attrSecret,
		msg(wire.MethodQuery, wire.ClassSuccess, withAddr(udpAddr4), withSecret)},
	{"query-error-not-registered", hdr("c114", "0008") + reason("00000002"),
		msg(wire.MethodQuery, wire.ClassError, withReason(wire.ReasonNotRegistered))},
	{"query-error-not-bound", hdr("c114", "0008") + reason("00000006"),
		msg(wire.MethodQuery, wire.ClassError, withReason(wire.ReasonNotBound))},
	{"query-error-rate-limited", hdr("c114", "0008") + reason("00000008"),
		msg(wire.MethodQuery, wire.ClassError, withReason(wire.ReasonRateLimited))},
	{"introduce-indication", hdr("c015", "0034") + attrSource + udp4 + attrSecret,
		msg(wire.MethodIntroduce, wire.ClassIndication, withSource, withAddr(udpAddr4), withSecret)},
	{"introduce-indication-candidates", hdr("c015", "004c") + attrSource + udp4 + cand6 + attrSecret,
		msg(wire.MethodIntroduce, wire.ClassIndication, withSource, withAddr(udpAddr4), withCand(udpAddr6), withSecret)},
	{"punch-request", hdr("c006", "0038") + attrSource + "00070008" + macReq,
		msg(wire.MethodPunch, wire.ClassRequest, withSource, withMAC(macReqV))},
	{"punch-success", hdr("c106", "0038") + attrSource + "00070008" + macRes,
		msg(wire.MethodPunch, wire.ClassSuccess, withSource, withMAC(macResV))},
	{"punch-indication", hdr("c016", "0038") + attrSource + "00070008" + macInd,
		msg(wire.MethodPunch, wire.ClassIndication, withSource, withMAC(macIndV))},
	{"punch-error-unknown-method", hdr("c116", "0008") + reason("00000000"),
		msg(wire.MethodPunch, wire.ClassError, withReason(wire.ReasonUnknownMethod))},
	{"unknown-method-error", hdr("c11a", "0008") + reason("00000000"),
		msg(0x00a, wire.ClassError, withReason(wire.ReasonUnknownMethod))},
	{"introduce-error-unknown-method", hdr("c115", "0008") + reason("00000000"),
		msg(wire.MethodIntroduce, wire.ClassError, withReason(wire.ReasonUnknownMethod))},
	{"bind-error-invalid-attributes", hdr("c113", "0008") + reason("00000001"),
		msg(wire.MethodBind, wire.ClassError, withReason(wire.ReasonInvalidAttributes))},
	{"query-error-server-error", hdr("c114", "0008") + reason("00000009"),
		msg(wire.MethodQuery, wire.ClassError, withReason(wire.ReasonServerError))},
	{"register-error-unknown-reason", hdr("c112", "0008") + reason("11111111"),
		msg(wire.MethodRegister, wire.ClassError, withReason(wire.ReasonUnknown))},

	// Integrity: the KEY proven, not sent (§17).
	{"bind-request-integrity", hdr("c003", "0050") + attrID + udp4 + attrTimestamp + "00070008" + macBindReq,
		msg(wire.MethodBind, wire.ClassRequest, withID, withAddr(udpAddr4), withTS(0x19ade5e3c00), macKeyed(macBindReq))},
	{"bind-success-integrity", hdr("c103", "0024") + "00070008" + macBindOK,
		msg(wire.MethodBind, wire.ClassSuccess, macKeyed(macBindOK))},
	{"bind-error-address-mismatch-integrity", hdr("c113", "002c") + reason("00000005") + "00070008" + macNotBound,
		msg(wire.MethodBind, wire.ClassError, withReason(wire.ReasonAddressMismatch), macKeyed(macNotBound))},
	{"query-request-introduction-integrity", hdr("c004", "0058") + attrID + attrSource + attrTimestamp + "00070008" + macQueryReq,
		msg(wire.MethodQuery, wire.ClassRequest, withID, withSource, withTS(0x19ade5e3c00), macKeyed(macQueryReq))},
	{"query-error-stale", hdr("c114", "0038") + reason("0000000c") + "00080002" + "0000019ade5e4bdc" + "00070008" + macStale,
		msg(wire.MethodQuery, wire.ClassError, withReason(wire.ReasonStale), withTS(0x19ade5e4bdc), macKeyed(macStale))},
	{"bind-error-integrity-required", hdr("c113", "0008") + reason("0000000b"),
		msg(wire.MethodBind, wire.ClassError, withReason(wire.ReasonIntegrityRequired))},
	{"signal-request", hdr("c007", "0084") + attrID + attrSource + attrKey + cand4 + relayed6 + "000c0008" + sigMAC,
		msg(wire.MethodSignal, wire.ClassRequest, withID, withSource, withKey, withCand(udpAddr4), withRelayed(udpAddr6), withSignalMAC)},
	{"signal-indication", hdr("c017", "005c") + attrSource + cand4 + relayed6 + "000c0008" + sigMAC,
		msg(wire.MethodSignal, wire.ClassIndication, withSource, withCand(udpAddr4), withRelayed(udpAddr6), withSignalMAC)},
	{"signal-request-refused", hdr("c007", "0068") + attrID + attrSource + attrKey + "00120001" + "00000010" + "000c0008" + sigMACRefused,
		msg(wire.MethodSignal, wire.ClassRequest, withID, withSource, withKey, withRefused, withSignalMACOf(sigMACRefused))},
	{"signal-indication-refused", hdr("c017", "0040") + attrSource + "00120001" + "00000010" + "000c0008" + sigMACRefused,
		msg(wire.MethodSignal, wire.ClassIndication, withSource, withRefused, withSignalMACOf(sigMACRefused))},
	{"signal-indication-empty", hdr("c017", "0038") + attrSource + "000c0008" + sigMACEmpty,
		msg(wire.MethodSignal, wire.ClassIndication, withSource, withSignalMACOf(sigMACEmpty))},
	{"signal-success", hdr("c107", "0000"),
		msg(wire.MethodSignal, wire.ClassSuccess)},
	{"signal-error-peer-unreachable", hdr("c117", "0008") + reason("0000000f"),
		msg(wire.MethodSignal, wire.ClassError, withReason(wire.ReasonPeerUnreachable))},
}

// sameMessage compares two messages field by field, Raw excepted: Raw
// only says which buffer a message was decoded from.
func sameMessage(a, b wire.Message) bool {
	a.Raw, b.Raw = nil, nil
	return reflect.DeepEqual(a, b)
}

func TestGoldenDecode(t *testing.T) {
	for _, g := range goldens {
		t.Run(g.name, func(t *testing.T) {
			b := unhex(t, g.hex)
			if got := wire.Classify(b); got != wire.KindX {
				t.Fatalf("Classify = %v, want X", got)
			}
			var m wire.Message
			if err := m.Decode(b); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if err := m.Check(); err != nil {
				t.Fatalf("Check: %v", err)
			}
			if !sameMessage(m, g.want) {
				t.Fatalf("Decode =\n%+v\nwant\n%+v", m, g.want)
			}
			if &m.Raw[0] != &b[0] || len(m.Raw) != len(b) {
				t.Fatal("Raw does not alias the decoded buffer")
			}
		})
	}
}

func TestGoldenEncode(t *testing.T) {
	prefix := []byte("prefix that must survive")
	for _, g := range goldens {
		t.Run(g.name, func(t *testing.T) {
			want := unhex(t, g.hex)
			m := g.want
			if got := m.Len(); got != len(want) {
				t.Fatalf("Len = %d, want %d", got, len(want))
			}
			out := m.AppendTo(append([]byte(nil), prefix...))
			if !bytes.HasPrefix(out, prefix) {
				t.Fatal("AppendTo changed the prefix")
			}
			if got := out[len(prefix):]; !bytes.Equal(got, want) {
				t.Fatalf("AppendTo =\n%x\nwant\n%x", got, want)
			}
		})
	}
}

// TestGoldenTypeValues pins the 16-bit type of every method × class the
// spec defines (docs/PROTOCOL.md §5.1), computed by hand from the bit
// layout: C0 is bit 4, C1 bit 8, M0..M3 bits 0..3.
func TestGoldenTypeValues(t *testing.T) {
	for _, c := range []struct {
		typ  wire.Type
		want uint16
	}{
		{wire.Type{Method: wire.MethodRegister, Class: wire.ClassRequest}, 0xC002},
		{wire.Type{Method: wire.MethodRegister, Class: wire.ClassSuccess}, 0xC102},
		{wire.Type{Method: wire.MethodRegister, Class: wire.ClassError}, 0xC112},
		{wire.Type{Method: wire.MethodBind, Class: wire.ClassRequest}, 0xC003},
		{wire.Type{Method: wire.MethodBind, Class: wire.ClassSuccess}, 0xC103},
		{wire.Type{Method: wire.MethodBind, Class: wire.ClassError}, 0xC113},
		{wire.Type{Method: wire.MethodQuery, Class: wire.ClassRequest}, 0xC004},
		{wire.Type{Method: wire.MethodQuery, Class: wire.ClassSuccess}, 0xC104},
		{wire.Type{Method: wire.MethodQuery, Class: wire.ClassError}, 0xC114},
		{wire.Type{Method: wire.MethodIntroduce, Class: wire.ClassIndication}, 0xC015},
		{wire.Type{Method: wire.MethodPunch, Class: wire.ClassRequest}, 0xC006},
		{wire.Type{Method: wire.MethodPunch, Class: wire.ClassIndication}, 0xC016},
		{wire.Type{Method: wire.MethodPunch, Class: wire.ClassSuccess}, 0xC106},
		{wire.Type{Method: wire.MethodPunch, Class: wire.ClassError}, 0xC116},
		{wire.Type{Method: wire.MethodSignal, Class: wire.ClassRequest}, 0xC007},
		{wire.Type{Method: wire.MethodSignal, Class: wire.ClassIndication}, 0xC017},
		{wire.Type{Method: wire.MethodSignal, Class: wire.ClassSuccess}, 0xC107},
		{wire.Type{Method: wire.MethodSignal, Class: wire.ClassError}, 0xC117},
		// Bits above M3 land past the class bits: M4 is bit 5, M7 bit 9.
		{wire.Type{Method: 0x010, Class: wire.ClassRequest}, 0xC020},
		{wire.Type{Method: 0x080, Class: wire.ClassRequest}, 0xC200},
		{wire.Type{Method: 0xFFF, Class: wire.ClassError}, 0xFFFF},
	} {
		if got := c.typ.Value(); got != c.want {
			t.Errorf("%v: Value = %#04x, want %#04x", c.typ, got, c.want)
		}
	}
}

// TestGoldenMAC proves the MAC rule on the PUNCH vectors: HMAC-SHA256
// keyed by SECRET over MACInput (header with the final length, then every
// attribute before MAC) is the MAC attribute's value, and PutMAC writes it
// where the receiver looks.
func TestGoldenMAC(t *testing.T) {
	for _, g := range goldens {
		if !g.want.Has(wire.AttrMAC) {
			continue
		}
		// PUNCH is keyed by the introduction's SECRET, everything else
		// by the client's KEY.
		key := testKey[:]
		if g.want.Type.Method == wire.MethodPunch {
			key = testSec[:]
		}
		t.Run(g.name, func(t *testing.T) {
			b := unhex(t, g.hex)
			in, ok := wire.MACInput(b)
			if !ok {
				t.Fatal("MACInput: not ok")
			}
			if len(in) != len(b)-4-wire.MACSize {
				t.Fatalf("MACInput covers %d bytes, want %d", len(in), len(b)-4-wire.MACSize)
			}
			h := hmac.New(sha256.New, key)
			h.Write(in)
			sum := h.Sum(nil)
			if !bytes.Equal(sum, g.want.MAC[:]) {
				t.Fatalf("HMAC = %x, want %x", sum, g.want.MAC)
			}
			// A sender: encode with a zero MAC, then PutMAC.
			m := g.want
			m.SetMAC([wire.MACSize]byte{})
			out := m.AppendTo(nil)
			in2, _ := wire.MACInput(out)
			h.Reset()
			h.Write(in2)
			wire.PutMAC(out, h.Sum(nil))
			if !bytes.Equal(out, b) {
				t.Fatalf("sender's bytes\n%x\nwant\n%x", out, b)
			}
		})
	}
	if _, ok := wire.MACInput(make([]byte, wire.HeaderSize+4+wire.MACSize-1)); ok {
		t.Error("MACInput accepted a message too short to end in a MAC")
	}
}

// TestGoldenOptionalAttributeUnderMAC: a comprehension-optional attribute
// before MAC is skipped by Decode but still covered by the MAC, since the
// receiver MACs the bytes it received (m.Raw), not a re-encoding.
func TestGoldenOptionalAttributeUnderMAC(t *testing.T) {
	const mac = "622b30ec1b2ad4c690bcdd0241a847145d0787861a02d9264aaaea246c1f3e83"
	b := unhex(t, hdr("c006", "0040")+attrSource+"80010001deadbeef"+"00070008"+mac)
	var m wire.Message
	if err := m.Decode(b); err != nil {
		t.Fatal(err)
	}
	if err := m.Check(); err != nil {
		t.Fatal(err)
	}
	in, _ := wire.MACInput(m.Raw)
	h := hmac.New(sha256.New, testSec[:])
	h.Write(in)
	if !bytes.Equal(h.Sum(nil), m.MAC[:]) {
		t.Fatal("MAC over the received bytes does not verify")
	}
}
