// Package server is ewfd's rendezvous server: STUN Binding and the X methods
// REGISTER, BIND and QUERY (with introductions) of docs/PROTOCOL.md, on UDP
// and TCP.
//
// The package has two layers:
//
//   - The core, Server and Handler (server.go and the files it uses), turns a
//     request's bytes, its source address and its transport into response
//     bytes. It owns no sockets and no goroutines. The hot path (STUN
//     Binding, BIND, QUERY) does not allocate: a Handler holds the scratch
//     space of one reader goroutine.
//   - The daemon, Daemon (daemon.go, udp*.go, tcp.go), opens the store and
//     the sockets, runs one UDP reader per core with batched system calls, a
//     TCP accept loop, the metrics endpoint and the periodic sweeps, and
//     stops them all in Close.
//
// A REGISTER is answered later than the other requests: its KEY must be on
// disk before the client hears of it, and the store commits in groups. The
// Handler hands the registration to the store and returns nothing; when the
// store's callback reports the outcome, the answer goes out through the
// Replier the Handler was made with. The reader goroutine never waits for a
// disk, and many REGISTERs share one fsync.
//
// What is durable: registrations (ID, KEY, last BIND time), in the store.
// What is memory-only: bindings, rate-limit tables and the REGISTER
// retransmission cache; a restart forgets them and clients re-BIND within
// their refresh interval. On a store shared between servers (store.Shared,
// cluster.go) bindings are also shared, with their TTL, so that any server
// finds a client bound at another and hands it what must leave from the
// server it is bound at.
package server

import (
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ewf-project/ewf/store"
	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/integrity"
)

// Replier sends a message the server produces outside a Handle call's
// return value: the late answer to a REGISTER, and the INTRODUCE indication
// to an introduction's target. A UDP socket implements it by sending a
// datagram to to; a TCP connection ignores to and writes to its peer.
//
// Reply may be called from any goroutine, including the store's committer,
// so it must not block for long, and it must not keep b after returning.
type Replier interface {
	Reply(b []byte, to netip.AddrPort)
}

// Server is the protocol core. It is safe for concurrent use through
// Handlers, one per reader goroutine.
type Server struct {
	cfg   Config
	st    store.Store
	log   *slog.Logger
	now   func() time.Time
	epoch time.Time
	ttl   uint32 // BindingTTL in seconds

	bind      *bindings
	tx        *txCache
	srcLim    *limiter // requests per source IP
	dstLim    *limiter // INTRODUCEs per target IP
	regLim    *limiter // REGISTERs per source IP per window
	introLim  *limiter // introductions per querier ID
	signalLim *limiter // SIGNALs per sender ID
	relayLim  *limiter // RELAY requests per ID
	relayURLs [][]byte // cfg.Relay.URLs as the answer carries them
	replay    *replayCache
	met       *metrics
	reg       *prometheus.Registry
	cl        *cluster // nil unless the store is shared (cluster.go)

	udpMu sync.Mutex
	udp   atomic.Pointer[[]Replier] // UDP sockets by bindSlot.via, copy on write

	// tcpR is, per ID bound over TCP here, the connection its binding
	// came in on: INTRODUCE and SIGNAL reach a client whose UDP is
	// blocked over it (tcpdeliver.go). A slow path: a map and a lock.
	tcpMu sync.Mutex
	tcpR  map[wire.ID]Replier

	logMu      sync.Mutex
	lastErrLog time.Time // store failures are logged at most once a second
}

// txCacheSize bounds the REGISTER retransmission cache. At the default
// RegisterPerIP, a full cache means tens of thousands of sources registering
// within 40 s; beyond that the oldest entries go first, and a late
// retransmission of theirs gets ID conflict instead of its KEY.
const txCacheSize = 1 << 16

// New makes a Server that keeps registrations in st. st must outlive the
// Server; the Server never closes it.
func New(st store.Store, cfg Config) (*Server, error) {
	if st == nil {
		return nil, fmt.Errorf("%w: nil store", errConfig)
	}
	cfg, err := cfg.populate()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:       cfg,
		st:        st,
		log:       cfg.Logger,
		now:       cfg.Now,
		ttl:       uint32(cfg.BindingTTL / time.Second),
		bind:      newBindings(),
		tx:        newTxCache(txCacheSize),
		srcLim:    newLimiter(cfg.MaxSources, cfg.Rate, cfg.Burst),
		dstLim:    newLimiter(cfg.MaxSources, cfg.Rate, cfg.Burst),
		regLim:    newLimiter(cfg.MaxSources, float64(cfg.RegisterPerIP)/cfg.RegisterWindow.Seconds(), cfg.RegisterPerIP),
		introLim:  newLimiter(cfg.MaxSources, cfg.IntroRate, cfg.IntroBurst),
		signalLim: newLimiter(cfg.MaxSources, cfg.IntroRate, cfg.IntroBurst),
		relayLim:  newLimiter(cfg.MaxSources, relayRate, relayBurst),
		replay:    newReplayCache(cfg.ReplayCacheSize),
		reg:       cfg.Registry,
	}
	// The epoch is a second before now, so that clock readings are positive
	// and a zero expiry is always in the past.
	s.epoch = s.now().Add(-time.Second)
	s.udp.Store(&[]Replier{})
	s.tcpR = make(map[wire.ID]Replier)
	for _, u := range cfg.Relay.URLs {
		s.relayURLs = append(s.relayURLs, []byte(u))
	}
	if s.met, err = newMetrics(cfg.Registry, s); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if sh, ok := st.(store.Shared); ok {
		if s.cl, err = newCluster(s, sh, cfg.Registry); err != nil {
			return nil, fmt.Errorf("server: metrics: %w", err)
		}
	}
	return s, nil
}

// Registry returns the registry holding the Server's metrics.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// clock returns now in whole seconds and in nanoseconds since the epoch.
func (s *Server) clock(now time.Time) (sec uint32, ns int64) {
	d := now.Sub(s.epoch)
	if d < 0 {
		d = 0
	}
	return uint32(d / time.Second), int64(d)
}

// Sweep forgets bindings and REGISTER transactions that expired by now. The
// Daemon calls it every few seconds; lookups ignore expired entries anyway,
// so the interval only bounds how long they take memory.
func (s *Server) Sweep(now time.Time) {
	sec, _ := s.clock(now)
	s.bind.sweep(sec)
	s.tx.expire(sec)
	s.sweepTCP(sec)
}

// Handler handles the packets of one reader goroutine (a UDP socket's reader
// or a TCP connection), reusing its scratch space. A Handler must not be used
// concurrently.
type Handler struct {
	s   *Server
	tr  wire.Transport
	r   Replier
	via uint8

	req  wire.Message
	resp wire.Message
	stun stun.Message
	rnd  [16]byte
	ind  [wire.MaxMessageSize]byte
	auth authState

	relayUser [64]byte // RELAY answer: username and password
	relayPass [32]byte

	// alt is set when the Handler reads one of the RFC 5780 sockets
	// (Config.Alternate), whose [IP][port] index is altI, altJ and whose
	// family is IPv4 when altIP4.
	alt        *rfc5780
	altI, altJ uint8
	altIP4     bool

	// The request being handled, for deferShared (cluster.go), and the
	// state of a replay on a cluster worker.
	raw    []byte
	src    netip.AddrPort
	now    time.Time
	replay bool
	rem    remote

	// Over-rate answers on a TCP connection (overRate): the earliest time
	// (ns since the epoch) the next may go out, and whether the connection
	// should now be closed.
	rateNext int64
	hangUp   bool
}

// maxUDPRepliers is how many UDP sockets one Server can serve: a binding
// remembers its socket in one byte.
const maxUDPRepliers = 255

// NewHandler returns a Handler for packets arriving on transport tr, whose
// late answers go out through r. For UDP, r is also the socket through
// which INTRODUCE indications reach clients bound on it; it must be
// comparable (a pointer, typically), and at most 255 UDP Repliers can be
// registered per Server (NewHandler panics beyond).
func (s *Server) NewHandler(tr wire.Transport, r Replier) *Handler {
	h := &Handler{s: s, tr: tr, r: r}
	h.auth.sig = integrity.NewSigner()
	if tr == wire.TransportUDP {
		h.via = s.udpIndex(r)
	}
	return h
}

func (s *Server) udpIndex(r Replier) uint8 {
	s.udpMu.Lock()
	defer s.udpMu.Unlock()
	old := *s.udp.Load()
	for i, x := range old {
		if x == r {
			return uint8(i)
		}
	}
	if len(old) >= maxUDPRepliers {
		panic("server: more than 255 UDP sockets")
	}
	l := append(old[:len(old):len(old)], r)
	s.udp.Store(&l)
	return uint8(len(l) - 1)
}

// Handle handles one STUN or X message that arrived at time now: req is a
// whole datagram (UDP) or a whole frame (TCP) from src. The synchronous
// answer, if any, is appended to out and the extended slice returned; if
// nothing is appended, the packet is dropped or (REGISTER) answered later
// through the Handler's Replier. A reader of a batch passes one now for the
// whole batch: reading the clock costs more than some requests.
//
// Nothing answers a packet whose header is invalid. Over UDP no answer is
// longer than twice its request: amplification stays at most 2 (STUN
// counted as datagrams, docs/PROTOCOL.md §10).
func (h *Handler) Handle(now time.Time, req []byte, src netip.AddrPort, out []byte) []byte {
	s := h.s
	kind := wire.Classify(req)
	if kind == wire.KindOther || wire.MessageLength(req) != len(req) {
		s.met.drop(dropMalformed)
		return out
	}
	// Compare and store addresses in one form: a dual-stack socket reports
	// IPv4 clients as ::ffff:a.b.c.d, and zones never appear on the wire.
	src = netip.AddrPortFrom(src.Addr().Unmap().WithZone(""), src.Port())
	sec, ns := s.clock(now)
	sk := sourceKey(src.Addr())
	if !s.srcLim.allow(&sk, ns) {
		if h.tr == wire.TransportTCP {
			return h.overRate(kind, req, ns, out)
		}
		// UDP: dropped unanswered. The source address is not verified,
		// so an answer could go to a spoofed victim, and a flood over
		// the rate is exactly when answering would amplify (§9, §10).
		s.met.drop(dropRateLimited)
		return out
	}
	start := len(out)
	if kind == wire.KindSTUN {
		var oc stunOutcome
		out, oc = h.handleSTUN(req, src, out)
		switch oc {
		case stunAnswered:
			s.met.count(kindSTUN, outOK)
		case stunMalformed:
			s.met.drop(dropMalformed)
		case stunNotBinding, stunUnsupported:
			s.met.drop(dropIgnored)
		case stunTooLarge:
			s.met.drop(dropAmplification)
		}
	} else {
		out = h.handleX(req, src, now, sec, ns, out)
	}
	if h.tr == wire.TransportUDP && !withinAmplification(kind, len(req), len(out)-start, src) {
		s.met.drop(dropAmplification)
		return out[:start]
	}
	return out
}

// rateAnswerEvery is how often one TCP connection may be told it is over
// the per-source rate (overRate).
const rateAnswerEvery = time.Second

// overRate handles a request over the per-source rate that came over TCP.
// The handshake verified the source, so unlike UDP it can be told: an X
// request gets ReasonRateLimited at once instead of waiting out the
// client's timeout (a TCP client does not retransmit). So that the answers
// cannot become a flood of their own, a connection gets at most one per
// rateAnswerEvery; another request over the rate within it (or a STUN
// request over the rate, for which STUN has no answer a client would read
// as "slow down") makes the connection close (HangUp), which also ends the
// client's other requests at once.
func (h *Handler) overRate(kind wire.Kind, req []byte, ns int64, out []byte) []byte {
	s, m := h.s, &h.req
	if kind != wire.KindX || ns < h.rateNext {
		s.met.drop(dropRateLimited)
		h.hangUp = true
		return out
	}
	if err := m.Decode(req); errors.Is(err, wire.ErrInvalidHeader) || m.Type.Class != wire.ClassRequest {
		s.met.drop(dropRateLimited) // nothing to answer, as within the rate
		return out
	}
	h.rateNext = ns + int64(rateAnswerEvery)
	k := kindOf(m.Type.Method)
	if m.IsIntroduction() {
		k = kindIntroduction
	}
	s.met.count(k, reasonOutcome(wire.ReasonRateLimited))
	// Unsigned: the request's MAC is not checked over the rate. The
	// client accepts an unsigned ReasonRateLimited over TCP only (§9).
	return appendError(&h.resp, m.Type.Method, &m.TransactionID, wire.ReasonRateLimited, out)
}

// HangUp reports whether the connection the Handler serves should be
// closed: its source went on sending over the per-source rate after being
// told (overRate). Only TCP Handlers ever report true.
func (h *Handler) HangUp() bool { return h.hangUp }

// withinAmplification enforces docs/PROTOCOL.md §10 at run time: an X
// answer is at most twice its request. A STUN answer is measured as a
// datagram, IP and UDP headers included, because RFC 5389 fixes a 44-byte
// answer to a bare 20-byte Binding request from an IPv6 source; as
// datagrams that is 92 bytes against 68. (The INTRODUCE an introduction
// causes is bounded by construction, §10, and checked by the tests.)
func withinAmplification(kind wire.Kind, req, resp int, src netip.AddrPort) bool {
	if kind == wire.KindSTUN {
		hdr := 20 + 8
		if !src.Addr().Is4() {
			hdr = 40 + 8
		}
		req, resp = req+hdr, resp+hdr
	}
	return resp <= 2*req
}

func (h *Handler) handleX(req []byte, src netip.AddrPort, now time.Time, sec uint32, ns int64, out []byte) []byte {
	s, m := h.s, &h.req
	h.raw, h.src, h.now = req, src, now
	h.auth.reset()
	err := m.Decode(req)
	if err != nil && errors.Is(err, wire.ErrInvalidHeader) {
		s.met.drop(dropMalformed)
		return out
	}
	if m.Type.Class != wire.ClassRequest {
		// Indications and responses are for clients; a server that
		// answered them could be made to talk to itself or to a peer.
		s.met.drop(dropIgnored)
		return out
	}
	kind := kindOf(m.Type.Method)
	if err != nil {
		return h.fail(out, kind, wire.ReasonInvalidAttributes)
	}
	if err := m.Check(); err != nil {
		if errors.Is(err, wire.ErrUnknownMethod) {
			return h.fail(out, kind, wire.ReasonUnknownMethod)
		}
		return h.fail(out, kind, wire.ReasonInvalidAttributes)
	}
	if h.requireIntegrity() {
		if m.IsIntroduction() {
			kind = kindIntroduction
		}
		return h.refuse(out, kind, wire.ReasonIntegrityRequired, outIntegrityRequired)
	}
	switch m.Type.Method {
	case wire.MethodRegister:
		return h.register(src, now, sec, ns, out)
	case wire.MethodBind:
		return h.bindReq(src, now, sec, out)
	case wire.MethodQuery:
		if m.IsIntroduction() {
			return h.introduce(src, now, sec, ns, out)
		}
		return h.query(sec, out)
	case wire.MethodSignal:
		return h.signal(src, now, sec, ns, out)
	case wire.MethodRelay:
		return h.relayCreds(src, now, sec, ns, out)
	}
	// INTRODUCE and PUNCH are between peers: a request of either is not
	// for the server.
	return h.fail(out, kindOther, wire.ReasonUnknownMethod)
}

// fail appends an error response with reason r to the request in h.req.
// It is signed when the request proved its KEY by MAC (auth.go).
func (h *Handler) fail(out []byte, k reqKind, r wire.Reason) []byte {
	return h.refuse(out, k, r, reasonOutcome(r))
}

func appendError(resp *wire.Message, method wire.Method, tx *wire.TransactionID, r wire.Reason, out []byte) []byte {
	resp.Reset()
	resp.Type = wire.Type{Method: method, Class: wire.ClassError}
	resp.TransactionID = *tx
	resp.SetReason(r)
	return resp.AppendTo(out)
}

// success readies h.resp as the success response to h.req.
func (h *Handler) success() *wire.Message {
	h.resp.Reset()
	h.resp.Type = wire.Type{Method: h.req.Type.Method, Class: wire.ClassSuccess}
	h.resp.TransactionID = h.req.TransactionID
	return &h.resp
}

// bindReq handles BIND: the KEY must match, and the address the client
// claims must be the one the server sees, on the transport it came on.
func (h *Handler) bindReq(src netip.AddrPort, now time.Time, sec uint32, out []byte) []byte {
	s, m := h.s, &h.req
	key, ok := s.st.Lookup(m.ID)
	if !ok {
		if h.deferShared() {
			return out
		}
		return h.fail(out, kindBind, wire.ReasonNotRegistered)
	}
	if r, o := h.prove((*wire.Key)(&key), src, now, sec); r != 0 {
		if r == wire.ReasonKeyMismatch && h.deferShared() { // the cached KEY may be stale
			return out
		}
		return h.refuse(out, kindBind, r, o)
	}
	if a := m.Addresses[0]; a.Transport != h.tr || a.AddrPort != src {
		return h.fail(out, kindBind, wire.ReasonAddressMismatch)
	}
	old := s.bind.set(&m.ID, h.tr, src, h.via, sec+s.ttl)
	if h.tr == wire.TransportTCP && h.r != nil {
		s.setTCPReplier(&m.ID, h.r)
	}
	h.shareBinding(&m.ID, src, &old, sec)
	s.st.Touch(m.ID, now)
	s.met.count(kindBind, outOK)
	return h.finish(h.success(), out)
}

// query handles a plain QUERY: the peer's live bindings, UDP first.
func (h *Handler) query(sec uint32, out []byte) []byte {
	s, m := h.s, &h.req
	// Bindings first: only registered IDs get bound, so a live binding
	// answers the question and the store is asked only to tell "not
	// registered" from "not bound".
	e, n, _ := h.bound(&m.ID, sec)
	if n == 0 {
		if h.deferShared() { // bound at another server?
			return out
		}
		if _, ok := s.st.Lookup(m.ID); !ok {
			return h.fail(out, kindQuery, wire.ReasonNotRegistered)
		}
		return h.fail(out, kindQuery, wire.ReasonNotBound)
	}
	r := h.success()
	addBound(r, &e)
	s.met.count(kindQuery, outOK)
	return r.AppendTo(out)
}

// addBound adds the live addresses of e to m, UDP first.
func addBound(m *wire.Message, e *bindEntry) {
	for tr := range e {
		if e[tr].valid() {
			// Cannot fail: one address per transport, each valid.
			_ = m.AddAddress(wire.Address{Transport: wire.Transport(tr), AddrPort: e[tr].addrPort()})
		}
	}
}

// introduce handles a QUERY with SOURCE_ID and KEY: it authenticates the
// querier, sends the target an INTRODUCE over the target's UDP binding, and
// answers the querier with the target's addresses and the shared SECRET.
func (h *Handler) introduce(src netip.AddrPort, now time.Time, sec uint32, ns int64, out []byte) []byte {
	s, m := h.s, &h.req
	// Whatever this server cannot answer from memory goes to a cluster
	// worker when the store is shared (deferShared, cluster.go).
	qkey, ok := s.st.Lookup(m.SourceID)
	if !ok {
		if h.deferShared() {
			return out
		}
		return h.fail(out, kindIntroduction, wire.ReasonNotRegistered)
	}
	if r, o := h.prove((*wire.Key)(&qkey), src, now, sec); r != 0 {
		if r == wire.ReasonKeyMismatch && h.deferShared() { // the cached KEY may be stale
			return out
		}
		return h.refuse(out, kindIntroduction, r, o)
	}
	if _, ok := s.st.Lookup(m.ID); !ok {
		if h.deferShared() {
			return out
		}
		return h.fail(out, kindIntroduction, wire.ReasonNotRegistered)
	}
	te, _, tsrv := h.bound(&m.ID, sec)
	ttr, ok := deliveryTransport(&te)
	if !ok {
		if h.deferShared() {
			return out
		}
		return h.fail(out, kindIntroduction, wire.ReasonNotBound)
	}
	qe, qn, _ := h.bound(&m.SourceID, sec)
	if qn == 0 {
		if h.deferShared() {
			return out
		}
		// The target needs somewhere to punch to.
		return h.fail(out, kindIntroduction, wire.ReasonNotBound)
	}
	if !s.introLim.allow((*[16]byte)(&m.SourceID), ns) {
		return h.fail(out, kindIntroduction, wire.ReasonRateLimited)
	}

	rand.Read(h.rnd[:])
	secret := wire.Secret(h.rnd)
	ind := &h.resp
	ind.Reset()
	ind.Type = wire.Type{Method: wire.MethodIntroduce, Class: wire.ClassIndication}
	rand.Read(ind.TransactionID[:])
	ind.SetSourceID(m.SourceID)
	ind.SetSecret(secret)
	addBound(ind, &qe)
	for _, c := range m.Candidates[:m.NumCandidates] {
		_ = ind.AddCandidate(c) // decoded, so valid and within the limit
	}
	// deliverToBound limits INTRODUCEs per target address at the
	// per-source rate: however many IDs an attacker binds to a victim's
	// address, the victim receives no more than that (a table of its own,
	// so that a popular peer's own requests are not charged for the
	// introductions it receives). It sends from the socket the target's
	// binding came in on, here or at the server that holds it.
	if ok, reason := h.deliverToBound(&m.ID, ttr, &te, &tsrv, ind.AppendTo(h.ind[:0]), ns); !ok {
		return h.fail(out, kindIntroduction, reason)
	}

	r := h.success()
	addBound(r, &te)
	r.SetSecret(secret)
	s.met.count(kindIntroduction, outOK)
	return h.finish(r, out)
}

// register handles REGISTER. Retransmissions are answered from the cache;
// a new transaction goes to the store, and the answer is sent by
// registered once the KEY is durable.
func (h *Handler) register(src netip.AddrPort, now time.Time, sec uint32, ns int64, out []byte) []byte {
	s, m := h.s, &h.req
	k := txKey{src: src, tx: m.TransactionID}
	if e, mine := s.tx.begin(k, sec); !mine {
		if e.state == txPending {
			s.met.count(kindRegister, outInFlight)
			return out
		}
		s.met.count(kindRegister, outRetransmit)
		return append(out, e.resp[:e.n]...)
	}
	// A taken ID is refused before the per-source budget is charged: the
	// budget bounds what a source can write, and a conflict writes nothing.
	refuse, reason := false, wire.Reason(0)
	sk := sourceKey(src.Addr())
	if _, taken := s.st.Lookup(m.ID); taken {
		refuse, reason = true, wire.ReasonIDConflict
	} else if !s.regLim.allow(&sk, ns) {
		refuse, reason = true, wire.ReasonRegistrationLimit
	}
	if refuse {
		b := h.fail(out, kindRegister, reason)
		s.tx.finish(k, b[len(out):])
		return b
	}
	var key wire.Key
	rand.Read(key[:])
	id, tx, r := m.ID, m.TransactionID, h.r
	t0 := time.Now()
	s.st.Register(store.ID(id), store.Key(key), now, func(err error) {
		s.registered(k, r, tx, key, t0, err)
	})
	return out
}

// registered sends the answer to a REGISTER once the store has decided. It
// runs on the store's committer goroutine, or on the reader's if the store
// refused at once.
func (s *Server) registered(k txKey, r Replier, tx wire.TransactionID, key wire.Key, t0 time.Time, err error) {
	var resp wire.Message
	var buf [maxRegisterResponse]byte
	var b []byte
	switch {
	case err == nil:
		s.met.commit.Observe(time.Since(t0).Seconds())
		resp.Type = wire.Type{Method: wire.MethodRegister, Class: wire.ClassSuccess}
		resp.TransactionID = tx
		resp.SetKey(key)
		b = resp.AppendTo(buf[:0])
		s.met.count(kindRegister, outOK)
	case errors.Is(err, store.ErrExists):
		b = appendError(&resp, wire.MethodRegister, &tx, wire.ReasonIDConflict, buf[:0])
		s.met.count(kindRegister, reasonOutcome(wire.ReasonIDConflict))
	case errors.Is(err, store.ErrFull):
		b = appendError(&resp, wire.MethodRegister, &tx, wire.ReasonRegistrationLimit, buf[:0])
		s.met.count(kindRegister, reasonOutcome(wire.ReasonRegistrationLimit))
	case errors.Is(err, store.ErrUnavailable):
		// A shared store out of reach: nothing was written. Say so at
		// once rather than let the client retransmit into the outage, and
		// forget the transaction so that a retransmission tries again.
		s.tx.forget(k)
		s.logStoreError(err)
		b = appendError(&resp, wire.MethodRegister, &tx, wire.ReasonTryLater, buf[:0])
		s.met.count(kindRegister, reasonOutcome(wire.ReasonTryLater))
		r.Reply(b, k.src)
		return
	case errors.Is(err, store.ErrBusy), errors.Is(err, store.ErrClosed):
		// The disk is behind or we are stopping: say nothing, the client
		// retransmits and the retransmission is handled as new.
		s.tx.forget(k)
		s.met.count(kindRegister, outBusy)
		return
	default:
		s.met.commit.Observe(time.Since(t0).Seconds())
		s.tx.forget(k)
		s.logStoreError(err)
		b = appendError(&resp, wire.MethodRegister, &tx, wire.ReasonServerError, buf[:0])
		s.met.count(kindRegister, reasonOutcome(wire.ReasonServerError))
		r.Reply(b, k.src)
		return
	}
	s.tx.finish(k, b)
	r.Reply(b, k.src)
}

func (s *Server) logStoreError(err error) {
	now := time.Now()
	s.logMu.Lock()
	quiet := now.Sub(s.lastErrLog) < time.Second
	if !quiet {
		s.lastErrLog = now
	}
	s.logMu.Unlock()
	if !quiet {
		s.log.Error("store failed; answering server error (or, for a shared store out of reach, try again later)", "err", err)
	}
}
