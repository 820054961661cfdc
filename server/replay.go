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
// It is a fixed-size, sharded hash table of buckets, not a Go map, so that
// the packet path never allocates (a map that deletes and inserts grows now
// and then) and its memory is known in advance. A bucket is four 16-byte
// entries, one cache line: a request costs one memory access however full
// the table is, which matters at 100,000 requests per second, where the
// table is far larger than the CPU's caches. When a bucket's four entries
// are all live, the one that expires first is overwritten and counted.
// Entries hold keyed hashes (maphash, random seed per server) of the
// transaction ID and of the source: 64 bits make a false "seen" of a new
// transaction ID a 2^-64 event, and since nobody knows the seed, nobody can
// aim transaction IDs at another client's bucket to evict it.
type replayCache struct {
	seed    maphash.Seed
	shards  [replayShards]replayShard
	buckets int // per shard, a power of two
	evicted atomic.Uint64
}

const (
	replayShards = 64
	bucketLen    = 4
)

type replayShard struct {
	mu      sync.Mutex
	buckets []replayBucket // nil until the shard's first request
	_       [40]byte       // keep shards' locks on separate cache lines
}

// replayBucket is one 64-byte cache line.
type replayBucket [bucketLen]replayEntry

type replayEntry struct {
	tx  uint64 // hash of the transaction ID
	src uint32 // hash of source address, port and transport
	exp uint32 // server seconds; the entry is dead from exp on
}

// newReplayCache returns a cache of about size entries (rounded up to a
// power of two, at least one bucket per shard). The buckets are allocated
// shard by shard on first use, so a server that never sees an
// authenticated request pays nothing.
func newReplayCache(size int) *replayCache {
	per := 1
	for per*bucketLen*replayShards < size {
		per *= 2
	}
	return &replayCache{seed: maphash.MakeSeed(), buckets: per}
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
	sh := uint32(maphash.Bytes(c.seed, sb[:]))

	s := &c.shards[h%replayShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.buckets == nil {
		s.buckets = make([]replayBucket, c.buckets)
	}
	b := &s.buckets[(h/replayShards)&uint64(c.buckets-1)]
	free := -1
	for i := range b {
		e := &b[i]
		if e.exp <= sec {
			if free < 0 {
				free = i
			}
			continue
		}
		if e.tx == h {
			if e.src != sh {
				return false
			}
			e.exp = max(e.exp, exp)
			return true
		}
	}
	if free < 0 {
		free = 0
		for i := 1; i < bucketLen; i++ {
			if b[i].exp < b[free].exp {
				free = i
			}
		}
		c.evicted.Add(1)
	}
	b[free] = replayEntry{tx: h, src: sh, exp: exp}
	return true
}

// live counts the live entries (tests).
func (c *replayCache) live(sec uint32) int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		for _, b := range s.buckets {
			for _, e := range b {
				if e.exp > sec {
					n++
				}
			}
		}
		s.mu.Unlock()
	}
	return n
}
