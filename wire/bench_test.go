package wire_test

import (
	"bytes"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// benchCases are the messages the benchmarks and the allocation test use:
// the smallest and the largest of what a server decodes and encodes.
func benchCases(tb testing.TB) []golden {
	want := map[string]bool{
		"register-request":                      true,
		"bind-request-tcp6":                     true,
		"query-request-introduction-candidates": true,
		"query-success-udp4-tcp6":               true,
		"introduce-indication-candidates":       true,
		"punch-request":                         true,
		"bind-request-integrity":                true,
	}
	var out []golden
	for _, g := range goldens {
		if want[g.name] {
			out = append(out, g)
		}
	}
	if len(out) != len(want) {
		tb.Fatal("benchmark case missing from goldens")
	}
	return out
}

// TestNoAllocs locks in the zero-allocation claims of the package doc:
// decoding (also of malformed input, which an attacker controls), Check,
// Len, AppendTo into a buffer with room, Classify and the framer's Next.
func TestNoAllocs(t *testing.T) {
	bad := unhex(t, hdr("c002", "0014")+"00010005"+idHex)
	for _, g := range benchCases(t) {
		b := unhex(t, g.hex)
		var m wire.Message
		out := make([]byte, 0, wire.MaxMessageSize)
		stream := bytes.Repeat(b, 300)
		r := bytes.NewReader(stream)
		f := wire.NewFramer(r)
		for _, c := range []struct {
			name string
			fn   func()
		}{
			{"Decode", func() { _ = m.Decode(b) }},
			{"Decode malformed", func() { _ = m.Decode(bad) }},
			{"Decode+Check", func() { _ = m.Decode(b); _ = m.Check() }},
			{"AppendTo", func() { out = g.want.AppendTo(out[:0]) }},
			{"Len", func() { _ = g.want.Len() }},
			{"Classify", func() { _ = wire.Classify(b) }},
			{"Framer.Next", func() {
				if _, _, err := f.Next(); err != nil {
					t.Fatal(err)
				}
			}},
		} {
			if n := testing.AllocsPerRun(200, c.fn); n != 0 {
				t.Errorf("%s %s: %v allocs per run, want 0", g.name, c.name, n)
			}
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, g := range benchCases(b) {
		msg := unhex(b, g.hex)
		b.Run(g.name, func(b *testing.B) {
			var m wire.Message
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if err := m.Decode(msg); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecodeCheck(b *testing.B) {
	for _, g := range benchCases(b)[:1] {
		msg := unhex(b, g.hex)
		b.Run(g.name, func(b *testing.B) {
			var m wire.Message
			b.ReportAllocs()
			for b.Loop() {
				if m.Decode(msg) != nil || m.Check() != nil {
					b.Fatal("bad golden")
				}
			}
		})
	}
}

func BenchmarkDecodeMalformed(b *testing.B) {
	msg := unhex(b, hdr("c002", "0014")+"00010005"+idHex)
	var m wire.Message
	b.ReportAllocs()
	for b.Loop() {
		if m.Decode(msg) == nil {
			b.Fatal("accepted")
		}
	}
}

func BenchmarkAppendTo(b *testing.B) {
	for _, g := range benchCases(b) {
		m := g.want
		b.Run(g.name, func(b *testing.B) {
			out := make([]byte, 0, wire.MaxMessageSize)
			b.ReportAllocs()
			b.SetBytes(int64(m.Len()))
			for b.Loop() {
				out = m.AppendTo(out[:0])
			}
		})
	}
}

func BenchmarkClassify(b *testing.B) {
	for _, c := range []struct{ name, hex string }{
		{"X", goldens[0].hex},
		{"STUN", "00010000" + "2112a442" + txHex},
		{"QUIC", "c3" + "00000001" + "08" + "0123456789abcdef" + "08" + "fedcba9876543210" + "00"},
	} {
		msg := unhex(b, c.hex)
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = wire.Classify(msg)
			}
		})
	}
}

func BenchmarkFramer(b *testing.B) {
	all, msgs := stream(b)
	b.ReportAllocs()
	b.SetBytes(int64(len(all)))
	r := bytes.NewReader(all)
	f := wire.NewFramer(r)
	for b.Loop() {
		r.Reset(all)
		f.Reset(r)
		for range msgs {
			if _, _, err := f.Next(); err != nil {
				b.Fatal(err)
			}
		}
	}
}
