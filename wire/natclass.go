package wire

import "encoding/binary"

// AttrNATClass is the NAT_CLASS attribute (docs/PROTOCOL.md §6.4): one word
// describing the sender's NAT as discovered with RFC 5780 (package
// natdisco), so that the other peer and the server can pick a traversal
// strategy and explain a failure.
const AttrNATClass AttrType = 0x000A

// NATClass is the value of NAT_CLASS, one 32-bit word:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Mapping|Filter.| Ports |  Rsv  |  Delta (int8) |     Flags     |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Mapping: 0 unknown, 1 endpoint-independent, 2 address-dependent,
// 3 address-and-port-dependent. Filtering: 0 unknown, 1 endpoint-
// independent, 2 address-dependent, 3 address-and-port-dependent. Ports:
// 0 unknown, 1 preserved, 2 sequential (Delta is the step between
// consecutive new mappings), 3 random. Flags: NATFlagHairpin,
// NATFlagIPv6, NATFlagPublic. Rsv and the unassigned flag bits are sent as
// zero and ignored on receipt; a field value above the ones listed is
// carried as is and read as unknown by package natdisco, so that a later
// version can add values without breaking older peers.
type NATClass uint32

// NAT_CLASS flags, the low byte of the word.
const (
	// NATFlagHairpin: a packet sent to the sender's own public mapping
	// came back in (the NAT hairpins).
	NATFlagHairpin uint8 = 0x01
	// NATFlagIPv6: the sender has a global IPv6 address that reached the
	// server.
	NATFlagIPv6 uint8 = 0x02
	// NATFlagPublic: the server saw the sender's own address and port; no
	// NAT on IPv4 (a firewall may still filter).
	NATFlagPublic uint8 = 0x04
)

// MakeNATClass packs the fields of a NAT_CLASS word. mapping, filtering and
// ports keep their low 4 bits.
func MakeNATClass(mapping, filtering, ports uint8, delta int8, flags uint8) NATClass {
	return NATClass(uint32(mapping&0xF)<<28 | uint32(filtering&0xF)<<24 |
		uint32(ports&0xF)<<20 | uint32(uint8(delta))<<8 | uint32(flags))
}

// Mapping returns the mapping field (bits 0–3).
func (c NATClass) Mapping() uint8 { return uint8(c >> 28) }

// Filtering returns the filtering field (bits 4–7).
func (c NATClass) Filtering() uint8 { return uint8(c>>24) & 0xF }

// Ports returns the port allocation field (bits 8–11).
func (c NATClass) Ports() uint8 { return uint8(c>>20) & 0xF }

// Delta returns the sequential port step (bits 16–23).
func (c NATClass) Delta() int8 { return int8(uint8(c >> 8)) }

// Flags returns the flag byte (bits 24–31).
func (c NATClass) Flags() uint8 { return uint8(c) }

// wordsNATClass is the length of NAT_CLASS in words.
const wordsNATClass = 1

// SetNATClass sets NAT_CLASS. Which messages may carry it is decided by
// Check (docs/PROTOCOL.md §5.2).
func (m *Message) SetNATClass(c NATClass) { m.NATClass = c; m.mark(AttrNATClass) }

func appendNATClass(b []byte, c NATClass) []byte {
	b = appendAttrHeader(b, AttrNATClass, wordsNATClass)
	return binary.BigEndian.AppendUint32(b, uint32(c))
}

func decodeNATClass(v []byte) (NATClass, error) {
	if len(v) != 4*wordsNATClass {
		return 0, errAttrLength
	}
	return NATClass(binary.BigEndian.Uint32(v)), nil
}
