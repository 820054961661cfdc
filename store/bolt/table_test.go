package bolt

import (
	"hash/maphash"
	"math/rand/v2"
	"testing"
	"unsafe"

	"github.com/ewf-project/ewf/store"
)

// TestTableMatchesBuiltinMap runs random inserts and removals against the
// hand-written table and Go's map side by side. IDs come from a small
// space so removals hit, and a tiny table so probe runs wrap around the end.
func TestTableMatchesBuiltinMap(t *testing.T) {
	seed := maphash.MakeSeed()
	r := rand.New(rand.NewPCG(3, 4))
	tab := newTable(0)
	want := map[store.ID]uint32{}
	randID := func() store.ID { return store.ID{byte(r.IntN(6)), byte(r.IntN(200))} }
	check := func(step int) {
		t.Helper()
		if tab.used != len(want) {
			t.Fatalf("step %d: used = %d, map has %d", step, tab.used, len(want))
		}
		for id, v := range want {
			i, ok := tab.find(&id, hashID(seed, &id))
			if !ok || tab.slots[i].last != v {
				t.Fatalf("step %d: %x: found=%v last=%d, want %d", step, id, ok, tab.slots[i].last, v)
			}
		}
		if float64(tab.used) > maxLoad*float64(len(tab.slots)) {
			t.Fatalf("step %d: load %d/%d above maxLoad", step, tab.used, len(tab.slots))
		}
	}
	for step := range 20000 {
		id := randID()
		h := hashID(seed, &id)
		i, ok := tab.find(&id, h)
		if _, inMap := want[id]; ok != inMap {
			t.Fatalf("step %d: find(%x) = %v, map says %v", step, id, ok, inMap)
		}
		switch {
		case ok && r.IntN(3) > 0:
			tab.removeAt(i, seed)
			delete(want, id)
		case !ok:
			tab.insert(slot{id: id, last: uint32(step)}, h, seed)
			want[id] = uint32(step)
		}
		if step%97 == 0 {
			check(step)
		}
		if step%5000 == 4999 {
			tab.shrink(seed)
			check(step)
		}
	}
	check(-1)
	// Remove everything: the table must end empty and findable-nothing.
	for id := range want {
		i, _ := tab.find(&id, hashID(seed, &id))
		tab.removeAt(i, seed)
		delete(want, id)
	}
	check(-2)
	for i := range tab.slots {
		if tab.slots[i] != (slot{}) {
			t.Fatalf("slot %d not cleared after removing everything: %+v", i, tab.slots[i])
		}
	}
}

func TestTableMemoryPerEntry(t *testing.T) {
	// A million-entry index must stay far below the 200 MB the store may
	// use; this pins the per-entry cost of the layout, not the runtime's.
	x := newIndex(0, 0)
	is, ks := ids(6, 200_000)
	for i := range is {
		x.load(&is[i], &ks[i], 0, uint64(i+1))
	}
	slots := 0
	for i := range x.shards {
		slots += len(x.shards[i].t.slots)
	}
	size := float64(unsafe.Sizeof(slot{}))
	perEntry := float64(slots) * size / float64(len(is))
	t.Logf("%.1f bytes per registration (%d slots for %d)", perEntry, slots, len(is))
	if perEntry > size/0.6 {
		t.Errorf("%.1f bytes per registration", perEntry)
	}
}
