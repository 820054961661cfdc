package client

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
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
	resp, err := c.request(ctx, wire.MethodRegister, &m)
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
	m.SetKey(key)
	if err := m.AddAddress(public); err != nil {
		return fmt.Errorf("ewf client: BIND %v: %w", public, err)
	}
	_, err := c.request(ctx, wire.MethodBind, &m)
	return err
}

// Query asks for peer's bound public addresses, UDP first.
// ErrNotRegistered and ErrNotBound say why there are none.
func (c *Client) Query(ctx context.Context, peer wire.ID) ([]wire.Address, error) {
	var m wire.Message
	m.SetID(peer)
	resp, err := c.request(ctx, wire.MethodQuery, &m)
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
	m.SetKey(key)
	if len(candidates) > wire.MaxCandidates {
		return Introduction{}, fmt.Errorf("ewf client: introduction with %d candidates: %w", len(candidates), wire.ErrTooManyCandidates)
	}
	for _, a := range candidates {
		if err := m.AddCandidate(a); err != nil {
			return Introduction{}, fmt.Errorf("ewf client: candidate %v: %w", a, err)
		}
	}
	resp, err := c.request(ctx, wire.MethodQuery, &m)
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

// request sends the X request m (type and transaction ID are set here),
// and returns the success response or the error.
func (c *Client) request(ctx context.Context, method wire.Method, m *wire.Message) (*wire.Message, error) {
	m.Type = wire.Type{Method: method, Class: wire.ClassRequest}
	if err := m.Check(); err != nil {
		return nil, fmt.Errorf("ewf client: building %v: %w", method, err)
	}
	t, id, err := c.newTxn(wire.KindX, method, m.IsIntroduction())
	if err != nil {
		return nil, err
	}
	m.TransactionID = id
	req := m.AppendTo(make([]byte, 0, m.Len()))
	if err := c.roundTrip(ctx, t, id, req, method.String()); err != nil {
		return nil, err
	}
	if t.resp.Type.Class == wire.ClassError {
		return nil, &ReasonError{Method: method, Reason: t.resp.Reason, Server: c.cfg.Server}
	}
	return &t.resp, nil
}
