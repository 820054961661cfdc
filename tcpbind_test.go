package ewf_test

import (
	"context"
	"crypto/sha256"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/server"
)

// heldClock is an ewfd clock that stands still while held, so that a
// per-source token bucket emptied by the test stays empty until release:
// the refusals below are then certain, not a race with the refill.
type heldClock struct {
	held atomic.Bool
	at   time.Time
}

func (c *heldClock) now() time.Time {
	if c.held.Load() {
		return c.at
	}
	return time.Now()
}

// metric reads the counter name{label=value} of d (0 if absent).
func metric(t *testing.T, d *server.Daemon, name, label, value string) float64 {
	t.Helper()
	mfs, err := d.Server().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == label && lp.GetValue() == value {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// drainRate spends n tokens of 127.0.0.1's per-source bucket at srv with
// STUN Binding requests over UDP, each of which must be answered.
func drainRate(t *testing.T, srv string, n int) {
	t.Helper()
	c, err := net.Dial("udp", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1500)
	for i := range n {
		if _, err := c.Write(stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Fatalf("STUN request %d of %d to drain the rate: %v", i+1, n, err)
		}
	}
}

// A listener whose first TCP binding is refused by ewfd does not stay
// UDP-only for its life: it is ready at once over UDP, tries the TCP
// binding again with backoff (node.go bindTCPAgain), waits longer after a
// "rate limited" answer, and once ewfd lets it through a peer dials it
// over TCP. The refusal is ewfd's per-source rate (server.Config.Burst,
// on a clock held still) on the address the node's TCP comes from,
// 127.0.0.1, while its UDP socket is on 127.0.0.2 with a bucket of its
// own: with one token left, the STUN request passes and the BIND is
// answered "rate limited" (docs/PROTOCOL.md §9.1); with none, ewfd closes
// the connection at the STUN request, which the node sees as EOF.
func TestTCPBindRetriedAfterRefusal(t *testing.T) {
	const burst = 20
	for _, tc := range []struct {
		name  string
		drain int
	}{
		{"rate-limited", burst - 1},
		{"closed", burst},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clk := &heldClock{at: time.Now()}
			clk.held.Store(true)
			d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir(),
				Burst: burst, Now: clk.now})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			srv := d.Addrs()[0].String()
			drainRate(t, srv, tc.drain)

			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cfg := config(t, srv, "listener")
			cfg.LocalAddr = "127.0.0.2:0"
			cfg.DisableNATDiscovery = true
			l, err := ewf.Listen(ctx, cfg)
			if err != nil {
				t.Fatalf("listen (UDP should do): %v", err)
			}
			defer l.Close()
			if a, ok := l.Node().PublicTCPAddr(); ok {
				t.Fatalf("first TCP binding made (%s): the rate did not refuse it", a)
			}
			limited := metric(t, d, "ewfd_requests_total", "outcome", "rate_limited")
			closed := metric(t, d, "ewfd_dropped_total", "reason", "rate_limited")
			if tc.name == "rate-limited" {
				if limited != 1 || closed != 0 {
					t.Fatalf("ewfd answered %v rate-limited and closed on %v, want 1 and 0", limited, closed)
				}
				// "Rate limited" means slow down: nothing more comes
				// for a while (a retry now would be refused again,
				// and counted). The next try is due 3-4 s after the
				// refusal, a plain backoff's within 1 s: 1.5 s after
				// Open tells them apart with room for a slow Open.
				time.Sleep(1500 * time.Millisecond)
				if l2, c2 := metric(t, d, "ewfd_requests_total", "outcome", "rate_limited"),
					metric(t, d, "ewfd_dropped_total", "reason", "rate_limited"); l2 != limited || c2 != closed {
					t.Fatalf("within 1.5 s of a rate-limited answer the node tried again (answered %v, closed %v)", l2, c2)
				}
			} else if closed < 1 {
				t.Fatalf("ewfd closed no connection over the rate (answered %v)", limited)
			}
			clk.held.Store(false) // the bucket refills

			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, ok := l.Node().PublicTCPAddr(); ok {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("no TCP binding 10 s after ewfd let the node through: it never tried again")
				}
				time.Sleep(50 * time.Millisecond)
			}

			dcfg := config(t, srv, "dialer")
			dcfg.LocalAddr = "127.0.0.3:0"
			dcfg.DisableNATDiscovery = true
			dcfg.Transport = ewf.TransportTCP
			dc, err := ewf.Dial(ctx, dcfg, l.ID())
			if err != nil {
				t.Fatalf("TCP dial to the listener: %v", err)
			}
			defer dc.Close()
			ac, err := l.AcceptContext(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer ac.Close()
			if dc.Transport() != ewf.TransportTCP || ac.Transport() != ewf.TransportTCP {
				t.Fatalf("connected over %s/%s, want tcp", dc.Transport(), ac.Transport())
			}
			msg := randomBytes(t, 32<<10)
			errc := make(chan error, 1)
			go func() {
				_, err := dc.Write(msg)
				if err == nil {
					err = dc.CloseWrite()
				}
				errc <- err
			}()
			if got := readAll(t, ac); sha256.Sum256(got) != sha256.Sum256(msg) {
				t.Fatal("listener got other bytes")
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
		})
	}
}
