package client

import (
	"crypto/ed25519"
	"encoding/hex"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

// TestKeyIDVector pins the derivation with RFC 8032's first Ed25519 test
// key; the expected ID was computed independently (Python hashlib:
// sha256(b"ewf id v1" + pub), first 16 bytes, first two set to ef 01).
func TestKeyIDVector(t *testing.T) {
	seed, _ := hex.DecodeString("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
	pub := ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
	if got := hex.EncodeToString(pub); got != "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a" {
		t.Fatalf("public key %s", got)
	}
	id := KeyID(pub)
	if id.String() != "ef01a1aac4069dbb0ff73835d5768bd5" {
		t.Errorf("KeyID = %s", id)
	}
	if !KeyBound(id) || !KeyMatches(id, pub) {
		t.Error("the derived ID is not key-bound to its key")
	}
}

func TestKeyMatches(t *testing.T) {
	a, b := NewIdentity(), NewIdentity()
	pa := a.PrivateKey.Public().(ed25519.PublicKey)
	pb := b.PrivateKey.Public().(ed25519.PublicKey)
	if a.ID == b.ID || !KeyBound(a.ID) || !KeyBound(b.ID) {
		t.Fatalf("new identities %s, %s", a.ID, b.ID)
	}
	if !KeyMatches(a.ID, pa) || KeyMatches(a.ID, pb) || KeyMatches(b.ID, pa) {
		t.Error("a key matched another key's ID")
	}
	if KeyMatches(a.ID, pa[:31]) || KeyMatches(a.ID, nil) {
		t.Error("a truncated key matched")
	}
	// A legacy ID never matches a key, not even the one whose hash it
	// shares apart from the marker.
	legacy := a.ID
	legacy[0] ^= 0xff
	if KeyBound(legacy) || KeyMatches(legacy, pa) {
		t.Error("an ID without the marker matched a key")
	}
	// Random (legacy) IDs carry the marker only by chance.
	marked := 0
	for range 1000 {
		if KeyBound(randomID()) {
			marked++
		}
	}
	if marked > 2 {
		t.Errorf("%d of 1000 random IDs look key-bound", marked)
	}
	var zero wire.ID
	if KeyBound(zero) {
		t.Error("zero ID is key-bound")
	}
}
