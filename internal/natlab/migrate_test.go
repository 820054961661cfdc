//go:build linux

package natlab

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// migrateSpec: two hosts behind port-restricted NATs, a pair that punches
// directly as soon as nothing stands between them.
func migrateSpec() Spec {
	var s Spec
	for _, name := range []string{"mg-a", "mg-b"} {
		s.Routers = append(s.Routers, RouterSpec{Name: name + "-gw", NAT: PortRestricted})
		s.Hosts = append(s.Hosts, HostSpec{Name: name, Router: name + "-gw"})
	}
	return s
}

// blockPeer loads, into router's namespace, a firewall that drops UDP to
// and from peer (the other router's public address) in the forward path:
// the server and its relay stay reachable, the peer only through them.
// Dropped before NAT (forward runs between dnat and snat), no packet of
// the peer leaves a mapping or a conntrack entry behind.
func blockPeer(lab *Lab, router string, peer netip.Addr) error {
	return nftLoad(lab.Namespace(router), fmt.Sprintf(`table ip ewfblock {
  chain block {
    type filter hook forward priority -10; policy accept;
    ip saddr %[1]s meta l4proto udp drop
    ip daddr %[1]s meta l4proto udp drop
  }
}
`, peer))
}

func unblockPeer(lab *Lab, router string) error {
	return run("", "ip", "netns", "exec", lab.Namespace(router), "nft", "delete", "table", "ip", "ewfblock")
}

// TestRelayMovesToDirect: a firewall on one side's router blocks UDP
// between the two peers, so `ewf connect` and `ewf listen` (default
// --relay fallback) connect with path=relay; half of 256 KiB each way
// goes through the relay. Then the firewall rule is removed: the
// background punch of both sides finds the direct path, both print
// `path peer=… path=direct remote=<the peer's public mapping> rtt_ms=…`,
// both TURN allocations are released, and the second half goes direct
// (the relay carries no more of it). Each side's whole stream arrives
// intact (SHA-256).
func TestRelayMovesToDirect(t *testing.T) {
	Skip(t)
	ewfd, ewf := BuildBinaries(t)
	lab := New(t, migrateSpec())
	dir := t.TempDir()
	if err := blockPeer(lab, "mg-a-gw", lab.PublicAddr("mg-b-gw")); err != nil {
		t.Fatal(err)
	}
	srv, err := lab.Start(ServerHost, ewfd, "-listen", matrixServer, "-data", filepath.Join(dir, "ewfd"),
		"-metrics", matrixMetrics, "-log-level", "warn",
		"-relay", "-relay-ip", serverAddr1.String(), "-relay-listen", serverAddr1.String()+":3480",
		"-relay-ports", "40000-40999", "-relay-allow", publicNet.String())
	if err != nil {
		t.Fatal(err)
	}
	if err := waitMetrics(lab, 20*time.Second); err != nil {
		t.Fatalf("ewfd did not come up: %v\n%s", err, strings.Join(srv.Lines(), "\n"))
	}
	common := func(who string) []string {
		return []string{"--server", matrixServer, "--identity", filepath.Join(dir, who+".json"),
			"--punch-timeout", relayPunch.String(), "-v"}
	}
	statusDir := filepath.Join(dir, "status")
	l, err := lab.Start("mg-a", ewf, append(append([]string{"listen"}, common("l")...), "--timeout", "1m",
		"--status-dir", statusDir)...)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Kill()
	ready, err := l.WaitLine("ready", 30*time.Second)
	if err != nil {
		t.Fatalf("listener: %v", err)
	}
	c, err := lab.Start("mg-b", ewf, append(append([]string{"connect"}, common("c")...), "--timeout", "40s", ready["id"])...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Kill()
	logs := func() string {
		return "\n--- listener:\n" + strings.Join(l.Lines(), "\n") + "\n--- connector:\n" + strings.Join(c.Lines(), "\n")
	}
	procs := []*Proc{l, c}
	peerPublic := []netip.Addr{lab.PublicAddr("mg-b-gw"), lab.PublicAddr("mg-a-gw")}
	for _, p := range procs {
		got, err := p.WaitLine("connected", 60*time.Second)
		if err != nil {
			t.Fatalf("%s: %v%s", p.name, err, logs())
		}
		if got["path"] != "relay" || got["relay"] == "" {
			t.Fatalf("%s: %v behind the firewall, want path=relay relay=…%s", p.name, got, logs())
		}
	}
	before, err := scrapeMetrics(lab)
	if err != nil {
		t.Fatal(err)
	}
	const half = payloadSize / 2
	var data [2][]byte
	for i, p := range procs {
		data[i] = make([]byte, payloadSize)
		rand.Read(data[i])
		if _, err := p.Stdin().Write(data[i][:half]); err != nil {
			t.Fatalf("write to %s: %v", p.name, err)
		}
	}
	// The first halves go through the relay before the firewall opens.
	deadline := time.Now().Add(20 * time.Second)
	for {
		m, err := scrapeMetrics(lab)
		if err != nil {
			t.Fatal(err)
		}
		if m[`ewfd_relay_bytes_total{direction="to_peer"}`]-before[`ewfd_relay_bytes_total{direction="to_peer"}`] >= 2*half {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay did not carry the first halves%s", logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	opened := time.Now()
	if err := unblockPeer(lab, "mg-a-gw"); err != nil {
		t.Fatal(err)
	}
	for i, p := range procs {
		got, err := p.WaitLine("path", 30*time.Second)
		if err != nil {
			t.Fatalf("%s: no path line within 30 s of the firewall opening: %v%s", p.name, err, logs())
		}
		remote, perr := netip.ParseAddrPort(got["remote"])
		if got["path"] != "direct" || perr != nil || remote.Addr() != peerPublic[i] || got["rtt_ms"] == "" {
			t.Errorf("%s: %v, want path=direct remote=%s:…", p.name, got, peerPublic[i])
		}
	}
	t.Logf("moved to the direct path %v after the firewall opened", time.Since(opened).Round(time.Millisecond))
	// `ewf status` shows the listener's connection direct now.
	st, err := lab.Start("mg-a", ewf, "status", "--status-dir", statusDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Wait(20 * time.Second); err != nil {
		t.Fatalf("ewf status: %v", err)
	}
	if out := st.Stdout(); !strings.Contains(out, " path=direct remote="+peerPublic[0].String()+":") {
		t.Errorf("ewf status after the move:\n%s\nwant the connection with path=direct remote=%s:…", out, peerPublic[0])
	}
	// Both allocations released.
	deadline = time.Now().Add(10 * time.Second)
	for {
		m, err := scrapeMetrics(lab)
		if err != nil {
			t.Fatal(err)
		}
		if m["ewfd_relay_allocations"] == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v allocations left after both sides moved%s", m["ewfd_relay_allocations"], logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	atMove, err := scrapeMetrics(lab)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range procs {
		if _, err := p.Stdin().Write(data[i][half:]); err != nil {
			t.Fatalf("write to %s: %v", p.name, err)
		}
		if err := p.Stdin().Close(); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range procs {
		if err := p.Wait(60 * time.Second); err != nil {
			t.Fatalf("%s did not exit cleanly: %v%s", p.name, err, logs())
		}
		out := p.Stdout()
		if len(out) != payloadSize || sha256.Sum256([]byte(out)) != sha256.Sum256(data[1-i]) {
			t.Errorf("%s received %d bytes, sha256 %x; want %d bytes, sha256 %x", p.name, len(out),
				sha256.Sum256([]byte(out)), payloadSize, sha256.Sum256(data[1-i]))
		}
	}
	after, err := scrapeMetrics(lab)
	if err != nil {
		t.Fatal(err)
	}
	if d := after[`ewfd_relay_bytes_total{direction="to_peer"}`] - atMove[`ewfd_relay_bytes_total{direction="to_peer"}`]; d != 0 {
		t.Errorf("%v bytes crossed the relay after the move", d)
	}
}
