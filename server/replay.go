package server

import (
	"hash/maphash"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/ewf-project/ewf/wire"
)

// replayCache remembers the transaction IDs of authenticated requests
// (docs/PROTOCOL.md §18.3) for as long as their TIMESTAMP is within the
// window, with the source and transport they came from: the same
// transaction ID again from there is a retransmission, from anywhere else a
// replay.
//
// It is a fixed-size, sharded hash table with bounded probing, not a Go
// map, so that the packet path never allocates (a map that deletes and
// inserts grows now and then) and its memory is known in advance. A
// transaction ID may sit in any of probeLen slots after its hash; when all
// of them hold live entries, the one that expires first is overwritten and
// counted. Slots are placed by a keyed hash (maphash, random seed per
// server): a client cannot choose transaction IDs that land on another
// client's slots to evict them.
type replayCache struct {
	seed    maphash.Seed
	shards  [replayShards]replayShard
	perShrd int // slots per shard, a power of two
	evicted atomic.Uint64
}

const (
	replayShards = 64
	probeLen     = 16
)

type replayShard struct {
	mu    sync.Mutex
	slots []replayEntry // nil until the shard's first request
	_     [40]byte      // keep shards' locks on separate cache lines
}

// replayEntry is 24 bytes: the whole transaction ID, so there are no false
// replays, and a hash of the source, so a retransmission is told apart.
type replayEntry struct {
	tx  wire.TransactionID
	exp uint32 // server seconds; the entry is dead from exp on
	src uint64 // hash of source address, port and transport
}

// newReplayCache returns a cache of about size entries (rounded up to a
// power of two, at least one probe run per shard). The slots are
// allocated shard by shard on first use, so a server that never sees an
// authenticated request pays nothing.
func newReplayCache(size int) *replayCache {
	per := probeLen
	for per*replayShards < size {
		per *= 2
	}
	return &replayCache{seed: maphash.MakeSeed(), perShrd: per}
}

// check records tx as seen from src over tr until exp (server seconds) and
// reports whether it is new or a retransmission from the same place (true)
// or a replay from elsewhere (false). sec is the server's clock now.
func (c *replayCache) check(tx *wire.TransactionID, src netip.AddrPort, tr wire.Transport, sec, exp uint32) bool {
	h := maphash.Bytes(c.seed, tx[:])
	var sb [19]byte
	a := src.Addr().As16()
	copy(sb[:16], a[:])
	sb[16], sb[17], sb[18] = byte(src.Port()>>8), byte(src.Port()), byte(tr)
	sh := maphash.Bytes(c.seed, sb[:])

	s := &c.shards[h%replayShards]
	mask := uint64(c.perShrd - 1)
	i0 := (h / replayShards) & mask
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.slots == nil {
		s.slots = make([]replayEntry, c.perShrd)
	}
	free, oldest := -1, -1
	for k := range uint64(probeLen) {
		i := int((i0 + k) & mask)
		e := &s.slots[i]
		if e.exp <= sec {
			if free < 0 {
				free = i
			}
			continue
		}
		if e.tx == *tx {
			if e.src != sh {
				return false
			}
			e.exp = max(e.exp, exp)
			return true
		}
		if oldest < 0 || e.exp < s.slots[oldest].exp {
			oldest = i
		}
	}
	if free < 0 {
		free = oldest
		c.evicted.Add(1)
	}
	s.slots[free] = replayEntry{tx: *tx, exp: exp, src: sh}
	return true
}

// live counts the live entries (tests).
func (c *replayCache) live(sec uint32) int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for _, e := range s.slots {
			if e.exp > sec {
				n++
			}
		}
		s.mu.Unlock()
	}
	return n
}
