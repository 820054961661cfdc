package punch

import (
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// go test ./punch -run '^$' -bench . -benchmem

func BenchmarkReceiveForged(b *testing.B) {
	raw := build(wire.ClassRequest, txid(1), idB, testSecret)
	raw[len(raw)-1] ^= 1
	msg := decode(b, raw)
	m := newA(b, nil)
	m.Tick(t0)
	b.ReportAllocs()
	for b.Loop() {
		m.Receive(msg, peerAddr, t0)
	}
}

func BenchmarkReceiveWrongPeer(b *testing.B) {
	msg := decode(b, build(wire.ClassRequest, txid(1), idOf("mallory"), testSecret))
	m := newA(b, nil)
	m.Tick(t0)
	b.ReportAllocs()
	for b.Loop() {
		m.Receive(msg, peerAddr, t0)
	}
}

func BenchmarkReceiveRequest(b *testing.B) {
	reqs := make([]*wire.Message, 256)
	for i := range reqs {
		reqs[i] = fromB(b, wire.ClassRequest, txid(byte(i)))
	}
	m := newA(b, nil)
	m.Tick(t0)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.Receive(reqs[i%len(reqs)], peerAddr, t0)
		i++
	}
}

func BenchmarkTickAllCandidates(b *testing.B) {
	m := newA(b, nil)
	now := t0
	b.ReportAllocs()
	for b.Loop() {
		// Every candidate due: the worst case of one Tick, two requests.
		m.Tick(now)
		for i := range m.cands[:m.ncands] {
			m.cands[i].next = now
		}
	}
}
