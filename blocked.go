package ewf

import (
	"context"
	"errors"
	"net/netip"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/relayclient"
	"github.com/ewf-project/ewf/wire"
)

// A node on a network that drops all UDP (docs/PROTOCOL.md §23) gets no
// answer to any UDP request, but reaches the server over TCP. It opens all
// the same: registered, bound and reachable over TCP only, with every
// request to the server on the TCP connection, and connects through the
// relay over TURN over TCP. It keeps trying UDP in the background and uses
// it once it answers (a network change, a firewall rule lifted).

// udpGrace is how long Open waits for the UDP binding once the TCP one is
// made, before it proceeds without UDP (Config.UDPWait's default). UDP
// requests retransmit at 0.5, 1.5 s..., so an answer lost once or twice
// still comes within it, and a UDP-blocked host is ready in seconds
// rather than after the full 39.5 s retransmission schedule.
const udpGrace = 2500 * time.Millisecond

// UDPBlocked reports whether the node is bound over TCP only, because UDP
// to the server had no answer. Its connections then go through the relay.
func (n *Node) UDPBlocked() bool { return !n.udpUp.Load() }

// ctl is the client for requests to the server: the UDP one, or, while
// UDP is blocked, the TCP binding's connection.
func (n *Node) ctl() *client.Client {
	if !n.udpUp.Load() {
		if t := n.tcp.Load(); t != nil {
			return t.conn.Client
		}
	}
	return n.rc
}

type udpResult struct {
	rekeyed bool
	err     error
}

// udpOutcome is what start learns of the UDP binding: err is nil when it
// is made; otherwise later, if not nil, delivers the result of the
// attempt still running.
type udpOutcome struct {
	err   error
	later <-chan udpResult
}

// bindBoth makes the UDP binding and, with EnableTCP or when UDP has no
// answer within Config.UDPWait, the TCP binding. It fails as before when UDP
// fails, unless the TCP binding is made and UDP only had no answer: then
// the node is UDP-blocked (udp.err set).
func (n *Node) bindBoth(ctx context.Context, ident *client.Identity, path string,
	register func(context.Context, wire.ID) (wire.Key, error)) (tr tcpResult, udp udpOutcome, err error) {
	self, key := n.self, n.key
	tcpc := make(chan tcpResult, 1)
	tcpStarted, tcpDone := false, false
	startTCP := func() {
		tcpStarted = true
		go func() {
			t, err := n.bindTCP(ctx, self, key)
			tcpc <- tcpResult{t, err}
		}()
	}
	if n.cfg.EnableTCP {
		startTCP()
	}
	udpc := make(chan udpResult, 1)
	uctx, ucancel := context.WithCancel(n.ctx)
	stop := context.AfterFunc(ctx, ucancel) // Open's deadline bounds the first attempt
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer ucancel()
		defer stop()
		rekeyed, err := n.bindUDP(uctx, ident, path, register)
		udpc <- udpResult{rekeyed, err}
	}()
	grace := time.NewTimer(n.cfg.UDPWait)
	defer grace.Stop()
	graceOver := false
	blocked := func() bool { return graceOver && tcpDone && tr.side != nil }
	for {
		select {
		case tr = <-tcpc:
			tcpDone = true
			if blocked() {
				return tr, udpOutcome{err: client.ErrTimeout, later: udpc}, nil
			}
			continue
		case <-grace.C:
			graceOver = true
			if !tcpStarted {
				startTCP()
			}
			if blocked() {
				return tr, udpOutcome{err: client.ErrTimeout, later: udpc}, nil
			}
			continue
		case u := <-udpc:
			if tcpStarted && !tcpDone {
				tr, tcpDone = <-tcpc, true
			}
			if u.err != nil {
				if errors.Is(u.err, client.ErrTimeout) && tr.side != nil {
					return tr, udpOutcome{err: u.err}, nil // no answer at all: blocked
				}
				if tr.side != nil {
					tr.side.close()
				}
				return tcpResult{}, udpOutcome{}, u.err
			}
			if !n.cfg.EnableTCP && tr.side != nil {
				// Made only because UDP was slow: not wanted.
				tr.side.close()
				tr = tcpResult{}
			}
			if n.cfg.EnableTCP && u.rekeyed && tr.err != nil {
				tr = tcpResult{}
				tr.side, tr.err = n.bindTCP(ctx, n.self, n.currentKey())
			}
			return tr, udpOutcome{}, nil
		}
	}
}

// udpLater keeps trying the UDP binding of a UDP-blocked node, with
// backoff, and switches the node to it once it answers.
func (n *Node) udpLater(first <-chan udpResult, ident *client.Identity, path string,
	register func(context.Context, wire.ID) (wire.Key, error)) {
	defer n.wg.Done()
	err := client.ErrTimeout
	if first != nil {
		select {
		case r := <-first:
			err = r.err
		case <-n.ctx.Done():
			return
		}
	}
	for backoff := time.Second; err != nil; backoff = min(2*backoff, time.Minute) {
		select {
		case <-n.ctx.Done():
			return
		case <-time.After(backoff):
		}
		_, err = n.bindUDP(n.ctx, ident, path, register)
		if err != nil {
			n.log.Debug("UDP binding again", "err", err)
		}
	}
	n.udpUp.Store(true)
	n.log.Info("UDP to the server answers now: bound over UDP too", "public", n.PublicAddr())
	n.wg.Add(1)
	go n.keepUDP()
	n.checkNAT()
}

// registerOpen is register for Open: over UDP, but over a TCP connection
// of its own when UDP has no answer within Config.UDPWait, so that a host on a
// UDP-blocking network can register. If TCP fails too, UDP goes on for
// the rest of ctx, as before.
func (n *Node) registerOpen(ctx context.Context, id wire.ID) (wire.Key, error) {
	if n.cfg.ServerTLS != "" {
		return n.register(ctx, id)
	}
	uctx, cancel := context.WithTimeout(ctx, n.cfg.UDPWait)
	key, err := n.rc.Register(uctx, id)
	cancel()
	if err == nil || ctx.Err() != nil || !(errors.Is(err, context.DeadlineExceeded) || errors.Is(err, client.ErrTimeout)) {
		return key, err
	}
	c, terr := client.DialTCP(ctx, n.currentServer().String(), netip.AddrPort{}, client.Config{Logger: n.log})
	if terr == nil {
		key, terr = c.Register(ctx, id)
		c.Close()
		if terr == nil || errors.Is(terr, client.ErrIDConflict) {
			return key, terr
		}
	}
	n.log.Debug("REGISTER over TCP", "err", terr)
	return n.rc.Register(ctx, id)
}

// registerNow is register for a node that is open: while UDP is blocked
// (and REGISTER does not go over TLS anyway), over a TCP connection of its
// own, as registerOpen falls back to, at once rather than after waiting
// for UDP.
func (n *Node) registerNow(ctx context.Context, id wire.ID) (wire.Key, error) {
	if n.cfg.ServerTLS != "" || n.udpUp.Load() {
		return n.register(ctx, id)
	}
	c, err := client.DialTCP(ctx, n.currentServer().String(), netip.AddrPort{}, client.Config{Logger: n.log})
	if err != nil {
		return wire.Key{}, err
	}
	defer c.Close()
	return c.Register(ctx, id)
}

// tcpURLs keeps the TURN URLs over TCP: a UDP-blocked node would only
// wait out the UDP ones.
func tcpURLs(urls []string) []string {
	var out []string
	for _, u := range urls {
		if s, err := relayclient.ParseURL(u); err == nil && s.Transport == "tcp" {
			out = append(out, u)
		}
	}
	return out
}
