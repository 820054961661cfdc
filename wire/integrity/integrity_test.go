package integrity_test

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/integrity"
)

// bindReq is the golden BIND request with integrity of docs/PROTOCOL.md
// §17.2 (wire/golden_test.go): its MAC was computed with openssl, keyed by
// KEY 101112…1f.
const bindReq = "c0030050" + "2112a442" + "b7e7a701bc34d686fa87dfae" +
	"00010004" + "000102030405060708090a0b0c0d0e0f" +
	"00020002" + "0001a147e112a643" +
	"00080002" + "0000019ade5e3c00" +
	"00070008" + "fa3a92dbf716c0902eea42dfafc08832b10fa69f6a8da151e3aa972cb4aec2b5"

var key = mustHex("101112131415161718191a1b1c1d1e1f")

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// TestSumMatchesCryptoHMAC is the differential test: the hand-made HMAC
// equals crypto/hmac for keys shorter than, equal to and longer than a
// SHA-256 block, and for messages of many lengths, with one Signer reused
// throughout (so leftover state would show).
func TestSumMatchesCryptoHMAC(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	s := integrity.NewSigner()
	for _, kl := range []int{0, 1, 16, 32, 63, 64, 65, 100, 200} {
		for _, dl := range []int{0, 1, 20, 55, 56, 63, 64, 65, 100, 1500} {
			k := make([]byte, kl)
			d := make([]byte, dl)
			for i := range k {
				k[i] = byte(r.Uint32())
			}
			for i := range d {
				d[i] = byte(r.Uint32())
			}
			h := hmac.New(sha256.New, k)
			h.Write(d)
			if got, want := s.Sum(k, d)[:], h.Sum(nil); !bytes.Equal(got, want) {
				t.Fatalf("key %d bytes, data %d bytes: Sum %x, crypto/hmac %x", kl, dl, got, want)
			}
		}
	}
}

func TestVerifyGoldenAndEveryFlippedByte(t *testing.T) {
	s := integrity.NewSigner()
	b := mustHex(bindReq)
	if !s.Verify(b, key) {
		t.Fatal("golden BIND request does not verify")
	}
	wrong := bytes.Clone(key)
	wrong[15] ^= 1
	if s.Verify(b, wrong) {
		t.Fatal("verified with the wrong KEY")
	}
	for i := range b {
		for _, bit := range []byte{0x01, 0x80} {
			c := bytes.Clone(b)
			c[i] ^= bit
			if s.Verify(c, key) {
				t.Fatalf("byte %d ^ %#x still verifies", i, bit)
			}
		}
	}
	// Too short to end in a MAC, and a message whose last attribute is not
	// MAC (a REGISTER success of the same length's worth of KEY).
	if s.Verify(b[:wire.HeaderSize+35], key) {
		t.Fatal("verified a truncated message")
	}
	reg := mustHex("c1020014" + "2112a442" + "b7e7a701bc34d686fa87dfae" + "00030004" + "101112131415161718191a1b1c1d1e1f")
	if s.Verify(reg, key) || s.Sign(reg, key) {
		t.Fatal("Verify or Sign took a message without MAC")
	}
}

// TestAppendAndRestamp: a sender's path. Append gives the golden bytes;
// Restamp moves the TIMESTAMP and the MAC still verifies and decodes.
func TestAppendAndRestamp(t *testing.T) {
	var m wire.Message
	m.Type = wire.Type{Method: wire.MethodBind, Class: wire.ClassRequest}
	copy(m.TransactionID[:], mustHex("b7e7a701bc34d686fa87dfae"))
	m.SetID(wire.ID(mustHex("000102030405060708090a0b0c0d0e0f")))
	if err := m.AddAddress(wire.Address{AddrPort: netip.MustParseAddrPort("192.0.2.1:32853")}); err != nil {
		t.Fatal(err)
	}
	m.SetTimestamp(0x19ade5e3c00)
	s := integrity.NewSigner()
	prefix := []byte("keep")
	out := s.Append(bytes.Clone(prefix), &m, key)
	if !bytes.HasPrefix(out, prefix) || !bytes.Equal(out[len(prefix):], mustHex(bindReq)) {
		t.Fatalf("Append =\n%x\nwant\n%x", out[len(prefix):], mustHex(bindReq))
	}
	if !bytes.Equal(m.MAC[:], out[len(out)-wire.MACSize:]) {
		t.Fatal("Append did not leave the MAC in the message")
	}
	msg := out[len(prefix):]
	if !s.Restamp(msg, 0x19ade5e4bdc, key) {
		t.Fatal("Restamp refused")
	}
	var d wire.Message
	if err := d.Decode(msg); err != nil || d.Check() != nil {
		t.Fatalf("restamped message: %v / %v", err, d.Check())
	}
	if d.Timestamp != 0x19ade5e4bdc || !s.Verify(msg, key) {
		t.Fatalf("restamped: TIMESTAMP %#x, verifies %v", d.Timestamp, s.Verify(msg, key))
	}
	if s.Restamp(mustHex("c1030000"+"2112a442"+"b7e7a701bc34d686fa87dfae"), 1, key) {
		t.Fatal("Restamp took a message without TIMESTAMP")
	}
}

func TestFresh(t *testing.T) {
	const now = 1_764_667_309_056
	for _, c := range []struct {
		ts   uint64
		want bool
	}{
		{now, true},
		{now - integrity.Window, true},
		{now + integrity.Window, true},
		{now - integrity.Window - 1, false},
		{now + integrity.Window + 1, false},
		{0, false},
		{^uint64(0), false},
	} {
		if got := integrity.Fresh(c.ts, now); got != c.want {
			t.Errorf("Fresh(%d, now) = %v, want %v", c.ts, got, c.want)
		}
	}
}

// TestNoAllocs: the server verifies and signs on its hot path.
func TestNoAllocs(t *testing.T) {
	s := integrity.NewSigner()
	b := mustHex(bindReq)
	long := bytes.Repeat([]byte{7}, 100)
	var m wire.Message
	if err := m.Decode(b); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 0, wire.MaxMessageSize)
	for name, fn := range map[string]func(){
		"Verify":       func() { s.Verify(b, key) },
		"Sum long key": func() { s.Sum(long, b) },
		"Sign":         func() { s.Sign(b, key) },
		"Restamp":      func() { s.Restamp(b, 1, key) },
		"Append":       func() { out = s.Append(out[:0], &m, key) },
	} {
		if n := testing.AllocsPerRun(100, fn); n != 0 {
			t.Errorf("%s: %v allocs per run, want 0", name, n)
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	s := integrity.NewSigner()
	msg := mustHex(bindReq)
	b.ReportAllocs()
	for b.Loop() {
		if !s.Verify(msg, key) {
			b.Fatal("does not verify")
		}
	}
}
