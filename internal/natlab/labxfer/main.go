//go:build linux

// Command labxfer is the library baseline of the NAT lab's throughput
// benchmark (internal/natlab, BenchmarkThroughput): it moves stdin from one
// lab host to another with quic-go alone on a plain UDP socket, or with
// crypto/tls on a plain TCP connection, so that each figure of `ewf` through
// the lab has beside it what the library it is built on does on the same
// path, in the same run.
//
// Both hosts are behind NATs that keep the inside port (the lab's
// port-restricted NAT is Linux conntrack), so each side binds a fixed port
// and is told the other's public address; there is no rendezvous server.
// The hole is punched the plainest way: both sides send a few datagrams
// (QUIC) or SYNs (TCP simultaneous open) to each other until one gets
// through, which is what ewf does too, without its authentication.
//
//	labxfer -mode quic|tls -role listen  -local :PORT -peer IP:PORT >FILE
//	labxfer -mode quic|tls -role connect -local :PORT -peer IP:PORT [-cc cubic] <FILE
//
// The connector prints "connected" once the handshake is done, sends stdin,
// ends its direction and waits until the listener has read to the end and
// ended its own (so the time to its exit includes what ewf's close
// includes: the last data acknowledged by the peer). The listener writes
// what it read to stdout and prints "done bytes=N". Errors are printed as
// "error msg=..." lines, as ewf does.
//
// The QUIC settings are those of ewf's connections (the root package's
// quicConfig): everything that shapes the data path (flow-control windows,
// congestion control, packet size and path MTU discovery) is quic-go's
// default in both.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sys/unix"
)

const alpn = "labxfer"

// tcpCC is -cc: a network namespace may only default to an algorithm of
// net.ipv4.tcp_allowed_congestion_control, but root may set any loaded one
// on a socket.
var tcpCC string

func main() {
	mode := flag.String("mode", "quic", "quic (quic-go on UDP) or tls (crypto/tls on TCP)")
	role := flag.String("role", "", "listen or connect")
	local := flag.String("local", "", "local address to bind, :PORT")
	peer := flag.String("peer", "", "the other side's public address, IP:PORT")
	timeout := flag.Duration("timeout", 3*time.Minute, "give up after this long")
	flag.StringVar(&tcpCC, "cc", "", "TCP congestion control of the socket (TCP_CONGESTION; default: the namespace's)")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	err := run(ctx, *mode, *role, *local, *peer)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error msg=%q\n", err.Error())
		os.Exit(1)
	}
}

func run(ctx context.Context, mode, role, local, peer string) error {
	laddr, err := net.ResolveUDPAddr("udp4", local)
	if err != nil {
		return err
	}
	raddr, err := net.ResolveUDPAddr("udp4", peer)
	if err != nil {
		return err
	}
	if role != "listen" && role != "connect" {
		return fmt.Errorf("-role must be listen or connect, not %q", role)
	}
	switch mode {
	case "quic":
		return runQUIC(ctx, role == "listen", laddr, raddr)
	case "tls":
		return runTLS(ctx, role == "listen", &net.TCPAddr{IP: laddr.IP, Port: laddr.Port}, &net.TCPAddr{IP: raddr.IP, Port: raddr.Port})
	}
	return fmt.Errorf("-mode must be quic or tls, not %q", mode)
}

// quicConfig is ewf's (streams.go, Node.quicConfig) with its default idle
// timeout.
func quicConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout: 5 * time.Second,
		MaxIdleTimeout:       30 * time.Second,
		KeepAlivePeriod:      7500 * time.Millisecond,
		EnableDatagrams:      true,
		MaxIncomingStreams:   1024,
	}
}

// punch is the payload of hole-punching datagrams. Its first byte is 0, so
// a quic.Transport sharing the socket sees a non-QUIC packet and drops it.
var punch = []byte{0, 'p', 'u', 'n', 'c', 'h'}

func runQUIC(ctx context.Context, listen bool, laddr, raddr *net.UDPAddr) error {
	uc, err := net.ListenUDP("udp4", laddr)
	if err != nil {
		return err
	}
	defer uc.Close()
	if !listen {
		// Punch until the listener's datagrams come through: then both
		// NATs have the mapping, and the Initial is not dropped.
		if err := punchUDP(ctx, uc, raddr); err != nil {
			return err
		}
	}
	tr := &quic.Transport{Conn: uc}
	defer tr.Close()
	if listen {
		ln, err := tr.Listen(serverTLS(), quicConfig())
		if err != nil {
			return err
		}
		defer ln.Close()
		stop := make(chan struct{})
		go func() { // keep the listener's NAT open to the connector until it is in
			t := time.NewTicker(20 * time.Millisecond)
			defer t.Stop()
			for {
				tr.WriteTo(punch, raddr)
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		}()
		qc, err := ln.Accept(ctx)
		close(stop)
		if err != nil {
			return err
		}
		st, err := qc.AcceptStream(ctx)
		if err != nil {
			return err
		}
		n, err := io.Copy(os.Stdout, st)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "done bytes=%d\n", n)
		st.Close() // our direction ends: the connector learns we read all
		select {   // the connector closes the connection once it has that
		case <-qc.Context().Done():
		case <-time.After(5 * time.Second):
		}
		return qc.CloseWithError(0, "")
	}
	qc, err := tr.Dial(ctx, raddr, clientTLS(), quicConfig())
	if err != nil {
		return err
	}
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "connected transport=udp rtt_ms=%d\n", qc.ConnectionStats().SmoothedRTT.Milliseconds())
	if _, err := io.Copy(st, os.Stdin); err != nil {
		return err
	}
	if err := st.Close(); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, st); err != nil { // until the listener's FIN
		return err
	}
	return qc.CloseWithError(0, "")
}

// punchUDP sends punch datagrams to raddr every 20 ms until one arrives
// from it.
func punchUDP(ctx context.Context, uc *net.UDPConn, raddr *net.UDPAddr) error {
	buf := make([]byte, 1500)
	for ctx.Err() == nil {
		if _, err := uc.WriteToUDP(punch, raddr); err != nil {
			return err
		}
		uc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		for {
			n, from, err := uc.ReadFromUDP(buf)
			if err != nil {
				break // deadline: punch again
			}
			if unmap(from.AddrPort()) == unmap(raddr.AddrPort()) && n == len(punch) {
				uc.SetReadDeadline(time.Time{})
				return nil
			}
		}
	}
	return ctx.Err()
}

func runTLS(ctx context.Context, listen bool, laddr, raddr *net.TCPAddr) error {
	c, err := simultaneousOpen(ctx, laddr, raddr)
	if err != nil {
		return err
	}
	defer c.Close()
	if listen {
		tc := tls.Server(c, serverTLS())
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		n, err := io.Copy(os.Stdout, tc)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "done bytes=%d\n", n)
		if err := tc.CloseWrite(); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.Copy(io.Discard, c) // until the connector closes
		return nil
	}
	tc := tls.Client(c, clientTLS())
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	cc, _ := tcpInfoCC(c)
	fmt.Fprintf(os.Stderr, "connected transport=tcp cc=%s\n", cc)
	if _, err := io.Copy(tc, os.Stdin); err != nil {
		return err
	}
	if err := tc.CloseWrite(); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, tc); err != nil { // until the listener's close_notify
		return err
	}
	return tc.Close()
}

// simultaneousOpen connects laddr to raddr by dialling from the same port
// as the peer dials back, until both SYNs have crossed the NATs.
func simultaneousOpen(ctx context.Context, laddr, raddr *net.TCPAddr) (net.Conn, error) {
	d := net.Dialer{
		LocalAddr: laddr,
		Timeout:   time.Second,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1),
					unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1))
				if tcpCC != "" && serr == nil {
					serr = unix.SetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION, tcpCC)
				}
			})
			return errors.Join(err, serr)
		},
	}
	for {
		c, err := d.DialContext(ctx, "tcp4", raddr.String())
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("tcp simultaneous open to %s: %w", raddr, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func clientTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13}
}

// serverTLS makes a throwaway self-signed certificate: the baseline
// measures the data path, and the connector does not check it.
func serverTLS() *tls.Config {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		NextProtos:   []string{alpn},
		MinVersion:   tls.VersionTLS13,
	}
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// tcpInfoCC is the congestion control the kernel uses on c.
func tcpInfoCC(c net.Conn) (string, error) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return "", errors.New("not TCP")
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return "", err
	}
	var cc string
	var serr error
	err = rc.Control(func(fd uintptr) {
		cc, serr = unix.GetsockoptString(int(fd), unix.IPPROTO_TCP, unix.TCP_CONGESTION)
	})
	return strings.TrimRight(cc, "\x00"), errors.Join(err, serr)
}
