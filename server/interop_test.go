package server_test

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
)

// TestTurnutilsStunclientGetsMappedAddress runs coturn's STUN client against
// ewfd. It reports the reflexive address it got; on loopback that is
// 127.0.0.1 (or ::1) and the client's own ephemeral port.
func TestTurnutilsStunclientGetsMappedAddress(t *testing.T) {
	bin, err := exec.LookPath("turnutils_stunclient")
	if err != nil {
		t.Skip("turnutils_stunclient not installed (Debian package coturn; CI installs it)")
	}
	d := startDaemon(t, server.Config{})
	re := regexp.MustCompile(`UDP reflexive addr: (\S+)`)
	for _, host := range loopbacks(t) {
		t.Run(host, func(t *testing.T) {
			srv := addrFor(t, d, host)
			// Not with -f (forced RFC 5780): its second request asks for
			// the answer on another port (RESPONSE-PORT), which ewfd
			// refuses with 420 to the port the request came from, and the
			// client waits on the other port without a timeout.
			for _, args := range [][]string{
				{"-p", strconv.Itoa(int(srv.Port())), host},
			} {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
				cancel()
				if err != nil {
					t.Fatalf("turnutils_stunclient %q: %v\n%s", args, err, out)
				}
				m := re.FindStringSubmatch(string(out))
				if m == nil {
					t.Fatalf("turnutils_stunclient %q printed no reflexive address:\n%s", args, out)
				}
				// It prints IPv6 without brackets: "::1:56067".
				i := strings.LastIndexByte(m[1], ':')
				ip, err := netip.ParseAddr(strings.Trim(m[1][:i], "[]"))
				port, perr := strconv.Atoi(m[1][i+1:])
				ap := netip.AddrPortFrom(ip, uint16(port))
				if err != nil || perr != nil {
					t.Fatalf("reflexive address %q: %v", m[1], err)
				}
				if ap.Addr() != netip.MustParseAddr(host) || ap.Port() == 0 || ap.Port() == srv.Port() {
					t.Fatalf("reflexive address %v, want %s and the client's port", ap, host)
				}
			}
		})
	}
}

func TestMetricsAndHealthzEndpoints(t *testing.T) {
	d := startDaemon(t, server.Config{MetricsAddr: "127.0.0.1:0"})
	srv := addrFor(t, d, "127.0.0.1")
	c := dialUDP(t, srv)
	id, key := c.register()
	c.bind(id, key)
	c.send(stunRequest(false))
	c.recv()

	ma, ok := d.MetricsAddr()
	if !ok {
		t.Fatal("no metrics address")
	}
	get := func(path string) string {
		resp, err := http.Get("http://" + ma.String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %s", path, resp.Status)
		}
		return string(b)
	}
	if h := get("/healthz"); strings.TrimSpace(h) != "ok" {
		t.Fatalf("/healthz: %q", h)
	}
	m := get("/metrics")
	for _, want := range []string{
		`ewfd_requests_total{kind="stun",outcome="ok"} 1`,
		`ewfd_requests_total{kind="register",outcome="ok"} 1`,
		`ewfd_requests_total{kind="bind",outcome="ok"} 1`,
		`ewfd_bindings{transport="udp"} 1`,
		`ewfd_registrations 1`,
		`ewfd_store_commit_seconds_count 1`,
		`ewfd_dropped_total{reason="rate_limited"} 0`,
		`ewfd_tcp_connections 0`,
		`process_resident_memory_bytes`,
		`go_goroutines`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
