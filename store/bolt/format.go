package bolt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/ewf-project/ewf/store"
)

// On-disk layout (schema version 1) of <dir>/ewfd.db:
//
//	bucket "meta"
//	    "format"  = "ewf registrations"   identifies the file as ours
//	    "version" = uint32 big-endian     schema version, 1
//	bucket "reg"   (its bbolt sequence numbers the records)
//	    seq (uint64 big-endian) = ID (16) | KEY (16) | last use, unix seconds (int64 big-endian)
//
// Records are keyed by commit order, not by ID. IDs are random, so keyed by
// ID every registration of a group would land on a different 4 KB leaf
// page, and bbolt, which copies a page on write, would write one page per
// registration: BenchmarkRegister/1M measured 12,800 to 18,700
// registrations/s that way on the 2-core development VM, below the 20,000/s
// target. Keyed by sequence, a group commit appends to the last leaves of
// the tree and writes a few pages for hundreds of registrations (the same
// benchmark: about 590,000/s with 1024 in flight, 28,000/s with 16). The in-memory index keeps each ID's sequence,
// which is how touches and expiry find the record. A record is 64 bytes
// with bbolt's element header, and appended leaves are packed full.
var (
	metaBucket = []byte("meta")
	regBucket  = []byte("reg")
	formatKey  = []byte("format")
	versionKey = []byte("version")
	formatName = []byte("ewf registrations")
)

const (
	schemaVersion = 1
	keyLen        = 8
	valueLen      = 16 + 16 + 8
	// appendFill is the bucket's FillPercent for writes: with keys that
	// only grow, splitting leaves half full (bbolt's default, right for
	// random keys) would just waste half of every page.
	appendFill = 1.0
)

// Errors Open reports besides I/O errors, all wrapped with the file name.
var (
	// ErrLocked: another process (normally another ewfd) holds the file.
	ErrLocked = errors.New("data directory in use by another ewfd")
	// ErrNotStore: the file is not an ewf registration store (not bbolt, or
	// bbolt written by something else).
	ErrNotStore = errors.New("not an ewf registration store")
	// ErrSchema: the store was written by a newer ewfd with a format this
	// build cannot read.
	ErrSchema = errors.New("unsupported ewf store schema version")
	// ErrCorrupt: the file is an ewf store but a record or page is damaged.
	ErrCorrupt = errors.New("corrupt ewf registration store")
)

// putRecord encodes a record into k (keyLen bytes) and v (valueLen bytes).
func putRecord(k, v []byte, seq uint64, id *store.ID, key *store.Key, last uint32) {
	binary.BigEndian.PutUint64(k[:keyLen], seq)
	copy(v[:16], id[:])
	copy(v[16:32], key[:])
	binary.BigEndian.PutUint64(v[32:valueLen], uint64(last))
}

// errEmpty is checkSchema's report of a file without any bucket: one that
// bbolt has just created.
var errEmpty = errors.New("empty file")

// createSchema makes the buckets of a new store.
func createSchema(tx *bbolt.Tx) error {
	meta, err := tx.CreateBucket(metaBucket)
	if err != nil {
		return err
	}
	if err := meta.Put(formatKey, formatName); err != nil {
		return err
	}
	if err := meta.Put(versionKey, binary.BigEndian.AppendUint32(nil, schemaVersion)); err != nil {
		return err
	}
	_, err = tx.CreateBucket(regBucket)
	return err
}

// checkSchema checks that tx is a store this build can read. It runs in a
// read transaction: a file that is not ours must not even get a new
// transaction ID written into it.
func checkSchema(tx *bbolt.Tx) error {
	meta := tx.Bucket(metaBucket)
	if meta == nil {
		empty := true
		if err := tx.ForEach(func([]byte, *bbolt.Bucket) error {
			empty = false
			return nil
		}); err != nil {
			return err
		}
		if empty {
			return errEmpty
		}
		return fmt.Errorf("%w: no %q bucket", ErrNotStore, metaBucket)
	}
	if f := meta.Get(formatKey); string(f) != string(formatName) {
		return fmt.Errorf("%w: format %q", ErrNotStore, f)
	}
	v := meta.Get(versionKey)
	if len(v) != 4 {
		return fmt.Errorf("%w: bad version value %x", ErrCorrupt, v)
	}
	if n := binary.BigEndian.Uint32(v); n != schemaVersion {
		return fmt.Errorf("%w %d (this ewfd reads %d)", ErrSchema, n, schemaVersion)
	}
	if tx.Bucket(regBucket) == nil {
		return fmt.Errorf("%w: no %q bucket", ErrCorrupt, regBucket)
	}
	return nil
}

// loadAll reads every record into a new index and returns it with the
// sequences of records superseded by a later one of the same ID. It counts
// the records first, a cheap pass over the leaves, so that the tables are
// allocated once at their final size instead of growing through copies.
//
// release is called every few thousand records to drop the file pages read
// so far from resident memory (see releaseMapped), so that the peak at
// startup is the index, not the index plus the whole file.
func loadAll(tx *bbolt.Tx, res time.Duration, release func()) (x *index, stale []uint64, err error) {
	c := tx.Bucket(regBucket).Cursor()
	n := 0
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		n++
	}
	release()
	x = newIndex(res, n)
	i := 0
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if i++; i%(1<<16) == 0 {
			release()
		}
		if len(k) != keyLen || len(v) != valueLen {
			return nil, nil, fmt.Errorf("%w: record %x has %d-byte key and %d-byte value", ErrCorrupt, k, len(k), len(v))
		}
		last := binary.BigEndian.Uint64(v[32:])
		old := x.load((*store.ID)(v[:16]), (*store.Key)(v[16:32]), uint32(min(last, 1<<32-1)), binary.BigEndian.Uint64(k))
		if old != 0 {
			stale = append(stale, old)
		}
	}
	return x, stale, nil
}
