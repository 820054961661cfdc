// Package bolt is ewfd's embedded registration store: one bbolt file,
// <dir>/ewfd.db, and an in-memory index of every registration.
//
// Reads (Lookup, Touch) are served from the index. Writes go through a
// single committer goroutine:
//
//	Register ──reserve ID in index──▶ bounded queue ──▶ committer ──▶ one bbolt
//	   │ ErrExists/ErrFull/ErrBusy                        │          transaction
//	   ▼ (done called at once)                            ▼          (one fsync
//	                                       done(nil) for the whole group   pair)
//
// While one group is being synced, the next one gathers in the queue, so the
// group size follows the load and durability does not cap throughput. The
// same goroutine flushes touches and deletes expired registrations, so the
// file has a single writer and every disk write follows the index change it
// reflects. See format.go for the file layout.
//
// The done callbacks run on the committer goroutine: they must not block,
// and must not call Close, Expire or Flush of the same store, which wait for
// that goroutine.

package bolt

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	bbolt "go.etcd.io/bbolt"
	bbolterrors "go.etcd.io/bbolt/errors"

	"github.com/ewf-project/ewf/store"
)

// FileName is the store's file inside the data directory.
const FileName = "ewfd.db"

// Options configure Open. The zero value is the production default.
type Options struct {
	// MaxRegistrations caps the registrations held (pending ones included);
	// Register beyond it fails with store.ErrFull. Zero means no cap.
	MaxRegistrations int

	// QueueSize bounds the registrations waiting for a commit; Register
	// beyond it fails at once with store.ErrBusy, because a queue that keeps
	// growing behind a slow disk only turns into timeouts. It is also the
	// largest group written in one transaction. Zero means 8192 (at 20,000
	// registrations/s, 400 ms of disk stall).
	QueueSize int

	// MaxIdle is how long a registration lives without a Touch. The store
	// expires idle registrations itself every ExpireInterval; a negative
	// MaxIdle turns that off (Expire still works). Zero means
	// store.DefaultMaxIdle (30 days).
	MaxIdle time.Duration

	// ExpireInterval is how often the store runs its own expiry. Zero means
	// one hour.
	ExpireInterval time.Duration

	// TouchFlushInterval is how often touched last-use times are written to
	// disk (they are also written at Close). A crash loses the touches of at
	// most this long: a client that binds again after the restart is
	// recorded again; one that never binds again keeps its older recorded
	// use and may expire that much earlier. Zero means one minute.
	TouchFlushInterval time.Duration

	// TouchResolution is the granularity of last-use times: a Touch less
	// than this after the recorded last use is not recorded. It bounds disk
	// writes to one per registration per TouchResolution however often a
	// client binds; the registrations touched in one interval are
	// scattered through the file, so each written touch rewrites a 4 KB
	// page. Expiry allows for it (see Store.Expire), so registrations expire
	// up to TouchResolution late, never early. Zero means one hour.
	TouchResolution time.Duration

	// LockTimeout is how long Open waits for another process to release
	// the file before failing with ErrLocked. Zero means one second.
	LockTimeout time.Duration

	// Now is the clock for the store's own expiry. Nil means time.Now.
	Now func() time.Time

	// Logger receives commit failures and expiry summaries. Nil discards.
	Logger *slog.Logger
}

func (o *Options) populate() {
	if o.QueueSize <= 0 {
		o.QueueSize = 8192
	}
	if o.MaxIdle == 0 {
		o.MaxIdle = store.DefaultMaxIdle
	}
	if o.ExpireInterval <= 0 {
		o.ExpireInterval = time.Hour
	}
	if o.TouchFlushInterval <= 0 {
		o.TouchFlushInterval = time.Minute
	}
	if o.TouchResolution <= 0 {
		o.TouchResolution = time.Hour
	}
	if o.LockTimeout <= 0 {
		o.LockTimeout = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Store is the bbolt-backed store.Store.
type Store struct {
	db   *bbolt.DB
	idx  *index
	opts Options
	log  *slog.Logger
	// slack is how much older than an Expire cutoff a last use must be
	// before the registration is deleted; see Expire.
	slack uint32

	// closeMu orders Register's queue send before Close's drain: once
	// Close holds it for writing and sets closed, nothing more is queued.
	closeMu sync.RWMutex
	closed  bool

	queue    chan pending
	calls    chan call
	quit     chan struct{} // closed by Close
	stopped  chan struct{} // closed when the committer has exited
	closeErr error         // the committer's final flush error, read after stopped

	// Committer-owned scratch, reused so that steady-state commits do not
	// allocate beyond what bbolt itself does.
	batch  []pending
	keys   []byte
	values []byte
	recs   []record
	ids    []store.ID
	seqs   []uint64
	// orphans are records out of the index but still on disk: superseded
	// duplicates found by Open, and expired ones whose delete failed. The
	// next expiry deletes them.
	orphans []uint64

	stats struct {
		commits, committed, commitFailures, busy atomic.Uint64
		touchesWritten, expired                  atomic.Uint64
	}
}

var _ store.Store = (*Store)(nil)

type pending struct {
	id   store.ID
	key  store.Key
	last uint32
	seq  uint64 // assigned in the commit
	done func(error)
}

// call is work for the committer that is not a registration, so that it is
// ordered with the commits: see Expire.
type call struct {
	fn   func()
	done chan struct{}
}

// Open opens or creates the store in dir and loads every registration into
// memory. dir is created with mode 0700 and the file with 0600: the KEYs in
// it are the clients' secrets.
func Open(dir string, opts Options) (*Store, error) {
	opts.populate()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	path := filepath.Join(dir, FileName)
	db, err := openBolt(path, &bbolt.Options{
		Timeout: opts.LockTimeout,
		// NoFreelistSync stays off although it would save writing the
		// freelist in each commit: without a synced freelist bbolt.Open
		// walks every page to rebuild it, and panics on a damaged page in
		// a goroutine of its own, which no recover can catch. With it, a
		// damaged page is met by the load below, where it becomes
		// ErrCorrupt. Appends keep the freelist short anyway.
		// The hashmap freelist allocates in O(1) where the array one scans;
		// random inserts and expiry leave many scattered free pages.
		FreelistType: bbolt.FreelistMapType,
		// InitialMmapSize is left at zero: bbolt only needs it to keep read
		// transactions from blocking a remap, and this store runs no read
		// transaction while it writes.
	})
	if err != nil {
		return nil, openError(path, err)
	}
	s, err := newStore(db, opts)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	return s, nil
}

// openBolt is bbolt.Open, with a panic on a damaged file turned into
// ErrCorrupt where bbolt panics on the calling goroutine. The file handle
// then leaks, which matters little: ewfd cannot start on that file anyway.
func openBolt(path string, o *bbolt.Options) (db *bbolt.DB, err error) {
	defer func() {
		if p := recover(); p != nil {
			db, err = nil, fmt.Errorf("%w: %v", ErrCorrupt, p)
		}
	}()
	return bbolt.Open(path, 0o600, o)
}

func openError(path string, err error) error {
	switch {
	case errors.Is(err, bbolterrors.ErrTimeout):
		return fmt.Errorf("store: %s: %w", path, ErrLocked)
	case errors.Is(err, bbolterrors.ErrInvalid),
		errors.Is(err, bbolterrors.ErrVersionMismatch),
		errors.Is(err, bbolterrors.ErrChecksum):
		return fmt.Errorf("store: %s: %w: %w", path, ErrNotStore, err)
	}
	return fmt.Errorf("store: %s: %w", path, err)
}

func newStore(db *bbolt.DB, opts Options) (s *Store, err error) {
	err = db.View(checkSchema)
	if errors.Is(err, errEmpty) {
		err = db.Update(createSchema)
	}
	if err != nil {
		return nil, err
	}
	slack := opts.TouchResolution / time.Second
	s = &Store{
		db:      db,
		opts:    opts,
		log:     opts.Logger,
		slack:   uint32(min(slack, 1<<32-1)),
		queue:   make(chan pending, opts.QueueSize),
		calls:   make(chan call),
		quit:    make(chan struct{}),
		stopped: make(chan struct{}),
	}
	start := time.Now()
	if err := db.View(func(tx *bbolt.Tx) (err error) {
		// bbolt panics on some damaged pages rather than returning an
		// error. View rolls the transaction back on the way out, so the
		// panic can be reported as a bad file instead of killing ewfd.
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("%w: %v", ErrCorrupt, p)
			}
		}()
		s.idx, s.orphans, err = loadAll(tx, opts.TouchResolution, s.releaseMapped)
		return err
	}); err != nil {
		return nil, err
	}
	s.releaseMapped()
	s.log.Info("registration store loaded", "registrations", s.Len(), "took", time.Since(start))
	go s.run()
	return s, nil
}

// Register implements store.Store. See the package doc for the path a
// registration takes.
func (s *Store) Register(id store.ID, key store.Key, now time.Time, done func(error)) {
	if done == nil {
		panic("store: Register with nil done")
	}
	err := s.enqueue(id, key, unixSecs(now), done)
	if err != nil {
		// After the locks are released, so that done may call back in.
		done(err)
	}
}

func (s *Store) enqueue(id store.ID, key store.Key, last uint32, done func(error)) error {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	if s.closed {
		return store.ErrClosed
	}
	if err := s.idx.reserve(&id, &key, last, int64(s.opts.MaxRegistrations)); err != nil {
		return err
	}
	select {
	case s.queue <- pending{id: id, key: key, last: last, done: done}:
		return nil
	default:
		s.idx.release(&id)
		s.stats.busy.Add(1)
		return store.ErrBusy
	}
}

// Lookup implements store.Store.
func (s *Store) Lookup(id store.ID) (store.Key, bool) {
	return s.idx.lookup(&id)
}

// Touch implements store.Store. The new time reaches the disk within
// Options.TouchFlushInterval, and only if it is at least
// Options.TouchResolution after the recorded one.
func (s *Store) Touch(id store.ID, now time.Time) {
	s.idx.touch(&id, unixSecs(now))
}

// Len implements store.Store.
func (s *Store) Len() int {
	return int(s.idx.count.Load())
}

// Expire implements store.Store. It deletes registrations whose recorded
// last use is more than TouchResolution before cutoff: recorded times lag
// real use by up to the resolution, so only those are certainly idle since
// cutoff. Queued registrations are committed between deletion groups, so a
// large expiry does not stall REGISTER.
func (s *Store) Expire(cutoff time.Time) (int, error) {
	var n int
	var err error
	if cerr := s.call(func() { n, err = s.expire(cutoff) }); cerr != nil {
		return 0, cerr
	}
	return n, err
}

// Flush writes pending last-use times now instead of at the next
// TouchFlushInterval.
func (s *Store) Flush() error {
	var err error
	if cerr := s.call(func() { err = s.flushTouches() }); cerr != nil {
		return cerr
	}
	return err
}

// call runs fn on the committer goroutine and waits for it.
func (s *Store) call(fn func()) error {
	c := call{fn: fn, done: make(chan struct{})}
	select {
	case s.calls <- c:
	case <-s.stopped:
		return store.ErrClosed
	}
	<-c.done
	return nil
}

// Close implements store.Store. A second Close returns store.ErrClosed.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return store.ErrClosed
	}
	s.closed = true
	s.closeMu.Unlock()
	close(s.quit)
	<-s.stopped
	return errors.Join(s.closeErr, s.db.Close())
}

// Stats are counters since Open, for metrics.
type Stats struct {
	Registrations  int    // held now, as Len
	Commits        uint64 // group commits of registrations (each a bbolt commit: two fdatasyncs)
	Committed      uint64 // registrations committed
	CommitFailures uint64 // registrations whose commit failed
	Busy           uint64 // registrations refused with store.ErrBusy
	TouchesWritten uint64 // last-use times written to disk
	Expired        uint64 // registrations deleted by expiry
}

// Stats returns the counters.
func (s *Store) Stats() Stats {
	return Stats{
		Registrations:  s.Len(),
		Commits:        s.stats.commits.Load(),
		Committed:      s.stats.committed.Load(),
		CommitFailures: s.stats.commitFailures.Load(),
		Busy:           s.stats.busy.Load(),
		TouchesWritten: s.stats.touchesWritten.Load(),
		Expired:        s.stats.expired.Load(),
	}
}

// run is the committer goroutine: the only writer of the file.
func (s *Store) run() {
	defer close(s.stopped)
	flush := time.NewTicker(s.opts.TouchFlushInterval)
	defer flush.Stop()
	// A nil channel never fires: with expiry off, no ticker.
	var expireC <-chan time.Time
	if s.opts.MaxIdle > 0 {
		t := time.NewTicker(s.opts.ExpireInterval)
		defer t.Stop()
		expireC = t.C
	}
	for {
		select {
		case p := <-s.queue:
			s.commitQueued(p)
		case c := <-s.calls:
			c.fn()
			close(c.done)
		case <-flush.C:
			if err := s.flushTouches(); err != nil {
				s.log.Error("writing last-use times failed; will retry", "err", err)
			}
		case <-expireC:
			n, err := s.expire(s.opts.Now().Add(-s.opts.MaxIdle))
			if err != nil {
				s.log.Error("expiry failed", "err", err)
			} else if n > 0 {
				s.log.Info("expired idle registrations", "count", n)
			}
		case <-s.quit:
			// Register no longer queues (closed is set), so draining until
			// empty commits everything that was ever accepted.
			for s.commitQueued(pending{}) {
			}
			s.closeErr = s.flushTouches()
			return
		}
	}
}

// commitQueued commits first (unless it is the zero pending) together with
// whatever else is queued, in one transaction. It reports whether it
// committed anything.
func (s *Store) commitQueued(first pending) bool {
	batch := s.batch[:0]
	if first.done != nil {
		batch = append(batch, first)
	}
drain:
	for len(batch) < cap(s.queue) {
		select {
		case p := <-s.queue:
			batch = append(batch, p)
		default:
			break drain
		}
	}
	if len(batch) == 0 {
		return false
	}
	keys, values := s.scratch(len(batch))
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(regBucket)
		b.FillPercent = appendFill
		for i := range batch {
			p := &batch[i]
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			p.seq = seq
			// bbolt keeps value slices until the commit, so each record
			// gets its own piece of the buffer.
			k, v := keys[i*keyLen:(i+1)*keyLen], values[i*valueLen:(i+1)*valueLen]
			putRecord(k, v, seq, &p.id, &p.key, p.last)
			if err := b.Put(k, v); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		s.stats.commits.Add(1)
		s.stats.committed.Add(uint64(len(batch)))
		for i := range batch {
			s.idx.confirm(&batch[i].id, batch[i].seq)
		}
	} else {
		s.stats.commitFailures.Add(uint64(len(batch)))
		s.log.Error("committing registrations failed", "count", len(batch), "err", err)
		for i := range batch {
			s.idx.release(&batch[i].id)
		}
	}
	// Every ID is confirmed before any done runs, so a client that hears
	// success first from the first done finds every one of them.
	for i := range batch {
		batch[i].done(err)
		batch[i].done = nil // let the closure be collected
	}
	s.batch = batch[:0]
	return true
}

// scratch returns key and value buffers for n records, reused between
// transactions (bbolt holds on to them only until its commit returns).
func (s *Store) scratch(n int) (keys, values []byte) {
	if cap(s.keys) < n*keyLen {
		s.keys = make([]byte, n*keyLen)
		s.values = make([]byte, n*valueLen)
	}
	return s.keys[:n*keyLen], s.values[:n*valueLen]
}

// flushTouches writes every dirty last-use time, maintenanceGroup records
// per transaction.
func (s *Store) flushTouches() error {
	recs := s.idx.takeDirty(s.recs[:0])
	defer func() { s.recs = reuse(recs) }()
	if len(recs) == 0 {
		return nil
	}
	// In file order, so that neighbours share the page they rewrite.
	slices.SortFunc(recs, func(a, b record) int { return cmp.Compare(a.seq, b.seq) })
	defer s.releaseMapped()
	for start := 0; start < len(recs); start += maintenanceGroup {
		group := recs[start:min(start+maintenanceGroup, len(recs))]
		keys, values := s.scratch(len(group))
		err := s.db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(regBucket)
			b.FillPercent = appendFill
			for i := range group {
				r := &group[i]
				k, v := keys[i*keyLen:(i+1)*keyLen], values[i*valueLen:(i+1)*valueLen]
				putRecord(k, v, r.seq, &r.id, &r.key, r.last)
				if err := b.Put(k, v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			s.idx.redirty(recs[start:])
			return err
		}
		s.stats.touchesWritten.Add(uint64(len(group)))
		s.commitQueued(pending{})
	}
	return nil
}

// maintenanceGroup bounds the records per transaction of touch flushes and
// expiry. Touched and expired records are scattered through the file, so
// each costs bbolt a page copy: a group of 2048 takes about 30 ms and 6 MB
// of short-lived garbage (measured on the 1M store; one transaction of
// 16,667 took 210 ms and 60 MB). Queued registrations are committed between groups, so that is
// also the longest REGISTER waits behind maintenance.
const maintenanceGroup = 2048

// releaseMapped drops file pages that Open or a maintenance pass faulted
// into this process (see the function in mmap_linux.go). It runs where no
// write transaction can remap the file: in Open before the committer
// starts, and on the committer.
func (s *Store) releaseMapped() {
	if err := releaseMapped(s.db); err != nil {
		s.log.Debug("could not release the mapped store file", "err", err)
	}
}

func (s *Store) expire(cutoff time.Time) (int, error) {
	// Records whose delete failed earlier go first. They are already out
	// of the index, so they are not counted again.
	if err := s.deleteRecords(s.orphans); err != nil {
		return 0, fmt.Errorf("store: deleting expired registrations: %w", err)
	}
	s.orphans = s.orphans[:0]

	c := unixSecs(cutoff)
	if c <= s.slack {
		return 0, nil
	}
	c -= s.slack
	ids := s.idx.expiredIDs(c, s.ids[:0])
	defer func() { s.ids = reuse(ids) }()
	total := 0
	var err error
	for start := 0; start < len(ids); start += maintenanceGroup {
		group := ids[start:min(start+maintenanceGroup, len(ids))]
		// Removing from the index first, on this goroutine, means a
		// Register of the same ID from now on is queued and thus written
		// after this delete.
		gone := s.idx.removeExpired(group, c, s.recs[:0])
		s.recs = gone[:0]
		seqs := s.seqs[:0]
		for i := range gone {
			seqs = append(seqs, gone[i].seq)
		}
		s.seqs = seqs[:0]
		total += len(gone)
		s.stats.expired.Add(uint64(len(gone)))
		if err = s.deleteRecords(seqs); err != nil {
			// The index, the truth while ewfd runs, has them expired
			// already; the disk catches up at the next expiry. Should
			// ewfd stop first, they are loaded again and expire again.
			s.orphans = append(s.orphans, seqs...)
			break
		}
		s.commitQueued(pending{})
	}
	if total > 0 {
		s.idx.shrink()
		s.releaseMapped()
	}
	if err != nil {
		return total, fmt.Errorf("store: deleting expired registrations: %w", err)
	}
	return total, nil
}

// deleteRecords deletes records by sequence in one transaction.
func (s *Store) deleteRecords(seqs []uint64) error {
	if len(seqs) == 0 {
		return nil
	}
	slices.Sort(seqs) // in file order
	return s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(regBucket)
		var k [keyLen]byte
		for _, seq := range seqs {
			binary.BigEndian.PutUint64(k[:], seq)
			if err := b.Delete(k[:]); err != nil {
				return err
			}
		}
		return nil
	})
}

// reuse returns b emptied for the next pass, unless a rare large pass (a
// mass expiry, say) made it big: keeping megabytes of scratch for good
// would cost more than allocating them again.
func reuse[T any](b []T) []T {
	if cap(b) > 1<<16 {
		return nil
	}
	return b[:0]
}
