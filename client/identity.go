package client

import (
	"bytes"
	"context"
	"crypto/rand"
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

// identityVersion is the "version" field of the identity file.
const identityVersion = 1

// maxIdentitySize bounds what LoadIdentity reads; a real file is a few
// hundred bytes.
const maxIdentitySize = 1 << 20

// Identity is a client's ID and the KEYs servers gave it.
type Identity struct {
	ID wire.ID
	// Keys holds the KEY per server, keyed by the server string as
	// configured ("host:port"): a KEY is only valid at the server that
	// made it.
	Keys map[string]wire.Key
}

// identityFile is the JSON form: hex strings, a version to refuse files of
// a future format rather than misread them.
//
//	{"version": 1, "id": "<32 hex>", "keys": {"ewf.example.org:3478": "<32 hex>"}}
type identityFile struct {
	Version int               `json:"version"`
	ID      string            `json:"id"`
	Keys    map[string]string `json:"keys"`
}

// NewIdentity returns an identity with a fresh random ID and no KEYs.
func NewIdentity() *Identity {
	return &Identity{ID: randomID(), Keys: map[string]wire.Key{}}
}

func randomID() wire.ID {
	var id wire.ID
	for id.IsZero() {
		rand.Read(id[:])
	}
	return id
}

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
	if f.Version != identityVersion {
		return nil, fmt.Errorf("version %d, want %d", f.Version, identityVersion)
	}
	id, err := wire.ParseID(f.ID)
	if err != nil {
		return nil, fmt.Errorf("id: %w", err)
	}
	if id.IsZero() {
		return nil, errors.New("id is all zeros")
	}
	out := &Identity{ID: id, Keys: make(map[string]wire.Key, len(f.Keys))}
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
	f := identityFile{Version: identityVersion, ID: id.ID.String(), Keys: make(map[string]string, len(id.Keys))}
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
// It loads the file (a missing file means a new random ID), and if there
// is no KEY for server yet, calls register (normally Client.Register). On
// ErrIDConflict for a brand-new identity it picks another random ID and
// tries again, up to a few times; for an ID that was already saved a
// conflict is an error, because the server holds that ID under a KEY this
// file does not have. The file is saved only after a successful REGISTER.
// A corrupt identity file is an error (ErrCorruptIdentity), and register
// is then not called.
func EnsureRegistered(ctx context.Context, path, server string, register func(context.Context, wire.ID) (wire.Key, error)) (*Identity, error) {
	id, err := LoadIdentity(path)
	fresh := false
	switch {
	case errors.Is(err, fs.ErrNotExist):
		id, fresh = NewIdentity(), true
	case err != nil:
		return nil, err
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
			return nil, fmt.Errorf("ewf client: registering at %s: %d random IDs in a row conflicted: %w", server, try, err)
		}
		id.ID = randomID()
	}
	if err := id.Save(path); err != nil {
		return nil, err
	}
	return id, nil
}
