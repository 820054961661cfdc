package bolt

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ewf-project/ewf/store"
)

// shardCount splits the index so that Touch (which writes) on one core and
// Lookup on another rarely meet on the same lock. A power of two, so picking
// a shard is a mask.
const shardCount = 64

// entry is what the index keeps per registration. It holds no pointers, so
// the garbage collector never scans the maps, and it is 24 bytes: with the
// 16-byte ID as map key a slot is 40 bytes, which is what makes a million
// registrations fit in ~60 MB.
type entry struct {
	key   store.Key
	last  uint32 // unix seconds of the last recorded use (see Options.TouchResolution)
	flags uint8
}

const (
	// flagPending marks an ID reserved by Register whose record is not on
	// disk yet. It blocks a second Register of the same ID but is invisible
	// to Lookup and Touch.
	flagPending uint8 = 1 << iota
	// flagDirty marks a last-use time that the disk does not have yet. The
	// ID is then also in its shard's dirty list.
	flagDirty
)

type shard struct {
	mu    sync.RWMutex
	m     map[store.ID]entry
	dirty []store.ID // IDs with flagDirty, reused between flushes
	// Keeps neighbouring shards' locks off one cache line; otherwise the two
	// cores would still fight over the line while holding different locks.
	_ [64]byte
}

// index is the in-memory copy of every registration, plus reservations of
// registrations being committed. The disk is the truth after a crash; while
// the store runs, the index is the truth and the disk catches up.
type index struct {
	shards [shardCount]shard
	count  atomic.Int64 // entries in all shards, pending included
	// res is the touch resolution in seconds: a Touch less than res after
	// the recorded last use changes nothing, which bounds disk writes for
	// busy clients to one per res.
	res uint32
}

func newIndex(res time.Duration, sizeHint int) *index {
	x := &index{res: uint32(max(res/time.Second, 1))}
	per := sizeHint / shardCount
	for i := range x.shards {
		x.shards[i].m = make(map[store.ID]entry, per)
	}
	return x
}

func (x *index) shard(id *store.ID) *shard {
	// IDs are random (a client that picks non-random ones only slows its own
	// shard's lock; the maps themselves hash with a per-process seed).
	return &x.shards[id[0]&(shardCount-1)]
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
func (x *index) reserve(id store.ID, key store.Key, last uint32, limit int64) error {
	s := x.shard(&id)
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[id]; ok {
		return store.ErrExists
	}
	if n := x.count.Add(1); limit > 0 && n > limit {
		x.count.Add(-1)
		return store.ErrFull
	}
	s.m[id] = entry{key: key, last: last, flags: flagPending}
	return nil
}

// confirm makes a committed reservation visible.
func (x *index) confirm(id *store.ID) {
	s := x.shard(id)
	s.mu.Lock()
	if e, ok := s.m[*id]; ok {
		e.flags &^= flagPending
		s.m[*id] = e
	}
	s.mu.Unlock()
}

// release drops a reservation whose commit failed or was never queued.
func (x *index) release(id *store.ID) {
	s := x.shard(id)
	s.mu.Lock()
	if e, ok := s.m[*id]; ok && e.flags&flagPending != 0 {
		delete(s.m, *id)
		x.count.Add(-1)
	}
	s.mu.Unlock()
}

// load inserts a record read from disk. Only for Open, before the index is
// shared, so it takes no lock.
func (x *index) load(id store.ID, key store.Key, last uint32) {
	s := x.shard(&id)
	if _, dup := s.m[id]; !dup {
		x.count.Add(1)
	}
	s.m[id] = entry{key: key, last: last}
}

func (x *index) lookup(id *store.ID) (store.Key, bool) {
	s := x.shard(id)
	s.mu.RLock()
	e, ok := s.m[*id]
	s.mu.RUnlock()
	if !ok || e.flags&flagPending != 0 {
		return store.Key{}, false
	}
	return e.key, true
}

func (x *index) touch(id *store.ID, now uint32) {
	s := x.shard(id)
	// Most touches fall within the resolution and change nothing, so look
	// first under the read lock and only take the write lock to update.
	s.mu.RLock()
	e, ok := s.m[*id]
	s.mu.RUnlock()
	if !ok || e.flags&flagPending != 0 || uint64(now) < uint64(e.last)+uint64(x.res) {
		return
	}
	s.mu.Lock()
	e, ok = s.m[*id]
	if ok && e.flags&flagPending == 0 && now > e.last {
		e.last = now
		if e.flags&flagDirty == 0 {
			e.flags |= flagDirty
			// Appending reuses the slice's capacity from earlier flushes,
			// so steady-state touches do not allocate.
			s.dirty = append(s.dirty, *id)
		}
		s.m[*id] = e
	}
	s.mu.Unlock()
}

// record is one registration as the committer writes it.
type record struct {
	id   store.ID
	key  store.Key
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
			e, ok := s.m[id]
			if !ok || e.flags&flagDirty == 0 {
				continue // expired since it was touched
			}
			e.flags &^= flagDirty
			s.m[id] = e
			buf = append(buf, record{id: id, key: e.key, last: e.last})
		}
		clear(s.dirty) // nothing to release, but keeps the slice honest
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
		s := x.shard(&r.id)
		s.mu.Lock()
		if e, ok := s.m[r.id]; ok && e.key == r.key && e.flags&(flagDirty|flagPending) == 0 {
			e.flags |= flagDirty
			s.m[r.id] = e
			s.dirty = append(s.dirty, r.id)
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
		for id, e := range s.m {
			if e.flags&flagPending == 0 && e.last < cutoff {
				buf = append(buf, id)
			}
		}
		s.mu.RUnlock()
	}
	return buf
}

// removeExpired deletes the given IDs if they are still expired and
// appends what it removed to gone, so a failed disk delete can put them back.
func (x *index) removeExpired(ids []store.ID, cutoff uint32, gone []record) []record {
	for i := range ids {
		id := &ids[i]
		s := x.shard(id)
		s.mu.Lock()
		if e, ok := s.m[*id]; ok && e.flags&flagPending == 0 && e.last < cutoff {
			delete(s.m, *id)
			x.count.Add(-1)
			gone = append(gone, record{id: *id, key: e.key, last: e.last})
		}
		s.mu.Unlock()
	}
	return gone
}

// restore puts back records whose disk delete failed, unless the ID was
// registered again meanwhile (its pending commit will overwrite the disk).
func (x *index) restore(recs []record) {
	for i := range recs {
		r := &recs[i]
		s := x.shard(&r.id)
		s.mu.Lock()
		if _, ok := s.m[r.id]; !ok {
			s.m[r.id] = entry{key: r.key, last: r.last}
			x.count.Add(1)
		}
		s.mu.Unlock()
	}
}
