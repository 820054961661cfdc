package ewf

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"

	"golang.org/x/net/ipv4"

	"github.com/ewf-project/ewf/wire"
)

// A node's one UDP socket carries three protocols: STUN and X with the
// server, PUNCH with peers, and QUIC with peers (docs/PROTOCOL.md §13).
//
// quic-go owns the socket: the node hands its *net.UDPConn to a
// quic.Transport, so that quic-go keeps what it does for a real UDP socket
// (recvmmsg batches, GSO on send, ECN, the don't-fragment bit for path MTU
// discovery, its receive buffer sizing). quic-go's own way to share a
// socket, Transport.ReadNonQUICPacket, does not fit: it takes only packets
// whose two leading bits are 00, and X's are 11, the shape of a QUIC long
// header, so quic-go would hand every X message (server answers, INTRODUCE,
// PUNCH) to its server, which drops them. Instead sockConn gives quic-go
// the socket with one method added: ReadBatch, which quic-go uses in place
// of its own recvmmsg wrapper when the connection has one. It reads a batch,
// takes STUN and X out for their owners, and returns the rest to quic-go.
//
// Sends of STUN, X and PUNCH go through Transport.WriteTo.
type sockConn struct {
	*net.UDPConn
	batch   *ipv4.PacketConn // recvmmsg on the same socket, as quic-go's own
	servers []netip.AddrPort // Config.Server's: the node may move among them (failover.go)

	toServer func(b []byte)                             // rendezvous client
	toPunch  func(m *wire.Message, from netip.AddrPort) // PUNCH from peers

	msg wire.Message // decode scratch; ReadBatch has one caller, quic-go's reader

	diverts   atomic.Pointer[divertTable] // direct peer addresses of moved relayed connections (migrate.go)
	dropPeers *atomic.Bool                // tests: Config.dropPeers

	control atomic.Uint64 // STUN and X datagrams taken out, for tests
	dropped atomic.Uint64 // STUN or X not for us (not from the server, not PUNCH)

	moved     atomic.Pointer[movedTable] // QUIC sends to peers that moved (roam.go); nil: none
	unpinned  atomic.Uint64              // sends repeated without quic-go's source pin (roam.go)
	lostSends atomic.Uint64              // QUIC packets dropped on a network that was down (roam.go)
}

func newSockConn(c *net.UDPConn, servers []netip.AddrPort) *sockConn {
	return &sockConn{UDPConn: c, batch: ipv4.NewPacketConn(c), servers: servers}
}

// ReadBatch reads datagrams into ms like x/net's ipv4.PacketConn.ReadBatch
// and keeps only those for QUIC; it returns when at least one is left or
// on an error. quic-go's reader pairs each ms[i] with a buffer of its own,
// so a kept datagram behind a removed one is copied into the earlier slot
// (rare: the control traffic is a few packets a second), never moved.
func (s *sockConn) ReadBatch(ms []ipv4.Message, flags int) (int, error) {
	for {
		n, err := s.batch.ReadBatch(ms, flags)
		if err != nil {
			if n == 0 && isICMPError(err) {
				continue // an ICMP error about an earlier send; keep reading
			}
			return n, err
		}
		kept := 0
		for i := range n {
			if s.route(&ms[i]) {
				continue
			}
			if i != kept {
				moveMessage(&ms[kept], &ms[i])
			}
			kept++
		}
		if kept > 0 {
			return kept, nil
		}
	}
}

// route hands a STUN or X datagram to its owner and reports true, or
// reports false for a datagram that goes to QUIC.
func (s *sockConn) route(m *ipv4.Message) bool {
	b := m.Buffers[0][:m.N]
	kind := wire.Classify(b)
	if kind == wire.KindOther {
		return s.divert(m) // QUIC of a relayed connection that moved (migrate.go)
	}
	s.control.Add(1)
	ua, ok := m.Addr.(*net.UDPAddr)
	if !ok {
		s.dropped.Add(1)
		return true
	}
	from := ua.AddrPort()
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	switch {
	case s.fromServer(from):
		s.toServer(b)
	case kind == wire.KindX && s.msg.Decode(b) == nil && s.msg.Type.Method == wire.MethodPunch:
		s.toPunch(&s.msg, from)
	default:
		s.dropped.Add(1)
	}
	return true
}

// moveMessage copies src's datagram into dst's buffers.
func moveMessage(dst, src *ipv4.Message) {
	dst.N = copy(dst.Buffers[0], src.Buffers[0][:src.N])
	dst.NN = copy(dst.OOB, src.OOB[:src.NN])
	dst.Flags = src.Flags
	dst.Addr = src.Addr
}

func isICMPError(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETUNREACH)
}

func (s *sockConn) fromServer(from netip.AddrPort) bool {
	for _, a := range s.servers {
		if from == a {
			return true
		}
	}
	return false
}
