//go:build linux

package natlab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// pingStats is what a burst of UDP echoes through the probe responder saw.
type pingStats struct {
	sent, received int
	min            time.Duration
}

// ping sends n echo requests from host to the server, spaced by gap, and
// collects the answers until wait after the last one. Each request carries
// its send time in the transaction id, so reordering or loss does not
// confuse the round-trip times.
func ping(l *Lab, host string, n int, gap, wait time.Duration) (pingStats, error) {
	if err := l.ensureResponder(); err != nil {
		return pingStats{}, err
	}
	c, err := l.ListenUDP(host, 0)
	if err != nil {
		return pingStats{}, err
	}
	defer c.Close()
	start := time.Now()
	st := pingStats{sent: n}
	seen := make(map[string]bool, n)
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 512)
		for {
			k, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if isTimeout(err) || errors.Is(err, net.ErrClosed) {
					err = nil
				}
				done <- err
				return
			}
			f := strings.Fields(string(buf[:k]))
			if len(f) != 3 || f[0] != "ewfprobe" || !strings.HasPrefix(f[1], "ping") || seen[f[1]] {
				continue
			}
			seen[f[1]] = true
			var sentNs int64
			fmt.Sscan(strings.TrimPrefix(f[1], "ping"), &sentNs)
			rtt := time.Since(start) - time.Duration(sentNs)
			if st.received == 0 || rtt < st.min {
				st.min = rtt
			}
			st.received++
		}
	}()
	dst := responderEndpoints[0]
	for range n {
		msg := fmt.Sprintf("ewfprobe ping%d 0 0", time.Since(start))
		if _, err := c.WriteToUDPAddrPort([]byte(msg), dst); err != nil {
			return st, err
		}
		time.Sleep(gap)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	err = <-done
	return st, err
}

// TestForwarder checks the userspace link emulation by its effect: the
// round trip through a delayed WAN link is at least twice the delay, and a
// lossy link loses about the configured share in each direction.
func TestForwarder(t *testing.T) {
	const delay = 40 * time.Millisecond
	const loss = 0.2
	lab := New(t, Spec{
		Routers: []RouterSpec{
			{Name: "plain-gw", NAT: PortRestricted},
			{Name: "slow-gw", NAT: PortRestricted, WAN: Link{Delay: delay}},
			{Name: "lossy-gw", NAT: PortRestricted, WAN: Link{Loss: loss, Seed: 5}},
		},
		Hosts: []HostSpec{
			{Name: "plain", Router: "plain-gw"},
			{Name: "slow", Router: "slow-gw"},
			{Name: "lossy", Router: "lossy-gw"},
			{Name: "slow-public", WAN: Link{Delay: delay}},
		},
	})
	if lab.Forwarder("plain-gw") != nil {
		t.Error("a plain link got a forwarder")
	}

	type result struct {
		st  pingStats
		err error
	}
	run := func(host string, n int) chan result {
		ch := make(chan result, 1)
		go func() {
			st, err := ping(lab, host, n, 5*time.Millisecond, 2*time.Second)
			ch <- result{st, err}
		}()
		return ch
	}
	plainC, slowC, lossyC, pubC := run("plain", 50), run("slow", 50), run("lossy", 400), run("slow-public", 50)
	plain, slow, lossy, pub := <-plainC, <-slowC, <-lossyC, <-pubC
	for _, r := range []result{plain, slow, lossy, pub} {
		if r.err != nil {
			t.Fatal(r.err)
		}
	}
	t.Logf("plain: %d/%d answered, min rtt %v", plain.st.received, plain.st.sent, plain.st.min)
	t.Logf("slow (delay %v): %d/%d answered, min rtt %v", delay, slow.st.received, slow.st.sent, slow.st.min)
	t.Logf("lossy (loss %.2f): %d/%d answered", loss, lossy.st.received, lossy.st.sent)

	if plain.st.received != plain.st.sent {
		t.Errorf("plain link lost %d of %d", plain.st.sent-plain.st.received, plain.st.sent)
	}
	slowOut, slowIn := lab.Forwarder("slow-gw").Stats()
	t.Logf("slow forwarder: out %+v, in %+v", slowOut, slowIn)
	if slow.st.received != slow.st.sent {
		t.Errorf("delay-only link lost %d of %d", slow.st.sent-slow.st.received, slow.st.sent)
	}
	if slow.st.min < 2*delay {
		t.Errorf("min rtt through the delayed link = %v, want >= %v", slow.st.min, 2*delay)
	}
	t.Logf("slow public host (delay %v): %d/%d answered, min rtt %v", delay, pub.st.received, pub.st.sent, pub.st.min)
	if pub.st.received != pub.st.sent || pub.st.min < 2*delay {
		t.Errorf("delayed public host: %d/%d answered, min rtt %v, want all and >= %v",
			pub.st.received, pub.st.sent, pub.st.min, 2*delay)
	}
	if plain.st.min >= 2*delay {
		t.Errorf("min rtt through the plain link = %v: the delay is not the forwarder's", plain.st.min)
	}

	// Both directions drop with probability loss: an echo survives with
	// (1-loss)^2 = 0.64. 400 echoes give a standard deviation of 2.4%.
	ratio := float64(lossy.st.received) / float64(lossy.st.sent)
	if want := (1 - loss) * (1 - loss); ratio < want-0.1 || ratio > want+0.1 {
		t.Errorf("lossy link answered %.2f of echoes, want %.2f±0.10", ratio, want)
	}
	out, in := lab.Forwarder("lossy-gw").Stats()
	t.Logf("lossy forwarder: out %+v, in %+v", out, in)
	for name, s := range map[string]ForwarderStats{"outbound": out, "inbound": in} {
		total := s.Forwarded + s.Lost
		share := float64(s.Lost) / float64(total)
		if total < 200 || share < loss-0.07 || share > loss+0.07 || s.Overflow != 0 {
			t.Errorf("%s: %+v: dropped %.2f, want %.2f±0.07 and no overflow", name, s, share, loss)
		}
	}
}

// TestForwarderCarriesTCP sends a bulk TCP stream through a delayed link.
// The packets reach the forwarder with unfinished checksums (checksum
// offload); if the virtio-net header were not passed through, they would
// arrive with bad checksums. Segmentation offloads are off on the links
// into the forwarder, so every frame it sees is one wire packet (a loss
// decision never takes a 64 KiB burst of segments): no frame may carry a
// gso_type, and 8 MiB takes at least one frame per MTU.
func TestForwarderCarriesTCP(t *testing.T) {
	lab := New(t, Spec{
		Routers: []RouterSpec{{Name: "slow-gw", NAT: PortRestricted, WAN: Link{Delay: 5 * time.Millisecond}}},
		Hosts:   []HostSpec{{Name: "slow", Router: "slow-gw"}},
	})
	ln, err := lab.ListenTCP(ServerHost, 5000)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	const size = 8 << 20
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := lab.DialTCP(ctx, "slow", 0, netip.AddrPortFrom(serverAddr1, 5000))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n := <-got; n != size {
		t.Errorf("server received %d bytes, want %d", n, size)
	}
	out, in := lab.Forwarder("slow-gw").Stats()
	t.Logf("forwarder: out %+v, in %+v", out, in)
	if out.GSO != 0 || in.GSO != 0 {
		t.Errorf("forwarder saw %d outbound and %d inbound segmentation-offload frames, want none", out.GSO, in.GSO)
	}
	if min := uint64(size / 1500); out.Forwarded < min {
		t.Errorf("forwarder carried 8 MiB outbound in %d frames, want at least %d (one per packet)", out.Forwarded, min)
	}
}
