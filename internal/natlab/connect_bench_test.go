//go:build linux

package natlab

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchDelay is the one-way delay on every NAT's uplink in
// BenchmarkConnect.
const benchDelay = 20 * time.Millisecond

// benchSpec is the two sides of MatrixSpec (a host behind every NAT type,
// twice), with benchDelay on each router's WAN link and on the public
// hosts' links.
func benchSpec() Spec {
	var s Spec
	m := MatrixSpec()
	for _, r := range m.Routers {
		if strings.HasPrefix(r.Name, "a-") || strings.HasPrefix(r.Name, "b-") {
			r.WAN = Link{Delay: benchDelay}
			s.Routers = append(s.Routers, r)
		}
	}
	for _, h := range m.Hosts {
		if strings.HasPrefix(h.Name, "a-") || strings.HasPrefix(h.Name, "b-") {
			if h.Router == "" {
				h.WAN = Link{Delay: benchDelay}
			}
			s.Hosts = append(s.Hosts, h)
		}
	}
	return s
}

// serverRoundTrips is how many round trips with ewfd `ewf connect` makes
// before it can punch, with an identity that is already registered:
// STUN Binding and BIND over UDP, and for TCP, at the same time, the TCP
// handshake, STUN Binding and BIND over TCP (the longer of the two chains:
// three), and last the introduction (QUERY).
func serverRoundTrips(transport string) int {
	if transport == "tcp" {
		return 4
	}
	return 3
}

// BenchmarkConnect measures the time from starting `ewf connect` to its
// "connected" line, per NAT pair and transport, with benchDelay one way on
// each NAT's uplink (the forwarder; a public host gets it on its own
// link), so that a peer-to-peer round trip is 4 × benchDelay and a round
// trip with the server 2 × benchDelay. Pairs that wantMatrix says cannot connect are
// left out. Run it with a fixed count, for example:
//
//	go test -run '^$' -bench Connect -benchtime 10x ./internal/natlab/
//
// Each sub-benchmark reports, besides the mean (ns/op):
//
//	p50-ms     median time to "connected"
//	target-ms  4 × peer-to-peer RTT + the server round trips (the goal)
//	rtt-ms     median rtt_ms that ewf connect reported
//
// The listener is started (and registered) before the clock runs; one
// untimed connect per pair registers the connector's identity first, so
// the timed ones make no REGISTER, as on a host that has run ewf before.
func BenchmarkConnect(b *testing.B) {
	want, err := parseMatrix(wantMatrix)
	if err != nil {
		b.Fatal(err)
	}
	ewfd, ewf := BuildBinaries(b)
	lab := New(b, benchSpec())
	if _, err := lab.Start(ServerHost, ewfd, "-listen", matrixServer+","+matrixServer6, "-alternate", discoAlternate, "-data", b.TempDir(),
		"-metrics", matrixMetrics, "-log-level", "warn"); err != nil {
		b.Fatal(err)
	}
	if err := waitMetrics(lab, 20*time.Second); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	for _, tr := range []string{"udp", "tcp"} {
		for _, ln := range NATs {
			for _, cn := range NATs {
				// Direct connections only (this ewfd offers no relay); a
				// udp-blocked host first waits for UDP (blocked.go).
				if want[tr][natShort[ln]+"/"+natShort[cn]] != outDirect || ln == UDPBlocked || cn == UDPBlocked {
					continue
				}
				l, c := MatrixHost("a", ln), MatrixHost("b", cn)
				name := fmt.Sprintf("%s/%s-%s", tr, ln, cn)
				// Every host, NATed or not, is benchDelay from the switch.
				p2p := 4 * benchDelay
				target := 4*p2p + time.Duration(serverRoundTrips(tr))*2*benchDelay
				b.Run(name, func(b *testing.B) {
					bc := benchConn{lab: lab, ewf: ewf, transport: tr, listener: l, connector: c,
						lid: filepath.Join(dir, strings.ReplaceAll(name, "/", "-")+"-l.json"),
						cid: filepath.Join(dir, strings.ReplaceAll(name, "/", "-")+"-c.json")}
					if _, _, err := bc.once(b); err != nil { // registers both identities
						b.Fatal(err)
					}
					var times, rtts []time.Duration
					b.ResetTimer()
					for range b.N {
						d, rtt, err := bc.once(b)
						if err != nil {
							b.Fatal(err)
						}
						times = append(times, d)
						rtts = append(rtts, rtt)
					}
					b.ReportMetric(ms(median(times)), "p50-ms")
					b.ReportMetric(ms(target), "target-ms")
					b.ReportMetric(ms(median(rtts)), "rtt-ms")
				})
			}
		}
	}
}

// benchConn is one NAT pair of BenchmarkConnect.
type benchConn struct {
	lab                 *Lab
	ewf, transport      string
	listener, connector string
	lid, cid            string // identity files
}

// once starts a listener with the clock stopped, then times one
// `ewf connect` to it, and kills both.
func (bc *benchConn) once(b *testing.B) (time.Duration, time.Duration, error) {
	b.StopTimer()
	l, err := bc.lab.Start(bc.listener, bc.ewf, "listen", "--server", matrixServer, "--identity", bc.lid,
		"--punch-timeout", matrixPunch.String(), "--timeout", "1m")
	if err != nil {
		return 0, 0, err
	}
	defer l.Kill()
	ready, err := l.WaitLine("ready", 30*time.Second)
	if err != nil {
		return 0, 0, err
	}
	b.StartTimer()
	start := time.Now()
	c, err := bc.lab.Start(bc.connector, bc.ewf, "connect", "--server", matrixServer, "--identity", bc.cid,
		"--punch-timeout", matrixPunch.String(), "--transport", bc.transport, "--timeout", "30s", ready["id"])
	if err != nil {
		return 0, 0, err
	}
	defer c.Kill()
	got, err := c.WaitLine("connected", 40*time.Second)
	d := time.Since(start)
	b.StopTimer()
	if err != nil {
		return 0, 0, err
	}
	rtt, err := strconv.Atoi(got["rtt_ms"])
	if err != nil {
		return 0, 0, fmt.Errorf("rtt_ms %q: %w", got["rtt_ms"], err)
	}
	// The listener must have the connection too, or the connector's
	// "connected" was premature.
	if _, err := l.WaitLine("connected", 20*time.Second); err != nil {
		return 0, 0, err
	}
	return d, time.Duration(rtt) * time.Millisecond, nil
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
