package ewf

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/server/relay"
)

// loopbackRelay is ewfd's embedded relay on loopback with relayed ports
// from portMin on (a thousand of them; each test file its own range). It
// allows loopback peers: every relayed endpoint in these tests is on
// 127.0.0.1.
func loopbackRelay(portMin uint16) server.RelayConfig {
	return server.RelayConfig{Embedded: &relay.Config{
		Listen:   "127.0.0.1:0",
		RelayIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		PortMin:  portMin, PortMax: portMin + 999,
		Policy: relay.Policy{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
	}}
}

// relayServer runs ewfd with loopbackRelay(portMin) on loopback.
func relayServer(t testing.TB, portMin uint16) *server.Daemon {
	t.Helper()
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir(), Relay: loopbackRelay(portMin)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// blockedServer runs ewfd with its embedded relay on loopback.
func blockedServer(t *testing.T) string {
	t.Helper()
	return relayServer(t, 27000).Addrs()[0].String()
}

func openNode(t *testing.T, ctx context.Context, srv, name string, blocked bool) *Node {
	t.Helper()
	cfg := Config{Server: srv, IdentityFile: filepath.Join(t.TempDir(), name+".json"), blockUDP: new(atomic.Bool)}
	cfg.blockUDP.Store(blocked)
	if os.Getenv("EWF_TEST_DEBUG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
	}
	n, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open %s: %v", name, err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// relayTransport is how n reaches the TURN server for its relayed
// connection with peer ("" if it has none).
func relayTransport(n *Node, peer ID) string {
	n.mu.Lock()
	rp := n.relays[peer]
	n.mu.Unlock()
	if rp == nil {
		return ""
	}
	<-rp.ready
	if rp.alloc == nil {
		return ""
	}
	return rp.alloc.Transport()
}

// TestUDPBlockedNode: a node whose UDP to the server gets no answer (the
// test hook drops every datagram it sends the server) still opens, with a
// fresh identity: it registers and binds over TCP within seconds, not the
// 39.5 s UDP schedule, and says it is UDP-blocked. Each way round with a
// normal node, and with another blocked node, the connection comes up
// through the relay (path=relay on both ends, the blocked side's TURN over
// TCP) and carries 256 KiB each way, SHA-256-checked.
func TestUDPBlockedNode(t *testing.T) {
	srv := blockedServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	start := time.Now()
	b := openNode(t, ctx, srv, "blocked", true)
	if d := time.Since(start); d > 3*udpGrace+2*time.Second {
		t.Errorf("a UDP-blocked node took %v to open", d)
	}
	if !b.UDPBlocked() {
		t.Fatal("UDPBlocked() = false for a node whose UDP gets no answer")
	}
	if _, ok := b.PublicTCPAddr(); !ok {
		t.Fatal("a UDP-blocked node has no TCP binding")
	}
	if b.PublicAddr().IsValid() {
		t.Errorf("a UDP-blocked node reports a UDP address %v", b.PublicAddr())
	}
	a := openNode(t, ctx, srv, "open", false)
	if a.UDPBlocked() {
		t.Fatal("a node whose UDP answers says it is blocked")
	}
	b2 := openNode(t, ctx, srv, "blocked2", true)

	for _, tc := range []struct {
		name       string
		dialer, ln *Node
	}{
		{"to-blocked", a, b},
		{"from-blocked", b, a},
		{"both-blocked", b, b2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dc, err := tc.dialer.Dial(ctx, tc.ln.ID(), TransportUDP)
			if err != nil {
				t.Fatalf("Dial: %v", err)
			}
			defer dc.Close()
			ac, err := tc.ln.Accept(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer ac.Close()
			for name, c := range map[string]*Conn{"dialer": dc, "acceptor": ac} {
				if c.Path() != PathRelay {
					t.Errorf("%s: path %s, want relay", name, c.Path())
				}
			}
			for _, side := range []struct {
				n    *Node
				peer ID
			}{{tc.dialer, tc.ln.ID()}, {tc.ln, tc.dialer.ID()}} {
				tr := relayTransport(side.n, side.peer)
				if side.n.UDPBlocked() && tr != "tcp" {
					t.Errorf("a blocked node's TURN transport is %q, want tcp", tr)
				}
			}
			exchange(t, dc, ac, 256<<10)
		})
	}
}

// exchange sends size random bytes each way at once and checks both
// arrive intact (SHA-256).
func exchange(t *testing.T, dc, ac *Conn, size int) {
	t.Helper()
	x, y := make([]byte, size), make([]byte, size)
	rand.Read(x)
	rand.Read(y)
	errc := make(chan error, 2)
	send := func(c *Conn, p []byte) {
		_, err := c.Write(p)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}
	go send(dc, x)
	go send(ac, y)
	type got struct {
		b   []byte
		err error
	}
	gc := make(chan got, 1)
	go func() { b, err := io.ReadAll(ac); gc <- got{b, err} }()
	gotY, err := io.ReadAll(dc)
	if err != nil {
		t.Fatalf("dialer read: %v", err)
	}
	g := <-gc
	if g.err != nil {
		t.Fatalf("acceptor read: %v", g.err)
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatalf("send: %v", err)
		}
	}
	if sha256.Sum256(g.b) != sha256.Sum256(x) || !bytes.Equal(gotY, y) {
		t.Fatalf("data corrupted: got %d and %d bytes, want %d each way", len(g.b), len(gotY), size)
	}
}

// TestUDPBlockedRecovers: once the network lets UDP through again, a node
// that opened UDP-blocked binds over UDP by itself and says so.
func TestUDPBlockedRecovers(t *testing.T) {
	srv := blockedServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	n := openNode(t, ctx, srv, "blocked", true)
	if !n.UDPBlocked() {
		t.Fatal("UDPBlocked() = false for a node whose UDP gets no answer")
	}
	n.cfg.blockUDP.Store(false)
	for n.UDPBlocked() {
		select {
		case <-ctx.Done():
			t.Fatal("the node never bound over UDP once UDP answered")
		case <-time.After(50 * time.Millisecond):
		}
	}
	if !n.PublicAddr().IsValid() {
		t.Fatal("bound over UDP but no public UDP address")
	}
	if n.ctl() != n.rc {
		t.Error("requests still go over TCP once UDP answers")
	}
}
