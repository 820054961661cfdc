package loadgen

import (
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/integrity"
)

// badKind says why a response was refused.
type badKind uint8

const (
	badMalformed   badKind = iota // not a well-formed STUN/X message of the expected protocol
	badType                       // well-formed, but not the success response of the request's method
	badTxID                       // answers no request this socket sent
	badAddress                    // mapped/bound address is not the expected one
	badErrorReply                 // an X error response (its reason is counted too)
	badSTUNError                  // a STUN error response
	badFingerprint                // FINGERPRINT present and wrong
	badMAC                        // Config.Integrity: the answer's MAC is missing or does not verify
	numBadKinds

	good = numBadKinds // what the checks return for a good response
)

var badNames = [numBadKinds]string{
	badMalformed:   "malformed",
	badType:        "wrong type",
	badTxID:        "unknown transaction ID",
	badAddress:     "wrong address",
	badErrorReply:  "error response",
	badSTUNError:   "STUN error response",
	badFingerprint: "bad fingerprint",
	badMAC:         "bad MAC",
}

// numReasons is the size of the per-reason counter array; reasons at or
// above it are counted in the last slot.
const numReasons = 16

// counts is what one socket tallies. Plain integers: each socket's
// goroutine owns its counts and Run adds them up after joining it.
type counts struct {
	sent, ok, lost, late uint64
	indications          uint64 // ModeIntro: INTRODUCEs received as a target
	bad                  [numBadKinds]uint64
	reasons              [numReasons]uint64
	readErrs, writeErrs  uint64
	hist                 Histogram
}

func (c *counts) badTotal() uint64 {
	var n uint64
	for _, v := range c.bad {
		n += v
	}
	return n
}

func (c *counts) add(o *counts) {
	c.sent += o.sent
	c.ok += o.ok
	c.lost += o.lost
	c.late += o.late
	c.indications += o.indications
	for i := range c.bad {
		c.bad[i] += o.bad[i]
	}
	for i := range c.reasons {
		c.reasons[i] += o.reasons[i]
	}
	c.readErrs += o.readErrs
	c.writeErrs += o.writeErrs
	c.hist.Merge(&o.hist)
}

// slot is one request in flight.
type slot struct {
	active   bool
	measured bool // sent inside the measured window
	method   wire.Method
	seq      uint32
	peer     int // ModeQuery: index of the peer queried
	sent     time.Duration
}

// peer is one socket's identity on the server, for BIND and QUERY.
type peer struct {
	id   wire.ID
	key  wire.Key
	addr netip.AddrPort // as the server observed it
}

// timing is the shared schedule of a run, as offsets from base on the
// monotonic clock.
type timing struct {
	base        time.Time
	measureFrom time.Duration // end of warm-up
	stopAt      time.Duration // no request is sent at or after this
}

// refreshEvery is how often a socket in ModeQuery re-BINDs its own ID, so
// that a run longer than the server's binding lifetime (120 s) keeps
// finding every peer bound.
const refreshEvery = 20 * time.Second

// lateRing is how many timed-out transaction IDs a socket remembers, so
// that a response arriving after its timeout counts as late, not bad.
const lateRing = 64

// worker drives one socket. Everything it touches on the hot path is
// allocated once, in newWorker.
type worker struct {
	cfg   *Config
	index int
	conn  *net.UDPConn
	local netip.AddrPort

	self     peer   // ModeBind/ModeQuery/ModeIntro: this socket's registration
	peers    []peer // ModeQuery/ModeIntro: every socket's registration (or Targets), shared read-only
	external bool   // peers are Config.Targets: this socket is not among them
	next     int    // ModeQuery/ModeIntro: round-robin cursor into peers

	prefix uint64 // first 8 bytes of every transaction ID: random per socket
	seq    uint32 // last 4 bytes: counts up
	slots  []slot
	active int

	late    [lateRing]uint32
	lateN   int
	paced   bool
	every   time.Duration // pacing interval
	nextTx  time.Duration // pacing: earliest next send
	refresh time.Duration // ModeQuery: next re-BIND

	bio  *batchIO // nil: one datagram per system call
	rng  *rand.ChaCha8
	buf  []byte
	out  []byte
	sm   stun.Message
	xa   stun.XORMappedAddress
	xm   wire.Message
	xreq wire.Message
	sig  *integrity.Signer // Config.Integrity: signs requests, checks answers
	t    *timing           // for TIMESTAMPs: wall clock = base + offset

	c counts
}

func newWorker(cfg *Config, index int, conn *net.UDPConn, seed [32]byte) *worker {
	la := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	w := &worker{
		cfg:   cfg,
		index: index,
		conn:  conn,
		local: netip.AddrPortFrom(la.Addr().Unmap(), la.Port()),
		slots: make([]slot, cfg.Depth),
		rng:   rand.NewChaCha8(seed),
		buf:   make([]byte, 2048),
		out:   make([]byte, 0, wire.MaxMessageSize),
		xa:    stun.XORMappedAddress{IP: make(net.IP, net.IPv6len)},
	}
	w.prefix = w.rng.Uint64()
	if cfg.Integrity {
		w.sig = integrity.NewSigner()
	}
	if cfg.Rate > 0 {
		w.paced = true
		w.every = time.Duration(float64(cfg.Sockets) / cfg.Rate * float64(time.Second))
		// Spread the sockets' first sends over one interval instead of
		// starting them all at once.
		w.nextTx = w.every * time.Duration(index) / time.Duration(cfg.Sockets)
	}
	return w
}

// txid returns the transaction ID for sequence number seq.
func (w *worker) txid(seq uint32) (t wire.TransactionID) {
	binary.BigEndian.PutUint64(t[:8], w.prefix)
	binary.BigEndian.PutUint32(t[8:], seq)
	return t
}

// run is the closed loop of one socket: keep Depth requests in flight
// until t.stopAt, then wait for the last answers or their timeouts. It
// returns when done or when the socket is closed (Run's cancellation).
func (w *worker) run(t timing) {
	w.t = &t
	// deadline is the read deadline currently set, as an offset. It is
	// only ever moved when a wake-up must come earlier or has passed:
	// setting a deadline per read would cost a timer update per packet,
	// while a deadline that fires early merely costs one extra loop.
	deadline := time.Duration(-1)
	now := time.Since(t.base)
	for {
		oldest := w.expire(now)
		sending := now < t.stopAt
		if sending {
			w.fill(now, t)
			w.flush()
			oldest = min(oldest, w.oldestExpiry())
		}
		if w.active == 0 && !sending {
			return
		}
		wake := oldest
		if sending {
			wake = min(wake, t.stopAt)
			if w.paced && w.active < len(w.slots) {
				wake = min(wake, w.nextTx)
			}
		}
		if deadline <= now || wake < deadline {
			deadline = wake
			if err := w.conn.SetReadDeadline(t.base.Add(wake)); err != nil {
				return // closed
			}
		}
		var (
			n   int
			err error
		)
		if w.bio != nil {
			n, err = w.bio.read()
		} else {
			n, err = w.conn.Read(w.buf)
		}
		now = time.Since(t.base)
		if err != nil {
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
			case errors.Is(err, net.ErrClosed):
				return
			default:
				// ICMP port unreachable and the like: the request
				// it belongs to times out and counts as lost.
				w.c.readErrs++
			}
			continue
		}
		if w.bio == nil {
			w.handle(w.buf[:n], now)
			continue
		}
		for i := range n {
			w.handle(w.bio.packet(i), now)
		}
	}
}

const never = time.Duration(1<<63 - 1)

// expire retires requests whose timeout has passed and returns the
// earliest expiry among those still in flight.
func (w *worker) expire(now time.Duration) time.Duration {
	oldest := never
	for i := range w.slots {
		s := &w.slots[i]
		if !s.active {
			continue
		}
		exp := s.sent + w.cfg.Timeout
		if exp > now {
			oldest = min(oldest, exp)
			continue
		}
		s.active = false
		w.active--
		if s.measured {
			w.c.lost++
		}
		w.late[w.lateN%lateRing] = s.seq
		w.lateN++
	}
	return oldest
}

func (w *worker) oldestExpiry() time.Duration {
	oldest := never
	for i := range w.slots {
		if w.slots[i].active {
			oldest = min(oldest, w.slots[i].sent+w.cfg.Timeout)
		}
	}
	return oldest
}

// fill sends requests into every free slot the pacing allows.
func (w *worker) fill(now time.Duration, t timing) {
	for i := range w.slots {
		s := &w.slots[i]
		if s.active {
			continue
		}
		if w.paced {
			if now < w.nextTx {
				return
			}
			w.nextTx += w.every
			if w.nextTx+w.every < now {
				// Fell behind (the closed loop or the CPU could not
				// keep up): do not make up for it with a burst.
				w.nextTx = now
			}
		}
		w.seq++
		*s = slot{active: true, seq: w.seq, sent: now, measured: now >= t.measureFrom}
		w.active++
		if s.measured {
			w.c.sent++
		}
		if w.bio != nil {
			p := w.bio.queue()
			*p = w.encode((*p)[:0], s, now)
			continue
		}
		w.out = w.encode(w.out[:0], s, now)
		if _, err := w.conn.Write(w.out); err != nil {
			// The slot stays in flight and times out as lost: a
			// server that is down then shows as lost requests
			// instead of a spinning loop.
			w.c.writeErrs++
		}
	}
}

// flush sends what fill queued for a batched socket.
func (w *worker) flush() {
	if w.bio != nil && w.bio.pending() > 0 {
		w.c.writeErrs += uint64(w.bio.flush())
	}
}

// encode appends the request for s to b.
func (w *worker) encode(b []byte, s *slot, now time.Duration) []byte {
	tx := w.txid(s.seq)
	if w.cfg.Mode == ModeSTUN {
		return appendBindingRequest(b, tx)
	}
	m := &w.xreq
	m.Reset()
	m.TransactionID = tx
	switch w.cfg.Mode {
	case ModeBind:
		s.method = wire.MethodBind
	case ModeQuery, ModeIntro:
		s.method = wire.MethodQuery
		if now >= w.refresh {
			w.refresh = now + refreshEvery
			s.method = wire.MethodBind
		}
	case ModeRegister:
		s.method = wire.MethodRegister
	}
	m.Type = wire.Type{Method: s.method, Class: wire.ClassRequest}
	switch s.method {
	case wire.MethodBind:
		m.SetID(w.self.id)
		w.prove(m, now)
		// Cannot fail: the address came from the server as valid.
		_ = m.AddAddress(wire.Address{Transport: wire.TransportUDP, AddrPort: w.self.addr})
	case wire.MethodQuery:
		s.peer = w.next
		w.next = (w.next + 1) % len(w.peers)
		if !w.external && s.peer == w.index && len(w.peers) > 1 {
			s.peer = w.next
			w.next = (w.next + 1) % len(w.peers)
		}
		m.SetID(w.peers[s.peer].id)
		if w.cfg.Mode == ModeIntro {
			m.SetSourceID(w.self.id)
			w.prove(m, now)
		}
	case wire.MethodRegister:
		var id wire.ID
		_, _ = w.rng.Read(id[:])
		m.SetID(id)
	}
	if m.Has(wire.AttrTimestamp) {
		return w.sig.Append(b, m, w.self.key[:])
	}
	return m.AppendTo(b)
}

// prove adds to m the proof of this socket's KEY: the KEY itself, or with
// Config.Integrity a TIMESTAMP (the MAC is added when m is encoded). now is
// the offset on the run's clock, or negative during setup.
func (w *worker) prove(m *wire.Message, now time.Duration) {
	if !w.cfg.Integrity {
		m.SetKey(w.self.key)
		return
	}
	wall := time.Now()
	if w.t != nil && now >= 0 {
		wall = w.t.base.Add(now) // no clock read on the hot path
	}
	m.SetTimestamp(uint64(wall.UnixMilli()))
}

// signedAnswer reports whether b, an answer to a signed request, carries a
// MAC keyed by this socket's KEY that verifies.
func (w *worker) signedAnswer(b []byte) bool {
	return w.xm.Has(wire.AttrMAC) && w.sig.Verify(b, w.self.key[:])
}

// appendBindingRequest appends a STUN Binding request with no attributes,
// the smallest a STUN server must answer (RFC 5389 §7.2).
func appendBindingRequest(b []byte, tx wire.TransactionID) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(stun.BindingRequest.Value()))
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint32(b, wire.MagicCookie)
	return append(b, tx[:]...)
}

// find returns the in-flight slot for transaction ID tx, or nil. With nil,
// late reports that tx was one of this socket's requests that timed out
// recently: its response is late, not bad.
func (w *worker) find(tx *wire.TransactionID) (s *slot, late bool) {
	if binary.BigEndian.Uint64(tx[:8]) != w.prefix {
		return nil, false
	}
	seq := binary.BigEndian.Uint32(tx[8:])
	for i := range w.slots {
		if w.slots[i].active && w.slots[i].seq == seq {
			return &w.slots[i], false
		}
	}
	for i := range min(w.lateN, lateRing) {
		if w.late[i] == seq {
			return nil, true
		}
	}
	return nil, false
}

// handle checks one received datagram and settles the request it answers.
func (w *worker) handle(b []byte, now time.Duration) {
	var (
		s    *slot
		late bool
		bad  badKind
	)
	if w.cfg.Mode == ModeSTUN {
		s, late, bad = w.checkSTUN(b)
	} else {
		s, late, bad = w.checkX(b)
	}
	switch {
	case late:
		w.c.late++
		return
	case bad != good:
		w.c.bad[bad]++
	}
	if s == nil {
		return
	}
	// A wrong answer settles its request too: the server did answer, and
	// the closed loop goes on at the server's pace.
	s.active = false
	w.active--
	if bad == good && s.measured {
		w.c.ok++
		w.c.hist.Record(now - s.sent)
	}
}

// checkSTUN validates a STUN response. bad is good when the response is;
// s is the request it answers, if any; late is set for a response to a
// request that already timed out.
func (w *worker) checkSTUN(b []byte) (s *slot, late bool, bad badKind) {
	if wire.Classify(b) != wire.KindSTUN || wire.MessageLength(b) != len(b) {
		return nil, false, badMalformed
	}
	w.sm.Raw = b
	if err := w.sm.Decode(); err != nil {
		return nil, false, badMalformed
	}
	tx := wire.TransactionID(w.sm.TransactionID)
	if s, late = w.find(&tx); s == nil {
		return nil, late, badTxID
	}
	return s, false, w.checkBindingSuccess()
}

// checkBindingSuccess checks the decoded w.sm against this socket's
// address.
func (w *worker) checkBindingSuccess() badKind {
	switch w.sm.Type {
	case stun.BindingSuccess:
	case stun.BindingError:
		return badSTUNError
	default:
		return badType
	}
	if w.sm.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(&w.sm) != nil {
		return badFingerprint
	}
	if err := w.xa.GetFrom(&w.sm); err != nil {
		return badMalformed
	}
	ip, ok := netip.AddrFromSlice(w.xa.IP)
	if !ok || netip.AddrPortFrom(ip.Unmap(), uint16(w.xa.Port)) != w.local {
		return badAddress
	}
	return good
}

// checkX validates an X response; results as checkSTUN.
func (w *worker) checkX(b []byte) (s *slot, late bool, bad badKind) {
	m := &w.xm
	if wire.Classify(b) != wire.KindX || m.Decode(b) != nil || m.Check() != nil {
		return nil, false, badMalformed
	}
	if m.Type.Class == wire.ClassIndication {
		// An INTRODUCE: this socket is the target of another socket's (or
		// another run's, Config.Targets) introduction.
		w.c.indications++
		return nil, false, good
	}
	if s, late = w.find(&m.TransactionID); s == nil {
		return nil, late, badTxID
	}
	if m.Type.Method != s.method {
		return s, false, badType
	}
	if w.cfg.Integrity && (s.method == wire.MethodBind || w.cfg.Mode == ModeIntro) &&
		m.Type.Class == wire.ClassSuccess && !w.signedAnswer(b) {
		return s, false, badMAC
	}
	switch m.Type.Class {
	case wire.ClassSuccess:
	case wire.ClassError:
		w.c.reasons[min(int(m.Reason), numReasons-1)]++
		return s, false, badErrorReply
	default:
		return s, false, badType
	}
	if s.method == wire.MethodQuery {
		// QUERY success carries one NETWORK_ADDRESS per bound transport:
		// the peer bound UDP only, so exactly that one.
		a, ok := m.Address(wire.TransportUDP)
		if !ok || m.NumAddresses != 1 || a != w.peers[s.peer].addr {
			return s, false, badAddress
		}
		if w.cfg.Mode == ModeIntro && (!m.Has(wire.AttrSecret) || m.Secret == (wire.Secret{})) {
			return s, false, badType
		}
	}
	return s, false, good
}
