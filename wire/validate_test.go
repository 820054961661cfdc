package wire

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// This file proves every validation rule of docs/PROTOCOL.md §6 with a
// message that breaks that rule and only it, and checks that the specific
// error (not just its kind) comes back, so a test cannot pass because an
// earlier rule fired.

const (
	vTx  = "b7e7a701bc34d686fa87dfae"
	vID  = "00010004" + "000102030405060708090a0b0c0d0e0f"
	vKey = "00030004" + "101112131415161718191a1b1c1d1e1f"
	vSrc = "00040004" + "202122232425262728292a2b2c2d2e2f"
	vSec = "00050004" + "303132333435363738393a3b3c3d3e3f"
	vMAC = "00070008" + "0000000000000000000000000000000000000000000000000000000000000000"
	vRsn = "00000001" + "00000001"
	vNA4 = "00020002" + "0001a147e112a643"
	vNT4 = "00020002" + "0101a147e112a643"
	vNA6 = "00020005" + "0002a147" + "0113a9faa5d3f179bc25f4b5bed2b9d9"
	vCA4 = "00060002" + "0001a147e112a643"
	vTS  = "00080002" + "0000019ade5e3c00"
	vRA4 = "000b0002" + "0001a147e112a643"
	vSMC = "000c0008" + "0000000000000000000000000000000000000000000000000000000000000000"
)

// xmsg builds a message of type typ (4 hex digits) around body (hex),
// with the header length computed from the body.
func xmsg(t testing.TB, typ string, body ...string) []byte {
	t.Helper()
	b, err := hex.DecodeString(typ + "0000" + "2112a442" + vTx + strings.Join(body, ""))
	if err != nil {
		t.Fatal(err)
	}
	binary.BigEndian.PutUint16(b[2:4], uint16(len(b)-HeaderSize))
	return b
}

func TestDecodeHeaderRules(t *testing.T) {
	good := xmsg(t, "c002", vID)
	big := make([]byte, MaxMessageSize+4)
	copy(big, good[:HeaderSize])
	binary.BigEndian.PutUint16(big[2:4], uint16(len(big)-HeaderSize))
	for _, c := range []struct {
		name string
		b    []byte
		want error
	}{
		{"empty", nil, errShortHeader},
		{"19 bytes", good[:19], errShortHeader},
		{"over MaxMessageSize", big, errTooLarge},
		{"leading bits 00 (STUN)", patch(good, 0, 0x00), errNotX},
		{"leading bits 01", patch(good, 0, 0x40), errNotX},
		{"leading bits 10", patch(good, 0, 0x80), errNotX},
		{"wrong cookie", patch(good, 7, 0x43), errBadCookie},
		{"length not a multiple of 4", append(patch(good, 3, 0x15), 0), errLengthNotAligned},
		{"length longer than message", patch(good, 3, 0x18), errLengthMismatch},
		{"length shorter than message", patch(good, 3, 0x10), errLengthMismatch},
		{"trailing bytes after message", append(xmsg(t, "c002", vID), 0, 0, 0, 0), errLengthMismatch},
	} {
		t.Run(c.name, func(t *testing.T) {
			var m Message
			m.SetID(ID{1})
			err := m.Decode(c.b)
			if err != c.want || !errors.Is(err, ErrInvalidHeader) {
				t.Fatalf("Decode = %v, want %v (ErrInvalidHeader)", err, c.want)
			}
			if m.Has(AttrID) || m.Raw != nil || m.Type != (Type{}) {
				t.Fatal("Decode left data in m after a header error")
			}
		})
	}
}

func patch(b []byte, i int, v byte) []byte {
	c := append([]byte(nil), b...)
	c[i] = v
	return c
}

func TestDecodeAttributeRules(t *testing.T) {
	mapped := "00020005" + "0002a147" + hex.EncodeToString(xorV6(netip.MustParseAddr("::ffff:192.0.2.1")))
	for _, c := range []struct {
		name string
		typ  string
		body []string
		want error
	}{
		{"value runs past end", "c002", []string{"00010005" + vID[8:]}, errAttrTruncated},
		{"value runs past end by a word", "c002", []string{vID, "00030001"}, errAttrTruncated},
		{"huge length", "c002", []string{"0001ffff" + vID[8:]}, errAttrTruncated},
		{"ERROR_REASON 0 words", "c112", []string{"00000000"}, errAttrLength},
		{"ERROR_REASON 2 words", "c112", []string{"00000002" + "0000000100000000"}, errAttrLength},
		{"ID 3 words", "c002", []string{"00010003" + vID[8:32]}, errAttrLength},
		{"ID 5 words", "c002", []string{"00010005" + vID[8:] + "00000000"}, errAttrLength},
		{"KEY 3 words", "c102", []string{"00030003" + vKey[8:32]}, errAttrLength},
		{"SOURCE_ID 5 words", "c006", []string{"00040005" + vSrc[8:] + "00000000", vMAC}, errAttrLength},
		{"SECRET 3 words", "c104", []string{vNA4, "00050003" + vSec[8:32]}, errAttrLength},
		{"MAC 7 words", "c006", []string{vSrc, "00070007" + vMAC[8:64]}, errAttrLength},
		{"MAC 9 words", "c006", []string{vSrc, "00070009" + vMAC[8:] + "00000000"}, errAttrLength},
		{"NETWORK_ADDRESS 0 words", "c104", []string{"00020000"}, errAttrLength},
		{"NETWORK_ADDRESS IPv4 in 5 words", "c104", []string{"00020005" + "0001a147" + "e112a643" + strings.Repeat("00", 12)}, errAttrLength},
		{"NETWORK_ADDRESS IPv6 in 2 words", "c104", []string{"00020002" + "0002a147" + "0113a9fa"}, errAttrLength},
		{"NETWORK_ADDRESS IPv4 in 1 word", "c104", []string{"00020001" + "0001a147"}, errAttrLength},
		{"CANDIDATE IPv6 in 4 words", "c004", []string{vID, vSrc, vKey, "00060004" + "0002a147" + strings.Repeat("00", 12)}, errAttrLength},
		{"NETWORK_ADDRESS family 0", "c104", []string{"00020002" + "0000a147e112a643"}, errBadFamily},
		{"NETWORK_ADDRESS family 3", "c104", []string{"00020002" + "0003a147e112a643"}, errBadFamily},
		{"NETWORK_ADDRESS IPv4-mapped IPv6", "c104", []string{mapped}, errBadFamily},
		{"CANDIDATE IPv4-mapped IPv6", "c004", []string{vID, vSrc, vKey, "0006" + mapped[4:]}, errBadFamily},
		{"NETWORK_ADDRESS transport 2", "c104", []string{"00020002" + "0201a147e112a643"}, errBadTransport},
		{"NETWORK_ADDRESS transport ff", "c104", []string{"00020002" + "ff01a147e112a643"}, errBadTransport},
		{"CANDIDATE transport 2", "c004", []string{vID, vSrc, vKey, "00060002" + "0201a147e112a643"}, errBadTransport},
		{"TIMESTAMP 1 word", "c003", []string{vID, vNA4, "00080001" + "00000000", vMAC}, errAttrLength},
		{"TIMESTAMP 3 words", "c003", []string{vID, vNA4, "00080003" + vTS[8:] + "00000000", vMAC}, errAttrLength},
		{"duplicate TIMESTAMP", "c003", []string{vID, vNA4, vTS, vTS, vMAC}, errDuplicate},
		{"TIMESTAMP after MAC", "c003", []string{vID, vNA4, vMAC, vTS}, errAfterMAC},
		{"unknown required 0x0100", "c002", []string{vID, "01000000"}, errUnknownRequired},
		{"unknown required 0x7fff", "c002", []string{"7fff0001" + "00000000", vID}, errUnknownRequired},
		{"duplicate ERROR_REASON", "c112", []string{vRsn, vRsn}, errDuplicate},
		{"duplicate ID", "c002", []string{vID, vID}, errDuplicate},
		{"duplicate KEY", "c102", []string{vKey, vKey}, errDuplicate},
		{"duplicate SOURCE_ID", "c006", []string{vSrc, vSrc, vMAC}, errDuplicate},
		{"duplicate SECRET", "c104", []string{vNA4, vSec, vSec}, errDuplicate},
		{"duplicate MAC", "c006", []string{vSrc, vMAC, vMAC}, errAfterMAC},
		{"NETWORK_ADDRESS twice for udp", "c104", []string{vNA4, vNA6}, errDuplicate},
		{"NETWORK_ADDRESS twice for tcp", "c104", []string{vNT4, vNT4}, errDuplicate},
		{"nine CANDIDATEs", "c004", []string{vID, vSrc, vKey, strings.Repeat(vCA4, MaxCandidates+1)}, errTooManyCandidates},
		{"attribute after MAC", "c006", []string{vMAC, vSrc}, errAfterMAC},
		{"optional attribute after MAC", "c006", []string{vSrc, vMAC, "80000000"}, errAfterMAC},
	} {
		t.Run(c.name, func(t *testing.T) {
			b := xmsg(t, c.typ, c.body...)
			var m Message
			err := m.Decode(b)
			if err != c.want || !errors.Is(err, ErrInvalidAttributes) {
				t.Fatalf("Decode = %v, want %v (ErrInvalidAttributes)", err, c.want)
			}
			// The header was good: the error response can be built.
			if m.Type.Value() != binary.BigEndian.Uint16(b[0:2]) || string(m.TransactionID[:]) != string(b[8:20]) {
				t.Fatalf("type %v / transaction ID not kept after an attribute error", m.Type)
			}
		})
	}
}

// xorV6 returns the 16 address bytes of a as NETWORK_ADDRESS carries them
// with vTx, so that a test can put an address on the wire in IPv6 form
// even when it is IPv4-mapped.
func xorV6(a netip.Addr) []byte {
	tx, _ := hex.DecodeString("2112a442" + vTx)
	v := a.As16()
	for i := range v {
		v[i] ^= tx[i]
	}
	return v[:]
}

func TestCheckRules(t *testing.T) {
	const (
		ok         = "ok"
		missing    = "missing"
		unexpected = "unexpected"
		method     = "method"
		class      = "class"
	)
	wantErr := map[string]error{ok: nil, missing: errMissing, unexpected: errUnexpected, method: errMethod, class: errClass}
	for _, c := range []struct {
		name string
		typ  string
		body []string
		want string
	}{
		// REGISTER
		{"register request", "c002", []string{vID}, ok},
		{"register request without ID", "c002", nil, missing},
		{"register request with KEY", "c002", []string{vID, vKey}, unexpected},
		{"register success", "c102", []string{vKey}, ok},
		{"register success without KEY", "c102", nil, missing},
		{"register success with ID", "c102", []string{vID, vKey}, unexpected},
		{"register indication", "c012", []string{vID}, class},
		// BIND
		{"bind request", "c003", []string{vID, vKey, vNA4}, ok},
		{"bind request, attributes in any order", "c003", []string{vNA4, vKey, vID}, ok},
		{"bind request without ID", "c003", []string{vKey, vNA4}, missing},
		{"bind request without KEY", "c003", []string{vID, vNA4}, missing},
		{"bind request without NETWORK_ADDRESS", "c003", []string{vID, vKey}, missing},
		{"bind request with two NETWORK_ADDRESSes", "c003", []string{vID, vKey, vNA4, vNT4}, unexpected},
		{"bind request with SOURCE_ID", "c003", []string{vID, vKey, vNA4, vSrc}, unexpected},
		{"bind request with integrity", "c003", []string{vID, vNA4, vTS, vMAC}, ok},
		{"bind request with KEY and integrity", "c003", []string{vID, vKey, vNA4, vTS, vMAC}, unexpected},
		{"bind request with KEY and MAC", "c003", []string{vID, vKey, vNA4, vMAC}, unexpected},
		{"bind request with KEY and TIMESTAMP", "c003", []string{vID, vKey, vNA4, vTS}, unexpected},
		{"bind request MAC without TIMESTAMP", "c003", []string{vID, vNA4, vMAC}, missing},
		{"bind request TIMESTAMP without MAC", "c003", []string{vID, vNA4, vTS}, missing},
		{"bind success", "c103", nil, ok},
		{"bind success with MAC", "c103", []string{vMAC}, ok},
		{"bind success with TIMESTAMP", "c103", []string{vTS, vMAC}, unexpected},
		{"bind success with NETWORK_ADDRESS", "c103", []string{vNA4}, unexpected},
		{"bind indication", "c013", nil, class},
		// QUERY
		{"query request", "c004", []string{vID}, ok},
		{"query request introduction", "c004", []string{vID, vSrc, vKey}, ok},
		{"query request introduction with candidates", "c004", []string{vID, vSrc, vKey, vCA4, vCA4}, ok},
		{"query request without ID", "c004", []string{vSrc, vKey}, missing},
		{"query request SOURCE_ID without KEY", "c004", []string{vID, vSrc}, missing},
		{"query request KEY without SOURCE_ID", "c004", []string{vID, vKey}, missing},
		{"query request CANDIDATE without introduction", "c004", []string{vID, vCA4}, unexpected},
		{"query request introduction with integrity", "c004", []string{vID, vSrc, vCA4, vTS, vMAC}, ok},
		{"query request integrity without SOURCE_ID", "c004", []string{vID, vTS, vMAC}, missing},
		{"query request introduction with KEY and integrity", "c004", []string{vID, vSrc, vKey, vTS, vMAC}, unexpected},
		{"query request introduction MAC without TIMESTAMP", "c004", []string{vID, vSrc, vMAC}, missing},
		{"query success introduction with MAC", "c104", []string{vNA4, vSec, vMAC}, ok},
		{"query request with SECRET", "c004", []string{vID, vSec}, unexpected},
		{"query request with NETWORK_ADDRESS", "c004", []string{vID, vNA4}, unexpected},
		{"query success", "c104", []string{vNA4}, ok},
		{"query success two transports", "c104", []string{vNT4, vNA6}, ok},
		{"query success introduction", "c104", []string{vNA4, vSec}, ok},
		{"query success without NETWORK_ADDRESS", "c104", []string{vSec}, missing},
		{"query success with ID", "c104", []string{vNA4, vID}, unexpected},
		{"query indication", "c014", []string{vID}, class},
		// INTRODUCE
		{"introduce indication", "c015", []string{vSrc, vSec, vNA4}, ok},
		{"introduce indication with candidates", "c015", []string{vSrc, vSec, vNA4, vCA4}, ok},
		{"introduce indication without SOURCE_ID", "c015", []string{vSec, vNA4}, missing},
		{"introduce indication without SECRET", "c015", []string{vSrc, vNA4}, missing},
		{"introduce indication without NETWORK_ADDRESS", "c015", []string{vSrc, vSec}, missing},
		{"introduce indication with KEY", "c015", []string{vSrc, vSec, vNA4, vKey}, unexpected},
		{"introduce request", "c005", []string{vSrc, vSec, vNA4}, class},
		{"introduce success", "c105", []string{vSrc, vSec, vNA4}, class},
		// PUNCH
		{"punch request", "c006", []string{vSrc, vMAC}, ok},
		{"punch success", "c106", []string{vSrc, vMAC}, ok},
		{"punch indication", "c016", []string{vSrc, vMAC}, ok},
		{"punch request without MAC", "c006", []string{vSrc}, missing},
		{"punch request without SOURCE_ID", "c006", []string{vMAC}, missing},
		{"punch request with ID", "c006", []string{vID, vSrc, vMAC}, unexpected},
		// SIGNAL
		{"signal request", "c007", []string{vID, vSrc, vKey, vSMC}, ok},
		{"signal request with candidates and relayed", "c007", []string{vID, vSrc, vKey, vCA4, vRA4, vSMC}, ok},
		{"signal request without SIGNAL_MAC", "c007", []string{vID, vSrc, vKey, vCA4}, missing},
		{"signal request without KEY", "c007", []string{vID, vSrc, vSMC}, missing},
		{"signal request with TIMESTAMP and MAC", "c007", []string{vID, vSrc, vCA4, vSMC, vTS, vMAC}, ok},
		{"signal request with KEY and MAC", "c007", []string{vID, vSrc, vKey, vSMC, vTS, vMAC}, unexpected},
		{"signal request without ID", "c007", []string{vSrc, vKey, vSMC}, missing},
		{"signal request with SECRET", "c007", []string{vID, vSrc, vKey, vSec, vSMC}, unexpected},
		{"signal indication", "c017", []string{vSrc, vCA4, vRA4, vSMC}, ok},
		{"signal indication with NAT_CLASS", "c017", []string{vSrc, vCA4, "000a0001" + "33300000", vSMC}, ok},
		{"signal indication with REFUSED", "c017", []string{vSrc, "00120001" + "00000010", vSMC}, ok},
		{"signal request with REFUSED", "c007", []string{vID, vSrc, vKey, "00120001" + "00000010", vSMC}, ok},
		{"REFUSED outside signal", "c003", []string{vID, vKey, vNA4, "00120001" + "00000010"}, unexpected},
		{"signal indication with KEY", "c017", []string{vSrc, vKey, vSMC}, unexpected},
		{"signal indication with ID", "c017", []string{vID, vSrc, vSMC}, unexpected},
		{"signal indication without SOURCE_ID", "c017", []string{vSMC}, missing},
		{"signal success", "c107", nil, ok},
		{"signal success with candidate", "c107", []string{vCA4}, unexpected},
		{"relayed outside signal", "c015", []string{vSrc, vSec, vNA4, vRA4}, unexpected},
		// Error responses, any method
		{"register error", "c112", []string{vRsn}, ok},
		{"bind error", "c113", []string{vRsn}, ok},
		{"query error", "c114", []string{vRsn}, ok},
		{"introduce error", "c115", []string{vRsn}, ok},
		{"punch error", "c116", []string{vRsn}, ok},
		{"unknown method error", "c11a", []string{vRsn}, ok},
		{"error without ERROR_REASON", "c112", nil, missing},
		{"error with ID", "c112", []string{vRsn, vID}, unexpected},
		{"error with MAC", "c113", []string{vRsn, vMAC}, ok},
		{"error with TIMESTAMP and MAC", "c114", []string{vRsn, vTS, vMAC}, ok},
		{"success with ERROR_REASON", "c102", []string{vKey, vRsn}, unexpected},
		// Unknown methods, requests and the rest
		{"method 0x000", "c000", nil, method},
		{"method 0x001 (STUN Binding's)", "c001", nil, method},
		{"method 0x07f", "c0ef", []string{vID}, method},
		{"method 0xfff", "feef", nil, method},
		{"unknown method indication", "c0ff", nil, method},
		{"unknown method success", "c1ef", nil, method},
		// Comprehension-optional attributes never count.
		{"register request with optional attributes", "c002", []string{"80000000", vID, "ffff0002" + "0000000000000000"}, ok},
	} {
		t.Run(c.name, func(t *testing.T) {
			var m Message
			if err := m.Decode(xmsg(t, c.typ, c.body...)); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			err := m.Check()
			if err != wantErr[c.want] {
				t.Fatalf("Check = %v, want %v", err, wantErr[c.want])
			}
			switch c.want {
			case missing, unexpected:
				if !errors.Is(err, ErrInvalidAttributes) {
					t.Fatalf("%v is not ErrInvalidAttributes", err)
				}
			case method, class:
				if !errors.Is(err, ErrUnknownMethod) {
					t.Fatalf("%v is not ErrUnknownMethod", err)
				}
			}
		})
	}
}

// TestEveryErrorHasOneKind: each specific error matches exactly one of the
// three sentinels, which is what a receiver branches on.
func TestEveryErrorHasOneKind(t *testing.T) {
	all := []*formatError{errShortHeader, errTooLarge, errNotX, errBadCookie, errLengthNotAligned,
		errLengthMismatch, errAttrTruncated, errAttrLength, errUnknownRequired, errDuplicate,
		errTooManyCandidates, errAfterMAC, errBadFamily, errBadTransport, errMissing,
		errUnexpected, errMethod, errClass}
	for _, e := range all {
		n := 0
		for _, k := range []error{ErrInvalidHeader, ErrInvalidAttributes, ErrUnknownMethod} {
			if errors.Is(e, k) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%v matches %d kinds", e, n)
		}
	}
}

// TestIPv4MappedAddresses: an IPv4-mapped IPv6 address given to the
// setters is stored and sent as IPv4, so the two spellings of one address
// are one binding; on the wire the mapped form is refused (above).
func TestIPv4MappedAddresses(t *testing.T) {
	mapped := netip.MustParseAddrPort("[::ffff:192.0.2.1]:32853")
	plain := netip.MustParseAddrPort("192.0.2.1:32853")
	var m Message
	m.Type = Type{MethodBind, ClassRequest}
	copy(m.TransactionID[:], mustHex(vTx))
	if err := m.AddAddress(Address{TransportUDP, mapped}); err != nil {
		t.Fatal(err)
	}
	if err := m.AddCandidate(Address{TransportUDP, mapped}); err != nil {
		t.Fatal(err)
	}
	if got, _ := m.Address(TransportUDP); got != plain {
		t.Fatalf("Address = %v, want %v", got, plain)
	}
	if m.Candidates[0].AddrPort != plain {
		t.Fatalf("candidate %v, want %v", m.Candidates[0].AddrPort, plain)
	}
	enc := m.AppendTo(nil)
	if want := xmsg(t, "c003", vNA4, vCA4); string(enc) != string(want) {
		t.Fatalf("encoded\n%x\nwant\n%x", enc, want)
	}
	// A mapped address written straight into the fields still goes out as
	// IPv4, with a length that matches.
	var d Message
	d.Type = m.Type
	d.TransactionID = m.TransactionID
	d.Addresses[0] = Address{TransportUDP, mapped}
	d.NumAddresses = 1
	d.mark(AttrNetworkAddress)
	if enc := d.AppendTo(nil); string(enc) != string(xmsg(t, "c003", vNA4)) || d.Len() != len(enc) {
		t.Fatalf("direct field: encoded %x, Len %d", enc, d.Len())
	}
}

func TestSetterErrors(t *testing.T) {
	var m Message
	a := Address{TransportUDP, netip.MustParseAddrPort("192.0.2.1:1")}
	if err := m.AddAddress(Address{}); err != ErrBadAddress {
		t.Errorf("AddAddress(zero) = %v", err)
	}
	if err := m.AddAddress(Address{Transport: 2, AddrPort: a.AddrPort}); err != ErrBadAddress {
		t.Errorf("AddAddress(transport 2) = %v", err)
	}
	if err := m.AddAddress(a); err != nil {
		t.Fatal(err)
	}
	if err := m.AddAddress(a); err != ErrDuplicateAddress {
		t.Errorf("second udp address = %v", err)
	}
	for i := range MaxCandidates {
		if err := m.AddCandidate(a); err != nil {
			t.Fatalf("candidate %d: %v", i, err)
		}
	}
	if err := m.AddCandidate(a); err != ErrTooManyCandidates {
		t.Errorf("candidate %d = %v", MaxCandidates+1, err)
	}
	if err := m.AddCandidate(Address{}); err != ErrBadAddress {
		t.Errorf("AddCandidate(zero) = %v", err)
	}
	zoned := netip.MustParseAddrPort("[fe80::1%eth0]:9")
	var z Message
	if err := z.AddAddress(Address{TransportUDP, zoned}); err != nil {
		t.Fatal(err)
	}
	if got, _ := z.Address(TransportUDP); got.Addr().Zone() != "" {
		t.Errorf("zone kept: %v", got)
	}
}

func TestParseID(t *testing.T) {
	id, err := ParseID("000102030405060708090a0b0c0d0e0f")
	if err != nil || id != (ID{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}) {
		t.Fatalf("ParseID = %v, %v", id, err)
	}
	if id.String() != "000102030405060708090a0b0c0d0e0f" {
		t.Errorf("String = %s", id)
	}
	for _, s := range []string{"", "00", "000102030405060708090a0b0c0d0e0", "000102030405060708090a0b0c0d0e0f0", "g00102030405060708090a0b0c0d0e0f"} {
		if _, err := ParseID(s); err != ErrBadIDText {
			t.Errorf("ParseID(%q) = %v", s, err)
		}
	}
	if !(ID{}).IsZero() || id.IsZero() {
		t.Error("IsZero")
	}
}

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}
