package ewf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/ewf-project/ewf/client"
)

// Several servers. Config.Server may list several ewfd that share one store
// (docs/OPERATIONS.md, "Several servers on Redis"), comma-separated, or name
// them with a DNS SRV record (_ewf._udp.example.org). A node binds at one
// of them, the first that answers in the list's order, and moves to the
// next when its server stops answering:
//
//   - UDP: a binding refresh that times out, or is answered "try again
//     later", moves the node to the next server, where the refresh is
//     sent again at once. With several servers a refresh is given up
//     after g = min(2.5 s, interval/2) (refreshGiveUp) and sent g before
//     the keepalive interval ends, so a server that dies just after a
//     refresh is noticed by the end of the interval and the node is bound
//     again at the next server one round trip later: within one keepalive
//     interval of the server's death (20–25 s by default; the refreshes
//     come every 17.5–22.5 s instead). A single request is given up after
//     3 transmissions over 2.5 s instead of 7 over 39.5 s (another server
//     is there to try).
//   - TCP: the binding's connection ends with the server; binding again
//     moves to the next server when the current one refuses or times out.
//     When the server's process died but its host did not, this is the
//     quicker signal (a refused connection), and it moves the UDP side
//     too: the node has one current server.
//
// Every server's packets are accepted on the node's socket (mux), so late
// answers from the previous server are still matched by transaction ID.
// The KEY is the same at every server of the list, because they share the
// store; servers that do not share one must not be listed together.

// failoverAttempts and failoverLastWait shorten a request's life when there
// is another server to try (see above).
const (
	failoverAttempts = 3 // sent at 0, 0.5 and 1.5 s (RTO 500 ms, doubling)
	failoverLastWait = 2 // given up 2 RTO = 1 s after the last
	failoverGiveUp   = 2500 * time.Millisecond
)

// refreshGiveUp is how long a binding refresh may go unanswered, and how
// much earlier than the keepalive interval it is sent, when there is
// another server to move to (client.Config.KeepGiveUp): the whole
// retransmission schedule of a request (2.5 s), but half the interval
// when the interval is short, so that the refresh interval stays positive
// and a dead server is still noticed within it.
func refreshGiveUp(interval time.Duration) time.Duration {
	return min(failoverGiveUp, interval/2)
}

// resolveServers resolves Config.Server.
func resolveServers(ctx context.Context, spec string) ([]netip.AddrPort, error) {
	l, err := client.ResolveServers(ctx, spec, nil)
	if err != nil {
		return nil, fmt.Errorf("ewf: server %q: %w", spec, err)
	}
	return l, nil
}

// currentServer is the server the node talks to now.
func (n *Node) currentServer() netip.AddrPort {
	return n.servers[int(n.srvIdx.Load())%len(n.servers)]
}

// failover moves the node to the next server after err from server from,
// unless it has moved already; only for a server that does not answer (or
// answers "try again later"), or for any error when always is set (a TCP
// connection that could not be made). It reports whether it moved.
func (n *Node) failover(from netip.AddrPort, err error, always bool) bool {
	if len(n.servers) < 2 {
		return false
	}
	if !always && !errors.Is(err, client.ErrTimeout) && !errors.Is(err, client.ErrTryLater) &&
		!errors.Is(err, ErrServerUnreachable) {
		return false
	}
	i := n.srvIdx.Load()
	if n.servers[int(i)%len(n.servers)] != from {
		return true // another goroutine moved already
	}
	if n.srvIdx.CompareAndSwap(i, i+1) {
		n.log.Warn("server not answering; moving to the next", "from", from, "to", n.currentServer(), "err", err)
	}
	return true
}

// adoptListKey lets an identity registered at one server keep its ID when
// Config.Server becomes a list that includes that server: the servers of a
// list share one store, so the KEY saved for the entry is the KEY for the
// list. Without it the list, having no KEY of its own, would register the
// ID again and be refused (ID conflict). Nothing happens for a single
// server, a list that has a KEY already, or a missing file.
func adoptListKey(path, spec string) error {
	if !strings.Contains(spec, ",") {
		return nil
	}
	id, err := client.LoadIdentity(path)
	if err != nil {
		return nil // EnsureRegistered reports what is wrong with the file
	}
	if _, ok := id.Keys[spec]; ok {
		return nil
	}
	for _, e := range strings.Split(spec, ",") {
		if k, ok := id.Keys[strings.TrimSpace(e)]; ok {
			id.Keys[spec] = k
			return id.Save(path)
		}
	}
	return nil
}
