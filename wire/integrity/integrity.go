// Package integrity proves the possession of a KEY without sending it: it
// computes and checks the MAC attribute of an X message (HMAC-SHA256, keyed
// by the KEY, over the message up to the MAC attribute, docs/PROTOCOL.md
// §11.1 and §17) without allocating.
//
// BIND and QUERY requests (and every later request that needs a KEY) carry
// TIMESTAMP and MAC instead of KEY; ewfd answers them with a MAC of its own
// keyed by the same KEY, so a client can tell a forged answer. PUNCH uses
// the same attribute keyed by the introduction's SECRET.
//
// Why a package of its own, and why not crypto/hmac: the keys change with
// every request (one KEY per client), and hmac.New allocates a pair of
// SHA-256 states each time it is called. A Signer keeps one SHA-256 state
// and computes HMAC (RFC 2104) by hand with it: H((K^opad) ‖ H((K^ipad) ‖
// m)). The tests check it against crypto/hmac. Package wire itself stays
// free of crypto; this is where the hashing lives.
package integrity

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"hash"

	"github.com/ewf-project/ewf/wire"
)

// Window is how far a request's TIMESTAMP may be from the server's clock,
// either way, in milliseconds: 30 s. It absorbs clock skew and transit; a
// client re-stamps every retransmission, so the window need not cover the
// 39.5 s retransmission schedule. A server remembers the transaction IDs of
// authenticated requests for as long as their TIMESTAMP is within it.
const Window = 30_000

// Fresh reports whether the TIMESTAMP ts is within Window of now, both in
// Unix milliseconds.
func Fresh(ts, now uint64) bool {
	if ts > now {
		return ts-now <= Window
	}
	return now-ts <= Window
}

// Signer computes HMAC-SHA256 with reused state. The zero value is not
// usable; make one with NewSigner. A Signer must not be used concurrently:
// give each goroutine (each server Handler) its own.
type Signer struct {
	h     hash.Hash
	pad   [sha256.BlockSize]byte
	inner [sha256.Size]byte
	sum   [sha256.Size]byte
	long  [sha256.Size]byte // a key longer than a block, hashed
}

// NewSigner returns a Signer. It allocates; the methods do not.
func NewSigner() *Signer { return &Signer{h: sha256.New()} }

// Sum returns HMAC-SHA256(key, data) in an array owned by s, valid until
// the next call. Keys of any length work (RFC 2104: longer than 64 bytes
// are hashed first); X keys are 16 bytes.
func (s *Signer) Sum(key, data []byte) *[sha256.Size]byte {
	if len(key) > sha256.BlockSize {
		s.h.Reset()
		s.h.Write(key)
		key = s.h.Sum(s.long[:0])
	}
	for i := range s.pad {
		s.pad[i] = 0x36
	}
	for i, k := range key {
		s.pad[i] ^= k
	}
	s.h.Reset()
	s.h.Write(s.pad[:])
	s.h.Write(data)
	inner := s.h.Sum(s.inner[:0])
	for i := range s.pad {
		s.pad[i] ^= 0x36 ^ 0x5c
	}
	s.h.Reset()
	s.h.Write(s.pad[:])
	s.h.Write(inner)
	s.h.Sum(s.sum[:0])
	return &s.sum
}

// Sign writes the MAC of msg, an encoded X message whose last attribute is
// MAC, keyed by key, into that attribute. It returns false (and writes
// nothing) if msg is too short to end in a MAC.
func (s *Signer) Sign(msg, key []byte) bool {
	in, ok := macInput(msg)
	if !ok {
		return false
	}
	wire.PutMAC(msg, s.Sum(key, in)[:])
	return true
}

// Verify reports whether msg, as received, ends in a MAC attribute whose
// value is the MAC of the bytes before it keyed by key. The comparison
// takes the same time whatever the bytes (hmac.Equal), so a forger learns
// nothing from how fast it fails.
func (s *Signer) Verify(msg, key []byte) bool {
	in, ok := macInput(msg)
	if !ok {
		return false
	}
	return hmac.Equal(s.Sum(key, in)[:], msg[len(msg)-wire.MACSize:])
}

// macInput is wire.MACInput for a message that really ends in a MAC
// attribute: type MAC, 8 words. The attribute's header is not under the MAC
// (§11.1), so it is checked here instead.
func macInput(msg []byte) ([]byte, bool) {
	in, ok := wire.MACInput(msg)
	if !ok || binary.BigEndian.Uint16(msg[len(in):]) != uint16(wire.AttrMAC) ||
		binary.BigEndian.Uint16(msg[len(in)+2:]) != wire.MACSize/4 {
		return nil, false
	}
	return in, true
}

// Append encodes m with a MAC keyed by key and appends it to b: m is given
// a MAC attribute (any value m held there is replaced), encoded, and the
// MAC computed over the encoding. A request also needs SetTimestamp before
// (the caller owns the clock). Append does not check that m is valid.
func (s *Signer) Append(b []byte, m *wire.Message, key []byte) []byte {
	m.SetMAC([wire.MACSize]byte{})
	start := len(b)
	b = m.AppendTo(b)
	s.Sign(b[start:], key)
	copy(m.MAC[:], b[len(b)-wire.MACSize:])
	return b
}

// Restamp rewrites, in place, the TIMESTAMP of msg, an encoded message that
// ends in TIMESTAMP followed by MAC (the order wire.Message.AppendTo
// writes), and signs it again. A client calls it before each
// retransmission, so that a request stays fresh for as long as it is
// retransmitted. It returns false if msg does not end that way.
func (s *Signer) Restamp(msg []byte, ts uint64, key []byte) bool {
	const tail = 4 + 8 + 4 + wire.MACSize
	if len(msg) < wire.HeaderSize+tail {
		return false
	}
	at := msg[len(msg)-tail:]
	if binary.BigEndian.Uint16(at[0:2]) != uint16(wire.AttrTimestamp) || binary.BigEndian.Uint16(at[2:4]) != 2 {
		return false
	}
	binary.BigEndian.PutUint64(at[4:12], ts)
	return s.Sign(msg, key)
}
