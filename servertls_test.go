package ewf_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/internal/testcert"
	"github.com/ewf-project/ewf/server"
)

// recordingProxy forwards TCP connections to target and keeps every byte
// that passes, both ways: what an eavesdropper on the path would see.
type recordingProxy struct {
	ln  net.Listener
	mu  sync.Mutex
	buf bytes.Buffer
	wg  sync.WaitGroup
}

func startRecordingProxy(t *testing.T, target string) *recordingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &recordingProxy{ln: ln}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(io.MultiWriter(dst, p), src)
				dst.Close()
				src.Close()
			}
			p.wg.Go(func() { pipe(s, c) })
			p.wg.Go(func() { pipe(c, s) })
		}
	})
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *recordingProxy) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.buf.Write(b)
}

func (p *recordingProxy) seen() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Clone(p.buf.Bytes())
}

// TestRegisterOverTLSEndToEnd: a node configured with the server's TLS
// address and its pinned certificate registers over TLS, through a proxy
// that records the traffic: the KEY it got is not in what the proxy saw.
// The server requires the integrity form, so the node's BINDs and the
// introduction below prove the KEY without sending it, and a peer connects.
func TestRegisterOverTLSEndToEnd(t *testing.T) {
	f := testcert.Write(t, t.TempDir(), "127.0.0.1")
	d, err := server.Start(server.Config{
		Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir(),
		TLSCertFile: f.Cert, TLSKeyFile: f.Key, TLSListen: []string{"127.0.0.1:0"},
		RequireIntegrity: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	srv := d.Addrs()[0].String()
	proxy := startRecordingProxy(t, d.TLSAddrs()[0].String())

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := config(t, srv, "listener")
	cfg.ServerTLS = proxy.ln.Addr().String()
	cfg.ServerCA = f.Cert
	l, err := ewf.Listen(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	ident, err := client.LoadIdentity(cfg.IdentityFile)
	if err != nil {
		t.Fatal(err)
	}
	key := ident.Keys[srv]
	seen := proxy.seen()
	if len(seen) < 100 {
		t.Fatalf("the proxy saw %d bytes: REGISTER did not go over TLS", len(seen))
	}
	if bytes.Contains(seen, key[:]) {
		t.Fatal("the KEY crossed the TLS connection in clear")
	}

	dc := config(t, srv, "dialer")
	dc.ServerTLS, dc.ServerCA = d.TLSAddrs()[0].String(), f.Cert
	conn, err := ewf.Dial(ctx, dc, l.ID())
	if err != nil {
		t.Fatalf("Dial under --require-integrity: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	ac, err := l.AcceptContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ac.Close() })
	if conn.Peer() != l.ID() {
		t.Fatalf("dialer's peer %v, want %v", conn.Peer(), l.ID())
	}
	// A byte each way, closed in order, as an application would.
	for _, c := range []*ewf.Conn{conn, ac} {
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
	}
	if got := readAll(t, ac); !bytes.Equal(got, []byte{1}) {
		t.Fatalf("acceptor read %v", got)
	}
	if got := readAll(t, conn); !bytes.Equal(got, []byte{1}) {
		t.Fatalf("dialer read %v", got)
	}
}

// TestServerTLSIsNotSilentlySkipped: with ServerTLS set and a certificate
// the client cannot verify (not pinned, not from a public CA), Open fails
// instead of registering in clear.
func TestServerTLSIsNotSilentlySkipped(t *testing.T) {
	f := testcert.Write(t, t.TempDir(), "127.0.0.1")
	d, err := server.Start(server.Config{
		Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir(),
		TLSCertFile: f.Cert, TLSKeyFile: f.Key, TLSListen: []string{"127.0.0.1:0"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := config(t, d.Addrs()[0].String(), "n")
	cfg.ServerTLS = d.TLSAddrs()[0].String()
	n, err := ewf.Open(ctx, cfg)
	if err == nil {
		n.Close()
		t.Fatal("Open registered although the server's certificate could not be verified")
	}
	if regs := d.Server().Registry(); regs == nil {
		t.Fatal("no registry")
	}
}
