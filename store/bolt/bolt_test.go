package bolt

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	bbolt "go.etcd.io/bbolt"
	"go.uber.org/goleak"

	"github.com/ewf-project/ewf/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		removeFixtures()
		os.Exit(code)
	}))
}

// t0 is an arbitrary fixed "now"; time is always passed in, never read.
var t0 = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// ids returns n distinct pseudo-random IDs and keys, the same for a seed.
func ids(seed uint64, n int) ([]store.ID, []store.Key) {
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	is := make([]store.ID, n)
	ks := make([]store.Key, n)
	for i := range is {
		r.Read(is[i][:])
		r.Read(ks[i][:])
	}
	return is, ks
}

func open(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func mustClose(t testing.TB, s *Store) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func mustRegister(t testing.TB, s store.Store, id store.ID, key store.Key, now time.Time) {
	t.Helper()
	if err := store.RegisterSync(s, id, key, now); err != nil {
		t.Fatalf("Register(%x): %v", id, err)
	}
}

// registerAll registers is→ks all at once (so they commit in groups) and
// waits for every outcome.
func registerAll(t testing.TB, s store.Store, is []store.ID, ks []store.Key, now time.Time) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, len(is))
	for i := range is {
		wg.Add(1)
		s.Register(is[i], ks[i], now, func(err error) {
			defer wg.Done()
			if err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	// Errorf, not Fatalf: callers may run this on a goroutine of their own.
	for err := range errs {
		t.Errorf("Register: %v (and %d more)", err, len(errs))
		break
	}
}

// gate blocks the committer: Register it and the committer sits in its done
// callback until the returned release is called. Registrations made
// meanwhile stay queued, i.e. reserved but not committed.
func gate(t *testing.T, s *Store) (release func()) {
	t.Helper()
	in, out := make(chan struct{}), make(chan struct{})
	s.Register(store.ID{0xff, 0xfe}, store.Key{1}, t0, func(err error) {
		if err != nil {
			t.Errorf("gate registration: %v", err)
		}
		close(in)
		<-out
	})
	<-in
	var once sync.Once
	release = func() { once.Do(func() { close(out) }) }
	t.Cleanup(release)
	return release
}

func TestRegisterThenLookupFindsKey(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	defer mustClose(t, s)
	is, ks := ids(1, 100)
	for i := range is {
		mustRegister(t, s, is[i], ks[i], t0)
	}
	for i := range is {
		if k, ok := s.Lookup(is[i]); !ok || k != ks[i] {
			t.Fatalf("Lookup(%x) = %x, %v; want %x, true", is[i], k, ok, ks[i])
		}
	}
	if _, ok := s.Lookup(store.ID{1, 2, 3}); ok {
		t.Error("Lookup of an unknown ID succeeded")
	}
	if got := s.Len(); got != len(is) {
		t.Errorf("Len = %d, want %d", got, len(is))
	}
}

func TestRegisterTakenIDFailsWithErrExists(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	defer mustClose(t, s)
	id := store.ID{7}
	mustRegister(t, s, id, store.Key{1}, t0)
	if err := store.RegisterSync(s, id, store.Key{2}, t0); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second Register = %v, want ErrExists", err)
	}
	if k, _ := s.Lookup(id); k != (store.Key{1}) {
		t.Errorf("key after refused Register = %x, want the first one", k)
	}
}

func TestRegisterWhileSameIDCommitsFailsAndIsInvisible(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	defer mustClose(t, s)
	release := gate(t, s)

	id, key := store.ID{9}, store.Key{9}
	committed := make(chan error, 1)
	s.Register(id, key, t0, func(err error) { committed <- err })

	// Reserved but not on disk: a duplicate is refused at once (done runs
	// before Register returns), and Lookup does not see it yet.
	var dupErr error
	s.Register(id, store.Key{8}, t0, func(err error) { dupErr = err })
	if !errors.Is(dupErr, store.ErrExists) {
		t.Fatalf("Register during commit = %v, want ErrExists synchronously", dupErr)
	}
	if _, ok := s.Lookup(id); ok {
		t.Fatal("Lookup found an ID whose commit has not finished")
	}
	if s.Len() != 2 {
		t.Errorf("Len = %d, want 2 (gate + pending)", s.Len())
	}

	release()
	if err := <-committed; err != nil {
		t.Fatalf("Register: %v", err)
	}
	if k, ok := s.Lookup(id); !ok || k != key {
		t.Fatalf("Lookup after commit = %x, %v", k, ok)
	}
}

func TestRegisterWithFullQueueFailsWithErrBusyAndFreesID(t *testing.T) {
	s := open(t, t.TempDir(), Options{QueueSize: 2})
	defer mustClose(t, s)
	release := gate(t, s)

	var wg sync.WaitGroup
	for i := range 2 {
		wg.Add(1)
		s.Register(store.ID{byte(i)}, store.Key{}, t0, func(err error) {
			defer wg.Done()
			if err != nil {
				t.Errorf("queued Register: %v", err)
			}
		})
	}
	id := store.ID{42}
	var busy error
	s.Register(id, store.Key{}, t0, func(err error) { busy = err })
	if !errors.Is(busy, store.ErrBusy) {
		t.Fatalf("Register on full queue = %v, want ErrBusy", busy)
	}
	release()
	wg.Wait()
	mustRegister(t, s, id, store.Key{}, t0) // the refused ID is free again
	if got := s.Stats().Busy; got != 1 {
		t.Errorf("Stats().Busy = %d, want 1", got)
	}
}

func TestRegisterBeyondMaxFailsWithErrFull(t *testing.T) {
	s := open(t, t.TempDir(), Options{MaxRegistrations: 3})
	defer mustClose(t, s)
	is, ks := ids(2, 4)
	for i := range 3 {
		mustRegister(t, s, is[i], ks[i], t0)
	}
	if err := store.RegisterSync(s, is[3], ks[3], t0); !errors.Is(err, store.ErrFull) {
		t.Fatalf("4th Register = %v, want ErrFull", err)
	}
	if n, err := s.Expire(t0.Add(store.DefaultMaxIdle)); err != nil || n != 3 {
		t.Fatalf("Expire = %d, %v", n, err)
	}
	mustRegister(t, s, is[3], ks[3], t0) // room again
}

func TestReopenKeepsRegistrations(t *testing.T) {
	dir := t.TempDir()
	is, ks := ids(3, 2000)
	s := open(t, dir, Options{})
	registerAll(t, s, is, ks, t0)
	if st := s.Stats(); st.Commits >= st.Committed {
		t.Logf("no grouping happened: %+v", st) // timing-dependent, not a failure
	}
	mustClose(t, s)

	s = open(t, dir, Options{})
	defer mustClose(t, s)
	if s.Len() != len(is) {
		t.Fatalf("Len after reopen = %d, want %d", s.Len(), len(is))
	}
	for i := range is {
		if k, ok := s.Lookup(is[i]); !ok || k != ks[i] {
			t.Fatalf("Lookup(%x) after reopen = %x, %v; want %x", is[i], k, ok, ks[i])
		}
	}
}

func TestExpireDeletesOnlyCertainlyIdle(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	idle, used := store.ID{1}, store.ID{2}
	mustRegister(t, s, idle, store.Key{1}, t0)
	mustRegister(t, s, used, store.Key{2}, t0)
	s.Touch(used, t0.Add(10*24*time.Hour))

	// Within the touch resolution nothing is certain.
	if n, err := s.Expire(t0.Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("Expire(t0+1h) = %d, %v; want 0", n, err)
	}
	// One second past it, the idle one is certainly idle since cutoff; the
	// used one has a recorded use nine days after cutoff.
	if n, err := s.Expire(t0.Add(time.Hour + time.Second)); err != nil || n != 1 {
		t.Fatalf("Expire(t0+1h1s) = %d, %v; want 1", n, err)
	}
	if n, err := s.Expire(t0.Add(10 * 24 * time.Hour)); err != nil || n != 0 {
		t.Fatalf("Expire(t0+10d) = %d, %v; want 0 (used at t0+10d)", n, err)
	}
	if _, ok := s.Lookup(idle); ok {
		t.Error("expired ID still found")
	}
	if _, ok := s.Lookup(used); !ok {
		t.Error("touched ID expired")
	}
	if got := s.Stats().Expired; got != 1 {
		t.Errorf("Stats().Expired = %d", got)
	}
	mustRegister(t, s, idle, store.Key{3}, t0.Add(10*24*time.Hour)) // the ID is free again
	mustClose(t, s)

	s = open(t, dir, Options{})
	defer mustClose(t, s)
	if k, ok := s.Lookup(idle); !ok || k != (store.Key{3}) {
		t.Errorf("re-registered ID after reopen = %x, %v", k, ok)
	}
	if s.Len() != 2 {
		t.Errorf("Len after reopen = %d, want 2", s.Len())
	}
}

func TestLargeExpiryRunsInGroupsBesideRegistrations(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	old, oldKeys := ids(10, 3*maintenanceGroup+100)
	registerAll(t, s, old, oldKeys, t0)
	later := t0.Add(40 * 24 * time.Hour)
	fresh, freshKeys := ids(11, 500)

	done := make(chan struct{})
	go func() {
		defer close(done)
		registerAll(t, s, fresh, freshKeys, later)
	}()
	n, err := s.Expire(later.Add(-store.DefaultMaxIdle))
	<-done
	if err != nil || n != len(old) {
		t.Fatalf("Expire = %d, %v; want %d", n, err, len(old))
	}
	if s.Len() != len(fresh) {
		t.Fatalf("Len = %d, want %d", s.Len(), len(fresh))
	}
	slots := 0
	for i := range s.idx.shards {
		slots += len(s.idx.shards[i].t.slots)
	}
	if slots > 4*len(fresh)+shardCount*minSlots {
		t.Errorf("%d slots for %d registrations after expiry: tables not shrunk", slots, len(fresh))
	}
	mustClose(t, s)

	s = open(t, dir, Options{})
	defer mustClose(t, s)
	if s.Len() != len(fresh) {
		t.Fatalf("Len after reopen = %d, want %d", s.Len(), len(fresh))
	}
	for i := range fresh {
		if k, ok := s.Lookup(fresh[i]); !ok || k != freshKeys[i] {
			t.Fatalf("Lookup(%x) after reopen = %x, %v", fresh[i], k, ok)
		}
	}
}

// lastOnDisk reads the stored last-use time of id.
func lastOnDisk(t *testing.T, s *Store, id store.ID) time.Time {
	t.Helper()
	h, sh := s.idx.locate(&id)
	sh.mu.RLock()
	i, ok := sh.t.find(&id, h)
	seq := sh.t.slots[i].seq
	sh.mu.RUnlock()
	if !ok {
		t.Fatalf("%x not in the index", id)
	}
	var v []byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		v = tx.Bucket(regBucket).Get(binary.BigEndian.AppendUint64(nil, seq))
		if len(v) != valueLen || store.ID(v[:16]) != id {
			t.Errorf("record %d = %x, want ID %x", seq, v, id)
		}
		v = slices.Clone(v)
		return nil
	})
	if err != nil || len(v) != valueLen {
		t.Fatalf("reading %x: %v", id, err)
	}
	return time.Unix(int64(binary.BigEndian.Uint64(v[32:])), 0).UTC()
}

func TestTouchIsWrittenAtCloseAndSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	id := store.ID{5}
	mustRegister(t, s, id, store.Key{5}, t0)
	later := t0.Add(5 * 24 * time.Hour)
	s.Touch(id, later)
	s.Touch(id, later.Add(time.Minute)) // within the resolution: not recorded
	if got := lastOnDisk(t, s, id); !got.Equal(t0) {
		t.Fatalf("touch written before flush: %v", got)
	}
	mustClose(t, s)

	s = open(t, dir, Options{})
	defer mustClose(t, s)
	if got := lastOnDisk(t, s, id); !got.Equal(later) {
		t.Fatalf("last use after reopen = %v, want %v", got, later)
	}
	if got := s.Stats().TouchesWritten; got != 0 {
		t.Errorf("fresh store TouchesWritten = %d", got)
	}
}

func TestTouchOfUnknownOrOlderTimeChangesNothing(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	defer mustClose(t, s)
	id := store.ID{6}
	mustRegister(t, s, id, store.Key{6}, t0)
	s.Touch(store.ID{0x66}, t0.Add(48*time.Hour))
	s.Touch(id, t0.Add(-48*time.Hour))
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := s.Stats().TouchesWritten; got != 0 {
		t.Errorf("TouchesWritten = %d, want 0", got)
	}
}

func TestTouchIsFlushedEveryInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := open(t, t.TempDir(), Options{})
		defer mustClose(t, s)
		id := store.ID{4}
		now := time.Now()
		mustRegister(t, s, id, store.Key{4}, now)
		s.Touch(id, now.Add(2*time.Hour))
		time.Sleep(time.Minute + time.Second)
		if got := s.Stats().TouchesWritten; got != 1 {
			t.Fatalf("TouchesWritten after one interval = %d, want 1", got)
		}
		if got := lastOnDisk(t, s, id); !got.Equal(now.Add(2 * time.Hour).Truncate(time.Second)) {
			t.Fatalf("last use on disk = %v", got)
		}
	})
}

func TestStoreExpiresIdleRegistrationsItself(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := open(t, t.TempDir(), Options{MaxIdle: 2 * time.Hour, TouchResolution: time.Minute})
		defer mustClose(t, s)
		mustRegister(t, s, store.ID{1}, store.Key{1}, time.Now())
		// Idle for MaxIdle plus the touch resolution,
		// then the next hourly run deletes it.
		time.Sleep(3*time.Hour + time.Second)
		if s.Len() != 0 {
			t.Fatalf("Len after 3h idle with MaxIdle 2h = %d, want 0", s.Len())
		}
	})
}

func TestClosedStoreRefusesWork(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	var got error
	s.Register(store.ID{1}, store.Key{}, t0, func(err error) { got = err })
	if !errors.Is(got, store.ErrClosed) {
		t.Errorf("Register after Close = %v, want ErrClosed synchronously", got)
	}
	if _, err := s.Expire(t0); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Expire after Close = %v", err)
	}
	if err := s.Flush(); !errors.Is(err, store.ErrClosed) {
		t.Errorf("Flush after Close = %v", err)
	}
	if err := s.Close(); !errors.Is(err, store.ErrClosed) {
		t.Errorf("second Close = %v", err)
	}
}

func TestCloseCommitsEverythingQueued(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	release := gate(t, s)
	is, ks := ids(4, 500)
	var mu sync.Mutex
	results := map[store.ID]error{}
	for i := range is {
		s.Register(is[i], ks[i], t0, func(err error) {
			mu.Lock()
			results[is[i]] = err
			mu.Unlock()
		})
	}
	closed := make(chan error)
	go func() { closed <- s.Close() }()
	release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	// Every done ran before Close returned.
	if len(results) != len(is) {
		t.Fatalf("%d of %d done callbacks ran before Close returned", len(results), len(is))
	}
	for id, err := range results {
		if err != nil {
			t.Fatalf("Register(%x) = %v", id, err)
		}
	}
	s = open(t, dir, Options{})
	defer mustClose(t, s)
	if s.Len() != len(is)+1 {
		t.Errorf("Len after reopen = %d, want %d", s.Len(), len(is)+1)
	}
}

func TestOpenCreatesPrivateFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	s := open(t, dir, Options{})
	defer mustClose(t, s)
	for path, want := range map[string]os.FileMode{
		dir:                          os.ModeDir | 0o700,
		filepath.Join(dir, FileName): 0o600,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		// The umask can only remove bits, and these have none for others.
		if fi.Mode() != want {
			t.Errorf("%s mode = %v, want %v", path, fi.Mode(), want)
		}
	}
}

func TestOpenOfLockedStoreFailsWithErrLocked(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, Options{})
	defer mustClose(t, s)
	// flock locks belong to the open file, so a second Open in the same
	// process is refused just like another ewfd would be.
	start := time.Now()
	_, err := Open(dir, Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("second Open took %v", time.Since(start))
	}
	t.Log(err)
}

func TestOpenOfForeignOrDamagedFileFails(t *testing.T) {
	// writeBolt makes a bbolt file with fn's content.
	writeBolt := func(fn func(*bbolt.Tx) error) func(t *testing.T, path string) {
		return func(t *testing.T, path string) {
			db, err := bbolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := db.Update(fn); err != nil {
				t.Fatal(err)
			}
		}
	}
	// ours makes a valid store and then changes it with fn.
	ours := func(fn func(*bbolt.Tx) error) func(t *testing.T, path string) {
		return func(t *testing.T, path string) {
			s := open(t, filepath.Dir(path), Options{})
			mustRegister(t, s, store.ID{1}, store.Key{1}, t0)
			mustClose(t, s)
			writeBolt(fn)(t, path)
		}
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, path string)
		want  error
	}{
		{"text file", func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("not a database, just some words\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, ErrNotStore},
		{"random bytes", func(t *testing.T, path string) {
			b := make([]byte, 64<<10)
			rand.NewChaCha8([32]byte{9}).Read(b)
			if err := os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, ErrNotStore},
		{"other bbolt application", writeBolt(func(tx *bbolt.Tx) error {
			_, err := tx.CreateBucket([]byte("widgets"))
			return err
		}), ErrNotStore},
		{"newer schema", ours(func(tx *bbolt.Tx) error {
			return tx.Bucket(metaBucket).Put(versionKey, []byte{0, 0, 0, 2})
		}), ErrSchema},
		{"damaged record", ours(func(tx *bbolt.Tx) error {
			return tx.Bucket(regBucket).Put([]byte("short"), []byte("x"))
		}), ErrCorrupt},
		{"overwritten pages", func(t *testing.T, path string) {
			s := open(t, filepath.Dir(path), Options{})
			is, ks := ids(8, 5000)
			registerAll(t, s, is, ks, t0)
			mustClose(t, s)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			junk := make([]byte, 16<<10)
			rand.NewChaCha8([32]byte{7}).Read(junk)
			fi, _ := f.Stat()
			if _, err := f.WriteAt(junk, fi.Size()/2/4096*4096); err != nil {
				t.Fatal(err)
			}
		}, ErrCorrupt},
		{"missing registrations", ours(func(tx *bbolt.Tx) error {
			return tx.DeleteBucket(regBucket)
		}), ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			tt.setup(t, path)
			before, _ := os.ReadFile(path)
			s, err := Open(dir, Options{})
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Open = %v, want %v", err, tt.want)
			}
			t.Log(err)
			if after, _ := os.ReadFile(path); string(after) != string(before) {
				t.Error("a failed Open changed the file")
			}
		})
	}
}

func TestOpenKeepsLaterOfDuplicateRecordsAndDeletesEarlier(t *testing.T) {
	// Two records of one ID happen when an expiry's delete failed and the
	// ID was registered again before the retry.
	dir := t.TempDir()
	s := open(t, dir, Options{})
	id := store.ID{3}
	mustRegister(t, s, id, store.Key{1}, t0)
	mustClose(t, s)
	db, err := bbolt.Open(filepath.Join(dir, FileName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	k, v := make([]byte, keyLen), make([]byte, valueLen)
	putRecord(k, v, 2, &id, &store.Key{2}, unixSecs(t0))
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(regBucket).Put(k, v) }); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s = open(t, dir, Options{})
	defer mustClose(t, s)
	if got, _ := s.Lookup(id); got != (store.Key{2}) || s.Len() != 1 {
		t.Fatalf("Lookup = %x, Len = %d; want the later record's key, 1", got, s.Len())
	}
	if _, err := s.Expire(t0); err != nil { // deletes the superseded record
		t.Fatal(err)
	}
	records := 0
	s.db.View(func(tx *bbolt.Tx) error {
		records = tx.Bucket(regBucket).Stats().KeyN
		return nil
	})
	if records != 1 {
		t.Errorf("%d records on disk after expiry, want 1", records)
	}
}

func TestLookupAndTouchDoNotAllocate(t *testing.T) {
	s := open(t, t.TempDir(), Options{TouchResolution: time.Second})
	defer mustClose(t, s)
	is, ks := ids(5, 100)
	for i := range is {
		mustRegister(t, s, is[i], ks[i], t0)
	}
	i := 0
	if n := testing.AllocsPerRun(1000, func() {
		s.Lookup(is[i%len(is)])
		i++
	}); n != 0 {
		t.Errorf("Lookup: %v allocs", n)
	}
	// Touches that change the time and mark IDs dirty, across a flush:
	// the dirty lists keep their capacity.
	now := t0
	touchAll := func() {
		now = now.Add(time.Hour)
		for _, id := range is {
			s.Touch(id, now)
		}
	}
	touchAll()
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(10, func() {
		touchAll()
		touchAll()
		s.Touch(store.ID{0xaa}, now) // unknown
	}); n != 0 {
		t.Errorf("Touch: %v allocs per %d calls", n, 2*len(is)+1)
	}
}
