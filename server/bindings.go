package server

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/ewf-project/ewf/wire"
)

// bindings is the in-memory table of live bindings: per client ID, the
// address observed for its last BIND over UDP and over TCP, each with an
// expiry. Bindings are deliberately not durable (clients refresh them every
// 20–25 s, and an address from before a restart is stale anyway).
//
// The table holds only registered IDs (BIND checks the KEY first), so its
// size is bounded by the registration cap. An entry is 64 bytes with its key
// and holds no pointers, so the garbage collector never scans the maps.
type bindings struct {
	shards [bindShards]bindShard
	live   [2]atomic.Int64 // slots marked valid per transport, for the gauge
}

const bindShards = 64

type bindShard struct {
	mu sync.Mutex
	m  map[wire.ID]bindEntry
	_  [48]byte
}

// bindEntry holds one slot per transport, indexed by wire.Transport.
type bindEntry [2]bindSlot

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
	slotValid uint8 = 1 << iota
	slotIs4
)

func newBindings() *bindings {
	b := &bindings{}
	for i := range b.shards {
		b.shards[i].m = make(map[wire.ID]bindEntry)
	}
	return b
}

func (b *bindings) shard(id *wire.ID) *bindShard { return &b.shards[id[0]&(bindShards-1)] }

// set binds id's transport tr to ap until exp.
func (b *bindings) set(id *wire.ID, tr wire.Transport, ap netip.AddrPort, via uint8, exp uint32) {
	s := bindSlot{ip: ap.Addr().As16(), port: ap.Port(), flags: slotValid, via: via, exp: exp}
	if ap.Addr().Is4() {
		s.flags |= slotIs4
	}
	sh := b.shard(id)
	sh.mu.Lock()
	e := sh.m[*id]
	if e[tr].flags&slotValid == 0 {
		b.live[tr].Add(1)
	}
	e[tr] = s
	sh.m[*id] = e
	sh.mu.Unlock()
}

// get returns id's bindings alive at now.
func (b *bindings) get(id *wire.ID, now uint32) (e bindEntry, n int) {
	sh := b.shard(id)
	sh.mu.Lock()
	e = sh.m[*id]
	sh.mu.Unlock()
	for i := range e {
		if e[i].flags&slotValid != 0 && e[i].exp > now {
			n++
		} else {
			e[i] = bindSlot{}
		}
	}
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
		for id, e := range sh.m {
			changed := false
			for tr := range e {
				if e[tr].flags&slotValid != 0 && e[tr].exp <= now {
					e[tr] = bindSlot{}
					b.live[tr].Add(-1)
					changed = true
					n++
				}
			}
			switch {
			case e[0].flags|e[1].flags == 0:
				delete(sh.m, id)
			case changed:
				sh.m[id] = e
			}
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
