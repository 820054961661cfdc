package bolt

import (
	"hash/maphash"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ewf-project/ewf/store"
)

// shardCount splits the index so that Touch (which writes) on one core and
// Lookup on another rarely meet on the same lock, and so that a table
// resize stalls only 1/64 of the lookups. A power of two, so picking a shard
// is a mask.
const shardCount = 64

type shard struct {
	mu    sync.RWMutex
	t     table
	dirty []store.ID // IDs with flagDirty, reused between flushes
	// Keeps neighbouring shards' locks off one cache line; otherwise the two
	// cores would still fight over the line while holding different locks.
	_ [64]byte
}

// index is the in-memory copy of every registration, plus reservations of
// registrations being committed. The disk is the truth after a crash; while
// the store runs, the index is the truth and the disk catches up.
type index struct {
	seed   maphash.Seed
	shards [shardCount]shard
	count  atomic.Int64 // entries in all shards, pending included
	// res is the touch resolution in seconds: a Touch less than res after
	// the recorded last use changes nothing, which bounds disk writes for
	// busy clients to one per res.
	res uint32
}

// newIndex makes an index with room for about entries registrations.
func newIndex(res time.Duration, entries int) *index {
	x := &index{
		seed: maphash.MakeSeed(),
		res:  uint32(min(max(res/time.Second, 1), math.MaxUint32)),
	}
	// Random IDs spread evenly: four standard deviations of a binomial
	// shard size is under 1% at 1M, well inside loadLoad's room.
	per := entries / shardCount
	for i := range x.shards {
		x.shards[i].t = newTable(per)
	}
	return x
}

func (x *index) hash(id *store.ID) uint64 {
	return hashID(x.seed, id)
}

// locate returns id's hash and shard. The shard comes from the low bits and
// the table position from the high bits (table.home), so they do not
// correlate.
func (x *index) locate(id *store.ID) (uint64, *shard) {
	h := x.hash(id)
	return h, &x.shards[h&(shardCount-1)]
}

// unixSecs converts t to the index's uint32 seconds, clamped: registrations
// predate 1970 only on a broken clock, and 2106 is far away.
func unixSecs(t time.Time) uint32 {
	s := t.Unix()
	if s < 0 {
		return 0
	}
	if s > math.MaxUint32 {
		return math.MaxUint32
	}
	return uint32(s)
}

// reserve inserts id as pending, refusing duplicates and, when limit > 0,
// more than limit entries.
func (x *index) reserve(id *store.ID, key *store.Key, last uint32, limit int64) error {
	h, s := x.locate(id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.t.find(id, h); ok {
		return store.ErrExists
	}
	if n := x.count.Add(1); limit > 0 && n > limit {
		x.count.Add(-1)
		return store.ErrFull
	}
	s.t.insert(slot{id: *id, key: *key, last: last, flags: flagPending}, h, x.seed)
	return nil
}

// confirm makes a committed reservation visible and records where on disk
// it went.
func (x *index) confirm(id *store.ID, seq uint64) {
	h, s := x.locate(id)
	s.mu.Lock()
	if i, ok := s.t.find(id, h); ok {
		s.t.slots[i].flags &^= flagPending
		s.t.slots[i].seq = seq
	}
	s.mu.Unlock()
}

// release drops a reservation whose commit failed or was never queued.
func (x *index) release(id *store.ID) {
	h, s := x.locate(id)
	s.mu.Lock()
	if i, ok := s.t.find(id, h); ok && s.t.slots[i].flags&flagPending != 0 {
		s.t.removeAt(i, x.seed)
		x.count.Add(-1)
	}
	s.mu.Unlock()
}

// load inserts a record read from disk. Only for Open, before the index is
// shared, so it takes no lock. Records come in sequence order, so if an ID
// is on disk twice (a failed expiry delete, then a new registration), the
// later record wins and load returns the earlier one's sequence (or 0) for
// deletion.
func (x *index) load(id *store.ID, key *store.Key, last uint32, seq uint64) (stale uint64) {
	h, s := x.locate(id)
	if i, ok := s.t.find(id, h); ok {
		e := &s.t.slots[i]
		stale = e.seq
		e.key, e.last, e.seq = *key, last, seq
		return stale
	}
	s.t.insert(slot{id: *id, key: *key, last: last, seq: seq}, h, x.seed)
	x.count.Add(1)
	return 0
}

func (x *index) lookup(id *store.ID) (store.Key, bool) {
	h, s := x.locate(id)
	s.mu.RLock()
	i, ok := s.t.find(id, h)
	e := &s.t.slots[i]
	key, flags := e.key, e.flags
	s.mu.RUnlock()
	if !ok || flags&flagPending != 0 {
		return store.Key{}, false
	}
	return key, true
}

func (x *index) touch(id *store.ID, now uint32) {
	h, s := x.locate(id)
	// Most touches fall within the resolution and change nothing, so look
	// first under the read lock and only take the write lock to update.
	s.mu.RLock()
	i, ok := s.t.find(id, h)
	e := s.t.slots[i]
	s.mu.RUnlock()
	if !ok || e.flags&flagPending != 0 || uint64(now) < uint64(e.last)+uint64(x.res) {
		return
	}
	s.mu.Lock()
	// The table may have been resized or changed meanwhile: find again.
	if i, ok = s.t.find(id, h); ok {
		e := &s.t.slots[i]
		if e.flags&flagPending == 0 && now > e.last {
			e.last = now
			if e.flags&flagDirty == 0 {
				e.flags |= flagDirty
				// Appending reuses the capacity left by earlier flushes,
				// so steady-state touches do not allocate.
				s.dirty = append(s.dirty, *id)
			}
		}
	}
	s.mu.Unlock()
}

// record is one registration as the committer writes it.
type record struct {
	id   store.ID
	key  store.Key
	seq  uint64
	last uint32
}

// takeDirty appends every dirty registration to buf, clears its dirty flag
// and returns buf. The caller writes them and calls redirty for those it
// failed to write.
func (x *index) takeDirty(buf []record) []record {
	for i := range x.shards {
		s := &x.shards[i]
		s.mu.Lock()
		for _, id := range s.dirty {
			j, ok := s.t.find(&id, x.hash(&id))
			if !ok || s.t.slots[j].flags&flagDirty == 0 {
				continue // expired since it was touched
			}
			e := &s.t.slots[j]
			e.flags &^= flagDirty
			buf = append(buf, record{id: id, key: e.key, seq: e.seq, last: e.last})
		}
		s.dirty = s.dirty[:0]
		s.mu.Unlock()
	}
	return buf
}

// redirty marks records whose write failed as dirty again, unless they
// were deleted or replaced meanwhile.
func (x *index) redirty(recs []record) {
	for i := range recs {
		r := &recs[i]
		h, s := x.locate(&r.id)
		s.mu.Lock()
		if j, ok := s.t.find(&r.id, h); ok {
			e := &s.t.slots[j]
			if e.seq == r.seq && e.flags&(flagDirty|flagPending) == 0 {
				e.flags |= flagDirty
				s.dirty = append(s.dirty, r.id)
			}
		}
		s.mu.Unlock()
	}
}

// expiredIDs appends the IDs of committed entries last used before cutoff.
// It only reads; removeExpired re-checks each one under the write lock.
func (x *index) expiredIDs(cutoff uint32, buf []store.ID) []store.ID {
	for i := range x.shards {
		s := &x.shards[i]
		s.mu.RLock()
		for j := range s.t.slots {
			e := &s.t.slots[j]
			if e.flags&(flagUsed|flagPending) == flagUsed && e.last < cutoff {
				buf = append(buf, e.id)
			}
		}
		s.mu.RUnlock()
	}
	return buf
}

// removeExpired deletes the given IDs if they are still expired and
// appends what it removed to gone, for the disk delete.
func (x *index) removeExpired(ids []store.ID, cutoff uint32, gone []record) []record {
	for i := range ids {
		id := &ids[i]
		h, s := x.locate(id)
		s.mu.Lock()
		if j, ok := s.t.find(id, h); ok {
			e := &s.t.slots[j]
			if e.flags&flagPending == 0 && e.last < cutoff {
				gone = append(gone, record{id: *id, key: e.key, seq: e.seq, last: e.last})
				s.t.removeAt(j, x.seed)
				x.count.Add(-1)
			}
		}
		s.mu.Unlock()
	}
	return gone
}

// shrink gives back table memory after a large expiry.
func (x *index) shrink() {
	for i := range x.shards {
		s := &x.shards[i]
		s.mu.Lock()
		s.t.shrink(x.seed)
		s.mu.Unlock()
	}
}
