//go:build linux

package natlab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// birthdayPairs are the ordered NAT pairs (listener, connector) that only
// birthday probing connects: a random symmetric NAT against an
// endpoint-independent one that filters by address and port, and two
// sequential symmetric NATs spraying each other's predicted ports.
var birthdayPairs = [][2]NAT{
	{Symmetric, PortRestricted}, {PortRestricted, Symmetric},
	{Symmetric, CGNAT}, {CGNAT, Symmetric},
	{SymmetricSequential, SymmetricSequential},
}

// BenchmarkBirthday measures how often and how fast the pairs that need
// birthday probing connect directly over UDP, with benchDelay one way on
// every uplink (a peer-to-peer round trip of 80 ms). Each op is one fresh
// listener and one `ewf connect`, as in BenchmarkConnect; an attempt that
// ends in no-direct-path counts as a miss instead of failing the run. Run
// it with a fixed count, at least 40 per pair:
//
//	go test -run '^$' -bench Birthday -benchtime 40x -timeout 60m ./internal/natlab/
//
// Each sub-benchmark reports:
//
//	direct-%  attempts that connected directly
//	p50-ms    median time to "connected" of those that did
//	p90-ms    90th percentile of the same
//	misses    attempts that ended in no-direct-path
func BenchmarkBirthday(b *testing.B) {
	ewfd, ewf := BuildBinaries(b)
	lab := New(b, benchSpec())
	if _, err := lab.Start(ServerHost, ewfd, "-listen", matrixServer, "-alternate", discoAlternate, "-data", b.TempDir(),
		"-metrics", matrixMetrics, "-log-level", "warn"); err != nil {
		b.Fatal(err)
	}
	if err := waitMetrics(lab, 20*time.Second); err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	for _, p := range birthdayPairs {
		name := fmt.Sprintf("udp/%s-%s", p[0], p[1])
		b.Run(name, func(b *testing.B) {
			bc := benchConn{lab: lab, ewf: ewf, transport: "udp", listener: MatrixHost("a", p[0]), connector: MatrixHost("b", p[1]),
				lid: filepath.Join(dir, strings.ReplaceAll(name, "/", "-")+"-l.json"),
				cid: filepath.Join(dir, strings.ReplaceAll(name, "/", "-")+"-c.json")}
			// Register both identities, untimed; its outcome does not count.
			if _, _, err := bc.once(b); err != nil && !isNoPath(err) {
				b.Fatal(err)
			}
			var times []time.Duration
			misses := 0
			b.ResetTimer()
			for range b.N {
				d, lines, err := bc.onceLogged(b)
				switch {
				case err == nil:
					times = append(times, d)
				case isNoPath(err):
					misses++
					// On stderr: the benchmark's own log keeps only its
					// first 10 lines.
					fmt.Fprintf(os.Stderr, "%s: miss: %v\n%s\n", name, err, strings.Join(lines, "\n"))
				default:
					b.Fatal(err)
				}
			}
			b.ReportMetric(100*float64(len(times))/float64(b.N), "direct-%")
			b.ReportMetric(ms(median(times)), "p50-ms")
			b.ReportMetric(ms(percentile(times, 0.9)), "p90-ms")
			b.ReportMetric(float64(misses), "misses")
		})
	}
}

func isNoPath(err error) bool {
	var el *ErrorLine
	return errors.As(err, &el) && el.Fields["reason"] == "no-direct-path"
}

// percentile returns the p-quantile (nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(p*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// onceLogged is benchConn.once with both sides at -v, returning their
// discovery, birthday and punch lines when the connector reports an error,
// so that a miss can be told apart: no extra sockets opened, no guess
// landed, or a path up on one side only.
func (bc *benchConn) onceLogged(b *testing.B) (time.Duration, []string, error) {
	b.StopTimer()
	l, err := bc.lab.Start(bc.listener, bc.ewf, "listen", "--server", matrixServer, "--identity", bc.lid,
		"--punch-timeout", matrixPunch.String(), "--timeout", "1m", "-v")
	if err != nil {
		return 0, nil, err
	}
	defer l.Kill()
	ready, err := l.WaitLine("ready", 30*time.Second)
	if err != nil {
		return 0, nil, err
	}
	b.StartTimer()
	start := time.Now()
	c, err := bc.lab.Start(bc.connector, bc.ewf, "connect", "--server", matrixServer, "--identity", bc.cid,
		"--punch-timeout", matrixPunch.String(), "--transport", bc.transport, "--timeout", "30s", "-v", ready["id"])
	if err != nil {
		return 0, nil, err
	}
	defer c.Kill()
	_, err = c.WaitLine("connected", 40*time.Second)
	d := time.Since(start)
	b.StopTimer()
	if err != nil {
		var keep []string
		for _, side := range []struct {
			name string
			p    *Proc
		}{{"listener", l}, {"connector", c}} {
			for _, line := range side.p.Lines() {
				if strings.Contains(line, "birthday") || strings.Contains(line, "NAT discovery") || strings.Contains(line, "punch ended") ||
					strings.Contains(line, "introduced") || strings.Contains(line, "signalled") || strings.Contains(line, "connected") {
					keep = append(keep, side.name+": "+line)
				}
			}
		}
		return d, keep, err
	}
	if _, err := l.WaitLine("connected", 20*time.Second); err != nil {
		return 0, nil, err
	}
	return d, nil, nil
}
