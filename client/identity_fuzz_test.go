package client

import (
	"crypto/ed25519"
	"path/filepath"
	"testing"
)

// FuzzParseIdentity: no input makes the identity parser panic, and what
// it accepts survives Save and LoadIdentity unchanged: the ID, the key
// (which must still derive the ID) and the KEYs.
func FuzzParseIdentity(f *testing.F) {
	const id = "0123456789abcdef0123456789abcdef"
	f.Add([]byte(`{"version": 1, "id": "` + id + `", "keys": {"a:1": "` + id + `"}}`))
	f.Add([]byte(`{"version": 2, "id": "ef01a1aac4069dbb0ff73835d5768bd5", "private_key": "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60", "keys": {}}`))
	f.Add([]byte(`{"version": 2, "id": "` + id + `", "private_key": "` + id + id + `"}`))
	f.Add([]byte(`{"version": 1, "id": "ef01` + id[4:] + `"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseIdentity(b)
		if err != nil {
			return
		}
		if got.KeyBound() && KeyID(got.PrivateKey.Public().(ed25519.PublicKey)) != got.ID {
			t.Fatalf("accepted a key that does not derive %v", got.ID)
		}
		path := filepath.Join(t.TempDir(), "id.json")
		if err := got.Save(path); err != nil {
			t.Fatal(err)
		}
		again, err := LoadIdentity(path)
		if err != nil {
			t.Fatalf("saved identity does not load: %v", err)
		}
		if again.ID != got.ID || !again.PrivateKey.Equal(got.PrivateKey) || len(again.Keys) != len(got.Keys) {
			t.Fatalf("round trip: %+v became %+v", got, again)
		}
		for s, k := range got.Keys {
			if again.Keys[s] != k {
				t.Fatalf("KEY for %q changed", s)
			}
		}
	})
}
