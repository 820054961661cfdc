package relayclient_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/relayclient"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/server/relay"
	"github.com/ewf-project/ewf/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The peers of these tests are on 127.0.0.2, which each relay allows for
// the test only.
var peerIP = netip.MustParseAddr("127.0.0.2")

// startEwfd runs ewfd with its embedded relay on loopback.
func startEwfd(t testing.TB) netip.AddrPort {
	t.Helper()
	d, err := server.Start(server.Config{
		Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir(), UDPReaders: 1,
		Relay: server.RelayConfig{Embedded: &relay.Config{
			Listen:   "127.0.0.1:0",
			RelayIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
			PortMin:  24000, PortMax: 24999,
			Policy:         relay.Policy{Allow: []netip.Prefix{netip.PrefixFrom(peerIP, 32)}},
			BandwidthPerID: 1e9, BandwidthPerIP: 1e9, // the benchmark measures the relay, not the quota
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d.Addrs()[0]
}

// credentials registers a fresh ID at srv and asks for relay credentials
// with RELAY, as a node does.
func credentials(t testing.TB, srv netip.AddrPort) client.RelayCredentials {
	t.Helper()
	c, err := client.DialUDPFrom(context.Background(), srv.String(), netip.MustParseAddrPort("127.0.0.1:0"), client.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var id wire.ID
	rand.Read(id[:])
	key, err := c.Register(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := c.Relay(context.Background(), id, key)
	if err != nil {
		t.Fatalf("RELAY: %v", err)
	}
	return rc
}

// coturn is a real coturn with use-auth-secret, started by the test.
type coturn struct {
	port   int
	secret string
}

// startCoturn runs turnserver on 127.0.0.1 with the TURN REST secret. It
// skips when coturn is missing, except under CI, which installs it.
func startCoturn(t testing.TB, secret string) *coturn {
	t.Helper()
	bin, err := exec.LookPath("turnserver")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("coturn (turnserver) is not installed; .ci/run installs it")
		}
		t.Skip("coturn (turnserver) not installed")
	}
	dir := t.TempDir()
	port := freePort(t)
	cmd := exec.Command(bin, "-n",
		"--listening-ip", "127.0.0.1", "--listening-port", strconv.Itoa(port),
		"--relay-ip", "127.0.0.1", "--min-port", "25000", "--max-port", "25999",
		"--use-auth-secret", "--static-auth-secret", secret, "--realm", "ewf",
		"--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay",
		"--userdb", filepath.Join(dir, "turndb"), "--pidfile", filepath.Join(dir, "pid"),
		"--log-file", filepath.Join(dir, "turn.log"), "--simple-log", "--no-stdout-log")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "turn.log"))
			t.Fatalf("coturn not listening after 10 s:\n%s", log)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return &coturn{port: port, secret: secret}
}

func freePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p)); err == nil {
			u.Close()
			return p
		}
	}
	t.Fatal("no free port")
	return 0
}

// relays are the two relays every test runs against: ewfd's embedded one,
// and coturn given ewfd's credentials (ewfd configured with coturn's URL
// and secret, as docs/OPERATIONS.md describes).
func relays(t testing.TB) map[string]client.RelayCredentials {
	t.Helper()
	out := map[string]client.RelayCredentials{"ewfd": credentials(t, startEwfd(t))}
	if _, err := exec.LookPath("turnserver"); err == nil || os.Getenv("CI") != "" {
		ct := startCoturn(t, "coturn and ewfd share this")
		hp := fmt.Sprintf("127.0.0.1:%d", ct.port)
		d, err := server.Start(server.Config{
			Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir(), UDPReaders: 1,
			Relay: server.RelayConfig{
				URLs:   []string{"turn:" + hp + "?transport=udp", "turn:" + hp + "?transport=tcp"},
				Secret: []byte(ct.secret),
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		out["coturn"] = credentials(t, d.Addrs()[0])
	}
	return out
}

func onlyTransport(rc client.RelayCredentials, tr string) relayclient.Config {
	cfg := relayclient.Config{Username: rc.Username, Password: rc.Password}
	for _, u := range rc.URLs {
		if s, err := relayclient.ParseURL(u); err == nil && s.Transport == tr {
			cfg.URLs = append(cfg.URLs, u)
		}
	}
	return cfg
}

// TestQUICEndToEndThroughRelay: QUIC from a relayed address to a peer,
// 256 KiB each way checked by SHA-256, through ewfd's relay and through
// coturn, with the client reaching the relay over UDP and over TCP. The
// peer sees the relayed address, never the client's own.
func TestQUICEndToEndThroughRelay(t *testing.T) {
	for name, rc := range relays(t) {
		for _, tr := range []string{"udp", "tcp"} {
			t.Run(name+"/"+tr, func(t *testing.T) {
				a, err := relayclient.Allocate(t.Context(), onlyTransport(rc, tr))
				if err != nil {
					t.Fatalf("Allocate: %v", err)
				}
				defer a.Close()
				if a.Transport() != tr {
					t.Fatalf("allocated over %s", a.Transport())
				}
				res := transfer(t, a, 256<<10)
				if res.peerSaw != a.Relayed() {
					t.Fatalf("peer saw %v, want the relayed address %v", res.peerSaw, a.Relayed())
				}
			})
		}
	}
}

// TestFallsBackToTCPWhenUDPGoesUnanswered: a UDP URL whose server never
// answers (as on a network that drops UDP) costs UDPTimeout, then the TCP
// URL gives the allocation.
func TestFallsBackToTCPWhenUDPGoesUnanswered(t *testing.T) {
	rc := credentials(t, startEwfd(t))
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	cfg := onlyTransport(rc, "tcp")
	cfg.URLs = append([]string{"turn:" + silent.LocalAddr().String() + "?transport=udp"}, cfg.URLs...)
	cfg.UDPTimeout = 300 * time.Millisecond
	start := time.Now()
	a, err := relayclient.Allocate(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if a.Transport() != "tcp" || time.Since(start) < cfg.UDPTimeout {
		t.Fatalf("allocated over %s after %v", a.Transport(), time.Since(start))
	}
}

func TestAllocateErrors(t *testing.T) {
	rc := credentials(t, startEwfd(t))
	for name, cfg := range map[string]relayclient.Config{
		"no URL":         {Username: rc.Username, Password: rc.Password},
		"only turns:":    {URLs: []string{"turns:relay.example.org:5349"}, Username: rc.Username, Password: rc.Password},
		"wrong password": {URLs: rc.URLs, Username: rc.Username, Password: "x"},
	} {
		if a, err := relayclient.Allocate(t.Context(), cfg); err == nil {
			a.Close()
			t.Errorf("%s: allocation granted", name)
		}
	}
	if _, err := relayclient.Allocate(t.Context(), relayclient.Config{}); !errors.Is(err, relayclient.ErrNoURL) {
		t.Errorf("empty config: %v, want ErrNoURL", err)
	}
}

func TestParseURL(t *testing.T) {
	for _, c := range []struct {
		in   string
		want relayclient.Server
		ok   bool
	}{
		{"turn:192.0.2.1:3479?transport=udp", relayclient.Server{"192.0.2.1", 3479, "udp"}, true},
		{"turn:relay.example.org?transport=tcp", relayclient.Server{"relay.example.org", 3478, "tcp"}, true},
		{"turn:[2001:db8::1]:3480", relayclient.Server{"2001:db8::1", 3480, "udp"}, true},
		{"turn:[2001:db8::1]", relayclient.Server{"2001:db8::1", 3478, "udp"}, true},
		{"turns:relay.example.org", relayclient.Server{}, false},
		{"stun:relay.example.org", relayclient.Server{}, false},
		{"turn:relay.example.org:0", relayclient.Server{}, false},
		{"turn:relay.example.org:3478?transport=sctp", relayclient.Server{}, false},
		{"turn:", relayclient.Server{}, false},
	} {
		got, err := relayclient.ParseURL(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("ParseURL(%q) = %+v, %v", c.in, got, err)
		}
	}
}

type result struct {
	peerSaw netip.AddrPort
	elapsed time.Duration
	rtt     time.Duration
}

// transfer runs QUIC from the allocation's relayed socket to a QUIC peer
// on 127.0.0.2 and sends n bytes each way at once, checking both by
// SHA-256; it reports what the peer saw and how long the exchange took.
func transfer(t testing.TB, a *relayclient.Allocation, n int) result {
	t.Helper()
	if err := a.Permit(peerIP); err != nil {
		t.Fatalf("Permit: %v", err)
	}
	return transferOn(t, a.PacketConn(), n)
}

// transferOn is transfer from any socket (the benchmark's direct baseline).
func transferOn(t testing.TB, pconn net.PacketConn, n int) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ln, err := quic.ListenAddr(netip.AddrPortFrom(peerIP, 0).String(), serverTLS(t), &quic.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	payload := func(seed byte) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i*7) ^ seed
		}
		return b
	}
	up, down := payload(1), payload(2)
	type peerRes struct {
		saw netip.AddrPort
		sum [32]byte
		err error
	}
	pc := make(chan peerRes, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			pc <- peerRes{err: err}
			return
		}
		defer c.CloseWithError(0, "")
		saw := c.RemoteAddr().(*net.UDPAddr).AddrPort()
		st, err := c.AcceptStream(ctx)
		if err != nil {
			pc <- peerRes{err: err}
			return
		}
		go func() { st.Write(down); st.Close() }()
		h := sha256.New()
		_, err = io.Copy(h, st)
		var sum [32]byte
		h.Sum(sum[:0])
		pc <- peerRes{saw: netip.AddrPortFrom(saw.Addr().Unmap(), saw.Port()), sum: sum, err: err}
		<-ctx.Done() // keep the connection until the client has read everything
	}()
	tr := &quic.Transport{Conn: pconn}
	defer tr.Close()
	start := time.Now()
	conn, err := tr.Dial(ctx, ln.Addr(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"relay-test"}}, &quic.Config{})
	if err != nil {
		t.Fatalf("QUIC through the relay: %v", err)
	}
	defer conn.CloseWithError(0, "")
	rtt := time.Since(start)
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() { _, err := st.Write(up); st.Close(); werr <- err }()
	h := sha256.New()
	if _, err := io.Copy(h, st); err != nil {
		t.Fatalf("read from peer: %v", err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	elapsed := time.Since(start)
	var got [32]byte
	h.Sum(got[:0])
	if got != sha256.Sum256(down) {
		t.Fatal("peer → client bytes differ")
	}
	pr := <-pc
	if pr.err != nil {
		t.Fatalf("peer: %v", pr.err)
	}
	if pr.sum != sha256.Sum256(up) {
		t.Fatal("client → peer bytes differ")
	}
	cancel()
	return result{peerSaw: pr.saw, elapsed: elapsed, rtt: rtt}
}

func serverTLS(t testing.TB) *tls.Config {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: k}}, NextProtos: []string{"relay-test"}}
}
