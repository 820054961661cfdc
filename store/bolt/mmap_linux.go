package bolt

import (
	"os"
	"syscall"

	bbolt "go.etcd.io/bbolt"
)

// releaseMapped unmaps from this process the file pages that Open's full
// read brought in. bbolt reads through a shared read-only mmap, so after
// loading a million records the whole file (~100 MB) counts in ewfd's
// resident memory although nothing reads it again: lookups are served from
// the index. MADV_DONTNEED on a shared file mapping only drops this
// process's page-table entries; the data stays in the file and the page
// cache, and a later commit faults in just the pages it changes.
//
// It may run during a read transaction (a later read faults the page back
// in from the page cache) but not concurrently with a write transaction,
// which may remap the file. Failure only costs memory.
func releaseMapped(db *bbolt.DB) error {
	fi, err := os.Stat(db.Path())
	if err != nil {
		return err
	}
	// bbolt's mapping starts page-aligned and is at least the file size.
	if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, db.Info().Data, uintptr(fi.Size()), syscall.MADV_DONTNEED); errno != 0 {
		return errno
	}
	return nil
}
