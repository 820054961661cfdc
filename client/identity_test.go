package client

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ewf-project/ewf/wire"
)

func TestIdentitySaveLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "conf", "ewf", "identity.json")
	id := NewIdentity()
	id.Keys["ewf.example.org:3478"] = wire.Key{1, 2, 3}
	id.Keys["127.0.0.1:3478"] = wire.Key{4}
	if err := id.Save(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("directory mode %v, want 0700", di.Mode().Perm())
	}
	got, err := LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != id.ID || len(got.Keys) != 2 || got.Keys["ewf.example.org:3478"] != id.Keys["ewf.example.org:3478"] ||
		got.Keys["127.0.0.1:3478"] != id.Keys["127.0.0.1:3478"] {
		t.Errorf("loaded %+v, saved %+v", got, id)
	}
	// Saving again replaces the file and leaves no temporary behind.
	got.Keys["other:1"] = wire.Key{9}
	if err := got.Save(path); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries after two saves, want 1", len(entries))
	}
	again, err := LoadIdentity(path)
	if err != nil || len(again.Keys) != 3 {
		t.Errorf("reload = %+v, %v", again, err)
	}
}

func TestLoadIdentityMissing(t *testing.T) {
	_, err := LoadIdentity(filepath.Join(t.TempDir(), "nope.json"))
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrCorruptIdentity) {
		t.Errorf("err = %v, want ErrNotExist only", err)
	}
}

// A file that exists but is not a valid identity is an error that names
// the file, and it is left as it was.
func TestLoadIdentityCorrupt(t *testing.T) {
	const okID = "0123456789abcdef0123456789abcdef"
	tests := map[string]string{
		"empty":          "",
		"truncated":      `{"version": 1, "id": "` + okID[:10],
		"not JSON":       "id=" + okID,
		"no version":     `{"id": "` + okID + `"}`,
		"future version": `{"version": 3, "id": "` + okID + `"}`,
		"short id":       `{"version": 1, "id": "0123"}`,
		"non-hex id":     `{"version": 1, "id": "0123456789abcdef0123456789abcdeg"}`,
		"zero id":        `{"version": 1, "id": "00000000000000000000000000000000"}`,
		"bad key":        `{"version": 1, "id": "` + okID + `", "keys": {"s:1": "00"}}`,
		"empty server":   `{"version": 1, "id": "` + okID + `", "keys": {"": "` + okID + `"}}`,
		"unknown field":  `{"version": 1, "id": "` + okID + `", "key": "` + okID + `"}`,
		"trailing data":  `{"version": 1, "id": "` + okID + `"} {}`,
		"array":          `[1]`,
		"key in v1":      `{"version": 1, "id": "` + okID + `", "private_key": "` + okID + okID + `"}`,
		"v2 without key": `{"version": 2, "id": "` + okID + `"}`,
		"v2 short key":   `{"version": 2, "id": "` + okID + `", "private_key": "` + okID + `"}`,
		"v2 non-hex key": `{"version": 2, "id": "` + okID + `", "private_key": "` + okID + okID[:31] + `g"}`,
		"v2 wrong id":    `{"version": 2, "id": "ef01` + okID[4:] + `", "private_key": "` + okID + okID + `"}`,
	}
	dir := t.TempDir()
	for name, content := range tests {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadIdentity(path)
		if !errors.Is(err, ErrCorruptIdentity) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: err = %v, want ErrCorruptIdentity naming the path", name, err)
		}
		if b, _ := os.ReadFile(path); string(b) != content {
			t.Errorf("%s: file changed", name)
		}
	}
	// A directory where the file should be cannot be read.
	if _, err := LoadIdentity(dir); !errors.Is(err, ErrCorruptIdentity) {
		t.Errorf("directory: err = %v", err)
	}
	// The valid form of the same file loads.
	path := filepath.Join(dir, "valid")
	os.WriteFile(path, []byte(`{"version": 1, "id": "`+okID+`", "keys": {"s:1": "`+okID+`"}}`), 0o600)
	if id, err := LoadIdentity(path); err != nil || id.ID.String() != okID {
		t.Errorf("valid file: %+v, %v", id, err)
	}
}

// registrar is a REGISTER function over a fixed set of IDs the server
// already holds; it records what it was asked.
type registrar struct {
	taken map[wire.ID]bool
	asked []wire.ID
	err   error
}

func (r *registrar) register(_ context.Context, id wire.ID) (wire.Key, error) {
	r.asked = append(r.asked, id)
	if r.err != nil {
		return wire.Key{}, r.err
	}
	if r.taken[id] {
		return wire.Key{}, &ReasonError{Method: wire.MethodRegister, Reason: wire.ReasonIDConflict}
	}
	r.taken[id] = true
	return wire.Key{byte(len(r.asked))}, nil
}

func TestEnsureRegistered(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "ewf", "identity.json")
	reg := &registrar{taken: map[wire.ID]bool{}}

	// First run: a new ID, registered and saved.
	id, err := EnsureRegistered(ctx, path, "a:1", reg.register)
	if err != nil {
		t.Fatal(err)
	}
	if len(reg.asked) != 1 || reg.asked[0] != id.ID || id.ID.IsZero() {
		t.Fatalf("asked %v for identity %v", reg.asked, id.ID)
	}
	// A restart reuses ID and KEY without asking the server.
	again, err := EnsureRegistered(ctx, path, "a:1", reg.register)
	if err != nil || again.ID != id.ID || again.Keys["a:1"] != id.Keys["a:1"] || len(reg.asked) != 1 {
		t.Errorf("restart: %+v, %v, asked %d times", again, err, len(reg.asked))
	}
	// Another server: the same ID registered there too.
	regB := &registrar{taken: map[wire.ID]bool{}}
	both, err := EnsureRegistered(ctx, path, "b:2", regB.register)
	if err != nil || both.ID != id.ID || len(both.Keys) != 2 || regB.asked[0] != id.ID {
		t.Errorf("second server: %+v, %v", both, err)
	}

	// A conflict for the saved ID at a new server is an error, and the
	// file is unchanged.
	before, _ := os.ReadFile(path)
	held := &registrar{taken: map[wire.ID]bool{id.ID: true}}
	_, err = EnsureRegistered(ctx, path, "c:3", held.register)
	if !errors.Is(err, ErrIDConflict) || !strings.Contains(err.Error(), "c:3") || !strings.Contains(err.Error(), id.ID.String()) {
		t.Errorf("conflict for a saved ID: %v", err)
	}
	if len(held.asked) != 1 {
		t.Errorf("tried %d IDs for a saved identity, want 1", len(held.asked))
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("identity file changed after a failed registration")
	}

	// Any other failure: nothing saved.
	fresh := filepath.Join(t.TempDir(), "identity.json")
	down := &registrar{err: &TimeoutError{Request: "REGISTER"}}
	if _, err := EnsureRegistered(ctx, fresh, "a:1", down.register); !errors.Is(err, ErrTimeout) {
		t.Errorf("server down: %v", err)
	}
	if _, err := os.Stat(fresh); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("identity saved after a failed REGISTER: %v", err)
	}
}

// A brand-new identity whose random ID is taken picks another one; a
// server that conflicts every time is an error after a few tries.
func TestEnsureRegisteredNewIDConflict(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.json")
	reg := &registrar{taken: map[wire.ID]bool{}}
	first := true
	conflictOnce := func(ctx context.Context, id wire.ID) (wire.Key, error) {
		if first {
			first = false
			reg.taken[id] = true
		}
		return reg.register(ctx, id)
	}
	id, err := EnsureRegistered(t.Context(), path, "a:1", conflictOnce)
	if err != nil {
		t.Fatal(err)
	}
	if len(reg.asked) != 2 || reg.asked[0] == reg.asked[1] || id.ID != reg.asked[1] {
		t.Errorf("asked %v, kept %v", reg.asked, id.ID)
	}

	always := func(context.Context, wire.ID) (wire.Key, error) {
		return wire.Key{}, &ReasonError{Method: wire.MethodRegister, Reason: wire.ReasonIDConflict}
	}
	other := filepath.Join(t.TempDir(), "identity.json")
	if _, err := EnsureRegistered(t.Context(), other, "a:1", always); !errors.Is(err, ErrIDConflict) {
		t.Errorf("endless conflicts: %v", err)
	}
}

// A corrupt identity file stops EnsureRegistered before any REGISTER.
func TestEnsureRegisteredCorruptFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.json")
	os.WriteFile(path, []byte("{garbage"), 0o600)
	reg := &registrar{taken: map[wire.ID]bool{}}
	if _, err := EnsureRegistered(t.Context(), path, "a:1", reg.register); !errors.Is(err, ErrCorruptIdentity) {
		t.Errorf("err = %v", err)
	}
	if len(reg.asked) != 0 {
		t.Error("REGISTER sent despite a corrupt identity file")
	}
	if b, _ := os.ReadFile(path); string(b) != "{garbage" {
		t.Error("corrupt identity file was replaced")
	}
}

// EnsureRegistered with the real client over UDP: a restart reuses the
// ID, and the server accepts the saved KEY.
func TestEnsureRegisteredOverUDP(t *testing.T) {
	r := newResponder()
	s := startUDP(t, r)
	c := dialUDP(t, s.addr(), fast)
	path := filepath.Join(t.TempDir(), "identity.json")
	server := s.addr().String()
	id, err := EnsureRegistered(t.Context(), path, server, c.Register)
	if err != nil {
		t.Fatal(err)
	}
	c2 := dialUDP(t, s.addr(), fast) // "restart": another socket
	id2, err := EnsureRegistered(t.Context(), path, server, c2.Register)
	if err != nil || id2.ID != id.ID {
		t.Fatalf("restart: %v, %v", id2, err)
	}
	pub, err := c2.PublicAddress(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Bind(t.Context(), id2.ID, id2.Keys[server], wire.Address{AddrPort: pub}); err != nil {
		t.Errorf("BIND with the saved KEY: %v", err)
	}
}

func TestDefaultIdentityPath(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", "/tmp/xdg")
	p, err := DefaultIdentityPath()
	if err != nil || p != "/tmp/xdg/ewf/identity.json" {
		t.Errorf("DefaultIdentityPath = %q, %v", p, err)
	}
}

// randomID makes a legacy random ID, as version 1 identities hold.
func randomID() wire.ID {
	var id wire.ID
	for id.IsZero() {
		rand.Read(id[:])
	}
	return id
}

// A version 1 file (written by the ewf before key-bound IDs) loads as a
// legacy identity, keeps working, and is saved as version 1 again, so
// that the older ewf still reads it.
func TestIdentityVersion1(t *testing.T) {
	const v1 = `{"version": 1, "id": "0123456789abcdef0123456789abcdef", "keys": {"a:1": "00112233445566778899aabbccddeeff"}}`
	path := filepath.Join(t.TempDir(), "identity.json")
	os.WriteFile(path, []byte(v1), 0o600)
	reg := &registrar{taken: map[wire.ID]bool{}}
	id, err := EnsureRegistered(t.Context(), path, "b:2", reg.register)
	if err != nil {
		t.Fatal(err)
	}
	if id.KeyBound() || id.ID.String() != "0123456789abcdef0123456789abcdef" || len(reg.asked) != 1 || reg.asked[0] != id.ID {
		t.Errorf("legacy identity %+v, asked %v", id, reg.asked)
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"version": 1`) || strings.Contains(string(b), "private_key") || !strings.Contains(string(b), `"b:2"`) {
		t.Errorf("saved legacy identity:\n%s", b)
	}
}

// A new identity is key-bound and survives a save and load with its key.
func TestIdentityVersion2(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.json")
	reg := &registrar{taken: map[wire.ID]bool{}}
	id, err := EnsureRegistered(t.Context(), path, "a:1", reg.register)
	if err != nil {
		t.Fatal(err)
	}
	if !id.KeyBound() || !KeyMatches(id.ID, id.PrivateKey.Public().(ed25519.PublicKey)) {
		t.Fatalf("new identity %v is not key-bound", id.ID)
	}
	got, err := LoadIdentity(path)
	if err != nil || got.ID != id.ID || !got.PrivateKey.Equal(id.PrivateKey) || got.Keys["a:1"] != id.Keys["a:1"] {
		t.Errorf("reloaded %+v, %v", got, err)
	}
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), `"version": 2`) {
		t.Errorf("saved:\n%s", b)
	}
}

// A brand-new identity whose ID is taken at the server gets a new key
// pair, not only a new ID: the ID must stay the key's.
func TestEnsureRegisteredConflictNewKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.json")
	reg := &registrar{taken: map[wire.ID]bool{}}
	first := true
	conflictOnce := func(ctx context.Context, id wire.ID) (wire.Key, error) {
		if first {
			first = false
			reg.taken[id] = true
		}
		return reg.register(ctx, id)
	}
	id, err := EnsureRegistered(t.Context(), path, "a:1", conflictOnce)
	if err != nil {
		t.Fatal(err)
	}
	if !KeyMatches(id.ID, id.PrivateKey.Public().(ed25519.PublicKey)) {
		t.Error("after a conflict the ID no longer derives from the key")
	}
}

// A legacy ID that happens to carry the key-bound marker cannot be
// authenticated; it is refused before any REGISTER, with advice.
func TestEnsureRegisteredMustUpgrade(t *testing.T) {
	path := filepath.Join(t.TempDir(), "identity.json")
	os.WriteFile(path, []byte(`{"version": 1, "id": "ef010000000000000000000000000001", "keys": {}}`), 0o600)
	reg := &registrar{taken: map[wire.ID]bool{}}
	_, err := EnsureRegistered(t.Context(), path, "a:1", reg.register)
	if !errors.Is(err, ErrMustUpgrade) || !strings.Contains(err.Error(), "ewf id --upgrade") {
		t.Errorf("err = %v, want ErrMustUpgrade with advice", err)
	}
	if len(reg.asked) != 0 {
		t.Error("REGISTER sent for an identity that must upgrade")
	}
	if _, _, err := UpgradeIdentity(path); err != nil {
		t.Fatal(err)
	}
	if _, err := EnsureRegistered(t.Context(), path, "a:1", reg.register); err != nil {
		t.Errorf("after the upgrade: %v", err)
	}
}

func TestUpgradeIdentity(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "identity.json")
	const oldID = "0123456789abcdef0123456789abcdef"
	os.WriteFile(path, []byte(`{"version": 1, "id": "`+oldID+`", "keys": {"a:1": "00112233445566778899aabbccddeeff"}}`), 0o644)
	id, prev, err := UpgradeIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if prev.String() != oldID || !id.KeyBound() || id.ID == prev || len(id.Keys) != 0 {
		t.Errorf("upgraded %v (from %v), keys %v", id.ID, prev, id.Keys)
	}
	loaded, err := LoadIdentity(path)
	if err != nil || loaded.ID != id.ID || !loaded.PrivateKey.Equal(id.PrivateKey) {
		t.Errorf("reload: %+v, %v", loaded, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v after upgrade, want 0600", fi.Mode().Perm())
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("%d files in the directory after the upgrade", len(entries))
	}
	// Upgrading a key-bound identity changes nothing.
	before, _ := os.ReadFile(path)
	again, prev, err := UpgradeIdentity(path)
	if err != nil || again.ID != id.ID || !prev.IsZero() {
		t.Errorf("second upgrade: %v from %v, %v", again.ID, prev, err)
	}
	if after, _ := os.ReadFile(path); string(after) != string(before) {
		t.Error("upgrading a key-bound identity rewrote it")
	}
	// A corrupt file is never replaced; a missing one is not created.
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte("{garbage"), 0o600)
	if _, _, err := UpgradeIdentity(bad); !errors.Is(err, ErrCorruptIdentity) {
		t.Errorf("corrupt: %v", err)
	}
	if b, _ := os.ReadFile(bad); string(b) != "{garbage" {
		t.Error("corrupt file replaced")
	}
	missing := filepath.Join(dir, "missing.json")
	if _, _, err := UpgradeIdentity(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("upgrade created a missing file")
	}
}
