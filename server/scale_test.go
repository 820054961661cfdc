package server_test

import (
	"bufio"
	"encoding/binary"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/store/bolt"
	"github.com/ewf-project/ewf/wire"
)

// TestScaleOneMillion measures what the issue asks of one ewfd with a
// million clients: RSS with 1M registrations, then with all of them bound
// over UDP, and the time a restart takes until the Daemon serves again. It
// takes about a minute and 1 GB, so it runs only when asked:
//
//	EWFD_SCALE=1000000 go test -run TestScaleOneMillion -v ./server
func TestScaleOneMillion(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("EWFD_SCALE"))
	if n <= 0 {
		t.Skip("set EWFD_SCALE=1000000 to run")
	}
	dir := t.TempDir()
	base := rss(t)

	st, err := bolt.Open(dir, bolt.Options{MaxRegistrations: 2 * n})
	if err != nil {
		t.Fatal(err)
	}
	key := func(id wire.ID) (k wire.Key) { k[0], k[1] = id[3]^0xa5, id[2]; return }
	idOf := func(i int) (id wire.ID) {
		binary.BigEndian.PutUint64(id[:8], uint64(i)*0x9e3779b97f4a7c15)
		binary.BigEndian.PutUint64(id[8:], uint64(i))
		return
	}
	start := time.Now()
	var wg sync.WaitGroup
	slots := make(chan struct{}, 4096)
	now := time.Now()
	for i := range n {
		id := idOf(i)
		slots <- struct{}{}
		wg.Add(1)
		st.Register(id, key(id), now, func(err error) {
			if err != nil {
				t.Error(err)
			}
			<-slots
			wg.Done()
		})
	}
	wg.Wait()
	t.Logf("registered %d in %v (%.0f/s, durable, group commit)", n, time.Since(start), float64(n)/time.Since(start).Seconds())
	regRSS := rss(t)
	regHeap := heapInuse()
	t.Logf("RSS with %d registrations: %d MB (%d MB over the process before; Go heap %d MB)", n, regRSS>>20, (regRSS-base)>>20, regHeap>>20)

	srv, err := server.New(st, server.Config{Rate: 1e12})
	if err != nil {
		t.Fatal(err)
	}
	h := srv.NewHandler(wire.TransportUDP, discard{})
	out := make([]byte, 0, 64)
	var ip [4]byte
	for i := range n {
		id := idOf(i)
		binary.BigEndian.PutUint32(ip[:], 0x0a000000|uint32(i))
		src := netip.AddrPortFrom(netip.AddrFrom4(ip), uint16(i))
		m := bindReq(id, key(id), wire.TransportUDP, src)
		if r := h.Handle(now, m.AppendTo(out[:0]), src, out[:0]); len(r) != wire.HeaderSize {
			t.Fatalf("BIND %d failed", i)
		}
	}
	bindRSS := rss(t)
	t.Logf("RSS with %d registrations all bound: %d MB (Go heap %d MB, of which bindings %d MB)", n, bindRSS>>20, heapInuse()>>20, (heapInuse()-regHeap)>>20)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	runtime.KeepAlive(srv)
	runtime.GC()
	debug.FreeOSMemory()

	start = time.Now()
	d, err := server.Start(server.Config{DataDir: dir, Listen: []string{"127.0.0.1:0"}, MaxRegistrations: 2 * n})
	if err != nil {
		t.Fatal(err)
	}
	ready := time.Since(start)
	c := dialUDP(t, d.Addrs()[0])
	c.bind(idOf(n-1), key(idOf(n-1)))
	t.Logf("restart with %d registrations: serving after %v", n, ready)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

func heapInuse() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

// rss returns the process's resident set size after a GC.
func rss(t *testing.T) uint64 {
	runtime.GC()
	debug.FreeOSMemory()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skip("no /proc/self/status")
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	t.Skip("no VmRSS")
	return 0
}
