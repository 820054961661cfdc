package natlab

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkThroughput moves a file with the real binaries between two
// hosts behind port-restricted NATs, `ewf connect <FILE` to
// `ewf listen >/dev/null`, per transport and per link:
//
//	wan-20ms-1pct  the listener's router WAN link adds 20 ms one way and
//	               drops 1 % of frames in each direction (the forwarder)
//	forwarder      the same forwarder with 1 µs and no loss: the
//	               forwarder's own limit, since every frame of the path
//	               crosses it (a userspace AF_PACKET copy in each
//	               direction)
//
// Run it under the lab lock with a fixed count, for example:
//
//	flock /work/coord/natlab.lock go test -run '^$' -bench Throughput -benchtime 3x ./internal/natlab/
//
// It reports Mbit/s (median of the runs) from the connector's "connected"
// line to its exit, which includes the close handshake. NATLAB_XFER_BYTES
// sets the size (default 4 MiB); NATLAB_XFER_ENV is put in front of both
// ewf commands (for example QUIC_GO_DISABLE_GSO=1); NATLAB_XFER_LINKS
// picks links by name (default both).
func BenchmarkThroughput(b *testing.B) {
	size := 4 << 20
	if s := os.Getenv("NATLAB_XFER_BYTES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		size = n
	}
	dir := b.TempDir()
	data := filepath.Join(dir, "data")
	buf := make([]byte, size)
	rand.Read(buf)
	if err := os.WriteFile(data, buf, 0o600); err != nil {
		b.Fatal(err)
	}
	ewfd, ewf := BuildBinaries(b)
	links := []struct {
		name string
		link Link
	}{
		{"wan-20ms-1pct", Link{Delay: 20 * time.Millisecond, Loss: 0.01, Seed: 1}},
		{"forwarder", Link{Delay: time.Microsecond}},
	}
	env := ""
	if e := os.Getenv("NATLAB_XFER_ENV"); e != "" {
		env = "env " + e
	}
	for _, lk := range links {
		if only := os.Getenv("NATLAB_XFER_LINKS"); only != "" && !strings.Contains(only, lk.name) {
			continue
		}
		lab := New(b, Spec{
			Routers: []RouterSpec{
				{Name: "l-gw", NAT: PortRestricted, WAN: lk.link},
				{Name: "c-gw", NAT: PortRestricted},
			},
			Hosts: []HostSpec{{Name: "l", Router: "l-gw"}, {Name: "c", Router: "c-gw"}},
		})
		if _, err := lab.Start(ServerHost, ewfd, "-listen", matrixServer, "-data", b.TempDir(),
			"-metrics", matrixMetrics, "-log-level", "warn"); err != nil {
			b.Fatal(err)
		}
		if err := waitMetrics(lab, 20*time.Second); err != nil {
			b.Fatal(err)
		}
		for _, tr := range []string{"udp", "tcp"} {
			b.Run(lk.name+"/"+tr, func(b *testing.B) {
				var rates []time.Duration // time per transfer
				for i := range b.N {
					d, err := labTransfer(lab, env+" "+ewf, tr, data, filepath.Join(dir, fmt.Sprintf("%s-%s-%d", lk.name, tr, i)))
					if fw := lab.Forwarder("l-gw"); fw != nil {
						out, in := fw.Stats()
						b.Logf("forwarder: out %+v, in %+v", out, in)
					}
					if err != nil {
						b.Fatal(err)
					}
					rates = append(rates, d)
				}
				b.ReportMetric(float64(size)*8/median(rates).Seconds()/1e6, "Mbit/s")
			})
		}
		lab.Close()
	}
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
	if _, err := c.WaitLine("connected", 40*time.Second); err != nil {
		return 0, err
	}
	start := time.Now()
	if err := c.Wait(3 * time.Minute); err != nil {
		return 0, err
	}
	d := time.Since(start)
	if err := l.Wait(time.Minute); err != nil {
		return 0, err
	}
	want, err := os.Stat(data)
	if err != nil {
		return 0, err
	}
	got, err := os.Stat(out)
	if err != nil {
		return 0, err
	}
	if got.Size() != want.Size() {
		return 0, fmt.Errorf("listener received %d bytes, connector sent %d", got.Size(), want.Size())
	}
	return d, nil
}
