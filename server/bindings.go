package server

import (
	"hash/maphash"
	"math/bits"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/ewf-project/ewf/wire"
)

// bindings is the in-memory table of live bindings: per client ID and
// transport, the address observed for its last BIND, the UDP socket it came
// in on, and an expiry. Bindings are deliberately not durable: clients
// refresh them every 20–25 s, and an address from before a restart is
// stale anyway.
//
// Only registered IDs get bound (BIND checks the KEY first), so the table is
// bounded by the registration cap. It is sized for a million clients on a
// small machine: each transport has its own open-addressing table of
// 40-byte records without pointers (the garbage collector never scans
// them), kept 64–80 % full, about 55 bytes per binding; Go's map costs
// three times that here (measured: 176 bytes per ID with both transports
// in one 48-byte value).
type bindings struct {
	seed   maphash.Seed
	shards [bindShards]bindShard
	live   [2]atomic.Int64 // bindings per transport, for the gauge
}

// bindShards splits the table so that readers on different cores rarely
// wait for one another; a power of two, so picking one is a mask.
const bindShards = 64

type bindShard struct {
	mu sync.Mutex
	t  [2]bindTable // by wire.Transport
	_  [64]byte     // keep neighbouring shards' locks off one cache line
}

// bindSlot is one observed address in 24 bytes. A netip.AddrPort would be
// 32 bytes and carry a pointer (the zone); ewfd never binds zoned addresses.
type bindSlot struct {
	ip    [16]byte
	port  uint16
	flags uint8
	via   uint8  // UDP: index of the socket it arrived on (Server.udp)
	exp   uint32 // seconds on the server's clock
}

const (
	slotValid uint8 = 1 << iota // the record is in use
	slotIs4
)

// bindEntry is what get returns: one slot per transport, by wire.Transport.
type bindEntry [2]bindSlot

func newBindings() *bindings {
	b := &bindings{seed: maphash.MakeSeed()}
	for i := range b.shards {
		for tr := range b.shards[i].t {
			b.shards[i].t[tr] = newBindTable(b.seed, 0)
		}
	}
	return b
}

func (b *bindings) locate(id *wire.ID) (*bindShard, uint64) {
	h := maphash.Bytes(b.seed, id[:])
	return &b.shards[h&(bindShards-1)], h
}

// set binds id's transport tr to ap until exp and returns the slot it
// replaced (not valid if there was none; possibly expired).
func (b *bindings) set(id *wire.ID, tr wire.Transport, ap netip.AddrPort, via uint8, exp uint32) (old bindSlot) {
	s := bindSlot{ip: ap.Addr().As16(), port: ap.Port(), flags: slotValid, via: via, exp: exp}
	if ap.Addr().Is4() {
		s.flags |= slotIs4
	}
	sh, h := b.locate(id)
	sh.mu.Lock()
	old, isNew := sh.t[tr].put(id, h, s)
	if isNew {
		b.live[tr].Add(1)
	}
	sh.mu.Unlock()
	return old
}

// get returns id's bindings alive at now, and how many there are.
func (b *bindings) get(id *wire.ID, now uint32) (e bindEntry, n int) {
	sh, h := b.locate(id)
	sh.mu.Lock()
	for tr := range e {
		if s, ok := sh.t[tr].get(id, h); ok && s.exp > now {
			e[tr] = s
			n++
		}
	}
	sh.mu.Unlock()
	return e, n
}

// sweep deletes the bindings that expired at or before now and returns how
// many it removed. It locks one shard at a time, so packet handling waits
// at most one shard's scan.
func (b *bindings) sweep(now uint32) int {
	n := 0
	for i := range b.shards {
		sh := &b.shards[i]
		sh.mu.Lock()
		for tr := range sh.t {
			k := sh.t[tr].sweep(now)
			b.live[tr].Add(-int64(k))
			n += k
		}
		sh.mu.Unlock()
	}
	return n
}

func (s *bindSlot) valid() bool { return s.flags&slotValid != 0 }

func (s *bindSlot) addrPort() netip.AddrPort {
	var a netip.Addr
	if s.flags&slotIs4 != 0 {
		a = netip.AddrFrom4([4]byte(s.ip[12:]))
	} else {
		a = netip.AddrFrom16(s.ip)
	}
	return netip.AddrPortFrom(a, s.port)
}

// bindRec is one record of a bindTable: 40 bytes, no pointers.
type bindRec struct {
	id wire.ID
	s  bindSlot // s.flags&slotValid marks the record used
}

// bindTable is an open-addressing hash table with linear probing and
// backward-shift deletion (no tombstones, so probes do not lengthen with
// churn). It grows by 1.25× at 80 % load, so it stays 64–80 % full, and
// shrinks after a sweep leaves it under a quarter full.
type bindTable struct {
	seed maphash.Seed // the bindings' seed: records are rehashed on resize and delete
	recs []bindRec
	used int
}

const (
	bindMaxLoad  = 0.80
	bindGrowBy   = 1.25
	bindMinSlots = 16
)

func newBindTable(seed maphash.Seed, entries int) bindTable {
	return bindTable{seed: seed, recs: make([]bindRec, max(int(float64(entries)/0.7)+1, bindMinSlots))}
}

// hash is the hash locate computed; records do not store it (8 more bytes
// each), so resize and delete compute it again.
func (t *bindTable) hash(id *wire.ID) uint64 { return maphash.Bytes(t.seed, id[:]) }

// home maps h onto the table with a multiply, so the size need not be a
// power of two. The high bits of h are used; the shard took the low ones.
func (t *bindTable) home(h uint64) int {
	hi, _ := bits.Mul64(h, uint64(len(t.recs)))
	return int(hi)
}

// find returns the index of id's record, or of the free record where it
// would go, and whether id is there. The table is never full.
func (t *bindTable) find(id *wire.ID, h uint64) (int, bool) {
	n := len(t.recs)
	for i := t.home(h); ; {
		r := &t.recs[i]
		if !r.s.valid() {
			return i, false
		}
		if r.id == *id {
			return i, true
		}
		if i++; i == n {
			i = 0
		}
	}
}

func (t *bindTable) get(id *wire.ID, h uint64) (bindSlot, bool) {
	i, ok := t.find(id, h)
	return t.recs[i].s, ok
}

// put stores s for id and reports whether id was new, and if not, the
// slot it replaced.
func (t *bindTable) put(id *wire.ID, h uint64, s bindSlot) (old bindSlot, isNew bool) {
	i, ok := t.find(id, h)
	if ok {
		old = t.recs[i].s
		t.recs[i].s = s
		return old, false
	}
	if float64(t.used+1) > bindMaxLoad*float64(len(t.recs)) {
		t.resize(int(float64(len(t.recs)) * bindGrowBy))
		i, _ = t.find(id, h)
	}
	t.recs[i] = bindRec{id: *id, s: s}
	t.used++
	return old, true
}

// resize moves every record into a new array of n records.
func (t *bindTable) resize(n int) {
	old := t.recs
	t.recs = make([]bindRec, max(n, bindMinSlots))
	for i := range old {
		if old[i].s.valid() {
			j, _ := t.find(&old[i].id, t.hash(&old[i].id))
			t.recs[j] = old[i]
		}
	}
}

// sweep deletes records that expired at or before now and returns how many.
func (t *bindTable) sweep(now uint32) int {
	k := 0
	for i := 0; i < len(t.recs); {
		if r := &t.recs[i]; r.s.valid() && r.s.exp <= now {
			// The shift may pull a later record into i: look at i again.
			t.deleteAt(i)
			k++
			continue
		}
		i++
	}
	if t.used < len(t.recs)/4 && len(t.recs) > bindMinSlots {
		t.resize(int(float64(t.used) / 0.7))
	}
	return k
}

// deleteAt removes record i and shifts later records of its probe run back,
// so that every record stays reachable from its home without tombstones.
func (t *bindTable) deleteAt(i int) {
	n := len(t.recs)
	t.used--
	for j := i; ; {
		t.recs[i] = bindRec{}
		for {
			if j++; j == n {
				j = 0
			}
			if !t.recs[j].s.valid() {
				return
			}
			// Record j may move to i if its home is not in (i, j]
			// cyclically: otherwise moving it would put it before its home.
			h := t.home(t.hash(&t.recs[j].id))
			if (i <= j && (h <= i || h > j)) || (i > j && h <= i && h > j) {
				break
			}
		}
		t.recs[i] = t.recs[j]
		i = j
	}
}
