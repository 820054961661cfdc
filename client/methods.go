package client

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/integrity"
)

// PublicAddress asks the server for this client's public address with a
// STUN Binding request: the XOR-MAPPED-ADDRESS of the answer, unmapped.
func (c *Client) PublicAddress(ctx context.Context) (netip.AddrPort, error) {
	t, id, err := c.newTxn(wire.KindSTUN, 0, false)
	if err != nil {
		return netip.AddrPort{}, err
	}
	req := stunBindingRequest(id)
	if err := c.roundTrip(ctx, t, id, req, "STUN Binding"); err != nil {
		return netip.AddrPort{}, err
	}
	return t.mapped, nil
}

// stunBindingRequest encodes a Binding request with FINGERPRINT.
func stunBindingRequest(id wire.TransactionID) []byte {
	m := stun.New()
	m.TransactionID = id
	m.Type = stun.BindingRequest
	m.WriteHeader()
	_ = stun.Fingerprint.AddTo(m) // cannot fail on a fresh message
	return m.Raw
}

// Register asks the server for a KEY for id. ErrIDConflict means the
// server already holds id (under a KEY this client does not have).
func (c *Client) Register(ctx context.Context, id wire.ID) (wire.Key, error) {
	var m wire.Message
	m.SetID(id)
	resp, err := c.request(ctx, wire.MethodRegister, &m, nil)
	if err != nil {
		return wire.Key{}, err
	}
	return resp.Key, nil
}

// Bind asks the server to bind id to public, which must be the address
// the server observes for this transport (learnt with PublicAddress over
// the same socket or connection); otherwise it answers ErrAddressMismatch.
func (c *Client) Bind(ctx context.Context, id wire.ID, key wire.Key, public wire.Address) error {
	var m wire.Message
	m.SetID(id)
	if err := m.AddAddress(public); err != nil {
		return fmt.Errorf("ewf client: BIND %v: %w", public, err)
	}
	_, err := c.RequestWithKey(ctx, wire.MethodBind, &m, key)
	return err
}

// Query asks for peer's bound public addresses, UDP first.
// ErrNotRegistered and ErrNotBound say why there are none.
func (c *Client) Query(ctx context.Context, peer wire.ID) ([]wire.Address, error) {
	var m wire.Message
	m.SetID(peer)
	resp, err := c.request(ctx, wire.MethodQuery, &m, nil)
	if err != nil {
		return nil, err
	}
	return udpFirst(resp.Addresses[:resp.NumAddresses]), nil
}

// Introduce is a QUERY with SOURCE_ID and KEY (and up to
// wire.MaxCandidates host candidates): the server answers with the peer's
// addresses and a fresh SECRET, and sends the peer an INTRODUCE indication
// carrying self's addresses, candidates and the same SECRET.
func (c *Client) Introduce(ctx context.Context, self wire.ID, key wire.Key, peer wire.ID, candidates []wire.Address) (Introduction, error) {
	var m wire.Message
	m.SetID(peer)
	m.SetSourceID(self)
	if len(candidates) > wire.MaxCandidates {
		return Introduction{}, fmt.Errorf("ewf client: introduction with %d candidates: %w", len(candidates), wire.ErrTooManyCandidates)
	}
	for _, a := range candidates {
		if err := m.AddCandidate(a); err != nil {
			return Introduction{}, fmt.Errorf("ewf client: candidate %v: %w", a, err)
		}
	}
	resp, err := c.RequestWithKey(ctx, wire.MethodQuery, &m, key)
	if err != nil {
		return Introduction{}, err
	}
	return Introduction{
		Peer:       peer,
		Addresses:  udpFirst(resp.Addresses[:resp.NumAddresses]),
		Candidates: append([]wire.Address(nil), resp.Candidates[:resp.NumCandidates]...),
		Secret:     resp.Secret,
	}, nil
}

// RequestWithKey sends the X request m of the given method, proving key
// (the KEY of the ID the request authenticates) with TIMESTAMP and MAC
// instead of sending it (docs/PROTOCOL.md §18): m must not carry KEY. The
// answer is accepted only when signed with the same key as §18.5 says; a
// forged or tampered one is dropped and the request goes on waiting. It is
// how BIND, introductions and SIGNAL are sent, and how any later request
// that needs a KEY should be.
//
// When the server answers that the TIMESTAMP is stale and says its own
// time, authenticated, the client adopts the difference as its clock
// offset and sends the request once more.
func (c *Client) RequestWithKey(ctx context.Context, method wire.Method, m *wire.Message, key wire.Key) (*wire.Message, error) {
	resp, err := c.request(ctx, method, m, &key)
	var re *ReasonError
	if errors.As(err, &re) && re.Reason == wire.ReasonStale && re.Authenticated && re.serverMs != 0 {
		off := int64(re.serverMs) - time.Now().UnixMilli()
		c.offset.Store(off)
		c.log.Warn("clock differs from the server's; correcting TIMESTAMPs", "server", c.cfg.Server, "offset", time.Duration(off)*time.Millisecond)
		resp, err = c.request(ctx, method, m, &key)
	}
	return resp, err
}

// nowMs is the local clock corrected by the offset learnt from the server.
func (c *Client) nowMs() uint64 { return uint64(time.Now().UnixMilli() + c.offset.Load()) }

// request sends the X request m (type and transaction ID are set here),
// and returns the success response or the error. With key, m is sent in
// the integrity form and its answer must be signed (RequestWithKey).
func (c *Client) request(ctx context.Context, method wire.Method, m *wire.Message, key *wire.Key) (*wire.Message, error) {
	m.Type = wire.Type{Method: method, Class: wire.ClassRequest}
	if key != nil {
		m.SetTimestamp(c.nowMs())
		m.SetMAC([wire.MACSize]byte{})
	}
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("ewf client: building %v: %w", method, err)
	}
	t, id, err := c.newTxn(wire.KindX, method, m.IsIntroduction())
	if err != nil {
		return nil, err
	}
	m.TransactionID = id
	var req []byte
	if key != nil {
		// The Client is not on a hot path: one Signer per request keeps
		// the requester's goroutine off c.sig.
		sig := integrity.NewSigner()
		k := *key
		t.signed, t.key = true, k
		req = sig.Append(make([]byte, 0, m.Len()), m, k[:])
		t.restamp = func(b []byte) { sig.Restamp(b, c.nowMs(), k[:]) }
	} else {
		req = m.AppendTo(make([]byte, 0, m.Len()))
	}
	if err := c.roundTrip(ctx, t, id, req, method.String()); err != nil {
		return nil, err
	}
	if t.resp.Type.Class == wire.ClassError {
		re := &ReasonError{Method: method, Reason: t.resp.Reason, Server: c.cfg.Server, Authenticated: t.authed}
		if t.authed && t.resp.Has(wire.AttrTimestamp) {
			re.serverMs = t.resp.Timestamp
		}
		return nil, re
	}
	return &t.resp, nil
}
