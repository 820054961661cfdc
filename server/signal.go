package server

import (
	"crypto/rand"
	"net/netip"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// signal handles a SIGNAL request (docs/PROTOCOL.md §20): the sender
// proves it owns SOURCE_ID with KEY, must itself be bound (so it is a live
// client, and its candidates are worth something), and the signalled
// attributes go to the peer named by ID as a SIGNAL indication over the
// peer's UDP binding. The server does not check SIGNAL_MAC (it is keyed by
// an introduction SECRET the server does not keep) and keeps no state: the
// peer drops a SIGNAL no introduction of its own vouches for.
func (h *Handler) signal(src netip.AddrPort, now time.Time, sec uint32, ns int64, out []byte) []byte {
	s, m := h.s, &h.req
	// With a shared store, what is not in memory here (a KEY, a binding
	// at another server) is read by a cluster worker (deferShared,
	// cluster.go), and a peer bound at another server gets the SIGNAL
	// from that server (deliverToBound).
	key, ok := s.st.Lookup(m.SourceID)
	if !ok {
		if h.deferShared() {
			return out
		}
		return h.fail(out, kindSignal, wire.ReasonNotRegistered)
	}
	// The KEY form or the TIMESTAMP+MAC proof of docs/PROTOCOL.md §18,
	// as for an introduction; once a MAC verified, every answer is signed.
	if r, o := h.prove((*wire.Key)(&key), src, now, sec); r != 0 {
		if r == wire.ReasonKeyMismatch && h.deferShared() {
			return out
		}
		return h.refuse(out, kindSignal, r, o)
	}
	if _, n, _ := h.bound(&m.SourceID, sec); n == 0 {
		if h.deferShared() {
			return out
		}
		return h.fail(out, kindSignal, wire.ReasonNotBound)
	}
	te, _, tsrv := h.bound(&m.ID, sec)
	ttr, ok := deliveryTransport(&te)
	if !ok {
		if h.deferShared() {
			return out
		}
		_, _, why := s.lookupUDP(&m.ID, sec)
		return h.fail(out, kindSignal, why)
	}
	// Charged per sender ID at the introduction rate: a client sends one
	// SIGNAL per introduction it receives and a few more per attempt.
	if !s.signalLim.allow((*[16]byte)(&m.SourceID), ns) {
		return h.fail(out, kindSignal, wire.ReasonRateLimited)
	}
	ind := &h.resp
	ind.Reset()
	ind.Type = wire.Type{Method: wire.MethodSignal, Class: wire.ClassIndication}
	rand.Read(ind.TransactionID[:])
	ind.SetSourceID(m.SourceID)
	ind.CopySignalled(m)
	ind.SetSignalMAC(m.SignalMAC)
	if ok, why := h.deliverToBound(&m.ID, ttr, &te, &tsrv, ind.AppendTo(h.ind[:0]), ns); !ok {
		return h.fail(out, kindSignal, why)
	}
	s.met.count(kindSignal, outOK)
	return h.finish(h.success(), out)
}

// Deliver sends the indication b to the client bound under peer, over the
// peer's UDP binding and from the socket that binding came in on (or,
// without one, over the connection of its TCP binding), as an
// INTRODUCE or SIGNAL indication is sent. It is the one place where the
// server talks to a client that did not just ask: every delivery is charged
// to the peer's address at the per-source rate (so that however many IDs
// point at one address, it receives no more than that), and b must be an
// X indication of at most wire.MaxMessageSize bytes. Reply does not keep b.
//
// ok is false when nothing was sent, and why says why, as the reason to
// answer the requester: ReasonNotRegistered (no such peer),
// ReasonNotBound (no live UDP binding here), ReasonRateLimited, or
// ReasonPeerUnreachable (the binding's socket is gone). A cross-server
// deployment calls Deliver on the server that holds the peer's binding.
func (s *Server) Deliver(now time.Time, peer wire.ID, b []byte) (ok bool, why wire.Reason) {
	if wire.Classify(b) != wire.KindX || wire.MessageLength(b) != len(b) || len(b) > wire.MaxMessageSize ||
		b[0]&0x01 != 0 || b[1]&0x10 == 0 {
		// Not an X indication (class bits C1=0, C0=1): refuse rather than
		// send responses or requests to a client in the server's name.
		return false, wire.ReasonInvalidAttributes
	}
	sec, ns := s.clock(now)
	dst, ok, why := s.lookupUDP(&peer, sec)
	if !ok {
		// A client whose UDP is blocked is reached over the connection
		// of its TCP binding (tcpdeliver.go).
		if te, _ := s.bind.get(&peer, sec); why == wire.ReasonNotBound && te[wire.TransportTCP].valid() {
			return s.sendTCP(&peer, te[wire.TransportTCP], b, ns)
		}
		return false, why
	}
	return s.send(dst, b, ns)
}

// lookupUDP returns peer's live UDP binding, or why there is none.
func (s *Server) lookupUDP(peer *wire.ID, sec uint32) (bindSlot, bool, wire.Reason) {
	te, _ := s.bind.get(peer, sec)
	if !te[wire.TransportUDP].valid() {
		// Bindings first, the store only to tell the two failures apart,
		// as QUERY does.
		if _, ok := s.st.Lookup(*peer); !ok {
			return bindSlot{}, false, wire.ReasonNotRegistered
		}
		return bindSlot{}, false, wire.ReasonNotBound
	}
	return te[wire.TransportUDP], true, 0
}

// send sends b over the UDP binding dst, charged to dst's address.
func (s *Server) send(dst bindSlot, b []byte, ns int64) (bool, wire.Reason) {
	to := dst.addrPort()
	dk := sourceKey(to.Addr())
	if !s.dstLim.allow(&dk, ns) {
		return false, wire.ReasonRateLimited
	}
	udp := *s.udp.Load()
	if int(dst.via) >= len(udp) {
		return false, wire.ReasonPeerUnreachable
	}
	udp[dst.via].Reply(b, to)
	return true, 0
}
