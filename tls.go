package ewf

import (
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"math/big"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// alpn names the protocol inside TLS, so that a TLS endpoint of anything
// else fails the handshake instead of speaking to us.
const alpn = "ewf/1"

// peerKey derives the certificate key that id uses in the connection made
// for one introduction. Both peers (and the server, which made the
// secret) can derive it; a stranger cannot. That binds the TLS session to
// the introduction without a round trip of its own.
func peerKey(secret wire.Secret, id wire.ID) ed25519.PrivateKey {
	mac := hmac.New(sha256.New, secret[:])
	mac.Write([]byte("ewf peer key v1"))
	mac.Write(id[:])
	return ed25519.NewKeyFromSeed(mac.Sum(nil))
}

// serverName is an opaque per-introduction tag the dialer sends as TLS
// SNI, so that a listener with several introductions in flight picks the
// right certificate. It is derived from the secret, so it says nothing
// about either ID to an observer.
func serverName(secret wire.Secret) string {
	mac := hmac.New(sha256.New, secret[:])
	mac.Write([]byte("ewf sni v1"))
	return "p" + hex.EncodeToString(mac.Sum(nil)[:16]) + ".ewf"
}

// certificate makes a self-signed certificate for key. Peers check the
// key, never the name or the chain.
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

var errWrongPeerKey = errors.New("ewf: peer certificate is not the introduced peer's")

// verifyPeer returns a VerifyPeerCertificate that accepts only a leaf
// certificate whose key is want.
func verifyPeer(want ed25519.PublicKey) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errWrongPeerKey
		}
		cert, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return errWrongPeerKey
		}
		got, ok := cert.PublicKey.(ed25519.PublicKey)
		if !ok || !got.Equal(want) {
			return errWrongPeerKey
		}
		return nil
	}
}

// tlsConfig returns the TLS configuration of one side of the connection
// made for an introduction: self presents its derived key and requires the
// peer's. InsecureSkipVerify only turns off the Web PKI name and chain
// check, which has no meaning here; verifyPeer does the real check.
func tlsConfig(secret wire.Secret, self, peer wire.ID, isClient bool) (*tls.Config, error) {
	cert, err := certificate(peerKey(secret, self))
	if err != nil {
		return nil, err
	}
	want := peerKey(secret, peer).Public().(ed25519.PublicKey)
	c := &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{cert},
		NextProtos:            []string{alpn},
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: verifyPeer(want),
	}
	if isClient {
		c.ServerName = serverName(secret)
	} else {
		c.ClientAuth = tls.RequireAnyClientCert
	}
	return c, nil
}
