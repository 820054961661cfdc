//go:build linux

package natlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf/client"
)

// TestListenerRoams is issue 12 §4 in the lab: one `ewf listen` that runs
// through what a listener meets in weeks, each step followed by a new
// dialer that connects and moves 1 MiB through a forward, SHA-256-checked:
//
//   - registration-expired: the listener sleeps (SIGSTOP) longer than
//     ewfd's -registration-ttl, so ewfd forgets its ID; awake, it registers
//     the same ID again under a new KEY (its identity file shows it);
//   - server-restart: ewfd is killed and started again (same data, no
//     bindings); the listener binds again;
//   - nat-rebinding: the listener's NAT forgets every mapping (conntrack
//     flushed) and another host behind it takes the listener's old port
//     towards the server, so the listener's next refresh comes from a new
//     public port; the listener binds it (ewf query shows it), and a
//     transfer running through an established connection goes on;
//   - uplink-switch: the listener's host has Wi-Fi (router wifi) and a
//     cable (router wired); its Wi-Fi goes down and its traffic leaves
//     through the cable, behind another NAT with another public address.
//     A transfer running through an established connection carries on
//     across the change (the dialer's ewf logs that it followed the
//     listener), and a new dialer reaches the listener at its new address.
//
// Every NAT is port-restricted, so no packet gets in without a punch.
func TestListenerRoams(t *testing.T) {
	spec := Spec{
		Routers: []RouterSpec{{Name: "wifi", NAT: PortRestricted}, {Name: "wired", NAT: PortRestricted},
			{Name: "hotel", NAT: PortRestricted}, {Name: "cafe", NAT: PortRestricted}},
		Hosts: []HostSpec{{Name: "home", Router: "wifi"}, {Name: "squatter", Router: "wifi"},
			{Name: "laptop", Router: "hotel"}},
	}
	ewfd, ewf := BuildBinaries(t)
	lab := New(t, spec)
	if _, err := lab.AddUplink("home", "eth1", "wired"); err != nil {
		t.Fatal(err)
	}
	if _, err := lab.AddUplink("laptop", "eth1", "cafe"); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	startServer := func() *Proc {
		srv, err := lab.Start(ServerHost, ewfd, "-listen", matrixServer, "-data", data, "-metrics", matrixMetrics,
			"-log-level", "warn", "-registration-ttl", "3s")
		if err != nil {
			t.Fatal(err)
		}
		if err := waitMetrics(lab, 20*time.Second); err != nil {
			t.Fatalf("ewfd did not come up: %v\n%s", err, strings.Join(srv.Lines(), "\n"))
		}
		return srv
	}
	srv := startServer()

	// The service behind the listener: echoes each connection as it comes.
	ln, err := lab.ListenTCP("home", 8022)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
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
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()

	dir := t.TempDir()
	ident := filepath.Join(dir, "home.json")
	l, err := lab.Start("home", ewf, "listen", "--server", matrixServer, "--identity", ident, "--keepalive", "1s",
		"--expose", "echo=tcp:127.0.0.1:8022")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Kill()
	ready, err := l.WaitLine("ready", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := ready["id"]
	first, err := netip.ParseAddrPort(ready["public"])
	if err != nil {
		t.Fatalf("ready line: %v", ready)
	}

	// dial starts a new dialer on the laptop with a forward to the echo
	// service and returns it and the forward's local address.
	ndial := 0
	dial := func(t *testing.T, extra ...string) (*Proc, netip.AddrPort, map[string]string) {
		t.Helper()
		ndial++
		args := append([]string{"connect", "-v", "--server", matrixServer,
			"--identity", filepath.Join(dir, fmt.Sprintf("laptop%d.json", ndial)), "--keepalive", "1s",
			"--forward", fmt.Sprintf("127.0.0.1:%d=echo", 2220+ndial)}, extra...)
		c, err := lab.Start("laptop", ewf, append(args, id)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Kill)
		got, err := c.WaitLine("connected", 30*time.Second)
		if err != nil {
			t.Fatalf("dialer %d: %v\n--- listener:\n%s", ndial, err, strings.Join(l.Lines(), "\n"))
		}
		wantTr := "udp"
		if slices.Contains(extra, "tcp") {
			wantTr = "tcp"
		}
		if got["transport"] != wantTr || got["path"] != "direct" {
			t.Errorf("connected line: %v", got)
		}
		fw, err := c.WaitLine("forward", 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		local, err := netip.ParseAddrPort(fw["local"])
		if err != nil {
			t.Fatalf("forward line: %v", fw)
		}
		return c, local, got
	}
	// newDialer: a dialer that connects now moves 1 MiB both ways.
	newDialer := func(t *testing.T) map[string]string {
		t.Helper()
		c, local, got := dial(t)
		defer c.Kill()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := forwardedTransfer(ctx, lab, local, ndial); err != nil {
			t.Fatal(err)
		}
		return got
	}
	newDialer(t) // the lab works before anything happens

	t.Run("registration-expired", func(t *testing.T) {
		before := loadKey(t, ident)
		if err := l.Pause(); err != nil {
			t.Fatal(err)
		}
		// -registration-ttl 3s: expired after 3 s + 1 s of last-use
		// granularity, found by the expiry that runs every second.
		time.Sleep(6 * time.Second)
		if err := l.Resume(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(15 * time.Second)
		for loadKey(t, ident) == before {
			if time.Now().After(deadline) {
				t.Fatalf("the listener's KEY did not change within 15 s of waking\n%s", strings.Join(srv.Lines(), "\n"))
			}
			time.Sleep(100 * time.Millisecond)
		}
		newDialer(t)
	})

	t.Run("server-restart", func(t *testing.T) {
		srv.Kill()
		srv = startServer()
		// The new ewfd holds the registrations (on disk) but no binding.
		restarted := time.Now()
		for !queryUDP(t, lab, ewf, id).IsValid() {
			if time.Since(restarted) > 15*time.Second {
				t.Fatalf("the listener did not bind again within 15 s of the restart\n%s", strings.Join(l.Lines(), "\n"))
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Logf("bound again %v after the restart", time.Since(restarted).Round(10*time.Millisecond))
		newDialer(t)
	})

	t.Run("nat-rebinding", func(t *testing.T) {
		c, local, _ := dial(t)
		defer c.Kill()
		run := startPaced(lab, local, 3*time.Second)
		time.Sleep(time.Second)
		// The squatter's socket has the listener's port, so once the
		// mappings are gone its packet to the server takes the listener's
		// old public port there, and the listener's next one gets another.
		sq, err := lab.ListenUDP("squatter", first.Port())
		if err != nil {
			t.Fatal(err)
		}
		defer sq.Close()
		if err := lab.FlushConntrack("wifi"); err != nil {
			t.Fatal(err)
		}
		srvAddr := netip.MustParseAddrPort(matrixServer)
		stop := make(chan struct{})
		var sqwg sync.WaitGroup
		sqwg.Add(1)
		go func() {
			defer sqwg.Done()
			for {
				sq.WriteToUDPAddrPort([]byte("squatting"), srvAddr)
				select {
				case <-stop:
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
		}()
		defer func() { close(stop); sqwg.Wait() }()
		deadline := time.Now().Add(15 * time.Second)
		var bound netip.AddrPort
		for {
			bound = queryUDP(t, lab, ewf, id)
			if bound.IsValid() && bound != first {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the listener is still bound at %s (was %s) 15 s after its NAT rebinding", bound, first)
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Logf("public address %s -> %s after the NAT rebinding", first, bound)
		if err := run.wait(); err != nil {
			t.Fatalf("the established connection: %v\n--- dialer:\n%s", err, strings.Join(c.Lines(), "\n"))
		}
		// Whether the listener's mapping towards the dialer changed too
		// depends on which of its packets left first after the flush: the
		// connection has to survive either way, and says which it was.
		followed(t, c, false)
		newDialer(t)
	})

	t.Run("uplink-switch", func(t *testing.T) {
		c, local, _ := dial(t)
		defer c.Kill()
		// A connection over TCP cannot follow (a TCP connection is its
		// address pair): it must end with a clear error, not hang.
		ct, _, _ := dial(t, "--transport", "tcp", "--idle-timeout", "3s")
		defer ct.Kill()
		run := startPaced(lab, local, 3*time.Second)
		time.Sleep(time.Second)
		if err := lab.SwitchUplink("home", "eth0", "eth1"); err != nil {
			t.Fatal(err)
		}
		switched := time.Now()
		if err := run.wait(); err != nil {
			t.Fatalf("the established connection across the switch: %v\n--- dialer:\n%s\n--- listener:\n%s", err,
				strings.Join(c.Lines(), "\n"), strings.Join(l.Lines(), "\n"))
		}
		t.Logf("transfer done %v after the switch", time.Since(switched).Round(10*time.Millisecond))
		followed(t, c, true)
		// The TCP connection ends with an error line: idle-timeout when
		// nothing more arrives, or a reset if one gets through first.
		if e, err := ct.WaitLine("error", 15*time.Second); err != nil {
			t.Errorf("the TCP connection across the switch: %v\n%s", err, strings.Join(ct.Lines(), "\n"))
		} else {
			t.Logf("TCP: error reason=%s %v after the switch", e["reason"], time.Since(switched).Round(100*time.Millisecond))
		}
		got := newDialer(t)
		remote, err := netip.ParseAddrPort(got["remote"])
		if err != nil || remote.Addr() != lab.PublicAddr("wired") {
			t.Errorf("a new dialer reached the listener at %s, want the wired router's %s\n--- listener:\n%s",
				got["remote"], lab.PublicAddr("wired"), strings.Join(l.Lines(), "\n"))
		}
	})

	// The other side moves: the dialer's laptop leaves the hotel for the
	// café. The dialer SIGNALs the listener, both punch, and the
	// listener's quic-go, the QUIC server, follows its client's new
	// address once its packets get through (PATH_CHALLENGE).
	t.Run("dialer-switch", func(t *testing.T) {
		c, local, _ := dial(t)
		defer c.Kill()
		run := startPaced(lab, local, 3*time.Second)
		time.Sleep(time.Second)
		if err := lab.SwitchUplink("laptop", "eth0", "eth1"); err != nil {
			t.Fatal(err)
		}
		switched := time.Now()
		if err := run.wait(); err != nil {
			t.Fatalf("the established connection across the dialer's switch: %v\n--- dialer:\n%s", err,
				strings.Join(c.Lines(), "\n"))
		}
		t.Logf("transfer done %v after the dialer's switch", time.Since(switched).Round(10*time.Millisecond))
		newDialer(t)
	})
}

// followed reports whether a dialer's ewf (run with -v) logged that its
// connection followed the listener to a new address (roam.go), and logs
// where to; if required, not having done so is an error.
func followed(t *testing.T, c *Proc, required bool) bool {
	t.Helper()
	for _, line := range c.Lines() {
		if strings.Contains(line, "connection follows the peer") {
			t.Logf("dialer: %s", line)
			return true
		}
	}
	if required {
		t.Errorf("the dialer never logged that its connection followed the listener:\n%s", strings.Join(c.Lines(), "\n"))
	} else {
		t.Logf("the dialer's connection kept its path")
	}
	return false
}

// loadKey returns the KEY an identity file holds for the lab's server.
func loadKey(t *testing.T, path string) string {
	t.Helper()
	ident, err := client.LoadIdentity(path)
	if err != nil {
		t.Fatal(err)
	}
	k, ok := ident.Keys[matrixServer]
	if !ok {
		t.Fatalf("identity %s has no KEY for %s: %v", path, matrixServer, ident.Keys)
	}
	return fmt.Sprintf("%x", k[:])
}

// queryUDP asks the server, with `ewf query` from the laptop, where id is
// bound over UDP (invalid if it is not).
func queryUDP(t *testing.T, lab *Lab, ewf, id string) netip.AddrPort {
	t.Helper()
	q, err := lab.Start("laptop", ewf, "query", "--server", matrixServer, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Wait(10 * time.Second); err != nil {
		return netip.AddrPort{}
	}
	for _, line := range strings.Split(q.Stdout(), "\n") {
		if a, ok := strings.CutPrefix(line, "udp "); ok {
			if ap, err := netip.ParseAddrPort(strings.TrimSpace(a)); err == nil {
				return ap
			}
		}
	}
	return netip.AddrPort{}
}

// paced is a transfer through a forward that sends 2 MiB in pieces spread
// over a few seconds, so that whatever happens meanwhile happens during
// it, and reads the echo back.
type paced struct{ done chan error }

func startPaced(lab *Lab, local netip.AddrPort, over time.Duration) *paced {
	p := &paced{done: make(chan error, 1)}
	go func() { p.done <- pacedTransfer(lab, local, over) }()
	return p
}

func (p *paced) wait() error { return <-p.done }

func pacedTransfer(lab *Lab, local netip.AddrPort, over time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	conn, err := lab.DialTCP(ctx, "laptop", 0, local)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(45 * time.Second))
	const size, pieces = 2 << 20, 64
	data := make([]byte, size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		step := size / pieces
		for i := 0; i < size; i += step {
			if _, err := conn.Write(data[i : i+step]); err != nil {
				werr <- fmt.Errorf("write at %d: %w", i, err)
				return
			}
			time.Sleep(over / pieces)
		}
		werr <- conn.CloseWrite()
	}()
	back, err := io.ReadAll(conn)
	if err != nil {
		return fmt.Errorf("%d of %d bytes back: %w", len(back), size, err)
	}
	if err := <-werr; err != nil {
		return err
	}
	if a, b := sha256.Sum256(back), sha256.Sum256(data); !bytes.Equal(a[:], b[:]) {
		return fmt.Errorf("%d bytes back, SHA-256 mismatch", len(back))
	}
	return nil
}
