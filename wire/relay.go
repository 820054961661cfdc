package wire

import "encoding/binary"

// Relay credentials (docs/PROTOCOL.md §17). A client that proved its ID's
// KEY asks with a RELAY request (method 0x008: ID, KEY, and a PADDING that
// keeps the answer within twice the request); the server answers with the
// TURN server(s) to use and time-limited credentials for them:
//
//	RELAY_URL (0x000E, up to MaxRelayURLs), RELAY_USERNAME (0x000F),
//	RELAY_PASSWORD (0x0010): a string each,
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|             Type              |       Length (words)          |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|     String length (bytes)     |   String (UTF-8) ...          |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+                               |
//	|        ... then 0 to 3 zero bytes to the next word            |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
//	RELAY_EXPIRY (0x0011, 2 words): the credentials' expiry, 64-bit Unix
//	seconds.
//
// PADDING (0x8007) is comprehension-optional: any value, skipped.

// The relay attributes. 0x000E–0x0011 and 0x8007–0x8009 are the relay's
// share of the attribute space.
const (
	AttrRelayURL      AttrType = 0x000E // string: a TURN URI (RFC 7065), up to MaxRelayURLs
	AttrRelayUsername AttrType = 0x000F // string: the TURN username
	AttrRelayPassword AttrType = 0x0010 // string: the TURN password
	AttrRelayExpiry   AttrType = 0x0011 // 2 words: Unix seconds after which the credentials are refused
	AttrPadding       AttrType = 0x8007 // optional: makes a request big enough for its answer
)

const (
	// MaxRelayURLs is how many RELAY_URL attributes a message can carry:
	// UDP and TCP of one server, and of a second one.
	MaxRelayURLs = 4
	// MaxRelayString bounds the byte length of a relay string attribute.
	MaxRelayString = 255
	// RelayRequestSize is the size a client pads its RELAY request to
	// (with PADDING), so that an answer of up to twice that size is
	// within the amplification bound (§10); ewfd refuses at start-up a
	// relay configuration whose answer would be larger.
	RelayRequestSize = 600
	// MaxRelayAnswer is the largest RELAY success that a request of
	// RelayRequestSize may get.
	MaxRelayAnswer = 2 * RelayRequestSize

	wordsExpiry = 2
)

// RelayCredentials is the body of a RELAY success. The byte slices of a
// decoded message alias the decoded buffer, like Message.Raw; a sender
// points them at its own memory.
type RelayCredentials struct {
	URLs     [MaxRelayURLs][]byte
	NumURLs  int
	Username []byte
	Password []byte
	Expiry   uint64 // Unix seconds
}

func (r *RelayCredentials) reset() {
	clear(r.URLs[:clampCount(r.NumURLs, MaxRelayURLs)])
	r.NumURLs = 0
	r.Username = nil
	r.Password = nil
	r.Expiry = 0
}

// AddRelayURL adds a RELAY_URL. It fails if u is empty or longer than
// MaxRelayString, or MaxRelayURLs are present.
func (m *Message) AddRelayURL(u []byte) error {
	if len(u) == 0 || len(u) > MaxRelayString {
		return ErrBadString
	}
	if m.Relay.NumURLs == MaxRelayURLs {
		return ErrTooManyURLs
	}
	m.Relay.URLs[m.Relay.NumURLs] = u
	m.Relay.NumURLs++
	m.mark(AttrRelayURL)
	return nil
}

// SetRelayUsername sets RELAY_USERNAME; it fails like AddRelayURL.
func (m *Message) SetRelayUsername(u []byte) error {
	if len(u) == 0 || len(u) > MaxRelayString {
		return ErrBadString
	}
	m.Relay.Username = u
	m.mark(AttrRelayUsername)
	return nil
}

// SetRelayPassword sets RELAY_PASSWORD; it fails like AddRelayURL.
func (m *Message) SetRelayPassword(p []byte) error {
	if len(p) == 0 || len(p) > MaxRelayString {
		return ErrBadString
	}
	m.Relay.Password = p
	m.mark(AttrRelayPassword)
	return nil
}

// SetRelayExpiry sets RELAY_EXPIRY, in Unix seconds.
func (m *Message) SetRelayExpiry(unix uint64) { m.Relay.Expiry = unix; m.mark(AttrRelayExpiry) }

// stringWords is the length in words of a string attribute's value.
func stringWords(s []byte) int { return (2 + len(s) + 3) / 4 }

// paddingWords is the length in words of a PADDING of n bytes.
func paddingWords(n int) int { return (n + 3) / 4 }

func (m *Message) relayLen() int {
	n := 0
	for _, u := range m.Relay.URLs[:clampCount(m.Relay.NumURLs, MaxRelayURLs)] {
		n += 4 + 4*stringWords(u)
	}
	if m.Has(AttrRelayUsername) {
		n += 4 + 4*stringWords(m.Relay.Username)
	}
	if m.Has(AttrRelayPassword) {
		n += 4 + 4*stringWords(m.Relay.Password)
	}
	if m.Has(AttrRelayExpiry) {
		n += 4 + 4*wordsExpiry
	}
	return n
}

func appendString(b []byte, t AttrType, s []byte) []byte {
	w := stringWords(s)
	b = appendAttrHeader(b, t, w)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	b = append(b, s...)
	var pad [3]byte
	return append(b, pad[:4*w-2-len(s)]...)
}

func (m *Message) appendRelay(b []byte) []byte {
	for _, u := range m.Relay.URLs[:clampCount(m.Relay.NumURLs, MaxRelayURLs)] {
		b = appendString(b, AttrRelayURL, u)
	}
	if m.Has(AttrRelayUsername) {
		b = appendString(b, AttrRelayUsername, m.Relay.Username)
	}
	if m.Has(AttrRelayPassword) {
		b = appendString(b, AttrRelayPassword, m.Relay.Password)
	}
	if m.Has(AttrRelayExpiry) {
		b = appendAttrHeader(b, AttrRelayExpiry, wordsExpiry)
		b = binary.BigEndian.AppendUint64(b, m.Relay.Expiry)
	}
	return b
}

// decodeString checks a string attribute's value: a length that fits,
// 1..MaxRelayString bytes, and 0 to 3 zero bytes of padding after it.
func decodeString(v []byte) ([]byte, error) {
	if len(v) < 4 {
		return nil, errAttrLength
	}
	n := int(binary.BigEndian.Uint16(v[:2]))
	if n == 0 || n > MaxRelayString || n > len(v)-2 || len(v)-2-n > 3 {
		return nil, errAttrLength
	}
	for _, c := range v[2+n:] {
		if c != 0 {
			return nil, errAttrLength
		}
	}
	return v[2 : 2+n], nil
}

func (m *Message) decodeRelayAttr(t AttrType, v []byte) error {
	if t == AttrRelayExpiry {
		if m.Has(t) {
			return errDuplicate
		}
		if len(v) != 4*wordsExpiry {
			return errAttrLength
		}
		m.SetRelayExpiry(binary.BigEndian.Uint64(v))
		return nil
	}
	s, err := decodeString(v)
	if err != nil {
		return err
	}
	switch t {
	case AttrRelayURL:
		if m.Relay.NumURLs == MaxRelayURLs {
			return errTooManyURLs
		}
		return m.AddRelayURL(s) // cannot fail: s was checked
	case AttrRelayUsername:
		if m.Has(t) {
			return errDuplicate
		}
		return m.SetRelayUsername(s)
	default: // AttrRelayPassword
		if m.Has(t) {
			return errDuplicate
		}
		return m.SetRelayPassword(s)
	}
}

// Clone returns a copy of r whose strings own their memory, for keeping a
// decoded answer after its buffer is reused.
func (r RelayCredentials) Clone() RelayCredentials {
	n := len(r.Username) + len(r.Password)
	for _, u := range r.URLs[:clampCount(r.NumURLs, MaxRelayURLs)] {
		n += len(u)
	}
	if n == 0 {
		return r
	}
	buf := make([]byte, 0, n)
	cp := func(s []byte) []byte {
		if s == nil {
			return nil
		}
		buf = append(buf, s...)
		return buf[len(buf)-len(s) : len(buf) : len(buf)]
	}
	out := r
	for i := range out.URLs[:clampCount(r.NumURLs, MaxRelayURLs)] {
		out.URLs[i] = cp(r.URLs[i])
	}
	out.Username = cp(r.Username)
	out.Password = cp(r.Password)
	return out
}
