package ewf

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewf-project/ewf/punch"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

// migrateServer runs ewfd with its embedded relay on loopback.
func migrateServer(t testing.TB) *server.Daemon {
	t.Helper()
	return relayServer(t, 28000)
}

// relayedBytes is what the relay has sent to peers so far.
func relayedBytes(t testing.TB, d *server.Daemon) float64 {
	t.Helper()
	mfs, err := d.Server().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != "ewfd_relay_bytes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == "to_peer" && m.Counter != nil {
					sum += m.Counter.GetValue()
				}
			}
		}
	}
	return sum
}

func openFirewalled(t testing.TB, ctx context.Context, srv, name string, fw *atomic.Bool) *Node {
	t.Helper()
	cfg := Config{Server: srv, IdentityFile: filepath.Join(t.TempDir(), name+".json"),
		PunchTimeout: time.Second, dropPeers: fw}
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

// sender writes random bytes to c in three phases and hashes them: before
// is written at once; then 16 KiB every 10 ms until moved is closed (the
// move happens under this stream); then after, and the end of stream.
func sender(c *Conn, before, after int, moved <-chan struct{}, sum hash.Hash, errc chan<- error) {
	write := func(n int) error {
		p := make([]byte, n)
		rand.Read(p)
		sum.Write(p)
		_, err := c.Write(p)
		return err
	}
	err := write(before)
	for err == nil {
		select {
		case <-moved:
			if err = write(after); err == nil {
				err = c.CloseWrite()
			}
			errc <- err
			return
		case <-time.After(10 * time.Millisecond):
			err = write(16 << 10)
		}
	}
	errc <- err
}

// TestRelayedMovesToDirect: two nodes whose main sockets drop everything
// from peers (a firewall that lets only the server through) connect
// through ewfd's relay. Then the firewall opens: the background punch of
// both sides finds the direct path, the connection moves to it under a
// running transfer each way (Moved, Path, RemoteAddr tell), both
// allocations are released, and every byte written before, during and
// after the move arrives in order (SHA-256 of the whole stream). After
// the move not one more byte crosses the relay.
func TestRelayedMovesToDirect(t *testing.T) {
	d := migrateServer(t)
	srv := d.Addrs()[0].String()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fw := new(atomic.Bool)
	fw.Store(true)
	ln := openFirewalled(t, ctx, srv, "listener", fw)
	dn := openFirewalled(t, ctx, srv, "dialer", fw)
	dc, err := dn.Dial(ctx, ln.ID(), "")
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer dc.Close()
	ac, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	for name, c := range map[string]*Conn{"dialer": dc, "acceptor": ac} {
		if c.Path() != PathRelay {
			t.Fatalf("%s: path %s before the firewall opened, want relay", name, c.Path())
		}
		select {
		case <-c.Moved():
			t.Fatalf("%s: moved behind the firewall", name)
		default:
		}
	}
	if n := d.Relay().Allocations(); n != 2 {
		t.Fatalf("%d allocations, want 2", n)
	}

	const before, after = 256 << 10, 256 << 10
	bothMoved := make(chan struct{})
	errc := make(chan error, 4)
	dSum, aSum := sha256.New(), sha256.New()
	go sender(dc, before, after, bothMoved, dSum, errc)
	go sender(ac, before, after, bothMoved, aSum, errc)
	type got struct {
		sum [sha256.Size]byte
		n   int64
		err error
	}
	recv := func(c *Conn, out chan<- got) {
		h := sha256.New()
		n, err := io.Copy(h, c)
		out <- got{[sha256.Size]byte(h.Sum(nil)), n, err}
	}
	atD, atA := make(chan got, 1), make(chan got, 1)
	go recv(dc, atD)
	go recv(ac, atA)

	// Let the relayed phase carry data, then open the firewall.
	relayedBefore := relayedBytes(t, d)
	deadline := time.Now().Add(10 * time.Second)
	for relayedBytes(t, d) < relayedBefore+2*before {
		if time.Now().After(deadline) {
			t.Fatal("the relayed phase did not carry the first 256 KiB each way")
		}
		time.Sleep(20 * time.Millisecond)
	}
	fw.Store(false)
	for name, c := range map[string]*Conn{"dialer": dc, "acceptor": ac} {
		select {
		case <-c.Moved():
		case <-time.After(20 * time.Second):
			t.Fatalf("%s: no move to the direct path within 20 s of the firewall opening", name)
		}
		if c.Path() != PathDirect {
			t.Errorf("%s: path %s after Moved", name, c.Path())
		}
		if _, ok := c.Relay(); ok {
			t.Errorf("%s: reports a relay after the move", name)
		}
	}
	for name, pair := range map[string][2]*Node{"dialer": {dn, ln}, "acceptor": {ln, dn}} {
		c := map[string]*Conn{"dialer": dc, "acceptor": ac}[name]
		ra, _ := c.RemoteAddr().(*net.UDPAddr)
		peerPort := pair[1].sock.LocalAddr().(*net.UDPAddr).Port
		if ra == nil || ra.Port != peerPort {
			t.Errorf("%s: remote %v after the move, want the peer's own socket (port %d)", name, c.RemoteAddr(), peerPort)
		}
	}
	deadline = time.Now().Add(10 * time.Second)
	for d.Relay().Allocations() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d allocations left after both sides moved", d.Relay().Allocations())
		}
		time.Sleep(20 * time.Millisecond)
	}
	relayedAtMove := relayedBytes(t, d)
	close(bothMoved)
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	gd, ga := <-atD, <-atA
	if gd.err != nil || ga.err != nil {
		t.Fatalf("read: %v / %v", gd.err, ga.err)
	}
	if ga.sum != [sha256.Size]byte(dSum.Sum(nil)) {
		t.Errorf("dialer→acceptor: %d bytes arrived, SHA-256 differs", ga.n)
	}
	if gd.sum != [sha256.Size]byte(aSum.Sum(nil)) {
		t.Errorf("acceptor→dialer: %d bytes arrived, SHA-256 differs", gd.n)
	}
	if ga.n < before+after || gd.n < before+after {
		t.Errorf("only %d / %d bytes", ga.n, gd.n)
	}
	if got := relayedBytes(t, d); got != relayedAtMove {
		t.Errorf("%v bytes crossed the relay after the move", got-relayedAtMove)
	}
	// A second connection with the same peer, direct from the start,
	// comes from the very address whose datagrams are diverted to the
	// moved one: only the moved connection's IDs are diverted, so the
	// second one works beside it.
	dc2, err := dn.Dial(ctx, ln.ID(), "")
	if err != nil {
		t.Fatalf("second Dial: %v", err)
	}
	defer dc2.Close()
	ac2, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ac2.Close()
	if dc2.Path() != PathDirect || dc2.RemoteAddr().String() != dc.RemoteAddr().String() {
		t.Fatalf("second connection: path %s remote %v, want direct to %v", dc2.Path(), dc2.RemoteAddr(), dc.RemoteAddr())
	}
	exchange(t, dc2, ac2, 64<<10)
	// The moved connection runs on quic-go's optimised socket path, as
	// the direct one beside it does (GSO: one sendmsg per batch).
	if g, g2 := dc.qc.ConnectionState().GSO, dc2.qc.ConnectionState().GSO; g != g2 {
		t.Errorf("GSO on the moved connection %v, on a direct one %v", g, g2)
	}
}

// TestCIDGenOwns: the moved connection's connection IDs are recognised in
// a short header, and nothing else is: other IDs, other keys, long
// headers, short packets; without allocating.
func TestCIDGenOwns(t *testing.T) {
	g, other := newCIDGen(), newCIDGen()
	var scratch [16]byte
	pkt := func(first byte, id []byte) []byte {
		return append(append([]byte{first}, id...), make([]byte, 40)...)
	}
	for range 100 {
		id, err := g.GenerateConnectionID()
		if err != nil || id.Len() != g.ConnectionIDLen() {
			t.Fatalf("ID %v, %v", id, err)
		}
		if !g.owns(pkt(0x40, id.Bytes()), &scratch) {
			t.Fatalf("its own ID %x not recognised", id.Bytes())
		}
		if other.owns(pkt(0x40, id.Bytes()), &scratch) {
			t.Fatalf("another generator claims %x", id.Bytes())
		}
		if g.owns(pkt(0xc0, id.Bytes()), &scratch) {
			t.Fatal("a long header was claimed")
		}
		if g.owns(pkt(0x40, id.Bytes())[:16], &scratch) {
			t.Fatal("a packet too short to hold the ID was claimed")
		}
		var r [16]byte
		rand.Read(r[:])
		if g.owns(pkt(0x40, r[:]), &scratch) {
			t.Fatalf("a random ID %x was claimed", r)
		}
	}
	id, _ := g.GenerateConnectionID()
	b := pkt(0x40, id.Bytes())
	if a := testing.AllocsPerRun(100, func() { g.owns(b, &scratch) }); a != 0 {
		t.Fatalf("owns allocates %v times", a)
	}
}

// TestFirewallKeepsRelay: as long as the firewall stays closed the
// background punch finds nothing, and the connection stays relayed and
// working: the move needs a MAC-verified answer from a direct address.
func TestFirewallKeepsRelay(t *testing.T) {
	d := migrateServer(t)
	srv := d.Addrs()[0].String()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	fw := new(atomic.Bool)
	fw.Store(true)
	ln := openFirewalled(t, ctx, srv, "listener", fw)
	dn := openFirewalled(t, ctx, srv, "dialer", fw)
	dc, err := dn.Dial(ctx, ln.ID(), "")
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer dc.Close()
	ac, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	// Four rounds of background punching (1, 2, 4 s apart) in which the
	// migrators must have run but cannot have moved.
	time.Sleep(4 * time.Second)
	for name, n := range map[string]*Node{"dialer": dn, "acceptor": ln} {
		n.mu.Lock()
		mg := n.migrators[map[string]ID{"dialer": ln.ID(), "acceptor": dn.ID()}[name]]
		n.mu.Unlock()
		if mg == nil {
			t.Fatalf("%s: no background punch for its relayed connection", name)
		}
		mg.mu.Lock()
		st := mg.m.Stats()
		mg.mu.Unlock()
		if st.Requests < 2 {
			t.Errorf("%s: %d background PUNCH requests in 4 s, want at least 2", name, st.Requests)
		}
	}
	if dc.Path() != PathRelay || ac.Path() != PathRelay {
		t.Fatalf("paths %s / %s behind a closed firewall", dc.Path(), ac.Path())
	}
	exchange(t, dc, ac, 64<<10)
	// quic-go sends GSO batches on the relayed connection as on a direct
	// one (pathSwitch shows it the main socket); the relay takes them
	// cut into single datagrams, and the exchange above checked they
	// all arrived.
	if dc.qc.ConnectionState().GSO {
		dn.mu.Lock()
		mg := dn.migrators[ln.ID()]
		dn.mu.Unlock()
		if mg == nil || mg.ps.cut.Load() == 0 {
			t.Error("no GSO batch was cut for the relay: the relay leg was not exercised with GSO")
		}
	}
	if n := d.Relay().Allocations(); n != 2 {
		t.Fatalf("%d allocations, want 2", n)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("timed out")
	}
}

// TestForgedPunchDivertsNothing: only a PUNCH whose MAC verifies under
// the introduction's SECRET may divert a relayed connection's traffic. A
// stranger who knows both IDs and the acceptor's address sends PUNCH
// requests keyed by a SECRET of its own: the background punch counts them
// as bad MACs, no diversion is installed, the connection stays relayed.
// The control: the same stranger holding the real SECRET does get its
// address diverted (which is why the SECRET must stay between the peers
// and the server), and still cannot move the sends, which needs an
// answer to the acceptor's own request.
func TestForgedPunchDivertsNothing(t *testing.T) {
	d := migrateServer(t)
	srv := d.Addrs()[0].String()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ln := openFirewalled(t, ctx, srv, "listener", nil)
	cfg := Config{Server: srv, IdentityFile: filepath.Join(t.TempDir(), "dialer.json"), Relay: RelayAlways}
	dn, err := Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dn.Close()
	dc, err := dn.Dial(ctx, ln.ID(), "")
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	defer dc.Close()
	ac, err := ln.Accept(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	// The acceptor punches in the background; the dialer, which chose the
	// relay, never answers.
	ln.mu.Lock()
	mg := ln.migrators[dn.ID()]
	ln.mu.Unlock()
	if mg == nil {
		t.Fatal("the acceptor runs no background punch for its relayed connection")
	}
	stranger, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	target := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(ln.sock.LocalAddr().(*net.UDPAddr).Port))
	from := stranger.LocalAddr().(*net.UDPAddr).AddrPort()
	punchAs := func(secret wire.Secret) {
		for range 3 {
			now := time.Now()
			m, err := punch.New(punch.Config{Self: dn.ID(), Peer: ln.ID(), Secret: secret,
				Candidates: []netip.AddrPort{target}}, now)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range m.Tick(now) {
				stranger.WriteToUDPAddrPort(p.Data, p.To)
			}
		}
	}
	diverted := func() bool {
		tb := ln.sc.diverts.Load()
		return tb != nil && (*tb)[from] != nil
	}
	var forged wire.Secret
	rand.Read(forged[:])
	punchAs(forged)
	deadline := time.Now().Add(2 * time.Second)
	for {
		mg.mu.Lock()
		bad := mg.m.Stats().BadMAC
		mg.mu.Unlock()
		if bad > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the forged PUNCH never reached the background punch")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if diverted() || ac.Path() != PathRelay {
		t.Fatalf("a forged PUNCH diverted %v (path %s)", from, ac.Path())
	}
	// Control: with the real SECRET the address is diverted; the sends
	// stay on the relay.
	punchAs(mg.secret)
	deadline = time.Now().Add(2 * time.Second)
	for !diverted() {
		if time.Now().After(deadline) {
			t.Fatal("control: a PUNCH under the real SECRET diverted nothing: the test cannot see a diversion")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ac.Path() != PathRelay {
		t.Fatalf("control: path %s without an answer to the acceptor's own request", ac.Path())
	}
	exchange(t, dc, ac, 64<<10)
}

// BenchmarkMovedThroughput moves bytes one way over a connection that was
// direct from the start, one that stays relayed (firewall closed), and
// one that was relayed and moved to the direct path (pathSwitch under
// QUIC, datagrams through the node's main socket), side by side on
// loopback; ROUNDS=5 bench/moved.sh runs direct and moved in alternating
// rounds (docs/PROTOCOL.md §25, "Cost"):
//
//	go test -run '^$' -bench BenchmarkMovedThroughput -benchtime 128x -count 3 .
func BenchmarkMovedThroughput(b *testing.B) {
	for _, mode := range []string{"direct", "relay", "moved"} {
		b.Run(mode, func(b *testing.B) {
			d := migrateServer(b)
			srv := d.Addrs()[0].String()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			fw := new(atomic.Bool)
			fw.Store(mode != "direct")
			ln := openFirewalled(b, ctx, srv, "listener", fw)
			dn := openFirewalled(b, ctx, srv, "dialer", fw)
			dc, err := dn.Dial(ctx, ln.ID(), "")
			if err != nil {
				b.Fatal(err)
			}
			ac, err := ln.Accept(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if mode == "moved" {
				fw.Store(false)
				for _, c := range []*Conn{dc, ac} {
					select {
					case <-c.Moved():
					case <-time.After(20 * time.Second):
						b.Fatal("no move")
					}
				}
				for d.Relay().Allocations() != 0 {
					time.Sleep(10 * time.Millisecond)
				}
			}
			if want := map[string]Path{"direct": PathDirect, "relay": PathRelay, "moved": PathDirect}[mode]; dc.Path() != want {
				b.Fatalf("path %s, want %s", dc.Path(), want)
			}
			const chunk = 1 << 20
			p := make([]byte, chunk)
			rand.Read(p)
			done := make(chan int64, 1)
			go func() {
				n, _ := io.Copy(io.Discard, ac)
				done <- n
			}()
			b.SetBytes(chunk)
			s0 := dc.qc.ConnectionStats()
			var ps *pathSwitch // the receiver's, when moved
			ln.mu.Lock()
			if mg := ln.migrators[dn.ID()]; mg != nil {
				ps = mg.ps
			}
			ln.mu.Unlock()
			var q0 uint64
			if ps != nil {
				q0 = ps.dropped.Load()
			}
			b.ResetTimer()
			for range b.N {
				if _, err := dc.Write(p); err != nil {
					b.Fatal(err)
				}
			}
			dc.CloseWrite()
			if n := <-done; n != int64(b.N)*chunk {
				b.Fatalf("%d bytes arrived, want %d", n, int64(b.N)*chunk)
			}
			b.StopTimer()
			// What the sender's QUIC saw: datagram size (path MTU
			// discovery), losses (a full queue or socket buffer).
			s1 := dc.qc.ConnectionStats()
			if pk := s1.PacketsSent - s0.PacketsSent; pk > 0 {
				b.ReportMetric(float64(s1.BytesSent-s0.BytesSent)/float64(pk), "B/datagram")
				b.ReportMetric(float64(s1.PacketsLost-s0.PacketsLost)/float64(pk)*100, "%lost")
				if ps != nil {
					b.ReportMetric(float64(ps.dropped.Load()-q0)/float64(pk)*100, "%queue-drop")
				}
			}
			ac.CloseWrite()
			io.Copy(io.Discard, dc)
			dc.Close()
			ac.Close()
		})
	}
}
