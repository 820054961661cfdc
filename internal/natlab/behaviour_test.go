//go:build linux

package natlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestUnsolicitedInboundKeepsPort covers a pitfall of this kernel: an
// unsolicited packet that reaches a router before the inside host has sent
// draws an ICMP port-unreachable and leaves a confirmed conntrack entry,
// and the host's later flow to that remote endpoint then clashes with it and
// silently gets a new port (port-restricted turning symmetric). Every
// router drops such packets before conntrack confirms them, so the host
// keeps its port.
func TestUnsolicitedInboundKeepsPort(t *testing.T) {
	nats := []NAT{FullCone, Restricted, PortRestricted, CGNAT}
	var spec Spec
	for _, n := range nats {
		spec.Routers = append(spec.Routers, RouterSpec{Name: string(n) + "-gw", NAT: n})
		spec.Hosts = append(spec.Hosts, HostSpec{Name: string(n), Router: string(n) + "-gw"})
	}
	lab := New(t, spec)
	const port = 40000
	for i, n := range nats {
		remote := netip.AddrPortFrom(serverAddr1, uint16(5000+i))
		public := netip.AddrPortFrom(lab.PublicAddr(string(n)+"-gw"), port)
		srv, err := lab.ListenUDP(ServerHost, remote.Port())
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		in, err := lab.ListenUDP(string(n), port)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()

		// The remote speaks first, to the port the host is about to use.
		for range 3 {
			if _, err := srv.WriteToUDPAddrPort([]byte("early"), public); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(100 * time.Millisecond)
		if _, err := in.WriteToUDPAddrPort([]byte("hello"), remote); err != nil {
			t.Fatal(err)
		}
		srv.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 64)
		k, seen, err := srv.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Errorf("%s: remote got nothing: %v", n, err)
			continue
		}
		if seen != public || string(buf[:k]) != "hello" {
			t.Errorf("%s: remote saw %q from %v, want from %v (the port was not kept)", n, buf[:k], seen, public)
		}
		// The host must not have been handed the early packets: no
		// mapping existed when they came.
		in.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if k, _, err := in.ReadFromUDPAddrPort(buf); err == nil {
			t.Errorf("%s: host received unsolicited %q", n, buf[:k])
		}
	}
}

// TestMappingTimeout shows that a router's UDP mapping timeout is real and
// that keepalives hold the mapping: the responder answers 4 s after the
// request; with a 2 s timeout the answer only gets in if the host kept
// sending to the server meanwhile.
func TestMappingTimeout(t *testing.T) {
	lab := New(t, Spec{
		Routers: []RouterSpec{
			{Name: "short-gw", NAT: PortRestricted, UDPTimeout: 2 * time.Second},
			{Name: "long-gw", NAT: PortRestricted},
		},
		Hosts: []HostSpec{
			{Name: "short", Router: "short-gw"},
			{Name: "short-ka", Router: "short-gw"},
			{Name: "long", Router: "long-gw"},
		},
	})
	if err := lab.ensureResponder(); err != nil {
		t.Fatal(err)
	}
	const answerAfter = 4 * time.Second
	tests := []struct {
		host      string
		keepalive time.Duration
		want      bool
	}{
		{"short", 0, false},
		{"short-ka", 700 * time.Millisecond, true},
		{"long", 0, true},
	}
	var wg sync.WaitGroup
	for _, tt := range tests {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := delayedAnswer(lab, tt.host, answerAfter, tt.keepalive)
			if err != nil {
				t.Errorf("%s: %v", tt.host, err)
				return
			}
			t.Logf("%s (keepalive %v): answer after %v arrived: %t", tt.host, tt.keepalive, answerAfter, got)
			if got != tt.want {
				t.Errorf("%s (keepalive %v): answer arrived = %t, want %t", tt.host, tt.keepalive, got, tt.want)
			}
		}()
	}
	wg.Wait()
}

// delayedAnswer asks the responder for an answer after delay, sending
// keepalives to the same server endpoint every keepalive (0: none), and
// reports whether the answer arrived.
func delayedAnswer(lab *Lab, host string, delay, keepalive time.Duration) (bool, error) {
	c, err := lab.ListenUDP(host, 0)
	if err != nil {
		return false, err
	}
	defer c.Close()
	dst := responderEndpoints[0]
	txn := fmt.Sprintf("late%d", txnSeq.Add(1))
	req := fmt.Sprintf("ewfprobe %s 0 %d", txn, delay.Milliseconds())
	if _, err := c.WriteToUDPAddrPort([]byte(req), dst); err != nil {
		return false, err
	}
	stop := make(chan struct{})
	defer close(stop)
	if keepalive > 0 {
		go func() {
			t := time.NewTicker(keepalive)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					c.WriteToUDPAddrPort([]byte("keepalive"), dst)
				case <-stop:
					return
				}
			}
		}()
	}
	c.SetReadDeadline(time.Now().Add(delay + 1500*time.Millisecond))
	buf := make([]byte, 256)
	for {
		k, _, err := c.ReadFromUDPAddrPort(buf)
		if isTimeout(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if f := strings.Fields(string(buf[:k])); len(f) == 3 && f[1] == txn {
			return true, nil
		}
	}
}

// TestTCPSimultaneousOpen learns each host's TCP mapping from the
// responder, then has both listen on their local port and dial each
// other's mapping from it at once. Conntrack treats the peer's SYN as the
// reply of the outbound SYN, so this works through every endpoint-
// independent mapping, including the same home router with hairpinning.
// Listening matters behind full-cone NATs: an early SYN that finds no
// socket is answered with RST, which leaves the conntrack entry closed and
// the peer's own SYN invalid for the next 10 s.
func TestTCPSimultaneousOpen(t *testing.T) {
	nats := []NAT{FullCone, Restricted, PortRestricted, CGNAT}
	var spec Spec
	for _, side := range []string{"a", "b"} {
		for _, n := range nats {
			h := side + "-" + string(n)
			spec.Routers = append(spec.Routers, RouterSpec{Name: h + "-gw", NAT: n})
			spec.Hosts = append(spec.Hosts, HostSpec{Name: h, Router: h + "-gw"})
		}
	}
	spec.Routers = append(spec.Routers, RouterSpec{Name: "home", NAT: PortRestricted, Hairpin: true})
	spec.Hosts = append(spec.Hosts, HostSpec{Name: "home-1", Router: "home"}, HostSpec{Name: "home-2", Router: "home"})
	lab := New(t, spec)
	if err := lab.ensureResponder(); err != nil {
		t.Fatal(err)
	}
	pairs := [][2]string{
		{"a-port-restricted", "b-port-restricted"},
		{"a-restricted", "b-restricted"},
		{"a-full-cone", "b-full-cone"},
		{"a-full-cone", "b-port-restricted"},
		{"a-cgnat", "b-cgnat"},
		{"a-cgnat", "b-restricted"},
		{"home-1", "home-2"},
	}
	var wg sync.WaitGroup
	for _, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			if err := simultaneousOpen(lab, p[0], p[1]); err != nil {
				t.Errorf("%s <-> %s: %v", p[0], p[1], err)
				return
			}
			t.Logf("%s <-> %s: connected in %v", p[0], p[1], time.Since(start).Round(time.Millisecond))
		}()
	}
	wg.Wait()
}

type tcpEnd struct {
	host   string
	local  uint16
	mapped netip.AddrPort
	ln     *net.TCPListener
}

func simultaneousOpen(lab *Lab, a, b string) error {
	ends := [2]*tcpEnd{{host: a}, {host: b}}
	for _, e := range ends {
		m, local, err := lab.tcpMapped(e.host, 0, responderEndpoints[0])
		if err != nil {
			return err
		}
		e.local, e.mapped = local, m
		if e.ln, err = lab.ListenTCP(e.host, local); err != nil {
			return err
		}
		defer e.ln.Close()
	}
	type result struct {
		c   *net.TCPConn
		err error
	}
	results := [2]chan result{make(chan result, 1), make(chan result, 1)}
	for i, e := range ends {
		go func() {
			c, err := punchTCP(lab, e, ends[1-i].mapped, 15*time.Second)
			results[i] <- result{c, err}
		}()
	}
	var conns [2]*net.TCPConn
	var errs []error
	for i := range ends {
		r := <-results[i]
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s to %v: %w", ends[i].host, ends[1-i].mapped, r.err))
			continue
		}
		conns[i] = r.c
		defer r.c.Close()
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	// Prove the two sockets are the two ends of one connection.
	conns[0].SetDeadline(time.Now().Add(5 * time.Second))
	conns[1].SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conns[0].Write([]byte("x")); err != nil {
		return err
	}
	buf := make([]byte, 1)
	if _, err := conns[1].Read(buf); err != nil || buf[0] != 'x' {
		return fmt.Errorf("%s did not read what %s wrote: %v", b, a, err)
	}
	return nil
}

// punchTCP accepts on e.ln and dials peer from e.local at the same time,
// redialling after failures, and returns the first connection to peer.
func punchTCP(lab *Lab, e *tcpEnd, peer netip.AddrPort, timeout time.Duration) (*net.TCPConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	got := make(chan *net.TCPConn, 2)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := e.ln.AcceptTCP()
			if err != nil {
				return
			}
			if c.RemoteAddr().String() == peer.String() {
				got <- c
				return
			}
			c.Close()
		}
	}()
	var lastErr error
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			c, err := lab.DialTCP(ctx, e.host, e.local, peer)
			if err == nil {
				got <- c
				return
			}
			lastErr = err
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	var c *net.TCPConn
	select {
	case c = <-got:
	case <-ctx.Done():
	}
	cancel()
	e.ln.Close()
	wg.Wait()
	close(got)
	for extra := range got {
		extra.Close()
	}
	if c == nil {
		return nil, fmt.Errorf("no connection: last dial error: %v", lastErr)
	}
	return c, nil
}
