package ewf_test

import (
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

// legacyConfig is config with a version 1 identity file (a random ID, no
// key), as the ewf before key-bound IDs wrote.
func legacyConfig(t *testing.T, srv, name string) ewf.Config {
	cfg := config(t, srv, name)
	var id wire.ID
	rand.Read(id[:])
	id[0] = 0x01 // not the key-bound marker
	data := `{"version": 1, "id": "` + id.String() + `", "keys": {}}`
	if err := os.WriteFile(cfg.IdentityFile, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestAuthModes: every pairing of legacy and key-bound identities
// connects over both transports, and each side reports honestly how it
// proved the other: by key for a key-bound peer, by the secret for a
// legacy one.
func TestAuthModes(t *testing.T) {
	// Sixteen nodes in a second exceed ewfd's default per-source request
	// rate (50/s, burst 100), all from 127.0.0.1; that limit is not what
	// this test is about.
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir(), Rate: 100000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	srv := d.Addrs()[0].String()
	type mk func(*testing.T, string, string) ewf.Config
	cases := []struct {
		name             string
		dialer, listener mk
		// What the dialer reports about the listener, and the other way.
		dialerSees, listenerSees ewf.Auth
	}{
		{"legacy-legacy", legacyConfig, legacyConfig, ewf.AuthSecret, ewf.AuthSecret},
		{"key-key", config, config, ewf.AuthKey, ewf.AuthKey},
		{"key dials legacy", config, legacyConfig, ewf.AuthSecret, ewf.AuthKey},
		{"legacy dials key", legacyConfig, config, ewf.AuthKey, ewf.AuthSecret},
	}
	for _, tr := range []ewf.Transport{ewf.TransportUDP, ewf.TransportTCP} {
		for _, c := range cases {
			t.Run(string(tr)+"/"+c.name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				l, err := ewf.Listen(ctx, c.listener(t, srv, "listener"))
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				cfg := c.dialer(t, srv, "dialer")
				cfg.Transport = tr
				dc, err := ewf.Dial(ctx, cfg, l.ID())
				if err != nil {
					t.Fatal(err)
				}
				ac, err := l.AcceptContext(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if dc.Auth() != c.dialerSees || ac.Auth() != c.listenerSees {
					t.Errorf("dialer sees auth=%s, listener sees auth=%s; want %s, %s",
						dc.Auth(), ac.Auth(), c.dialerSees, c.listenerSees)
				}
				// One byte each way: the connection works.
				if _, err := dc.Write([]byte{7}); err != nil {
					t.Fatal(err)
				}
				var b [1]byte
				if _, err := ac.Read(b[:]); err != nil || b[0] != 7 {
					t.Fatalf("read %v, %v", b, err)
				}
				closeBoth(t, dc, ac)
			})
		}
	}
}

// TestAllow: a listener with an allow list takes the listed peer and
// refuses another in the TLS handshake, over both transports; the refused
// dialer gets ErrPeerAuth and the listener reports the refusal.
func TestAllow(t *testing.T) {
	srv := startServer(t)
	for _, tr := range []ewf.Transport{ewf.TransportUDP, ewf.TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// The allowed peer's ID must be known before the listener
			// starts: open its node first.
			friendCfg := config(t, srv, "friend")
			friendCfg.Transport = tr
			friendCfg.EnableTCP = true
			friend, err := ewf.Open(ctx, friendCfg)
			if err != nil {
				t.Fatal(err)
			}
			defer friend.Close()

			var mu sync.Mutex
			refused := map[ewf.ID]error{}
			lcfg := config(t, srv, "listener")
			lcfg.Allow = ewf.AllowList{friend.ID(): true}.Allows
			lcfg.OnRefused = func(p ewf.ID, err error) {
				mu.Lock()
				refused[p] = err
				mu.Unlock()
			}
			l, err := ewf.Listen(ctx, lcfg)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()

			scfg := config(t, srv, "stranger")
			scfg.Transport = tr
			sc, err := ewf.Dial(ctx, scfg, l.ID())
			if err == nil {
				sc.Close()
				t.Fatal("a peer not on the allow list connected")
			}
			if !errors.Is(err, ewf.ErrPeerAuth) {
				t.Fatalf("stranger's dial: %v, want ErrPeerAuth", err)
			}
			mu.Lock()
			if len(refused) != 1 || !errors.Is(firstErr(refused), ewf.ErrPeerAuth) {
				t.Errorf("listener refusals: %v", refused)
			}
			mu.Unlock()

			fc, err := friend.Dial(ctx, l.ID(), tr)
			if err != nil {
				t.Fatalf("allowed peer's dial: %v", err)
			}
			ac, err := l.AcceptContext(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if ac.Peer() != friend.ID() {
				t.Errorf("accepted %s, want the allowed %s", ac.Peer(), friend.ID())
			}
			closeBoth(t, fc, ac)
		})
	}
}

func firstErr(m map[ewf.ID]error) error {
	for _, err := range m {
		return err
	}
	return nil
}

func TestParseAllowList(t *testing.T) {
	const a, b = "0123456789abcdef0123456789abcdef", "ef01a1aac4069dbb0ff73835d5768bd5"
	good := "# friends\n" + a + "\n\n   " + b + "   # laptop\n"
	list, err := ewf.ParseAllowList(stringsReader(good))
	if err != nil {
		t.Fatal(err)
	}
	ia, _ := ewf.ParseID(a)
	ib, _ := ewf.ParseID(b)
	var other ewf.ID
	if len(list) != 2 || !list.Allows(ia) || !list.Allows(ib) || list.Allows(other) {
		t.Errorf("list %v", list)
	}
	for name, bad := range map[string]string{
		"short":     a + "\n" + a[:31] + "\n",
		"two IDs":   a + " " + b + "\n",
		"not hex":   "zz" + a[2:] + "\n",
		"zero":      "00000000000000000000000000000000\n",
		"key, no #": a + " laptop\n",
	} {
		if _, err := ewf.ParseAllowList(stringsReader(bad)); err == nil {
			t.Errorf("%s: accepted %q", name, bad)
		}
	}
	if _, err := ewf.ParseAllowList(stringsReader(a + "\nnope\n")); err == nil || !containsLine(err, 2) {
		t.Errorf("error does not name line 2: %v", err)
	}
	if _, err := ewf.LoadAllowList(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }

func containsLine(err error, n int) bool {
	return strings.Contains(err.Error(), "line "+strconv.Itoa(n)+":")
}

// closeBoth ends a connection in order: each side ends its direction and
// reads the other's to the end, so that neither Close waits for a peer
// that does not read.
func closeBoth(t *testing.T, a, b *ewf.Conn) {
	t.Helper()
	for _, c := range []*ewf.Conn{a, b} {
		if err := c.CloseWrite(); err != nil {
			t.Error(err)
		}
	}
	for _, c := range []*ewf.Conn{a, b} {
		if _, err := io.Copy(io.Discard, c); err != nil {
			t.Error(err)
		}
	}
	a.Close()
	b.Close()
}
