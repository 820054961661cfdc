package ewf_test

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/wire"
)

// rebindingNAT stands between a node and its server on loopback, as a NAT
// would: the node sends to inside, the NAT sends on from its current
// outside socket, and answers come back the same way. rebind replaces the
// outside socket, so the server sees the node at a new public address, as
// after a NAT rebinding or a change of network.
type rebindingNAT struct {
	t      *testing.T
	server netip.AddrPort
	inside *net.UDPConn

	mu      sync.Mutex
	node    netip.AddrPort // the node's address, learned from its first packet
	outside *net.UDPConn
	wg      sync.WaitGroup
}

func newRebindingNAT(t *testing.T, server string) *rebindingNAT {
	inside, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	n := &rebindingNAT{t: t, server: netip.MustParseAddrPort(server), inside: inside}
	n.rebind()
	n.wg.Add(1)
	go func() { // node → server
		defer n.wg.Done()
		buf := make([]byte, 2048)
		for {
			k, from, err := inside.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.node = from
			out := n.outside
			n.mu.Unlock()
			out.WriteToUDPAddrPort(buf[:k], n.server)
		}
	}()
	t.Cleanup(func() {
		inside.Close()
		n.mu.Lock()
		n.outside.Close()
		n.mu.Unlock()
		n.wg.Wait()
	})
	return n
}

// rebind gives the NAT a new outside socket and returns its address.
func (n *rebindingNAT) rebind() netip.AddrPort {
	out, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		n.t.Fatal(err)
	}
	n.mu.Lock()
	old := n.outside
	n.outside = out
	n.mu.Unlock()
	if old != nil {
		old.Close() // the old mapping is gone
	}
	n.wg.Add(1)
	go func() { // server → node
		defer n.wg.Done()
		buf := make([]byte, 2048)
		for {
			k, _, err := out.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			node := n.node
			n.mu.Unlock()
			n.inside.WriteToUDPAddrPort(buf[:k], node)
		}
	}()
	return out.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestRebindAfterNATRebinding: the listener's NAT gives it a new public
// address; with its next refresh the listener learns it (STUN) and binds
// it, so the server hands new peers the new address.
func TestRebindAfterNATRebinding(t *testing.T) {
	srv := startServer(t)
	nat := newRebindingNAT(t, srv)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := config(t, nat.inside.LocalAddr().String(), "listener")
	cfg.KeepaliveInterval = func() time.Duration { return 200 * time.Millisecond }
	n, err := ewf.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	q, err := client.DialUDP(ctx, srv, client.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	bound := func() netip.AddrPort {
		as, err := q.Query(ctx, n.ID())
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			if a.Transport == wire.TransportUDP {
				return a.AddrPort
			}
		}
		return netip.AddrPort{}
	}
	first := n.PublicAddr()
	if b := bound(); b != first {
		t.Fatalf("bound at %s, public address %s", b, first)
	}
	next := nat.rebind()
	for n.PublicAddr() != next || bound() != next {
		select {
		case <-ctx.Done():
			t.Fatalf("after the NAT rebinding to %s: public %s, bound %s (was %s)", next, n.PublicAddr(), bound(), first)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
