package server

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/ewf-project/ewf/wire"
)

func TestReplayCacheTellsRetransmissionFromReplay(t *testing.T) {
	c := newReplayCache(0)
	a := netip.MustParseAddrPort("192.0.2.1:1000")
	b := netip.MustParseAddrPort("192.0.2.1:1001")
	tx := wire.TransactionID{1, 2, 3}
	if !c.check(&tx, a, wire.TransportUDP, 10, 70) {
		t.Fatal("a new transaction ID refused")
	}
	if !c.check(&tx, a, wire.TransportUDP, 11, 71) {
		t.Fatal("retransmission from the same source refused")
	}
	for _, o := range []struct {
		src netip.AddrPort
		tr  wire.Transport
	}{{b, wire.TransportUDP}, {a, wire.TransportTCP}, {netip.MustParseAddrPort("[2001:db8::1]:1000"), wire.TransportUDP}} {
		if c.check(&tx, o.src, o.tr, 12, 72) {
			t.Errorf("same transaction ID from %v/%v accepted", o.tr, o.src)
		}
	}
	// Once the entry expires the ID is new again (its TIMESTAMP would be
	// stale by then, so nothing is lost).
	if !c.check(&tx, b, wire.TransportUDP, 72, 130) {
		t.Fatal("expired entry still blocks")
	}
}

// TestReplayCacheIsBoundedAndCountsEvictions: a cache far too small keeps
// working, overwrites the entries that expire first, and counts it.
func TestReplayCacheIsBoundedAndCountsEvictions(t *testing.T) {
	c := newReplayCache(1)
	if c.buckets != 1 {
		t.Fatalf("%d buckets per shard, want 1", c.buckets)
	}
	src := netip.MustParseAddrPort("192.0.2.1:1000")
	const n = 10 * replayShards * bucketLen
	for i := range n {
		var tx wire.TransactionID
		binary.BigEndian.PutUint32(tx[:], uint32(i))
		if !c.check(&tx, src, wire.TransportUDP, 10, 70+uint32(i)) {
			t.Fatalf("new transaction %d refused", i)
		}
	}
	if live := c.live(10); live != replayShards*bucketLen {
		t.Fatalf("%d live entries, want the capacity %d", live, replayShards*bucketLen)
	}
	if ev := c.evicted.Load(); ev != n-replayShards*bucketLen {
		t.Fatalf("%d evictions, want %d", ev, n-replayShards*bucketLen)
	}
	// The newest survive: the last transaction is still known.
	var last wire.TransactionID
	binary.BigEndian.PutUint32(last[:], n-1)
	if c.check(&last, netip.MustParseAddrPort("192.0.2.9:9"), wire.TransportUDP, 11, 80) {
		t.Fatal("the newest entry was evicted")
	}
}

func TestReplayCacheDoesNotAllocate(t *testing.T) {
	c := newReplayCache(0)
	src := netip.MustParseAddrPort("[2001:db8::1]:1000")
	var tx wire.TransactionID
	i := uint32(0)
	next := func() {
		i++
		binary.BigEndian.PutUint32(tx[:], i)
		c.check(&tx, src, wire.TransportUDP, 1, 60)
	}
	// Every shard allocates its slots once, on its first request.
	for range 100 * replayShards {
		next()
	}
	if n := testing.AllocsPerRun(1000, next); n != 0 {
		t.Fatalf("%v allocations per check", n)
	}
}

func TestReplayBucketIsOneCacheLine(t *testing.T) {
	if n := unsafe.Sizeof(replayBucket{}); n != 64 {
		t.Fatalf("a bucket is %d bytes, want 64", n)
	}
}
