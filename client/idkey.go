package client

import (
	"crypto/ed25519"
	"crypto/sha256"

	"github.com/ewf-project/ewf/wire"
)

// KeyIDMarker is the first two bytes of every key-bound ID
// (docs/PROTOCOL.md §22.1). A peer that sees the marker knows that the ID
// names an Ed25519 key and accepts only a certificate with that key;
// without the marker a malicious server could present a secret-derived
// key for a key-bound ID and have it checked the legacy way (a downgrade).
var KeyIDMarker = [2]byte{0xEF, 0x01}

// keyIDLabel separates the ID hash from every other use of SHA-256 over a
// public key.
const keyIDLabel = "ewf id v1"

// KeyID derives the key-bound ID of an Ed25519 public key:
// SHA-256("ewf id v1" ‖ key), first 16 bytes, the first two replaced by
// KeyIDMarker. The 112 hash bits left make finding another key for a
// given ID a 2^112 search.
func KeyID(pub ed25519.PublicKey) wire.ID {
	h := sha256.New()
	h.Write([]byte(keyIDLabel))
	h.Write(pub)
	var id wire.ID
	copy(id[:], h.Sum(nil))
	id[0], id[1] = KeyIDMarker[0], KeyIDMarker[1]
	return id
}

// KeyBound reports whether id carries the key-bound marker, and so can
// only be authenticated by the key it derives from. A legacy random ID has
// the marker by chance with probability 2^-16; such an identity cannot
// authenticate at all until it is upgraded (Identity.NeedsUpgrade).
func KeyBound(id wire.ID) bool {
	return id[0] == KeyIDMarker[0] && id[1] == KeyIDMarker[1]
}

// KeyMatches reports whether pub is the key that the key-bound id names.
func KeyMatches(id wire.ID, pub ed25519.PublicKey) bool {
	return len(pub) == ed25519.PublicKeySize && KeyBound(id) && KeyID(pub) == id
}
