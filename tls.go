package ewf

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/wire"
)

// alpn names the protocol inside TLS, so that a TLS endpoint of anything
// else fails the handshake instead of speaking to us. Version 2 added
// key-bound certificates and the listener's welcome (docs/PROTOCOL.md
// §22.4); a version 1 peer would read the welcome as data, so it must not
// connect at all.
const alpn = "ewf/2"

// Auth says how this side proved the peer's identity.
type Auth string

const (
	// AuthKey: the peer's ID is key-bound, and its TLS certificate holds
	// the Ed25519 key that the ID derives from. No one else, the
	// rendezvous server included, can present it.
	AuthKey Auth = "key"
	// AuthSecret: the peer's ID is a legacy random one, and its TLS
	// certificate holds the key derived from the introduction's secret
	// and its ID. The server that made the secret could present it too.
	AuthSecret Auth = "secret"
)

// authOf is how a peer with this ID is authenticated; which one is fixed
// by the ID itself, so that no one can choose the weaker check for a
// key-bound ID.
func authOf(peer wire.ID) Auth {
	if client.KeyBound(peer) {
		return AuthKey
	}
	return AuthSecret
}

// peerKey derives the certificate key that a legacy id uses in the
// connection made for one introduction. Both peers (and the server, which
// made the secret) can derive it; a stranger cannot.
func peerKey(secret wire.Secret, id wire.ID) ed25519.PrivateKey {
	mac := hmac.New(sha256.New, secret[:])
	mac.Write([]byte("ewf peer key v1"))
	mac.Write(id[:])
	return ed25519.NewKeyFromSeed(mac.Sum(nil))
}

// serverName is an opaque per-introduction tag the dialer sends as TLS
// SNI, so that a listener with several introductions in flight picks the
// right one. It is derived from the secret, so it says nothing about
// either ID to an observer.
func serverName(secret wire.Secret) string {
	mac := hmac.New(sha256.New, secret[:])
	mac.Write([]byte("ewf sni v1"))
	return "p" + hex.EncodeToString(mac.Sum(nil)[:16]) + ".ewf"
}

// certificate makes a self-signed certificate for key. Peers check the
// key, never the name, the chain or the dates.
func certificate(key ed25519.PrivateKey) (tls.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(nil, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

var (
	errWrongPeerKey = errors.New("ewf: peer certificate is not the introduced peer's")
	errNotAllowed   = errors.New("ewf: peer is not on the allow list")
)

// tlsSide describes one side of the connection made for an introduction.
type tlsSide struct {
	secret wire.Secret
	self   wire.ID
	// selfKey is this side's identity key, or nil for a legacy ID, which
	// presents the key derived from the secret.
	selfKey  ed25519.PrivateKey
	peer     wire.ID
	isClient bool
	// allow, if set, must accept the peer (after its key was checked).
	allow func(ID) bool
	// refused, if set, learns each peer this side refused.
	refused func(peer ID, err error)
}

// verifyPeer accepts only a leaf certificate whose key proves peer: the
// key the ID derives from for a key-bound ID, the secret-derived key for a
// legacy one (authOf). Then the allow list is asked.
func (s *tlsSide) verifyPeer(raw [][]byte, _ [][]*x509.Certificate) error {
	err := s.check(raw)
	if err != nil && s.refused != nil {
		s.refused(s.peer, err)
	}
	return err
}

func (s *tlsSide) check(raw [][]byte) error {
	if len(raw) == 0 {
		return errWrongPeerKey
	}
	cert, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return errWrongPeerKey
	}
	got, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return errWrongPeerKey
	}
	switch authOf(s.peer) {
	case AuthKey:
		if !client.KeyMatches(s.peer, got) {
			return errWrongPeerKey
		}
	default:
		if !got.Equal(peerKey(s.secret, s.peer).Public()) {
			return errWrongPeerKey
		}
	}
	if s.allow != nil && !s.allow(s.peer) {
		return errNotAllowed
	}
	return nil
}

// config returns the TLS configuration of this side: it presents its
// identity key (or the derived one) and requires the peer's.
// InsecureSkipVerify only turns off the Web PKI name and chain check,
// which has no meaning here; verifyPeer does the real check.
func (s *tlsSide) config() (*tls.Config, error) {
	key := s.selfKey
	if key == nil {
		key = peerKey(s.secret, s.self)
	}
	cert, err := certificate(key)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{cert},
		NextProtos:            []string{alpn},
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: s.verifyPeer,
	}
	if s.isClient {
		c.ServerName = serverName(s.secret)
	} else {
		c.ClientAuth = tls.RequireAnyClientCert
	}
	return c, nil
}

// tlsConfig is the configuration of this node's side of an introduction
// with peer; the allow list applies to peers that connect to us.
func (n *Node) tlsConfig(secret wire.Secret, peer wire.ID, isClient bool) (*tls.Config, error) {
	s := &tlsSide{secret: secret, self: n.self, selfKey: n.idKey, peer: peer, isClient: isClient}
	if !isClient {
		s.allow = n.cfg.Allow
		s.refused = n.refused
	}
	return s.config()
}

// refused reports a peer this node refused in the TLS handshake.
func (n *Node) refused(peer ID, err error) {
	n.log.Warn("refused peer", "peer", peer, "err", err)
	if n.cfg.OnRefused != nil {
		n.cfg.OnRefused(peer, fmt.Errorf("%w: %w", ErrPeerAuth, err))
	}
}

// welcome is what the accepting side writes first, once it has checked
// the dialer's certificate. TLS 1.3 (and QUIC) let the client finish its
// handshake before the server has seen the client's certificate, so the
// welcome is how the dialer learns that it was let in. The dialer does not
// wait for it in Dial (that would cost every connect a peer round trip,
// docs/PROTOCOL.md §22.4): it reads it before the first byte the
// application reads, and a refusal in its place ends the connection with
// ErrPeerAuth (welcomeConn, Conn.readWelcome).
var welcome = [4]byte{'e', 'w', 'f', '+'}

// errNoWelcome: the acceptor sent something else where the welcome goes.
var errNoWelcome = errors.New("ewf: the peer sent no welcome")

// isAuthFailure tells a refusal in the TLS handshake (ours or the peer's,
// as an alert) from the path failing under it.
func isAuthFailure(err error) bool {
	if errors.Is(err, errWrongPeerKey) || errors.Is(err, errNotAllowed) || errors.Is(err, ErrPeerAuth) {
		return true
	}
	var te *quic.TransportError
	if errors.As(err, &te) && te.ErrorCode.IsCryptoError() {
		return true
	}
	var ae tls.AlertError
	if errors.As(err, &ae) {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error" // a TLS alert from the peer
}

// welcomeConn is the TLS dialer's connection as its stream multiplexer
// reads it (one Read at a time: streammux's read token): the first bytes
// must be the welcome, which it takes out; if
// the acceptor refused us instead (a TLS alert), the error becomes
// ErrPeerAuth, and every later use of the Conn returns it (Conn.fail).
type welcomeConn struct {
	net.Conn
	c    *Conn
	got  int // welcome bytes read; len(welcome)+1 once checked
	buf  [len(welcome)]byte
	peer wire.ID
}

func (w *welcomeConn) Read(p []byte) (int, error) {
	for w.got < len(welcome) {
		n, err := w.Conn.Read(w.buf[w.got:])
		w.got += n
		if err == io.EOF && w.got == len(welcome) && w.buf == welcome {
			w.got++
			return 0, err // the welcome, then the end
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() && !isAuthFailure(err) {
			// A read deadline: streammux interrupts its reader so; the
			// next Read goes on with the welcome where this one stopped.
			return 0, err
		}
		if err != nil {
			return 0, w.c.fail(handshakeErr("TLS", "peer "+w.peer.String(), err))
		}
	}
	if w.got == len(welcome) {
		if w.buf != welcome {
			return 0, w.c.fail(handshakeErr("TLS", "peer "+w.peer.String(), errNoWelcome))
		}
		w.got++
	}
	return w.Conn.Read(p)
}

// handshakeErr names a failed handshake with the peer at addr: ErrPeerAuth
// when either side refused the other, ErrNoDirectPath when the path failed
// first.
func handshakeErr(proto string, addr any, err error) error {
	if isAuthFailure(err) {
		return fmt.Errorf("%w: %s handshake with %v: %w", ErrPeerAuth, proto, addr, err)
	}
	return fmt.Errorf("%w: %s handshake with %v did not complete: %w", ErrNoDirectPath, proto, addr, err)
}
