package server

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// TestBindingsMatchAMap drives the open-addressing tables and a plain Go map
// with the same random sets, refreshes and sweeps, and compares them after
// every step: the map is the second opinion on probing, growth, shrinking
// and backward-shift deletion.
func TestBindingsMatchAMap(t *testing.T) {
	b := newBindings()
	type key struct {
		id wire.ID
		tr wire.Transport
	}
	type val struct {
		ap  netip.AddrPort
		exp uint32
	}
	ref := map[key]val{}
	rng := rand.New(rand.NewPCG(7, 9))
	ids := make([]wire.ID, 5000) // few enough that IDs repeat: refreshes
	for i := range ids {
		binary.BigEndian.PutUint64(ids[i][:], rng.Uint64())
		binary.BigEndian.PutUint64(ids[i][8:], rng.Uint64())
	}
	now := uint32(1)
	check := func(step int) {
		t.Helper()
		var live [2]int64
		for k, v := range ref {
			if v.exp > now {
				live[k.tr]++
			}
		}
		for _, id := range ids {
			e, n := b.get(&id, now)
			want := 0
			for tr := range e {
				v, ok := ref[key{id, wire.Transport(tr)}]
				if ok && v.exp > now {
					want++
					if !e[tr].valid() || e[tr].addrPort() != v.ap || e[tr].exp != v.exp {
						t.Fatalf("step %d: %x/%d = %v exp %d, want %v exp %d", step, id[:4], tr, e[tr].addrPort(), e[tr].exp, v.ap, v.exp)
					}
				} else if e[tr].valid() {
					t.Fatalf("step %d: %x/%d bound, want not", step, id[:4], tr)
				}
			}
			if n != want {
				t.Fatalf("step %d: %d live, want %d", step, n, want)
			}
		}
	}
	for step := range 40 {
		for range 3000 {
			id := ids[rng.IntN(len(ids))]
			tr := wire.Transport(rng.IntN(2))
			var ap netip.AddrPort
			if rng.IntN(2) == 0 {
				ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(rng.Uint32()), byte(rng.Uint32()), 1}), uint16(rng.Uint32()))
			} else {
				var a [16]byte
				binary.BigEndian.PutUint64(a[:], rng.Uint64())
				ap = netip.AddrPortFrom(netip.AddrFrom16(a), uint16(rng.Uint32()))
			}
			exp := now + 1 + uint32(rng.IntN(20))
			b.set(&id, tr, ap, 0, exp)
			ref[key{id, tr}] = val{ap, exp}
		}
		now += uint32(rng.IntN(12))
		if step%3 == 0 {
			removed := b.sweep(now)
			want := 0
			for k, v := range ref {
				if v.exp <= now {
					delete(ref, k)
					want++
				}
			}
			if removed != want {
				t.Fatalf("step %d: sweep removed %d, want %d", step, removed, want)
			}
			if got := b.live[0].Load() + b.live[1].Load(); got != int64(len(ref)) {
				t.Fatalf("step %d: live gauge %d, want %d", step, got, len(ref))
			}
		}
		check(step)
	}
	// Everything expires; the tables shrink back.
	now += 100
	b.sweep(now)
	for i := range b.shards {
		for tr := range b.shards[i].t {
			if tb := &b.shards[i].t[tr]; tb.used != 0 || len(tb.recs) > 2*bindMinSlots {
				t.Fatalf("after expiry: shard %d/%d holds %d in %d records", i, tr, tb.used, len(tb.recs))
			}
		}
	}
}
