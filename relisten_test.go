package ewf_test

import (
	"context"
	"testing"
	"time"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/store/bolt"
)

// TestListenerRegistersAgain: the server forgets a listener's registration
// while it listens, once because the registration expired (the store's
// expiry deletes it, as RegistrationTTL does to a host that was away
// longer) and once because the server restarted without its data. The listener's next
// refresh is answered "not registered"; it registers the same ID again,
// keeps the new KEY in its identity file, and a peer reaches it.
func TestListenerRegistersAgain(t *testing.T) {
	for _, how := range []string{"expired", "data-lost"} {
		t.Run(how, func(t *testing.T) {
			st, err := bolt.Open(t.TempDir(), bolt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			scfg := server.Config{Listen: []string{"127.0.0.1:0"}, Store: st}
			d, err := server.Start(scfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			addr := d.Addrs()[0].String()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cfg := config(t, addr, "listener")
			cfg.KeepaliveInterval = func() time.Duration { return 200 * time.Millisecond }
			l, err := ewf.Listen(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			before := key(t, cfg.IdentityFile, addr)

			switch how {
			case "expired":
				// Everything idle before a cutoff two days ahead: this one.
				if n, err := st.Expire(time.Now().Add(48 * time.Hour)); n != 1 || err != nil {
					t.Fatalf("expired %d registrations (%v), want the listener's", n, err)
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
			for key(t, cfg.IdentityFile, addr) == before {
				select {
				case <-ctx.Done():
					t.Fatal("the listener never registered again")
				case <-time.After(50 * time.Millisecond):
				}
			}
			if id := loadIdentity(t, cfg.IdentityFile).ID; id != l.ID() {
				t.Fatalf("registered again as %s, want the same ID %s", id, l.ID())
			}

			var c *ewf.Conn
			for { // bound again with the new KEY right after registering
				c, err = ewf.Dial(ctx, config(t, addr, "dialer"), l.ID())
				if err == nil || ctx.Err() != nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("dial after registering again: %v", err)
			}
			ac, err := l.AcceptContext(ctx)
			if err != nil {
				c.Close()
				t.Fatal(err)
			}
			c.Write([]byte("after"))
			c.CloseWrite()
			if got := readAll(t, ac); string(got) != "after" {
				t.Errorf("listener read %q", got)
			}
			c.Close()
			ac.Close()
		})
	}
}

func loadIdentity(t *testing.T, path string) *client.Identity {
	t.Helper()
	id, err := client.LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func key(t *testing.T, path, server string) [16]byte {
	return loadIdentity(t, path).Keys[server]
}
