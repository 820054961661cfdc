package bolt

import (
	"hash/maphash"
	"math/bits"

	"github.com/ewf-project/ewf/store"
)

// slot is one registration in memory: 48 bytes without pointers, so the
// garbage collector never scans the tables.
type slot struct {
	id    store.ID
	key   store.Key
	seq   uint64 // the record's bbolt key; 0 while pending
	last  uint32 // unix seconds of the last recorded use (see Options.TouchResolution)
	flags uint8
}

const (
	// flagUsed marks a slot that holds a registration.
	flagUsed uint8 = 1 << iota
	// flagPending marks an ID reserved by Register whose record is not on
	// disk yet. It blocks a second Register of the same ID but is invisible
	// to Lookup and Touch.
	flagPending
	// flagDirty marks a last-use time that the disk does not have yet. The
	// ID is then also in its shard's dirty list.
	flagDirty
)

// Load limits of a table. Go's built-in map would cost 60 to 120 bytes per
// registration for a slot this size (measured for 40-byte slots: 50 to 100;
// it doubles, and the shards, filled by random IDs, double in lockstep, so
// at 1M entries every table sat at 48% load). Growing by 1.25x keeps a table
// between 64% and 80% full, about 67 bytes per registration, and a lookup of
// an absent ID still probes only ~13 slots (linear probing at 80%).
const (
	maxLoad = 0.80
	growBy  = 1.25
	// loadLoad is the fill Open sizes tables for, leaving room to grow
	// before the first resize.
	loadLoad = 0.70
	minSlots = 16
)

// hashID is the table hash: seeded per process, so a client cannot choose
// IDs that pile up in one shard or one probe run.
func hashID(seed maphash.Seed, id *store.ID) uint64 {
	return maphash.Bytes(seed, id[:])
}

// table is an open-addressing hash table with linear probing and
// backward-shift deletion (no tombstones, so probe lengths do not degrade
// with churn). Hashes come from the index: a seeded hash, so clients
// cannot pick IDs that collide.
type table struct {
	slots []slot
	used  int
}

func newTable(entries int) table {
	return table{slots: make([]slot, max(int(float64(entries)/loadLoad)+1, minSlots))}
}

// home maps h onto the table with a multiply instead of a modulo, which
// lets the size be any number, not just a power of two.
func (t *table) home(h uint64) int {
	hi, _ := bits.Mul64(h, uint64(len(t.slots)))
	return int(hi)
}

// find returns the index of id's slot, or of the free slot where it would
// go, and whether id is there.
func (t *table) find(id *store.ID, h uint64) (int, bool) {
	n := len(t.slots)
	for i := t.home(h); ; {
		s := &t.slots[i]
		if s.flags&flagUsed == 0 {
			return i, false
		}
		if s.id == *id {
			return i, true
		}
		if i++; i == n {
			i = 0
		}
	}
}

// insert stores s, which must not be in t, growing t first if needed.
func (t *table) insert(s slot, h uint64, seed maphash.Seed) {
	if float64(t.used+1) > maxLoad*float64(len(t.slots)) {
		t.resize(int(float64(len(t.slots))*growBy)+1, seed)
	}
	i, _ := t.find(&s.id, h)
	s.flags |= flagUsed
	t.slots[i] = s
	t.used++
}

// removeAt empties slot i and shifts later entries of its probe run back,
// so that every entry stays reachable from its home slot.
func (t *table) removeAt(i int, seed maphash.Seed) {
	n := len(t.slots)
	for j := i; ; {
		if j++; j == n {
			j = 0
		}
		s := &t.slots[j]
		if s.flags&flagUsed == 0 {
			break
		}
		// The entry at j may fill the hole at i unless its home k lies
		// cyclically in (i, j]: then i is before its home.
		k := t.home(hashID(seed, &s.id))
		if (i < j && (k <= i || k > j)) || (i > j && k <= i && k > j) {
			t.slots[i] = *s
			i = j
		}
	}
	t.slots[i] = slot{}
	t.used--
}

// resize rehashes t into n slots.
func (t *table) resize(n int, seed maphash.Seed) {
	old := t.slots
	t.slots = make([]slot, max(n, minSlots))
	for i := range old {
		if old[i].flags&flagUsed != 0 {
			j, _ := t.find(&old[i].id, hashID(seed, &old[i].id))
			t.slots[j] = old[i]
		}
	}
}

// shrink gives memory back after many deletions (a large expiry), keeping
// the table at the fill Open would give it.
func (t *table) shrink(seed maphash.Seed) {
	if float64(t.used) < 0.5*maxLoad*float64(len(t.slots)) && len(t.slots) > minSlots {
		t.resize(int(float64(t.used)/loadLoad)+1, seed)
	}
}
