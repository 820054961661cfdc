//go:build !linux

package bolt

import bbolt "go.etcd.io/bbolt"

// releaseMapped is Linux-only; elsewhere the mapped pages stay resident.
func releaseMapped(*bbolt.DB) error { return nil }
