// Package stunx holds the few STUN helpers that the ewf server and client
// share: a strict, allocation-free check in front of pion/stun's decoder and
// an allocation-free builder of the Binding success response.
//
// Why a package of its own: pion/stun/v3 (v3.1.7) decodes into a reused
// stun.Message without allocating, but every decode error it returns is
// built with fmt.Sprintf (7 allocations for one malformed packet, measured
// with testing.AllocsPerRun in stunx_test.go), it accepts a buffer longer
// than the header's length, and it checks neither the leading bits nor the
// 4-byte alignment of the length. Its one-call builder, stun.Build, makes 9
// (IPv4) or 10 (IPv6) allocations per response, and even driven by hand
// into a stun.Message it needs that message kept per goroutine to avoid an
// allocation. Decode below rejects every malformed message before pion sees
// it, so pion's error path is never taken on the hot path, and
// AppendBindingSuccess writes the three fields of a Binding success itself,
// checked against pion's decoder in the tests. Package wire itself stays
// stdlib-only; this package is where pion is allowed.
package stunx

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
)

// The errors Decode returns. Both mean "drop silently": RFC 5389 §7.3 has a
// server discard a message that is malformed or whose FINGERPRINT is wrong,
// and answering junk is how reflectors are made.
var (
	// ErrMalformed: not a well-formed STUN message (RFC 5389 §6, §15).
	ErrMalformed = errors.New("stunx: malformed STUN message")
	// ErrFingerprint: a FINGERPRINT attribute that is not last, not 4
	// bytes long or does not match the message's CRC-32.
	ErrFingerprint = errors.New("stunx: bad FINGERPRINT")
)

const (
	attrFingerprint  = 0x8028
	fingerprintAttrN = 8    // type, length, CRC-32 XOR 0x5354554e
	stunTypeBits     = 0x00 // the two leading bits of every STUN message
)

// MaxBindingSuccessSize is the largest response AppendBindingSuccess
// builds: header, XOR-MAPPED-ADDRESS with an IPv6 address, FINGERPRINT.
const MaxBindingSuccessSize = wire.HeaderSize + 4 + 20 + fingerprintAttrN

// Check validates b as exactly one STUN message (a UDP datagram or a frame
// cut by wire.Framer) without allocating:
//
//   - at least 20 and at most wire.MaxMessageSize bytes;
//   - the two leading bits 00 and the magic cookie at bytes 4..7;
//   - a length field that is a multiple of 4 and equals len(b) − 20;
//   - attributes that tile the body exactly, each value padded to 4 bytes;
//   - FINGERPRINT, if present, is the last attribute, 4 bytes long, and
//     matches CRC-32(message before it) XOR 0x5354554e.
func Check(b []byte) error {
	if len(b) < wire.HeaderSize || len(b) > wire.MaxMessageSize {
		return ErrMalformed
	}
	if b[0]>>6 != stunTypeBits || binary.BigEndian.Uint32(b[4:8]) != wire.MagicCookie {
		return ErrMalformed
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n%4 != 0 || n != len(b)-wire.HeaderSize {
		return ErrMalformed
	}
	for off := wire.HeaderSize; off < len(b); {
		if len(b)-off < 4 {
			return ErrMalformed // unreachable with n%4 == 0; kept for clarity
		}
		t := binary.BigEndian.Uint16(b[off : off+2])
		l := int(binary.BigEndian.Uint16(b[off+2 : off+4]))
		padded := (l + 3) &^ 3
		if padded > len(b)-off-4 {
			return ErrMalformed
		}
		if t == attrFingerprint {
			if l != 4 || off+fingerprintAttrN != len(b) {
				return ErrFingerprint
			}
			if binary.BigEndian.Uint32(b[off+4:off+8]) != stun.FingerprintValue(b[:off]) {
				return ErrFingerprint
			}
		}
		off += 4 + padded
	}
	return nil
}

// Decode checks b with Check and decodes it into m with pion, reusing m's
// attribute slice, so a steady stream of messages decodes without
// allocating. m.Raw aliases b afterwards: m and the attribute values it
// returns are valid only while b is unchanged.
//
// Decode does not look at the method or class: the caller answers only
// m.Type == stun.BindingRequest and ignores everything else, indications
// included (RFC 5389 §7.3.2: an indication gets no response).
func Decode(b []byte, m *stun.Message) error {
	if err := Check(b); err != nil {
		m.Reset()
		return err
	}
	m.Raw = b
	if err := m.Decode(); err != nil {
		// Unreachable after Check (FuzzDecode holds it to that); kept so
		// a pion change cannot turn into a silent accept.
		m.Reset()
		return ErrMalformed
	}
	return nil
}

// AppendBindingSuccess appends to b a Binding success response to req:
// req's transaction ID, an XOR-MAPPED-ADDRESS holding src (an IPv4-mapped
// IPv6 address is sent as IPv4, the zone is dropped), and a FINGERPRINT
// when req carried one (RFC 5389 §7.3.1, §15.2 and §15.5). Nothing else:
// no SOFTWARE, so the response stays small (docs/PROTOCOL.md,
// amplification).
//
// It allocates nothing when cap(b)−len(b) ≥ MaxBindingSuccessSize. If src
// is not valid it appends nothing, since there is no address to report.
//
// The bytes are written here rather than through pion's encoder: pion
// appends each attribute to the stun.Message's attribute slice, so a
// response built in a fresh stun.Message costs a heap allocation per call
// (measured), and the caller would have to keep a scratch stun.Message per
// goroutine just for this. The tests decode the result with pion and check
// its XOR-MAPPED-ADDRESS and FINGERPRINT as a second opinion.
func AppendBindingSuccess(b []byte, req *stun.Message, src netip.AddrPort) []byte {
	return AppendBindingSuccess5780(b, req, src, netip.AddrPort{}, netip.AddrPort{})
}

// MaxBindingSuccess5780Size is the largest response AppendBindingSuccess5780
// builds: MaxBindingSuccessSize plus RESPONSE-ORIGIN and OTHER-ADDRESS with
// IPv6 addresses.
const MaxBindingSuccess5780Size = MaxBindingSuccessSize + 2*(4+20)

// BindingSuccess5780Len returns the size of the response
// AppendBindingSuccess5780 would build, so that a server can leave out
// the RFC 5780 attributes when they would break its amplification bound.
func BindingSuccess5780Len(req *stun.Message, src, origin, other netip.AddrPort) int {
	n := wire.HeaderSize + 4 + addrValueLen(src)
	if origin.IsValid() {
		n += 4 + addrValueLen(origin)
	}
	if other.IsValid() {
		n += 4 + addrValueLen(other)
	}
	if req.Contains(stun.AttrFingerprint) {
		n += fingerprintAttrN
	}
	return n
}

func addrValueLen(a netip.AddrPort) int {
	if a.Addr().Unmap().Is4() {
		return 8
	}
	return 20
}

// AppendBindingSuccess5780 is AppendBindingSuccess with the two RFC 5780
// §7 attributes a NAT-behaviour-discovery server adds: RESPONSE-ORIGIN
// (the address and port the response leaves from) and OTHER-ADDRESS (the
// server's address and port that differ in both IP and port, or in port
// only when it has one IP), each left out when invalid. Both use the
// plain MAPPED-ADDRESS layout (RFC 5389 §15.1), not the XOR one.
//
// It allocates nothing when cap(b)−len(b) ≥ MaxBindingSuccess5780Size.
func AppendBindingSuccess5780(b []byte, req *stun.Message, src, origin, other netip.AddrPort) []byte {
	if !src.IsValid() {
		return b
	}
	b = slices.Grow(b, MaxBindingSuccess5780Size)
	start := len(b)
	fp := req.Contains(stun.AttrFingerprint)
	bodyLen := BindingSuccess5780Len(req, src, origin, other) - wire.HeaderSize
	b = binary.BigEndian.AppendUint16(b, stun.BindingSuccess.Value())
	b = binary.BigEndian.AppendUint16(b, uint16(bodyLen))
	b = binary.BigEndian.AppendUint32(b, wire.MagicCookie)
	b = append(b, req.TransactionID[:]...)

	// The address is XOR-ed with the cookie followed by the transaction
	// ID; an IPv4 address uses the cookie alone.
	var mask [16]byte
	binary.BigEndian.PutUint32(mask[:4], wire.MagicCookie)
	copy(mask[4:], req.TransactionID[:])
	b = appendAddr(b, stun.AttrXORMappedAddress, src, &mask)
	if origin.IsValid() {
		b = appendAddr(b, stun.AttrResponseOrigin, origin, nil)
	}
	if other.IsValid() {
		b = appendAddr(b, stun.AttrOtherAddress, other, nil)
	}

	if fp {
		// The header's length already counts FINGERPRINT, as §15.5 asks.
		crc := stun.FingerprintValue(b[start:])
		b = binary.BigEndian.AppendUint16(b, attrFingerprint)
		b = binary.BigEndian.AppendUint16(b, 4)
		b = binary.BigEndian.AppendUint32(b, crc)
	}
	return b
}

// appendAddr appends one address attribute of type t: XOR-ed with mask
// (XOR-MAPPED-ADDRESS) or plain when mask is nil (MAPPED-ADDRESS layout).
func appendAddr(b []byte, t stun.AttrType, ap netip.AddrPort, mask *[16]byte) []byte {
	addr := ap.Addr().Unmap()
	valueLen, family := 8, byte(0x01)
	if !addr.Is4() {
		valueLen, family = 20, 0x02
	}
	b = binary.BigEndian.AppendUint16(b, uint16(t))
	b = binary.BigEndian.AppendUint16(b, uint16(valueLen))
	b = append(b, 0, family)
	port := ap.Port()
	if mask != nil {
		port ^= uint16(wire.MagicCookie >> 16)
	}
	b = binary.BigEndian.AppendUint16(b, port)
	ip := addr.As16()
	if addr.Is4() {
		v4 := addr.As4()
		copy(ip[:], v4[:])
	}
	for i := range valueLen - 4 {
		if mask != nil {
			b = append(b, ip[i]^mask[i])
		} else {
			b = append(b, ip[i])
		}
	}
	return b
}

// CHANGE-REQUEST flags (RFC 5780 §7.2).
const (
	changeIPFlag   = 0x04
	changePortFlag = 0x02
)

// ChangeRequest returns the flags of req's CHANGE-REQUEST attribute (RFC
// 5780 §7.2): whether the client asks for the answer to come from the
// other IP address, from the other port, or both. present is false when
// req has no CHANGE-REQUEST; ok is false when it has one of a length
// other than 4. It does not allocate.
func ChangeRequest(req *stun.Message) (changeIP, changePort, present, ok bool) {
	v, err := req.Get(stun.AttrChangeRequest)
	if err != nil {
		return false, false, false, true
	}
	if len(v) != 4 {
		return false, false, true, false
	}
	return v[3]&changeIPFlag != 0, v[3]&changePortFlag != 0, true, true
}
