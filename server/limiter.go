package server

import (
	"hash/maphash"
	"net/netip"
	"sync"
)

// limiter is a table of token buckets keyed by 16 bytes (a source address
// or a client ID). It never allocates after construction, whatever the keys:
// a flood from spoofed sources must not make the server grow.
//
// The table has a fixed number of slots. A key may live in one of two slots
// of one shard, both picked by a hash with a per-process random seed, so an
// attacker cannot aim at a victim's slots. When neither slot holds the key,
// the one used least recently is taken over and starts with a full bucket.
// That is the bound's price: a key evicted by churn gets a fresh burst.
// Sizing the table well above the number of sources active within a few
// seconds keeps that rare (Config.MaxSources).
type limiter struct {
	seed   maphash.Seed
	shards []limShard
	mask   uint64 // len(shards)-1
	per    uint64 // slots per shard
	rate   float64
	burst  float64
}

type limShard struct {
	mu    sync.Mutex
	slots []limSlot
	_     [40]byte // keep shards' locks on separate cache lines
}

type limSlot struct {
	key    [16]byte
	last   int64 // nanoseconds on the server's clock
	tokens float64
	used   bool
}

const limShards = 64

// newLimiter makes a table of about size slots with buckets that refill at
// rate tokens per second up to burst.
func newLimiter(size int, rate float64, burst int) *limiter {
	per := max(size/limShards, 2)
	l := &limiter{
		seed:   maphash.MakeSeed(),
		shards: make([]limShard, limShards),
		mask:   limShards - 1,
		per:    uint64(per),
		rate:   rate / 1e9,
		burst:  float64(burst),
	}
	for i := range l.shards {
		l.shards[i].slots = make([]limSlot, per)
	}
	return l
}

// allow takes one token from key's bucket at time now (nanoseconds) and
// reports whether there was one.
func (l *limiter) allow(key *[16]byte, now int64) bool {
	h := maphash.Bytes(l.seed, key[:])
	sh := &l.shards[h&l.mask]
	i1 := (h >> 8) % l.per
	i2 := (h >> 36) % l.per
	if i2 == i1 {
		i2 = (i1 + 1) % l.per
	}
	sh.mu.Lock()
	s := &sh.slots[i1]
	if !s.used || s.key != *key {
		s2 := &sh.slots[i2]
		switch {
		case s2.used && s2.key == *key:
			s = s2
		case s2.used && (!s.used || s2.last >= s.last):
			// s is empty or the less recently used: take it over.
			*s = limSlot{key: *key, last: now, tokens: l.burst, used: true}
		default:
			s = s2
			*s = limSlot{key: *key, last: now, tokens: l.burst, used: true}
		}
	}
	if el := now - s.last; el > 0 {
		s.tokens = min(l.burst, s.tokens+float64(el)*l.rate)
		s.last = now
	}
	ok := s.tokens >= 1
	if ok {
		s.tokens--
	}
	sh.mu.Unlock()
	return ok
}

// sourceKey is the limiter key of a source address: the IPv4 address in
// its IPv4-mapped form, or the /64 prefix of an IPv6 address, because one
// IPv6 subscriber commonly gets a whole /64 and could otherwise take a
// fresh bucket for every packet.
func sourceKey(a netip.Addr) [16]byte {
	k := a.As16()
	if !a.Is4() && !a.Is4In6() {
		clear(k[8:])
	}
	return k
}
