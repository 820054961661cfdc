package server

import (
	"github.com/ewf-project/ewf/wire"
)

// A client whose network drops UDP (docs/PROTOCOL.md §23) holds only a TCP
// binding, and the only way to reach it is the connection that binding
// came in on: the server keeps, per ID bound over TCP, that connection's
// Replier (Server.tcpR), and sends INTRODUCE and SIGNAL over it when the
// target has no UDP binding. A client with both bindings is still reached
// over UDP, as before: the UDP binding is the one punching uses.

// deliveryTransport picks the binding of e that a server-to-peer message
// travels over: UDP when there is one, else TCP.
func deliveryTransport(e *bindEntry) (wire.Transport, bool) {
	switch {
	case e[wire.TransportUDP].valid():
		return wire.TransportUDP, true
	case e[wire.TransportTCP].valid():
		return wire.TransportTCP, true
	}
	return 0, false
}

// closedReplier is a Replier that knows when it can no longer send (a
// TCP connection that ended).
type closedReplier interface {
	isClosed() bool
}

// setTCPReplier records r as the connection id's TCP binding came in on.
func (s *Server) setTCPReplier(id *wire.ID, r Replier) {
	s.tcpMu.Lock()
	s.tcpR[*id] = r
	s.tcpMu.Unlock()
}

// sendTCP sends b over the connection of id's TCP binding dst, charged to
// dst's address like a UDP delivery (Server.send). ok is false with
// ReasonPeerUnreachable when that connection is gone (the binding outlives
// it until it expires).
func (s *Server) sendTCP(id *wire.ID, dst bindSlot, b []byte, ns int64) (bool, wire.Reason) {
	s.tcpMu.Lock()
	r := s.tcpR[*id]
	if c, ok := r.(closedReplier); ok && c.isClosed() {
		delete(s.tcpR, *id)
		r = nil
	}
	s.tcpMu.Unlock()
	if r == nil {
		return false, wire.ReasonPeerUnreachable
	}
	dk := sourceKey(dst.addrPort().Addr())
	if !s.dstLim.allow(&dk, ns) {
		return false, wire.ReasonRateLimited
	}
	r.Reply(b, dst.addrPort())
	return true, 0
}

// sweepTCP forgets the connections of TCP bindings that expired or whose
// connection ended.
func (s *Server) sweepTCP(sec uint32) {
	s.tcpMu.Lock()
	defer s.tcpMu.Unlock()
	for id, r := range s.tcpR {
		e, _ := s.bind.get(&id, sec)
		c, ok := r.(closedReplier)
		if !e[wire.TransportTCP].valid() || (ok && c.isClosed()) {
			delete(s.tcpR, id)
		}
	}
}
