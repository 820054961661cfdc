package streammux

import (
	"io"
	"net"
	"sync"
)

// Batcher is a connection beneath the session's (beneath TLS) that can
// send a short write together with the next one, while a batch is open.
// A Session given one (Config.Batcher) opens a batch around the frames
// of each Write call that spans several frames.
//
// Why: a Write of 64 KiB is four DATA frames of one TLS record each and
// a short fifth (64 KiB and the frames' headers are a little over four
// records), and crypto/tls writes every record with its own system call:
// five where crypto/tls alone makes four. The session sends the short
// frame first, and the batch sends its record with the next one (writev),
// without copying the full record: four system calls again, and the
// receiver is woken as often as for crypto/tls alone.
type Batcher interface {
	BeginBatch()
	EndBatch() error
}

// batchHold is the largest write a batch holds back: a short frame's
// record (frame header, payload, TLS overhead), never a full one, whose
// copy would cost more than the system call it saves.
const batchHold = 1024

// BatchConn is a net.Conn that implements Batcher. Outside a batch, and
// for any write larger than batchHold, it writes at once; it keeps the
// order of all writes.
type BatchConn struct {
	net.Conn
	w     io.Writer  // where writes go: Conn, or what it wraps
	mu    sync.Mutex // serialises writes and batches
	depth int        // open batches
	held  []byte     // a short write held back, during a batch
	bufs  net.Buffers
	two   [2][]byte
	err   error // a failed write: every later one fails too
}

// NewBatchConn wraps c. Writes go to w, which must be c or the
// connection c wraps for reading only: writev (net.Buffers) reaches the
// kernel only from a *net.TCPConn itself. w nil means c.
func NewBatchConn(c net.Conn, w io.Writer) *BatchConn {
	if w == nil {
		w = c
	}
	return &BatchConn{Conn: c, w: w, held: make([]byte, 0, batchHold)}
}

// Write sends p, with the write held before it if any; during a batch a
// short p is held instead.
func (b *BatchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err != nil {
		return 0, b.err
	}
	if b.depth > 0 && len(p) <= batchHold-len(b.held) {
		b.held = append(b.held, p...)
		return len(p), nil
	}
	if len(b.held) == 0 {
		n, err := b.w.Write(p)
		b.err = err
		return n, err
	}
	// WriteTo consumes its receiver: b.bufs, re-made from b.two each
	// time, so that nothing escapes to the heap per write.
	b.two = [2][]byte{b.held, p}
	b.bufs = b.two[:]
	_, err := b.bufs.WriteTo(b.w)
	b.held = b.held[:0]
	b.two = [2][]byte{}
	if err != nil {
		b.err = err
		return 0, err
	}
	return len(p), nil
}

// BeginBatch starts holding short writes.
func (b *BatchConn) BeginBatch() {
	b.mu.Lock()
	b.depth++
	b.mu.Unlock()
}

// EndBatch ends a batch; the outermost sends what is still held. An error
// is that of the send: the bytes held were reported written to the writer
// above, so the connection is unusable after it (as after any failed
// write beneath TLS).
func (b *BatchConn) EndBatch() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.depth--
	if b.depth > 0 || len(b.held) == 0 || b.err != nil {
		return b.err
	}
	_, b.err = b.w.Write(b.held)
	b.held = b.held[:0]
	return b.err
}
