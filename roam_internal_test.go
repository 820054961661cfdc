package ewf

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ewf-project/ewf/wire"
)

// TestMovedPeerTranslation: a real quic-go client on a node's sockConn
// talks to a real QUIC server through a UDP forwarder (the server's "old
// address"). The forwarder dies, as a listener's old NAT mapping does when
// it moves; once the node points the connection at the server's real
// address (what a successful punch after the move does), the same
// connection and stream carry on: quic-go's sends go through
// sockConn.WriteMsgUDP, and the client takes the answers from the new
// address. Conn.RemoteAddr tells the new address, the map entry goes with
// the connection, and X messages to a mapped address are not translated.
func TestMovedPeerTranslation(t *testing.T) {
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	addr := func(c *net.UDPConn) netip.AddrPort { return c.LocalAddr().(*net.UDPAddr).AddrPort() }
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// The server: echoes one stream.
	srvSock := listen()
	srvTr := &quic.Transport{Conn: srvSock}
	defer srvTr.Close()
	ln, err := srvTr.Listen(&tls.Config{Certificates: []tls.Certificate{testCert(t)}, NextProtos: []string{"t"}, MinVersion: tls.VersionTLS13},
		&quic.Config{MaxIdleTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		qc, err := ln.Accept(ctx)
		if err != nil {
			return
		}
		st, err := qc.AcceptStream(ctx)
		if err != nil {
			return
		}
		io.Copy(st, st)
		st.Close()
	}()

	// The old address: forwards client → server and server → client.
	old, nodeSock := listen(), listen()
	go func() {
		buf := make([]byte, 2048)
		for {
			k, from, err := old.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if from == addr(srvSock) {
				old.WriteToUDPAddrPort(buf[:k], addr(nodeSock))
			} else {
				old.WriteToUDPAddrPort(buf[:k], addr(srvSock))
			}
		}
	}()

	sc := newSockConn(nodeSock, nil)
	sc.toServer = func([]byte) {}
	sc.toPunch = func(*wire.Message, netip.AddrPort) {}
	tr := &quic.Transport{Conn: sc}
	defer tr.Close()
	qc, err := tr.Dial(ctx, net.UDPAddrFromAddrPort(addr(old)), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"t"}, MinVersion: tls.VersionTLS13},
		&quic.Config{MaxIdleTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer qc.CloseWithError(0, "")
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip := func(msg string) {
		t.Helper()
		st.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := st.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(st, b); err != nil || string(b) != msg {
			t.Fatalf("echo of %q: %q, %v", msg, b, err)
		}
	}
	roundTrip("through the old address")

	// The node's view: the connection is tracked, and the punch after
	// the peer's move found the server's real address.
	n := &Node{sc: sc, sock: nodeSock, log: slog.New(slog.DiscardHandler)}
	peer := wire.ID{9}
	c := &Conn{peer: peer, transport: TransportUDP, qc: qc, st: st}
	n.track(c, wire.Secret{1}, true)
	old.Close() // the old mapping is gone
	if !n.pointAt(peer, addr(srvSock)) {
		t.Fatal("pointAt changed nothing")
	}
	roundTrip("after the move")
	if got := qc.RemoteAddr().(*net.UDPAddr).AddrPort(); got != addr(old) {
		t.Errorf("quic-go's remote address is %s, want the fixed %s", got, addr(old))
	}
	if got := c.RemoteAddr().(*net.UDPAddr).AddrPort(); got != addr(srvSock) {
		t.Errorf("Conn.RemoteAddr is %s, want the peer's new %s", got, addr(srvSock))
	}
	if n.pointAt(peer, addr(srvSock)) {
		t.Error("pointAt to the same path again reported a change")
	}

	// The map entry lives as long as its connection.
	qc.CloseWithError(0, "")
	deadline := time.Now().Add(5 * time.Second)
	for sc.moved.Load() != nil {
		if time.Now().After(deadline) {
			t.Fatal("the map entry outlived its connection")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// A PUNCH-shaped X message to the old address goes there, not to the
	// new one: a punch may try the old address again.
	probe := listen()
	tab2 := movedTable{addr(probe): net.UDPAddrFromAddrPort(addr(srvSock))}
	sc.moved.Store(&tab2)
	var m wire.Message
	m.Type = wire.Type{Method: wire.MethodPunch, Class: wire.ClassRequest}
	m.SetSourceID(wire.ID{7})
	x := m.AppendTo(nil)
	if _, _, err := sc.WriteMsgUDP(x, nil, net.UDPAddrFromAddrPort(addr(probe))); err != nil {
		t.Fatal(err)
	}
	probe.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 2048)
	k, _, err := probe.ReadFromUDPAddrPort(b)
	if err != nil || !bytes.Equal(b[:k], x) {
		t.Fatalf("X message to the mapped address: %d bytes, %v", k, err)
	}
}

// TestWriteMsgUDPNoTranslationAllocs: the translation lookup adds no
// allocation to the send path (net.UDPConn.WriteMsgUDP's own are the
// baseline), with no table and with a table that does not match.
func TestWriteMsgUDPNoTranslationAllocs(t *testing.T) {
	a, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sc := newSockConn(a, nil)
	to := b.LocalAddr().(*net.UDPAddr)
	pkt := bytes.Repeat([]byte{0x40}, 100)
	other := movedTable{netip.MustParseAddrPort("127.0.0.1:9"): to}
	base := testing.AllocsPerRun(100, func() { a.WriteMsgUDP(pkt, nil, to) })
	for _, tab := range []*movedTable{nil, &other} {
		sc.moved.Store(tab)
		if n := testing.AllocsPerRun(100, func() { sc.WriteMsgUDP(pkt, nil, to) }); n != base {
			t.Errorf("table %v: %v allocs per send, the socket's own %v", tab != nil, n, base)
		}
	}
}
