package ewf_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// startServer runs a real ewfd on loopback with its store in a temp dir.
func startServer(t *testing.T) string {
	t.Helper()
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d.Addrs()[0].String()
}

func config(t *testing.T, server, name string) ewf.Config {
	c := ewf.Config{Server: server, IdentityFile: filepath.Join(t.TempDir(), name+".json")}
	if os.Getenv("EWF_TEST_DEBUG") != "" {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", name)
	}
	return c
}

// TestTransferBothWays proves the whole path on loopback: register, bind,
// introduce, punch, encrypt, and 1 MiB each way at once, intact, over
// each transport.
func TestTransferBothWays(t *testing.T) {
	srv := startServer(t)
	for _, tr := range []ewf.Transport{ewf.TransportUDP, ewf.TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			l, dc, ac := connectPair(t, srv, tr)
			if dc.Transport() != tr || ac.Transport() != tr {
				t.Errorf("transports: dialer %s, acceptor %s, want %s", dc.Transport(), ac.Transport(), tr)
			}
			if dc.Peer() != l.ID() {
				t.Errorf("dialer's peer = %s, want %s", dc.Peer(), l.ID())
			}
			if ac.RemoteAddr().String() != dc.LocalAddr().String() && tr == ewf.TransportTCP {
				t.Errorf("acceptor sees %s, dialer is %s", ac.RemoteAddr(), dc.LocalAddr())
			}

			const size = 1 << 20
			a, b := randomBytes(t, size), randomBytes(t, size)
			errc := make(chan error, 2)
			send := func(c *ewf.Conn, p []byte) {
				_, err := c.Write(p)
				if err == nil {
					err = c.CloseWrite()
				}
				errc <- err
			}
			go send(dc, a)
			go send(ac, b)
			gotAtAcceptor := readAll(t, ac)
			gotAtDialer := readAll(t, dc)
			for range 2 {
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
			}
			if sha256.Sum256(gotAtAcceptor) != sha256.Sum256(a) || len(gotAtAcceptor) != size {
				t.Errorf("dialer → acceptor: %d bytes, checksum mismatch", len(gotAtAcceptor))
			}
			if sha256.Sum256(gotAtDialer) != sha256.Sum256(b) || len(gotAtDialer) != size {
				t.Errorf("acceptor → dialer: %d bytes, checksum mismatch", len(gotAtDialer))
			}
		})
	}
}

// TestDatagrams proves the unreliable datagram path over QUIC.
func TestDatagrams(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, dc, ac := connectPair(t, srv, ewf.TransportUDP)
	// Datagrams may be lost even on loopback; send until one arrives.
	got := make(chan []byte, 1)
	go func() {
		p, err := ac.ReceiveDatagram(ctx)
		if err == nil {
			got <- p
		}
	}()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := dc.SendDatagram([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-got:
			if string(p) != "ping" {
				t.Fatalf("datagram = %q", p)
			}
			return
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("no datagram arrived")
		}
	}
}

func TestDialUnknownPeer(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var nobody ewf.ID
	rand.Read(nobody[:])
	_, err := ewf.Dial(ctx, config(t, srv, "dialer"), nobody)
	if !errors.Is(err, ewf.ErrUnknownPeer) || !errors.Is(err, client.ErrNotRegistered) {
		t.Fatalf("err = %v, want ErrUnknownPeer wrapping client.ErrNotRegistered", err)
	}
}

// TestDialSilentPeer: a peer that is registered and bound but never
// punches back ends in ErrNoDirectPath after PunchTimeout, not a hang.
func TestDialSilentPeer(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	silent, err := client.DialUDP(ctx, srv, client.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var id wire.ID
	rand.Read(id[:])
	key, err := silent.Register(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := silent.PublicAddress(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := silent.Bind(ctx, id, key, wire.Address{Transport: wire.TransportUDP, AddrPort: pub}); err != nil {
		t.Fatal(err)
	}
	cfg := config(t, srv, "dialer")
	cfg.PunchTimeout = time.Second
	start := time.Now()
	_, err = ewf.Dial(ctx, cfg, id)
	if !errors.Is(err, ewf.ErrNoDirectPath) {
		t.Fatalf("err = %v, want ErrNoDirectPath", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v; PunchTimeout was 1 s", d)
	}
}

// TestServerUnreachable: no server at the address; Open fails with
// ErrServerUnreachable when the caller's deadline passes, not a hang.
func TestServerUnreachable(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = ewf.Open(ctx, config(t, addr, "x"))
	if !errors.Is(err, ewf.ErrServerUnreachable) {
		t.Fatalf("err = %v, want ErrServerUnreachable", err)
	}
}

// TestIdentityReused: a second Open with the same identity file has the
// same ID, and a corrupt file is an error, not a new identity.
func TestIdentityReused(t *testing.T) {
	srv := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := config(t, srv, "me")
	n1, err := ewf.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := n1.ID()
	n1.Close()
	n2, err := ewf.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n2.ID() != id {
		t.Errorf("second Open has ID %s, first had %s", n2.ID(), id)
	}
	n2.Close()

	if err := os.WriteFile(cfg.IdentityFile, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ewf.Open(ctx, cfg); !errors.Is(err, client.ErrCorruptIdentity) {
		t.Fatalf("Open with a corrupt identity file: err = %v, want ErrCorruptIdentity", err)
	}
	if b, _ := os.ReadFile(cfg.IdentityFile); string(b) != "{not json" {
		t.Errorf("the corrupt identity file was replaced")
	}
}

// connectPair makes a listener and dials it over tr; everything is closed
// when the test ends.
func connectPair(t *testing.T, srv string, tr ewf.Transport) (l *ewf.Listener, dialer, acceptor *ewf.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := ewf.Listen(ctx, config(t, srv, "listener"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	cfg := config(t, srv, "dialer")
	cfg.Transport = tr
	dialer, err = ewf.Dial(ctx, cfg, l.ID())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dialer.Close() })
	acceptor, err = l.AcceptContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { acceptor.Close() })
	return l, dialer, acceptor
}

func randomBytes(t *testing.T, n int) []byte {
	p := make([]byte, n)
	rand.Read(p)
	return p
}

func readAll(t *testing.T, c io.Reader) []byte {
	var b bytes.Buffer
	if _, err := io.Copy(&b, c); err != nil {
		t.Fatalf("read: %v", err)
	}
	return b.Bytes()
}

// TestServerRestart: ewfd restarts (bindings live in its memory only, and
// the TCP binding's connection is gone); a listener binds again, over UDP
// with its keepalive and over TCP on a new connection, and a peer can
// then reach it over TCP.
func TestServerRestart(t *testing.T) {
	dir := t.TempDir()
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addr := d.Addrs()[0].String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := config(t, addr, "listener")
	cfg.KeepaliveInterval = func() time.Duration { return 200 * time.Millisecond }
	l, err := ewf.Listen(ctx, cfg)
	if err != nil {
		d.Close()
		t.Fatal(err)
	}
	defer l.Close()
	before, _ := l.Node().PublicTCPAddr()

	d.Close()
	d, err = server.Start(server.Config{Listen: []string{addr}, DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for {
		if a, ok := l.Node().PublicTCPAddr(); ok && a != before {
			break // bound again, from a new local port
		}
		select {
		case <-ctx.Done():
			t.Fatal("the listener never bound TCP again after the server restarted")
		case <-time.After(50 * time.Millisecond):
		}
	}
	dcfg := config(t, addr, "dialer")
	dcfg.Transport = ewf.TransportTCP
	var c *ewf.Conn
	for { // the UDP binding comes back with the next keepalive
		c, err = ewf.Dial(ctx, dcfg, l.ID())
		if err == nil {
			break
		}
		if !errors.Is(err, ewf.ErrPeerOffline) || ctx.Err() != nil {
			t.Fatalf("dial after restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer c.Close()
	ac, err := l.AcceptContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	if ac.Transport() != ewf.TransportTCP || c.Peer() != l.ID() {
		t.Errorf("accepted over %s; dialer reached %s, want %s", ac.Transport(), c.Peer(), l.ID())
	}
}
