package ewf

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/ewf-project/ewf/wire"
)

// TestSockConnRoutes sends a mix of datagrams to a real socket and reads
// them the way quic-go does, through sockConn.ReadBatch: STUN and X from
// the server reach the rendezvous client, a PUNCH from anyone reaches the
// puncher, other X is dropped, and quic-go gets the QUIC datagrams only,
// intact and in order although control datagrams sat between them in the
// same batch.
func TestSockConnRoutes(t *testing.T) {
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	node, server, peer := listen(), listen(), listen()
	addr := func(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }

	sc := newSockConn(node, []netip.AddrPort{addr(server)})
	var toServer [][]byte
	var punches []netip.AddrPort
	sc.toServer = func(b []byte) { toServer = append(toServer, bytes.Clone(b)) }
	sc.toPunch = func(m *wire.Message, from netip.AddrPort) {
		if m.SourceID != (wire.ID{7}) {
			t.Errorf("PUNCH SOURCE_ID = %s", m.SourceID)
		}
		punches = append(punches, from)
	}

	xmsg := func(method wire.Method) []byte {
		var m wire.Message
		m.Type = wire.Type{Method: method, Class: wire.ClassRequest}
		m.SetSourceID(wire.ID{7})
		return m.AppendTo(nil)
	}
	stun := []byte{0x01, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	quic := func(i byte) []byte {
		b := bytes.Repeat([]byte{i}, 1200)
		b[0] = 0x40 | i // QUIC short header shape
		return b
	}
	send := []struct {
		from *net.UDPConn
		b    []byte
	}{
		{peer, quic(1)},
		{server, stun},
		{server, xmsg(wire.MethodRegister)},
		{peer, xmsg(wire.MethodPunch)},
		{peer, quic(2)},
		{peer, xmsg(wire.MethodRegister)}, // X from a peer, not PUNCH: dropped
		{peer, stun},                      // STUN from a peer: dropped
		{peer, quic(3)},
	}
	for _, s := range send {
		if _, err := s.from.WriteToUDPAddrPort(s.b, addr(node)); err != nil {
			t.Fatal(err)
		}
	}

	ms := make([]ipv4.Message, 8)
	for i := range ms {
		ms[i].Buffers = [][]byte{make([]byte, 1500)}
		ms[i].OOB = make([]byte, 128)
	}
	var got [][]byte
	node.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < 3 {
		n, err := sc.ReadBatch(ms, 0)
		if err != nil {
			t.Fatalf("after %d QUIC datagrams: %v", len(got), err)
		}
		for _, m := range ms[:n] {
			got = append(got, bytes.Clone(m.Buffers[0][:m.N]))
			if m.Addr.(*net.UDPAddr).AddrPort() != addr(peer) {
				t.Errorf("QUIC datagram from %s, want %s", m.Addr, addr(peer))
			}
		}
	}
	for i, b := range got {
		if !bytes.Equal(b, quic(byte(i+1))) {
			t.Errorf("QUIC datagram %d: got % x..., want % x...", i, b[:4], quic(byte(i + 1))[:4])
		}
	}
	if len(toServer) != 2 || !bytes.Equal(toServer[0], stun) || !bytes.Equal(toServer[1], xmsg(wire.MethodRegister)) {
		t.Errorf("rendezvous client got %d datagrams, want the server's STUN and X", len(toServer))
	}
	if len(punches) != 1 || punches[0] != addr(peer) {
		t.Errorf("puncher got %v, want one PUNCH from %s", punches, addr(peer))
	}
	if c, d := sc.control.Load(), sc.dropped.Load(); c != 5 || d != 2 {
		t.Errorf("control = %d, dropped = %d; want 5 and 2", c, d)
	}
}
