package wire

import (
	"encoding/binary"
	"net/netip"
)

// Limits on repeated attributes.
const (
	// MaxAddresses is how many NETWORK_ADDRESS attributes a message can
	// carry: one per transport.
	MaxAddresses = 2
	// MaxCandidates is how many CANDIDATE attributes a message can carry.
	// Eight host addresses cover a dual-stack host with a few interfaces;
	// more would let one QUERY make the server send a large INTRODUCE.
	MaxCandidates = 8
	// MaxRelayed is how many RELAYED attributes a message can carry: one
	// relayed address per address family.
	MaxRelayed = 2
)

// Message is one decoded or to-be-encoded X message. The zero value is an
// empty message ready to be filled; Reset makes a used one empty again, so
// one Message can serve every packet a goroutine handles.
//
// Attribute values live in fixed-size fields, so neither Decode nor AppendTo
// allocates. Has tells which attributes are present; the Set and Add methods
// fill a field and mark it present in one step.
type Message struct {
	Type          Type
	TransactionID TransactionID

	Reason   Reason // ERROR_REASON
	ID       ID     // ID
	SourceID ID     // SOURCE_ID
	Key      Key    // KEY
	Secret   Secret // SECRET
	MAC      [MACSize]byte
	NATClass NATClass // NAT_CLASS
	Refused  Reason   // REFUSED (refused.go)
	// Timestamp is TIMESTAMP: the sender's clock in Unix milliseconds. It
	// travels with MAC in authenticated requests, so that a captured
	// request stops working once it leaves the receiver's window.
	Timestamp uint64
	// SignalMAC is SIGNAL_MAC: the end-to-end MAC of a SIGNAL (signal.go).
	SignalMAC [MACSize]byte

	// Addresses holds NumAddresses NETWORK_ADDRESS values, at most one per
	// transport, in the order they were added or decoded.
	Addresses    [MaxAddresses]Address
	NumAddresses int
	// Candidates holds NumCandidates CANDIDATE values.
	Candidates    [MaxCandidates]Address
	NumCandidates int
	// Relayed holds NumRelayed RELAYED values.
	Relayed    [MaxRelayed]Address
	NumRelayed int

	// Relay holds the relay credentials of a RELAY success (wire/relay.go);
	// Padding the size of a PADDING attribute's value.
	Relay   RelayCredentials
	Padding int

	// Raw is the buffer the message was decoded from. It aliases the
	// caller's buffer and is valid only while that buffer is unchanged.
	Raw []byte

	present uint32 // bit t set when attribute type t (< 32) is present
}

// Reset empties m for reuse: afterwards m equals a zero Message, as long
// as addresses were added with AddAddress and AddCandidate (entries past
// NumAddresses and NumCandidates are never written, so they stay zero).
//
// It clears field by field rather than with *m = Message{}: the address
// arrays hold netip values with pointers, and zeroing all ten of them on
// every Decode was a third of the cost of decoding a small message.
func (m *Message) Reset() {
	clear(m.Addresses[:clampCount(m.NumAddresses, MaxAddresses)])
	clear(m.Candidates[:clampCount(m.NumCandidates, MaxCandidates)])
	clear(m.Relayed[:clampCount(m.NumRelayed, MaxRelayed)])
	m.Type = Type{}
	m.TransactionID = TransactionID{}
	m.Reason = 0
	m.ID = ID{}
	m.SourceID = ID{}
	m.Key = Key{}
	m.Secret = Secret{}
	m.MAC = [MACSize]byte{}
	m.NATClass = 0
	m.Refused = 0
	m.Timestamp = 0
	m.SignalMAC = [MACSize]byte{}
	m.NumAddresses = 0
	m.NumCandidates = 0
	m.NumRelayed = 0
	m.Raw = nil
	m.Relay.reset()
	m.Padding = 0
	m.present = 0
}

// clampCount keeps a count a caller may have set by hand inside [0, limit].
func clampCount(n, limit int) int { return min(max(n, 0), limit) }

// Has reports whether attribute t is present.
func (m *Message) Has(t AttrType) bool { return t < 32 && m.present&(1<<t) != 0 }

func (m *Message) mark(t AttrType) { m.present |= 1 << t }

// SetReason sets ERROR_REASON.
func (m *Message) SetReason(r Reason) { m.Reason = r; m.mark(AttrErrorReason) }

// SetID sets ID.
func (m *Message) SetID(id ID) { m.ID = id; m.mark(AttrID) }

// SetSourceID sets SOURCE_ID.
func (m *Message) SetSourceID(id ID) { m.SourceID = id; m.mark(AttrSourceID) }

// SetKey sets KEY.
func (m *Message) SetKey(k Key) { m.Key = k; m.mark(AttrKey) }

// SetSecret sets SECRET.
func (m *Message) SetSecret(s Secret) { m.Secret = s; m.mark(AttrSecret) }

// SetMAC marks MAC present with the given value. Senders encode with a
// zero MAC, compute the HMAC over MACInput of the encoding and write it
// with PutMAC.
func (m *Message) SetMAC(mac [MACSize]byte) { m.MAC = mac; m.mark(AttrMAC) }

// SetTimestamp sets TIMESTAMP, in Unix milliseconds.
func (m *Message) SetTimestamp(ms uint64) { m.Timestamp = ms; m.mark(AttrTimestamp) }

// AddAddress adds a NETWORK_ADDRESS. It fails if a is invalid or an address
// of the same transport is already present. An IPv4-mapped IPv6 address is
// stored as IPv4 and an IPv6 zone is dropped, because the wire carries
// neither.
func (m *Message) AddAddress(a Address) error {
	a.AddrPort = unmap(a.AddrPort)
	if !a.IsValid() {
		return ErrBadAddress
	}
	if _, ok := m.Address(a.Transport); ok {
		return ErrDuplicateAddress
	}
	m.Addresses[m.NumAddresses] = a
	m.NumAddresses++
	m.mark(AttrNetworkAddress)
	return nil
}

// Address returns the NETWORK_ADDRESS for transport t.
func (m *Message) Address(t Transport) (netip.AddrPort, bool) {
	for _, a := range m.Addresses[:m.NumAddresses] {
		if a.Transport == t {
			return a.AddrPort, true
		}
	}
	return netip.AddrPort{}, false
}

// AddCandidate adds a CANDIDATE. It fails if a is invalid or MaxCandidates
// are already present. Addresses are unmapped and lose their zone, as in
// AddAddress.
func (m *Message) AddCandidate(a Address) error {
	a.AddrPort = unmap(a.AddrPort)
	if !a.IsValid() {
		return ErrBadAddress
	}
	if m.NumCandidates == MaxCandidates {
		return ErrTooManyCandidates
	}
	m.Candidates[m.NumCandidates] = a
	m.NumCandidates++
	m.mark(AttrCandidate)
	return nil
}

// unmap returns ap in the one form the wire can carry: IPv4-mapped IPv6
// as IPv4, no zone. Without it a decoded message would not compare equal
// to the one that was encoded.
func unmap(ap netip.AddrPort) netip.AddrPort {
	a := ap.Addr()
	if a.Is4In6() || a.Zone() != "" {
		return netip.AddrPortFrom(a.Unmap().WithZone(""), ap.Port())
	}
	return ap
}

// Attribute value sizes in words for the fixed-size attributes.
const (
	wordsReason = 1
	wordsID     = 4
	wordsSecret = 4
	wordsMAC    = MACSize / 4
	wordsTime   = 2
)

// Len returns the encoded size of m in bytes, header included.
func (m *Message) Len() int {
	n := HeaderSize
	if m.Has(AttrErrorReason) {
		n += 4 + 4*wordsReason
	}
	for _, t := range [...]AttrType{AttrID, AttrSourceID, AttrKey, AttrSecret} {
		if m.Has(t) {
			n += 4 + 4*wordsID
		}
	}
	for _, a := range m.Addresses[:m.NumAddresses] {
		n += 4 + 4*a.words()
	}
	for _, a := range m.Candidates[:m.NumCandidates] {
		n += 4 + 4*a.words()
	}
	for _, a := range m.Relayed[:m.NumRelayed] {
		n += 4 + 4*a.words()
	}
	if m.Has(AttrNATClass) {
		n += 4 + 4*wordsNATClass
	}
	if m.Has(AttrRefused) {
		n += 4 + 4*wordsRefused
	}
	n += m.relayLen()
	if m.Padding > 0 {
		n += 4 + paddingWords(m.Padding)*4
	}
	if m.Has(AttrSignalMAC) {
		n += 4 + MACSize
	}
	if m.Has(AttrTimestamp) {
		n += 4 + 4*wordsTime
	}
	if m.Has(AttrMAC) {
		n += 4 + MACSize
	}
	return n
}

// AppendTo appends the encoding of m to b and returns the extended slice.
// Attributes are written in a fixed order (ERROR_REASON, ID, SOURCE_ID,
// KEY, NETWORK_ADDRESS, CANDIDATE, RELAYED, SECRET, NAT_CLASS, REFUSED, RELAY_URL,
// RELAY_USERNAME, RELAY_PASSWORD, RELAY_EXPIRY, PADDING, SIGNAL_MAC, TIMESTAMP, MAC),
// MAC last as the spec
// requires. It does not check that m is a valid message of its method; see
// Check.
func (m *Message) AppendTo(b []byte) []byte {
	body := m.Len() - HeaderSize
	b = binary.BigEndian.AppendUint16(b, m.Type.Value())
	b = binary.BigEndian.AppendUint16(b, uint16(body))
	b = binary.BigEndian.AppendUint32(b, MagicCookie)
	b = append(b, m.TransactionID[:]...)
	if m.Has(AttrErrorReason) {
		b = appendAttrHeader(b, AttrErrorReason, wordsReason)
		b = binary.BigEndian.AppendUint32(b, uint32(m.Reason))
	}
	if m.Has(AttrID) {
		b = append(appendAttrHeader(b, AttrID, wordsID), m.ID[:]...)
	}
	if m.Has(AttrSourceID) {
		b = append(appendAttrHeader(b, AttrSourceID, wordsID), m.SourceID[:]...)
	}
	if m.Has(AttrKey) {
		b = append(appendAttrHeader(b, AttrKey, wordsID), m.Key[:]...)
	}
	for _, a := range m.Addresses[:m.NumAddresses] {
		b = appendAddress(appendAttrHeader(b, AttrNetworkAddress, a.words()), a, &m.TransactionID)
	}
	for _, a := range m.Candidates[:m.NumCandidates] {
		b = appendAddress(appendAttrHeader(b, AttrCandidate, a.words()), a, &m.TransactionID)
	}
	for _, a := range m.Relayed[:m.NumRelayed] {
		b = appendAddress(appendAttrHeader(b, AttrRelayed, a.words()), a, &m.TransactionID)
	}
	if m.Has(AttrSecret) {
		b = append(appendAttrHeader(b, AttrSecret, wordsSecret), m.Secret[:]...)
	}
	if m.Has(AttrNATClass) {
		b = appendNATClass(b, m.NATClass)
	}
	if m.Has(AttrRefused) {
		b = appendRefused(b, m.Refused)
	}
	b = m.appendRelay(b)
	if m.Padding > 0 {
		w := paddingWords(m.Padding)
		b = appendAttrHeader(b, AttrPadding, w)
		b = append(b, make([]byte, 4*w)...)
	}
	if m.Has(AttrSignalMAC) {
		b = append(appendAttrHeader(b, AttrSignalMAC, wordsMAC), m.SignalMAC[:]...)
	}
	if m.Has(AttrTimestamp) {
		b = binary.BigEndian.AppendUint64(appendAttrHeader(b, AttrTimestamp, wordsTime), m.Timestamp)
	}
	if m.Has(AttrMAC) {
		b = append(appendAttrHeader(b, AttrMAC, wordsMAC), m.MAC[:]...)
	}
	return b
}

func appendAttrHeader(b []byte, t AttrType, words int) []byte {
	return append(b, byte(t>>8), byte(t), byte(words>>8), byte(words))
}

// macAttrSize is the size of an encoded MAC attribute.
const macAttrSize = 4 + MACSize

// MACInput returns the bytes a MAC covers in an encoded message whose last
// attribute is MAC: everything before that attribute, header included, with
// the header's length already counting the MAC. ok is false when msg is too
// short to end in a MAC.
func MACInput(msg []byte) (in []byte, ok bool) {
	if len(msg) < HeaderSize+macAttrSize {
		return nil, false
	}
	return msg[:len(msg)-macAttrSize], true
}

// PutMAC writes mac into the MAC attribute that ends msg.
func PutMAC(msg []byte, mac []byte) {
	copy(msg[len(msg)-MACSize:], mac)
}

// Decode parses the datagram or TCP frame b, which must hold exactly one
// message, into m, replacing what m held. m.Raw aliases b afterwards.
//
// The error says how to react, tested with errors.Is: ErrInvalidHeader
// means the bytes are not a well-formed X message and must be ignored
// without a response; ErrInvalidAttributes means the header was fine but
// the body is not, and a request gets an error response with
// ReasonInvalidAttributes. On ErrInvalidAttributes, m.Type and
// m.TransactionID are valid, so the response can be built.
func (m *Message) Decode(b []byte) error {
	m.Reset()
	if len(b) < HeaderSize {
		return errShortHeader
	}
	if len(b) > MaxMessageSize {
		return errTooLarge
	}
	if b[0]>>6 != 0b11 {
		return errNotX
	}
	if binary.BigEndian.Uint32(b[4:8]) != MagicCookie {
		return errBadCookie
	}
	n := int(binary.BigEndian.Uint16(b[2:4]))
	if n%4 != 0 {
		return errLengthNotAligned
	}
	if n != len(b)-HeaderSize {
		return errLengthMismatch
	}
	m.Type = typeFromValue(binary.BigEndian.Uint16(b[0:2]) & 0x3FFF)
	copy(m.TransactionID[:], b[8:HeaderSize])
	m.Raw = b

	p := b[HeaderSize:]
	for len(p) > 0 {
		if m.Has(AttrMAC) {
			return errAfterMAC
		}
		if len(p) < 4 {
			return errAttrTruncated
		}
		t := AttrType(binary.BigEndian.Uint16(p[0:2]))
		size := 4 * int(binary.BigEndian.Uint16(p[2:4]))
		if size > len(p)-4 {
			return errAttrTruncated
		}
		v := p[4 : 4+size]
		p = p[4+size:]
		if err := m.decodeAttr(t, v); err != nil {
			return err
		}
	}
	return nil
}

func (m *Message) decodeAttr(t AttrType, v []byte) error {
	if t >= optionalAttrMin {
		if t == AttrPadding {
			m.Padding = len(v) // kept only so that a decoded message re-encodes the same
		}
		return nil // comprehension-optional: skipped by design
	}
	switch t {
	case AttrRelayURL, AttrRelayUsername, AttrRelayPassword, AttrRelayExpiry:
		return m.decodeRelayAttr(t, v)
	case AttrNetworkAddress, AttrCandidate, AttrRelayed:
		a, err := decodeAddress(v, &m.TransactionID)
		if err != nil {
			return err
		}
		if t == AttrRelayed {
			if m.AddRelayed(a) != nil {
				return errTooManyRelayed
			}
			return nil
		}
		if t == AttrNetworkAddress {
			if m.AddAddress(a) != nil {
				return errDuplicate
			}
			return nil
		}
		if m.AddCandidate(a) != nil {
			return errTooManyCandidates
		}
		return nil
	case AttrErrorReason, AttrID, AttrSourceID, AttrKey, AttrSecret, AttrMAC, AttrNATClass, AttrRefused, AttrTimestamp, AttrSignalMAC:
	default:
		return errUnknownRequired
	}
	if m.Has(t) {
		return errDuplicate
	}
	switch t {
	case AttrErrorReason:
		if len(v) != 4*wordsReason {
			return errAttrLength
		}
		m.SetReason(Reason(binary.BigEndian.Uint32(v)))
	case AttrID, AttrSourceID, AttrKey, AttrSecret:
		if len(v) != 16 {
			return errAttrLength
		}
		switch t {
		case AttrID:
			m.SetID(ID(v))
		case AttrSourceID:
			m.SetSourceID(ID(v))
		case AttrKey:
			m.SetKey(Key(v))
		case AttrSecret:
			m.SetSecret(Secret(v))
		}
	case AttrMAC:
		if len(v) != MACSize {
			return errAttrLength
		}
		m.SetMAC([MACSize]byte(v))
	case AttrNATClass:
		c, err := decodeNATClass(v)
		if err != nil {
			return err
		}
		m.SetNATClass(c)
	case AttrRefused:
		r, err := decodeRefused(v)
		if err != nil {
			return err
		}
		m.SetRefused(r)
	case AttrTimestamp:
		if len(v) != 4*wordsTime {
			return errAttrLength
		}
		m.SetTimestamp(binary.BigEndian.Uint64(v))
	case AttrSignalMAC:
		if len(v) != MACSize {
			return errAttrLength
		}
		m.SetSignalMAC([MACSize]byte(v))
	}
	return nil
}
