package wire_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// NAT_CLASS words written by hand from the layout in docs/PROTOCOL.md §6.4:
// mapping in the top nibble, filtering, ports, 4 reserved bits, the signed
// delta byte, the flag byte.
var natClassWords = []struct {
	name                      string
	word                      uint32
	mapping, filtering, ports uint8
	delta                     int8
	flags                     uint8
}{
	{"all-unknown", 0x00000000, 0, 0, 0, 0, 0},
	// EIM, EIF, preserved, public + IPv6 + hairpin.
	{"public-host", 0x11100007, 1, 1, 1, 0, wire.NATFlagHairpin | wire.NATFlagIPv6 | wire.NATFlagPublic},
	// APDM, APDF, sequential +1, IPv6.
	{"symmetric-sequential", 0x33200102, 3, 3, 2, 1, wire.NATFlagIPv6},
	// ADM, ADF, sequential −2 (0xfe), hairpin.
	{"adm-down-by-two", 0x2220fe01, 2, 2, 2, -2, wire.NATFlagHairpin},
	// APDM, unknown filtering (server without a second address), random.
	{"symmetric-random", 0x30300000, 3, 0, 3, 0, 0},
}

func TestNATClassWordLayout(t *testing.T) {
	for _, v := range natClassWords {
		t.Run(v.name, func(t *testing.T) {
			c := wire.MakeNATClass(v.mapping, v.filtering, v.ports, v.delta, v.flags)
			if uint32(c) != v.word {
				t.Fatalf("MakeNATClass = %08x, want %08x", uint32(c), v.word)
			}
			d := wire.NATClass(v.word)
			if d.Mapping() != v.mapping || d.Filtering() != v.filtering || d.Ports() != v.ports ||
				d.Delta() != v.delta || d.Flags() != v.flags {
				t.Fatalf("fields of %08x = %d %d %d %d %02x", v.word, d.Mapping(), d.Filtering(), d.Ports(), d.Delta(), d.Flags())
			}
		})
	}
}

// A field above the values in use survives the round trip untouched, so a
// later version can add values (natdisco reads them as unknown).
func TestNATClassKeepsUnassignedValues(t *testing.T) {
	c := wire.NATClass(0xfedcba98)
	got := wire.MakeNATClass(c.Mapping(), c.Filtering(), c.Ports(), c.Delta(), c.Flags())
	// Only the 4 reserved bits are lost.
	if uint32(got) != 0xfed0ba98 {
		t.Fatalf("round trip of 0xfedcba98 = %08x, want fed0ba98", uint32(got))
	}
}

// natClassMsg is a QUERY request carrying ID and NAT_CLASS 0x33200102,
// written by hand: header (length 0x1c), ID, then type 000a length 0001.
const natClassMsg = "c004001c2112a442" + txHex + attrID + "000a0001" + "33200102"

func TestNATClassAttributeGolden(t *testing.T) {
	want := msg(wire.MethodQuery, wire.ClassRequest, withID, func(m *wire.Message) {
		m.SetNATClass(0x33200102)
	})
	b := unhex(t, natClassMsg)
	var got wire.Message
	if err := got.Decode(b); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if !got.Has(wire.AttrNATClass) || got.NATClass != 0x33200102 || !sameMessage(got, want) {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	prefix := []byte("prefix")
	enc := want.AppendTo(append([]byte(nil), prefix...))
	if !bytes.Equal(enc[:len(prefix)], prefix) || !bytes.Equal(enc[len(prefix):], b) {
		t.Fatalf("AppendTo = %x, want prefix + %x", enc, b)
	}
	if want.Len() != len(b) {
		t.Fatalf("Len = %d, want %d", want.Len(), len(b))
	}
	if wire.AttrNATClass.String() != "NAT_CLASS" {
		t.Fatalf("AttrNATClass.String() = %q", wire.AttrNATClass.String())
	}
}

func TestNATClassAttributeInvalid(t *testing.T) {
	for name, body := range map[string]string{
		"zero-words": attrID + "000a0000",
		"two-words":  attrID + "000a0002" + "3320010200000000",
		"twice":      attrID + "000a0001" + "33200102" + "000a0001" + "33200102",
		"truncated":  attrID + "000a0001",
	} {
		t.Run(name, func(t *testing.T) {
			n := len(body) / 2
			b := unhex(t, "c004"+hex4(n)+"2112a442"+txHex+body)
			var m wire.Message
			err := m.Decode(b)
			if !errors.Is(err, wire.ErrInvalidAttributes) {
				t.Fatalf("Decode = %v, want ErrInvalidAttributes", err)
			}
		})
	}
}

func hex4(n int) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[n>>12&15], digits[n>>8&15], digits[n>>4&15], digits[n&15]})
}
