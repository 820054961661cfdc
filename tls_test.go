package ewf

import (
	"crypto/rand"
	"crypto/tls"
	"errors"
	"net"
	"testing"

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

func TestPeerAuthentication(t *testing.T) {
	var secret, other wire.Secret
	var dialer, listener, stranger wire.ID
	for _, p := range [][]byte{secret[:], other[:], dialer[:], listener[:], stranger[:]} {
		rand.Read(p)
	}
	mk := func(s wire.Secret, self, peer wire.ID, client bool) *tls.Config {
		c, err := tlsConfig(s, self, peer, client)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	t.Run("introduced peers", func(t *testing.T) {
		ce, se := handshake(t, mk(secret, dialer, listener, true), mk(secret, listener, dialer, false))
		if ce != nil || se != nil {
			t.Fatalf("client %v, server %v", ce, se)
		}
	})
	t.Run("stranger without the secret", func(t *testing.T) {
		ce, se := handshake(t, mk(other, stranger, listener, true), mk(secret, listener, dialer, false))
		if ce == nil && se == nil {
			t.Fatal("handshake with a stranger succeeded")
		}
		if !errors.Is(se, errWrongPeerKey) && !errors.Is(ce, errWrongPeerKey) {
			t.Logf("client %v, server %v", ce, se)
		}
	})
	t.Run("right secret, wrong ID", func(t *testing.T) {
		// Someone who learned the secret but claims another ID still
		// fails: the listener expects the key derived for the dialer.
		_, se := handshake(t, mk(secret, stranger, listener, true), mk(secret, listener, dialer, false))
		if !errors.Is(se, errWrongPeerKey) {
			t.Fatalf("server err = %v, want errWrongPeerKey", se)
		}
	})
	t.Run("impostor listener", func(t *testing.T) {
		ce, _ := handshake(t, mk(secret, dialer, listener, true), mk(other, listener, dialer, false))
		if !errors.Is(ce, errWrongPeerKey) {
			t.Fatalf("client err = %v, want errWrongPeerKey", ce)
		}
	})
}
