package client

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"

	"github.com/ewf-project/ewf/wire"
)

// Signal is what one peer of an introduction sends the other through the
// server after the introduction (SIGNAL, docs/PROTOCOL.md §20): more
// candidates, relayed addresses, its NAT class.
type Signal struct {
	Peer       wire.ID        // the sender (for OnSignal: the other peer)
	Candidates []wire.Address // host candidates: LAN and global addresses, UDP and TCP ports
	Relayed    []wire.Address // relayed (TURN) addresses
	NATClass   wire.NATClass  // valid when HasNAT
	HasNAT     bool
	// Refused: the sender will not connect to the receiver (REFUSED,
	// docs/PROTOCOL.md §20.7), for the reason Refusal
	// (wire.ReasonRefused: not on its allow list).
	Refused bool
	Refusal wire.Reason
	MAC     [wire.MACSize]byte // SIGNAL_MAC as received (OnSignal) or computed (Verify)
}

// message fills m's signalled attributes from s; it fails on a bad or
// excess address.
func (s *Signal) message(m *wire.Message) error {
	if len(s.Candidates) > wire.MaxCandidates {
		return fmt.Errorf("%d candidates: %w", len(s.Candidates), wire.ErrTooManyCandidates)
	}
	for _, a := range s.Candidates {
		if err := m.AddCandidate(a); err != nil {
			return fmt.Errorf("candidate %v: %w", a, err)
		}
	}
	for _, a := range s.Relayed {
		if err := m.AddRelayed(a); err != nil {
			return fmt.Errorf("relayed %v: %w", a, err)
		}
	}
	if s.HasNAT {
		m.SetNATClass(s.NATClass)
	}
	if s.Refused {
		m.SetRefused(s.Refusal)
	}
	return nil
}

// signalMAC computes SIGNAL_MAC for what m signals from from to to.
func signalMAC(secret wire.Secret, from, to wire.ID, m *wire.Message) [wire.MACSize]byte {
	var buf [wire.MaxSignalMACInput]byte
	h := hmac.New(sha256.New, secret[:])
	h.Write(wire.AppendSignalMACInput(buf[:0], from, to, m))
	var mac [wire.MACSize]byte
	h.Sum(mac[:0])
	return mac
}

// Verify reports whether s, received by self, carries a SIGNAL_MAC made
// with secret: it came from s.Peer within the introduction that made
// secret, unchanged. A Signal that does not verify must be dropped.
func (s *Signal) Verify(self wire.ID, secret wire.Secret) bool {
	var m wire.Message
	if s.message(&m) != nil {
		return false
	}
	want := signalMAC(secret, s.Peer, self, &m)
	return hmac.Equal(want[:], s.MAC[:])
}

func (c *Client) signalled(m *wire.Message) bool {
	if c.cfg.OnSignal == nil {
		return true
	}
	s := Signal{
		Peer:       m.SourceID,
		Candidates: append([]wire.Address(nil), m.Candidates[:m.NumCandidates]...),
		Relayed:    append([]wire.Address(nil), m.Relayed[:m.NumRelayed]...),
		NATClass:   m.NATClass,
		HasNAT:     m.Has(wire.AttrNATClass),
		Refused:    m.Has(wire.AttrRefused),
		Refusal:    m.Refused,
		MAC:        m.SignalMAC,
	}
	c.cfg.OnSignal(s)
	return true
}

// Signal sends s to peer through the server, as self (proven by key),
// within the introduction that made secret: the server relays it to the
// peer's UDP binding and answers once it has. s.Peer is ignored (the
// recipient is peer) and s.MAC is computed here. ErrNotBound means the
// peer (or self) has no live binding; ErrPeerUnreachable that the server
// could not reach it.
func (c *Client) Signal(ctx context.Context, self wire.ID, key wire.Key, peer wire.ID, secret wire.Secret, s Signal) error {
	var m wire.Message
	m.SetID(peer)
	m.SetSourceID(self)
	if err := s.message(&m); err != nil {
		return fmt.Errorf("ewf client: SIGNAL: %w", err)
	}
	m.SetSignalMAC(signalMAC(secret, self, peer, &m))
	_, err := c.RequestWithKey(ctx, wire.MethodSignal, &m, key)
	return err
}
