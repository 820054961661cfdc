//go:build linux

package natlab

import (
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestIPv6Connect runs the real `ewf listen` and `ewf connect` on two
// dual-stack hosts whose IPv4 NATs are both symmetric (issue 8 §4): over
// IPv4 they cannot punch (no birthday probing against a random-port
// symmetric NAT on both sides), so a connection must be direct over IPv6,
// through the two stateful firewalls, from the global addresses each side
// offers as candidates (INTRODUCE carries the connector's, SIGNAL brings
// back the listener's). Both sides must report path=direct with the
// peer's global IPv6 address as remote, and 256 KiB each way must arrive
// intact.
//
// The server is named by IPv4 and by IPv6, and both transports connect
// over IPv6 either way: the node's UDP socket is dual-stack, and a node
// has a TCP side per family (tcp.go): the binding's, in the server's
// family, and a host side on its global IPv6 address when the binding is
// IPv4 (tcp4), or on its LAN IPv4 address when it is IPv6 (tcp6).
//
// The "both" cases put the two dual-stack hosts behind full-cone IPv4
// NATs, where IPv4 and IPv6 can both connect: the race tries both, the
// first path to form wins (no family is preferred, as for UDP), and both
// sides must agree on it: each side's remote is the peer's global IPv6
// address or its NAT's public IPv4 address, and of the same family.
func TestIPv6Connect(t *testing.T) {
	Skip(t)
	start := time.Now()
	ewfd, ewf := BuildBinaries(t)
	lab := New(t, Spec{
		Routers: []RouterSpec{
			{Name: "sym6a-gw", NAT: Symmetric, IPv6: true},
			{Name: "sym6b-gw", NAT: Symmetric, IPv6: true},
			{Name: "fc6a-gw", NAT: FullCone, IPv6: true},
			{Name: "fc6b-gw", NAT: FullCone, IPv6: true},
		},
		Hosts: []HostSpec{{Name: "dual-a", Router: "sym6a-gw"}, {Name: "dual-b", Router: "sym6b-gw"},
			{Name: "dualfc-a", Router: "fc6a-gw"}, {Name: "dualfc-b", Router: "fc6b-gw"}},
	})
	srv, err := lab.Start(ServerHost, ewfd, "-listen", matrixServer+","+matrixServer6, "-alternate", discoAlternate,
		"-data", t.TempDir(), "-metrics", matrixMetrics, "-log-level", "warn")
	if err != nil {
		t.Fatal(err)
	}
	if err := waitMetrics(lab, 20*time.Second); err != nil {
		t.Fatalf("ewfd did not come up: %v\n%s", err, strings.Join(srv.Lines(), "\n"))
	}
	t.Logf("binaries and lab up after %v", time.Since(start).Round(time.Millisecond))

	dir := t.TempDir()
	for _, c := range []struct {
		name, transport, server string
		both                    bool // full-cone IPv4: either family may win
	}{
		{"udp", "udp", matrixServer, false},
		{"udp6", "udp", matrixServer6, false},
		{"tcp6", "tcp", matrixServer6, false},
		{"tcp4", "tcp", matrixServer, false},
		{"udp-both", "udp", matrixServer, true},
		{"tcp4-both", "tcp", matrixServer, true},
		{"tcp6-both", "tcp", matrixServer6, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			lhost, chost := "dual-a", "dual-b"
			if c.both {
				lhost, chost = "dualfc-a", "dualfc-b"
			}
			// The addresses each side may see the other at.
			peerAddrs := func(host string) []netip.Addr {
				a6, _ := lab.Addr6(host)
				out := []netip.Addr{a6}
				if c.both {
					r, _ := lab.RouterOf(host)
					out = append(out, lab.PublicAddr(r.Name))
				}
				return out
			}
			common := func(who string) []string {
				return []string{"--server", c.server, "--identity", filepath.Join(dir, c.name+"-"+who+".json"),
					"--punch-timeout", matrixPunch.String(), "-v"}
			}
			var procs []*Proc
			defer func() {
				for _, p := range procs {
					p.Kill()
				}
				if t.Failed() {
					for _, p := range procs {
						t.Logf("--- %s on %s:\n%s", p.name, p.host, strings.Join(p.Lines(), "\n"))
					}
				}
			}()
			l, err := lab.Start(lhost, ewf, append([]string{"listen"}, append(common("l"), "--timeout", "2m")...)...)
			if err != nil {
				t.Fatal(err)
			}
			procs = append(procs, l)
			lready, err := l.WaitLine("ready", 30*time.Second)
			if err != nil {
				t.Fatalf("listener: %v", err)
			}
			t0 := time.Now()
			cn, err := lab.Start(chost, ewf, append(append([]string{"connect"}, common("c")...),
				"--transport", c.transport, "--timeout", "40s", lready["id"])...)
			if err != nil {
				t.Fatal(err)
			}
			procs = append(procs, cn)
			got, err := cn.WaitLine("connected", 60*time.Second)
			if err != nil {
				t.Fatalf("connector: %v", err)
			}
			took := time.Since(t0)
			lgot, err := l.WaitLine("connected", 20*time.Second)
			if err != nil {
				t.Fatalf("listener: %v", err)
			}
			var families []bool // Is4 of each side's remote
			for _, side := range []struct {
				who    string
				fields map[string]string
				peer   []netip.Addr
			}{{"listener", lgot, peerAddrs(chost)}, {"connector", got, peerAddrs(lhost)}} {
				if side.fields["transport"] != c.transport || side.fields["path"] != "direct" {
					t.Errorf("%s: transport=%s path=%s, want %s direct", side.who, side.fields["transport"], side.fields["path"], c.transport)
				}
				remote, err := netip.ParseAddrPort(side.fields["remote"])
				if err != nil || !slices.Contains(side.peer, remote.Addr().Unmap()) {
					t.Errorf("%s: remote %q, want one of the peer's addresses %v", side.who, side.fields["remote"], side.peer)
				}
				families = append(families, remote.Addr().Unmap().Is4())
			}
			if families[0] != families[1] {
				t.Errorf("the sides disagree on the path: listener's remote %s, connector's %s", lgot["remote"], got["remote"])
			}
			for _, err := range exchange(l, cn) {
				t.Error(err)
			}
			t.Logf("connected in %v (rtt_ms=%s), remotes %s / %s, 256 KiB each way checked",
				took.Round(time.Millisecond), got["rtt_ms"], lgot["remote"], got["remote"])
		})
	}
}
