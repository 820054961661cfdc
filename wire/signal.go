package wire

import "encoding/binary"

// SIGNAL (method 0x007) carries candidates between the two peers of an
// introduction, both ways, after the introduction (docs/PROTOCOL.md §20):
//
//	peer A                         ewfd                          peer B
//	  |-- SIGNAL request ------------>|                              |
//	  |   ID=B SOURCE_ID=A KEY_A      |-- SIGNAL indication -------->|
//	  |   CANDIDATE* RELAYED*         |   SOURCE_ID=A CANDIDATE*     |
//	  |   SIGNAL_MAC                  |   RELAYED* SIGNAL_MAC        |
//	  |<-- SIGNAL success / error ----|                              |
//
// The server checks KEY (the sender owns SOURCE_ID), rate-limits, and
// re-encodes the signalled attributes into an indication with a fresh
// transaction ID. SIGNAL_MAC is end to end: HMAC-SHA256 keyed by the
// introduction's SECRET over a canonical form of what is signalled
// (AppendSignalMACInput), not over the bytes on the wire, so that it
// survives the server's re-encoding. The server, which made the SECRET,
// could forge it; nobody else can.

// signalled is the set of attributes a SIGNAL carries from one peer to the
// other: the server copies exactly these into the indication, and the MAC
// covers exactly these.
var signalled = bCand | bRelayed | bit(AttrNATClass) | bit(AttrRefused)

// signalMACLabel starts every SIGNAL_MAC input, so that no other HMAC keyed
// by a SECRET (the PUNCH MAC covers a message that starts with an X header,
// byte 0 = 0xC0) can be taken for it.
const signalMACLabel = "ewf SIGNAL MAC 1"

// MaxSignalMACInput bounds what AppendSignalMACInput appends: the label,
// two IDs, and every candidate and relayed address as IPv6.
const MaxSignalMACInput = len(signalMACLabel) + 2*16 + (MaxCandidates+MaxRelayed)*(2+4+16) + 2*(2+4)

// AppendSignalMACInput appends to b the bytes SIGNAL_MAC covers for a SIGNAL
// from the peer from to the peer to carrying the signalled attributes of m
// (its CANDIDATEs and RELAYEDs, in message order, its NAT_CLASS and
// REFUSED):
//
//	"ewf SIGNAL MAC 1" (16 bytes) ‖ from (16) ‖ to (16)
//	‖ per CANDIDATE:  00 06 ‖ transport ‖ family ‖ port (2) ‖ address (4 or 16)
//	‖ per RELAYED:    00 0b ‖ transport ‖ family ‖ port (2) ‖ address (4 or 16)
//	‖ if NAT_CLASS:   00 0a ‖ value (4)
//	‖ if REFUSED:     00 12 ‖ value (4)
//
// Addresses appear in clear, not XOR-ed: the XOR depends on the transaction
// ID, which the server changes. Both IDs are covered, so a SIGNAL cannot be
// turned around or redirected to a third peer sharing no SECRET anyway. It
// does not allocate when b has room for MaxSignalMACInput more bytes.
func AppendSignalMACInput(b []byte, from, to ID, m *Message) []byte {
	b = append(b, signalMACLabel...)
	b = append(b, from[:]...)
	b = append(b, to[:]...)
	for _, a := range m.Candidates[:clampCount(m.NumCandidates, MaxCandidates)] {
		b = appendClearAddress(b, AttrCandidate, a)
	}
	for _, a := range m.Relayed[:clampCount(m.NumRelayed, MaxRelayed)] {
		b = appendClearAddress(b, AttrRelayed, a)
	}
	if m.Has(AttrNATClass) {
		b = binary.BigEndian.AppendUint16(b, uint16(AttrNATClass))
		b = binary.BigEndian.AppendUint32(b, uint32(m.NATClass))
	}
	if m.Has(AttrRefused) {
		b = binary.BigEndian.AppendUint16(b, uint16(AttrRefused))
		b = binary.BigEndian.AppendUint32(b, uint32(m.Refused))
	}
	return b
}

func appendClearAddress(b []byte, t AttrType, a Address) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(t))
	ip := a.AddrPort.Addr().Unmap()
	fam := byte(familyIPv6)
	if ip.Is4() {
		fam = familyIPv4
	}
	b = append(b, byte(a.Transport), fam)
	b = binary.BigEndian.AppendUint16(b, a.AddrPort.Port())
	if ip.Is4() {
		v4 := ip.As4()
		return append(b, v4[:]...)
	}
	v6 := ip.As16()
	return append(b, v6[:]...)
}

// SetSignalMAC sets SIGNAL_MAC.
func (m *Message) SetSignalMAC(mac [MACSize]byte) { m.SignalMAC = mac; m.mark(AttrSignalMAC) }

// AddRelayed adds a RELAYED address (a TURN relayed transport address of
// the sender). It fails if a is invalid or MaxRelayed are already present.
// Addresses are unmapped and lose their zone, as in AddAddress.
func (m *Message) AddRelayed(a Address) error {
	a.AddrPort = unmap(a.AddrPort)
	if !a.IsValid() {
		return ErrBadAddress
	}
	if m.NumRelayed == MaxRelayed {
		return ErrTooManyRelayed
	}
	m.Relayed[m.NumRelayed] = a
	m.NumRelayed++
	m.mark(AttrRelayed)
	return nil
}

// CopySignalled copies the signalled attributes of src (CANDIDATEs,
// RELAYEDs, NAT_CLASS, REFUSED) into m, which the server does to turn a SIGNAL request into
// the indication. src must be a decoded, checked message, so the copies
// cannot fail.
func (m *Message) CopySignalled(src *Message) {
	for _, a := range src.Candidates[:clampCount(src.NumCandidates, MaxCandidates)] {
		_ = m.AddCandidate(a)
	}
	for _, a := range src.Relayed[:clampCount(src.NumRelayed, MaxRelayed)] {
		_ = m.AddRelayed(a)
	}
	if src.Has(AttrNATClass) {
		m.SetNATClass(src.NATClass)
	}
	if src.Has(AttrRefused) {
		m.SetRefused(src.Refused)
	}
}
