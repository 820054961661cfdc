package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is a running ewf process whose stderr lines are collected.
type proc struct {
	cmd   *exec.Cmd
	lines chan string
	mu    sync.Mutex
	all   []string
	done  chan error
}

func startProc(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), lines: make(chan string, 1000), done: make(chan error, 1)}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.all = append(p.all, sc.Text())
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		p.done <- p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGCONT)
		p.cmd.Process.Kill()
		<-p.done
		p.done <- nil
	})
	return p
}

// line waits for a stderr line starting with event and returns its fields.
func (p *proc) line(t *testing.T, event string, within time.Duration) map[string]string {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case l := <-p.lines:
			if strings.HasPrefix(l, event+" ") {
				return fields(l)
			}
		case <-deadline:
			t.Fatalf("no %q line within %v; stderr:\n%s", event, within, p.stderr())
			return nil
		}
	}
}

func (p *proc) stderr() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.all, "\n")
}

func fields(line string) map[string]string {
	kv := map[string]string{}
	// Values may be quoted strings with spaces (msg="..."): split on " k=".
	rest := line[strings.IndexByte(line, ' ')+1:]
	for rest != "" {
		k, v, _ := strings.Cut(rest, "=")
		if strings.HasPrefix(v, `"`) {
			end := strings.Index(v[1:], `" `)
			if end < 0 {
				kv[k], rest = v, ""
				continue
			}
			kv[k], rest = v[:end+2], v[end+3:]
			continue
		}
		val, r, _ := strings.Cut(v, " ")
		kv[k], rest = val, r
	}
	return kv
}

// forwardPair starts `ewf listen --expose ...` and `ewf connect
// --forward ...` and returns them with the connector's local addresses in
// the order of the --forward flags.
func forwardPair(t *testing.T, bin, srv, tr string, extra []string, exposes, forwards []string) (l, c *proc, locals []string) {
	t.Helper()
	dir := t.TempDir()
	largs := append([]string{"listen", "--server", srv, "--identity", filepath.Join(dir, "l.json")}, extra...)
	for _, e := range exposes {
		largs = append(largs, "--expose", e)
	}
	l = startProc(t, bin, largs...)
	ready := l.line(t, "ready", 20*time.Second)
	cargs := append([]string{"connect", "--server", srv, "--identity", filepath.Join(dir, "c.json"), "--transport", tr}, extra...)
	for _, f := range forwards {
		cargs = append(cargs, "--forward", f)
	}
	cargs = append(cargs, ready["id"])
	c = startProc(t, bin, cargs...)
	if got := c.line(t, "connected", 30*time.Second); got["transport"] != tr {
		t.Fatalf("connected line: %v", got)
	}
	for range forwards {
		locals = append(locals, c.line(t, "forward", 10*time.Second)["local"])
	}
	return l, c, locals
}

// hashEchoServer reads each connection to its end, then writes back what
// it read; the client checks the SHA-256 of what returns.
func hashEchoServer(t *testing.T) string {
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
				b, err := io.ReadAll(c)
				if err == nil {
					c.Write(b)
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// TestForward50Concurrent: 50 local TCP connections at once through the
// real binaries, each sending its own 256 KiB and checking by SHA-256
// that the same bytes came back through the service, over both
// transports.
func TestForward50Concurrent(t *testing.T) {
	bin := buildEWF(t)
	srv := startServer(t)
	svc := hashEchoServer(t)
	for _, tr := range []string{"udp", "tcp"} {
		t.Run(tr, func(t *testing.T) {
			_, _, locals := forwardPair(t, bin, srv, tr, nil, []string{"echo=tcp:" + svc}, []string{"127.0.0.1:0=echo"})
			const conns, size = 50, 256 << 10
			var wg sync.WaitGroup
			errc := make(chan error, conns)
			for i := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errc <- transfer(locals[0], size, i)
				}()
			}
			wg.Wait()
			close(errc)
			for err := range errc {
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
}

func transfer(addr string, size, i int) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		c.(*net.TCPConn).CloseWrite()
		werr <- err
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		return fmt.Errorf("connection %d: read %d bytes: %w", i, n, err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("connection %d: write: %w", i, err)
	}
	if want := sha256.Sum256(data); !bytes.Equal(h.Sum(nil), want[:]) {
		return fmt.Errorf("connection %d: %d bytes back, SHA-256 mismatch", i, n)
	}
	return nil
}

// TestForwardHTTP: Go's own HTTP client reaches an HTTP server through a
// forward: keep-alive requests, and a POST whose body is echoed.
func TestForwardHTTP(t *testing.T) {
	bin := buildEWF(t)
	srv := startServer(t)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			io.Copy(w, r.Body)
			return
		}
		fmt.Fprintf(w, "hello from %s", r.URL.Path)
	}))
	defer hs.Close()
	_, _, locals := forwardPair(t, bin, srv, "udp", nil,
		[]string{"web=tcp:" + strings.TrimPrefix(hs.URL, "http://")}, []string{"127.0.0.1:0=web"})
	cl := &http.Client{Timeout: 20 * time.Second}
	defer cl.CloseIdleConnections()
	for i := range 5 {
		resp, err := cl.Get(fmt.Sprintf("http://%s/page%d", locals[0], i))
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(body) != fmt.Sprintf("hello from /page%d", i) {
			t.Fatalf("GET: %q, %v", body, err)
		}
	}
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	resp, err := cl.Post("http://"+locals[0]+"/echo", "application/octet-stream", bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(body, payload) {
		t.Fatalf("POST echo: %d bytes, %v", len(body), err)
	}
}

// TestForwardRefused: a service that refuses makes the local connection
// end at once with nothing read, and both sides say why.
func TestForwardRefused(t *testing.T) {
	bin := buildEWF(t)
	srv := startServer(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	for _, tr := range []string{"udp", "tcp"} {
		t.Run(tr, func(t *testing.T) {
			l, c, locals := forwardPair(t, bin, srv, tr, nil, []string{"db=tcp:" + closed}, []string{"127.0.0.1:0=db", "127.0.0.1:0=nosuch"})
			for i, want := range []string{"refused", "no-service"} {
				start := time.Now()
				n, err := readOnce(locals[i])
				if n != 0 || err == nil || isTimeout(err) {
					t.Fatalf("%s: read %d bytes, %v; want an immediate end", want, n, err)
				}
				if d := time.Since(start); d > 3*time.Second {
					t.Errorf("%s: took %v", want, d)
				}
				got := c.line(t, "refused", 5*time.Second)
				if got["reason"] != want || got["msg"] == "" {
					t.Errorf("connector's line: %v", got)
				}
			}
			got := l.line(t, "refused", 5*time.Second)
			if got["label"] != "db" || got["target"] != closed || !strings.Contains(got["msg"], "connection refused") {
				t.Errorf("listener's line: %v", got)
			}
		})
	}
}

// readOnce connects and reads; a reset that beats the connect call counts
// as the prompt refusal it is.
func readOnce(addr string) (int, error) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.ECONNRESET) {
			return 0, err
		}
		return 0, nil
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return c.Read(make([]byte, 1))
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestForwardPeerVanishes: one side is frozen (SIGSTOP: no FIN, no reset,
// nothing) in the middle of a transfer; the other side notices within the
// idle timeout, says so, and ends its forwarded connection.
func TestForwardPeerVanishes(t *testing.T) {
	bin := buildEWF(t)
	srv := startServer(t)
	const idle = 2 * time.Second
	extra := []string{"--idle-timeout", idle.String()}
	for _, tr := range []string{"udp", "tcp"} {
		// The service swallows everything and never answers, so that a
		// transfer is always in the middle.
		sink, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer sink.Close()
		svcConns := make(chan net.Conn, 4)
		go func() {
			for {
				c, err := sink.Accept()
				if err != nil {
					return
				}
				svcConns <- c
				go io.Copy(io.Discard, c)
			}
		}()
		t.Run(tr+"/listener-frozen", func(t *testing.T) {
			l, c, locals := forwardPair(t, bin, srv, tr, extra, []string{"tcp:" + sink.Addr().String()}, []string{"127.0.0.1:0"})
			lc, err := net.Dial("tcp", locals[0])
			if err != nil {
				t.Fatal(err)
			}
			defer lc.Close()
			go lc.Write(make([]byte, 32<<20))
			<-svcConns
			time.Sleep(200 * time.Millisecond)
			l.cmd.Process.Signal(syscall.SIGSTOP)
			start := time.Now()
			got := c.line(t, "error", idle+8*time.Second)
			if got["reason"] != "idle-timeout" {
				t.Errorf("connector's error line: %v", got)
			}
			select {
			case err := <-c.done:
				c.done <- err
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != 1 {
					t.Errorf("connector exit: %v, want code 1", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("connector still running after its error line")
			}
			t.Logf("connector noticed after %v (idle timeout %v)", time.Since(start).Round(time.Millisecond), idle)
			lc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := lc.Read(make([]byte, 1)); err == nil || isTimeout(err) {
				t.Errorf("local connection after the peer vanished: %v", err)
			}
		})
		t.Run(tr+"/connector-frozen", func(t *testing.T) {
			l, c, locals := forwardPair(t, bin, srv, tr, extra, []string{"tcp:" + sink.Addr().String()}, []string{"127.0.0.1:0"})
			lc, err := net.Dial("tcp", locals[0])
			if err != nil {
				t.Fatal(err)
			}
			defer lc.Close()
			go lc.Write(make([]byte, 32<<20))
			svc := <-svcConns
			time.Sleep(200 * time.Millisecond)
			c.cmd.Process.Signal(syscall.SIGSTOP)
			got := l.line(t, "disconnected", idle+8*time.Second)
			if got["reason"] != "idle-timeout" {
				t.Errorf("listener's disconnected line: %v", got)
			}
			// The service's connection was reset, not left open.
			svc.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := svc.Write([]byte("x")); err == nil {
				// One write may still be accepted by the kernel; a reset
				// shows on the next.
				time.Sleep(100 * time.Millisecond)
				if _, err := svc.Write([]byte("x")); err == nil {
					t.Error("the service's connection survived the peer's disappearance")
				}
			}
			// The listener goes on serving.
			select {
			case err := <-l.done:
				l.done <- err
				t.Errorf("listener exited: %v", err)
			default:
			}
		})
	}
}

// TestForwardUDP: a UDP service through a forward over QUIC datagrams;
// over TCP the command refuses at once.
func TestForwardUDP(t *testing.T) {
	bin := buildEWF(t)
	srv := startServer(t)
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
			pc.WriteTo(append([]byte("re:"), b[:n]...), from)
		}
	}()
	_, _, locals := forwardPair(t, bin, srv, "udp", nil, []string{"dns=udp:" + pc.LocalAddr().String()}, []string{"udp:127.0.0.1:0=dns"})
	uc, err := net.Dial("udp", locals[0])
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	b := make([]byte, 2048)
	var got string
	for try := 0; try < 20 && got == ""; try++ {
		uc.Write([]byte("query"))
		uc.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		if n, err := uc.Read(b); err == nil {
			got = string(b[:n])
		}
	}
	if got != "re:query" {
		t.Fatalf("UDP through the forward: %q", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "connect", "--server", srv, "--transport", "tcp", "--forward", "udp:127.0.0.1:0", strings.Repeat("ab", 16))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(stderr.String(), "error reason=usage") ||
		!strings.Contains(stderr.String(), "datagrams") {
		t.Errorf("UDP forward over TCP: %v\n%s", err, stderr.String())
	}
}
