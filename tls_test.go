package ewf

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"net"
	"testing"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/wire"
)

// handshake runs a TLS handshake between a client and a server config
// over an in-memory pipe and returns both sides' errors.
func handshake(t *testing.T, cc, sc *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	done := make(chan error, 1)
	go func() { done <- tls.Server(b, sc).Handshake(); b.Close() }()
	clientErr = tls.Client(a, cc).Handshake()
	a.Close()
	return clientErr, <-done
}

// party is one identity in the handshake tests: a legacy random ID (no
// key) or a key-bound one.
type party struct {
	id  wire.ID
	key ed25519.PrivateKey
}

func legacyParty() party {
	var p party
	rand.Read(p.id[:])
	p.id[0] = 0 // never the key-bound marker by chance
	return p
}

func keyParty() party {
	id := client.NewIdentity()
	return party{id.ID, id.PrivateKey}
}

func side(t *testing.T, s wire.Secret, self, peer party, client bool) *tls.Config {
	t.Helper()
	c, err := (&tlsSide{secret: s, self: self.id, selfKey: self.key, peer: peer.id, isClient: client}).config()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPeerAuthentication(t *testing.T) {
	var secret, other wire.Secret
	rand.Read(secret[:])
	rand.Read(other[:])
	for _, kind := range []struct {
		name string
		mk   func() party
	}{{"legacy", legacyParty}, {"key-bound", keyParty}} {
		t.Run(kind.name, func(t *testing.T) {
			dialer, listener, stranger := kind.mk(), kind.mk(), kind.mk()
			t.Run("introduced peers", func(t *testing.T) {
				ce, se := handshake(t, side(t, secret, dialer, listener, true), side(t, secret, listener, dialer, false))
				if ce != nil || se != nil {
					t.Fatalf("client %v, server %v", ce, se)
				}
			})
			t.Run("right secret, wrong ID", func(t *testing.T) {
				// Someone who learned the secret but is another ID fails:
				// the listener expects the dialer's key.
				_, se := handshake(t, side(t, secret, stranger, listener, true), side(t, secret, listener, dialer, false))
				if !errors.Is(se, errWrongPeerKey) {
					t.Fatalf("server err = %v, want errWrongPeerKey", se)
				}
			})
			t.Run("impostor listener with another secret", func(t *testing.T) {
				ce, _ := handshake(t, side(t, secret, dialer, listener, true), side(t, other, listener, dialer, false))
				if kind.name == "key-bound" {
					// The secret plays no part in a key-bound identity.
					if ce != nil {
						t.Fatalf("client err = %v", ce)
					}
					return
				}
				if !errors.Is(ce, errWrongPeerKey) {
					t.Fatalf("client err = %v, want errWrongPeerKey", ce)
				}
			})
		})
	}
}

// TestKeyBoundDowngrade is the attack key-bound IDs exist for: whoever
// holds the secret (a malicious server, or an impostor it introduced)
// presents the secret-derived key, as a legacy peer would, for a
// key-bound ID. Both sides refuse it.
func TestKeyBoundDowngrade(t *testing.T) {
	var secret wire.Secret
	rand.Read(secret[:])
	dialer, listener := keyParty(), keyParty()
	// The impostor claims the ID but has no key for it, so it presents
	// the key derived from the secret and the ID.
	asDialer := party{id: dialer.id}
	asListener := party{id: listener.id}
	t.Run("impostor dials", func(t *testing.T) {
		_, se := handshake(t, side(t, secret, asDialer, listener, true), side(t, secret, listener, dialer, false))
		if !errors.Is(se, errWrongPeerKey) {
			t.Fatalf("listener err = %v, want errWrongPeerKey", se)
		}
	})
	t.Run("impostor listens", func(t *testing.T) {
		ce, _ := handshake(t, side(t, secret, dialer, listener, true), side(t, secret, asListener, dialer, false))
		if !errors.Is(ce, errWrongPeerKey) {
			t.Fatalf("dialer err = %v, want errWrongPeerKey", ce)
		}
	})
	t.Run("impostor with its own key", func(t *testing.T) {
		own := keyParty()
		ce, _ := handshake(t, side(t, secret, dialer, listener, true), side(t, secret, party{listener.id, own.key}, dialer, false))
		if !errors.Is(ce, errWrongPeerKey) {
			t.Fatalf("dialer err = %v, want errWrongPeerKey", ce)
		}
	})
}

// A key-bound peer and a legacy peer connect; each checks the other the
// way the other's ID demands.
func TestMixedAuthentication(t *testing.T) {
	var secret wire.Secret
	rand.Read(secret[:])
	k, l := keyParty(), legacyParty()
	for _, c := range []struct{ dialer, listener party }{{k, l}, {l, k}} {
		ce, se := handshake(t, side(t, secret, c.dialer, c.listener, true), side(t, secret, c.listener, c.dialer, false))
		if ce != nil || se != nil {
			t.Errorf("client %v, server %v", ce, se)
		}
	}
	if authOf(k.id) != AuthKey || authOf(l.id) != AuthSecret {
		t.Errorf("authOf: key-bound %s, legacy %s", authOf(k.id), authOf(l.id))
	}
}

// The allow list is asked for authentic peers only, and refuses in the
// handshake; the refusal is reported.
func TestAllowInHandshake(t *testing.T) {
	var secret wire.Secret
	rand.Read(secret[:])
	dialer, listener := keyParty(), keyParty()
	var refused []wire.ID
	mk := func(allow bool) *tls.Config {
		s := &tlsSide{secret: secret, self: listener.id, selfKey: listener.key, peer: dialer.id,
			allow:   func(wire.ID) bool { return allow },
			refused: func(p wire.ID, _ error) { refused = append(refused, p) }}
		c, err := s.config()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	if ce, se := handshake(t, side(t, secret, dialer, listener, true), mk(true)); ce != nil || se != nil {
		t.Fatalf("allowed: client %v, server %v", ce, se)
	}
	_, se := handshake(t, side(t, secret, dialer, listener, true), mk(false))
	if !errors.Is(se, errNotAllowed) {
		t.Fatalf("server err = %v, want errNotAllowed", se)
	}
	if len(refused) != 1 || refused[0] != dialer.id {
		t.Errorf("refused %v", refused)
	}
}

// BenchmarkPeerHandshake is one TLS 1.3 handshake between the two sides'
// configurations (made per introduction, as the node does), for legacy
// and for key-bound peers: the key check is a SHA-256 of the certificate
// key instead of an HMAC and a key derivation.
func BenchmarkPeerHandshake(b *testing.B) {
	var secret wire.Secret
	rand.Read(secret[:])
	for _, kind := range []struct {
		name string
		mk   func() party
	}{{"legacy", legacyParty}, {"key-bound", keyParty}} {
		b.Run(kind.name, func(b *testing.B) {
			d, l := kind.mk(), kind.mk()
			for b.Loop() {
				cc, err := (&tlsSide{secret: secret, self: d.id, selfKey: d.key, peer: l.id, isClient: true}).config()
				if err != nil {
					b.Fatal(err)
				}
				sc, err := (&tlsSide{secret: secret, self: l.id, selfKey: l.key, peer: d.id}).config()
				if err != nil {
					b.Fatal(err)
				}
				x, y := net.Pipe()
				done := make(chan error, 1)
				go func() { done <- tls.Server(y, sc).Handshake() }()
				if err := tls.Client(x, cc).Handshake(); err != nil {
					b.Fatal(err)
				}
				if err := <-done; err != nil {
					b.Fatal(err)
				}
				x.Close()
				y.Close()
			}
		})
	}
}
