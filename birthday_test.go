package ewf

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ewf-project/ewf/natdisco"
	"github.com/ewf-project/ewf/punch"
	"github.com/ewf-project/ewf/wire"
)

// TestPortSet: the hard side's extra sockets on loopback. A packet that is
// not a PUNCH and arrives before the handover is kept and read first by
// QUIC's side of the taken socket; close closes every other socket and the
// taken one stays usable until its owner closes it.
func TestPortSet(t *testing.T) {
	main, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer main.Close()
	n := &Node{sock: main, log: slog.New(slog.DiscardHandler)}
	self, peer := wire.ID{1}, wire.ID{2}
	m, err := punch.New(punch.Config{Self: self, Peer: peer, Secret: wire.Secret{3},
		Candidates: []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:9")}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	a := &attempt{n: n, peer: peer, m: m}
	ps, err := openPorts(a, 4)
	if err != nil || len(ps.socks) != 4 {
		t.Fatalf("openPorts: %v, %d sockets", err, len(ps.socks))
	}
	m.EnablePorts(4, netip.MustParseAddrPort("127.0.0.1:9"), 0, time.Now())
	ps.start()

	remote, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	quicish := []byte{0x40, 1, 2, 3, 4, 5, 6, 7} // a QUIC short header, not STUN or X
	to := ps.socks[1].LocalAddr().(*net.UDPAddr).AddrPort()
	if _, err := remote.WriteToUDPAddrPort(quicish, to); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		ps.mu.Lock()
		k := len(ps.early[2])
		ps.mu.Unlock()
		if k == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the early packet was not kept")
		}
		time.Sleep(5 * time.Millisecond)
	}
	c, ok := ps.take(2)
	if !ok {
		t.Fatal("take failed")
	}
	if _, ok := ps.take(2); ok {
		t.Fatal("a socket was handed over twice")
	}
	buf := make([]byte, 64)
	k, from, err := c.ReadFrom(buf)
	if err != nil || string(buf[:k]) != string(quicish) || from.String() != remote.LocalAddr().String() {
		t.Fatalf("first read: %q from %v, %v", buf[:k], from, err)
	}
	ps.close()
	for i, s := range ps.socks {
		_, err := s.WriteToUDPAddrPort([]byte("x"), remote.LocalAddr().(*net.UDPAddr).AddrPort())
		if i == 1 && err != nil {
			t.Errorf("the taken socket was closed: %v", err)
		}
		if i != 1 && err == nil {
			t.Errorf("socket %d still open after close", i+1)
		}
	}
	// The taken socket still receives, now for its new owner.
	if _, err := remote.WriteToUDPAddrPort([]byte("later"), to); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if k, _, err := c.ReadFrom(buf); err != nil || string(buf[:k]) != "later" {
		t.Fatalf("after the handover: %q, %v", buf[:k], err)
	}
	c.Close()
}

// TestPortSetAnswersAfterHandover: a PUNCH request that reaches an extra
// socket after it was handed to QUIC is still answered from it, and is not
// given to QUIC. In the lab, the symmetric listener's own probe was
// answered first (it became Connected and handed the socket over) and the
// dialer's triggered request came a moment later: swallowed, it left the
// dialer spraying until it gave up.
func TestPortSetAnswersAfterHandover(t *testing.T) {
	main, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer main.Close()
	n := &Node{sock: main, log: slog.New(slog.DiscardHandler)}
	self, peer, secret := wire.ID{1}, wire.ID{2}, wire.Secret{3}
	remote, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	remoteAddr := remote.LocalAddr().(*net.UDPAddr).AddrPort()
	now := time.Now()
	m, err := punch.New(punch.Config{Self: self, Peer: peer, Secret: secret, Candidates: []netip.AddrPort{remoteAddr}}, now)
	if err != nil {
		t.Fatal(err)
	}
	a := &attempt{n: n, peer: peer, m: m, linger: now.Add(time.Minute)}
	ps, err := openPorts(a, 2)
	if err != nil {
		t.Fatal(err)
	}
	a.ports = ps
	m.EnablePorts(2, remoteAddr, 0, now)
	ps.start()
	c, ok := ps.take(2)
	if !ok {
		t.Fatal("take failed")
	}
	ps.close()
	defer c.Close()
	// QUIC's reader: it must see the QUIC packet only.
	got := make(chan string, 4)
	go func() {
		buf := make([]byte, 1500)
		for {
			k, _, err := c.ReadFrom(buf)
			if err != nil {
				close(got)
				return
			}
			got <- string(buf[:k])
		}
	}()

	to := ps.socks[1].LocalAddr().(*net.UDPAddr).AddrPort()
	pm, err := punch.New(punch.Config{Self: peer, Peer: self, Secret: secret, Candidates: []netip.AddrPort{to}}, now)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pm.Tick(now) {
		if _, err := remote.WriteToUDPAddrPort(p.Data, p.To); err != nil {
			t.Fatal(err)
		}
	}
	remote.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	for pm.State() == punch.Punching {
		k, from, err := remote.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("no answer from the handed-over socket: %v", err)
		}
		var msg wire.Message
		if msg.Decode(buf[:k]) != nil {
			continue
		}
		pm.Receive(&msg, netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), time.Now())
	}
	if path, _, _ := pm.Path(); path != to {
		t.Fatalf("the peer's path is %v, want %v", path, to)
	}
	quicish := []byte{0x40, 9, 8, 7}
	if _, err := remote.WriteToUDPAddrPort(quicish, to); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		if s != string(quicish) {
			t.Fatalf("QUIC read %q, want only the QUIC packet", s)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the QUIC packet was not delivered")
	}
}

// TestCounterHint: a sequential node's SIGNAL carries its NAT's newest
// port as a candidate at its public IP, and the peer predicts from it, not
// from the bound port (the lab's seq/seq misses: the bound port was an old
// mapping, or the counter had wrapped since).
func TestCounterHint(t *testing.T) {
	seq := natdisco.Result{Class: natdisco.Class{Mapping: natdisco.MappingAPDM, Ports: natdisco.PortsSequential, Delta: 1},
		Ports: []uint16{22045, 22046, 20000, 20002, 20003, 20004}}
	if got := lastPort(seq); got != 20004 {
		t.Fatalf("lastPort = %d, want 20004 (the newest mapping, after the wrap)", got)
	}
	random := seq
	random.Class.Ports = natdisco.PortsRandom
	if got := lastPort(random); got != 0 {
		t.Fatalf("lastPort of random ports = %d, want 0", got)
	}
	pub := netip.MustParseAddrPort("203.0.113.23:21041")
	for _, tc := range []struct {
		name  string
		cands []netip.AddrPort
		want  uint16
		ok    bool
	}{
		{"hint", []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:40000"), netip.MustParseAddrPort("203.0.113.23:20227")}, 20227, true},
		{"mapped-v4", []netip.AddrPort{netip.MustParseAddrPort("[::ffff:203.0.113.23]:20227")}, 20227, true},
		{"bound-port-is-no-hint", []netip.AddrPort{pub}, 0, false},
		{"other-ip", []netip.AddrPort{netip.MustParseAddrPort("198.51.100.7:20227")}, 0, false},
		{"none", nil, 0, false},
	} {
		if got, ok := counterIn(tc.cands, pub); got != tc.want || ok != tc.ok {
			t.Errorf("%s: counterIn = %d %v, want %d %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}
