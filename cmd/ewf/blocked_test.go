package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// udpSwallower is a rendezvous address whose UDP gets no answer while its
// TCP reaches the real server: a UDP socket that reads and drops
// everything (so not even an ICMP error comes back), and on the same port
// number a TCP listener that relays each connection to the server's TCP
// port. To a client it is a server on a network that drops UDP.
func udpSwallower(t *testing.T, srv string) string {
	t.Helper()
	var udp *net.UDPConn
	var tcp net.Listener
	for try := 0; ; try++ {
		var err error
		udp, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		tcp, err = net.Listen("tcp", udp.LocalAddr().String())
		if err == nil {
			break
		}
		udp.Close()
		if try == 10 {
			t.Fatalf("no port free for both UDP and TCP: %v", err)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		b := make([]byte, 2048)
		for {
			if _, _, err := udp.ReadFrom(b); err != nil {
				return
			}
		}
	})
	wg.Go(func() {
		for {
			c, err := tcp.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", srv)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, s)
			mu.Unlock()
			wg.Go(func() { io.Copy(s, c); s.Close() })
			wg.Go(func() { io.Copy(c, s); c.Close() })
		}
	})
	t.Cleanup(func() {
		udp.Close()
		tcp.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return tcp.Addr().String()
}

// TestReadyUDPBlocked: `ewf listen` whose server gets its UDP but never
// answers it (the network drops UDP) while TCP gets through registers and
// binds over TCP and says so on its ready line, "udp=blocked" with its
// public TCP address, within a few --udp-wait; `ewf connect` the same.
// The control, the same server reached without the swallower, has no udp
// field.
func TestReadyUDPBlocked(t *testing.T) {
	bin := buildEWF(t)
	srv := startServer(t)
	blocked := udpSwallower(t, srv)
	dir := t.TempDir()
	for _, c := range []struct {
		name, server string
		blocked      bool
		args         []string
	}{
		{"listen-blocked", blocked, true, []string{"listen"}},
		{"connect-blocked", blocked, true, []string{"connect", "--timeout", "20s", "ef01" + "00112233445566778899aabbccdd"}},
		{"listen-control", srv, false, []string{"listen"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			args := append(c.args[:1:1], "--server", c.server, "--identity", filepath.Join(dir, c.name+".json"), "--udp-wait", "300ms")
			args = append(args, c.args[1:]...)
			cmd := exec.CommandContext(ctx, bin, args...)
			stderr, _ := cmd.StderrPipe()
			start := time.Now()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			ready := statusLine(t, bufio.NewScanner(stderr), "ready")
			took := time.Since(start)
			if got := ready["udp"] == "blocked"; got != c.blocked {
				t.Errorf("ready line %v: udp=blocked %t, want %t", ready, got, c.blocked)
			}
			if pub, err := netip.ParseAddrPort(ready["public"]); err != nil || !pub.Addr().IsLoopback() {
				t.Errorf("ready public=%q, want a loopback address", ready["public"])
			}
			t.Logf("ready in %v: %v", took.Round(time.Millisecond), ready)
			go io.Copy(io.Discard, stderr)
		})
	}
}
