package bolt

import (
	"encoding/binary"
	"errors"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/ewf-project/ewf/store"
)

// On-disk layout (schema version 1) of <dir>/ewfd.db:
//
//	bucket "meta"
//	    "format"  = "ewf registrations"   identifies the file as ours
//	    "version" = uint32 big-endian     schema version, 1
//	bucket "reg"
//	    ID (16 bytes) = KEY (16 bytes) | last use, unix seconds (int64 big-endian)
//
// A record is 40 bytes of payload plus bbolt's 16-byte element header. The
// ID is the bbolt key, so Touch and Expire address records directly.
var (
	metaBucket = []byte("meta")
	regBucket  = []byte("reg")
	formatKey  = []byte("format")
	versionKey = []byte("version")
	formatName = []byte("ewf registrations")
)

const (
	schemaVersion = 1
	valueLen      = 16 + 8
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
	// ErrCorrupt: the file is an ewf store but a record is damaged.
	ErrCorrupt = errors.New("corrupt ewf registration store")
)

func putValue(dst []byte, key *store.Key, last uint32) {
	copy(dst[:16], key[:])
	binary.BigEndian.PutUint64(dst[16:valueLen], uint64(last))
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

// loadAll reads every record into x.
func loadAll(tx *bbolt.Tx, x *index) error {
	c := tx.Bucket(regBucket).Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if len(k) != 16 || len(v) != valueLen {
			return fmt.Errorf("%w: record %x has %d-byte key and %d-byte value", ErrCorrupt, k, len(k), len(v))
		}
		last := binary.BigEndian.Uint64(v[16:])
		x.load(store.ID(k), store.Key(v[:16]), uint32(min(last, 1<<32-1)))
	}
	return nil
}
