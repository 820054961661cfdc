// Package wire is the byte format of ewf: the codec of X, the STUN-like
// protocol that ewfd speaks next to STUN on one port, the classifier that
// tells STUN, X and anything else apart, and the framer that cuts a TCP
// stream into messages.
//
// Every X message starts with the 20-byte header below. It is laid out like
// the STUN header of RFC 5389 §6, except that the two most significant bits
// are 11 where STUN has 00:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|1 1|     Message Type (14)     |    Message Length (bytes)     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                  Magic Cookie = 0x2112A442                    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                                                               |
//	|                 Transaction ID (96 bits)                      |
//	|                                                               |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// The 14-bit message type interleaves a 12-bit method (M11..M0) with a
// 2-bit class (C1 C0) exactly as STUN does:
//
//	  0                 1
//	  2  3  4 5 6 7 8 9 0 1 2 3 4 5
//	+--+--+-+-+-+-+-+-+-+-+-+-+-+-+
//	|M |M |M|M|M|C|M|M|M|C|M|M|M|M|
//	|11|10|9|8|7|1|6|5|4|0|3|2|1|0|
//	+--+--+-+-+-+-+-+-+-+-+-+-+-+-+
//
// The body is a sequence of attributes. Unlike STUN, an attribute's length
// counts 4-byte words, so values are always a multiple of 4 bytes and never
// padded:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|         Attribute Type        |   Attribute Length (words)    |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                    Value (4 × Length bytes)                   |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// docs/PROTOCOL.md is the full specification; this package is its reference
// implementation. The package does no I/O, keeps no time and logs nothing:
// it turns bytes into values and values into bytes, without allocating.
package wire

import "encoding/binary"

const (
	// HeaderSize is the size of the STUN and X headers.
	HeaderSize = 20
	// MagicCookie is the fixed value at bytes 4..7 of every STUN and X
	// message. X reuses STUN's cookie on purpose: a middlebox that knows
	// STUN sees the same structure, and the classifier needs only one
	// compare to accept either.
	MagicCookie uint32 = 0x2112A442
	// MaxMessageSize bounds one message, header included. It is the
	// Ethernet MTU: no request or response of ewf comes near it, and a
	// bound lets the TCP framer reject a peer that announces a huge frame
	// before reading it.
	MaxMessageSize = 1500
	// TransactionIDSize is the size of the transaction ID in bytes.
	TransactionIDSize = 12
)

// TransactionID is the 96-bit transaction ID of a STUN or X message.
type TransactionID [TransactionIDSize]byte

// Method is the 12-bit X method.
type Method uint16

// The X methods. REGISTER, BIND and QUERY come from the original design;
// INTRODUCE and PUNCH were added for hole punching, SIGNAL for candidates
// that travel after the introduction, both ways (docs/PROTOCOL.md).
const (
	MethodRegister  Method = 0x002
	MethodBind      Method = 0x003
	MethodQuery     Method = 0x004
	MethodIntroduce Method = 0x005
	MethodPunch     Method = 0x006
	MethodRelay     Method = 0x008 // relay credentials (wire/relay.go)
	MethodSignal    Method = 0x007
)

// String returns the method's name as the spec spells it.
func (m Method) String() string {
	switch m {
	case MethodRegister:
		return "REGISTER"
	case MethodBind:
		return "BIND"
	case MethodQuery:
		return "QUERY"
	case MethodIntroduce:
		return "INTRODUCE"
	case MethodPunch:
		return "PUNCH"
	case MethodRelay:
		return "RELAY"
	case MethodSignal:
		return "SIGNAL"
	}
	return "unknown"
}

// Class is the 2-bit message class, as in STUN.
type Class uint8

// The four classes of RFC 5389 §6.
const (
	ClassRequest    Class = 0b00
	ClassIndication Class = 0b01
	ClassSuccess    Class = 0b10
	ClassError      Class = 0b11
)

// String returns the class's name.
func (c Class) String() string {
	switch c {
	case ClassRequest:
		return "request"
	case ClassIndication:
		return "indication"
	case ClassSuccess:
		return "success response"
	case ClassError:
		return "error response"
	}
	return "unknown"
}

// Type is a decoded X message type.
type Type struct {
	Method Method
	Class  Class
}

// xTypeBits are the two leading bits that mark an X message.
const xTypeBits = 0xC000

// Value returns the 16 bits of the message type field, leading 11 included:
// REGISTER request is 0xC002, its success response 0xC102, its error
// response 0xC112.
func (t Type) Value() uint16 {
	m := uint16(t.Method) & 0x0FFF
	c := uint16(t.Class) & 0x3
	return xTypeBits |
		(m & 0x000F) | (m&0x0070)<<1 | (m&0x0F80)<<2 |
		(c&0x1)<<4 | (c&0x2)<<7
}

// typeFromValue decodes the 14 low bits of a message type field.
func typeFromValue(v uint16) Type {
	m := (v & 0x000F) | (v&0x00E0)>>1 | (v&0x3E00)>>2
	c := (v&0x0010)>>4 | (v&0x0100)>>7
	return Type{Method: Method(m), Class: Class(c)}
}

// String returns "METHOD class", e.g. "QUERY success response".
func (t Type) String() string { return t.Method.String() + " " + t.Class.String() }

// Kind is what Classify found at the start of a datagram or TCP frame.
type Kind uint8

// The kinds of message the server and client can receive on one socket.
const (
	KindOther Kind = iota // not STUN, not X: on the client, QUIC or junk
	KindSTUN
	KindX
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case KindSTUN:
		return "STUN"
	case KindX:
		return "X"
	}
	return "other"
}

// Classify tells STUN, X and everything else apart by the header alone,
// without allocating: at least HeaderSize bytes, the magic cookie at bytes
// 4..7, a length that is a multiple of 4, and then the two leading bits, 00
// for STUN and 11 for X. It does not check that the length matches len(b),
// so it works on a TCP frame's header as well as on a datagram.
//
// Why the kinds cannot be confused with what else reaches an ewf socket:
// STUN and X differ in their leading bits. QUIC (RFC 9000 §17) short-header
// packets start with 01, so never match. QUIC long-header packets start with
// 11 like X, but carry the 32-bit version at bytes 1..4 and the destination
// connection ID length at byte 5, so bytes 4..7 hold the version's last
// byte, that length and the first two connection ID bytes. They equal the
// cookie only for a version ending in 0x21 with an 18-byte connection ID
// that starts A4 42; ewf runs QUIC v1 (0x00000001) and v2 (0x6b3343cf), and
// version negotiation carries version 0, so a QUIC packet of ours is never
// taken for X. The client also knows the server's address, so a packet is
// told apart by its source before its bits (docs/PROTOCOL.md). DTLS (first
// byte 20..63) and RTP (10xxxxxx) fail the leading bits too.
func Classify(b []byte) Kind {
	if len(b) < HeaderSize {
		return KindOther
	}
	if binary.BigEndian.Uint32(b[4:8]) != MagicCookie {
		return KindOther
	}
	if binary.BigEndian.Uint16(b[2:4])%4 != 0 {
		return KindOther
	}
	switch b[0] >> 6 {
	case 0b00:
		return KindSTUN
	case 0b11:
		return KindX
	}
	return KindOther
}

// MessageLength returns the total length, header included, that a STUN or
// X header announces. b must hold at least HeaderSize bytes.
func MessageLength(b []byte) int {
	return HeaderSize + int(binary.BigEndian.Uint16(b[2:4]))
}
