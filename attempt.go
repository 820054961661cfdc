package ewf

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ewf-project/ewf/punch"
	"github.com/ewf-project/ewf/wire"
)

// attempt drives one punch.Machine with real time and the node's socket.
// The machine decides; the attempt only sends what it says, when it says.
type attempt struct {
	n      *Node
	peer   wire.ID
	secret wire.Secret // the introduction's: a SIGNAL must match it
	out    func(b []byte, to netip.AddrPort)

	dialer     bool           // this side dials QUIC once a path is up
	start      time.Time      // when the attempt began
	peerPublic netip.AddrPort // the peer's bound UDP address

	// Birthday probing (birthday.go); bdayDecided and ports are the
	// driver's, ports also read under mu by send.
	bdayDecided bool
	natSent     bool // this side's NAT class went to the peer by SIGNAL
	ports       *portSet
	handed      net.PacketConn // the dialer's path socket, taken from ports

	mu        sync.Mutex
	peerPorts []uint16 // local UDP ports of the peer's host candidates
	m         *punch.Machine
	done      chan struct{} // closed when the machine is Connected or Failed
	poke      chan struct{} // wakes the driver after Receive changed the schedule
	quit      chan struct{}
	ended     bool
	linger    time.Time // after this, the attempt stops answering the peer
}

// startAttempt starts punching towards peer. Addresses and candidates are
// what the server told us about the peer; only UDP ones are used.
func (n *Node) startAttempt(peer wire.ID, secret wire.Secret, addrs, cands []wire.Address, dialer bool) (*attempt, error) {
	var targets []netip.AddrPort
	var peerPublic netip.AddrPort
	var peerPorts []uint16
	for _, list := range [][]wire.Address{addrs, cands} {
		for _, a := range list {
			if a.Transport == wire.TransportUDP {
				targets = append(targets, a.AddrPort)
			}
		}
	}
	if pub, ok := addressOf(addrs, wire.TransportUDP); ok {
		peerPublic = pub
	}
	for _, c := range cands {
		if c.Transport == wire.TransportUDP {
			peerPorts = append(peerPorts, c.AddrPort.Port())
		}
	}
	a, err := n.newAttempt(peer, secret, targets, nil, n.cfg.PunchTimeout)
	if err != nil {
		return nil, err
	}
	a.dialer, a.peerPublic, a.peerPorts, a.start = dialer, peerPublic, peerPorts, time.Now()
	// Both sides SIGNAL at the start when discovery has answered (the
	// target always does, the dialer then); otherwise the driver does once
	// it answers.
	_, a.natSent = n.NAT()
	n.mu.Lock()
	if old := n.attempts[peer]; old != nil {
		old.stop()
	}
	n.attempts[peer] = a
	var early []netip.AddrPort
	if s := n.sessions[peer]; s != nil && s.secret == secret {
		early, s.udp = s.udp, nil
	}
	n.mu.Unlock()
	a.addCandidates(early) // SIGNALled before the attempt existed
	n.wg.Add(1)
	go a.drive()
	return a, nil
}

// newAttempt makes an attempt that sends with out (nil: the node's
// socket), gives up after timeout, and is not yet driven or routed to: the
// relayed endpoint runs one on its own socket (relay.go).
func (n *Node) newAttempt(peer wire.ID, secret wire.Secret, targets []netip.AddrPort, out func([]byte, netip.AddrPort), timeout time.Duration) (*attempt, error) {
	now := time.Now()
	m, err := punch.New(punch.Config{
		Self: n.self, Peer: peer, Secret: secret,
		Candidates: targets,
		Timeout:    timeout,
	}, now)
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = func(b []byte, to netip.AddrPort) { n.tr.WriteTo(b, net.UDPAddrFromAddrPort(to)) }
	}
	return &attempt{
		n: n, peer: peer, secret: secret, m: m, out: out,
		done:   make(chan struct{}),
		poke:   make(chan struct{}, 1),
		quit:   make(chan struct{}),
		linger: now.Add(2*timeout + 30*time.Second),
	}, nil
}

// routePunch hands a PUNCH from the socket to the attempt for its sender.
// The machine verifies the MAC; a PUNCH for no attempt is dropped.
func (n *Node) routePunch(msg *wire.Message, from netip.AddrPort) {
	if n.sc.dropPeers != nil && n.sc.dropPeers.Load() {
		return // tests: a firewall between the peers (migrate_test.go)
	}
	if n.cfg.punchesIn != nil {
		n.cfg.punchesIn.Add(1)
	}
	n.mu.Lock()
	a := n.attempts[msg.SourceID]
	n.mu.Unlock()
	if a != nil {
		a.receive(msg, from)
	}
	n.routeMigrate(msg, from) // a relayed connection's background punch (migrate.go)
}

// addCandidates adds signalled UDP addresses of the peer to the running
// machine and wakes the driver to probe them; it returns how many were new.
func (a *attempt) addCandidates(addrs []netip.AddrPort) int {
	if len(addrs) == 0 {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ended {
		return 0
	}
	for _, p := range addrs {
		a.peerPorts = append(a.peerPorts, p.Port())
	}
	k := a.m.AddCandidates(addrs, time.Now())
	select {
	case a.poke <- struct{}{}:
	default:
	}
	return k
}

func (a *attempt) receive(msg *wire.Message, from netip.AddrPort) {
	a.receiveOn(msg, from, 0)
}

// receiveOn handles a PUNCH that arrived on extra socket port (0: the
// node's socket).
func (a *attempt) receiveOn(msg *wire.Message, from netip.AddrPort, port int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ended {
		return
	}
	a.send(a.m.ReceiveOn(msg, from, port, time.Now()))
	select {
	case a.poke <- struct{}{}:
	default:
	}
}

// send writes packets; a.mu is held, since packet data is the machine's.
func (a *attempt) send(pkts []punch.Packet) {
	for _, p := range pkts {
		if p.Port == 0 {
			a.out(p.Data, p.To)
		} else if a.ports != nil {
			a.ports.send(p.Port, p.Data, p.To)
		}
	}
}

func (a *attempt) drive() {
	defer a.n.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	signalled := false
	for {
		now := time.Now()
		if !signalled {
			a.considerBirthday(now)
			if !a.natSent && a.peerPublic.IsValid() {
				if _, ok := a.n.NAT(); ok {
					// Discovery answered during the attempt: tell the peer,
					// for its birthday decision and the diagnosis.
					a.natSent = true
					a.n.signalBack(a.peer, a.secret, nil)
				}
			}
		}
		a.mu.Lock()
		a.send(a.m.Tick(now))
		state, next, pathPort := a.m.State(), a.m.Next(), a.m.PathPort()
		if now.After(a.linger) {
			a.ended = true
		}
		ended := a.ended
		a.mu.Unlock()
		if state != punch.Punching && !signalled {
			signalled = true
			a.mu.Lock()
			st := a.m.Stats()
			a.mu.Unlock()
			a.n.log.Debug("punch ended", "peer", a.peer, "state", state, "path_port", pathPort,
				"after", now.Sub(a.start).Round(time.Millisecond), "sent", st.Sent, "received", st.Received,
				"port_probes", st.PortProbes, "spray_probes", st.SprayProbes, "spray_hits", st.SprayHits,
				"ignored", st.Ignored, "unknown_tx", st.UnknownTxID, "reflexive", st.Reflexive)
			a.settlePorts(pathPort)
			close(a.done)
		}
		if ended {
			a.n.mu.Lock()
			if a.n.attempts[a.peer] == a {
				delete(a.n.attempts, a.peer)
			}
			a.n.mu.Unlock()
			if a.ports != nil {
				a.ports.close()
			}
			if c := a.takeHanded(); c != nil {
				c.Close() // the dialer gave up before using it
			}
			return
		}
		wait := a.linger.Sub(now)
		if !next.IsZero() && next.Sub(now) < wait {
			wait = next.Sub(now)
		}
		if !a.bdayDecided && state == punch.Punching {
			wait = min(wait, 50*time.Millisecond) // look at what discovery and SIGNALs brought
		}
		timer.Reset(max(wait, 0))
		select {
		case <-timer.C:
		case <-a.poke:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		case <-a.quit:
			a.mu.Lock()
			a.ended = true
			a.mu.Unlock()
		case <-a.n.ctx.Done():
			a.mu.Lock()
			a.ended = true
			a.mu.Unlock()
		}
	}
}

// settlePorts runs once when the machine is Connected or Failed: the extra
// sockets are closed, except the one a path came up on, which goes to QUIC:
// to Dial (handed) on the dialing side, to a QUIC listener of its own here
// on the accepting side.
func (a *attempt) settlePorts(pathPort int) {
	if a.ports == nil {
		return
	}
	if a.dialer {
		if c, ok := a.ports.take(pathPort); ok {
			a.mu.Lock()
			a.handed = c
			a.mu.Unlock()
		}
	} else {
		// The dialer picks the path; serve every socket it may pick.
		a.mu.Lock()
		heard := a.m.HeardPorts(nil)
		a.mu.Unlock()
		if pathPort > 0 && !slices.Contains(heard, pathPort) {
			heard = append(heard, pathPort)
		}
		var socks []net.PacketConn
		for _, p := range heard {
			if c, ok := a.ports.take(p); ok {
				socks = append(socks, c)
			}
		}
		if len(socks) > 0 {
			a.n.serveOn(socks)
		}
	}
	a.ports.close()
}

// takeHanded returns the socket the dialer's path is on, if it is an extra
// one; the caller owns it.
func (a *attempt) takeHanded() net.PacketConn {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.handed
	a.handed = nil
	return c
}

func (a *attempt) stop() {
	select {
	case <-a.quit:
	default:
		close(a.quit)
	}
}

// wait blocks until the machine has a path or gave up.
func (a *attempt) wait(ctx context.Context) (netip.AddrPort, time.Duration, error) {
	select {
	case <-a.done:
	case <-ctx.Done():
		a.stop()
		return netip.AddrPort{}, 0, ctx.Err()
	case <-a.quit:
		return netip.AddrPort{}, 0, ErrNoDirectPath
	}
	path, rtt, ok := a.result()
	if !ok {
		a.mu.Lock()
		st := a.m.Stats()
		a.mu.Unlock()
		detail := fmt.Sprintf("%d punches sent, %d received", st.Sent, st.Received)
		if st.PortProbes+st.SprayProbes > 0 {
			detail += fmt.Sprintf(", birthday probes: %d from extra sockets, %d to guessed ports", st.PortProbes, st.SprayProbes)
		}
		return netip.AddrPort{}, 0, a.n.noPath(a.peer, detail)
	}
	return path, rtt, nil
}

func (a *attempt) result() (netip.AddrPort, time.Duration, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m.Path()
}
