package bolt

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/ewf-project/ewf/store"
)

// fixtures holds stores built once per test binary run and shared by the
// benchmarks (copied before anything writes to them); TestMain removes it.
var fixtures struct {
	once sync.Once
	dir  string
	err  error
}

// bigN is the registration count of the large fixture: the 1 million
// registrations the memory and restart targets are about.
const bigN = 1_000_000

// bigStore returns the directory of a store with bigN registrations, all
// last used at t0, built with buildStore. IDs are ids(bigSeed, bigN).
const bigSeed = 100

func bigStore(tb testing.TB) string {
	fixtures.once.Do(func() {
		fixtures.dir, fixtures.err = os.MkdirTemp("", "ewf-store-bench-")
		if fixtures.err != nil {
			return
		}
		start := time.Now()
		fixtures.err = buildStore(filepath.Join(fixtures.dir, "big"), bigSeed, bigN)
		tb.Logf("built %d-registration fixture in %v", bigN, time.Since(start))
	})
	if fixtures.err != nil {
		tb.Fatal(fixtures.err)
	}
	return filepath.Join(fixtures.dir, "big")
}

func removeFixtures() {
	if fixtures.dir != "" {
		os.RemoveAll(fixtures.dir)
	}
}

// copyStore copies a fixture so a benchmark can write to it.
func copyStore(tb testing.TB, from string) string {
	tb.Helper()
	to := tb.TempDir()
	src, err := os.Open(filepath.Join(from, FileName))
	if err != nil {
		tb.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(filepath.Join(to, FileName), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		tb.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		tb.Fatal(err)
	}
	return to
}

// buildStore is the fast bulk path: one unsynced transaction that appends
// n records in sequence order, synced once at the end. Registrations through
// Register append the same way, so the file looks like a grown one (minus
// the free pages that copy-on-write leaves behind).
func buildStore(dir string, seed uint64, n int) error {
	s, err := Open(dir, Options{}) // the schema, exactly as Open makes it
	if err != nil {
		return err
	}
	if err := s.Close(); err != nil {
		return err
	}
	is, ks := ids(seed, n)
	db, err := bbolt.Open(filepath.Join(dir, FileName), 0o600, &bbolt.Options{
		NoSync: true, FreelistType: bbolt.FreelistMapType,
	})
	if err != nil {
		return err
	}
	keys, values := make([]byte, n*keyLen), make([]byte, n*valueLen)
	err = db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(regBucket)
		b.FillPercent = appendFill
		for i := range is {
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			k, v := keys[i*keyLen:(i+1)*keyLen], values[i*valueLen:(i+1)*valueLen]
			putRecord(k, v, seq, &is[i], &ks[i], unixSecs(t0))
			if err := b.Put(k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = db.Sync()
	}
	return errorsJoin(err, db.Close())
}

func errorsJoin(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func BenchmarkLookup(b *testing.B) {
	s := open(b, bigStore(b), Options{})
	defer mustClose(b, s)
	is, _ := ids(bigSeed, bigN)
	// Random order so that every lookup misses the CPU caches, as it would
	// with a million clients.
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(is), func(i, j int) { is[i], is[j] = is[j], is[i] })
	b.ReportAllocs()
	b.ResetTimer()
	var next atomic.Uint64
	b.RunParallel(func(pb *testing.PB) {
		i := next.Add(1 << 32)
		for pb.Next() {
			if _, ok := s.Lookup(is[i%bigN]); !ok {
				b.Error("not found")
				return
			}
			i++
		}
	})
	b.StopTimer() // Close is not part of it
}

// BenchmarkTouch touches random registrations of a 1M store from both
// cores. "record": every touch is an hour past the recorded use, so it
// takes the write lock and marks the entry dirty (the first BIND of each
// client per resolution). "within-resolution": the recorded use is recent,
// so the touch only reads (every other BIND).
func BenchmarkTouch(b *testing.B) {
	for _, record := range []bool{true, false} {
		name := "within-resolution"
		if record {
			name = "record"
		}
		b.Run(name, func(b *testing.B) {
			s := open(b, copyStore(b, bigStore(b)), Options{TouchFlushInterval: time.Hour})
			defer mustClose(b, s)
			is, _ := ids(bigSeed, bigN)
			rand.New(rand.NewPCG(1, 2)).Shuffle(len(is), func(i, j int) { is[i], is[j] = is[j], is[i] })
			b.ReportAllocs()
			b.ResetTimer()
			var workers atomic.Int64
			b.RunParallel(func(pb *testing.PB) {
				// Each goroutine walks its own stride of the IDs, so with
				// "record" no two goroutines touch an ID in the same hour.
				w := int(workers.Add(1))
				stride := runtime.GOMAXPROCS(0)
				k := 0
				for pb.Next() {
					j := (w + k*stride) % bigN
					now := t0
					if record {
						now = t0.Add(time.Duration((w+k*stride)/bigN+1) * time.Hour)
					}
					s.Touch(is[j], now)
					k++
				}
			})
			b.StopTimer() // Close writes the touches; BenchmarkFlushTouches measures that
		})
	}
}

// BenchmarkFlushTouches measures the periodic write of last-use times on a
// 1M store in the worst steady state: every client active, so with the
// default one-hour resolution 1/60 of all registrations (16,667) are dirty
// at each one-minute flush. One op is one flush.
func BenchmarkFlushTouches(b *testing.B) {
	s := open(b, copyStore(b, bigStore(b)), Options{TouchFlushInterval: time.Hour})
	defer mustClose(b, s)
	is, _ := ids(bigSeed, bigN)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(is), func(i, j int) { is[i], is[j] = is[j], is[i] })
	const perFlush = bigN / 60
	b.ReportAllocs()
	now, next := t0, 0
	for b.Loop() {
		b.StopTimer()
		now = now.Add(time.Hour)
		for range perFlush {
			s.Touch(is[next%bigN], now)
			next++
		}
		b.StartTimer()
		if err := s.Flush(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(s.Stats().TouchesWritten)/b.Elapsed().Seconds(), "touches-written/s")
}

// BenchmarkRegister keeps a fixed number of registrations in flight, as a
// server with that many clients registering at once would, and reports
// durable registrations per second and the average group size. With few in
// flight the rate is bound by the commit latency (two fdatasyncs); with
// many, by the work per registration.
func BenchmarkRegister(b *testing.B) {
	for _, inflight := range []int{16, 1024} {
		b.Run(fmt.Sprintf("empty/inflight=%d", inflight), func(b *testing.B) {
			benchRegister(b, b.TempDir(), inflight)
		})
		b.Run(fmt.Sprintf("1M/inflight=%d", inflight), func(b *testing.B) {
			benchRegister(b, copyStore(b, bigStore(b)), inflight)
		})
	}
}

func benchRegister(b *testing.B, dir string, inflight int) {
	s := open(b, dir, Options{})
	defer mustClose(b, s)
	sem := make(chan struct{}, inflight)
	r := rand.NewChaCha8([32]byte{42})
	b.ReportAllocs()
	start := time.Now()
	var n int
	for b.Loop() {
		var id store.ID
		var key store.Key
		r.Read(id[:])
		r.Read(key[:])
		sem <- struct{}{}
		s.Register(id, key, t0, func(err error) {
			<-sem
			if err != nil {
				b.Error(err)
			}
		})
		n++
	}
	for range inflight {
		sem <- struct{}{}
	}
	elapsed := time.Since(start)
	st := s.Stats()
	b.ReportMetric(float64(n)/elapsed.Seconds(), "registrations/s")
	b.ReportMetric(float64(st.Committed)/float64(max(st.Commits, 1)), "per-commit")
}

// BenchmarkOpen measures what a restart costs: a fresh process opens a
// store of 1M registrations, and reports how long Open took and the
// process's memory afterwards. "cold" first evicts the file from the page
// cache, as after a reboot.
func BenchmarkOpen(b *testing.B) {
	for _, cold := range []bool{false, true} {
		name := "1M/warm"
		if cold {
			name = "1M/cold"
		}
		b.Run(name, func(b *testing.B) {
			dir := bigStore(b)
			var reports []openReport
			for b.Loop() {
				if cold {
					evict(b, filepath.Join(dir, FileName))
				}
				reports = append(reports, runOpenChild(b, dir, 0))
			}
			reportMemory(b, reports)
		})
	}
}

// BenchmarkSteadyMemory measures the whole store's memory under load, in a
// fresh process: it opens the 1M store and then runs 30 rounds of the worst
// steady state the defaults allow, each round one minute's touch flush with
// every client active (16,667 touches written) and a burst of 2,000
// registrations (they add up to 1.06M). Reports the peak resident memory
// too. Without GOMEMLIMIT, Go lets the heap grow to twice the live data
// between collections; run it with GOMEMLIMIT set to see the effect.
func BenchmarkSteadyMemory(b *testing.B) {
	const rounds = 30
	var reports []openReport
	for b.Loop() {
		reports = append(reports, runOpenChild(b, copyStore(b, bigStore(b)), rounds))
	}
	reportMemory(b, reports)
}

func reportMemory(b *testing.B, reports []openReport) {
	var sum openReport
	for _, r := range reports {
		if r.Registrations < bigN {
			b.Fatalf("child held %d registrations", r.Registrations)
		}
		sum.OpenSeconds += r.OpenSeconds
		sum.RSSMB += r.RSSMB
		sum.PeakRSSMB += r.PeakRSSMB
		sum.RSSAnonMB += r.RSSAnonMB
		sum.RSSFileMB += r.RSSFileMB
		sum.HeapMB += r.HeapMB
	}
	n := float64(len(reports))
	b.ReportMetric(sum.OpenSeconds/n, "open-s")
	b.ReportMetric(sum.RSSMB/n, "RSS-MB")
	b.ReportMetric(sum.PeakRSSMB/n, "peakRSS-MB")
	b.ReportMetric(sum.RSSAnonMB/n, "RSSanon-MB")
	b.ReportMetric(sum.RSSFileMB/n, "RSSfile-MB")
	b.ReportMetric(sum.HeapMB/n, "heap-MB")
}

// evict drops a file's pages from the page cache (only this file's).
func evict(tb testing.TB, path string) {
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		tb.Fatal(err)
	}
}

const (
	openDirEnv    = "EWF_STORE_OPEN_DIR"
	openRoundsEnv = "EWF_STORE_OPEN_ROUNDS"
)

type openReport struct {
	Registrations int
	OpenSeconds   float64
	RSSMB         float64 // VmRSS: all resident memory of the process
	PeakRSSMB     float64 // VmHWM: the most VmRSS ever was
	RSSAnonMB     float64 // RssAnon: heap, stacks
	RSSFileMB     float64 // RssFile: mapped file pages (the bbolt mmap, the binary)
	HeapMB        float64 // runtime HeapInuse after a GC: live data
}

func runOpenChild(tb testing.TB, dir string, rounds int) openReport {
	tb.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperOpen$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), openDirEnv+"="+dir, openRoundsEnv+"="+strconv.Itoa(rounds))
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("child: %v\n%s", err, out)
	}
	for line := range strings.Lines(string(out)) {
		if _, rest, ok := strings.Cut(line, "REPORT "); ok {
			var r openReport
			if err := json.Unmarshal([]byte(rest), &r); err != nil {
				tb.Fatal(err)
			}
			return r
		}
	}
	tb.Fatalf("child printed no report:\n%s", out)
	return openReport{}
}

// TestHelperOpen is the child of BenchmarkOpen and BenchmarkSteadyMemory.
func TestHelperOpen(t *testing.T) {
	dir := os.Getenv(openDirEnv)
	if dir == "" {
		t.Skip("child process of BenchmarkOpen")
	}
	rounds, _ := strconv.Atoi(os.Getenv(openRoundsEnv))
	start := time.Now()
	s, err := Open(dir, Options{TouchFlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)

	// The fixture's IDs, regenerated as a stream like ids() makes them:
	// holding all of them would add 32 MB that ewfd does not have.
	fixture := rand.NewChaCha8([32]byte{bigSeed})
	fresh := rand.NewChaCha8([32]byte{0xee})
	var id store.ID
	var key store.Key
	var wg sync.WaitGroup
	inflight := make(chan struct{}, 1024) // as BenchmarkRegister
	now := t0
	for range rounds {
		now = now.Add(time.Hour)
		for range bigN / 60 {
			fixture.Read(id[:])
			fixture.Read(key[:])
			s.Touch(id, now)
		}
		if err := s.Flush(); err != nil {
			t.Fatal(err)
		}
		for range 2_000 {
			fresh.Read(id[:])
			fresh.Read(key[:])
			wg.Add(1)
			inflight <- struct{}{}
			s.Register(id, key, now, func(err error) {
				defer wg.Done()
				<-inflight
				if err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	}

	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	kB := func(field string) float64 {
		for line := range strings.Lines(string(status)) {
			if rest, ok := strings.CutPrefix(line, field+":"); ok {
				n, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
				return n / 1024
			}
		}
		return -1
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r := openReport{
		Registrations: s.Len(),
		OpenSeconds:   took.Seconds(),
		RSSMB:         kB("VmRSS"),
		PeakRSSMB:     kB("VmHWM"),
		RSSAnonMB:     kB("RssAnon"),
		RSSFileMB:     kB("RssFile"),
		HeapMB:        float64(ms.HeapInuse) / (1 << 20),
	}
	js, _ := json.Marshal(r)
	t.Logf("REPORT %s", js)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}
