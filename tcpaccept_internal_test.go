package ewf

import (
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"
)

// The acceptor against real loopback sockets: which race gets which
// connection, with the connection's bytes intact for the race's TLS.

func startAcceptor(t *testing.T) (*tcpAcceptor, netip.AddrPort) {
	t.Helper()
	a, err := listenTCP(netip.MustParseAddrPort("127.0.0.1:0"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.close)
	return a, a.ln.Addr().(*net.TCPAddr).AddrPort()
}

// freePort returns a loopback address no socket uses right now.
func freePort(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func dialFrom(t *testing.T, from, to netip.AddrPort) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if from.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(from)
	}
	c, err := d.Dial("tcp", to.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCert(t *testing.T) tls.Certificate {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(nil)
	cert, err := certificate(key)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// tlsPair runs a TLS client naming sni on c (in the background) and a TLS
// server on what the race got, and checks that they agree on sni and that
// bytes cross: the ClientHello the acceptor read reached the race whole.
func tlsPair(t *testing.T, c net.Conn, sni string, got net.Conn) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		_, err := tc.Write([]byte(sni))
		errc <- err
	}()
	ts := tls.Server(got, &tls.Config{Certificates: []tls.Certificate{testCert(t)}})
	ts.SetDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, len(sni))
	if _, err := io.ReadFull(ts, b); err != nil || string(b) != sni || ts.ConnectionState().ServerName != sni {
		t.Fatalf("race for %q: read %q, SNI %q, %v", sni, b, ts.ConnectionState().ServerName, err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func recvConn(t *testing.T, w *tcpWaiter) net.Conn {
	t.Helper()
	select {
	case c := <-w.ch:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no connection reached the race")
		return nil
	}
}

func noConn(t *testing.T, w *tcpWaiter) {
	t.Helper()
	select {
	case c := <-w.ch:
		c.Close()
		t.Fatalf("the race got a connection from %v that is not its own", c.RemoteAddr())
	default:
	}
}

// wantClosed checks that the acceptor closed c without handing it over.
func wantClosed(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %v: %v", within, err)
	}
}

// TestAcceptorBySNI: two races where this side is the TLS server, whose
// peers come from addresses neither signalled (same IP): each gets the
// connection whose ClientHello names its introduction, also when the
// connection came before the race started.
func TestAcceptorBySNI(t *testing.T) {
	a, addr := startAcceptor(t)
	peer := newTCPTargets(netip.MustParseAddrPort("127.0.0.1:9")) // the IP matches, the port never does
	wa := a.register(peer, "pa.ewf")
	wb := a.register(peer, "pb.ewf")
	cb := dialFrom(t, netip.AddrPort{}, addr)
	ca := dialFrom(t, netip.AddrPort{}, addr)
	gotB, gotA := make(chan net.Conn, 1), make(chan net.Conn, 1)
	go func() { gotB <- recvConnQuiet(wb) }()
	go func() { gotA <- recvConnQuiet(wa) }()
	// The acceptor needs the ClientHellos; start the clients, then check.
	errc := make(chan error, 2)
	for _, x := range []struct {
		c   net.Conn
		sni string
	}{{cb, "pb.ewf"}, {ca, "pa.ewf"}} {
		go func() {
			tc := tls.Client(x.c, &tls.Config{ServerName: x.sni, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
			_, err := tc.Write([]byte(x.sni))
			errc <- err
		}()
	}
	for _, x := range []struct {
		ch  chan net.Conn
		sni string
	}{{gotA, "pa.ewf"}, {gotB, "pb.ewf"}} {
		got := <-x.ch
		if got == nil {
			t.Fatalf("race %q got nothing", x.sni)
		}
		defer got.Close()
		ts := tls.Server(got, &tls.Config{Certificates: []tls.Certificate{testCert(t)}})
		ts.SetDeadline(time.Now().Add(10 * time.Second))
		b := make([]byte, len(x.sni))
		if _, err := io.ReadFull(ts, b); err != nil || string(b) != x.sni {
			t.Fatalf("race %q read %q, %v", x.sni, b, err)
		}
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}

	// Parked: the dialer's ClientHello before the race exists.
	c := dialFrom(t, netip.AddrPort{}, addr)
	go func() {
		tc := tls.Client(c, &tls.Config{ServerName: "pc.ewf", InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
		tc.Write([]byte("pc.ewf"))
	}()
	time.Sleep(100 * time.Millisecond)
	wc := a.register(peer, "pc.ewf")
	got := recvConn(t, wc)
	ts := tls.Server(got, &tls.Config{Certificates: []tls.Certificate{testCert(t)}})
	ts.SetDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 6)
	if _, err := io.ReadFull(ts, b); err != nil || string(b) != "pc.ewf" {
		t.Fatalf("parked race read %q, %v", b, err)
	}
	noConn(t, wa)
	noConn(t, wb)
}

func recvConnQuiet(w *tcpWaiter) net.Conn {
	select {
	case c := <-w.ch:
		return c
	case <-time.After(10 * time.Second):
		return nil
	}
}

// TestAcceptorByAddress: the exact source address picks the race, for
// either TLS role, whether the race registered before the connection came
// or after; a race where this side is the TLS client (its peer sends
// nothing first) also gets a connection from its peer's IP and an unknown
// port, when no race of the other role could claim it.
func TestAcceptorByAddress(t *testing.T) {
	a, addr := startAcceptor(t)
	p1, p2 := freePort(t), freePort(t)
	w1 := a.register(newTCPTargets(p1), "p1.ewf") // TLS server
	w2 := a.register(newTCPTargets(p2), "")       // TLS client
	c2 := dialFrom(t, p2, addr)
	c1 := dialFrom(t, p1, addr)
	g1, g2 := recvConn(t, w1), recvConn(t, w2)
	tlsPair(t, c1, "p1.ewf", g1)
	if g2.RemoteAddr().String() != c2.LocalAddr().String() {
		t.Fatalf("TLS client race got %v, want %v", g2.RemoteAddr(), c2.LocalAddr())
	}
	noConn(t, w1)
	noConn(t, w2)

	// The race starts after its peer connected.
	c3 := dialFrom(t, netip.AddrPort{}, addr)
	time.Sleep(50 * time.Millisecond)
	w3 := a.register(newTCPTargets(c3.LocalAddr().(*net.TCPAddr).AddrPort()), "")
	if g := recvConn(t, w3); g.RemoteAddr().String() != c3.LocalAddr().String() {
		t.Fatalf("late race got %v", g.RemoteAddr())
	}

	// By IP, for the TLS client: w2's peer from another port.
	a.unregister(w1)
	c4 := dialFrom(t, netip.AddrPort{}, addr)
	if g := recvConn(t, w2); g.RemoteAddr().String() != c4.LocalAddr().String() {
		t.Fatalf("TLS client race got %v by IP, want %v", g.RemoteAddr(), c4.LocalAddr())
	}
}

// TestAcceptorUnclaimedClosed: what no race claims is closed after
// parkTimeout, at once beyond maxParkedPerIP, and an unregistered race
// gets nothing more.
func TestAcceptorUnclaimedClosed(t *testing.T) {
	old := parkTimeout
	parkTimeout = 300 * time.Millisecond
	t.Cleanup(func() { parkTimeout = old }) // after the acceptor's close
	a, addr := startAcceptor(t)
	var idle []net.Conn
	for range maxParkedPerIP {
		idle = append(idle, dialFrom(t, netip.AddrPort{}, addr))
	}
	time.Sleep(50 * time.Millisecond) // all parked
	wantClosed(t, dialFrom(t, netip.AddrPort{}, addr), 200*time.Millisecond)
	for _, c := range idle {
		wantClosed(t, c, 5*time.Second)
	}

	p := freePort(t)
	w := a.register(newTCPTargets(p), "")
	a.unregister(w)
	wantClosed(t, dialFrom(t, p, addr), 5*time.Second)
	noConn(t, w)
}

// TestAcceptorCrossing: this side runs two races with the same peer
// address, one as TLS server and one as TLS client (the two peers dialled
// each other at once). A connection bringing a ClientHello goes to the TLS
// server race it names; one that brings nothing, once parkTimeout has
// passed, to the TLS client race.
func TestAcceptorCrossing(t *testing.T) {
	old := parkTimeout
	parkTimeout = 300 * time.Millisecond
	t.Cleanup(func() { parkTimeout = old }) // after the acceptor's close
	a, addr := startAcceptor(t)
	p := freePort(t)
	ws := a.register(newTCPTargets(p), "px.ewf")
	wc := a.register(newTCPTargets(p), "")
	c := dialFrom(t, p, addr)
	go tls.Client(c, &tls.Config{ServerName: "px.ewf", InsecureSkipVerify: true}).Handshake()
	g := recvConn(t, ws)
	ts := tls.Server(g, &tls.Config{Certificates: []tls.Certificate{testCert(t)}})
	ts.SetDeadline(time.Now().Add(10 * time.Second))
	if err := ts.Handshake(); err != nil || ts.ConnectionState().ServerName != "px.ewf" {
		t.Fatalf("TLS server race: SNI %q, %v", ts.ConnectionState().ServerName, err)
	}
	noConn(t, wc)

	// Silent, from another port both races now target.
	c2 := dialFrom(t, netip.AddrPort{}, addr)
	q := c2.LocalAddr().(*net.TCPAddr).AddrPort()
	ws.tg.add([]netip.AddrPort{q})
	wc.tg.add([]netip.AddrPort{q})
	g = recvConn(t, wc)
	if g.RemoteAddr().String() != c2.LocalAddr().String() {
		t.Fatalf("TLS client race got %v, want %v", g.RemoteAddr(), c2.LocalAddr())
	}
	noConn(t, ws)
}
