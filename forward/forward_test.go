package forward

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// events records Events for assertions.
type events struct {
	mu    sync.Mutex
	lines []string
	ch    chan string
}

func newEvents() *events { return &events{ch: make(chan string, 100)} }

func (e *events) record(event string, kv ...string) {
	line := event
	for i := 0; i+1 < len(kv); i += 2 {
		line += " " + kv[i] + "=" + kv[i+1]
	}
	e.mu.Lock()
	e.lines = append(e.lines, line)
	e.mu.Unlock()
	select {
	case e.ch <- line:
	default:
	}
}

// wait returns the first event line starting with prefix.
func (e *events) wait(t *testing.T, prefix string) string {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case l := <-e.ch:
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-timeout:
			t.Fatalf("no %q event", prefix)
		}
	}
}

func field(line, key string) string {
	for _, f := range strings.Fields(line) {
		if v, ok := strings.CutPrefix(f, key+"="); ok {
			return v
		}
	}
	return ""
}

// pair connects two in-process peers through a real ewfd on loopback and
// runs an Exposer on the listener's Conn and a Forwarder on the dialer's.
type pair struct {
	exposed, forwarded *events
	done               chan error // Forwarder.Run's result
	serveDone          chan error
	serveCancel        context.CancelFunc
}

// cancelServe makes the exposer's side go away (its Serve closes its Conn).
func (p *pair) cancelServe(t *testing.T) {
	p.serveCancel()
	err := <-p.serveDone
	p.serveDone <- err
}

func startPair(t *testing.T, tr ewf.Transport, svcs []Service, fws []Forward) *pair {
	t.Helper()
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	srv := d.Addrs()[0].String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	dir := t.TempDir()
	l, err := ewf.Listen(ctx, ewf.Config{Server: srv, IdentityFile: dir + "/l.json", LocalAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	dc, err := ewf.Dial(ctx, ewf.Config{Server: srv, IdentityFile: dir + "/d.json", LocalAddr: "127.0.0.1:0", Transport: tr}, l.ID())
	if err != nil {
		t.Fatal(err)
	}
	ac, err := l.AcceptContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(ctx)
	p := &pair{exposed: newEvents(), forwarded: newEvents(), done: make(chan error, 1), serveDone: make(chan error, 1), serveCancel: scancel}
	ex := &Exposer{Services: svcs, Events: p.exposed.record}
	fw := &Forwarder{Forwards: fws, Events: p.forwarded.record}
	go func() { p.serveDone <- ex.Serve(sctx, ac) }()
	go func() { p.done <- fw.Run(ctx, dc) }()
	t.Cleanup(func() {
		cancel()
		<-p.done
		<-p.serveDone
	})
	return p
}

// echoServer answers each connection with what it read, after the
// client's half-close, then closes.
func echoServer(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				b, _ := io.ReadAll(c)
				c.Write(b)
			}()
		}
	}()
	return ln.Addr().String()
}

// closedPort returns a loopback port nothing listens on.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func TestForwardTCP(t *testing.T) {
	for _, tr := range []ewf.Transport{ewf.TransportUDP, ewf.TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			echo := echoServer(t)
			p := startPair(t, tr,
				[]Service{{Label: "echo", Network: "tcp", Addr: echo}, {Label: "down", Network: "tcp", Addr: closedPort(t)}},
				[]Forward{{Network: "tcp", Local: "127.0.0.1:0", Label: "echo"}, {Network: "tcp", Local: "127.0.0.1:0", Label: "down"},
					{Network: "tcp", Local: "127.0.0.1:0", Label: "nosuch"}})
			echoLocal := field(p.forwarded.wait(t, "forward "), "local")
			downLocal := field(p.forwarded.wait(t, "forward "), "local")
			nosuchLocal := field(p.forwarded.wait(t, "forward "), "local")

			t.Run("half-close", func(t *testing.T) {
				c, err := net.Dial("tcp", echoLocal)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				msg := bytes.Repeat([]byte("ewf "), 100000)
				go func() { c.Write(msg); c.(*net.TCPConn).CloseWrite() }()
				got, err := io.ReadAll(c)
				if err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("echo: %d of %d bytes, %v", len(got), len(msg), err)
				}
			})
			t.Run("refused", func(t *testing.T) {
				start := time.Now()
				if n, err := readRefused(downLocal); n != 0 || err == nil || isTimeout(err) {
					t.Fatalf("read on a refused forward: %d, %v; want a prompt reset or EOF", n, err)
				}
				if d := time.Since(start); d > 3*time.Second {
					t.Errorf("refusal took %v", d)
				}
				l := p.forwarded.wait(t, "refused ")
				if field(l, "reason") != "refused" || !strings.Contains(l, "connection refused") {
					t.Errorf("connector's event: %s", l)
				}
				l = p.exposed.wait(t, "refused ")
				if field(l, "label") != "down" || !strings.Contains(l, "connection refused") {
					t.Errorf("exposer's event: %s", l)
				}
			})
			t.Run("no-service", func(t *testing.T) {
				if n, err := readRefused(nosuchLocal); n != 0 || err == nil || isTimeout(err) {
					t.Fatalf("read: %d, %v", n, err)
				}
				if l := p.forwarded.wait(t, "refused "); field(l, "reason") != "no-service" {
					t.Errorf("event: %s", l)
				}
			})
		})
	}
}

// readRefused connects to a forward whose service refuses and reads. The
// refusal can be so quick that the reset arrives before the connect call
// returns, which is as good as a reset read.
func readRefused(addr string) (int, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.ECONNRESET) {
			return 0, err
		}
		return 0, nil // not a refusal; the caller fails
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return c.Read(make([]byte, 1))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestForwardResetCarried: a service that resets its connection makes the
// forwarded local connection reset too, not end cleanly.
func TestForwardResetCarried(t *testing.T) {
	for _, tr := range []ewf.Transport{ewf.TransportUDP, ewf.TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("partial"))
				time.Sleep(100 * time.Millisecond)
				c.(*net.TCPConn).SetLinger(0)
				c.Close() // RST
			}()
			p := startPair(t, tr, []Service{{Network: "tcp", Addr: ln.Addr().String()}}, []Forward{{Network: "tcp", Local: "127.0.0.1:0"}})
			local := field(p.forwarded.wait(t, "forward "), "local")
			c, err := net.Dial("tcp", local)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c)
			if string(got) != "partial" {
				t.Errorf("got %q before the reset", got)
			}
			if err == nil || isTimeout(err) {
				t.Errorf("a reset service ended the forwarded connection with %v, want a reset", err)
			}
		})
	}
}

func TestForwardUDP(t *testing.T) {
	// A UDP echo service.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	go func() {
		b := make([]byte, 2048)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			pc.WriteTo(append([]byte("echo:"), b[:n]...), from)
		}
	}()
	p := startPair(t, ewf.TransportUDP, []Service{{Label: "dns", Network: "udp", Addr: pc.LocalAddr().String()}},
		[]Forward{{Network: "udp", Local: "127.0.0.1:0", Label: "dns"}})
	local := field(p.forwarded.wait(t, "forward "), "local")
	// Two clients, two flows, each gets its own answers.
	for i := range 2 {
		c, err := net.Dial("udp", local)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := []byte{'q', byte('0' + i)}
		b := make([]byte, 2048)
		var got string
		// The first datagram opens the flow; retry as a UDP client would.
		for try := 0; try < 20 && got == ""; try++ {
			c.Write(msg)
			c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
			if n, err := c.Read(b); err == nil {
				got = string(b[:n])
			}
		}
		if got != "echo:"+string(msg) {
			t.Errorf("client %d got %q", i, got)
		}
	}
}

func TestForwardUDPOverTCPRefused(t *testing.T) {
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	srv := d.Addrs()[0].String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	l, err := ewf.Listen(ctx, ewf.Config{Server: srv, IdentityFile: dir + "/l.json", LocalAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dc, err := ewf.Dial(ctx, ewf.Config{Server: srv, IdentityFile: dir + "/d.json", LocalAddr: "127.0.0.1:0", Transport: ewf.TransportTCP}, l.ID())
	if err != nil {
		t.Fatal(err)
	}
	ac, err := l.AcceptContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	f := &Forwarder{Forwards: []Forward{{Network: "udp", Local: "127.0.0.1:0"}}}
	if err := f.Run(ctx, dc); !errors.Is(err, ErrUDPNeedsQUIC) {
		t.Fatalf("Run: %v, want ErrUDPNeedsQUIC", err)
	}
}

// TestForwardPeerGone: when the exposer's side closes, the forwarder's
// Run returns a clear error and its local connections end.
func TestForwardPeerGone(t *testing.T) {
	for _, tr := range []ewf.Transport{ewf.TransportUDP, ewf.TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				io.Copy(io.Discard, c) // a sink that never answers
			}()
			p := startPair(t, tr, []Service{{Network: "tcp", Addr: ln.Addr().String()}}, []Forward{{Network: "tcp", Local: "127.0.0.1:0"}})
			local := field(p.forwarded.wait(t, "forward "), "local")
			c, err := net.Dial("tcp", local)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			go c.Write(make([]byte, 1<<20))
			time.Sleep(200 * time.Millisecond)
			// The listener's side goes away: its Serve closes its Conn.
			p.cancelServe(t)
			select {
			case err := <-p.done:
				if !errors.Is(err, ewf.ErrPeerClosed) {
					t.Errorf("Run: %v, want ErrPeerClosed", err)
				}
				p.done <- err
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not end after the peer went away")
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
				t.Errorf("local connection after the peer went away: %v", err)
			}
		})
	}
}

// TestForwardSlowReaderBoundsMemory: a local client that does not read
// while the service sends 64 MiB makes neither side buffer it: flow
// control holds the service back, so the heap of both sides together
// (one process here) grows by at most the windows, not by the transfer.
func TestForwardSlowReaderBoundsMemory(t *testing.T) {
	for _, tr := range []ewf.Transport{ewf.TransportUDP, ewf.TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			const total = 64 << 20
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			sent := make(chan int64, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					sent <- 0
					return
				}
				defer c.Close()
				n, _ := io.CopyN(c, zeros{}, total)
				sent <- n
			}()
			p := startPair(t, tr, []Service{{Network: "tcp", Addr: ln.Addr().String()}}, []Forward{{Network: "tcp", Local: "127.0.0.1:0"}})
			local := field(p.forwarded.wait(t, "forward "), "local")
			var before runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			c, err := net.Dial("tcp", local)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			time.Sleep(1500 * time.Millisecond) // the client reads nothing meanwhile
			var during runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&during)
			grew := int64(during.HeapAlloc) - int64(before.HeapAlloc)
			// quic-go's windows reach 6 MiB per stream and 15 MiB per
			// connection; streammux's is 1 MiB; kernels buffer the rest.
			if grew > 24<<20 {
				t.Errorf("heap grew by %d MiB while the reader was stalled", grew>>20)
			}
			select {
			case n := <-sent:
				t.Fatalf("the service wrote all %d bytes to a reader that read nothing", n)
			default:
			}
			n, err := io.Copy(io.Discard, c)
			if err != nil || n != total {
				t.Fatalf("read %d of %d bytes: %v", n, total, err)
			}
			t.Logf("heap grew by %.1f MiB with %d MiB pending", float64(grew)/(1<<20), total>>20)
		})
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }
