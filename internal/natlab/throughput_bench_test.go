//go:build linux

package natlab

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkThroughput moves a file between two hosts behind
// port-restricted NATs, once per mode and link, the modes interleaved
// within each round so that every ewf figure has its library baseline
// measured on the same path in the same run:
//
//	ewf-quic   `ewf connect --transport udp <FILE` to `ewf listen >FILE`
//	quic-go    labxfer: quic-go alone on plain UDP sockets, same
//	           quic.Config as ewf's, the hole punched by hand
//	ewf-tcp    as ewf-quic with --transport tcp (TLS over TCP)
//	tls        labxfer: crypto/tls on a plain TCP simultaneous open
//	tls-cubic  the same with CUBIC on the sending socket (also tls-reno,
//	           tls-bbr; only by NATLAB_XFER_MODES)
//
// and links (the listener's router WAN link):
//
//	wan-20ms-1pct  the forwarder adds 20 ms one way and drops 1 % of the
//	               packets in each direction
//	forwarder      the same forwarder with 1 µs and no loss: with plain
//	               below, the forwarder's own limit (every packet of the
//	               path is copied through it in user space)
//	plain          no forwarder, a plain veth: what the lab's namespaces,
//	               NATs and processes allow on this machine
//
// Run it under the lab lock with a fixed count, for example:
//
//	flock /work/coord/natlab.lock go test -run '^$' -bench Throughput -benchtime 3x ./internal/natlab/
//
// It reports Mbit/s per mode (median of the rounds) from the connector's
// "connected" line to its exit, which includes waiting for the peer to
// confirm the end of the data, and the ewf/library ratios.
// NATLAB_XFER_BYTES sets the size (default 4 MiB on the lossy link, 32 MiB
// on the others, where a small transfer is mostly fixed costs);
// NATLAB_XFER_ENV is put in front of the ewf and labxfer commands (for
// example QUIC_GO_DISABLE_GSO=1); NATLAB_XFER_LINKS and NATLAB_XFER_MODES
// pick links and modes by name (default all); NATLAB_TCP_CC sets the TCP
// congestion control of both hosts (for example cubic; the default is
// the machine's, logged).
func BenchmarkThroughput(b *testing.B) {
	dir := b.TempDir()
	ewfd, ewf := BuildBinaries(b)
	labxfer := filepath.Join(dir, "labxfer")
	if out, err := exec.Command("go", "build", "-o", labxfer, "github.com/ewf-project/ewf/internal/natlab/labxfer").CombinedOutput(); err != nil {
		b.Fatalf("go build labxfer: %v\n%s", err, out)
	}
	links := []struct {
		name string
		link Link
		size int
	}{
		{"wan-20ms-1pct", Link{Delay: 20 * time.Millisecond, Loss: 0.01, Seed: 1}, 4 << 20},
		{"forwarder", Link{Delay: time.Microsecond}, 32 << 20},
		{"plain", Link{}, 32 << 20},
	}
	env := ""
	if e := os.Getenv("NATLAB_XFER_ENV"); e != "" {
		env = "env " + e + " "
	}
	modes := []string{"ewf-quic", "quic-go", "ewf-tcp", "tls"}
	if only := os.Getenv("NATLAB_XFER_MODES"); only != "" {
		modes = strings.FieldsFunc(only, func(r rune) bool { return r == ',' || r == ' ' })
	}
	// A new pair of ports per baseline transfer, so that no old conntrack
	// entry is in the way; below the ephemeral range, where ewf's sockets are.
	port := 20000
	for _, lk := range links {
		if only := os.Getenv("NATLAB_XFER_LINKS"); only != "" && !strings.Contains(only, lk.name) {
			continue
		}
		size := lk.size
		if s := os.Getenv("NATLAB_XFER_BYTES"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil {
				b.Fatal(err)
			}
			size = n
		}
		data := filepath.Join(dir, fmt.Sprintf("data-%d", size))
		if _, err := os.Stat(data); err != nil {
			buf := make([]byte, size)
			rand.Read(buf)
			if err := os.WriteFile(data, buf, 0o600); err != nil {
				b.Fatal(err)
			}
		}
		lab := New(b, Spec{
			Routers: []RouterSpec{
				{Name: "l-gw", NAT: PortRestricted, WAN: lk.link},
				{Name: "c-gw", NAT: PortRestricted},
			},
			Hosts: []HostSpec{{Name: "l", Router: "l-gw"}, {Name: "c", Router: "c-gw"}},
		})
		if _, err := lab.Start(ServerHost, ewfd, "-listen", matrixServer, "-data", b.TempDir(),
			"-metrics", matrixMetrics, "-log-level", "warn",
			// Every round registers fresh IDs from the same two
			// addresses; a retried round would meet the default of 20.
			"-register-per-ip", "1000"); err != nil {
			b.Fatal(err)
		}
		if err := waitMetrics(lab, 20*time.Second); err != nil {
			b.Fatal(err)
		}
		// TCP's congestion control is the sending host's: a namespace
		// starts with the machine's default (BBR on the machine of
		// docs/NATLAB.md, which random loss hardly slows; quic-go has
		// only NewReno).
		for _, h := range []string{"l", "c"} {
			if cc := os.Getenv("NATLAB_TCP_CC"); cc != "" {
				if err := sysctl(lab.Namespace(h), "net.ipv4.tcp_congestion_control="+cc); err != nil {
					b.Fatal(err)
				}
			}
		}
		cc, err := output("ip", "netns", "exec", lab.Namespace("c"), "sysctl", "-n", "net.ipv4.tcp_congestion_control")
		if err != nil {
			b.Fatal(err)
		}
		b.Logf("%s: %d bytes, TCP congestion control %s", lk.name, size, strings.TrimSpace(cc))
		b.Run(lk.name, func(b *testing.B) {
			times := map[string][]time.Duration{}
			fails := map[string]int{}
			for i := range b.N {
				for _, m := range modes {
					id := filepath.Join(dir, fmt.Sprintf("%s-%s-%d", lk.name, m, i))
					var before [2]ForwarderStats
					fw := lab.Forwarder("l-gw")
					if fw != nil {
						before[0], before[1] = fw.Stats()
					}
					d, err := throughputRound(lab, m, env, ewf, labxfer, &port, data, id)
					for try := 0; errors.Is(err, errNotConnected) && try < 2; try++ {
						// Under loss a connect can fail
						// (docs/NATLAB.md, "Throughput"); that
						// is not a throughput figure, so it is
						// counted and the round tried again.
						b.Logf("%s round %d: no connection, counted and tried again: %v", m, i, err)
						fails[m]++
						d, err = throughputRound(lab, m, env, ewf, labxfer, &port, data, fmt.Sprintf("%s-retry%d", id, try))
					}
					if fw != nil {
						out, in := fw.Stats()
						b.Logf("%s round %d: %v; forwarder out %s, in %s", m, i, d, out.since(before[0]), in.since(before[1]))
					} else {
						b.Logf("%s round %d: %v", m, i, d)
					}
					if err != nil {
						b.Fatalf("%s: %v", m, err)
					}
					times[m] = append(times[m], d)
				}
			}
			rate := map[string]float64{}
			for _, m := range modes {
				rate[m] = float64(size) * 8 / median(times[m]).Seconds() / 1e6
				b.ReportMetric(rate[m], m+"-Mbit/s")
				if fails[m] > 0 {
					b.ReportMetric(float64(fails[m]), m+"-connect-failures")
				}
			}
			for _, r := range [][2]string{{"ewf-quic", "quic-go"}, {"ewf-tcp", "tls"}} {
				if rate[r[0]] > 0 && rate[r[1]] > 0 {
					b.ReportMetric(rate[r[0]]/rate[r[1]], r[0]+"/"+r[1])
				}
			}
			// The per-op time of the harness is meaningless here.
			b.ReportMetric(0, "ns/op")
		})
		lab.Close()
	}
}

// errNotConnected marks a transfer whose connector never printed
// "connected".
var errNotConnected = errors.New("no connection")

// throughputRound runs one transfer of mode m; *port is the next free
// pair of ports for labxfer.
func throughputRound(lab *Lab, m, env, ewf, labxfer string, port *int, data, id string) (time.Duration, error) {
	var d time.Duration
	var err error
	switch m {
	case "ewf-quic":
		d, err = labTransfer(lab, env+ewf, "udp", data, id)
	case "ewf-tcp":
		d, err = labTransfer(lab, env+ewf, "tcp", data, id)
	case "quic-go":
		d, err = baselineTransfer(lab, env+labxfer, "quic", "", *port, data, id)
		*port += 2
	case "tls", "tls-cubic", "tls-reno", "tls-bbr":
		cc := strings.TrimPrefix(strings.TrimPrefix(m, "tls"), "-")
		d, err = baselineTransfer(lab, env+labxfer, "tls", cc, *port, data, id)
		*port += 2
	default:
		err = fmt.Errorf("unknown mode %q", m)
	}
	return d, err
}

// since is s minus an earlier reading, formatted with the packet loss rate
// the forwarder applied.
func (s ForwarderStats) since(old ForwarderStats) string {
	fwd, lost := s.Forwarded-old.Forwarded, s.Lost-old.Lost
	pct := 0.0
	if fwd+lost > 0 {
		pct = 100 * float64(lost) / float64(fwd+lost)
	}
	return fmt.Sprintf("{forwarded %d lost %d (%.2f%%) overflow %d sendfail %d gso %d}",
		fwd, lost, pct, s.Overflow-old.Overflow, s.SendFail-old.SendFail, s.GSO-old.GSO)
}

// labTransfer runs one listener and one connector and returns the time
// from "connected" to the connector's exit, after checking that the
// listener received every byte.
func labTransfer(lab *Lab, ewf, transport, data, id string) (time.Duration, error) {
	out := id + ".out"
	// The listener sends nothing (</dev/null): it ends its direction at
	// once, so both exit when the connector's data is through.
	l, err := lab.Start("l", "/bin/sh", "-c", fmt.Sprintf("exec %s listen --server %s --identity %s-l.json --timeout 1m </dev/null >%s",
		ewf, matrixServer, id, out))
	if err != nil {
		return 0, err
	}
	defer l.Kill()
	ready, err := l.WaitLine("ready", 30*time.Second)
	if err != nil {
		return 0, err
	}
	c, err := lab.Start("c", "/bin/sh", "-c", fmt.Sprintf("exec %s connect --server %s --identity %s-c.json --transport %s %s <%s",
		ewf, matrixServer, id, transport, ready["id"], data))
	if err != nil {
		return 0, err
	}
	defer c.Kill()
	return timeTransfer(l, c, data, out)
}

// baselineTransfer does what labTransfer does with labxfer in mode (quic
// or tls) instead of ewf: the listener binds port, the connector port+1,
// each told the other's public address (the lab's NATs keep the port); cc
// is the connector's TCP congestion control, "" for the namespace's.
func baselineTransfer(lab *Lab, labxfer, mode, cc string, port int, data, id string) (time.Duration, error) {
	out := id + ".out"
	lpub := fmt.Sprintf("%s:%d", lab.PublicAddr("l-gw"), port)
	cpub := fmt.Sprintf("%s:%d", lab.PublicAddr("c-gw"), port+1)
	l, err := lab.Start("l", "/bin/sh", "-c", fmt.Sprintf("exec %s -mode %s -role listen -local :%d -peer %s -timeout 2m </dev/null >%s",
		labxfer, mode, port, cpub, out))
	if err != nil {
		return 0, err
	}
	defer l.Kill()
	if cc != "" {
		cc = " -cc " + cc
	}
	c, err := lab.Start("c", "/bin/sh", "-c", fmt.Sprintf("exec %s -mode %s%s -role connect -local :%d -peer %s -timeout 3m <%s",
		labxfer, mode, cc, port+1, lpub, data))
	if err != nil {
		return 0, err
	}
	defer c.Kill()
	return timeTransfer(l, c, data, out)
}

// timeTransfer waits for the connector's "connected" line and its exit,
// then for the listener, and checks that the listener wrote exactly the
// data.
func timeTransfer(l, c *Proc, data, out string) (time.Duration, error) {
	if _, err := c.WaitLine("connected", 40*time.Second); err != nil {
		return 0, fmt.Errorf("%w: %w", errNotConnected, err)
	}
	start := time.Now()
	if err := c.Wait(3 * time.Minute); err != nil {
		return 0, err
	}
	d := time.Since(start)
	if err := l.Wait(time.Minute); err != nil {
		return 0, err
	}
	want, err := os.ReadFile(data)
	if err != nil {
		return 0, err
	}
	got, err := os.ReadFile(out)
	if err != nil {
		return 0, err
	}
	if !bytes.Equal(got, want) {
		return 0, fmt.Errorf("listener received %d bytes, not the %d sent (or not the same)", len(got), len(want))
	}
	return d, nil
}
