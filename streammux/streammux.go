// Package streammux carries many independent byte streams over one
// reliable, ordered connection: ewf's TLS-over-TCP path, which, unlike
// QUIC, has no streams of its own. Each stream has its own flow control
// (a slow reader holds back only its own stream, and at most one window
// of its data is ever buffered), half-close, and reset with an error code
// in either direction, so that it can stand in for a QUIC stream.
//
// Why not hashicorp/yamux (the one multiplexer on the module proxy list):
// its streams cannot be reset with a code or stop the peer's sending, so a
// forwarded connection whose far end failed could only look like a clean
// end of stream, and a peer writing to a stream nobody reads any more
// blocks until a five-minute timer.
//
// Every frame starts with a 9-byte header:
//
//	 0      1               5               9
//	+------+---------------+---------------+----------------
//	| type | stream ID     | value         | payload (DATA)
//	+------+---------------+---------------+----------------
//
//	type   value                         meaning
//	DATA   payload length (≤ 16375)      bytes of the stream
//	OPEN   0                             the sender opened the stream
//	FIN    0                             the sender's direction ended
//	RESET  error code                    the sender abandoned its direction
//	STOP   error code                    the sender will not read any more
//	WINDOW credit in bytes               the sender may receive this much more
//	PING   nonce (stream 0)              answer with PONG
//	PONG   the nonce
//	CLOSE  error code (stream 0)         the session ends
//
// Stream 0 exists from the start on both sides (ewf's default stream).
// The side created with Client: true opens odd IDs, the other even IDs.
// Every stream starts with InitialWindow bytes of credit in each direction;
// a receiver configured for a larger window grants the rest at once.
// A DATA frame of 16,384 bytes with its header fits one TLS record.
package streammux

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Frame types.
const (
	typeData byte = iota
	typeOpen
	typeFin
	typeReset
	typeStop
	typeWindow
	typePing
	typePong
	typeClose
)

const (
	headerLen = 9
	// MaxPayload makes a DATA frame with its header one full TLS record.
	MaxPayload = 16384 - headerLen
	// InitialWindow is the credit every stream starts with in each
	// direction, before any WINDOW frame.
	InitialWindow = 256 << 10
)

// Error codes the package itself uses.
const (
	// CodeClosed is sent in STOP when a stream is closed before its
	// peer's direction ended.
	CodeClosed uint32 = 0
	// CodeRefused is sent in RESET and STOP for a stream opened while
	// the accept backlog was full.
	CodeRefused uint32 = 1
)

// Errors.
var (
	// ErrIdleTimeout: nothing arrived from the peer for IdleTimeout.
	ErrIdleTimeout = errors.New("streammux: peer idle timeout")
	// ErrProtocol: the peer broke the framing rules (for example sent more
	// than its window); the session ends.
	ErrProtocol = errors.New("streammux: protocol violation")
	// ErrPeerClosed: the peer closed the session (or its host reset the
	// connection).
	ErrPeerClosed = errors.New("streammux: peer closed the session")
)

// StreamError is returned by Read after the peer reset its direction of
// the stream, and by Write after the peer stopped reading it (or after
// this side reset it).
type StreamError struct {
	Code   uint32
	Remote bool // the peer sent the code
}

func (e *StreamError) Error() string {
	who := "local"
	if e.Remote {
		who = "peer"
	}
	return "streammux: stream reset by " + who + " with code " + strconv.FormatUint(uint64(e.Code), 10)
}

// Config tunes a Session. Zero values are the documented defaults.
type Config struct {
	// Client says which side this is: the client opens odd stream IDs.
	Client bool
	// Window is how many unread bytes one stream may buffer. Default and
	// minimum InitialWindow (256 KiB). The memory a session can hold for
	// slow readers is at most Window times the number of open streams.
	Window int
	// MaxStreams bounds the streams the peer has opened that are not yet
	// accepted plus those open; a stream over it is refused. Default 1024.
	MaxStreams int
	// IdleTimeout ends the session when nothing arrived from the peer for
	// this long. Default 60 s. PINGs keep a quiet session alive.
	IdleTimeout time.Duration
	// KeepAlive is how long the session may receive nothing before it
	// sends a PING. Default IdleTimeout/4, at most 10 s.
	KeepAlive time.Duration
}

func (c *Config) populate() {
	if c.Window < InitialWindow {
		c.Window = InitialWindow
	}
	if c.MaxStreams <= 0 {
		c.MaxStreams = 1024
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = min(c.IdleTimeout/4, 10*time.Second)
	}
}

// Session multiplexes streams over one connection. It owns the
// connection: Close closes it.
type Session struct {
	conn net.Conn
	cfg  Config

	wmu    sync.Mutex // serialises frames on conn
	openMu sync.Mutex // serialises Open: ID order is wire order
	wbuf   []byte

	mu       sync.Mutex
	streams  map[uint32]*Stream
	nextID   uint32 // next ID this side opens
	lastPeer uint32 // highest ID the peer opened
	backlog  []*Stream
	acceptCh chan struct{} // signalled when backlog grows
	err      error         // why the session ended; nil while alive
	lastRecv atomic.Int64  // UnixNano of the last frame received

	stream0  *Stream
	readDone chan struct{}
	ctl      chan [headerLen]byte // control frames the reader wants sent
	done     chan struct{}
	wg       sync.WaitGroup
	closeOne sync.Once
}

// New starts a session over conn. Both sides must call New, one with
// Client set.
func New(conn net.Conn, cfg Config) *Session {
	cfg.populate()
	s := &Session{
		conn:     conn,
		cfg:      cfg,
		wbuf:     make([]byte, headerLen+MaxPayload),
		streams:  map[uint32]*Stream{},
		nextID:   2,
		acceptCh: make(chan struct{}, 1),
		ctl:      make(chan [headerLen]byte, 256),
		done:     make(chan struct{}),
		readDone: make(chan struct{}),
	}
	if cfg.Client {
		s.nextID = 1
	}
	s.lastRecv.Store(time.Now().UnixNano())
	s.stream0 = s.newStream(0)
	s.streams[0] = s.stream0
	s.grantExtra(0)
	s.wg.Add(3)
	go s.readLoop()
	go s.ctlLoop()
	go s.keepalive()
	return s
}

// Default returns stream 0, which both sides have from the start.
func (s *Session) Default() *Stream { return s.stream0 }

// Open opens a new stream; the peer's Accept returns it.
func (s *Session) Open() (*Stream, error) {
	// IDs must reach the peer in order: it takes an ID at or below the
	// highest it has seen for a stream that already finished.
	s.openMu.Lock()
	defer s.openMu.Unlock()
	s.mu.Lock()
	if s.err != nil {
		err := s.err
		s.mu.Unlock()
		return nil, err
	}
	id := s.nextID
	s.nextID += 2
	st := s.newStream(id)
	s.streams[id] = st
	s.mu.Unlock()
	if err := s.writeFrame(typeOpen, id, 0, nil); err != nil {
		return nil, err
	}
	s.sendExtraGrant(id)
	return st, nil
}

// Accept waits for a stream the peer opened. It returns the session's
// error once the session has ended, and nil, net.ErrClosed-wrapping
// errors when done is closed by Close.
func (s *Session) Accept(cancel <-chan struct{}) (*Stream, error) {
	for {
		s.mu.Lock()
		if len(s.backlog) > 0 {
			st := s.backlog[0]
			s.backlog = s.backlog[1:]
			s.mu.Unlock()
			return st, nil
		}
		err := s.err
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
		select {
		case <-s.acceptCh:
		case <-s.done:
		case <-cancel:
			return nil, errCanceled
		}
	}
}

var errCanceled = errors.New("streammux: accept canceled")

// ErrCanceled reports whether err came from a canceled Accept.
func ErrCanceled(err error) bool { return err == errCanceled }

// Err returns why the session ended, or nil while it runs.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Done is closed when the session ends.
func (s *Session) Done() <-chan struct{} { return s.done }

// Close sends CLOSE, closes the connection and ends every stream.
func (s *Session) Close() error {
	s.mu.Lock()
	alive := s.err == nil
	if alive {
		s.err = net.ErrClosed // the cause, whatever the CLOSE write meets
	}
	s.mu.Unlock()
	if alive {
		// Best effort, bounded: the peer may be gone, and a Write blocked
		// on a full connection holds the write lock until the deadline.
		s.conn.SetWriteDeadline(time.Now().Add(time.Second))
		if s.writeFrame(typeClose, 0, 0, nil) == nil {
			// The peer closes its end on CLOSE. Closing ours before
			// reading what it sent meanwhile would reset the connection,
			// and a reset makes the peer's kernel drop our CLOSE unread.
			t := time.NewTimer(time.Second)
			select {
			case <-s.readDone:
			case <-t.C:
			}
			t.Stop()
		}
	}
	s.fail(net.ErrClosed)
	s.wg.Wait()
	return nil
}

// fail ends the session with err (the first cause wins).
func (s *Session) fail(err error) {
	s.closeOne.Do(func() {
		s.mu.Lock()
		if s.err == nil {
			s.err = err
		}
		streams := make([]*Stream, 0, len(s.streams)+len(s.backlog))
		for _, st := range s.streams {
			streams = append(streams, st)
		}
		s.mu.Unlock()
		s.conn.Close()
		close(s.done)
		for _, st := range streams {
			st.mu.Lock()
			st.cond.Broadcast()
			st.mu.Unlock()
		}
	})
}

// writeFrame writes one frame; callers may be any goroutine except the
// reader's.
func (s *Session) writeFrame(typ byte, id, val uint32, payload []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	b := s.wbuf[:headerLen+len(payload)]
	putHeader(b, typ, id, val)
	copy(b[headerLen:], payload)
	if _, err := s.conn.Write(b); err != nil {
		s.fail(connErr(err))
		return s.Err()
	}
	return nil
}

func putHeader(b []byte, typ byte, id, val uint32) {
	b[0] = typ
	binary.BigEndian.PutUint32(b[1:5], id)
	binary.BigEndian.PutUint32(b[5:9], val)
}

// queue hands a control frame to ctlLoop without blocking the reader. A
// peer that makes us queue more than the queue holds (while not reading
// our answers) is cut off rather than buffered without bound.
func (s *Session) queue(typ byte, id, val uint32) {
	var h [headerLen]byte
	putHeader(h[:], typ, id, val)
	select {
	case s.ctl <- h:
	default:
		s.fail(ErrProtocol)
	}
}

func (s *Session) ctlLoop() {
	defer s.wg.Done()
	for {
		select {
		case h := <-s.ctl:
			s.writeFrame(h[0], binary.BigEndian.Uint32(h[1:5]), binary.BigEndian.Uint32(h[5:9]), nil)
		case <-s.done:
			return
		}
	}
}

func (s *Session) keepalive() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.KeepAlive / 2)
	defer t.Stop()
	var nonce uint32
	for {
		select {
		case now := <-t.C:
			quiet := now.Sub(time.Unix(0, s.lastRecv.Load()))
			if quiet > s.cfg.IdleTimeout {
				s.fail(ErrIdleTimeout)
				return
			}
			if quiet > s.cfg.KeepAlive {
				nonce++
				select {
				case s.ctl <- pingHeader(nonce):
				default:
				}
			}
		case <-s.done:
			return
		}
	}
}

func pingHeader(nonce uint32) (h [headerLen]byte) {
	putHeader(h[:], typePing, 0, nonce)
	return h
}

func (s *Session) readLoop() {
	defer s.wg.Done()
	defer close(s.readDone)
	// A small buffer: headers and control frames come in few reads, and
	// bufio hands the bulk of a payload straight from the connection to
	// the stream's buffer (a read at least its size bypasses it).
	br := bufio.NewReaderSize(s.conn, 256)
	var h [headerLen]byte
	for {
		if _, err := io.ReadFull(br, h[:]); err != nil {
			s.fail(connErr(err))
			return
		}
		typ, id, val := h[0], binary.BigEndian.Uint32(h[1:5]), binary.BigEndian.Uint32(h[5:9])
		s.lastRecv.Store(time.Now().UnixNano())
		if typ == typeData {
			if err := s.readData(br, id, val); err != nil {
				s.fail(err)
				return
			}
			continue
		}
		if err := s.handle(typ, id, val); err != nil {
			s.fail(err)
			return
		}
	}
}

// connErr names the peer's end of the connection as the cause where
// it is: an end of stream, or its kernel's reset.
func connErr(err error) error {
	switch {
	case err == io.EOF, errors.Is(err, io.ErrUnexpectedEOF):
		return ErrPeerClosed
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return fmt.Errorf("%w: %w", ErrPeerClosed, err)
	}
	return err
}

// readData reads a DATA frame's payload into its stream's buffer.
func (s *Session) readData(r io.Reader, id, n uint32) error {
	if n > MaxPayload {
		return ErrProtocol
	}
	st, err := s.lookup(id, typeData)
	if err != nil {
		return err
	}
	if st == nil {
		_, err := io.CopyN(io.Discard, r, int64(n)) // a finished stream's
		return connErr(err)
	}
	return st.readData(r, int(n))
}

// handle applies one frame other than DATA. It never blocks on the
// network.
func (s *Session) handle(typ byte, id, val uint32) error {
	switch typ {
	case typePing:
		s.queue(typePong, 0, val)
		return nil
	case typePong:
		return nil
	case typeClose:
		return ErrPeerClosed
	case typeOpen, typeFin, typeReset, typeStop, typeWindow:
	default:
		return ErrProtocol
	}
	st, err := s.lookup(id, typ)
	if err != nil || st == nil {
		return err
	}
	switch typ {
	case typeOpen:
		return nil
	case typeFin:
		st.onFin()
	case typeReset:
		st.onReset(val)
	case typeStop:
		st.onStop(val)
	case typeWindow:
		st.onWindow(val)
	}
	return nil
}

// lookup finds the stream of a frame, creating it when the peer opens a
// new one. It returns nil for frames of streams already finished here.
func (s *Session) lookup(id uint32, typ byte) (*Stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.streams[id]; st != nil {
		return st, nil
	}
	peerParity := id%2 == 1 != s.cfg.Client
	if id == 0 || !peerParity || id <= s.lastPeer {
		return nil, nil // a stream that already finished here
	}
	if typ != typeOpen {
		return nil, ErrProtocol // every stream starts with OPEN
	}
	s.lastPeer = id
	if len(s.streams) >= s.cfg.MaxStreams {
		s.queue(typeReset, id, CodeRefused)
		s.queue(typeStop, id, CodeRefused)
		return nil, nil
	}
	st := s.newStream(id)
	s.streams[id] = st
	s.backlog = append(s.backlog, st)
	select {
	case s.acceptCh <- struct{}{}:
	default:
	}
	if extra := s.cfg.Window - InitialWindow; extra > 0 {
		st.recvLimit += uint64(extra)
		s.queue(typeWindow, id, uint32(extra))
	}
	return st, nil
}

// grantExtra raises stream id's receive limit to the configured window
// and queues the WINDOW frame that tells the peer.
func (s *Session) grantExtra(id uint32) {
	if extra := s.cfg.Window - InitialWindow; extra > 0 {
		s.streams[id].recvLimit += uint64(extra)
		s.queue(typeWindow, id, uint32(extra))
	}
}

func (s *Session) sendExtraGrant(id uint32) {
	if extra := s.cfg.Window - InitialWindow; extra > 0 {
		s.mu.Lock()
		st := s.streams[id]
		s.mu.Unlock()
		if st == nil {
			return
		}
		st.mu.Lock()
		st.recvLimit += uint64(extra)
		st.mu.Unlock()
		s.writeFrame(typeWindow, id, uint32(extra), nil)
	}
}

// forget drops a finished stream.
func (s *Session) forget(id uint32) {
	s.mu.Lock()
	delete(s.streams, id)
	s.mu.Unlock()
}

// NumStreams returns how many streams are open (not finished both ways).
func (s *Session) NumStreams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams)
}

// Stream is one bidirectional byte stream of a Session. It is a net.Conn
// with CloseWrite (half-close) and Reset.
type Stream struct {
	s  *Session
	id uint32

	writeMu sync.Mutex // one Write or CloseWrite at a time, in order

	mu   sync.Mutex
	cond *sync.Cond

	// receive side
	buf       []byte
	off       int
	recvd     uint64 // bytes received in total
	recvLimit uint64 // bytes the peer may send in total
	consumed  uint64 // bytes read by the application
	granted   uint64 // consumed count at the last WINDOW we sent
	finRecv   bool
	resetRecv *StreamError // peer reset its direction
	stopSent  bool         // we will not read any more

	// send side
	sendWindow uint64
	finSent    bool
	resetSent  *StreamError
	stopRecv   *StreamError // peer will not read any more
	closed     bool         // Close was called

	rdeadline, wdeadline time.Time
	rtimer, wtimer       *time.Timer
}

func (s *Session) newStream(id uint32) *Stream {
	st := &Stream{s: s, id: id, recvLimit: InitialWindow, sendWindow: InitialWindow}
	st.cond = sync.NewCond(&st.mu)
	return st
}

// ID returns the stream's ID.
func (st *Stream) ID() uint32 { return st.id }

// Read reads the stream's bytes; io.EOF after the peer's CloseWrite, a
// *StreamError after the peer's Reset.
func (st *Stream) Read(p []byte) (int, error) {
	st.mu.Lock()
	for {
		if n := len(st.buf) - st.off; n > 0 {
			n = copy(p, st.buf[st.off:])
			st.off += n
			if st.off == len(st.buf) {
				st.buf, st.off = st.buf[:0], 0
			}
			st.consumed += uint64(n)
			var grant uint64
			if !st.finRecv && st.resetRecv == nil && st.consumed-st.granted >= uint64(st.s.cfg.Window/2) {
				grant = st.consumed - st.granted
				st.granted = st.consumed
				st.recvLimit += grant
			}
			st.mu.Unlock()
			if grant > 0 {
				st.s.writeFrame(typeWindow, st.id, uint32(grant), nil)
			}
			return n, nil
		}
		switch {
		case st.resetRecv != nil:
			err := st.resetRecv
			st.mu.Unlock()
			return 0, err
		case st.finRecv:
			st.mu.Unlock()
			return 0, io.EOF
		case st.closed || st.stopSent:
			st.mu.Unlock()
			return 0, net.ErrClosed
		case st.s.Err() != nil:
			st.mu.Unlock()
			return 0, st.s.Err()
		case !st.rdeadline.IsZero() && !time.Now().Before(st.rdeadline):
			st.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		st.cond.Wait()
	}
}

// Write writes p, waiting for the peer's window when it is used up.
func (st *Stream) Write(p []byte) (int, error) {
	st.writeMu.Lock()
	defer st.writeMu.Unlock()
	total := 0
	for len(p) > 0 {
		st.mu.Lock()
		for {
			if err := st.writeErrLocked(); err != nil {
				st.mu.Unlock()
				return total, err
			}
			if st.sendWindow > 0 {
				break
			}
			st.cond.Wait()
		}
		n := min(uint64(len(p)), st.sendWindow, MaxPayload)
		st.sendWindow -= n
		st.mu.Unlock()
		if err := st.s.writeFrame(typeData, st.id, uint32(n), p[:n]); err != nil {
			return total, err
		}
		total += int(n)
		p = p[n:]
	}
	return total, nil
}

func (st *Stream) writeErrLocked() error {
	switch {
	case st.resetSent != nil:
		return st.resetSent
	case st.stopRecv != nil:
		return st.stopRecv
	case st.closed, st.finSent:
		return net.ErrClosed
	case st.s.Err() != nil:
		return st.s.Err()
	case !st.wdeadline.IsZero() && !time.Now().Before(st.wdeadline):
		return os.ErrDeadlineExceeded
	}
	return nil
}

// CloseWrite ends this side's direction after the bytes written so far;
// the peer reads io.EOF. Reading goes on.
func (st *Stream) CloseWrite() error {
	st.writeMu.Lock()
	defer st.writeMu.Unlock()
	return st.sendFin()
}

func (st *Stream) sendFin() error {
	st.mu.Lock()
	if st.finSent || st.resetSent != nil || st.stopRecv != nil {
		st.mu.Unlock()
		return nil
	}
	st.finSent = true
	st.mu.Unlock()
	err := st.s.writeFrame(typeFin, st.id, 0, nil)
	st.maybeForget()
	return err
}

// Close ends both directions: what was written is still delivered (FIN),
// and the peer's further writes fail with a StreamError of CodeClosed. A
// Write blocked on the peer's window returns net.ErrClosed.
func (st *Stream) Close() error {
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	st.cond.Broadcast()
	stop := !st.finRecv && st.resetRecv == nil && !st.stopSent
	st.stopSent = st.stopSent || stop
	st.buf, st.off = nil, 0
	st.mu.Unlock()
	if stop {
		st.s.writeFrame(typeStop, st.id, CodeClosed, nil)
	}
	st.writeMu.Lock()
	err := st.sendFin()
	st.writeMu.Unlock()
	st.maybeForget()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// Reset abandons both directions with code: the peer's Read and Write
// return a *StreamError with that code. Unread and unsent bytes are lost.
func (st *Stream) Reset(code uint32) error {
	st.mu.Lock()
	sendReset := !st.finSent && st.resetSent == nil && st.stopRecv == nil
	if sendReset {
		st.resetSent = &StreamError{Code: code}
	}
	stop := !st.finRecv && st.resetRecv == nil && !st.stopSent
	st.stopSent = true
	st.closed = true
	st.buf, st.off = nil, 0
	st.cond.Broadcast()
	st.mu.Unlock()
	var err error
	if sendReset {
		err = st.s.writeFrame(typeReset, st.id, code, nil)
	}
	if stop {
		st.s.writeFrame(typeStop, st.id, code, nil)
	}
	st.maybeForget()
	return err
}

// maybeForget drops the stream from the session once both directions
// are finished, so that the session holds nothing for it.
func (st *Stream) maybeForget() {
	// Bytes still buffered stay with the Stream value; the session only
	// routes frames, and none is expected any more.
	st.mu.Lock()
	sendDone := st.finSent || st.resetSent != nil || st.stopRecv != nil
	recvDone := st.finRecv || st.resetRecv != nil || st.stopSent
	st.mu.Unlock()
	if sendDone && recvDone && st.id != 0 {
		st.s.forget(st.id)
	}
}

// readData reads n payload bytes from r straight into the buffer. It
// holds the stream's lock while reading, which costs nothing in practice:
// a frame is one TLS record, so its payload is already decrypted in
// memory when its header is read (a peer that splits frames across
// records only slows its own session).
func (st *Stream) readData(r io.Reader, n int) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.finRecv || st.resetRecv != nil {
		return ErrProtocol // data after the end of the direction
	}
	st.recvd += uint64(n)
	if st.recvd > st.recvLimit {
		return ErrProtocol // more than the window we granted
	}
	if st.stopSent || st.closed {
		_, err := io.CopyN(io.Discard, r, int64(n)) // nobody will read it
		return connErr(err)
	}
	if st.off == len(st.buf) {
		st.buf, st.off = st.buf[:0], 0
	} else if cap(st.buf)-len(st.buf) < n && st.off > 0 {
		st.buf, st.off = st.buf[:copy(st.buf, st.buf[st.off:])], 0
	}
	start := len(st.buf)
	st.buf = slices.Grow(st.buf, n)[:start+n]
	if _, err := io.ReadFull(r, st.buf[start:]); err != nil {
		st.buf = st.buf[:start]
		return connErr(err)
	}
	st.cond.Broadcast()
	return nil
}

func (st *Stream) onFin() {
	st.mu.Lock()
	st.finRecv = true
	st.cond.Broadcast()
	st.mu.Unlock()
	st.maybeForget()
}

func (st *Stream) onReset(code uint32) {
	st.mu.Lock()
	if !st.finRecv && st.resetRecv == nil {
		st.resetRecv = &StreamError{Code: code, Remote: true}
		st.buf, st.off = nil, 0
	}
	st.cond.Broadcast()
	st.mu.Unlock()
	st.maybeForget()
}

func (st *Stream) onStop(code uint32) {
	st.mu.Lock()
	if st.stopRecv == nil {
		st.stopRecv = &StreamError{Code: code, Remote: true}
	}
	st.cond.Broadcast()
	st.mu.Unlock()
	st.maybeForget()
}

func (st *Stream) onWindow(credit uint32) {
	st.mu.Lock()
	st.sendWindow += uint64(credit)
	st.cond.Broadcast()
	st.mu.Unlock()
}

// LocalAddr returns the connection's local address.
func (st *Stream) LocalAddr() net.Addr { return st.s.conn.LocalAddr() }

// RemoteAddr returns the connection's remote address.
func (st *Stream) RemoteAddr() net.Addr { return st.s.conn.RemoteAddr() }

// SetDeadline sets both deadlines.
func (st *Stream) SetDeadline(t time.Time) error {
	st.SetReadDeadline(t)
	return st.SetWriteDeadline(t)
}

// SetReadDeadline makes a blocked and future Reads fail with
// os.ErrDeadlineExceeded after t.
func (st *Stream) SetReadDeadline(t time.Time) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.rdeadline = t
	st.rtimer = st.armLocked(st.rtimer, t)
	return nil
}

// SetWriteDeadline makes a blocked and future Writes fail with
// os.ErrDeadlineExceeded after t.
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.wdeadline = t
	st.wtimer = st.armLocked(st.wtimer, t)
	return nil
}

func (st *Stream) armLocked(tm *time.Timer, t time.Time) *time.Timer {
	if tm != nil {
		tm.Stop()
	}
	st.cond.Broadcast()
	if t.IsZero() {
		return nil
	}
	return time.AfterFunc(time.Until(t), func() {
		st.mu.Lock()
		st.cond.Broadcast()
		st.mu.Unlock()
	})
}
