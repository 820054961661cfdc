package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ewf-project/ewf/store"
	"github.com/ewf-project/ewf/wire"
)

// Several servers sharing a store (store.Shared, e.g. store/redis).
//
// The packet path stays as it is for everything this server can answer from
// memory: a KEY in the store's local cache, a binding made on this server.
// What it cannot answer it does not wait for: the Handler copies the
// request into a job and returns nothing, like a REGISTER; one of a few
// worker goroutines reads what is missing from the shared store (the KEY,
// the peer's bindings made at other servers), then handles the request
// again with that at hand ("replay") and sends the answer through the
// request's Replier. The queue of jobs is bounded; when it is full the
// request is dropped and the client retransmits.
//
// When each kind of request goes the slow way:
//   - BIND: the KEY is not in the cache (the client registered at another
//     server, or the cache entry is older than the store's KEY cache TTL),
//     or the cached KEY does not match (it may be stale).
//   - QUERY: the peer has no binding on this server.
//   - introduction: a KEY is not cached, or the target or the querier has
//     no binding here.
//
// Every BIND is also shared: queued for the store without blocking, written
// in batches, with the binding TTL. The staleness of what a QUERY returns:
//   - a binding made here: exact, as without sharing;
//   - a binding made elsewhere: read from the store at the time of the
//     QUERY, so at most the store's batching delay (milliseconds) old;
//   - after a client moves to another server while this one still runs
//     (failover from a path that lost only the client), this server keeps
//     answering the old binding until it expires: at most BindingTTL.
//
// Introductions across servers. The INTRODUCE must leave from the server
// and the socket the target's binding came in on: only that address is
// open in the target's NAT. When the target is bound at server B and the
// introduction arrives at A, A builds the INTRODUCE and hands it to B
// (store.Shared.Send on B's channel) with the target's ID; B looks the
// target up in its own table and sends it from the right socket, after its
// limit of INTRODUCEs per target address. That limit therefore holds
// cluster-wide (a target's UDP binding lives at one server); the limit per
// querier ID stays per server. A hands off at most once; if B does not
// listen any more (it died), A answers "not bound". What B drops after its
// limit, A cannot know: A has answered success, and the querier's punch
// times out as if the INTRODUCE were lost.
//
// deliverToBound is the one function that sends "this message to the peer
// ID over its binding", wherever the binding is: any server-to-peer
// message (INTRODUCE today, SIGNAL with method 0x007 tomorrow) is
// forwarded the same way, since the forwarded form carries the finished
// message bytes and the target ID, not the kind of message.
type cluster struct {
	s    *Server
	st   store.Shared
	name string // this server's name: its channel, and the owner in its bindings

	work chan *job
	pool sync.Pool
	quit chan struct{}
	wg   sync.WaitGroup

	met struct {
		deferred, dropped, tryLater                    prometheus.Counter
		forwarded, received, recvDropped, notListening prometheus.Counter
	}
	started atomic.Bool
}

// job is a request waiting for the shared store.
type job struct {
	buf [wire.MaxMessageSize]byte
	n   int
	src netip.AddrPort
	tr  wire.Transport
	r   Replier
	via uint8
	now time.Time
}

// clusterWorkers is how many requests can wait for the store at once; each
// waits one or two round trips. store/redis keeps as many connections.
const clusterWorkers = 64

// clusterQueue bounds the requests waiting for a worker.
const clusterQueue = 4096

// forward message: target ID (16), transport (1), then the message bytes.
const fwdHeader = 17

func newCluster(s *Server, st store.Shared, reg *prometheus.Registry) (*cluster, error) {
	var n [8]byte
	rand.Read(n[:])
	c := &cluster{
		s:    s,
		st:   st,
		name: hex.EncodeToString(n[:]),
		work: make(chan *job, clusterQueue),
		quit: make(chan struct{}),
	}
	c.pool.New = func() any { return new(job) }
	ev := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ewfd_shared_total",
		Help: "Requests that needed the shared store, and messages between servers, by event.",
	}, []string{"event"})
	if err := reg.Register(ev); err != nil {
		return nil, err
	}
	c.met.deferred = ev.WithLabelValues("deferred")        // went to a worker
	c.met.dropped = ev.WithLabelValues("queue_full")       // answered try-later: workers behind
	c.met.tryLater = ev.WithLabelValues("try_later")       // store unreachable
	c.met.forwarded = ev.WithLabelValues("forwarded")      // handed to another server
	c.met.notListening = ev.WithLabelValues("peer_gone")   // the owner server does not listen
	c.met.received = ev.WithLabelValues("delivered")       // from another server, sent to the peer
	c.met.recvDropped = ev.WithLabelValues("deliver_drop") // from another server, not sendable
	return c, nil
}

// start subscribes to this server's channel and starts the workers.
func (c *cluster) start() error {
	if err := c.st.Listen(c.name, c.onMessage); err != nil {
		return err
	}
	for range clusterWorkers {
		c.wg.Add(1)
		go c.worker()
	}
	c.started.Store(true)
	return nil
}

// stop joins the workers; jobs still queued are dropped (their clients
// retransmit to a server that runs).
func (c *cluster) stop() {
	if c.started.Swap(false) {
		close(c.quit)
		c.wg.Wait()
	}
}

// Name is the server's name in the shared store, or "" without one.
func (s *Server) Name() string {
	if s.cl == nil {
		return ""
	}
	return s.cl.name
}

// deferShared hands the request being handled to a worker, if the store is
// shared and this is not already a replay. It reports whether it did: then
// the Handler answers nothing now. When the queue is full (the workers or
// Redis are behind) the request is answered "try again later" at once,
// through the Replier, rather than dropped: a TCP client would otherwise
// wait out its whole timeout.
func (h *Handler) deferShared() bool {
	c := h.s.cl
	if c == nil || h.replay {
		return false
	}
	j := c.pool.Get().(*job)
	j.n = copy(j.buf[:], h.raw)
	j.src, j.tr, j.r, j.via, j.now = h.src, h.tr, h.r, h.via, h.now
	select {
	case c.work <- j:
		c.met.deferred.Inc()
	default:
		c.pool.Put(j)
		c.met.dropped.Inc()
		m := &h.req
		h.s.met.count(kindFor(m), reasonOutcome(wire.ReasonTryLater))
		h.r.Reply(appendError(&h.resp, m.Type.Method, &m.TransactionID, wire.ReasonTryLater, h.ind[:0]), h.src)
	}
	return true
}

// shareBinding queues a BIND's binding for the store; never blocks. Not
// every refresh is written: a binding is written when it is new, changed
// (address or socket) or expired here, and otherwise once per half
// BindingTTL window of the server's clock (the first BIND in a window in
// which none was written), or when the store failed to share a binding
// since the previous BIND. A client refreshing every 20–25 s is written
// about every 60 s instead of every 22 s with the default 120 s TTL, and its
// shared binding never lapses: two writes are at most one window plus one
// refresh interval apart, well inside the TTL. old is the slot the BIND
// replaced in this server's table.
func (h *Handler) shareBinding(id *wire.ID, ap netip.AddrPort, old *bindSlot, sec uint32) {
	c := h.s.cl
	if c == nil {
		return
	}
	prev := old.exp - h.s.ttl // when the BIND before this one came
	if half := max(h.s.ttl/2, 1); old.valid() && old.exp > sec && old.port == ap.Port() &&
		old.ip == ap.Addr().As16() && old.via == h.via && prev/half == sec/half && !c.failedSince(prev) {
		return // written in this window already (or the previous BIND was)
	}
	b := store.Binding{Server: c.name, Addr: ap.Addr().As16(), Port: ap.Port(), Is4: ap.Addr().Is4(), Via: h.via}
	c.st.PutBinding(store.ID(*id), int(h.tr), b, h.s.cfg.BindingTTL)
}

// failedSince reports whether the store failed to share some binding at
// or after second sec of the server's clock: then a write skipped since
// may have been the only one, lost.
func (c *cluster) failedSince(sec uint32) bool {
	lf := c.st.LastFailure()
	if lf.IsZero() {
		return false
	}
	fs, _ := c.s.clock(lf)
	return fs >= sec
}

// remote holds what a worker read from the store for one replay: the shared
// bindings of up to two IDs (target and querier).
type remote struct {
	n   int
	id  [2]wire.ID
	e   [2]bindEntry
	srv [2][2]string // owner server per ID and transport
}

func (r *remote) find(id *wire.ID) int {
	for i := range r.n {
		if r.id[i] == *id {
			return i
		}
	}
	return -1
}

// bound returns id's bindings: this server's, or in a replay the shared
// ones read for it. srv names the owner of each transport's binding, ""
// for this server.
func (h *Handler) bound(id *wire.ID, sec uint32) (e bindEntry, n int, srv [2]string) {
	e, n = h.s.bind.get(id, sec)
	if n > 0 || !h.replay {
		return e, n, srv
	}
	if i := h.rem.find(id); i >= 0 {
		e, srv = h.rem.e[i], h.rem.srv[i]
		for tr := range e {
			if e[tr].valid() {
				n++
			}
		}
	}
	return e, n, srv
}

func (c *cluster) worker() {
	defer c.wg.Done()
	h := &Handler{s: c.s, replay: true}
	var out [wire.MaxMessageSize]byte
	for {
		var j *job
		select {
		case j = <-c.work:
		case <-c.quit:
			return
		}
		c.handle(h, j, out[:0])
		j.r = nil
		c.pool.Put(j)
	}
}

// handle reads what j's request needs from the store, then handles it
// again and sends the answer.
func (c *cluster) handle(h *Handler, j *job, out []byte) {
	s := c.s
	h.tr, h.r, h.via = j.tr, j.r, j.via
	req := j.buf[:j.n]
	m := &h.req
	if err := m.Decode(req); err != nil {
		return // it decoded on the packet path; cannot happen
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	sec, ns := s.clock(j.now)
	h.rem.n = 0
	var err error
	switch m.Type.Method {
	case wire.MethodBind:
		_, _, err = c.st.Fetch(ctx, store.ID(m.ID))
	case wire.MethodSignal:
		// Like an introduction: the sender's KEY, its binding and the
		// peer's binding.
		err = c.prefetchIntro(ctx, h, sec)
	case wire.MethodQuery:
		if m.IsIntroduction() {
			err = c.prefetchIntro(ctx, h, sec)
		} else {
			// One round trip: the bindings, and the registration
			// that tells "not registered" from "not bound".
			err = c.fetchBindings(ctx, h, &m.ID)
		}
	}
	if err != nil {
		c.met.tryLater.Inc()
		s.logStoreError(err)
		out = h.fail(out, kindFor(m), wire.ReasonTryLater)
	} else {
		h.src, h.now, h.raw = j.src, j.now, req
		out = h.handleX(req, j.src, j.now, sec, ns, out)
	}
	if len(out) == 0 {
		return
	}
	if j.tr == wire.TransportUDP && !withinAmplification(wire.KindX, len(req), len(out), j.src) {
		s.met.drop(dropAmplification)
		return
	}
	j.r.Reply(out, j.src)
}

func kindFor(m *wire.Message) reqKind {
	if m.Type.Method == wire.MethodQuery && m.IsIntroduction() {
		return kindIntroduction
	}
	return kindOf(m.Type.Method)
}

// prefetchIntro fills the cache with the KEYs an introduction (or a
// SIGNAL) checks and reads the shared bindings of the target and the
// querier that are not bound here.
//
// Bindings brings the ID's registration along, so the usual case (the
// querier bound here, the target elsewhere) is one round trip.
func (c *cluster) prefetchIntro(ctx context.Context, h *Handler, sec uint32) error {
	m := &h.req
	var fetched [2]bool // registration read with the bindings: target, querier
	if te, _ := c.s.bind.get(&m.ID, sec); !te[wire.TransportUDP].valid() {
		if err := c.fetchBindings(ctx, h, &m.ID); err != nil {
			return err
		}
		fetched[0] = true
	}
	if _, qn := c.s.bind.get(&m.SourceID, sec); qn == 0 {
		if err := c.fetchBindings(ctx, h, &m.SourceID); err != nil {
			return err
		}
		fetched[1] = true
	}
	for i, id := range [2]wire.ID{m.ID, m.SourceID} {
		if fetched[i] {
			continue
		}
		k, ok := c.st.Lookup(store.ID(id))
		if ok && (id != m.SourceID || k == store.Key(m.Key)) {
			continue
		}
		if _, _, err := c.st.Fetch(ctx, store.ID(id)); err != nil {
			return err
		}
	}
	return nil
}

// fetchBindings reads id's shared bindings into h.rem. A binding the
// store names as this server's but this server no longer holds is left
// out: it expired here first.
func (c *cluster) fetchBindings(ctx context.Context, h *Handler, id *wire.ID) error {
	b, ok, err := c.st.Bindings(ctx, store.ID(*id))
	if err != nil {
		return err
	}
	i := h.rem.n
	h.rem.n++
	h.rem.id[i], h.rem.e[i], h.rem.srv[i] = *id, bindEntry{}, [2]string{}
	for tr := range b {
		if !ok[tr] || b[tr].Server == c.name {
			continue
		}
		sl := bindSlot{ip: b[tr].Addr, port: b[tr].Port, flags: slotValid, via: b[tr].Via, exp: ^uint32(0)}
		if b[tr].Is4 {
			sl.flags |= slotIs4
		}
		h.rem.e[i][tr], h.rem.srv[i][tr] = sl, b[tr].Server
	}
	return nil
}

// deliverToBound sends msg, a finished server-to-peer message, to id over
// its binding on transport tr: from this server's socket if the binding
// is here (e and srv as Handler.bound returned them), else handed to the
// server that holds it, which sends it from its own socket. It is the one
// path for INTRODUCE and any later message of that kind (SIGNAL).
//
// Over TCP (a client whose UDP is blocked: deliveryTransport), the
// message goes over the connection the TCP binding came in on, which the
// server holding the binding keeps (tcpdeliver.go). ok is true when sent or handed
// over; otherwise why is the reason for the requester: as Server.send's
// here, ReasonNotBound when the binding's server is gone, ReasonTryLater
// when the store is out of reach.
func (h *Handler) deliverToBound(id *wire.ID, tr wire.Transport, e *bindEntry, srv *[2]string, msg []byte, ns int64) (bool, wire.Reason) {
	s := h.s
	if !e[tr].valid() {
		return false, wire.ReasonNotBound
	}
	if srv[tr] == "" {
		if tr == wire.TransportTCP {
			return s.sendTCP(id, e[tr], msg, ns) // tcpdeliver.go: the binding's connection
		}
		return s.send(e[tr], msg, ns) // signal.go: limit per target address, then the binding's socket
	}
	c := s.cl
	fwd := make([]byte, 0, fwdHeader+len(msg)) // the slow path: allocation is fine
	fwd = append(fwd, id[:]...)
	fwd = append(fwd, byte(tr))
	fwd = append(fwd, msg...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	ok, err := c.st.Send(ctx, srv[tr], fwd)
	cancel()
	switch {
	case err != nil:
		c.met.tryLater.Inc()
		s.logStoreError(err)
		return false, wire.ReasonTryLater
	case !ok:
		c.met.notListening.Inc()
		return false, wire.ReasonNotBound
	}
	c.met.forwarded.Inc()
	return true, 0
}

// onMessage receives a message another server handed over for a peer bound
// here and sends it with Deliver (signal.go): from the socket the peer's
// binding came in on (or its TCP binding's connection), after the limit per target address, and only if it
// is an X indication.
func (c *cluster) onMessage(b []byte) {
	if len(b) <= fwdHeader || wire.Transport(b[16]) > wire.TransportTCP {
		c.met.recvDropped.Inc()
		return
	}
	if ok, _ := c.s.Deliver(c.s.now(), wire.ID(b[:16]), b[fwdHeader:]); !ok {
		c.met.recvDropped.Inc()
		return
	}
	c.met.received.Inc()
}

// errNoShared is returned by StartShared for a Server without a shared
// store.
var errNoShared = errors.New("server: the store is not shared")

// StartShared starts the work of a Server on a shared store: its workers
// and its subscription to messages from other servers. Start calls it; a
// caller of New with a store.Shared calls it before serving and calls
// StopShared after. Without a shared store it returns an error.
func (s *Server) StartShared() error {
	if s.cl == nil {
		return errNoShared
	}
	return s.cl.start()
}

// StopShared joins the workers StartShared started.
func (s *Server) StopShared() {
	if s.cl != nil {
		s.cl.stop()
	}
}
