package loadgen

import (
	"net"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// batchIO moves a socket's datagrams with recvmmsg(2) and sendmmsg(2): one
// system call reads every answer waiting on the socket and one sends every
// request the loop has room for. The socket is connected, so the message
// headers carry no addresses, and everything is allocated once.
type batchIO struct {
	rc syscall.RawConn

	rhdrs []unix.Mmsghdr
	rbufs [][]byte
	whdrs []unix.Mmsghdr
	wiovs []unix.Iovec
	wbufs [][]byte // requests to send; wbufs[i] is sent as whdrs[i]
	wn    int      // requests queued in wbufs

	// State shared with the raw-socket callbacks.
	readFn, writeFn func(fd uintptr) bool
	send            []unix.Mmsghdr // headers flush has yet to send
	n               int            // result of the last system call
	errno           syscall.Errno
}

func newBatchIO(conn *net.UDPConn, depth int) (*batchIO, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	b := &batchIO{
		rc:    rc,
		rhdrs: make([]unix.Mmsghdr, depth),
		rbufs: make([][]byte, depth),
		whdrs: make([]unix.Mmsghdr, depth),
		wiovs: make([]unix.Iovec, depth),
		wbufs: make([][]byte, depth),
	}
	riovs := make([]unix.Iovec, depth)
	for i := range depth {
		// Room for any datagram, so that an oversized answer is seen
		// whole and counted as malformed rather than truncated.
		b.rbufs[i] = make([]byte, 2048)
		riovs[i].Base = &b.rbufs[i][0]
		riovs[i].SetLen(len(b.rbufs[i]))
		b.rhdrs[i].Hdr.Iov = &riovs[i]
		b.rhdrs[i].Hdr.SetIovlen(1)
		b.wbufs[i] = make([]byte, 0, 2048)
		b.whdrs[i].Hdr.Iov = &b.wiovs[i]
		b.whdrs[i].Hdr.SetIovlen(1)
	}
	b.readFn, b.writeFn = b.doRead, b.doWrite
	return b, nil
}

// read blocks until at least one datagram is waiting (or the read
// deadline passes), then returns how many it read into rbufs, their
// lengths in rhdrs[i].Len.
func (b *batchIO) read() (int, error) {
	if err := b.rc.Read(b.readFn); err != nil {
		return 0, err
	}
	if b.errno != 0 {
		return 0, b.errno
	}
	return b.n, nil
}

// doRead is the raw-socket callback of read. It is a method value made
// once (readFn): a closure over read's locals would be allocated on every
// call.
func (b *batchIO) doRead(fd uintptr) bool {
	r, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.rhdrs[0])),
		uintptr(len(b.rhdrs)), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN {
		return false // park in the poller until readable or the deadline
	}
	b.n, b.errno = int(r), e
	return true
}

// packet returns the i-th datagram of the last read.
func (b *batchIO) packet(i int) []byte { return b.rbufs[i][:b.rhdrs[i].Len] }

// pending returns the number of queued requests.
func (b *batchIO) pending() int { return b.wn }

// queue returns the buffer for the next request to send.
func (b *batchIO) queue() *[]byte {
	b.wn++
	return &b.wbufs[b.wn-1]
}

// flush sends every queued request. It returns how many the kernel refused
// (connection refused after an ICMP error, usually); those count as sent
// and will time out.
func (b *batchIO) flush() (failed int) {
	for i := range b.wn {
		b.wiovs[i].Base = unsafe.SliceData(b.wbufs[i])
		b.wiovs[i].SetLen(len(b.wbufs[i]))
	}
	b.send = b.whdrs[:b.wn]
	b.wn = 0
	for len(b.send) > 0 {
		if err := b.rc.Write(b.writeFn); err != nil {
			return failed + len(b.send) // closed
		}
		n := b.n
		if b.errno != 0 {
			// The first datagram failed: skip it, send the rest.
			failed++
			n = 1
		}
		b.send = b.send[n:]
	}
	return failed
}

// doWrite is the raw-socket callback of flush; see doRead.
func (b *batchIO) doWrite(fd uintptr) bool {
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&b.send[0])),
		uintptr(len(b.send)), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN {
		return false
	}
	b.n, b.errno = int(r), e
	return true
}
