package redis

import (
	"context"
	"crypto/rand"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ewf-project/ewf/internal/redistest"
	"github.com/ewf-project/ewf/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t *testing.T, url string, o Options) *Store {
	t.Helper()
	if o.Timeout == 0 {
		o.Timeout = 300 * time.Millisecond
	}
	if o.ProbeInterval == 0 {
		o.ProbeInterval = 50 * time.Millisecond
	}
	s, err := Open(url, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func randID() (id store.ID) {
	rand.Read(id[:])
	return id
}

// Two stores on one Redis stand for two ewfd: what one registers, the
// other finds with Fetch (not yet with Lookup: its cache is local), and a
// second registration of the ID is refused by whichever store makes it.
func testShared(t *testing.T, url string) {
	a, b := open(t, url, Options{}), open(t, url, Options{})
	id, key := randID(), randID()
	now := time.Now()
	if err := store.RegisterSync(a, id, key, now); err != nil {
		t.Fatalf("register: %v", err)
	}
	if k, ok := a.Lookup(id); !ok || k != key {
		t.Fatalf("registering store: Lookup = %x %v, want %x", k, ok, key)
	}
	if _, ok := b.Lookup(id); ok {
		t.Fatal("other store: Lookup hit before Fetch")
	}
	ctx := context.Background()
	k, ok, err := b.Fetch(ctx, id)
	if err != nil || !ok || k != key {
		t.Fatalf("Fetch = %x %v %v, want %x", k, ok, err, key)
	}
	if k, ok := b.Lookup(id); !ok || k != key {
		t.Fatalf("after Fetch: Lookup = %x %v", k, ok)
	}
	if err := store.RegisterSync(b, id, randID(), now); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second register at the other store: %v, want ErrExists", err)
	}
	if _, ok, err := b.Fetch(ctx, randID()); ok || err != nil {
		t.Fatalf("Fetch of unknown ID: %v %v", ok, err)
	}

	// Bindings written by a are read by b.
	bd := store.Binding{Server: "srv-a", Port: 4242, Is4: true, Via: 3}
	copy(bd.Addr[:], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 7})
	if !a.PutBinding(id, 0, bd, 10*time.Second) {
		t.Fatal("PutBinding refused")
	}
	var got [2]store.Binding
	var have [2]bool
	for deadline := time.Now().Add(2 * time.Second); ; {
		got, have, err = b.Bindings(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if have[0] || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !have[0] || have[1] || got[0] != bd {
		t.Fatalf("Bindings = %+v %v, want UDP %+v only", got, have, bd)
	}
	// Bindings brings the registration along into the cache.
	c := open(t, url, Options{})
	if _, _, err := c.Bindings(ctx, id); err != nil {
		t.Fatal(err)
	}
	if k, ok := c.Lookup(id); !ok || k != key {
		t.Fatalf("after Bindings: Lookup = %x %v, want the KEY", k, ok)
	}

	// Messages reach the named server only while it listens.
	recv := make(chan string, 1)
	if err := b.Listen("srv-b", func(m []byte) { recv <- string(m) }); err != nil {
		t.Fatal(err)
	}
	if ok, err := a.Send(ctx, "srv-b", []byte("hello")); !ok || err != nil {
		t.Fatalf("Send to a listener: %v %v", ok, err)
	}
	select {
	case m := <-recv:
		if m != "hello" {
			t.Fatalf("got %q", m)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("message not delivered")
	}
	if ok, err := a.Send(ctx, "srv-nobody", []byte("x")); ok || err != nil {
		t.Fatalf("Send to nobody: %v %v, want not delivered", ok, err)
	}
}

func TestSharedSingle(t *testing.T) {
	testShared(t, redistest.Start(t, redistest.Options{}).URL())
}

func TestSharedCluster(t *testing.T) {
	testShared(t, redistest.StartCluster(t, 3).URL())
}

// Losing Redis: REGISTER fails with ErrUnavailable, never with success,
// and the store recovers by itself when Redis is back.
func TestRedisDownAndBack(t *testing.T) {
	r := redistest.Start(t, redistest.Options{AOF: true})
	s := open(t, r.URL(), Options{})
	now := time.Now()
	if err := store.RegisterSync(s, randID(), randID(), now); err != nil {
		t.Fatal(err)
	}
	r.Stop()
	for i := range 3 {
		if err := store.RegisterSync(s, randID(), randID(), now); !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("register %d with Redis down: %v, want ErrUnavailable", i, err)
		}
	}
	if !s.Down() {
		t.Fatal("store not marked down")
	}
	if _, _, err := s.Fetch(context.Background(), randID()); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Fetch with Redis down: %v", err)
	}
	r.Restart()
	id, key := randID(), randID()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := store.RegisterSync(s, id, key, now)
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatalf("after restart: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if k, ok, err := open(t, r.URL(), Options{}).Fetch(context.Background(), id); !ok || err != nil || k != key {
		t.Fatalf("registration after recovery not in Redis: %v %v", ok, err)
	}
}

// Every acknowledged registration survives kill -9 of an AOF-always Redis
// in the middle of a flood of registrations.
func TestAcknowledgedSurviveRedisKill(t *testing.T) {
	r := redistest.Start(t, redistest.Options{AOF: true})
	s := open(t, r.URL(), Options{})
	var mu sync.Mutex
	acked := map[store.ID]store.Key{}
	var failed int
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				id, key := randID(), randID()
				err := store.RegisterSync(s, id, key, time.Now())
				mu.Lock()
				if err == nil {
					acked[id] = key
				} else {
					failed++
				}
				mu.Unlock()
				if err != nil {
					time.Sleep(5 * time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	r.Stop()
	time.Sleep(200 * time.Millisecond)
	r.Restart()
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed == 0 {
		t.Fatal("no registration failed while Redis was down: the outage was not exercised")
	}
	check := open(t, r.URL(), Options{})
	for id, key := range acked {
		k, ok, err := check.Fetch(context.Background(), id)
		if err != nil || !ok || k != key {
			t.Fatalf("acknowledged registration %x lost: %v %v", id, ok, err)
		}
	}
	t.Logf("%d acknowledged, all present after kill -9 and restart; %d refused", len(acked), failed)
}

func TestDurabilityReport(t *testing.T) {
	for _, tc := range []struct {
		aof  bool
		want string
	}{{true, "appendfsync always"}, {false, "no AOF"}} {
		r := redistest.Start(t, redistest.Options{AOF: tc.aof})
		d, err := open(t, r.URL(), Options{}).Durability(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(d.String(), tc.want) || !strings.Contains(d.String(), "no replica") {
			t.Errorf("AOF %v: %q, want %q and no replica", tc.aof, d, tc.want)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	for _, u := range []string{"redis+cluster://", "redis://127.0.0.1:1/0?bogus=1", "redis://127.0.0.1:1/0?wait=x", "http://x"} {
		if _, err := Open(u, Options{Timeout: 100 * time.Millisecond}); err == nil {
			t.Errorf("Open(%q) succeeded", u)
		}
	}
	// Nothing listens on port 1: unavailable, said at once.
	if _, err := Open("redis://127.0.0.1:1/0", Options{Timeout: 100 * time.Millisecond}); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Open of a dead Redis: %v", err)
	}
}

// Lookup is the hot path: no allocation.
func TestLookupNoAlloc(t *testing.T) {
	r := redistest.Start(t, redistest.Options{})
	s := open(t, r.URL(), Options{})
	id := randID()
	if err := store.RegisterSync(s, id, randID(), time.Now()); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	if n := testing.AllocsPerRun(1000, func() {
		if _, ok := s.Lookup(id); !ok {
			t.Fatal("miss")
		}
		s.Touch(id, now)
	}); n != 0 {
		t.Fatalf("Lookup+Touch: %v allocs", n)
	}
}

// With wait=1 a REGISTER is acknowledged only once a replica has it: with
// the replica up it succeeds and is on the replica; with the replica gone
// it fails with ErrUnavailable (after WAIT's timeout), never with success.
func TestWaitForReplica(t *testing.T) {
	// No 5 s wait for more replicas before the first full sync.
	master := redistest.Start(t, redistest.Options{AOF: true, Extra: []string{"--repl-diskless-sync-delay", "0"}})
	replica := redistest.Start(t, redistest.Options{Extra: []string{"--replicaof", "127.0.0.1", strconv.Itoa(master.Port)}})
	for deadline := time.Now().Add(5 * time.Second); ; {
		info, _ := master.Info("replication")
		if strings.Contains(info, "connected_slaves:1") && strings.Contains(info, "state=online") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica did not come online: %s", info)
		}
		time.Sleep(20 * time.Millisecond)
	}
	s := open(t, master.URL()+"?wait=1", Options{})
	d, err := s.Durability(context.Background())
	if err != nil || d.Replicas != 1 || !strings.Contains(d.String(), "1 replica(s) (WAIT)") {
		t.Fatalf("durability with wait=1: %v %q", err, d)
	}
	id, key := randID(), randID()
	if err := store.RegisterSync(s, id, key, time.Now()); err != nil {
		t.Fatalf("register with the replica up: %v", err)
	}
	if k, ok, err := open(t, replica.URL(), Options{}).Fetch(context.Background(), id); err != nil || !ok || k != key {
		t.Fatalf("acknowledged registration not on the replica: %v %v", ok, err)
	}
	replica.Stop()
	if err := store.RegisterSync(s, randID(), randID(), time.Now()); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("register with the replica gone: %v, want ErrUnavailable", err)
	}
}
