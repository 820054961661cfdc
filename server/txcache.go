package server

import (
	"net/netip"
	"sync"

	"github.com/ewf-project/ewf/wire"
)

// txWindow is how long a REGISTER's answer is kept for retransmissions:
// RFC 5389 §7.2.1 lets a client retransmit for 39.5 s, and
// docs/PROTOCOL.md says 40.
const txWindow = 40 // seconds

// maxRegisterResponse is the largest REGISTER answer: a success with KEY.
const maxRegisterResponse = wire.HeaderSize + 4 + 16

// txKey names one REGISTER transaction: the same transaction ID from another
// source is another transaction.
type txKey struct {
	src netip.AddrPort
	tx  wire.TransactionID
}

type txState uint8

const (
	txPending txState = iota // commit in flight: drop retransmissions
	txDone                   // answer known: resend it
)

type txEntry struct {
	seq   uint64 // insertion number, to tell a ring slot's entry from a newer one
	at    uint32 // seconds on the server's clock
	state txState
	n     uint8
	resp  [maxRegisterResponse]byte
}

// txCache remembers recent REGISTER transactions so that a retransmission is
// answered with the first answer instead of ID conflict. It is a map plus a
// ring of keys in insertion order: every entry lives the same time, so the
// oldest is always at the ring's head, and a full ring evicts it. Its size
// is fixed at construction.
type txCache struct {
	mu   sync.Mutex
	m    map[txKey]txEntry
	ring []txKey
	seqs []uint64
	head int
	n    int
	seq  uint64
}

func newTxCache(size int) *txCache {
	return &txCache{
		m:    make(map[txKey]txEntry), // grows with use, bounded by the ring
		ring: make([]txKey, size),
		seqs: make([]uint64, size),
	}
}

// begin looks k up. If k is known, it returns its entry and false. If not, it
// records k as pending and returns true: the caller owns the transaction.
func (c *txCache) begin(k txKey, now uint32) (txEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.expireLocked(now)
	if e, ok := c.m[k]; ok {
		return e, false
	}
	if c.n == len(c.ring) {
		c.evictHeadLocked()
	}
	c.seq++
	i := (c.head + c.n) % len(c.ring)
	c.ring[i], c.seqs[i] = k, c.seq
	c.n++
	c.m[k] = txEntry{seq: c.seq, at: now, state: txPending}
	return txEntry{}, true
}

// finish stores the answer to k, if k is still cached.
func (c *txCache) finish(k txKey, resp []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok {
		return
	}
	e.state = txDone
	e.n = uint8(copy(e.resp[:], resp))
	c.m[k] = e
}

// forget drops k, so that a retransmission is handled as new (after a
// transient failure).
func (c *txCache) forget(k txKey) {
	c.mu.Lock()
	delete(c.m, k)
	c.mu.Unlock()
}

func (c *txCache) expire(now uint32) {
	c.mu.Lock()
	c.expireLocked(now)
	c.mu.Unlock()
}

func (c *txCache) expireLocked(now uint32) {
	for c.n > 0 {
		k := c.ring[c.head]
		if e, ok := c.m[k]; ok && e.seq == c.seqs[c.head] && e.at+txWindow > now {
			return
		}
		c.evictHeadLocked()
	}
}

func (c *txCache) evictHeadLocked() {
	k := c.ring[c.head]
	if e, ok := c.m[k]; ok && e.seq == c.seqs[c.head] {
		delete(c.m, k)
	}
	c.ring[c.head] = txKey{}
	c.head = (c.head + 1) % len(c.ring)
	c.n--
}

func (c *txCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
