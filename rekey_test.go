package ewf

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/server"
)

// TestForgedNotRegisteredKeepsTheKey: "ID not registered" comes unsigned
// (docs/PROTOCOL.md §18.4), so an attacker on the path can forge it. The
// node then tries to register again; the server, which still holds the
// ID, refuses with ID conflict, and the node keeps its KEY, in memory and
// in its identity file, instead of losing its identity.
func TestForgedNotRegisteredKeepsTheKey(t *testing.T) {
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	path := filepath.Join(t.TempDir(), "id.json")
	srv := d.Addrs()[0].String()
	n, err := Open(ctx, Config{Server: srv, IdentityFile: path, DisableNATDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	before := n.currentKey()

	// What keepUDP does on (a forged) ErrNotRegistered.
	err = n.registerAgain(ctx)
	if !errors.Is(err, client.ErrIDConflict) {
		t.Fatalf("registerAgain while the server holds the ID: %v, want ID conflict", err)
	}
	if n.currentKey() != before {
		t.Fatal("the node's KEY changed")
	}
	ident, err := client.LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	if ident.Keys[srv] != before {
		t.Fatal("the identity file lost the KEY")
	}
}
