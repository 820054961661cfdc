package relayclient_test

import (
	"net"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/ewf-project/ewf/relayclient"
)

// The relay benchmarks compare, in one run, a direct path on loopback,
// ewfd's embedded relay and coturn (given ewfd's credentials), with the
// client reaching the relay over UDP:
//
//	go test -run '^$' -bench Relay -benchtime 20x ./relayclient/
//
// bench/relay.sh runs them with the figures the README quotes.

// BenchmarkRelayThroughput: QUIC, 1 MiB each way at once per operation,
// SHA-256 checked; MB/s counts both directions.
func BenchmarkRelayThroughput(b *testing.B) {
	const n = 1 << 20
	b.Run("direct", func(b *testing.B) {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer pc.Close()
		b.SetBytes(2 * n)
		for b.Loop() {
			transferOn(b, pc, n)
		}
	})
	for name, rc := range relays(b) {
		b.Run(name, func(b *testing.B) {
			a, err := relayclient.Allocate(b.Context(), onlyTransport(rc, "udp"))
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			b.SetBytes(2 * n)
			for b.Loop() {
				transfer(b, a, n)
			}
		})
	}
}

// BenchmarkRelayRTT: a 64-byte datagram to a UDP echo peer and back;
// reports the median and 99th percentile round trip. The difference to
// "direct" is what the relay adds.
func BenchmarkRelayRTT(b *testing.B) {
	echo, err := net.ListenPacket("udp4", netip.AddrPortFrom(peerIP, 0).String())
	if err != nil {
		b.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := echo.ReadFrom(buf)
			if err != nil {
				return
			}
			echo.WriteTo(buf[:n], from)
		}
	}()
	ping := func(b *testing.B, pc net.PacketConn) {
		msg, buf := make([]byte, 64), make([]byte, 1500)
		var rtts []time.Duration
		for b.Loop() {
			t0 := time.Now()
			if _, err := pc.WriteTo(msg, echo.LocalAddr()); err != nil {
				b.Fatal(err)
			}
			pc.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, _, err := pc.ReadFrom(buf); err != nil {
				b.Fatal(err)
			}
			rtts = append(rtts, time.Since(t0))
		}
		sort.Slice(rtts, func(i, j int) bool { return rtts[i] < rtts[j] })
		b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(rtts[len(rtts)*99/100].Microseconds()), "p99-µs")
	}
	b.Run("direct", func(b *testing.B) {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer pc.Close()
		ping(b, pc)
	})
	for name, rc := range relays(b) {
		b.Run(name, func(b *testing.B) {
			a, err := relayclient.Allocate(b.Context(), onlyTransport(rc, "udp"))
			if err != nil {
				b.Fatal(err)
			}
			defer a.Close()
			if err := a.Permit(peerIP); err != nil {
				b.Fatal(err)
			}
			ping(b, a.PacketConn())
		})
	}
}
