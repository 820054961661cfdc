package wire_test

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// Relay vectors, written by hand from docs/PROTOCOL.md §17. The strings are
// ASCII, written out as hex with their 16-bit length in front and zero
// padding behind:
//
//	turn:192.0.2.1:3479?transport=udp   33 bytes → 0021 + 33 bytes + 00      (9 words)
//	1700000000:000102…0f                43 bytes → 002b + 43 bytes + 000000  (12 words)
//	cijJwm/EKovf/K65/CoXNgQgd1E=        28 bytes → 001c + 28 bytes + 0000    (8 words)
//
// The password is the TURN REST one, computed outside Go:
//
//	echo -n 1700000000:000102030405060708090a0b0c0d0e0f |
//	  openssl dgst -sha1 -hmac ewf-golden-secret -binary | base64
const (
	relayURLUDP  = "turn:192.0.2.1:3479?transport=udp"
	relayURLTCP  = "turn:192.0.2.1:3479?transport=tcp"
	relayUser    = "1700000000:000102030405060708090a0b0c0d0e0f"
	relayPass    = "cijJwm/EKovf/K65/CoXNgQgd1E="
	relayExpiry  = 1700000000
	attrURLUDP   = "000e0009" + "0021" + "7475726e3a3139322e302e322e313a333437393f7472616e73706f72743d756470" + "00"
	attrURLTCP   = "000e0009" + "0021" + "7475726e3a3139322e302e322e313a333437393f7472616e73706f72743d746370" + "00"
	attrUser     = "000f000c" + "002b" + "313730303030303030303a" + "3030303130323033303430353036303730383039306130623063306430653066" + "000000"
	attrPass     = "00100008" + "001c" + "63696a4a776d2f454b6f76662f4b36352f436f584e6751676431453d" + "0000"
	attrExpiry   = "00110002" + "000000006553f100"
	relayPadding = 536 // 600 − 20 header − 20 ID − 20 KEY − 4 PADDING header
)

func relayGoldens(t *testing.T) []golden {
	t.Helper()
	withRelay := func(m *wire.Message) {
		for _, err := range []error{
			m.AddRelayURL([]byte(relayURLUDP)), m.AddRelayURL([]byte(relayURLTCP)),
			m.SetRelayUsername([]byte(relayUser)), m.SetRelayPassword([]byte(relayPass)),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		m.SetRelayExpiry(relayExpiry)
	}
	withPadding := func(m *wire.Message) { m.Padding = relayPadding }
	return []golden{
		{"relay-request-padded", hdr("c008", "0244") + attrID + attrKey + "80070086" + strings.Repeat("00", relayPadding),
			msg(wire.MethodRelay, wire.ClassRequest, withID, withKey, withPadding)},
		{"relay-request-bare", hdr("c008", "0028") + attrID + attrKey,
			msg(wire.MethodRelay, wire.ClassRequest, withID, withKey)},
		{"relay-success", hdr("c108", "00b4") + attrURLUDP + attrURLTCP + attrUser + attrPass + attrExpiry,
			msg(wire.MethodRelay, wire.ClassSuccess, withRelay)},
		{"relay-error-no-relay", hdr("c118", "0008") + reason("0000000d"),
			msg(wire.MethodRelay, wire.ClassError, withReason(wire.ReasonNoRelay))},
	}
}

func TestRelayGolden(t *testing.T) {
	prefix := []byte("prefix")
	for _, g := range relayGoldens(t) {
		t.Run(g.name, func(t *testing.T) {
			b := unhex(t, g.hex)
			var m wire.Message
			if err := m.Decode(b); err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if err := m.Check(); err != nil {
				t.Fatalf("Check: %v", err)
			}
			if !sameMessage(m, g.want) {
				t.Fatalf("Decode =\n%+v\nwant\n%+v", m, g.want)
			}
			w := g.want
			if w.Len() != len(b) {
				t.Fatalf("Len = %d, want %d", w.Len(), len(b))
			}
			out := w.AppendTo(append([]byte(nil), prefix...))
			if !bytes.Equal(out[len(prefix):], b) {
				t.Fatalf("AppendTo =\n%x\nwant\n%x", out[len(prefix):], b)
			}
			m.Reset()
			var zero wire.Message
			if !sameMessage(m, zero) {
				t.Fatalf("Reset left %+v", m)
			}
		})
	}
	if got := len(unhex(t, relayGoldens(t)[0].hex)); got != wire.RelayRequestSize {
		t.Fatalf("padded request is %d bytes, want RelayRequestSize %d", got, wire.RelayRequestSize)
	}
}

// TestRelayStringRules: every way a string attribute can be malformed is
// invalid attributes, never a crash or a silently truncated string.
func TestRelayStringRules(t *testing.T) {
	base := hdr("c108", "%s") + attrUser + attrPass + attrExpiry
	cases := []struct{ name, url string }{
		{"empty string", "000e0001" + "0000" + "0000"},
		{"length past the value", "000e0001" + "0003" + "6162"},
		{"too much padding", "000e0002" + "0001" + "61" + "0000000000"},
		{"non-zero padding", "000e0001" + "0001" + "61" + "01"},
		{"value shorter than the length field", "000e0000"},
		{"over MaxRelayString", "000e0041" + "0100" + strings.Repeat("61", 256) + "0000"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := len(c.url)/2 + len(attrUser+attrPass+attrExpiry)/2
			h := strings.Replace(base, "%s", relayHex4(body), 1)
			b := unhex(t, h[:48]+c.url+h[48:])
			var m wire.Message
			err := m.Decode(b)
			if !errors.Is(err, wire.ErrInvalidAttributes) {
				t.Fatalf("Decode = %v, want invalid attributes", err)
			}
		})
	}
	t.Run("fifth URL", func(t *testing.T) {
		body := 5*len(attrURLUDP)/2 + len(attrUser+attrPass+attrExpiry)/2
		h := hdr("c108", relayHex4(body)) + strings.Repeat(attrURLUDP, 5) + attrUser + attrPass + attrExpiry
		var m wire.Message
		if err := m.Decode(unhex(t, h)); !errors.Is(err, wire.ErrInvalidAttributes) {
			t.Fatalf("Decode = %v, want invalid attributes", err)
		}
	})
	t.Run("second username", func(t *testing.T) {
		body := len(attrUser+attrUser+attrPass+attrExpiry) / 2
		h := hdr("c108", relayHex4(body)) + attrUser + attrUser + attrPass + attrExpiry
		var m wire.Message
		if err := m.Decode(unhex(t, h)); !errors.Is(err, wire.ErrInvalidAttributes) {
			t.Fatalf("Decode = %v, want invalid attributes", err)
		}
	})
	t.Run("success without password", func(t *testing.T) {
		body := len(attrURLUDP+attrUser+attrExpiry) / 2
		var m wire.Message
		if err := m.Decode(unhex(t, hdr("c108", relayHex4(body))+attrURLUDP+attrUser+attrExpiry)); err != nil {
			t.Fatal(err)
		}
		if err := m.Check(); !errors.Is(err, wire.ErrInvalidAttributes) {
			t.Fatalf("Check = %v, want invalid attributes (missing)", err)
		}
	})
	t.Run("relay attribute in a BIND", func(t *testing.T) {
		body := len(attrID+attrKey+udp4+attrExpiry) / 2
		var m wire.Message
		if err := m.Decode(unhex(t, hdr("c003", relayHex4(body))+attrID+attrKey+udp4+attrExpiry)); err != nil {
			t.Fatal(err)
		}
		if err := m.Check(); !errors.Is(err, wire.ErrInvalidAttributes) {
			t.Fatalf("Check = %v, want invalid attributes (not allowed)", err)
		}
	})
	t.Run("setters", func(t *testing.T) {
		var m wire.Message
		if err := m.AddRelayURL(nil); !errors.Is(err, wire.ErrBadString) {
			t.Fatalf("empty URL: %v", err)
		}
		if err := m.SetRelayUsername(make([]byte, 256)); !errors.Is(err, wire.ErrBadString) {
			t.Fatalf("long username: %v", err)
		}
		for range wire.MaxRelayURLs {
			if err := m.AddRelayURL([]byte("turn:x")); err != nil {
				t.Fatal(err)
			}
		}
		if err := m.AddRelayURL([]byte("turn:x")); !errors.Is(err, wire.ErrTooManyURLs) {
			t.Fatalf("fifth URL: %v", err)
		}
	})
}

// TestRelayEveryPrefix: every truncation of the relay vectors is refused.
func TestRelayEveryPrefix(t *testing.T) {
	for _, g := range relayGoldens(t) {
		b := unhex(t, g.hex)
		for n := range len(b) {
			var m wire.Message
			if err := m.Decode(b[:n]); err == nil {
				t.Fatalf("%s: a %d-byte prefix decoded", g.name, n)
			}
		}
	}
}

func relayHex4(n int) string { return hex.EncodeToString([]byte{byte(n >> 8), byte(n)}) }
