package ewf

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

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
