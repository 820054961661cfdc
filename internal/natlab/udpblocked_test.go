//go:build linux

package natlab

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// udpBlockedSpec: a host on a network that drops all UDP, and two peers
// for it, one that could punch with anyone (full-cone) and one that could
// not (symmetric).
func udpBlockedSpec() Spec {
	var s Spec
	for _, h := range []struct {
		name string
		nat  NAT
	}{{"ub-blocked", UDPBlocked}, {"ub-full", FullCone}, {"ub-sym", Symmetric}} {
		s.Routers = append(s.Routers, RouterSpec{Name: h.name + "-gw", NAT: h.nat})
		s.Hosts = append(s.Hosts, HostSpec{Name: h.name, Router: h.name + "-gw"})
	}
	return s
}

// TestUDPBlocked: `ewf listen` and `ewf connect` on a host whose network
// drops all UDP (docs/PROTOCOL.md §23) register and bind over TCP, and
// connect with a full-cone and with a symmetric peer, each way round,
// through ewfd's relay (the blocked side over TURN over TCP), path=relay
// on both ends and 256 KiB each way intact; once through a real coturn.
// The probe first checks that the lab's NAT does drop UDP and pass TCP.
func TestUDPBlocked(t *testing.T) {
	Skip(t)
	ewfd, ewf := BuildBinaries(t)
	lab := New(t, udpBlockedSpec())
	b, err := lab.Probe("ub-blocked")
	if err != nil || b != UDPBlocked.Expected(false) {
		t.Fatalf("probe of the udp-blocked host: %v, %v; want %v", b, err, UDPBlocked.Expected(false))
	}
	dir := t.TempDir()
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
	const secret = "ewf and coturn share this"
	coturnServer := serverAddr1.String() + ":3481"
	haveCoturn := startLabCoturn(t, lab, dir, secret)
	if haveCoturn {
		sf := filepath.Join(dir, "secret")
		if err := os.WriteFile(sf, []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		turn := "turn:" + serverAddr2.String() + ":3478"
		if _, err := lab.Start(ServerHost, ewfd, "-listen", coturnServer, "-data", filepath.Join(dir, "ewfd-coturn"),
			"-log-level", "warn", "-relay-url", turn+"?transport=udp,"+turn+"?transport=tcp", "-relay-secret", sf); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
	}
	cases := []struct {
		name, server, listener, connector, relayHost string
	}{
		{"ewfd/blocked-full", matrixServer, "ub-blocked", "ub-full", serverAddr1.String()},
		{"ewfd/full-blocked", matrixServer, "ub-full", "ub-blocked", serverAddr1.String()},
		{"ewfd/blocked-sym", matrixServer, "ub-blocked", "ub-sym", serverAddr1.String()},
		{"ewfd/sym-blocked", matrixServer, "ub-sym", "ub-blocked", serverAddr1.String()},
		{"coturn/sym-blocked", coturnServer, "ub-sym", "ub-blocked", serverAddr2.String()},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.server == coturnServer && !haveCoturn {
				t.Skip("coturn not installed")
			}
			start := time.Now()
			got, err := relayPair(lab, ewf, dir, "ub-"+c.name, c.server, c.listener, c.connector, "")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("connected in %v: %v", time.Since(start).Round(time.Millisecond), got[1])
			for i, who := range []string{"listener", "connector"} {
				if got[i]["path"] != "relay" {
					t.Errorf("%s: path=%s, want relay: %v", who, got[i]["path"], got[i])
				}
				r, err := netip.ParseAddrPort(got[i]["relay"])
				if err != nil || r.Addr().String() != c.relayHost {
					t.Errorf("%s: relay=%q, want an address of %s", who, got[i]["relay"], c.relayHost)
				}
			}
		})
	}
}
