//go:build linux

package natlab

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// relaySpec is a small lab for the relay: a pair that cannot punch over
// UDP (symmetric on both sides: wantMatrix's one "nopath" since birthday
// probing) and one that can (full-cone on both sides).
func relaySpec() Spec {
	var s Spec
	for _, h := range []struct {
		name string
		nat  NAT
	}{{"ra-sym", Symmetric}, {"rb-sym", Symmetric}, {"ra-full", FullCone}, {"rb-full", FullCone}} {
		s.Routers = append(s.Routers, RouterSpec{Name: h.name + "-gw", NAT: h.nat})
		s.Hosts = append(s.Hosts, HostSpec{Name: h.name, Router: h.name + "-gw"})
	}
	return s
}

// relayPunch is the peers' --punch-timeout here: fallback turns to the
// relay when punching gives up, so a short one keeps the test short.
const relayPunch = 3 * time.Second

// TestRelay connects pairs of `ewf listen` and `ewf connect` whose NATs
// cannot be punched through, over a TURN relay: ewfd's own (-relay) and a
// real coturn (turnserver with use-auth-secret, ewfd handing out its
// credentials with -relay-url and -relay-secret). Each must report
// path=relay with the relay's address and carry 256 KiB each way intact;
// with --relay never the same pair ends in no-direct-path; a pair that can
// punch stays direct although a relay is offered. The lab's public segment
// is documentation space (203.0.113.0/24), which the relay refuses as a
// peer unless allowed: -relay-allow opens it, as an operator of a private
// deployment would.
func TestRelay(t *testing.T) {
	Skip(t)
	ewfd, ewf := BuildBinaries(t)
	lab := New(t, relaySpec())
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

	// coturn on the second server address, and an ewfd that points its
	// clients there.
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
		time.Sleep(time.Second) // no metrics endpoint to poll; the peers retry anyway
	}

	cases := []struct {
		name, server, listener, connector, relayMode string
		want                                         string // "relay", "direct" or an error reason
		relayHost                                    string
		tcp                                          bool // ewf connect --transport tcp
	}{
		{"ewfd/sym-sym", matrixServer, "ra-sym", "rb-sym", "", "relay", serverAddr1.String(), false},
		{"ewfd/sym-sym-reversed", matrixServer, "rb-sym", "ra-sym", "", "relay", serverAddr1.String(), false},
		{"ewfd/sym-sym-always", matrixServer, "ra-sym", "rb-sym", "always", "relay", serverAddr1.String(), false},
		{"ewfd/sym-sym-never", matrixServer, "ra-sym", "rb-sym", "never", "no-direct-path", "", false},
		{"ewfd/full-full", matrixServer, "ra-full", "rb-full", "", "direct", "", false},
		{"coturn/sym-sym", coturnServer, "ra-sym", "rb-sym", "", "relay", serverAddr2.String(), false},
		// --transport tcp: the TCP race finds no path, the relayed QUIC
		// session follows, the connector over TURN over TCP.
		{"ewfd/sym-sym-tcp", matrixServer, "ra-sym", "rb-sym", "", "relay", serverAddr1.String(), true},
		{"ewfd/sym-sym-tcp-never", matrixServer, "ra-sym", "rb-sym", "never", "no-direct-path", "", true},
		{"coturn/sym-sym-tcp", coturnServer, "ra-sym", "rb-sym", "", "relay", serverAddr2.String(), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.server == coturnServer && !haveCoturn {
				t.Skip("coturn not installed")
			}
			before, _ := scrapeMetrics(lab)
			start := time.Now()
			var extra []string
			if c.tcp {
				extra = []string{"--transport", "tcp"}
			}
			got, err := relayPair(lab, ewf, dir, c.name, c.server, c.listener, c.connector, c.relayMode, extra...)
			if c.want != "relay" && c.want != "direct" {
				var el *ErrorLine
				if !errors.As(err, &el) || el.Fields["reason"] != c.want {
					t.Fatalf("got %v, %v; want error reason=%s", got, err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("connected in %v: %v", time.Since(start).Round(time.Millisecond), got[1])
			for i, who := range []string{"listener", "connector"} {
				if got[i]["path"] != c.want {
					t.Errorf("%s: path=%s, want %s: %v", who, got[i]["path"], c.want, got[i])
				}
				r, err := netip.ParseAddrPort(got[i]["relay"])
				if c.want == "relay" && (err != nil || r.Addr().String() != c.relayHost) {
					t.Errorf("%s: relay=%q, want an address of %s", who, got[i]["relay"], c.relayHost)
				}
				if c.want != "relay" {
					continue
				}
				// The relayed session is QUIC; the connector that asked
				// for TCP reaches the relay over TCP.
				via := "udp"
				if c.tcp && who == "connector" {
					via = "tcp"
				}
				if got[i]["transport"] != "udp" || got[i]["relay_transport"] != via {
					t.Errorf("%s: transport=%s relay_transport=%s, want udp and %s", who, got[i]["transport"], got[i]["relay_transport"], via)
				}
			}
			if c.server == matrixServer && c.want == "relay" {
				after, err := scrapeMetrics(lab)
				if err != nil {
					t.Fatal(err)
				}
				d := after[`ewfd_relay_bytes_total{direction="to_peer"}`] - before[`ewfd_relay_bytes_total{direction="to_peer"}`]
				if d < 2*payloadSize {
					t.Errorf("ewfd's relay sent %v bytes to peers, want at least both payloads (%d)", d, 2*payloadSize)
				}
			}
		})
	}
}

// relayPair runs `ewf listen` and `ewf connect` (with extra arguments)
// with --relay mode (empty: the default) and, once both are connected,
// exchanges the payloads. It returns both connected lines, or the
// connector's error line.
func relayPair(lab *Lab, ewf, dir, name, server, listener, connector, mode string, extra ...string) ([2]map[string]string, error) {
	var got [2]map[string]string
	id := strings.NewReplacer("/", "-").Replace(name)
	common := func(who string) []string {
		a := []string{"--server", server, "--identity", filepath.Join(dir, id+"-"+who+".json"),
			"--punch-timeout", relayPunch.String(), "-v"}
		if mode != "" {
			a = append(a, "--relay", mode)
		}
		return a
	}
	l, err := lab.Start(listener, ewf, append(append([]string{"listen"}, common("l")...), "--timeout", "1m")...)
	if err != nil {
		return got, err
	}
	defer l.Kill()
	ready, err := l.WaitLine("ready", 30*time.Second)
	if err != nil {
		return got, fmt.Errorf("listener: %w", err)
	}
	c, err := lab.Start(connector, ewf, append(append(append([]string{"connect"}, common("c")...), extra...),
		"--timeout", "40s", ready["id"])...)
	if err != nil {
		return got, err
	}
	defer c.Kill()
	logs := func() string {
		return "\n--- listener:\n" + strings.Join(l.Lines(), "\n") + "\n--- connector:\n" + strings.Join(c.Lines(), "\n")
	}
	if got[1], err = c.WaitLine("connected", 60*time.Second); err != nil {
		var el *ErrorLine
		if errors.As(err, &el) {
			return got, err
		}
		return got, fmt.Errorf("connector: %w%s", err, logs())
	}
	if got[0], err = l.WaitLine("connected", 20*time.Second); err != nil {
		return got, fmt.Errorf("listener: %w%s", err, logs())
	}
	if errs := exchange(l, c); len(errs) > 0 {
		return got, fmt.Errorf("exchange: %v%s", errors.Join(errs...), logs())
	}
	return got, nil
}

// startLabCoturn runs coturn on the server's second address, relaying
// from it too. It reports false when coturn is not installed (outside CI,
// which installs it: there it fails).
func startLabCoturn(t *testing.T, lab *Lab, dir, secret string) bool {
	t.Helper()
	bin, err := exec.LookPath("turnserver")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("coturn (turnserver) is not installed; .ci/run installs it")
		}
		return false
	}
	a := serverAddr2.String()
	p, err := lab.Start(ServerHost, bin, "-n", "--listening-ip", a, "--listening-port", "3478", "--relay-ip", a,
		"--min-port", "41000", "--max-port", "41999", "--use-auth-secret", "--static-auth-secret", secret,
		"--realm", "ewf", "--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay",
		"--userdb", filepath.Join(dir, "turndb"), "--pidfile", filepath.Join(dir, "turn.pid"),
		"--log-file", "stdout", "--simple-log")
	if err != nil {
		t.Fatal(err)
	}
	_ = p
	time.Sleep(500 * time.Millisecond)
	return true
}
