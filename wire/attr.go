package wire

import (
	"encoding/binary"
	"encoding/hex"
	"net/netip"
)

// AttrType is an X attribute type. Types below 0x8000 are
// comprehension-required: a receiver that does not know one must refuse
// the message. Types from 0x8000 up are comprehension-optional and skipped.
type AttrType uint16

// The X attributes (docs/PROTOCOL.md, "Attributes").
const (
	AttrErrorReason    AttrType = 0x0000 // 1 word: Reason
	AttrID             AttrType = 0x0001 // 4 words: the ID a request is about
	AttrNetworkAddress AttrType = 0x0002 // 2 or 5 words: Address, once per transport
	AttrKey            AttrType = 0x0003 // 4 words: the KEY that proves ownership of an ID
	AttrSourceID       AttrType = 0x0004 // 4 words: the sender's own ID when ID names someone else
	AttrSecret         AttrType = 0x0005 // 4 words: per-introduction secret that keys PUNCH MACs
	AttrCandidate      AttrType = 0x0006 // 2 or 5 words: a host (local) address, up to MaxCandidates
	AttrMAC            AttrType = 0x0007 // 8 words: HMAC-SHA256 over the message before it; last
	AttrTimestamp      AttrType = 0x0008 // 2 words: sender's clock, Unix milliseconds; with MAC
	AttrRelayed        AttrType = 0x000B // 2 or 5 words: a relayed (TURN) address, up to MaxRelayed
	AttrSignalMAC      AttrType = 0x000C // 8 words: end-to-end HMAC of a SIGNAL, keyed by the SECRET
)

// optionalAttrMin is the first comprehension-optional attribute type.
const optionalAttrMin AttrType = 0x8000

// String returns the attribute's name as the spec spells it.
func (t AttrType) String() string {
	switch t {
	case AttrErrorReason:
		return "ERROR_REASON"
	case AttrID:
		return "ID"
	case AttrNetworkAddress:
		return "NETWORK_ADDRESS"
	case AttrKey:
		return "KEY"
	case AttrSourceID:
		return "SOURCE_ID"
	case AttrSecret:
		return "SECRET"
	case AttrCandidate:
		return "CANDIDATE"
	case AttrMAC:
		return "MAC"
	case AttrNATClass:
		return "NAT_CLASS"
	case AttrRelayURL:
		return "RELAY_URL"
	case AttrRelayUsername:
		return "RELAY_USERNAME"
	case AttrRelayPassword:
		return "RELAY_PASSWORD"
	case AttrRelayExpiry:
		return "RELAY_EXPIRY"
	case AttrPadding:
		return "PADDING"
	case AttrTimestamp:
		return "TIMESTAMP"
	case AttrRelayed:
		return "RELAYED"
	case AttrSignalMAC:
		return "SIGNAL_MAC"
	case AttrRefused:
		return "REFUSED"
	}
	return "unknown"
}

// ID is a client's 128-bit identifier, chosen at random by the client.
type ID [16]byte

// String returns the ID as 32 lower-case hex digits, the form the CLI uses.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// IsZero reports whether id is all zeros, which no client should pick.
func (id ID) IsZero() bool { return id == ID{} }

// ParseID parses 32 hex digits.
func ParseID(s string) (ID, error) {
	var id ID
	if len(s) != 2*len(id) {
		return id, ErrBadIDText
	}
	if _, err := hex.Decode(id[:], []byte(s)); err != nil {
		return id, ErrBadIDText
	}
	return id, nil
}

// Key is the 128-bit secret the server gives an ID at REGISTER.
type Key [16]byte

// Secret is the 128-bit secret the server makes for one introduction; both
// peers key their PUNCH MACs and their channel binding with it.
type Secret [16]byte

// MACSize is the size of the MAC attribute's value: a full HMAC-SHA256.
const MACSize = 32

// Reason is the value of ERROR_REASON.
type Reason uint32

// The error reasons. 0x00000000–0x00000004 and 0x11111111 come from the
// original design (with ID conflict moved off 0x00000001, where it collided
// with invalid attributes); the rest were added as the server needed them.
const (
	ReasonUnknownMethod     Reason = 0x00000000
	ReasonInvalidAttributes Reason = 0x00000001
	ReasonNotRegistered     Reason = 0x00000002
	ReasonKeyMismatch       Reason = 0x00000003
	ReasonIDConflict        Reason = 0x00000004
	ReasonAddressMismatch   Reason = 0x00000005
	ReasonNotBound          Reason = 0x00000006
	ReasonRegistrationLimit Reason = 0x00000007
	ReasonRateLimited       Reason = 0x00000008
	ReasonServerError       Reason = 0x00000009
	// ReasonTryLater: a store shared between servers (Redis) is out of
	// reach, so nothing could be written or read; retry in a few seconds.
	ReasonTryLater Reason = 0x0000000A
	ReasonNoRelay  Reason = 0x0000000D // RELAY: this server offers no relay
	// ReasonIntegrityRequired: the server refuses the KEY form of an
	// authenticated request (ewfd --require-integrity); send MAC instead.
	ReasonIntegrityRequired Reason = 0x0000000B
	// ReasonStale: the request's TIMESTAMP is outside the server's window,
	// or its transaction ID was already used from another source (a
	// replay). The error carries the server's TIMESTAMP, authenticated.
	ReasonStale           Reason = 0x0000000C
	ReasonPeerUnreachable Reason = 0x0000000F
	ReasonUnknown         Reason = 0x11111111
)

// String returns a short lower-case name, the word the CLI prints.
func (r Reason) String() string {
	switch r {
	case ReasonUnknownMethod:
		return "unknown method"
	case ReasonInvalidAttributes:
		return "invalid attributes"
	case ReasonNotRegistered:
		return "ID not registered"
	case ReasonKeyMismatch:
		return "ID and KEY not matched"
	case ReasonIDConflict:
		return "ID conflict"
	case ReasonAddressMismatch:
		return "address mismatch"
	case ReasonNotBound:
		return "ID not bound"
	case ReasonRegistrationLimit:
		return "registration limit reached"
	case ReasonRateLimited:
		return "rate limited"
	case ReasonServerError:
		return "server error"
	case ReasonTryLater:
		return "try again later"
	case ReasonNoRelay:
		return "no relay"
	case ReasonIntegrityRequired:
		return "integrity required"
	case ReasonStale:
		return "stale or replayed request"
	case ReasonPeerUnreachable:
		return "peer unreachable"
	case ReasonRefused:
		return "refused by the peer"
	case ReasonUnknown:
		return "unknown reason"
	}
	return "unrecognised reason"
}

// Transport is byte 0 of NETWORK_ADDRESS and CANDIDATE.
type Transport uint8

// The transports an address can be bound for.
const (
	TransportUDP Transport = 0x00
	TransportTCP Transport = 0x01
)

// String returns "udp" or "tcp".
func (t Transport) String() string {
	switch t {
	case TransportUDP:
		return "udp"
	case TransportTCP:
		return "tcp"
	}
	return "unknown"
}

// Address is the value of NETWORK_ADDRESS and CANDIDATE: a transport and an
// IP address with port. Addr is always unmapped (an IPv4-mapped IPv6
// address is stored as IPv4), so Addresses compare with ==.
type Address struct {
	Transport Transport
	AddrPort  netip.AddrPort
}

// IsValid reports whether a holds a usable address.
func (a Address) IsValid() bool { return a.AddrPort.IsValid() && a.Transport <= TransportTCP }

// String returns "udp/1.2.3.4:5".
func (a Address) String() string { return a.Transport.String() + "/" + a.AddrPort.String() }

// Address families, byte 1 of an address value, as in STUN.
const (
	familyIPv4 = 0x01
	familyIPv6 = 0x02
)

// words returns the length in words of a's encoding.
func (a Address) words() int {
	// Unmap here and in appendAddress so that an Address written into
	// Message.Addresses directly, bypassing AddAddress, still encodes as
	// the family its length says.
	if a.AddrPort.Addr().Unmap().Is4() {
		return 2
	}
	return 5
}

// appendAddress encodes a with the XOR of STUN's XOR-MAPPED-ADDRESS (RFC
// 5389 §15.2), so that NAT ALGs that rewrite addresses they find in
// payloads leave it alone.
func appendAddress(b []byte, a Address, tx *TransactionID) []byte {
	port := a.AddrPort.Port() ^ uint16(MagicCookie>>16)
	ip := a.AddrPort.Addr().Unmap()
	if ip.Is4() {
		v4 := ip.As4()
		b = append(b, byte(a.Transport), familyIPv4, byte(port>>8), byte(port))
		x := binary.BigEndian.Uint32(v4[:]) ^ MagicCookie
		return binary.BigEndian.AppendUint32(b, x)
	}
	v6 := ip.As16()
	b = append(b, byte(a.Transport), familyIPv6, byte(port>>8), byte(port))
	var mask [16]byte
	binary.BigEndian.PutUint32(mask[:4], MagicCookie)
	copy(mask[4:], tx[:])
	for i := range v6 {
		v6[i] ^= mask[i]
	}
	return append(b, v6[:]...)
}

// decodeAddress is the inverse of appendAddress. v is the attribute value.
func decodeAddress(v []byte, tx *TransactionID) (Address, error) {
	if len(v) < 4 {
		return Address{}, errAttrLength
	}
	tr := Transport(v[0])
	if tr > TransportTCP {
		return Address{}, errBadTransport
	}
	port := binary.BigEndian.Uint16(v[2:4]) ^ uint16(MagicCookie>>16)
	switch v[1] {
	case familyIPv4:
		if len(v) != 8 {
			return Address{}, errAttrLength
		}
		var ip [4]byte
		binary.BigEndian.PutUint32(ip[:], binary.BigEndian.Uint32(v[4:8])^MagicCookie)
		return Address{tr, netip.AddrPortFrom(netip.AddrFrom4(ip), port)}, nil
	case familyIPv6:
		if len(v) != 20 {
			return Address{}, errAttrLength
		}
		var ip [16]byte
		binary.BigEndian.PutUint32(ip[:4], MagicCookie)
		copy(ip[4:], tx[:])
		for i := range ip {
			ip[i] ^= v[4+i]
		}
		addr := netip.AddrFrom16(ip)
		if addr.Is4In6() {
			// Always unmapped on the wire; accepting a mapped form would
			// give one address two encodings.
			return Address{}, errBadFamily
		}
		return Address{tr, netip.AddrPortFrom(addr, port)}, nil
	}
	return Address{}, errBadFamily
}
