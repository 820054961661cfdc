package ewf

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

// TestRefusedAtIntroduction: a listener whose allow list does not name the
// dialer answers the introduction with an authenticated refusal through
// the server (SIGNAL with REFUSED, docs/PROTOCOL.md §20.7) and does not
// punch: the dialer's Dial fails with ErrPeerAuth because of that refusal
// (not a handshake, not a timeout), not one PUNCH from the listener
// reaches it, and the listener keeps no introduction, attempt or session
// for it. The control case, the same dialer on the list, shows that the
// PUNCH count would see the listener's punches.
func TestRefusedAtIntroduction(t *testing.T) {
	// Eight nodes from 127.0.0.1 in a second would meet ewfd's default
	// per-source rate, which is not what this test is about.
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir(), Rate: 100000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	srv := d.Addrs()[0].String()
	for _, tr := range []Transport{TransportUDP, TransportTCP} {
		for _, allowed := range []bool{false, true} {
			name := string(tr) + "/refused"
			if allowed {
				name = string(tr) + "/allowed (control)"
			}
			t.Run(name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				dir := t.TempDir()
				var punches atomic.Int64
				dn, err := Open(ctx, Config{Server: srv, Transport: tr, EnableTCP: true,
					IdentityFile: filepath.Join(dir, "d.json"), punchesIn: &punches})
				if err != nil {
					t.Fatal(err)
				}
				defer dn.Close()
				var mu sync.Mutex
				var refused []error
				other := dn.ID()
				if !allowed {
					other[15] ^= 1 // another ID
				}
				l, err := Listen(ctx, Config{Server: srv, IdentityFile: filepath.Join(dir, "l.json"),
					Allow: AllowList{other: true}.Allows,
					OnRefused: func(p ID, err error) {
						mu.Lock()
						defer mu.Unlock()
						if p == dn.ID() {
							refused = append(refused, err)
						}
					}})
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()

				c, err := dn.Dial(ctx, l.ID(), tr)
				if allowed {
					if err != nil {
						t.Fatalf("allowed dialer: %v", err)
					}
					ac, err := l.AcceptContext(ctx)
					if err != nil {
						t.Fatal(err)
					}
					for _, x := range []*Conn{c, ac} {
						x.CloseWrite()
					}
					for _, x := range []*Conn{c, ac} {
						x.SetReadDeadline(time.Now().Add(5 * time.Second))
						io.Copy(io.Discard, x)
					}
					c.Close()
					ac.Close()
					if punches.Load() == 0 {
						t.Fatal("no PUNCH from the listener counted: the count proves nothing")
					}
					return
				}
				if err == nil {
					c.Close()
					t.Fatal("a dialer not on the allow list connected")
				}
				if !errors.Is(err, ErrPeerAuth) || !errors.Is(err, errRefused) {
					t.Fatalf("dial: %v, want ErrPeerAuth from the refusal at introduction", err)
				}
				// Any PUNCH the listener had sent would have arrived
				// on loopback by now.
				time.Sleep(300 * time.Millisecond)
				if k := punches.Load(); k != 0 {
					t.Errorf("%d PUNCHes reached the refused dialer", k)
				}
				ln := l.Node()
				ln.mu.Lock()
				a, s, intros := ln.attempts[dn.ID()], ln.sessions[dn.ID()], len(ln.intros)
				ln.mu.Unlock()
				if a != nil || s != nil || intros != 0 {
					t.Errorf("the listener keeps state for the refused peer: attempt %v, session %v, %d intros", a != nil, s != nil, intros)
				}
				mu.Lock()
				defer mu.Unlock()
				if len(refused) != 1 || !errors.Is(refused[0], ErrPeerAuth) || !errors.Is(refused[0], errNotAllowed) {
					t.Errorf("listener refusals %v, want one for the allow list", refused)
				}
			})
		}
	}
}

// TestRefusalNotRelayedFallsBack: when the server does not take the
// REFUSED SIGNAL (here because it does not know the querier; an ewfd older
// than REFUSED answers invalid attributes), the listener answers the
// introduction as before — it remembers it and punches — so that the
// refusal happens in the TLS handshake, and reports nothing yet.
func TestRefusalNotRelayedFallsBack(t *testing.T) {
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var reported atomic.Int64
	l, err := Listen(ctx, Config{Server: d.Addrs()[0].String(), IdentityFile: filepath.Join(t.TempDir(), "l.json"),
		Allow:     AllowList{}.Allows,
		OnRefused: func(ID, error) { reported.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	in := client.Introduction{Peer: wire.ID{0x42}, Secret: wire.Secret{7},
		Addresses: []wire.Address{{Transport: wire.TransportUDP, AddrPort: netip.MustParseAddrPort("127.0.0.1:9")}}}
	n := l.Node()
	n.refuseIntroduction(in) // the SIGNAL gets "not registered"
	n.mu.Lock()
	a, it := n.attempts[in.Peer], n.intros[serverName(in.Secret)]
	n.mu.Unlock()
	if a == nil || it == nil {
		t.Fatalf("no fallback: attempt %v, introduction %v", a != nil, it != nil)
	}
	if k := reported.Load(); k != 0 {
		t.Errorf("%d refusals reported before the handshake refused anything", k)
	}
}
