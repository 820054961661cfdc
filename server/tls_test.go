package server_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf/internal/testcert"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

// startTLSDaemon runs a daemon that also serves X over TLS on 127.0.0.1
// with a self-signed certificate, and returns the client configuration
// that pins it.
func startTLSDaemon(t *testing.T) (*server.Daemon, *tls.Config) {
	t.Helper()
	f := testcert.Write(t, t.TempDir(), "127.0.0.1")
	d := startDaemon(t, server.Config{TLSCertFile: f.Cert, TLSKeyFile: f.Key, TLSListen: []string{"127.0.0.1:0"}})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(f.PEM)
	return d, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
}

// dialTLSThrough connects over TLS to addr and wraps the connection as a
// test client.
func dialTLSThrough(t *testing.T, addr netip.AddrPort, conf *tls.Config) *client {
	t.Helper()
	c, err := tls.Dial("tcp", addr.String(), conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, tr: wire.TransportTCP, tcp: c, fr: wire.NewFramer(c),
		local: c.LocalAddr().(*net.TCPAddr).AddrPort()}
}

func TestXAndSTUNOverTLS(t *testing.T) {
	d, conf := startTLSDaemon(t)
	addrs := d.TLSAddrs()
	if len(addrs) != 1 {
		t.Fatalf("TLSAddrs %v", addrs)
	}
	c := dialTLSThrough(t, addrs[0], conf)
	id, key := c.register()
	// STUN: the address seen is the TLS connection's.
	c.send(stunRequest(true))
	if b := c.recv(); wire.Classify(b) != wire.KindSTUN {
		t.Fatalf("STUN over TLS answered with % x", b)
	}
	// BIND over TLS binds a TCP address, in either form.
	c.bind(id, key)
	_, b := bindSigned(id, key, wire.TransportTCP, c.local, time.Now())
	r, raw := c.sendRaw(b)
	wantSuccess(t, r, wire.MethodBind)
	wantSigned(t, raw, key)
	q := dialUDP(t, addrFor(t, d, "127.0.0.1"))
	r = q.roundTrip(queryReq(id))
	wantSuccess(t, r, wire.MethodQuery)
	if a, ok := r.Address(wire.TransportTCP); !ok || a != c.local {
		t.Fatalf("bound TCP address %v, want the TLS connection's %v", a, c.local)
	}

	// A client that trusts only the public roots refuses the self-signed
	// certificate: pinning is what makes it acceptable.
	if _, err := tls.Dial("tcp", addrs[0].String(), &tls.Config{ServerName: "127.0.0.1"}); err == nil {
		t.Fatal("handshake succeeded without the pinned certificate")
	}
}

// tap is a TCP proxy that records every byte it forwards, both ways: what
// an eavesdropper on the path sees.
type tap struct {
	ln  net.Listener
	mu  sync.Mutex
	buf bytes.Buffer
	wg  sync.WaitGroup
}

func startTap(t *testing.T, to netip.AddrPort) *tap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tap{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", to.String())
			if err != nil {
				c.Close()
				continue
			}
			p.wg.Add(2)
			copyRec := func(dst, src net.Conn) {
				defer p.wg.Done()
				b := make([]byte, 4096)
				for {
					n, err := src.Read(b)
					if n > 0 {
						p.mu.Lock()
						p.buf.Write(b[:n])
						p.mu.Unlock()
						dst.Write(b[:n])
					}
					if err != nil {
						dst.Close()
						src.Close()
						return
					}
				}
			}
			go copyRec(s, c)
			go copyRec(c, s)
		}
	}()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *tap) addr() netip.AddrPort { return p.ln.Addr().(*net.TCPAddr).AddrPort() }

func (p *tap) saw(b []byte) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return bytes.Contains(p.buf.Bytes(), b)
}

// TestRegisterOverTLSKeepsTheKeyOffTheWire: the KEY a REGISTER answer
// carries is seen by an eavesdropper on plain TCP, and not on TLS.
func TestRegisterOverTLSKeepsTheKeyOffTheWire(t *testing.T) {
	d, conf := startTLSDaemon(t)

	// Control: over plain TCP the tap does see the KEY (so the tap works).
	plain := startTap(t, addrFor(t, d, "127.0.0.1"))
	pc, err := net.Dial("tcp", plain.addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c := &client{t: t, tr: wire.TransportTCP, tcp: pc, fr: wire.NewFramer(pc)}
	_, key := c.register()
	pc.Close()
	if !waitSaw(plain, key[:]) {
		t.Fatal("the tap did not see the KEY on plain TCP: the check below would prove nothing")
	}

	sealed := startTap(t, d.TLSAddrs()[0])
	tc := dialTLSThrough(t, sealed.addr(), conf)
	id, key := tc.register()
	// A BIND in the KEY form, even, stays private inside TLS. (The tap's
	// address is what the server sees, so it is refused; what matters is
	// that the KEY went out.)
	r := tc.roundTrip(bindReq(id, key, wire.TransportTCP, tc.local))
	wantError(t, r, wire.MethodBind, wire.ReasonAddressMismatch)
	tc.tcp.Close()
	time.Sleep(50 * time.Millisecond) // let the tap drain
	if sealed.saw(key[:]) {
		t.Fatal("the KEY crossed the TLS connection in clear")
	}
	if sealed.saw(id[:]) {
		t.Fatal("the ID crossed the TLS connection in clear")
	}
}

func waitSaw(p *tap, b []byte) bool {
	for range 100 {
		if p.saw(b) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// TestTLSNeedsBothFiles: a certificate without its key (or the reverse) is
// a configuration error, not a server without TLS.
func TestTLSNeedsBothFiles(t *testing.T) {
	f := testcert.Write(t, t.TempDir(), "127.0.0.1")
	for _, cfg := range []server.Config{
		{TLSCertFile: f.Cert},
		{TLSKeyFile: f.Key},
		{TLSCertFile: f.Key, TLSKeyFile: f.Cert}, // swapped
	} {
		cfg.DataDir = t.TempDir()
		cfg.Listen = []string{"127.0.0.1:0"}
		cfg.TLSListen = []string{"127.0.0.1:0"}
		if d, err := server.Start(cfg); err == nil {
			d.Close()
			t.Errorf("Start with cert %q key %q succeeded", cfg.TLSCertFile, cfg.TLSKeyFile)
		}
	}
}
