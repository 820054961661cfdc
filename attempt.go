package ewf

import (
	"context"
	"fmt"
	"net"
	"net/netip"
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

	mu     sync.Mutex
	m      *punch.Machine
	done   chan struct{} // closed when the machine is Connected or Failed
	poke   chan struct{} // wakes the driver after Receive changed the schedule
	quit   chan struct{}
	ended  bool
	linger time.Time // after this, the attempt stops answering the peer
}

// startAttempt starts punching towards peer. Addresses and candidates are
// what the server told us about the peer; only UDP ones are used.
func (n *Node) startAttempt(peer wire.ID, secret wire.Secret, addrs, cands []wire.Address) (*attempt, error) {
	var targets []netip.AddrPort
	for _, list := range [][]wire.Address{addrs, cands} {
		for _, a := range list {
			if a.Transport == wire.TransportUDP {
				targets = append(targets, a.AddrPort)
			}
		}
	}
	a, err := n.newAttempt(peer, secret, targets, nil)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	if old := n.attempts[peer]; old != nil {
		old.stop()
	}
	n.attempts[peer] = a
	n.mu.Unlock()
	n.wg.Add(1)
	go a.drive()
	return a, nil
}

// newAttempt makes an attempt that sends with out (nil: the node's
// socket) and is not yet driven or routed to: the relayed endpoint runs one
// on its own socket (relay.go).
func (n *Node) newAttempt(peer wire.ID, secret wire.Secret, targets []netip.AddrPort, out func([]byte, netip.AddrPort)) (*attempt, error) {
	now := time.Now()
	m, err := punch.New(punch.Config{
		Self: n.self, Peer: peer, Secret: secret,
		Candidates: targets,
		Timeout:    n.cfg.PunchTimeout,
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
		linger: now.Add(2*n.cfg.PunchTimeout + 30*time.Second),
	}, nil
}

// routePunch hands a PUNCH from the socket to the attempt for its sender.
// The machine verifies the MAC; a PUNCH for no attempt is dropped.
func (n *Node) routePunch(msg *wire.Message, from netip.AddrPort) {
	n.mu.Lock()
	a := n.attempts[msg.SourceID]
	n.mu.Unlock()
	if a != nil {
		a.receive(msg, from)
	}
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
	k := a.m.AddCandidates(addrs, time.Now())
	select {
	case a.poke <- struct{}{}:
	default:
	}
	return k
}

func (a *attempt) receive(msg *wire.Message, from netip.AddrPort) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ended {
		return
	}
	a.send(a.m.Receive(msg, from, time.Now()))
	select {
	case a.poke <- struct{}{}:
	default:
	}
}

// send writes packets; a.mu is held, since packet data is the machine's.
func (a *attempt) send(pkts []punch.Packet) {
	for _, p := range pkts {
		a.out(p.Data, p.To)
	}
}

func (a *attempt) drive() {
	defer a.n.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	signalled := false
	for {
		a.mu.Lock()
		now := time.Now()
		a.send(a.m.Tick(now))
		state, next := a.m.State(), a.m.Next()
		if state != punch.Punching && !signalled {
			signalled = true
			close(a.done)
		}
		if now.After(a.linger) {
			a.ended = true
		}
		ended := a.ended
		a.mu.Unlock()
		if ended {
			a.n.mu.Lock()
			if a.n.attempts[a.peer] == a {
				delete(a.n.attempts, a.peer)
			}
			a.n.mu.Unlock()
			return
		}
		wait := a.linger.Sub(now)
		if !next.IsZero() && next.Sub(now) < wait {
			wait = next.Sub(now)
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
		return netip.AddrPort{}, 0, fmt.Errorf("%w (peer %s, %d punches sent, %d received)",
			ErrNoDirectPath, a.peer, st.Sent, st.Received)
	}
	return path, rtt, nil
}

func (a *attempt) result() (netip.AddrPort, time.Duration, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.m.Path()
}
