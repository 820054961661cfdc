package ewf_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf"
)

// openTCPNode opens a node with a TCP binding that dials over TCP.
func openTCPNode(t *testing.T, ctx context.Context, srv, name string) *ewf.Node {
	t.Helper()
	cfg := config(t, srv, name)
	cfg.Transport = ewf.TransportTCP
	cfg.EnableTCP = true
	n, err := ewf.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestTCPConcurrentDialers: two dialers on 127.0.0.1 dial one listener over
// TCP at the same moment, round after round. Every TCP connection the
// listener accepts comes from the same IP, so it must go to the attempt of
// the peer that made it (by its exact address, or by the TLS SNI of its
// introduction): both dialers connect, each to the listener, and the
// listener's two connections are each one of theirs, end to end.
func TestTCPConcurrentDialers(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	lcfg := config(t, srv, "listener")
	l, err := ewf.Listen(ctx, lcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dialers := []*ewf.Node{openTCPNode(t, ctx, srv, "dialer1"), openTCPNode(t, ctx, srv, "dialer2")}
	for round := range 5 {
		conns := make([]*ewf.Conn, len(dialers))
		errs := make([]error, len(dialers))
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i, d := range dialers {
			wg.Go(func() {
				<-start
				conns[i], errs[i] = d.Dial(ctx, l.ID(), ewf.TransportTCP)
			})
		}
		close(start)
		wg.Wait()
		for i := range dialers {
			if errs[i] != nil {
				t.Fatalf("round %d: dialer %d: %v", round, i+1, errs[i])
			}
		}
		// A Dial returns once its handshake is done; the listener
		// delivers each connection half a round trip later.
		accepted := map[ewf.ID]*ewf.Conn{}
		for range dialers {
			actx, acancel := context.WithTimeout(ctx, 10*time.Second)
			ac, err := l.AcceptContext(actx)
			acancel()
			if err != nil {
				t.Fatalf("round %d: accept: %v", round, err)
			}
			accepted[ac.Peer()] = ac
		}
		for i, d := range dialers {
			dc, ac := conns[i], accepted[d.ID()]
			if dc.Peer() != l.ID() || dc.Transport() != ewf.TransportTCP {
				t.Fatalf("round %d: dialer %d connected to %s over %s, want the listener %s over TCP",
					round, i+1, dc.Peer(), dc.Transport(), l.ID())
			}
			if ac == nil {
				t.Fatalf("round %d: the listener accepted %v, not dialer %d (%s)", round, keys(accepted), i+1, d.ID())
			}
			// The two ends are one connection: what the dialer says
			// arrives at the accepted Conn naming it.
			msg := []byte(d.ID().String())
			if _, err := dc.Write(msg); err != nil {
				t.Fatal(err)
			}
			got := make([]byte, len(msg))
			ac.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.ReadFull(ac, got); err != nil || string(got) != string(msg) {
				t.Fatalf("round %d: accepted Conn of dialer %d read %q, %v", round, i+1, got, err)
			}
			ac.SetReadDeadline(time.Time{})
			closeBoth(t, dc, ac)
		}
	}
}

// TestTCPRefusedAndAcceptedAtOnce: a dialer the allow list refuses and an
// allowed one dial the listener over TCP at the same moment, from the same
// IP: the refused one gets ErrPeerAuth, the allowed one connects, round
// after round (the refusal must not end, or take, the other's connection).
func TestTCPRefusedAndAcceptedAtOnce(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	stranger := openTCPNode(t, ctx, srv, "stranger")
	friend := openTCPNode(t, ctx, srv, "friend")
	lcfg := config(t, srv, "listener")
	lcfg.Allow = ewf.AllowList{friend.ID(): true}.Allows
	l, err := ewf.Listen(ctx, lcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for round := range 5 {
		var sc, fc *ewf.Conn
		var serr, ferr error
		var wg sync.WaitGroup
		start := make(chan struct{})
		wg.Go(func() { <-start; sc, serr = stranger.Dial(ctx, l.ID(), ewf.TransportTCP) })
		wg.Go(func() { <-start; fc, ferr = friend.Dial(ctx, l.ID(), ewf.TransportTCP) })
		close(start)
		wg.Wait()
		if serr == nil {
			sc.Close()
			t.Fatalf("round %d: the stranger connected", round)
		}
		if !errors.Is(serr, ewf.ErrPeerAuth) {
			t.Fatalf("round %d: stranger's dial: %v, want ErrPeerAuth", round, serr)
		}
		if ferr != nil {
			t.Fatalf("round %d: allowed peer's dial: %v", round, ferr)
		}
		ac, err := l.AcceptContext(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ac.Peer() != friend.ID() || fc.Peer() != l.ID() {
			t.Fatalf("round %d: accepted %s (want %s), friend connected to %s (want %s)",
				round, ac.Peer(), friend.ID(), fc.Peer(), l.ID())
		}
		closeBoth(t, fc, ac)
	}
}

func keys(m map[ewf.ID]*ewf.Conn) []ewf.ID {
	var ks []ewf.ID
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
