package ewf

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/wire"
)

// Roaming: an established QUIC connection survives an address change of
// either peer (docs/PROTOCOL.md §24).
//
// QUIC (RFC 9000 §9) lets only the client migrate, and quic-go fixes a
// client connection's remote address for its life. A listener is the QUIC
// server of its connections, so when its public address changes (a NAT
// rebinding, Wi-Fi → wired) its dialers keep sending to the old address.
// The node that sees its own public address change (its binding refresh
// reports it) SIGNALs every peer it has a live connection with its new
// candidates, under that connection's introduction SECRET, and punches
// towards the peer's address on the connection. The peer punches towards
// the new candidates; once a MAC'd PUNCH answers, the path is known, and a
// QUIC client translates, in the node's socket, its connection's fixed
// remote address into the new path (sockConn.WriteMsgUDP). QUIC
// retransmits what was lost meanwhile, and the connection keeps its
// streams. A QUIC server needs no translation: quic-go validates and
// follows a client whose address changed (RFC 9000 §9.3) once the client's
// packets get through, which the punch makes possible.

// liveConn is a direct QUIC connection on the node's own socket that can
// follow a move.
type liveConn struct {
	peer   wire.ID
	secret wire.Secret // its introduction's: authenticates SIGNAL and PUNCH
	conn   *Conn
	qc     *quic.Conn
	client bool           // this node dialled: quic-go sends to remote for ever
	remote netip.AddrPort // the connection's remote address as quic-go holds it
	to     netip.AddrPort // client: where remote's packets go now (valid once moved)
	added  time.Time
}

// movedTable maps a QUIC client connection's fixed remote address to the
// peer's current one. It is replaced, never changed, so that the send path
// reads it without a lock.
type movedTable map[netip.AddrPort]*net.UDPAddr

// WriteMsgUDP is how quic-go sends on the node's socket (its OOB path). A
// QUIC packet to a peer that moved goes to the peer's new address; STUN,
// X and PUNCH are sent to exactly where they are addressed (a punch must
// be able to try the old address again, for a peer that moves back).
//
// It also keeps a host's own address change from ending connections. A
// send that fails because the source address quic-go pinned is gone is
// sent again without the pin (unpin), and a QUIC packet that cannot leave
// because the network is down for a moment (no route, interface down)
// counts as lost on the way: quic-go would otherwise end the connection
// on the first failed send, and QUIC retransmits what is lost.
func (s *sockConn) WriteMsgUDP(b, oob []byte, addr *net.UDPAddr) (int, int, error) {
	if t := s.moved.Load(); t != nil && addr != nil {
		if to, ok := (*t)[unmapped(addr.AddrPort())]; ok && wire.Classify(b) == wire.KindOther {
			addr = to
		}
	}
	n, oobn, err := s.UDPConn.WriteMsgUDP(b, oob, addr)
	if err == nil {
		return n, oobn, nil
	}
	if len(oob) > 0 && sourceGone(err) {
		if o, ok := unpin(oob); ok {
			s.unpinned.Add(1)
			if n, _, err = s.UDPConn.WriteMsgUDP(b, o, addr); err == nil {
				return n, len(oob), nil
			}
		}
	}
	if networkDown(err) && wire.Classify(b) == wire.KindOther {
		s.lostSends.Add(1)
		return len(b), len(oob), nil
	}
	return n, oobn, err
}

// sourceGone reports a send error that a pinned source address or
// interface the host no longer has can cause.
func sourceGone(err error) bool {
	return errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EADDRNOTAVAIL) || networkDown(err)
}

// networkDown reports a send error of a network that is (for now) gone:
// the datagram is lost, the socket is fine.
func networkDown(err error) bool {
	return errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, syscall.ENETDOWN) || errors.Is(err, syscall.EADDRNOTAVAIL) || errors.Is(err, syscall.EPERM)
}

// track registers a direct QUIC connection made on the node's own socket,
// until it ends. Connections on a birthday socket or through a relay are
// not tracked: they cannot follow a move.
func (n *Node) track(c *Conn, secret wire.Secret, isClient bool) {
	qc := c.qc
	la, ok := qc.LocalAddr().(*net.UDPAddr)
	ra, ok2 := qc.RemoteAddr().(*net.UDPAddr)
	if !ok || !ok2 || la.Port != n.sock.LocalAddr().(*net.UDPAddr).Port {
		return
	}
	lc := &liveConn{peer: c.peer, secret: secret, conn: c, qc: qc, client: isClient, remote: unmapped(ra.AddrPort()), added: time.Now()}
	n.mu.Lock()
	if n.live == nil {
		n.live = make(map[*quic.Conn]*liveConn)
	}
	n.live[qc] = lc
	n.mu.Unlock()
	context.AfterFunc(qc.Context(), func() {
		n.mu.Lock()
		delete(n.live, qc)
		moved := lc.to.IsValid()
		n.mu.Unlock()
		if moved {
			n.rebuildMoved()
		}
	})
}

// rebuildMoved rebuilds the socket's translation table from the live
// client connections whose peer moved.
func (n *Node) rebuildMoved() {
	n.mu.Lock()
	defer n.mu.Unlock()
	var t movedTable
	for _, lc := range n.live {
		if lc.client && lc.to.IsValid() && lc.to != lc.remote {
			if t == nil {
				t = make(movedTable)
			}
			t[lc.remote] = net.UDPAddrFromAddrPort(lc.to)
		}
	}
	if t == nil {
		n.sc.moved.Store(nil)
		return
	}
	n.sc.moved.Store(&t)
}

// liveWith returns the live connections with peer, newest first.
// n.mu is held.
func (n *Node) liveWith(peer wire.ID) []*liveConn {
	var out []*liveConn
	for _, lc := range n.live {
		if lc.peer == peer {
			out = append(out, lc)
		}
	}
	slices.SortFunc(out, func(a, b *liveConn) int { return b.added.Compare(a.added) })
	return out
}

// current is where lc's packets go now. n.mu is held.
func (lc *liveConn) current() netip.AddrPort {
	if lc.client {
		if lc.to.IsValid() {
			return lc.to
		}
		return lc.remote
	}
	if ra, ok := lc.qc.RemoteAddr().(*net.UDPAddr); ok {
		return unmapped(ra.AddrPort()) // quic-go's, after any migration of the client
	}
	return lc.remote
}

// roamed runs when the node's public UDP address changed from old to now
// while it is bound: each peer with a live connection learns the new
// candidates by SIGNAL, and both sides punch.
func (n *Node) roamed(old, now netip.AddrPort) {
	if n.ctx.Err() != nil {
		return
	}
	n.mu.Lock()
	peers := map[wire.ID][]*liveConn{}
	for _, lc := range n.live {
		if _, ok := peers[lc.peer]; !ok {
			peers[lc.peer] = n.liveWith(lc.peer)
		}
	}
	targets := map[wire.ID][]netip.AddrPort{}
	for p, lcs := range peers {
		for _, lc := range lcs {
			if c := lc.current(); !slices.Contains(targets[p], c) {
				targets[p] = append(targets[p], c)
			}
		}
	}
	n.mu.Unlock()
	if len(peers) == 0 {
		return
	}
	n.log.Info("public address changed; telling connected peers", "from", old, "to", now, "peers", len(peers))
	cands := append([]wire.Address{{Transport: wire.TransportUDP, AddrPort: now}}, n.candidates()...)
	if len(cands) > wire.MaxCandidates {
		cands = cands[:wire.MaxCandidates]
	}
	for p, lcs := range peers {
		secret := lcs[0].secret // the newest connection's introduction: the peer holds it too
		n.follow(p, secret, targets[p])
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.signalMove(p, secret, cands)
		}()
	}
}

// signalMove SIGNALs cands to peer, retrying a few times: the server may
// itself just have come back (a move often comes with a lost path to it).
func (n *Node) signalMove(peer wire.ID, secret wire.Secret, cands []wire.Address) {
	for try := 0; try < 4; try++ {
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.PunchTimeout)
		err := n.ctl().Signal(ctx, n.self, n.currentKey(), peer, secret, client.Signal{Candidates: cands})
		cancel()
		if err == nil || n.ctx.Err() != nil {
			return
		}
		n.log.Debug("SIGNAL of a move", "peer", peer, "err", err)
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(time.Duration(try+1) * 500 * time.Millisecond):
		}
	}
}

// roamSignal handles a SIGNAL that tells of a peer's move: one with
// candidates only (no NAT_CLASS, no RELAYED) that verifies under the SECRET
// of a live connection with its sender while no punch of that
// introduction runs (a SIGNAL during the punch only adds candidates to it,
// onSignal). It reports whether it took the SIGNAL.
func (n *Node) roamSignal(sig client.Signal) bool {
	if len(sig.Relayed) > 0 || sig.HasNAT {
		// A move SIGNAL carries candidates only; these belong to a punch
		// or a relay (§20.4), even when they come after the connection.
		return false
	}
	n.mu.Lock()
	lcs := n.liveWith(sig.Peer)
	a := n.attempts[sig.Peer]
	n.mu.Unlock()
	if len(lcs) == 0 {
		return false
	}
	var secret wire.Secret
	found := false
	for _, lc := range lcs {
		if sig.Verify(n.self, lc.secret) {
			secret, found = lc.secret, true
			break
		}
	}
	if !found {
		return false
	}
	if a != nil && a.secret == secret && !a.finished() {
		return false // the connection's own punch still runs
	}
	var udp []netip.AddrPort
	for _, c := range sig.Candidates {
		if c.Transport == wire.TransportUDP {
			udp = append(udp, c.AddrPort)
		}
	}
	if len(udp) == 0 {
		return false
	}
	n.log.Info("peer moved; punching towards its new address", "peer", sig.Peer, "candidates", udp)
	n.follow(sig.Peer, secret, udp)
	return true
}

// follow punches towards targets under secret and, once a path answers,
// points this node's QUIC client connections with peer at it.
func (n *Node) follow(peer wire.ID, secret wire.Secret, targets []netip.AddrPort) {
	var addrs []wire.Address
	for _, t := range targets {
		addrs = append(addrs, wire.Address{Transport: wire.TransportUDP, AddrPort: t})
	}
	a, err := n.startAttempt(peer, secret, nil, addrs, false)
	if err != nil {
		n.log.Warn("punch after a move", "peer", peer, "err", err)
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.PunchTimeout+time.Second)
		defer cancel()
		path, _, err := a.wait(ctx)
		if err != nil {
			n.log.Warn("no path after a move", "peer", peer, "err", err)
			return
		}
		if n.pointAt(peer, unmapped(path)) {
			n.log.Info("connection follows the peer", "peer", peer, "path", path)
		}
	}()
}

// pointAt sends the QUIC packets of this node's client connections with
// peer to path from now on, and reports whether any changed.
func (n *Node) pointAt(peer wire.ID, path netip.AddrPort) bool {
	changed := false
	n.mu.Lock()
	for _, lc := range n.live {
		if lc.peer == peer && lc.client && lc.current() != path {
			lc.to = path
			changed = true
			if path == lc.remote {
				lc.conn.roamed.Store(nil) // back where it began
			} else {
				lc.conn.roamed.Store(&path)
			}
		}
	}
	n.mu.Unlock()
	if changed {
		n.rebuildMoved()
	}
	return changed
}

// finished reports whether the attempt's machine is Connected or Failed.
func (a *attempt) finished() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}
