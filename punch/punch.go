package punch

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/netip"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// Schedule defaults; see the package comment for why.
const (
	DefaultTimeout     = 10 * time.Second
	DefaultInterval    = 25 * time.Millisecond
	DefaultFastPeriod  = 500 * time.Millisecond
	DefaultBackoff     = 2.0
	DefaultMaxInterval = 500 * time.Millisecond
)

// Bounds on the state one Machine keeps.
const (
	// MaxCandidates is how many peer addresses one Machine probes,
	// peer-reflexive ones included.
	MaxCandidates = 16
	// MaxConfigured is how many of Config.Candidates are used; the
	// remaining MaxCandidates-MaxConfigured slots are kept for
	// peer-reflexive addresses. An introduction carries at most one UDP
	// NETWORK_ADDRESS and wire.MaxCandidates (8) CANDIDATEs, so 12 is never
	// short in practice.
	MaxConfigured = 12
	// OutstandingWindow is how many of our most recent requests a success
	// response is matched against: 512 requests is 0.8 s of the fastest
	// schedule to 16 candidates, longer than any RTT punching can use.
	OutstandingWindow = 512
	// seenWindow is how many peer requests are remembered for replay
	// detection.
	seenWindow = 64
)

// Errors from New.
var (
	ErrNoSecret     = errors.New("punch: Config.Secret is zero")
	ErrNoPeer       = errors.New("punch: Config.Peer is zero")
	ErrNoSelf       = errors.New("punch: Config.Self is zero")
	ErrSelfIsPeer   = errors.New("punch: Config.Self equals Config.Peer")
	ErrNoCandidates = errors.New("punch: no usable candidate address")
	ErrBadSchedule  = errors.New("punch: invalid schedule (negative duration, Backoff < 1 or MaxInterval < Interval)")
)

// Config describes one punching attempt. Zero values of the schedule knobs
// select the documented defaults.
type Config struct {
	// Self is our own ID, sent as SOURCE_ID; Peer is the ID the peer's
	// messages must carry. Both non-zero and different.
	Self, Peer wire.ID
	// Secret is the introduction's secret; it keys every MAC. Non-zero.
	Secret wire.Secret
	// Candidates are the peer addresses to try: its public UDP address
	// first, then its host candidates, both address families.
	// IPv4-mapped addresses are unmapped, invalid, unspecified, multicast
	// and port-0 addresses dropped, duplicates removed, and at most
	// MaxConfigured kept, in order. At least one must remain.
	Candidates []netip.AddrPort
	// Timeout bounds the attempt: with no path up after Timeout, the
	// Machine is Failed. Default DefaultTimeout (10 s).
	Timeout time.Duration
	// Interval is the gap between requests to one candidate during the
	// fast phase. Default DefaultInterval (25 ms).
	Interval time.Duration
	// FastPeriod is how long, from when a candidate is added, requests
	// to it go out every Interval. Default DefaultFastPeriod (500 ms).
	FastPeriod time.Duration
	// Backoff multiplies a candidate's interval after each request once
	// its fast phase is over. At least 1; default DefaultBackoff (2).
	Backoff float64
	// MaxInterval caps the interval. At least Interval; default
	// DefaultMaxInterval (500 ms).
	MaxInterval time.Duration
	// Rand seeds the transaction IDs (12 bytes read once, in New). Nil
	// means crypto/rand.
	Rand io.Reader
}

// Packet is one datagram to send.
type Packet struct {
	To netip.AddrPort
	// Port is the local socket to send from: 0 the main one, i in
	// 1..Ports the i-th extra socket the driver opened for birthday
	// probing (EnablePorts).
	Port int
	// Data is valid until the next Tick or Receive on the Machine, which
	// reuses its buffers.
	Data []byte
}

// State is where a Machine is in its attempt.
type State int

// The states; see the package comment for the diagram.
const (
	Punching State = iota
	Connected
	Failed
)

// String returns "punching", "connected" or "failed".
func (s State) String() string {
	switch s {
	case Punching:
		return "punching"
	case Connected:
		return "connected"
	case Failed:
		return "failed"
	}
	return "unknown"
}

// Stats counts what a Machine did. Every message given to Receive is
// counted exactly once: in Received, or in Ignored and one of its reasons.
type Stats struct {
	// Sent counts packets returned by Tick and Receive: Requests plus
	// Responses.
	Sent uint64
	// Requests counts requests sent, scheduled and triggered; Triggered
	// counts those sent in reaction to a peer's request.
	Requests, Triggered uint64
	// Responses counts success responses sent.
	Responses uint64
	// Keepalives counts indications built by Keepalive (not in Sent).
	Keepalives uint64
	// Received counts valid messages accepted, of any class.
	Received uint64
	// Ignored counts messages dropped; it is the sum of the reasons below.
	Ignored uint64
	// Malformed: not a PUNCH request, success response or indication
	// with SOURCE_ID and a final MAC, or not decoded from Data (no Raw).
	Malformed uint64
	// WrongPeer: SOURCE_ID is not the peer (our own reflected packets
	// land here).
	WrongPeer uint64
	// BadMAC: the MAC does not verify (forged, tampered, other secret).
	BadMAC uint64
	// UnknownTxID: a success response to no outstanding request of ours.
	UnknownTxID uint64
	// Replayed: a success response to a request already answered, or a
	// request whose transaction ID was seen from another address.
	Replayed uint64
	// Late: arrived after the Machine had Failed.
	Late uint64
	// Reflexive counts peer-reflexive candidates learned;
	// ReflexiveDropped those not learned because MaxCandidates was reached.
	Reflexive, ReflexiveDropped uint64
	// Added counts candidates added to a running Machine (AddCandidates);
	// AddedDropped those refused because MaxConfigured was reached.
	Added, AddedDropped uint64
	// PortProbes counts requests sent from extra sockets (EnablePorts);
	// SprayProbes requests sent to guessed ports (EnableSpray); SprayHits
	// is 1 when the path came up on a guessed port.
	PortProbes, SprayProbes, SprayHits uint64
}

// candidate is one peer address and its schedule.
type candidate struct {
	addr      netip.AddrPort
	added     time.Time
	next      time.Time     // when the next scheduled request is due
	interval  time.Duration // current gap between scheduled requests
	lastSent  time.Time     // zero until the first request
	heard     bool          // a valid request has come from addr
	reflexive bool
	port      uint16 // local socket (Packet.Port) the candidate is probed from
}

// Status of an outstanding ring entry.
const (
	txFree uint8 = iota
	txOutstanding
	txAnswered
)

// outstanding is one of our requests, at ring slot seq % OutstandingWindow.
type outstanding struct {
	seq    uint32
	status uint8
	cand   uint8
	port   uint16        // local socket it left from
	at     time.Duration // sent, since Machine.start
}

// seenRequest is a peer request we answered, for replay detection.
type seenRequest struct {
	tx   wire.TransactionID
	from netip.AddrPort
}

// Machine is one hole-punching attempt towards one peer.
type Machine struct {
	self, peer  wire.ID
	interval    time.Duration
	fastPeriod  time.Duration
	backoff     float64
	maxInterval time.Duration
	start       time.Time
	deadline    time.Time

	state    State
	path     netip.AddrPort
	pathPort int
	rtt      time.Duration
	heard    time.Time

	cands  [MaxCandidates]candidate
	ncands int

	prefix [8]byte // transaction ID = prefix ‖ big-endian seq
	seq    uint32
	ring   [OutstandingWindow]outstanding

	seen     [seenWindow]seenRequest
	nseen    int
	seenNext int

	mac  hash.Hash
	sum  [sha256.Size]byte
	tmpl wire.Message // PUNCH with our SOURCE_ID and a zero MAC

	arena []byte
	out   []Packet
	stats Stats

	bday birthday // birthday.go
}

// packetSize is the size of every PUNCH we send: header, SOURCE_ID, MAC.
const packetSize = wire.HeaderSize + 4 + 16 + 4 + wire.MACSize

// maxOut is the most packets one call returns: a request per candidate
// and maxBurst birthday probes from Tick, or a response and a triggered
// request from Receive.
const maxOut = MaxCandidates + maxBurst

// New starts an attempt at now. The first Tick, at now, sends a request to
// every candidate.
func New(cfg Config, now time.Time) (*Machine, error) {
	switch {
	case cfg.Secret == wire.Secret{}:
		return nil, ErrNoSecret
	case cfg.Peer.IsZero():
		return nil, ErrNoPeer
	case cfg.Self.IsZero():
		return nil, ErrNoSelf
	case cfg.Self == cfg.Peer:
		// Both sides share the MAC key; only SOURCE_ID tells our own
		// reflected requests from the peer's.
		return nil, ErrSelfIsPeer
	}
	if cfg.Timeout < 0 || cfg.Interval < 0 || cfg.FastPeriod < 0 || cfg.MaxInterval < 0 ||
		(cfg.Backoff != 0 && !(cfg.Backoff >= 1)) {
		return nil, ErrBadSchedule
	}
	m := &Machine{
		self:        cfg.Self,
		peer:        cfg.Peer,
		interval:    or(cfg.Interval, DefaultInterval),
		fastPeriod:  or(cfg.FastPeriod, DefaultFastPeriod),
		backoff:     cfg.Backoff,
		maxInterval: or(cfg.MaxInterval, DefaultMaxInterval),
		start:       now,
		deadline:    now.Add(or(cfg.Timeout, DefaultTimeout)),
	}
	if m.backoff == 0 {
		m.backoff = DefaultBackoff
	}
	if m.maxInterval < m.interval {
		return nil, ErrBadSchedule
	}
	for _, a := range cfg.Candidates {
		if m.ncands == MaxConfigured {
			break
		}
		a = unmap(a)
		if !usable(a) || m.find(a, 0) >= 0 {
			continue
		}
		m.add(a, 0, now, false)
	}
	if m.ncands == 0 {
		return nil, ErrNoCandidates
	}
	r := cfg.Rand
	if r == nil {
		r = rand.Reader
	}
	var seed [wire.TransactionIDSize]byte
	if _, err := io.ReadFull(r, seed[:]); err != nil {
		return nil, fmt.Errorf("punch: reading transaction ID seed: %w", err)
	}
	copy(m.prefix[:], seed[:8])
	m.seq = binary.BigEndian.Uint32(seed[8:])
	m.bday.seed(seed)

	m.mac = hmac.New(sha256.New, cfg.Secret[:])
	m.tmpl.SetSourceID(cfg.Self)
	m.tmpl.SetMAC([wire.MACSize]byte{})
	m.arena = make([]byte, 0, maxOut*packetSize)
	m.out = make([]Packet, 0, maxOut)
	return m, nil
}

func or(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

func unmap(a netip.AddrPort) netip.AddrPort {
	if a.Addr().Is4In6() {
		return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	}
	return a
}

func usable(a netip.AddrPort) bool {
	ip := a.Addr()
	return a.IsValid() && a.Port() != 0 && !ip.IsUnspecified() && !ip.IsMulticast()
}

func (m *Machine) find(a netip.AddrPort, port uint16) int {
	for i := range m.cands[:m.ncands] {
		if m.cands[i].addr == a && m.cands[i].port == port {
			return i
		}
	}
	return -1
}

// add appends a candidate probed from local socket port, due at once; the
// caller checks there is room.
func (m *Machine) add(a netip.AddrPort, port uint16, now time.Time, reflexive bool) int {
	i := m.ncands
	m.cands[i] = candidate{addr: a, port: port, added: now, next: now, interval: m.interval, reflexive: reflexive}
	m.ncands++
	return i
}

// AddCandidates adds peer addresses learned after New (the peer's SIGNAL
// through the server: its LAN and IPv6 addresses, a relayed address) to a
// Punching Machine. Each gets its own schedule from now, fast phase
// included, and is probed at the next Tick (Next says when: now). The
// addresses are cleaned as Config.Candidates are; ones already probed,
// peer-reflexive ones included, are skipped; configured and added ones
// together stay within MaxConfigured, so MaxCandidates-MaxConfigured slots
// stay free for peer-reflexive addresses. It returns how many were added:
// none once the Machine is Connected or Failed.
func (m *Machine) AddCandidates(addrs []netip.AddrPort, now time.Time) int {
	if !m.live(now) {
		return 0
	}
	configured := 0
	for i := range m.cands[:m.ncands] {
		if !m.cands[i].reflexive {
			configured++
		}
	}
	n := 0
	for _, a := range addrs {
		a = unmap(a)
		if !usable(a) || m.find(a, 0) >= 0 {
			continue
		}
		if configured == MaxConfigured || m.ncands == MaxCandidates {
			m.stats.AddedDropped++
			continue
		}
		m.add(a, 0, now, false)
		configured++
		n++
		m.stats.Added++
	}
	return n
}

// Tick sends the requests due at now: on the first call (at the time given
// to New) one to every candidate, later per the schedule. A Tick called late
// sends one request per overdue candidate, not a burst of the missed ones.
// At or after the deadline the Machine becomes Failed. It returns nothing
// once the Machine is Connected or Failed.
func (m *Machine) Tick(now time.Time) []Packet {
	m.reset()
	if !m.live(now) {
		return nil
	}
	for i := range m.cands[:m.ncands] {
		if !now.Before(m.cands[i].next) {
			m.request(i, now)
		}
	}
	m.tickBirthday(now)
	return m.out
}

// live reports whether the Machine is Punching at now, failing it when the
// deadline has passed.
func (m *Machine) live(now time.Time) bool {
	if m.state == Punching && !now.Before(m.deadline) {
		m.state = Failed
	}
	return m.state == Punching
}

// Next returns when Tick next has something to do: the earliest scheduled
// request or the deadline. It is the zero time once Connected or Failed.
func (m *Machine) Next() time.Time {
	if m.state != Punching {
		return time.Time{}
	}
	next := m.deadline
	for i := range m.cands[:m.ncands] {
		if m.cands[i].next.Before(next) {
			next = m.cands[i].next
		}
	}
	if b := m.bday.next(); !b.IsZero() && b.Before(next) {
		next = b
	}
	return next
}

// State returns the Machine's state as of the last Tick or Receive.
func (m *Machine) State() State { return m.state }

// Path returns the first path that came up, the address the success
// response came from, and the RTT measured by that exchange. ok is false
// unless the Machine is Connected.
func (m *Machine) Path() (addr netip.AddrPort, rtt time.Duration, ok bool) {
	if m.state != Connected {
		return netip.AddrPort{}, 0, false
	}
	return m.path, m.rtt, true
}

// PathPort returns the local socket (Packet.Port) the path is on: 0 the
// main socket, i > 0 the i-th extra socket of birthday probing, which the
// driver must then keep open for the connection. -1 unless Connected.
func (m *Machine) PathPort() int {
	if m.state != Connected {
		return -1
	}
	return m.pathPort
}

// HeardPorts appends the extra sockets (Packet.Port > 0) on which a valid
// request from the peer arrived: on the side that does not choose the
// path, each may be the one the peer's connection comes to.
func (m *Machine) HeardPorts(dst []int) []int {
	for i := range m.cands[:m.ncands] {
		c := &m.cands[i]
		if !c.heard || c.port == 0 {
			continue
		}
		dup := false
		for _, p := range dst {
			dup = dup || p == int(c.port)
		}
		if !dup {
			dst = append(dst, int(c.port))
		}
	}
	return dst
}

// LastHeard returns when the last valid message from the peer arrived
// (zero if none): the caller can tell a live kept-alive path from a dead one.
func (m *Machine) LastHeard() time.Time { return m.heard }

// Candidates appends the addresses being probed, configured ones first,
// then peer-reflexive ones in the order they were learned.
func (m *Machine) Candidates(dst []netip.AddrPort) []netip.AddrPort {
	for i := range m.cands[:m.ncands] {
		dst = append(dst, m.cands[i].addr)
	}
	return dst
}

// Stats returns the counters.
func (m *Machine) Stats() Stats { return m.stats }

func (m *Machine) reset() {
	m.arena = m.arena[:0]
	m.out = m.out[:0]
}

// request sends a fresh request to candidate i and reschedules it.
func (m *Machine) request(i int, now time.Time) {
	c := &m.cands[i]
	m.seq++
	var tx wire.TransactionID
	copy(tx[:8], m.prefix[:])
	binary.BigEndian.PutUint32(tx[8:], m.seq)
	m.ring[m.seq%OutstandingWindow] = outstanding{
		seq: m.seq, status: txOutstanding, cand: uint8(i), port: c.port, at: now.Sub(m.start),
	}
	m.emit(c.addr, int(c.port), wire.ClassRequest, tx)
	m.stats.Requests++
	c.lastSent = now
	if now.Sub(c.added) >= m.fastPeriod {
		// Compared as floats: a huge Backoff must not overflow Duration.
		if f := float64(c.interval) * m.backoff; f < float64(m.maxInterval) {
			c.interval = time.Duration(f)
		} else {
			c.interval = m.maxInterval
		}
	}
	c.next = now.Add(c.interval)
}

// emit appends a PUNCH of class to the arena and queues it for to, from
// local socket port.
func (m *Machine) emit(to netip.AddrPort, port int, class wire.Class, tx wire.TransactionID) {
	start := len(m.arena)
	m.arena = m.appendPunch(m.arena, class, tx)
	end := len(m.arena)
	// The capacity limit keeps a caller's append from overwriting the
	// next packet.
	m.out = append(m.out, Packet{To: to, Port: port, Data: m.arena[start:end:end]})
	m.stats.Sent++
}

// appendPunch appends a PUNCH message of class with our SOURCE_ID and its MAC.
func (m *Machine) appendPunch(b []byte, class wire.Class, tx wire.TransactionID) []byte {
	m.tmpl.Type = wire.Type{Method: wire.MethodPunch, Class: class}
	m.tmpl.TransactionID = tx
	start := len(b)
	b = m.tmpl.AppendTo(b)
	msg := b[start:]
	in, _ := wire.MACInput(msg)
	m.mac.Reset()
	m.mac.Write(in)
	wire.PutMAC(msg, m.mac.Sum(m.sum[:0]))
	return b
}

// Keepalive appends to b a PUNCH indication that keeps the NAT mappings of
// a chosen path alive; the caller sends it to the path (every 15–25 s is
// well inside common NAT UDP timeouts). The peer's Machine accepts it
// (Stats.Received, LastHeard) without answering.
func (m *Machine) Keepalive(b []byte) []byte {
	m.seq++
	var tx wire.TransactionID
	copy(tx[:8], m.prefix[:])
	binary.BigEndian.PutUint32(tx[8:], m.seq)
	m.stats.Keepalives++
	return m.appendPunch(b, wire.ClassIndication, tx)
}

// Receive handles one PUNCH message that arrived from from: msg must have
// been decoded by wire.Message.Decode from the datagram (msg.Raw is what
// the MAC is checked over). It returns the packets to send in reply: for a
// valid request a success response to from and, while Punching, maybe a
// triggered request. Anything invalid returns nil and is counted in Stats.
func (m *Machine) Receive(msg *wire.Message, from netip.AddrPort, now time.Time) []Packet {
	return m.ReceiveOn(msg, from, 0, now)
}

// ReceiveOn is Receive for a message that arrived on local socket port
// (Packet.Port): the answers leave from the same socket, and a path found
// there is on that socket (PathPort).
func (m *Machine) ReceiveOn(msg *wire.Message, from netip.AddrPort, port int, now time.Time) []Packet {
	m.reset()
	if port < 0 || port > m.bday.ports {
		m.ignore(&m.stats.Malformed)
		return nil
	}
	m.live(now) // fails the Machine at the deadline, whichever call comes first
	if m.state == Failed {
		m.ignore(&m.stats.Late)
		return nil
	}
	from = unmap(from)
	if !from.IsValid() || !wellFormed(msg) {
		m.ignore(&m.stats.Malformed)
		return nil
	}
	if msg.SourceID != m.peer {
		m.ignore(&m.stats.WrongPeer)
		return nil
	}
	if !m.verifyMAC(msg.Raw) {
		m.ignore(&m.stats.BadMAC)
		return nil
	}
	switch msg.Type.Class {
	case wire.ClassRequest:
		m.onRequest(msg.TransactionID, from, uint16(port), now)
		if len(m.out) == 0 {
			return nil
		}
		return m.out
	case wire.ClassSuccess:
		m.onSuccess(msg.TransactionID, from, uint16(port), now)
	default: // indication: a keepalive
		m.accept(now)
	}
	return nil
}

func (m *Machine) ignore(reason *uint64) {
	*reason++
	m.stats.Ignored++
}

func (m *Machine) accept(now time.Time) {
	m.stats.Received++
	m.heard = now
}

func (m *Machine) onRequest(tx wire.TransactionID, from netip.AddrPort, port uint16, now time.Time) {
	dup := false
	for i := range m.seen[:m.nseen] {
		if m.seen[i].tx == tx {
			if m.seen[i].from != from {
				m.ignore(&m.stats.Replayed)
				return
			}
			dup = true
			break
		}
	}
	if !dup {
		m.seen[m.seenNext] = seenRequest{tx: tx, from: from}
		m.seenNext = (m.seenNext + 1) % seenWindow
		m.nseen = min(m.nseen+1, seenWindow)
	}
	m.accept(now)
	m.emit(from, int(port), wire.ClassSuccess, tx)
	m.stats.Responses++
	if m.state != Punching {
		return // Connected: answer only, the peer may still need it
	}
	i := m.find(from, port)
	if i < 0 {
		if m.ncands == MaxCandidates {
			m.stats.ReflexiveDropped++
			return
		}
		i = m.add(from, port, now, true)
		m.stats.Reflexive++
	}
	c := &m.cands[i]
	first := !c.heard
	c.heard = true
	// The first request from an address is the moment its path opened:
	// probe it now. Later ones trigger only if we have not just sent
	// there, so a peer's schedule does not double ours.
	if first || c.lastSent.IsZero() || now.Sub(c.lastSent) >= m.interval/2 {
		m.request(i, now)
		m.stats.Triggered++
	}
}

func (m *Machine) onSuccess(tx wire.TransactionID, from netip.AddrPort, port uint16, now time.Time) {
	if [8]byte(tx[:8]) != m.prefix {
		m.ignore(&m.stats.UnknownTxID)
		return
	}
	seq := binary.BigEndian.Uint32(tx[8:])
	e := &m.ring[seq%OutstandingWindow]
	switch {
	case e.status == txFree || e.seq != seq:
		m.ignore(&m.stats.UnknownTxID)
		return
	case e.status == txAnswered:
		m.ignore(&m.stats.Replayed)
		return
	case e.port != port:
		// A response must come back to the socket its request left from.
		m.ignore(&m.stats.UnknownTxID)
		return
	}
	e.status = txAnswered
	m.accept(now)
	if m.state == Punching {
		m.state = Connected
		m.path = from
		m.pathPort = int(port)
		m.rtt = max(now.Sub(m.start)-e.at, 0)
		if e.cand == sprayCand {
			m.stats.SprayHits++
		}
	}
}

// Verify reports whether msg, decoded by wire.Message.Decode, is a PUNCH
// request, success response or indication from peer whose MAC verifies
// with secret. The Machine method of the same name does the same without
// allocating.
func Verify(msg *wire.Message, peer wire.ID, secret wire.Secret) bool {
	if !wellFormed(msg) || msg.SourceID != peer {
		return false
	}
	var sum [sha256.Size]byte
	return checkMAC(hmac.New(sha256.New, secret[:]), &sum, msg.Raw)
}

// Verify reports whether msg is a well-formed PUNCH from this Machine's peer
// with a MAC that verifies under its secret, without changing any state:
// with several attempts on one socket, it finds the one a PUNCH belongs to.
func (m *Machine) Verify(msg *wire.Message) bool {
	return wellFormed(msg) && msg.SourceID == m.peer && m.verifyMAC(msg.Raw)
}

func (m *Machine) verifyMAC(raw []byte) bool { return checkMAC(m.mac, &m.sum, raw) }

func checkMAC(h hash.Hash, sum *[sha256.Size]byte, raw []byte) bool {
	in, ok := wire.MACInput(raw)
	if !ok {
		return false
	}
	h.Reset()
	h.Write(in)
	return hmac.Equal(h.Sum(sum[:0]), raw[len(raw)-wire.MACSize:])
}

// wellFormed checks that msg is a PUNCH request, success response or
// indication that passes wire's attribute rules and that msg.Raw is the
// encoding it was decoded from, ending in the MAC attribute: the MAC is
// checked over Raw, so Raw must be what the fields were read from.
func wellFormed(msg *wire.Message) bool {
	if msg.Type.Method != wire.MethodPunch || msg.Type.Class == wire.ClassError {
		return false
	}
	if !msg.Has(wire.AttrSourceID) || !msg.Has(wire.AttrMAC) || msg.Check() != nil {
		return false
	}
	raw := msg.Raw
	if _, ok := wire.MACInput(raw); !ok || wire.MessageLength(raw) != len(raw) {
		return false
	}
	mac := raw[len(raw)-wire.MACSize-4:]
	return binary.BigEndian.Uint16(raw[0:2])&0x3FFF == msg.Type.Value()&0x3FFF &&
		[wire.TransactionIDSize]byte(raw[8:wire.HeaderSize]) == msg.TransactionID &&
		binary.BigEndian.Uint16(mac[0:2]) == uint16(wire.AttrMAC) &&
		binary.BigEndian.Uint16(mac[2:4]) == wire.MACSize/4
}
