package ewf

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/store/bolt"
	"github.com/ewf-project/ewf/wire"
)

// TestBlockedNodeRegistersAgain is TestListenerRegistersAgain (root
// package tests) for a node bound over TCP only: its UDP gets no answer,
// so no UDP keepalive runs to hear that the registration is gone. When
// the registration expires (the store's expiry), or the server comes back
// without its data (a new store on the same address), the node registers
// the same ID again over TCP under a new KEY, saves it, binds with it,
// and a peer can connect to it again (through the relay, as to any
// UDP-blocked node).
func TestBlockedNodeRegistersAgain(t *testing.T) {
	for _, how := range []string{"expired", "data-lost"} {
		t.Run(how, func(t *testing.T) {
			st, err := bolt.Open(t.TempDir(), bolt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			scfg := server.Config{Listen: []string{"127.0.0.1:0"}, Store: st,
				Relay: loopbackRelay(28000)}
			d, err := server.Start(scfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			addr := d.Addrs()[0].String()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()

			cfg := Config{Server: addr, IdentityFile: filepath.Join(t.TempDir(), "blocked.json"),
				UDPWait: 500 * time.Millisecond, blockUDP: new(atomic.Bool),
				KeepaliveInterval: func() time.Duration { return 200 * time.Millisecond }}
			cfg.blockUDP.Store(true)
			b, err := Listen(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			if !b.Node().UDPBlocked() {
				t.Fatal("the node is not UDP-blocked")
			}
			savedKey := func() wire.Key {
				id, err := client.LoadIdentity(cfg.IdentityFile)
				if err != nil {
					t.Fatal(err)
				}
				if id.ID != b.ID() {
					t.Fatalf("identity file holds %s, want the same ID %s", id.ID, b.ID())
				}
				return id.Keys[addr]
			}
			before := savedKey()

			switch how {
			case "expired":
				if n, err := st.Expire(time.Now().Add(48 * time.Hour)); n != 1 || err != nil {
					t.Fatalf("expired %d registrations (%v), want the node's", n, err)
				}
			case "data-lost":
				d.Close()
				st2, err := bolt.Open(t.TempDir(), bolt.Options{})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st2.Close() })
				scfg.Listen, scfg.Store = []string{addr}, st2
				if d, err = server.Start(scfg); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { d.Close() })
			}
			for savedKey() == before {
				select {
				case <-ctx.Done():
					t.Fatal("the UDP-blocked node never registered again")
				case <-time.After(50 * time.Millisecond):
				}
			}
			if !b.Node().UDPBlocked() {
				t.Fatal("the node registered again over UDP, which is blocked")
			}

			// Bound again with the new KEY: a peer gets through.
			dn := openNode(t, ctx, addr, "dialer", false)
			var c *Conn
			for {
				c, err = dn.Dial(ctx, b.ID(), TransportUDP)
				if err == nil || ctx.Err() != nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("dial after registering again: %v", err)
			}
			defer c.Close()
			ac, err := b.AcceptContext(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer ac.Close()
			if c.Path() != PathRelay || ac.Path() != PathRelay {
				t.Errorf("paths %s and %s, want relay (the node's UDP is blocked)", c.Path(), ac.Path())
			}
			exchange(t, c, ac, 64<<10)
		})
	}
}
