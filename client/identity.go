package client

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ewf-project/ewf/wire"
)

// ErrCorruptIdentity: the identity file exists but cannot be read or does
// not hold a valid identity. It is never replaced silently: the KEYs in it
// may be the only proof that this client owns its ID.
var ErrCorruptIdentity = errors.New("identity file is unreadable or invalid")

// ErrMustUpgrade: the identity is a legacy (version 1) one whose random ID
// happens to start with KeyIDMarker (a 1 in 65,536 chance). Peers take such
// an ID for a key-bound one and demand its key, which does not exist, so
// the identity cannot be authenticated: `ewf id --upgrade` replaces it.
var ErrMustUpgrade = errors.New("identity must be upgraded")

// The "version" field of the identity file: 1 is a random ID (peers
// authenticate it with the introduction's secret), 2 adds the Ed25519
// private key that the key-bound ID derives from. A legacy identity is
// saved as version 1 again, so that an older ewf still reads it.
const (
	identityVersionLegacy   = 1
	identityVersionKeyBound = 2
)

// maxIdentitySize bounds what LoadIdentity reads; a real file is a few
// hundred bytes.
const maxIdentitySize = 1 << 20

// Identity is a client's ID, its private key if the ID is key-bound, and
// the KEYs servers gave it.
type Identity struct {
	ID wire.ID
	// PrivateKey is the Ed25519 key ID derives from (KeyID), or nil for a
	// legacy random ID.
	PrivateKey ed25519.PrivateKey
	// Keys holds the KEY per server, keyed by the server string as
	// configured ("host:port"): a KEY is only valid at the server that
	// made it.
	Keys map[string]wire.Key
}

// identityFile is the JSON form: hex strings, a version to refuse files of
// a future format rather than misread them. The private key is stored as
// its 32-byte seed.
//
//	{"version": 1, "id": "<32 hex>", "keys": {"ewf.example.org:3478": "<32 hex>"}}
//	{"version": 2, "id": "ef01<28 hex>", "private_key": "<64 hex>", "keys": {...}}
type identityFile struct {
	Version    int               `json:"version"`
	ID         string            `json:"id"`
	PrivateKey string            `json:"private_key,omitempty"`
	Keys       map[string]string `json:"keys"`
}

// NewIdentity returns an identity with a fresh key pair, the key-bound ID
// derived from it, and no KEYs.
func NewIdentity() *Identity {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		panic(err) // crypto/rand never fails on a supported platform
	}
	return &Identity{ID: KeyID(priv.Public().(ed25519.PublicKey)), PrivateKey: priv, Keys: map[string]wire.Key{}}
}

// KeyBound reports whether the identity holds a private key, so that
// peers authenticate it by that key rather than by the introduction's
// secret.
func (id *Identity) KeyBound() bool { return id.PrivateKey != nil }

// NeedsUpgrade reports whether the identity cannot be authenticated as it
// is (ErrMustUpgrade).
func (id *Identity) NeedsUpgrade() bool { return !id.KeyBound() && KeyBound(id.ID) }

// DefaultIdentityPath returns os.UserConfigDir()/ewf/identity.json.
func DefaultIdentityPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("ewf client: no default identity path: %w", err)
	}
	return filepath.Join(dir, "ewf", "identity.json"), nil
}

// LoadIdentity reads the identity file at path. A missing file gives an
// error matching os.ErrNotExist; a file that exists but cannot be read or
// is not a valid identity gives an error matching ErrCorruptIdentity that
// names the path and the problem.
func LoadIdentity(path string) (*Identity, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ewf client: identity file: %w", err)
	}
	if err != nil {
		return nil, corrupt(path, err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, maxIdentitySize+1)); err != nil {
		return nil, corrupt(path, err)
	}
	if buf.Len() > maxIdentitySize {
		return nil, corrupt(path, errors.New("larger than 1 MiB"))
	}
	id, err := parseIdentity(buf.Bytes())
	if err != nil {
		return nil, corrupt(path, err)
	}
	return id, nil
}

func corrupt(path string, err error) error {
	return fmt.Errorf("ewf client: %w: %s: %w (fix or move it away; it is never overwritten)", ErrCorruptIdentity, path, err)
}

func parseIdentity(b []byte) (*Identity, error) {
	var f identityFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("data after the JSON object")
	}
	if f.Version != identityVersionLegacy && f.Version != identityVersionKeyBound {
		return nil, fmt.Errorf("version %d, want %d or %d", f.Version, identityVersionLegacy, identityVersionKeyBound)
	}
	id, err := wire.ParseID(f.ID)
	if err != nil {
		return nil, fmt.Errorf("id: %w", err)
	}
	if id.IsZero() {
		return nil, errors.New("id is all zeros")
	}
	out := &Identity{ID: id, Keys: make(map[string]wire.Key, len(f.Keys))}
	switch {
	case f.Version == identityVersionLegacy && f.PrivateKey != "":
		return nil, errors.New("private_key in a version 1 file")
	case f.Version == identityVersionKeyBound:
		seed, err := hex.DecodeString(f.PrivateKey)
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, errors.New("private_key: not 64 hex digits")
		}
		out.PrivateKey = ed25519.NewKeyFromSeed(seed)
		if KeyID(out.PrivateKey.Public().(ed25519.PublicKey)) != id {
			return nil, errors.New("id is not the one private_key derives")
		}
	}
	for server, s := range f.Keys {
		var k wire.Key
		if len(s) != 2*len(k) {
			return nil, fmt.Errorf("key for %q: not 32 hex digits", server)
		}
		if _, err := hex.Decode(k[:], []byte(s)); err != nil {
			return nil, fmt.Errorf("key for %q: not 32 hex digits", server)
		}
		if server == "" {
			return nil, errors.New("key for an empty server name")
		}
		out.Keys[server] = k
	}
	return out, nil
}

// Save writes the identity to path atomically: a temporary file in the
// same directory (mode 0600), fsync, rename over path, fsync of the
// directory. The directory is created with mode 0700 if missing.
func (id *Identity) Save(path string) error {
	f := identityFile{Version: identityVersionLegacy, ID: id.ID.String(), Keys: make(map[string]string, len(id.Keys))}
	if id.PrivateKey != nil {
		f.Version = identityVersionKeyBound
		f.PrivateKey = hex.EncodeToString(id.PrivateKey.Seed())
	}
	for server, k := range id.Keys {
		f.Keys[server] = hex.EncodeToString(k[:])
	}
	data, err := json.MarshalIndent(&f, "", "  ")
	if err != nil {
		return fmt.Errorf("ewf client: encoding identity: %w", err)
	}
	data = append(data, '\n')
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("ewf client: saving identity: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".identity-*.tmp") // mode 0600
	if err != nil {
		return fmt.Errorf("ewf client: saving identity: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("ewf client: saving identity: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("ewf client: saving identity: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("ewf client: saving identity: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("ewf client: saving identity: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("ewf client: saving identity: %w", err)
	}
	ok = true
	// The rename is durable only once the directory is synced.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// maxRegisterTries bounds how many fresh IDs EnsureRegistered tries when a
// server reports a conflict: with 128 random bits a second conflict means
// something other than bad luck.
const maxRegisterTries = 3

// EnsureRegistered returns the identity at path with a KEY for server.
// It loads the file (a missing file means a new key-bound identity), and if there
// is no KEY for server yet, calls register (normally Client.Register). On
// ErrIDConflict for a brand-new identity it makes another key pair and
// tries again, up to a few times; for an ID that was already saved a
// conflict is an error, because the server holds that ID under a KEY this
// file does not have. The file is saved only after a successful REGISTER.
// A corrupt identity file is an error (ErrCorruptIdentity), and so is a
// legacy identity that NeedsUpgrade (ErrMustUpgrade); register is then not
// called.
func EnsureRegistered(ctx context.Context, path, server string, register func(context.Context, wire.ID) (wire.Key, error)) (*Identity, error) {
	id, err := LoadIdentity(path)
	fresh := false
	switch {
	case errors.Is(err, fs.ErrNotExist):
		id, fresh = NewIdentity(), true
	case err != nil:
		return nil, err
	case id.NeedsUpgrade():
		return nil, fmt.Errorf("ewf client: %s: the legacy ID %v starts with the key-bound marker %x, so peers "+
			"would demand a key it does not have; run \"ewf id --upgrade\" to replace it with a key-bound identity: %w",
			path, id.ID, KeyIDMarker, ErrMustUpgrade)
	}
	if id.Keys == nil {
		id.Keys = map[string]wire.Key{}
	}
	if _, ok := id.Keys[server]; ok {
		return id, nil
	}
	for try := 1; ; try++ {
		key, err := register(ctx, id.ID)
		if err == nil {
			id.Keys[server] = key
			break
		}
		if !errors.Is(err, ErrIDConflict) {
			return nil, fmt.Errorf("ewf client: registering ID %v at %s: %w", id.ID, server, err)
		}
		if !fresh {
			return nil, fmt.Errorf("ewf client: server %s already holds ID %v (from %s) under another KEY: "+
				"this identity file has no KEY for that server, so it cannot prove ownership; "+
				"use another --identity file to get a new ID: %w", server, id.ID, path, err)
		}
		if try == maxRegisterTries {
			return nil, fmt.Errorf("ewf client: registering at %s: %d new IDs in a row conflicted: %w", server, try, err)
		}
		id = NewIdentity()
	}
	if err := id.Save(path); err != nil {
		return nil, err
	}
	return id, nil
}

// UpgradeIdentity replaces the legacy identity at path by a key-bound one:
// a new key pair and the ID derived from it. The KEYs of the old ID are
// dropped, because they belong to that ID; the new ID registers at each
// server on its next use. It returns the new identity and the ID it
// replaced; for an identity that is already key-bound it changes nothing
// and returns the identity and a zero ID. A missing file gives an error
// matching fs.ErrNotExist, a corrupt one ErrCorruptIdentity; neither is
// written. The file is replaced atomically, like Save.
func UpgradeIdentity(path string) (*Identity, wire.ID, error) {
	old, err := LoadIdentity(path)
	if err != nil {
		return nil, wire.ID{}, err
	}
	if old.KeyBound() {
		return old, wire.ID{}, nil
	}
	id := NewIdentity()
	if err := id.Save(path); err != nil {
		return nil, wire.ID{}, err
	}
	return id, old.ID, nil
}
