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
//
// # Reading without a reader goroutine
//
// No goroutine sits between the connection and a stream's Read on the
// hot path: a Read that finds its stream's buffer empty takes the
// session's read token and reads frames from the connection itself. A
// DATA payload of its own stream goes straight into its caller's slice
// (one copy, the one crypto/tls makes anyway); frames of other streams go
// into their buffers (bounded by their windows, so per-stream backpressure
// holds) and wake their readers, and control frames are applied. It
// leads until something for its own stream arrives, then hands the token
// to the next waiting Read, if any. A Read that cannot wait inside the
// connection any longer (its deadline, Close or Reset of its stream)
// interrupts the token holder through the connection's read deadline:
// the holder stops at once, keeping any partly read frame for the next
// holder. A background goroutine reads when nobody else does: for a
// Write waiting for window, for Accept, and when the token has been free
// for idleTake (so that PINGs are answered and the idle timeout sees
// them); a Read that wants the token interrupts it. A connection whose
// SetReadDeadline fails cannot be interrupted: then only the background
// goroutine reads, and Reads wait for their buffers as before.
package streammux

import (
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
	// Batcher, if set, is the connection beneath the session's (beneath
	// TLS): a Write's short last part then leaves with one of its full
	// frames, in one system call.
	Batcher Batcher
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
	ctl      chan [headerLen]byte // control frames the reader wants sent
	done     chan struct{}
	wg       sync.WaitGroup
	closeOne sync.Once

	// The read token (package doc, "Reading without a reader goroutine").
	rmu       sync.Mutex
	holding   bool        // someone holds the token
	holder    *Stream     // whose Read holds it; nil: the background goroutine
	rgen      uint64      // counts takes of the token (the background's idle check)
	waiters   []*Stream   // streams whose Read waits for the token, in order
	needBG    int         // waiters that do not read themselves (Write, Accept, Close)
	idleWant  bool        // the token lay free for idleTake: the background takes it
	idleGen   uint64      // rgen when the token was last left free
	idleTimer *time.Timer // runs idle
	bgKick    chan struct{}
	intr      atomic.Bool // the holder must stop: the conn's read deadline is in the past
	canLead   bool        // the conn's read deadline works, so Reads may hold the token

	// Frame reading state, used only by the token's holder. Frames are
	// read straight from conn, without a buffer in between: over TLS,
	// a read of a header or payload is a copy out of the record that
	// crypto/tls decrypted, and a DATA payload lands where it goes.
	hdr     [headerLen]byte
	hdrN    int     // header bytes read so far
	cur     *Stream // stream of the DATA payload being read; nil: discard it
	curLeft int     // bytes of that payload still to read
	discard []byte  // where payloads of finished streams go
}

// idleTake is how long the read token must lie unused before the
// background goroutine takes it: long against the gap between one Read
// and the next, short against any timeout and against what a waiting
// control frame (WINDOW, say) may be delayed.
const idleTake = 2 * time.Millisecond

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
		bgKick:   make(chan struct{}, 1),
		discard:  make([]byte, 4096),
		canLead:  conn.SetReadDeadline(time.Time{}) == nil,
	}
	if cfg.Client {
		s.nextID = 1
	}
	s.lastRecv.Store(time.Now().UnixNano())
	s.idleTimer = time.AfterFunc(idleTake, s.idle) // the token starts free
	s.stream0 = s.newStream(0)
	s.streams[0] = s.stream0
	s.grantExtra(0)
	s.wg.Add(3)
	go s.background()
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
	needs := false
	defer func() {
		if needs {
			s.unneed()
		}
	}()
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
		if !needs {
			needs = true
			s.need() // OPENs arrive only if someone reads
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
			// and a reset makes the peer's kernel drop our CLOSE unread:
			// read until the end of the connection ends the session.
			s.need()
			t := time.NewTimer(time.Second)
			select {
			case <-s.done:
			case <-t.C:
			}
			t.Stop()
			s.unneed()
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
		s.idleTimer.Stop()
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
// our answers) is cut off rather than buffered without bound: queue then
// returns false, and the caller ends the session with ErrProtocol.
func (s *Session) queue(typ byte, id, val uint32) bool {
	var h [headerLen]byte
	putHeader(h[:], typ, id, val)
	select {
	case s.ctl <- h:
		return true
	default:
		return false
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
				// Someone must read the answer (and whatever else
				// arrived): the background, if the token is free.
				s.rmu.Lock()
				s.idleWant = true
				s.rmu.Unlock()
				s.kick()
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

// background reads frames when nobody else does (package doc): for a
// goroutine that waits for frames without reading them itself (need), and
// when the read token has lain unused for idleTake (idle).
func (s *Session) background() {
	defer s.wg.Done()
	for {
		s.rmu.Lock()
		take := !s.holding && (s.needBG > 0 || s.idleWant)
		if take {
			s.holding, s.holder, s.idleWant = true, nil, false
			s.rgen++
		}
		s.rmu.Unlock()
		if take {
			if _, ok := s.lead(nil, nil); !ok {
				return
			}
			continue
		}
		select {
		case <-s.bgKick:
		case <-s.done:
			return
		}
	}
}

// idle runs idleTake after the token was last left free: if nobody took
// it since, the background goroutine does. A timer reset at each release,
// rather than a background goroutine that looks now and then: while Reads
// follow each other, it never fires, and nothing wakes up.
func (s *Session) idle() {
	s.rmu.Lock()
	want := !s.holding && s.rgen == s.idleGen
	s.idleWant = s.idleWant || want
	s.rmu.Unlock()
	if want {
		s.kick()
	}
}

// freeLocked leaves the token free (s.rmu held): the background takes
// it at once for a goroutine that needs it, or after idleTake.
func (s *Session) freeLocked() (kick bool) {
	s.holding, s.holder = false, nil
	// The timer even when the background is kicked: what it was kicked
	// for may be gone when it looks, and the token must not lie free
	// with nothing to take it (the idle timeout would end the session).
	s.idleGen = s.rgen
	s.idleTimer.Reset(idleTake)
	return s.needBG > 0
}

// need says that a goroutine waits for frames without reading them
// itself; unneed that it no longer does.
func (s *Session) need() {
	s.rmu.Lock()
	s.needBG++
	kick := !s.holding
	s.rmu.Unlock()
	if kick {
		s.kick()
	}
}

func (s *Session) unneed() {
	s.rmu.Lock()
	s.needBG--
	s.rmu.Unlock()
}

func (s *Session) kick() {
	select {
	case s.bgKick <- struct{}{}:
	default:
	}
}

// aLongTimeAgo is a read deadline in the past: it makes a blocked Read of
// the connection return at once.
var aLongTimeAgo = time.Unix(1, 0)

// interruptLocked makes the token's holder stop reading at once. s.rmu
// is held.
func (s *Session) interruptLocked() {
	if s.holding && s.canLead && !s.intr.Load() {
		s.intr.Store(true)
		s.conn.SetReadDeadline(aLongTimeAgo)
	}
}

// interruptFor interrupts the token's holder if it is st's Read, which
// must return (deadline, Close, Reset).
func (s *Session) interruptFor(st *Stream) {
	s.rmu.Lock()
	if s.holding && s.holder == st {
		s.interruptLocked()
	}
	s.rmu.Unlock()
}

// release gives up the read token: to the first waiting Read, or back
// to the background goroutine when something waits for it.
func (s *Session) release() {
	s.rmu.Lock()
	if s.intr.Load() {
		s.conn.SetReadDeadline(time.Time{})
		s.intr.Store(false)
	}
	var next *Stream
	kick := false
	if len(s.waiters) > 0 {
		next = s.waiters[0]
		s.waiters[0] = nil
		s.waiters = s.waiters[1:]
		next.tokWait, next.tokGiven = false, true
		s.holding, s.holder = true, next
		s.rgen++
	} else {
		kick = s.freeLocked()
	}
	s.rmu.Unlock()
	if next != nil {
		next.mu.Lock()
		next.cond.Broadcast()
		next.mu.Unlock()
	}
	if kick {
		s.kick()
	}
}

// unwait takes st's Read out of the token's queue when it returns
// without having read (its buffer got data, or an error), passing the
// token on if it was handed to it meanwhile.
func (s *Session) unwait(st *Stream) {
	s.rmu.Lock()
	given := st.tokGiven
	st.tokGiven = false
	if st.tokWait {
		st.tokWait = false
		if i := slices.Index(s.waiters, st); i >= 0 {
			s.waiters = slices.Delete(s.waiters, i, i+1)
		}
	}
	s.rmu.Unlock()
	if given {
		s.release()
	}
}

// lead reads frames while holding the read token, for the Read of own
// (with its slice p) or, own nil, for the background goroutine. It
// returns with the token given up: for own, once a frame changed own's
// receive side (n is then what went straight into p); for both, when
// interrupted. ok is false when the session ended.
func (s *Session) lead(own *Stream, p []byte) (n int, ok bool) {
	for !s.intr.Load() {
		k, wake, err := s.step(own, p)
		// Only an interrupt sets a deadline, so a timeout is one (the
		// loop ends) or, with a Read that raced the deadline's reset,
		// left over from one: read on.
		if err != nil && !isTimeout(err) {
			s.fail(connErr(err))
			return k, false
		}
		if k > 0 || (wake && own != nil) {
			n = k
			break
		}
	}
	s.release()
	return n, true
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// step reads one frame, or the rest of one, and applies it; the token's
// holder calls it. A DATA payload of own goes straight into p; n is how
// many bytes did. wake says that the frame changed own's receive side.
func (s *Session) step(own *Stream, p []byte) (n int, wake bool, err error) {
	if s.curLeft == 0 {
		for s.hdrN < headerLen {
			k, err := s.conn.Read(s.hdr[s.hdrN:])
			s.hdrN += k
			if err != nil {
				return 0, false, err
			}
		}
		s.hdrN = 0
		h := &s.hdr
		typ, id, val := h[0], binary.BigEndian.Uint32(h[1:5]), binary.BigEndian.Uint32(h[5:9])
		s.lastRecv.Store(time.Now().UnixNano())
		if typ != typeData {
			st, err := s.handle(typ, id, val)
			return 0, st == own && (typ == typeFin || typ == typeReset), err
		}
		if err := s.startData(id, val); err != nil {
			return 0, false, err
		}
		if s.curLeft == 0 {
			return 0, false, nil
		}
	}
	return s.payload(own, p)
}

// startData checks a DATA frame's header and makes it the current one.
func (s *Session) startData(id, n uint32) error {
	if n > MaxPayload {
		return ErrProtocol
	}
	st, err := s.lookup(id, typeData)
	if err != nil {
		return err
	}
	if st != nil {
		st.mu.Lock()
		st.recvd += uint64(n)
		discard := false
		switch {
		case st.finRecv || st.resetRecv != nil:
			err = ErrProtocol // data after the end of the direction
		case st.recvd > st.recvLimit:
			err = ErrProtocol // more than the window we granted
		case st.stopSent || st.closed:
			discard = true // nobody will read it
		}
		st.mu.Unlock()
		if err != nil {
			return err
		}
		if discard {
			st = nil
		}
	}
	s.cur, s.curLeft = st, int(n)
	return nil
}

// payload reads (some of) the current DATA payload with one Read of the
// connection: into p when it is own's and p has room, into its stream's
// buffer otherwise. Over TLS a frame is one record, so that Read returns
// the whole payload, already decrypted.
func (s *Session) payload(own *Stream, p []byte) (n int, wake bool, err error) {
	st := s.cur
	if st != nil && st == own && len(p) > 0 {
		n, err = s.conn.Read(p[:min(len(p), s.curLeft)])
		s.consume(n)
		return n, true, err
	}
	if st != nil {
		st.mu.Lock()
		if !st.stopSent && !st.closed && st.resetRecv == nil {
			if st.off == len(st.buf) {
				st.buf, st.off = st.buf[:0], 0
			} else if cap(st.buf)-len(st.buf) < s.curLeft && st.off > 0 {
				st.buf, st.off = st.buf[:copy(st.buf, st.buf[st.off:])], 0
			}
			start := len(st.buf)
			st.buf = slices.Grow(st.buf, s.curLeft)[:start+s.curLeft]
			n, err = s.conn.Read(st.buf[start:])
			st.buf = st.buf[:start+n]
			if n > 0 {
				st.cond.Broadcast()
			}
			st.mu.Unlock()
			s.consume(n)
			return 0, st == own && n > 0, err
		}
		st.mu.Unlock()
	}
	// Nobody will read it.
	k, err := s.conn.Read(s.discard[:min(len(s.discard), s.curLeft)])
	s.consume(k)
	return 0, false, err
}

func (s *Session) consume(n int) {
	s.curLeft -= n
	if s.curLeft == 0 {
		s.cur = nil
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

// handle applies one frame other than DATA and returns its stream. It
// never blocks on the network.
func (s *Session) handle(typ byte, id, val uint32) (*Stream, error) {
	switch typ {
	case typePing:
		if !s.queue(typePong, 0, val) {
			return nil, ErrProtocol
		}
		return nil, nil
	case typePong:
		return nil, nil
	case typeClose:
		return nil, ErrPeerClosed
	case typeOpen, typeFin, typeReset, typeStop, typeWindow:
	default:
		return nil, ErrProtocol
	}
	st, err := s.lookup(id, typ)
	if err != nil || st == nil {
		return nil, err
	}
	switch typ {
	case typeFin:
		st.onFin()
	case typeReset:
		st.onReset(val)
	case typeStop:
		st.onStop(val)
	case typeWindow:
		st.onWindow(val)
	}
	return st, nil
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
		if !s.queue(typeReset, id, CodeRefused) || !s.queue(typeStop, id, CodeRefused) {
			return nil, ErrProtocol
		}
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
		if !s.queue(typeWindow, id, uint32(extra)) {
			return nil, ErrProtocol
		}
	}
	return st, nil
}

// grantExtra raises stream id's receive limit to the configured window
// and queues the WINDOW frame that tells the peer.
func (s *Session) grantExtra(id uint32) {
	if extra := s.cfg.Window - InitialWindow; extra > 0 {
		s.streams[id].recvLimit += uint64(extra)
		s.queue(typeWindow, id, uint32(extra)) // a new session's queue has room
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
	readMu  sync.Mutex // one Read at a time: a stream waits for the token once

	mu   sync.Mutex
	cond *sync.Cond

	// under s.rmu
	tokWait  bool // in s.waiters
	tokGiven bool // the token was handed to this stream's Read

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
// *StreamError after the peer's Reset. With its buffer empty it reads
// the connection itself (package doc).
func (st *Stream) Read(p []byte) (int, error) {
	st.readMu.Lock()
	defer st.readMu.Unlock()
	s := st.s
	queued := false // in the token's queue (or counted in needBG)
	leave := func() {
		if queued {
			if s.canLead {
				s.unwait(st)
			} else {
				s.unneed()
			}
		}
	}
	st.mu.Lock()
	for {
		if len(st.buf)-st.off > 0 {
			n := copy(p, st.buf[st.off:])
			st.off += n
			if st.off == len(st.buf) {
				st.buf, st.off = st.buf[:0], 0
			}
			grant := st.consumedLocked(n)
			st.mu.Unlock()
			leave()
			st.sendGrant(grant)
			return n, nil
		}
		if err := st.readErrLocked(); err != nil {
			st.mu.Unlock()
			leave()
			return 0, err
		}
		if !s.canLead {
			if !queued {
				queued = true
				st.mu.Unlock()
				s.need()
				st.mu.Lock()
				continue
			}
			st.cond.Wait()
			continue
		}
		s.rmu.Lock()
		lead := false
		switch {
		case st.tokGiven:
			st.tokGiven, lead = false, true
		case !s.holding:
			if st.tokWait {
				st.tokWait = false
				if i := slices.Index(s.waiters, st); i >= 0 {
					s.waiters = slices.Delete(s.waiters, i, i+1)
				}
			}
			s.holding, s.holder, lead = true, st, true
			s.rgen++
		case !st.tokWait:
			st.tokWait, queued = true, true
			s.waiters = append(s.waiters, st)
			if s.holder == nil {
				s.interruptLocked() // the background: a Read reads faster
			}
		}
		s.rmu.Unlock()
		if !lead {
			st.cond.Wait()
			continue
		}
		queued = false
		st.mu.Unlock()
		n, _ := s.lead(st, p)
		st.mu.Lock()
		if n > 0 {
			grant := st.consumedLocked(n)
			st.mu.Unlock()
			st.sendGrant(grant)
			return n, nil
		}
	}
}

// readErrLocked is why a Read with nothing buffered returns, or nil.
func (st *Stream) readErrLocked() error {
	switch {
	case st.resetRecv != nil:
		return st.resetRecv
	case st.finRecv:
		return io.EOF
	case st.closed || st.stopSent:
		return net.ErrClosed
	case st.s.Err() != nil:
		return st.s.Err()
	case !st.rdeadline.IsZero() && !time.Now().Before(st.rdeadline):
		return os.ErrDeadlineExceeded
	}
	return nil
}

// consumedLocked counts n bytes read by the application and returns the
// credit to grant the peer: none until half the window is read, so that
// WINDOW frames stay rare.
func (st *Stream) consumedLocked(n int) uint64 {
	st.consumed += uint64(n)
	if st.finRecv || st.resetRecv != nil || st.consumed-st.granted < uint64(st.s.cfg.Window/2) {
		return 0
	}
	grant := st.consumed - st.granted
	st.granted = st.consumed
	st.recvLimit += grant
	return grant
}

func (st *Stream) sendGrant(grant uint64) {
	if grant > 0 {
		st.s.writeFrame(typeWindow, st.id, uint32(grant), nil)
	}
}

// Write writes p, waiting for the peer's window when it is used up.
func (st *Stream) Write(p []byte) (int, error) {
	st.writeMu.Lock()
	defer st.writeMu.Unlock()
	// With a Batcher beneath, a Write of several frames sends its short
	// remainder first, in a batch: it leaves with the next frame's record
	// (Batcher). Never while this Write waits.
	b := st.s.cfg.Batcher
	batching := false
	endBatch := func() error {
		if !batching {
			return nil
		}
		batching = false
		if err := b.EndBatch(); err != nil {
			st.s.fail(connErr(err))
			return st.s.Err()
		}
		return nil
	}
	total := 0
	for len(p) > 0 {
		st.mu.Lock()
		needs := false
		var err error
		for {
			if err = st.writeErrLocked(); err != nil || st.sendWindow > 0 {
				break
			}
			if !needs {
				// WINDOW frames arrive only if someone reads, and
				// only after the peer has our frames.
				needs = true
				st.mu.Unlock()
				if err = endBatch(); err != nil {
					return total, err
				}
				st.s.need()
				st.mu.Lock()
				continue
			}
			st.cond.Wait()
		}
		n := min(uint64(len(p)), MaxPayload)
		if rest := len(p) % MaxPayload; b != nil && total == 0 && len(p) > MaxPayload && rest != 0 {
			n = uint64(rest)
		}
		n = min(n, st.sendWindow)
		st.sendWindow -= n
		st.mu.Unlock()
		if needs {
			st.s.unneed()
		}
		if err != nil {
			endBatch()
			return total, err
		}
		if b != nil && !batching && uint64(len(p)) > n {
			batching = true
			b.BeginBatch()
		}
		if err := st.s.writeFrame(typeData, st.id, uint32(n), p[:n]); err != nil {
			endBatch()
			return total, err
		}
		total += int(n)
		p = p[n:]
	}
	return total, endBatch()
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
	st.s.interruptFor(st) // a Read reading the connection returns
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
	st.s.interruptFor(st)
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
	st.rdeadline = t
	st.rtimer = st.armLocked(st.rtimer, t, true)
	st.mu.Unlock()
	if !t.IsZero() && !time.Now().Before(t) {
		st.s.interruptFor(st)
	}
	return nil
}

// SetWriteDeadline makes a blocked and future Writes fail with
// os.ErrDeadlineExceeded after t.
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.wdeadline = t
	st.wtimer = st.armLocked(st.wtimer, t, false)
	return nil
}

func (st *Stream) armLocked(tm *time.Timer, t time.Time, read bool) *time.Timer {
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
		if read {
			st.s.interruptFor(st)
		}
	})
}
