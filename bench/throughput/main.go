// Command throughput measures how fast bytes move through ewf on loopback,
// side by side with the libraries ewf is built on, in one process and one
// run so that the figures share the machine's state:
//
//	quic-go   quic-go alone on a plain *net.UDPConn, one stream
//	ewf-quic  ewf.Listen/ewf.Dial over QUIC, through a real ewfd (in process)
//	tls       crypto/tls (TLS 1.3) on a plain loopback TCP connection
//	ewf-tcp   ewf over TLS/TCP simultaneous open, through the same ewfd
//
// Each run sends --size bytes one way and waits until the receiver has
// read them all; the time counts from the first Write to the last Read.
// connect_ms is the time from the start of the dial (ewf: ewf.Dial
// including registration, binding, introduction and punching, so the
// whole connect-to-first-byte path) to the first byte read by the peer.
// cpu_s_per_gib is the process's CPU time during the transfer (user and
// system, both ends of the connection, not the connect) per GiB sent:
// what each transport costs, less disturbed by other processes than the
// rate (the in-process ewfd is idle meanwhile).
// --cpuprofile writes a pprof CPU profile of the whole run.
//
// Output: one line per run, "throughput mode=… bytes=… seconds=… gbit_s=…
// connect_ms=… cpu_s_per_gib=…", for bench/throughput.sh.
package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/server"
)

func main() {
	size := flag.Int64("size", 512<<20, "bytes per transfer")
	modes := flag.String("modes", "quic-go,ewf-quic,tls,ewf-tcp", "comma-separated `modes` to run, in this order")
	rounds := flag.Int("rounds", 1, "run every mode this many times, alternating")
	chunk := flag.Int("chunk", 64<<10, "bytes per Write call")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the run to `FILE`")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	b := &bench{size: *size, chunk: *chunk}
	if strings.Contains(*modes, "ewf") {
		dir, err := os.MkdirTemp("", "ewf-throughput")
		if err != nil {
			fatal(err)
		}
		defer os.RemoveAll(dir)
		d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: dir})
		if err != nil {
			fatal(err)
		}
		defer d.Close()
		b.server, b.dir = d.Addrs()[0].String(), dir
	}
	for r := 0; r < *rounds; r++ {
		for _, m := range strings.Split(*modes, ",") {
			res, err := b.run(m)
			if err != nil {
				fatal(fmt.Errorf("%s: %w", m, err))
			}
			cpu := res.cpu.Seconds()
			fmt.Printf("throughput mode=%s bytes=%d seconds=%.3f gbit_s=%.2f connect_ms=%.2f cpu_s_per_gib=%.3f\n",
				m, b.size, res.xfer.Seconds(), float64(b.size)*8/res.xfer.Seconds()/1e9,
				float64(res.connect.Microseconds())/1000, cpu/(float64(b.size)/(1<<30)))
		}
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "throughput:", err)
	os.Exit(1)
}

type bench struct {
	size   int64
	chunk  int
	server string
	dir    string
}

type result struct{ connect, xfer, cpu time.Duration }

// pair is one connection seen from both ends.
type pair struct {
	send    io.WriteCloser // CloseWrite-like: Close ends the sender's direction
	recv    io.Reader
	started time.Time // when the dial began
	cleanup func()
}

func (b *bench) run(mode string) (result, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var p pair
	var err error
	switch mode {
	case "quic-go":
		p, err = quicPair(ctx)
	case "tls":
		p, err = tlsPair()
	case "ewf-quic":
		p, err = b.ewfPair(ctx, ewf.TransportUDP)
	case "ewf-tcp":
		p, err = b.ewfPair(ctx, ewf.TransportTCP)
	default:
		return result{}, fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		return result{}, err
	}
	defer p.cleanup()
	return b.transfer(p)
}

// transfer writes b.size bytes; the first byte's arrival ends the connect
// time, the last one's the transfer time.
func (b *bench) transfer(p pair) (result, error) {
	errc := make(chan error, 1)
	var start time.Time
	cpu0 := cpuTime()
	go func() {
		buf := make([]byte, b.chunk)
		rand.Read(buf)
		start = time.Now()
		for left := b.size; left > 0; {
			n := int64(len(buf))
			if n > left {
				n = left
			}
			if _, err := p.send.Write(buf[:n]); err != nil {
				errc <- err
				return
			}
			left -= n
		}
		errc <- p.send.Close()
	}()
	buf := make([]byte, 256<<10)
	var got int64
	var res result
	for {
		n, err := p.recv.Read(buf)
		if got == 0 && n > 0 {
			res.connect = time.Since(p.started)
		}
		got += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return res, err
		}
	}
	res.xfer = time.Since(start)
	res.cpu = cpuTime() - cpu0
	if err := <-errc; err != nil {
		return res, err
	}
	if got != b.size {
		return res, fmt.Errorf("received %d bytes, sent %d", got, b.size)
	}
	return res, nil
}

func (b *bench) ewfPair(ctx context.Context, tr ewf.Transport) (pair, error) {
	// The same identities every round: the server limits REGISTERs per
	// source address (20 an hour), and a host that has run ewf before
	// does not register again either.
	cfg := func(name string) ewf.Config {
		return ewf.Config{Server: b.server, Transport: tr,
			IdentityFile: filepath.Join(b.dir, fmt.Sprintf("%s-%s.json", name, tr))}
	}
	l, err := ewf.Listen(ctx, cfg("listener"))
	if err != nil {
		return pair{}, err
	}
	started := time.Now()
	accepted := make(chan *ewf.Conn, 1)
	go func() {
		c, err := l.AcceptContext(ctx)
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	dc, err := ewf.Dial(ctx, cfg("dialer"), l.ID())
	if err != nil {
		l.Close()
		return pair{}, err
	}
	ac, ok := <-accepted
	if !ok {
		dc.Close()
		l.Close()
		return pair{}, errors.New("accept failed")
	}
	return pair{
		send:    closeWriter{dc},
		recv:    ac,
		started: started,
		cleanup: func() { dc.Close(); ac.Close(); l.Close() },
	}, nil
}

type closeWriter struct{ c *ewf.Conn }

func (w closeWriter) Write(p []byte) (int, error) { return w.c.Write(p) }
func (w closeWriter) Close() error                { return w.c.CloseWrite() }

func quicPair(ctx context.Context) (pair, error) {
	conf := serverTLS()
	qconf := &quic.Config{MaxIdleTimeout: 30 * time.Second}
	ln, err := quic.ListenAddr("127.0.0.1:0", conf, qconf)
	if err != nil {
		return pair{}, err
	}
	started := time.Now()
	type acc struct {
		c  *quic.Conn
		st *quic.Stream
	}
	accepted := make(chan acc, 1)
	go func() {
		c, err := ln.Accept(ctx)
		if err != nil {
			close(accepted)
			return
		}
		st, err := c.AcceptStream(ctx)
		if err != nil {
			close(accepted)
			return
		}
		accepted <- acc{c, st}
	}()
	dc, err := quic.DialAddr(ctx, ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"bench"}}, qconf)
	if err != nil {
		ln.Close()
		return pair{}, err
	}
	st, err := dc.OpenStreamSync(ctx)
	if err != nil {
		return pair{}, err
	}
	// The acceptor learns of the stream once data arrives on it; the
	// transfer's first bytes do that.
	var a acc
	recv := &lazyReader{get: func() (io.Reader, error) {
		var ok bool
		a, ok = <-accepted
		if !ok {
			return nil, errors.New("accept failed")
		}
		return a.st, nil
	}}
	return pair{
		send:    st,
		recv:    recv,
		started: started,
		cleanup: func() {
			dc.CloseWithError(0, "")
			if a.c != nil {
				a.c.CloseWithError(0, "")
			}
			ln.Close()
		},
	}, nil
}

type lazyReader struct {
	r   io.Reader
	get func() (io.Reader, error)
}

func (l *lazyReader) Read(p []byte) (int, error) {
	if l.r == nil {
		r, err := l.get()
		if err != nil {
			return 0, err
		}
		l.r = r
	}
	return l.r.Read(p)
}

func tlsPair() (pair, error) {
	ln, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS())
	if err != nil {
		return pair{}, err
	}
	started := time.Now()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			err = c.(*tls.Conn).Handshake()
		}
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	dc, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13})
	if err != nil {
		ln.Close()
		return pair{}, err
	}
	ac, ok := <-accepted
	if !ok {
		return pair{}, errors.New("accept failed")
	}
	return pair{
		send:    tlsCloseWriter{dc},
		recv:    ac,
		started: started,
		cleanup: func() { dc.Close(); ac.Close(); ln.Close() },
	}, nil
}

type tlsCloseWriter struct{ c *tls.Conn }

func (w tlsCloseWriter) Write(p []byte) (int, error) { return w.c.Write(p) }
func (w tlsCloseWriter) Close() error                { return w.c.CloseWrite() }

// serverTLS is a throwaway self-signed Ed25519 certificate, as ewf's own
// certificates are.
func serverTLS() *tls.Config {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "bench"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		fatal(err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		NextProtos:   []string{"bench"},
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
	}
}
