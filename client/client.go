package client

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/integrity"
	"github.com/ewf-project/ewf/wire/stunx"
)

// Client is the rendezvous client. It is safe for concurrent use: any
// number of requests may run while another goroutine calls HandlePacket.
type Client struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	pending map[wire.TransactionID]*txn
	failed  error             // set by Fail: every request ends with it
	sig     *integrity.Signer // checks signed answers, under mu

	// offset is added to the local clock (ms) for TIMESTAMPs: learnt from
	// the server's authenticated TIMESTAMP in a stale-request error.
	offset atomic.Int64
}

// txn is one outstanding request. The requester allocates it; HandlePacket
// fills it under Client.mu and signals done, so delivering a response
// allocates nothing in HandlePacket itself.
type txn struct {
	kind   wire.Kind   // KindSTUN or KindX: what the answer must be
	method wire.Method // for X
	intro  bool        // X QUERY with SOURCE_ID+KEY: the success must carry SECRET
	done   chan struct{}
	// signed: the request proves key with a MAC (docs/PROTOCOL.md §18),
	// so answers must be signed with it too (§18.5); restamp refreshes
	// the request's TIMESTAMP and MAC before a retransmission.
	signed  bool
	key     wire.Key
	restamp func(req []byte)

	// Guarded by Client.mu.
	finished bool
	resp     wire.Message   // X: the accepted response, Raw cleared
	mapped   netip.AddrPort // STUN: XOR-MAPPED-ADDRESS
	bad      error          // last validation failure, not yet wrapped
	err      error          // set by Fail
	authed   bool           // resp carried a MAC that verified
}

// Introduction is what an introduction gives each side: the other peer,
// where to reach it, and the SECRET that keys the PUNCH MACs.
type Introduction struct {
	Peer       wire.ID        // the other side (for OnIntroduce: the querier)
	Addresses  []wire.Address // its bound public addresses (UDP first)
	Candidates []wire.Address // its host candidates (only in INTRODUCE)
	Secret     wire.Secret
}

// New returns a Client for cfg, with zero fields defaulted (see Config).
// It panics if cfg.Send is nil, which is a programming error.
func New(cfg Config) *Client {
	if cfg.Send == nil {
		panic("client: Config.Send is nil")
	}
	cfg.populate()
	return &Client{
		cfg:     cfg,
		log:     cfg.Logger,
		pending: make(map[wire.TransactionID]*txn),
		sig:     integrity.NewSigner(),
	}
}

// Server returns the server address the Client was configured with.
func (c *Client) Server() netip.AddrPort { return c.cfg.Server }

// Fail ends every outstanding request with an error wrapping err and
// ErrClosed, and makes every later request fail the same way at once. The
// owner of the socket calls it when the transport is gone (socket closed,
// TCP connection reset), so that nobody waits for a timeout that cannot
// end differently. The first call wins.
func (c *Client) Fail(err error) {
	if err == nil {
		err = ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed != nil {
		return
	}
	if !errors.Is(err, ErrClosed) {
		err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.failed = err
	for _, t := range c.pending {
		if !t.finished {
			t.finished = true
			t.err = err
			t.done <- struct{}{}
		}
	}
}

// HandlePacket takes one STUN or X message (a UDP datagram or a TCP frame)
// that came from the server. A valid response to an outstanding request
// completes that request; a valid INTRODUCE indication goes to
// Config.OnIntroduce. It reports whether b was used that way: false for
// anything else (not STUN/X, a response to nothing outstanding or already
// answered, an invalid response — which is remembered for the request's
// final error). It never blocks, and allocates nothing except to decode a
// matched STUN response or to build an Introduction.
func (c *Client) HandlePacket(b []byte) bool {
	switch wire.Classify(b) {
	case wire.KindX:
		return c.handleX(b)
	case wire.KindSTUN:
		return c.handleSTUN(b)
	}
	return false
}

func (c *Client) handleX(b []byte) bool {
	var m wire.Message
	err := m.Decode(b)
	if errors.Is(err, wire.ErrInvalidHeader) {
		return false // no trustworthy transaction ID to blame
	}
	if err == nil {
		err = m.Check()
	}
	if m.Type.Class == wire.ClassIndication && m.Type.Method == wire.MethodIntroduce {
		if err != nil {
			return false
		}
		return c.introduced(&m)
	}
	if m.Type.Class == wire.ClassIndication && m.Type.Method == wire.MethodSignal {
		if err != nil {
			return false
		}
		return c.signalled(&m)
	}

	c.mu.Lock()
	t := c.pending[m.TransactionID]
	if t == nil || t.finished {
		c.mu.Unlock()
		return false
	}
	switch {
	case t.kind != wire.KindX:
		t.bad = errWrongKind
	case m.Type.Class == wire.ClassRequest || m.Type.Class == wire.ClassIndication:
		t.bad = errNotResponse
	case err != nil:
		t.bad = err
	case m.Type.Method != t.method:
		t.bad = errWrongMethod
	case t.intro && m.Type.Class == wire.ClassSuccess && !m.Has(wire.AttrSecret):
		t.bad = errNoSecret
	case t.signed && !c.signedAnswer(t, &m, b):
		// t.bad set by signedAnswer: a forged or tampered answer is
		// dropped like any invalid one, and retransmission goes on.
	default:
		t.resp = m
		t.resp.Raw = nil               // b belongs to the caller
		t.resp.Relay = m.Relay.Clone() // so do the relay strings
		t.finished = true
	}
	ok := t.finished
	c.mu.Unlock()
	if ok {
		t.done <- struct{}{} // cap 1, sent once: never blocks
	}
	return ok
}

// signedAnswer applies docs/PROTOCOL.md §18.5 to m, the answer (raw b) to
// the signed request t: a success must carry a MAC keyed by t.key; an error
// with a MAC must verify; an error without one is accepted only with a
// reason a server gives before it can check a MAC. Called under c.mu.
func (c *Client) signedAnswer(t *txn, m *wire.Message, b []byte) bool {
	switch {
	case m.Has(wire.AttrMAC):
		if !c.sig.Verify(b, t.key[:]) {
			t.bad = errBadMAC
			return false
		}
		t.authed = true
		return true
	case m.Type.Class == wire.ClassSuccess:
		t.bad = errNoMAC
		return false
	case signedOnly(m.Reason) && !(c.cfg.Reliable && m.Reason == wire.ReasonRateLimited):
		// Over TCP, ewfd also answers a request over its per-source rate
		// with ReasonRateLimited, before it checks any MAC, so unsigned
		// (docs/PROTOCOL.md §9). Only the connected server can inject
		// into the connection; over UDP, where anyone could forge the
		// source, ewfd drops such a request and this client ignores the
		// unsigned answer.
		t.bad = errUnsignedReason
		return false
	}
	t.authed = false
	return true
}

// signedOnly reports whether ewfd sends reason r to a signed request only
// after the request's MAC verified, so always signed (§18.4): anything a
// server says before it has checked the MAC (not registered, KEY
// mismatch, integrity required, invalid attributes, try later...) may come
// unsigned, because the server has no KEY it could prove.
func signedOnly(r wire.Reason) bool {
	switch r {
	case wire.ReasonAddressMismatch, wire.ReasonNotBound, wire.ReasonRateLimited,
		wire.ReasonStale, wire.ReasonPeerUnreachable:
		return true
	}
	return false
}

func (c *Client) introduced(m *wire.Message) bool {
	if c.cfg.OnIntroduce == nil {
		return true
	}
	in := Introduction{
		Peer:       m.SourceID,
		Addresses:  udpFirst(m.Addresses[:m.NumAddresses]),
		Candidates: append([]wire.Address(nil), m.Candidates[:m.NumCandidates]...),
		Secret:     m.Secret,
	}
	c.cfg.OnIntroduce(in)
	return true
}

func (c *Client) handleSTUN(b []byte) bool {
	if len(b) != wire.MessageLength(b) {
		return false
	}
	id := wire.TransactionID(b[8:wire.HeaderSize])
	c.mu.Lock()
	t := c.pending[id]
	live := t != nil && !t.finished
	c.mu.Unlock()
	if !live {
		return false
	}
	var addr netip.AddrPort
	err := errWrongKind
	if t.kind == wire.KindSTUN {
		addr, err = parseBindingSuccess(b)
	}
	c.mu.Lock()
	if t.finished { // another copy won the race
		c.mu.Unlock()
		return false
	}
	if err != nil {
		t.bad = err
	} else {
		t.mapped = addr
		t.finished = true
	}
	ok := t.finished
	c.mu.Unlock()
	if ok {
		t.done <- struct{}{}
	}
	return ok
}

// parseBindingSuccess validates a STUN Binding success response (stunx's
// strict framing and FINGERPRINT check, then pion) and returns its
// XOR-MAPPED-ADDRESS, unmapped.
func parseBindingSuccess(b []byte) (netip.AddrPort, error) {
	var m stun.Message
	if err := stunx.Decode(b, &m); err != nil {
		if errors.Is(err, stunx.ErrFingerprint) {
			return netip.AddrPort{}, errSTUNFingerprint
		}
		return netip.AddrPort{}, errSTUNDecode
	}
	if m.Type != stun.BindingSuccess {
		return netip.AddrPort{}, errSTUNNotSuccess
	}
	var xa stun.XORMappedAddress
	if err := xa.GetFrom(&m); err != nil {
		return netip.AddrPort{}, errSTUNNoMapped
	}
	ip, ok := netip.AddrFromSlice(xa.IP)
	if !ok || ip.IsUnspecified() || xa.Port <= 0 || xa.Port > 0xFFFF {
		return netip.AddrPort{}, errSTUNNoMapped
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)), nil
}

// newTxn registers a new transaction with a fresh random ID.
func (c *Client) newTxn(kind wire.Kind, method wire.Method, intro bool) (*txn, wire.TransactionID, error) {
	t := &txn{kind: kind, method: method, intro: intro, done: make(chan struct{}, 1)}
	var id wire.TransactionID
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.failed != nil {
		return nil, id, c.failed
	}
	for {
		rand.Read(id[:])
		if c.pending[id] == nil {
			break
		}
	}
	c.pending[id] = t
	return t, id, nil
}

// roundTrip sends req (whose transaction t is registered under id) with the
// retransmission schedule and waits for t to finish. what names the request
// in errors.
func (c *Client) roundTrip(ctx context.Context, t *txn, id wire.TransactionID, req []byte, what string) error {
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	if c.cfg.Reliable {
		return c.wait(ctx, t, req, what, 1, c.cfg.Timeout)
	}
	return c.wait(ctx, t, req, what, c.cfg.MaxAttempts, c.cfg.RTO)
}

// wait runs the transmissions. For a reliable transport attempts is 1 and
// first is the whole timeout; otherwise the waits are first, 2·first, ...
// and LastWait·first after the final transmission.
func (c *Client) wait(ctx context.Context, t *txn, req []byte, what string, attempts int, first time.Duration) error {
	if err := ctx.Err(); err != nil {
		return c.ctxError(what, err)
	}
	start := time.Now()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var sendErr error
	step := first
	for n := 1; n <= attempts; n++ {
		if n > 1 && t.restamp != nil {
			// A signed request stays fresh for its whole retransmission
			// schedule (39.5 s) although the server's window is 30 s.
			t.restamp(req)
		}
		if err := c.cfg.Send(req); err != nil {
			if c.cfg.Reliable || errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("ewf client: sending %s to %s: %w", what, c.cfg.Server, err)
			}
			// A UDP send can fail transiently (ENOBUFS, a route
			// flap); the next attempt may go through.
			sendErr = fmt.Errorf("sending: %w", err)
			c.log.Debug("send failed", "request", what, "attempt", n, "err", err)
		} else if c.log.Enabled(ctx, slog.LevelDebug) {
			c.log.Debug("sent", "request", what, "server", c.cfg.Server, "attempt", n)
		}
		d := step
		if n == attempts && !c.cfg.Reliable {
			d = sat(first, int64(c.cfg.LastWait))
		}
		if timer == nil {
			timer = time.NewTimer(d)
		} else {
			timer.Reset(d)
		}
		select {
		case <-t.done:
			return t.err
		case <-ctx.Done():
			return c.ctxError(what, ctx.Err())
		case <-timer.C:
		}
		step = sat(step, 2)
	}
	c.mu.Lock()
	last := t.bad
	c.mu.Unlock()
	if last != nil {
		last = fmt.Errorf("%w: %w", ErrBadResponse, last)
	} else {
		last = sendErr
	}
	return &TimeoutError{Request: what, Server: c.cfg.Server, Attempts: attempts, Waited: time.Since(start), Last: last}
}

func (c *Client) ctxError(what string, err error) error {
	return fmt.Errorf("ewf client: %s to %s abandoned: %w", what, c.cfg.Server, err)
}

// sat returns d·k, saturating instead of overflowing for absurd configs.
func sat(d time.Duration, k int64) time.Duration {
	const max = time.Duration(1<<63 - 1)
	if k != 0 && d > max/time.Duration(k) {
		return max
	}
	return d * time.Duration(k)
}

// udpFirst copies addrs with the UDP address first.
func udpFirst(addrs []wire.Address) []wire.Address {
	out := make([]wire.Address, 0, len(addrs))
	for _, a := range addrs {
		if a.Transport == wire.TransportUDP {
			out = append(out, a)
		}
	}
	for _, a := range addrs {
		if a.Transport != wire.TransportUDP {
			out = append(out, a)
		}
	}
	return out
}
