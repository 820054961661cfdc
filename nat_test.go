package ewf_test

import (
	"context"
	"testing"
	"time"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/natdisco"
	"github.com/ewf-project/ewf/server"
)

// TestNodeLearnsNATInBackground: Open returns before discovery ends
// (ready is not delayed), and Node.NAT then reports what an RFC 5780
// server says of a host with no NAT: public, EIM, EIF, preserved ports.
func TestNodeLearnsNATInBackground(t *testing.T) {
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, Alternate: "127.0.0.2:0", DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n, err := ewf.Open(ctx, config(t, d.Addrs()[0].String(), "a"))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	// NAT() is true once the mapping is known; the filtering follows when
	// the whole check has ended.
	var c natdisco.Class
	for ok := false; !ok || c.Filtering == natdisco.FilteringUnknown; {
		if ctx.Err() != nil {
			t.Fatalf("NAT discovery did not finish: %v", c)
		}
		time.Sleep(20 * time.Millisecond)
		c, ok = n.NAT()
		if ok && !c.Known() {
			t.Fatalf("NAT() = %v, true before the mapping is known", c)
		}
	}
	if c.Mapping != natdisco.MappingEIM || c.Filtering != natdisco.FilteringEIF || c.Ports != natdisco.PortsPreserved || !c.Public {
		t.Fatalf("NAT() = %v public=%v, want a public host", c, c.Public)
	}
}

func TestNodeNATDiscoveryOff(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := config(t, srv, "a")
	cfg.DisableNATDiscovery = true
	n, err := ewf.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if c, ok := n.NAT(); ok {
		t.Fatalf("NAT() = %v, true with discovery off", c)
	}
	n.Close()
}
