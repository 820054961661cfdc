// Package udpio moves UDP datagrams in batches without allocating: on Linux
// one recvmmsg(2) or sendmmsg(2) system call carries up to a batch of
// datagrams, elsewhere it falls back to one datagram per call.
//
// golang.org/x/net's ipv4/ipv6 ReadBatch and WriteBatch make the same system
// calls, but they report every source as a freshly allocated *net.UDPAddr
// (two allocations per datagram) and take the destination as a net.Addr.
// ewfd's hot path must not allocate per packet, so this package keeps its
// message headers, iovecs and socket addresses in arrays made once and
// speaks netip.AddrPort.
//
// A Reader and a Writer each belong to one goroutine. Several of them, and
// plain WriteToUDPAddrPort calls, may use one socket at the same time.
package udpio

import (
	"net"
	"net/netip"
)

// Message is one datagram. For reading, Buf is the buffer to fill (its
// length is the capacity offered), and N and Addr are set by ReadBatch. For
// writing, Buf[:N] is sent to Addr.
type Message struct {
	Buf  []byte
	N    int
	Addr netip.AddrPort
}

// Reader reads batches of datagrams from one socket.
type Reader struct{ r reader }

// NewReader returns a Reader for c that reads up to batch datagrams per
// call.
func NewReader(c *net.UDPConn, batch int) (*Reader, error) {
	r, err := newReader(c, batch)
	if err != nil {
		return nil, err
	}
	return &Reader{r}, nil
}

// ReadBatch blocks until at least one datagram arrives, then fills ms[0:n]
// with as many as are waiting (at most len(ms) and the batch size). Source
// addresses are unmapped: an IPv4 client on a dual-stack socket is reported
// as IPv4. After the socket is closed it returns an error matching
// net.ErrClosed.
func (r *Reader) ReadBatch(ms []Message) (n int, err error) { return r.r.readBatch(ms) }

// Writer writes batches of datagrams to one socket.
type Writer struct{ w writer }

// NewWriter returns a Writer for c that sends up to batch datagrams per
// call.
func NewWriter(c *net.UDPConn, batch int) (*Writer, error) {
	w, err := newWriter(c, batch)
	if err != nil {
		return nil, err
	}
	return &Writer{w}, nil
}

// WriteBatch sends ms[i].Buf[:ms[i].N] to ms[i].Addr for every message. A
// datagram the kernel refuses (no route, a destination of the wrong family)
// is skipped, as the network might have dropped it; the count of skipped
// datagrams and the first such error are returned. An error matching
// net.ErrClosed means the socket is closed and the rest was not sent.
func (w *Writer) WriteBatch(ms []Message) (skipped int, err error) { return w.w.writeBatch(ms) }
