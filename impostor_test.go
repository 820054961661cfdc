package ewf

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

// maliciousServer is a rendezvous server that betrays the victim: it is a
// real ewfd, and it hands the KEY it made for the victim's ID to the
// impostor, which binds the victim's ID from its own address. Every
// introduction for the victim's ID then goes to the impostor, with a valid
// secret: the impostor can register, bind, query, be introduced and punch
// as the victim. All it lacks is the victim's private key.
type maliciousServer struct {
	addr string
}

func startMaliciousServer(t *testing.T) *maliciousServer {
	t.Helper()
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return &maliciousServer{addr: d.Addrs()[0].String()}
}

// victim registers a key-bound identity at the server, as an honest peer
// does, and goes offline; it returns the victim's ID and the KEY the
// server made, which a malicious server knows.
func (s *maliciousServer) victim(t *testing.T, ctx context.Context) (wire.ID, wire.Key) {
	t.Helper()
	return s.register(t, ctx, filepath.Join(t.TempDir(), "victim.json"))
}

func (s *maliciousServer) register(t *testing.T, ctx context.Context, path string) (wire.ID, wire.Key) {
	t.Helper()
	n, err := Open(ctx, Config{Server: s.addr, IdentityFile: path})
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	ident, err := client.LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	return ident.ID, ident.Keys[s.addr]
}

// impostor opens a node that claims id with the leaked key. Without the
// private key it presents what a legacy peer would: the certificate key
// derived from the introduction's secret and the ID (the downgrade).
func (s *maliciousServer) impostor(t *testing.T, ctx context.Context, id wire.ID, key wire.Key, tr Transport) *Node {
	t.Helper()
	n, err := Open(ctx, Config{
		Server: s.addr, Transport: tr, EnableTCP: true,
		forged: &client.Identity{ID: id, Keys: map[string]wire.Key{s.addr: key}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// TestMaliciousServer: a server that introduces an impostor holding a
// valid KEY and SECRET for a key-bound ID cannot make either honest side
// accept it, over either transport; both ends of the attempt fail with
// ErrPeerAuth.
func TestMaliciousServer(t *testing.T) {
	for _, tr := range []Transport{TransportUDP, TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			t.Run("impostor is dialled", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				s := startMaliciousServer(t)
				victim, key := s.victim(t, ctx)
				if !client.KeyBound(victim) {
					t.Fatalf("victim %s is not key-bound", victim)
				}
				imp := s.impostor(t, ctx, victim, key, tr)

				honest, err := Open(ctx, Config{Server: s.addr, Transport: tr, EnableTCP: true, IdentityFile: filepath.Join(t.TempDir(), "d.json")})
				if err != nil {
					t.Fatal(err)
				}
				defer honest.Close()
				c, err := honest.Dial(ctx, victim, tr)
				if err == nil {
					c.Close()
					t.Fatal("the honest dialer accepted the impostor")
				}
				if !errors.Is(err, ErrPeerAuth) || !errors.Is(err, errWrongPeerKey) {
					t.Fatalf("dial err = %v, want ErrPeerAuth for the wrong key", err)
				}
				// The impostor got no connection either.
				actx, acancel := context.WithTimeout(ctx, 500*time.Millisecond)
				defer acancel()
				if c, err := imp.Accept(actx); err == nil {
					c.Close()
					t.Fatal("the impostor accepted a connection")
				}
			})
			t.Run("impostor dials", func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				s := startMaliciousServer(t)
				victim, key := s.victim(t, ctx)

				// The honest listener even allows the victim's ID.
				var mu sync.Mutex
				var refused []error
				l, err := Listen(ctx, Config{
					Server: s.addr, IdentityFile: filepath.Join(t.TempDir(), "l.json"),
					Allow: AllowList{victim: true}.Allows,
					OnRefused: func(p ID, err error) {
						mu.Lock()
						defer mu.Unlock()
						if p == victim {
							refused = append(refused, err)
						}
					},
				})
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()

				imp := s.impostor(t, ctx, victim, key, tr)
				err = dialAndRead(ctx, imp, l.ID(), tr)
				if !errors.Is(err, ErrPeerAuth) {
					t.Fatalf("impostor's dial and read: %v, want ErrPeerAuth", err)
				}
				mu.Lock()
				got := append([]error(nil), refused...)
				mu.Unlock()
				if len(got) == 0 || !errors.Is(got[0], ErrPeerAuth) || !errors.Is(got[0], errWrongPeerKey) {
					t.Fatalf("listener refusals %v, want ErrPeerAuth for the wrong key", got)
				}
				actx, acancel := context.WithTimeout(ctx, 500*time.Millisecond)
				defer acancel()
				if c, err := l.AcceptContext(actx); err == nil {
					c.Close()
					t.Fatal("the listener delivered the impostor's connection")
				}
			})
		})
	}
}

// dialAndRead dials peer and reads from the connection, which is how a
// dialer whose handshake completed learns that the peer refused it (the
// welcome, docs/PROTOCOL.md §22.4): it returns Dial's error, or else the
// error of the first Read, which must not deliver a byte. Writing first
// must not hide the refusal either.
func dialAndRead(ctx context.Context, n *Node, peer ID, tr Transport) error {
	c, err := n.Dial(ctx, peer, tr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.Write([]byte("data before the welcome")) // may succeed; the peer discards it
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var b [1]byte
	k, err := c.Read(b[:])
	if err == nil {
		return fmt.Errorf("the refused dialer read %d byte(s) %q", k, b[:k])
	}
	// Every later use fails the same way.
	if _, werr := c.Write([]byte("x")); !errors.Is(werr, ErrPeerAuth) {
		return fmt.Errorf("read: %w, but a later write: %v", err, werr)
	}
	if _, oerr := c.OpenStream(ctx); !errors.Is(oerr, ErrPeerAuth) {
		return fmt.Errorf("read: %w, but OpenStream: %v", err, oerr)
	}
	return err
}

// TestMaliciousServerLegacy is the control for TestMaliciousServer: the
// same attack on a legacy (version 1) identity succeeds, because only the
// server's secret authenticates a legacy ID. It shows that the impostor
// above gets as far as the TLS handshake, and that only the key stops it.
func TestMaliciousServerLegacy(t *testing.T) {
	for _, tr := range []Transport{TransportUDP, TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s := startMaliciousServer(t)
			path := filepath.Join(t.TempDir(), "victim.json")
			writeLegacyIdentity(t, path)
			victim, key := s.register(t, ctx, path)
			imp := s.impostor(t, ctx, victim, key, tr)

			honest, err := Open(ctx, Config{Server: s.addr, Transport: tr, EnableTCP: true, IdentityFile: filepath.Join(t.TempDir(), "d.json")})
			if err != nil {
				t.Fatal(err)
			}
			defer honest.Close()
			c, err := honest.Dial(ctx, victim, tr)
			if err != nil {
				t.Fatalf("dial: %v", err)
			}
			ic, err := imp.Accept(ctx)
			if err != nil {
				t.Fatalf("impostor accept: %v", err)
			}
			// Closing the nodes first ends the connections at once,
			// without waiting for the peer to read to the end.
			defer func() { honest.Close(); imp.Close(); c.Close(); ic.Close() }()
			if c.Peer() != victim || c.Auth() != AuthSecret {
				t.Errorf("dialer reached %s with auth=%s; the impostor passed as the legacy victim %s", c.Peer(), c.Auth(), victim)
			}
		})
	}
}

// writeLegacyIdentity writes a version 1 identity file (a random ID, no
// key), as the ewf before key-bound IDs did.
func writeLegacyIdentity(t *testing.T, path string) wire.ID {
	t.Helper()
	var id wire.ID
	rand.Read(id[:])
	id[0] = 0x01 // not the key-bound marker
	data := `{"version": 1, "id": "` + id.String() + `", "keys": {}}`
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return id
}

// TestSquatter: a stranger who only knows a key-bound ID registers it at
// an honest server where its owner is not registered yet, binds it and so
// is introduced to whoever dials that ID there. The server cannot tell
// (it knows no keys), but the dialer refuses the stranger: squatting an ID
// denies it at that server, it does not impersonate it.
func TestSquatter(t *testing.T) {
	for _, tr := range []Transport{TransportUDP, TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s := startMaliciousServer(t)  // used honestly here
			owner := client.NewIdentity() // exists, but never registered at s
			rc, err := client.DialUDP(ctx, s.addr, client.Config{})
			if err != nil {
				t.Fatal(err)
			}
			key, err := rc.Register(ctx, owner.ID)
			rc.Close()
			if err != nil {
				t.Fatal(err)
			}
			s.impostor(t, ctx, owner.ID, key, tr)

			honest, err := Open(ctx, Config{Server: s.addr, Transport: tr, EnableTCP: true, IdentityFile: filepath.Join(t.TempDir(), "d.json")})
			if err != nil {
				t.Fatal(err)
			}
			defer honest.Close()
			c, err := honest.Dial(ctx, owner.ID, tr)
			if err == nil {
				c.Close()
				t.Fatal("the dialer accepted the squatter")
			}
			if !errors.Is(err, ErrPeerAuth) || !errors.Is(err, errWrongPeerKey) {
				t.Fatalf("dial err = %v, want ErrPeerAuth for the wrong key", err)
			}
		})
	}
}
