package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// randomMessage fills a message with a random choice of attributes and
// addresses through the setters. It need not pass Check: the codec must
// round-trip anything its setters can express.
func randomMessage(r *rand.Rand) wire.Message {
	var m wire.Message
	m.Type = wire.Type{Method: wire.Method(r.IntN(0x1000)), Class: wire.Class(r.IntN(4))}
	for i := range m.TransactionID {
		m.TransactionID[i] = byte(r.Uint32())
	}
	fill := func(b []byte) {
		for i := range b {
			b[i] = byte(r.Uint32())
		}
	}
	if r.IntN(2) == 0 {
		m.SetReason(wire.Reason(r.Uint32()))
	}
	if r.IntN(2) == 0 {
		var id wire.ID
		fill(id[:])
		m.SetID(id)
	}
	if r.IntN(2) == 0 {
		var id wire.ID
		fill(id[:])
		m.SetSourceID(id)
	}
	if r.IntN(2) == 0 {
		var k wire.Key
		fill(k[:])
		m.SetKey(k)
	}
	if r.IntN(2) == 0 {
		var s wire.Secret
		fill(s[:])
		m.SetSecret(s)
	}
	if r.IntN(2) == 0 {
		m.SetNATClass(wire.NATClass(r.Uint32()))
	}
	for _, tr := range []wire.Transport{wire.TransportUDP, wire.TransportTCP} {
		if r.IntN(2) == 0 {
			_ = m.AddAddress(wire.Address{Transport: tr, AddrPort: randomAddrPort(r)})
		}
	}
	for range r.IntN(wire.MaxCandidates + 1) {
		_ = m.AddCandidate(wire.Address{Transport: wire.Transport(r.IntN(2)), AddrPort: randomAddrPort(r)})
	}
	for range r.IntN(wire.MaxRelayed + 1) {
		_ = m.AddRelayed(wire.Address{Transport: wire.Transport(r.IntN(2)), AddrPort: randomAddrPort(r)})
	}
	if r.IntN(2) == 0 {
		var mac [wire.MACSize]byte
		fill(mac[:])
		m.SetSignalMAC(mac)
	}
	if r.IntN(2) == 0 {
		var mac [wire.MACSize]byte
		fill(mac[:])
		m.SetMAC(mac)
	}
	return m
}

func randomAddrPort(r *rand.Rand) netip.AddrPort {
	port := uint16(r.Uint32())
	switch r.IntN(3) {
	case 0:
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], r.Uint32())
		return netip.AddrPortFrom(netip.AddrFrom4(a), port)
	case 1: // IPv4-mapped: the setter must unmap it
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], r.Uint32())
		return netip.AddrPortFrom(netip.AddrFrom16(netip.AddrFrom4(a).As16()), port)
	}
	var a [16]byte
	binary.BigEndian.PutUint64(a[:8], r.Uint64())
	binary.BigEndian.PutUint64(a[8:], r.Uint64())
	return netip.AddrPortFrom(netip.AddrFrom16(a), port)
}

// TestRoundTrip: Decode(AppendTo(m)) == m and Len() == len(AppendTo(m))
// for random messages.
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var got wire.Message
	for i := range 5000 {
		m := randomMessage(r)
		b := m.AppendTo(nil)
		if len(b) != m.Len() {
			t.Fatalf("#%d: len %d, Len %d", i, len(b), m.Len())
		}
		if err := got.Decode(b); err != nil {
			t.Fatalf("#%d: Decode(%x): %v", i, b, err)
		}
		if !sameMessage(got, m) {
			t.Fatalf("#%d: round trip\n%+v\n%+v", i, got, m)
		}
		// A decoded message re-encodes to the same bytes.
		if b2 := got.AppendTo(nil); !bytes.Equal(b2, b) {
			t.Fatalf("#%d: re-encoding differs", i)
		}
	}
}

// TestDecodeReuse: a Message reused for a smaller message forgets the
// larger one's attributes.
func TestDecodeReuse(t *testing.T) {
	var m wire.Message
	for _, g := range goldens {
		if err := m.Decode(unhex(t, g.hex)); err != nil {
			t.Fatal(err)
		}
		if !sameMessage(m, g.want) {
			t.Fatalf("%s: reused message\n%+v\nwant\n%+v", g.name, m, g.want)
		}
	}
}

// TestEveryPrefixTruncation: no proper prefix of a valid message decodes,
// and the same holds when the header length is patched to match the cut
// (a sender that truncated honestly): a cut inside an attribute is an
// attribute error, a cut between attributes yields exactly the attributes
// before it.
func TestEveryPrefixTruncation(t *testing.T) {
	for _, g := range goldens {
		b := unhex(t, g.hex)
		var m wire.Message
		for i := range len(b) {
			if err := m.Decode(b[:i]); !errors.Is(err, wire.ErrInvalidHeader) {
				t.Fatalf("%s[:%d]: Decode = %v, want ErrInvalidHeader", g.name, i, err)
			}
		}
		boundaries := map[int]bool{wire.HeaderSize: true}
		for off := wire.HeaderSize; off < len(b); {
			off += 4 + 4*int(binary.BigEndian.Uint16(b[off+2:off+4]))
			boundaries[off] = true
		}
		for i := wire.HeaderSize; i < len(b); i += 4 {
			c := bytes.Clone(b[:i])
			binary.BigEndian.PutUint16(c[2:4], uint16(i-wire.HeaderSize))
			err := m.Decode(c)
			if !boundaries[i] {
				if !errors.Is(err, wire.ErrInvalidAttributes) {
					t.Fatalf("%s cut at %d: Decode = %v, want ErrInvalidAttributes", g.name, i, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("%s cut at %d (between attributes): %v", g.name, i, err)
			}
			if got, want := m.Len(), i; got != want {
				t.Fatalf("%s cut at %d: decoded %d bytes' worth", g.name, i, got)
			}
		}
	}
}

// TestOptionalAttributesSkipped: comprehension-optional attributes
// (0x8000-0xFFFF) of any size, anywhere before MAC, do not change the
// decoded message and are dropped by AppendTo.
func TestOptionalAttributesSkipped(t *testing.T) {
	opts := [][]byte{
		{0x80, 0x00, 0x00, 0x00},
		{0xff, 0xff, 0x00, 0x01, 1, 2, 3, 4},
		{0x80, 0x22, 0x00, 0x02, 'e', 'w', 'f', ' ', 'v', '0', '.', '1'}, // a SOFTWARE-like value
	}
	for _, g := range goldens {
		b := unhex(t, g.hex)
		// Attribute boundaries where an optional attribute may go: not
		// after MAC.
		var offs []int
		for off := wire.HeaderSize; ; {
			offs = append(offs, off)
			if off == len(b) || binary.BigEndian.Uint16(b[off:off+2]) == uint16(wire.AttrMAC) {
				break
			}
			off += 4 + 4*int(binary.BigEndian.Uint16(b[off+2:off+4]))
		}
		for _, off := range offs {
			for _, o := range opts {
				c := append(append(append([]byte(nil), b[:off]...), o...), b[off:]...)
				binary.BigEndian.PutUint16(c[2:4], uint16(len(c)-wire.HeaderSize))
				var m wire.Message
				if err := m.Decode(c); err != nil {
					t.Fatalf("%s + %x at %d: %v", g.name, o, off, err)
				}
				if err := m.Check(); err != nil {
					t.Fatalf("%s + %x at %d: Check %v", g.name, o, off, err)
				}
				if !sameMessage(m, g.want) {
					t.Fatalf("%s + %x at %d: decoded differently", g.name, o, off)
				}
				if !bytes.Equal(m.AppendTo(nil), b) {
					t.Fatalf("%s + %x at %d: re-encoding kept the optional attribute", g.name, o, off)
				}
			}
		}
	}
}

// TestAttributeOrderIrrelevant: Decode accepts the attributes of a
// message in any order (MAC still last) and yields the same message.
func TestAttributeOrderIrrelevant(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, g := range goldens {
		b := unhex(t, g.hex)
		var attrs [][]byte
		var mac []byte
		for off := wire.HeaderSize; off < len(b); {
			end := off + 4 + 4*int(binary.BigEndian.Uint16(b[off+2:off+4]))
			if binary.BigEndian.Uint16(b[off:off+2]) == uint16(wire.AttrMAC) {
				mac = b[off:end]
			} else {
				attrs = append(attrs, b[off:end])
			}
			off = end
		}
		for range 10 {
			r.Shuffle(len(attrs), func(i, j int) { attrs[i], attrs[j] = attrs[j], attrs[i] })
			c := append([]byte(nil), b[:wire.HeaderSize]...)
			for _, a := range attrs {
				c = append(c, a...)
			}
			c = append(c, mac...)
			var m wire.Message
			if err := m.Decode(c); err != nil {
				t.Fatalf("%s shuffled: %v", g.name, err)
			}
			// Two addresses keep the order they arrived in; compare as
			// sets by re-adding in canonical order.
			if m.NumAddresses != g.want.NumAddresses || m.NumCandidates != g.want.NumCandidates {
				t.Fatalf("%s shuffled: address counts differ", g.name)
			}
			for _, a := range g.want.Addresses[:g.want.NumAddresses] {
				if got, ok := m.Address(a.Transport); !ok || got != a.AddrPort {
					t.Fatalf("%s shuffled: %v missing", g.name, a)
				}
			}
			if m.ID != g.want.ID || m.Key != g.want.Key || m.SourceID != g.want.SourceID ||
				m.Secret != g.want.Secret || m.Reason != g.want.Reason || m.MAC != g.want.MAC {
				t.Fatalf("%s shuffled: fixed attributes differ", g.name)
			}
		}
	}
}

// TestResetIsZero: Reset after the largest message leaves exactly the zero
// Message, also when the counts were set out of range by hand.
func TestResetIsZero(t *testing.T) {
	for _, g := range goldens {
		m := g.want
		m.Raw = []byte{1}
		m.Reset()
		if !reflect.DeepEqual(m, wire.Message{}) {
			t.Fatalf("%s: Reset left %+v", g.name, m)
		}
	}
	m := wire.Message{NumAddresses: -1, NumCandidates: 99, NumRelayed: 7}
	m.Reset()
	if !reflect.DeepEqual(m, wire.Message{}) {
		t.Fatalf("Reset with bad counts left %+v", m)
	}
}
