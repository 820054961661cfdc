package ewf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/natdisco"
	"github.com/ewf-project/ewf/wire"
)

// A session is what a node knows of one introduction while it punches:
// the SECRET that authenticates the peer's SIGNALs, and where the peer's
// signalled candidates go (the UDP attempt is found in Node.attempts, the
// TCP race here). One per peer: a new introduction replaces the old.
type session struct {
	secret  wire.Secret
	expires time.Time
	tcp     *tcpTargets // nil unless a TCP race runs for this introduction
	// stopTCP ends the accepting side's TCP race once the peer has
	// connected over QUIC (it chose UDP) or a newer introduction replaced
	// this one: an idle race would go on dialling the peer and hold its
	// registration with the node's TCP acceptor (tcpaccept.go).
	stopTCP context.CancelFunc

	// Guarded by Node.mu.
	peerNAT wire.NATClass // the peer's NAT_CLASS, when hasNAT
	hasNAT  bool
	// peerUDP are the UDP candidates of the SIGNAL that brought peerNAT,
	// set with it so that a birthday decision on the class sees the
	// peer's counter hint too (counterHint, peerCounter).
	peerUDP []netip.AddrPort
	relayed []wire.Address // the peer's relayed addresses, latest SIGNAL
	// udp holds signalled UDP candidates that came before the attempt was
	// started (a loaded host can take longer over the QUERY answer than
	// the peer's SIGNAL takes to arrive); startAttempt adds them.
	udp        []netip.AddrPort
	nsignalled int // valid SIGNALs received
	// refusal is set when the peer refused us in a SIGNAL (REFUSED:
	// we are not on its allow list); refuse, set by Dial, ends the dial
	// with it (watchRefusal).
	refusal error
	refuse  context.CancelCauseFunc
}

// errRefused: the peer answered our introduction with REFUSED (docs/
// PROTOCOL.md §20.7) instead of punching: we are not on its allow list.
var errRefused = errors.New("ewf: the peer refused the introduction")

// watchRefusal makes refuse run with the peer's refusal when one arrives
// for the introduction s, or at once if it came already.
func (n *Node) watchRefusal(s *session, refuse context.CancelCauseFunc) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s.refuse = refuse
	if s.refusal != nil {
		refuse(s.refusal)
	}
}

// refusedErr returns why ctx of a Dial was cancelled if the peer refused
// us, and err otherwise.
func refusedErr(ctx context.Context, err error) error {
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, errRefused) {
		return cause
	}
	return err
}

// errNoIntroduction: a SIGNAL needs the SECRET of a live introduction.
var errNoIntroduction = errors.New("ewf: no live introduction with this peer")

// maxPendingSignals bounds the SIGNALs kept for an introduction the node
// has not heard of yet (the QUERY answer that carries its SECRET may arrive
// after the peer's SIGNAL when a datagram is lost and retransmitted).
const maxPendingSignals = 16

// addSession registers the introduction with peer and replays a SIGNAL that
// came before it, if any. The caller holds no lock.
func (n *Node) addSession(peer wire.ID, secret wire.Secret, tcp *tcpTargets) *session {
	s := &session{secret: secret, tcp: tcp, expires: time.Now().Add(2*n.cfg.PunchTimeout + 30*time.Second)}
	n.mu.Lock()
	now := time.Now()
	for id, old := range n.sessions {
		if now.After(old.expires) {
			delete(n.sessions, id)
		}
	}
	if old := n.sessions[peer]; old != nil && old.stopTCP != nil {
		old.stopTCP()
	}
	n.sessions[peer] = s
	pending, ok := n.pendingSignals[peer]
	delete(n.pendingSignals, peer)
	n.mu.Unlock()
	if ok {
		n.onSignal(pending)
	}
	return s
}

// stopTCPRace ends the TCP race of the introduction with peer whose SECRET
// is secret, if one runs: the peer connected over QUIC instead.
func (n *Node) stopTCPRace(peer wire.ID, secret wire.Secret) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s := n.sessions[peer]; s != nil && s.secret == secret && s.stopTCP != nil {
		s.stopTCP()
	}
}

// onSignal handles a SIGNAL indication from the server: if it verifies
// under the SECRET of the node's introduction with its sender, its UDP
// candidates join the running punch, its TCP candidates the TCP race, and
// its relayed addresses and NAT class are kept for the relay and the
// diagnosis. Anything else is dropped.
func (n *Node) onSignal(sig client.Signal) {
	if n.roamSignal(sig) { // the peer of a live connection moved (roam.go)
		return
	}
	n.mu.Lock()
	s := n.sessions[sig.Peer]
	if s == nil || time.Now().After(s.expires) {
		// Perhaps the introduction's answer has not arrived yet: keep the
		// latest SIGNAL of a few peers until it does.
		if _, ok := n.pendingSignals[sig.Peer]; ok || len(n.pendingSignals) < maxPendingSignals {
			n.pendingSignals[sig.Peer] = sig
		}
		n.mu.Unlock()
		n.log.Debug("SIGNAL for no introduction", "peer", sig.Peer)
		return
	}
	a := n.attempts[sig.Peer]
	n.mu.Unlock()
	if !sig.Verify(n.self, s.secret) {
		// Perhaps it belongs to a newer introduction with the same peer
		// whose answer is still on its way to Dial (the SIGNAL overtook
		// it on this node's goroutines): kept like one for no
		// introduction; addSession tries it under the new SECRET.
		n.mu.Lock()
		if _, ok := n.pendingSignals[sig.Peer]; ok || len(n.pendingSignals) < maxPendingSignals {
			n.pendingSignals[sig.Peer] = sig
		}
		n.mu.Unlock()
		n.log.Debug("SIGNAL dropped: SIGNAL_MAC does not verify", "peer", sig.Peer)
		return
	}
	if sig.Refused {
		err := fmt.Errorf("%w: %w: peer %s (%s)", ErrPeerAuth, errRefused, sig.Peer, sig.Refusal)
		n.mu.Lock()
		if s.refusal == nil {
			s.refusal = err
		}
		if s.refuse != nil {
			s.refuse(s.refusal)
		}
		n.mu.Unlock()
		n.log.Debug("refused by the peer", "peer", sig.Peer, "reason", sig.Refusal)
		return
	}
	var udp, tcp []netip.AddrPort
	for _, c := range sig.Candidates {
		if c.Transport == wire.TransportTCP {
			tcp = append(tcp, c.AddrPort)
		} else {
			udp = append(udp, c.AddrPort)
		}
	}
	n.mu.Lock()
	s.nsignalled++
	if sig.HasNAT {
		s.peerNAT, s.hasNAT, s.peerUDP = sig.NATClass, true, udp
	}
	if len(sig.Relayed) > 0 {
		s.relayed = slices.Clone(sig.Relayed)
	}
	n.mu.Unlock()
	if len(sig.Relayed) > 0 {
		n.relayedSignalled(sig.Peer, sig.Relayed) // relay.go
	}
	added := 0
	if a != nil && a.secret == s.secret {
		added = a.addCandidates(udp)
	} else {
		n.mu.Lock()
		s.udp = append(s.udp, udp...)
		n.mu.Unlock()
	}
	if s.tcp != nil {
		s.tcp.add(tcp)
	}
	n.migrateSignalled(sig.Peer, s.secret, udp) // migrate.go
	n.log.Debug("signalled", "peer", sig.Peer, "candidates", len(sig.Candidates), "udp_added", added,
		"tcp", len(tcp), "relayed", len(sig.Relayed), "nat", sig.HasNAT)
}

// signalBack sends the peer of an introduction this node's own candidates
// (and NAT class and relayed addresses, when known) through the server, in
// the background: the target of an introduction does so at once, since
// INTRODUCE carried only the querier's candidates.
func (n *Node) signalBack(peer wire.ID, secret wire.Secret, relayed []wire.Address) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.PunchTimeout)
		defer cancel()
		if err := n.signal(ctx, peer, secret, relayed); err != nil && n.ctx.Err() == nil {
			n.log.Debug("SIGNAL", "peer", peer, "err", err)
		}
	}()
}

func (n *Node) signal(ctx context.Context, peer wire.ID, secret wire.Secret, relayed []wire.Address) error {
	sig := client.Signal{Candidates: n.candidates(), Relayed: relayed}
	if c, ok := n.NAT(); ok && c.Known() {
		sig.NATClass, sig.HasNAT = c.Wire(), true
		if h, ok := n.counterHint(); ok && len(sig.Candidates) < wire.MaxCandidates {
			sig.Candidates = append(sig.Candidates, h)
		}
	}
	return n.ctl().Signal(ctx, n.self, n.currentKey(), peer, secret, sig)
}

// SignalRelayed tells peer, through the server, this node's candidates
// and the relayed addresses given (the node's TURN allocations), within the
// introduction the node holds with peer. It is the hook of the relay
// client: call it once an allocation is made. It fails with
// errNoIntroduction when no introduction with peer is live.
func (n *Node) SignalRelayed(ctx context.Context, peer ID, relayed []netip.AddrPort) error {
	n.mu.Lock()
	s := n.sessions[peer]
	n.mu.Unlock()
	if s == nil || time.Now().After(s.expires) {
		return errNoIntroduction
	}
	var rel []wire.Address
	for _, r := range relayed {
		rel = append(rel, wire.Address{Transport: wire.TransportUDP, AddrPort: r})
	}
	return n.signal(ctx, peer, s.secret, rel)
}

// PeerRelayed returns the relayed addresses peer signalled within the live
// introduction with it (nil if none): where the relay client sends to.
func (n *Node) PeerRelayed(peer ID) []netip.AddrPort {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.sessions[peer]
	if s == nil {
		return nil
	}
	var out []netip.AddrPort
	for _, r := range s.relayed {
		out = append(out, r.AddrPort)
	}
	return out
}

// peerNATClass returns the NAT class peer signalled in the live
// introduction, if it did.
func (n *Node) peerNATClass(peer wire.ID) (wire.NATClass, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s := n.sessions[peer]; s != nil && s.hasNAT {
		return s.peerNAT, true
	}
	return 0, false
}

// peerCounter returns the port peer's sequential NAT last allocated, from
// the counter hint in its SIGNAL (counterHint): a UDP candidate at its
// public IP pub on another port than pub's.
func (n *Node) peerCounter(peer wire.ID, pub netip.AddrPort) (uint16, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	s := n.sessions[peer]
	if s == nil {
		return 0, false
	}
	return counterIn(s.peerUDP, pub)
}

// counterIn finds the counter hint among a peer's UDP candidates.
func counterIn(cands []netip.AddrPort, pub netip.AddrPort) (uint16, bool) {
	for _, c := range cands {
		c = netip.AddrPortFrom(c.Addr().Unmap(), c.Port())
		if pub.IsValid() && c.Addr() == pub.Addr() && c.Port() != pub.Port() {
			return c.Port(), true
		}
	}
	return 0, false
}

// candidates returns this host's addresses a peer on the same network can
// reach: its interface addresses with the node's UDP port, and its TCP
// ports, one per family (tcp.go): the address and port the TCP binding
// leaves from, and the host side of the other family.
func (n *Node) candidates() []wire.Address {
	addrs := interfaceAddrs()
	n.syncTCPHost(addrs) // an address that came or went since the last time
	udpPort := n.sock.LocalAddr().(*net.UDPAddr).AddrPort().Port()
	var tcpLocals []netip.AddrPort
	for _, t := range n.tcpSides() {
		tcpLocals = append(tcpLocals, t.local)
	}
	return hostCandidates(addrs, udpPort, tcpLocals...)
}

// interfaceAddrs returns the addresses of the host's interfaces (nil when
// they cannot be read).
func interfaceAddrs() []netip.Addr {
	var addrs []netip.Addr
	if ifaddrs, err := net.InterfaceAddrs(); err == nil {
		for _, ia := range ifaddrs {
			if p, err := netip.ParsePrefix(ia.String()); err == nil {
				addrs = append(addrs, p.Addr())
			}
		}
	}
	return addrs
}

// hostCandidates picks the CANDIDATEs to offer from a host's interface
// addresses: never loopback, link-local, unspecified or multicast ones
// (they mean something else, or nothing, on the peer's host); IPv4 before
// IPv6 (a LAN peer is most likely on the IPv4 LAN), and at most
// wire.MaxCandidates. The TCP candidates are tcpLocals, the addresses and
// ports the TCP race listens on (at most one per family), those that are
// offerable; they come right after the first, so that they survive the
// bound. The UDP socket is bound to every address, so each address gets
// the UDP port.
func hostCandidates(addrs []netip.Addr, udpPort uint16, tcpLocals ...netip.AddrPort) []wire.Address {
	var v4, v6 []netip.Addr
	for _, ip := range addrs {
		ip = ip.Unmap().WithZone("")
		if !offerable(ip) || slices.Contains(v4, ip) || slices.Contains(v6, ip) {
			continue
		}
		if ip.Is4() {
			v4 = append(v4, ip)
		} else {
			v6 = append(v6, ip)
		}
	}
	var out []wire.Address
	for _, ip := range append(v4, v6...) {
		out = append(out, wire.Address{Transport: wire.TransportUDP, AddrPort: netip.AddrPortFrom(ip, udpPort)})
	}
	at := min(1, len(out))
	for _, tcpLocal := range tcpLocals {
		tl := netip.AddrPortFrom(tcpLocal.Addr().Unmap().WithZone(""), tcpLocal.Port())
		tc := wire.Address{Transport: wire.TransportTCP, AddrPort: tl}
		if tl.IsValid() && tl.Port() != 0 && offerable(tl.Addr()) && !slices.Contains(out, tc) {
			out = slices.Insert(out, at, tc)
			at++
		}
	}
	if len(out) > wire.MaxCandidates {
		out = out[:wire.MaxCandidates]
	}
	return out
}

// offerable reports whether ip means the same host to a peer on another
// host of the same network.
func offerable(ip netip.Addr) bool {
	return ip.IsValid() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() && !ip.IsLinkLocalMulticast() &&
		!ip.IsMulticast() && !ip.IsUnspecified() && !ip.IsInterfaceLocalMulticast()
}

// tcpTargets is the set of peer addresses a TCP race dials, which grows
// when the peer signals TCP candidates.
type tcpTargets struct {
	mu      sync.Mutex
	addrs   []netip.AddrPort
	changed chan struct{} // replaced and closed on every change
}

// maxTCPTargets bounds the dial loops of one race: the peer's public
// address and its candidates.
const maxTCPTargets = 1 + wire.MaxCandidates

func newTCPTargets(addrs ...netip.AddrPort) *tcpTargets {
	t := &tcpTargets{changed: make(chan struct{})}
	t.add(addrs)
	return t
}

func (t *tcpTargets) add(addrs []netip.AddrPort) {
	t.mu.Lock()
	defer t.mu.Unlock()
	grew := false
	for _, a := range addrs {
		a = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
		if !a.IsValid() || a.Port() == 0 || a.Addr().IsUnspecified() || slices.Contains(t.addrs, a) ||
			len(t.addrs) == maxTCPTargets {
			continue
		}
		t.addrs = append(t.addrs, a)
		grew = true
	}
	if grew {
		close(t.changed)
		t.changed = make(chan struct{})
	}
}

// snapshot returns the targets and a channel closed at the next change.
func (t *tcpTargets) snapshot() ([]netip.AddrPort, <-chan struct{}) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.addrs), t.changed
}

// has reports whether a is one of the targets.
func (t *tcpTargets) has(a netip.AddrPort) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Contains(t.addrs, unmapped(a))
}

// hasIP reports whether a connection from ip may belong to the race.
func (t *tcpTargets) hasIP(ip netip.Addr) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	ip = ip.Unmap()
	for _, a := range t.addrs {
		if a.Addr() == ip {
			return true
		}
	}
	return false
}

// NoPathError is how an attempt that found no direct path ends: what is
// known of both sides' NATs and what that means, in Diagnosis (the
// sentence `ewf connect` prints with `error reason=no-direct-path`). It
// matches ErrNoDirectPath.
type NoPathError struct {
	Peer ID
	// Local and Remote are this node's and the peer's NAT classes; a
	// zero Class is unknown (discovery not finished, or the peer sent none).
	Local, Remote natdisco.Class
	Diagnosis     string
	// Detail says what the attempt did (probes sent and received).
	Detail string
}

func (e *NoPathError) Error() string {
	return "ewf: no direct path to peer " + e.Peer.String() + ": " + e.Diagnosis + " (" + e.Detail + ")"
}

// Unwrap makes the error match ErrNoDirectPath.
func (e *NoPathError) Unwrap() error { return ErrNoDirectPath }

// noPath builds the NoPathError for peer from both sides' NAT classes.
func (n *Node) noPath(peer wire.ID, detail string) *NoPathError {
	e := &NoPathError{Peer: peer, Detail: detail}
	if c, ok := n.NAT(); ok {
		e.Local = c
	}
	if w, ok := n.peerNATClass(peer); ok {
		e.Remote = natdisco.FromWire(w)
	}
	e.Diagnosis = natdisco.Diagnose(e.Local, e.Remote)
	return e
}

// The server sends the target of an introduction one INTRODUCE datagram
// and nothing else: if the network loses it, the target neither punches
// nor SIGNALs, and the dialer would punch into silence until PunchTimeout.
// So the dialer introduces itself again (a new QUERY, hence a new SECRET
// and a new INTRODUCE) when it has heard nothing from the peer, neither a
// SIGNAL nor a PUNCH, reintroduceAfter the introduction; at most
// maxReintroductions times (docs/PROTOCOL.md §9.2).
const maxReintroductions = 2

// errUnheard ends one introduction of Dial: the peer gave no sign of
// having received it.
var errUnheard = errors.New("ewf: no word from the peer since the introduction")

// reintroduceAfter is how long the dialer waits for a first word from the
// peer, given how long its QUERY took (queryRTT, one round trip to the
// server or more if it was retransmitted). The target SIGNALs as soon as
// the INTRODUCE arrives, so its SIGNAL reaches the dialer about 1.5 server
// round trips after the QUERY answer (INTRODUCE, SIGNAL request, SIGNAL
// indication); the floor of 1 s leaves room for one retransmission of the
// target's SIGNAL request (client.DefaultRTO, 500 ms) and a target
// farther from the server than the dialer. Three QUERY times on top keep
// a slow path from counting as a lost one. Half the punch timeout at most,
// so that a re-introduction comes while the punch would still be running.
func reintroduceAfter(queryRTT, punchTimeout time.Duration) time.Duration {
	return min(time.Second+3*queryRTT, punchTimeout/2)
}

// watchUnheard cancels the dial of ctx with errUnheard if, after wait,
// the peer of introduction s has neither SIGNALled nor punched.
func (n *Node) watchUnheard(ctx context.Context, s *session, peer wire.ID, wait time.Duration, cancel context.CancelCauseFunc) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !n.heardFrom(s, peer) {
			cancel(errUnheard)
		}
	}()
}

// heardFrom reports whether the peer of introduction s has shown that it
// received it: a valid SIGNAL (or refusal) under its SECRET, or a valid
// PUNCH to the attempt of the introduction.
func (n *Node) heardFrom(s *session, peer wire.ID) bool {
	n.mu.Lock()
	heard := s.nsignalled > 0 || s.refusal != nil
	a := n.attempts[peer]
	n.mu.Unlock()
	if heard {
		return true
	}
	if a == nil || a.secret != s.secret {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m.Stats().Received > 0
}
