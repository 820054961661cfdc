//go:build !linux

package loadgen

import (
	"errors"
	"net"
)

// batchIO is Linux-only; elsewhere every datagram takes its own call.
type batchIO struct{}

func newBatchIO(*net.UDPConn, int) (*batchIO, error) { return nil, errors.ErrUnsupported }

func (*batchIO) read() (int, error) { return 0, errors.ErrUnsupported }
func (*batchIO) queue() *[]byte     { return nil }
func (*batchIO) flush() int         { return 0 }
func (*batchIO) packet(int) []byte  { return nil }
func (*batchIO) pending() int       { return 0 }
