package ewf_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/internal/redistest"
	"github.com/ewf-project/ewf/server"
)

// startSharedServers runs n real ewfd (in-process) on one shared store.
func startSharedServers(t *testing.T, url string, n int) ([]string, []*server.Daemon) {
	t.Helper()
	var addrs []string
	var ds []*server.Daemon
	for range n {
		d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, StoreURL: url})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		addrs = append(addrs, d.Addrs()[0].String())
		ds = append(ds, d)
	}
	return addrs, ds
}

// A listener registered and bound at one ewfd is reached by a dialer that
// only talks to another, on a 3-master Redis Cluster: the dialer's
// introduction is forwarded, the listener's server sends the INTRODUCE,
// both punch, and data flows both ways, over UDP (QUIC) and TCP.
func TestConnectAcrossServers(t *testing.T) {
	cl := redistest.StartCluster(t, 3)
	srv, ds := startSharedServers(t, cl.URL(), 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := ewf.Listen(ctx, config(t, srv[0], "listener"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i, tr := range []ewf.Transport{ewf.TransportUDP, ewf.TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			cfg := config(t, srv[1+i], "dialer")
			cfg.Transport = tr
			var dc *ewf.Conn
			for {
				// The listener's bindings reach Redis in the background,
				// within milliseconds of its BINDs.
				dc, err = ewf.Dial(ctx, cfg, l.ID())
				if err == nil || ctx.Err() != nil {
					break
				}
				t.Logf("dial: %v", err)
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer dc.Close()
			ac, err := l.AcceptContext(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer ac.Close()
			if dc.Transport() != tr || ac.Transport() != tr || dc.Peer() != l.ID() {
				t.Fatalf("connected over %s/%s to %s", dc.Transport(), ac.Transport(), dc.Peer())
			}
			// The INTRODUCE went the cluster way: handed over by the
			// dialer's server, sent by the listener's.
			if f := sharedEvents(t, ds[1+i], "forwarded"); f < 1 {
				t.Errorf("dialer's server forwarded %v introductions", f)
			}
			if d := sharedEvents(t, ds[0], "delivered"); d < float64(1+i) {
				t.Errorf("listener's server delivered %v forwarded messages", d)
			}
			a, b := randomBytes(t, 64<<10), randomBytes(t, 64<<10)
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
			if got := readAll(t, ac); sha256.Sum256(got) != sha256.Sum256(a) {
				t.Fatal("acceptor got other bytes")
			}
			if got := readAll(t, dc); sha256.Sum256(got) != sha256.Sum256(b) {
				t.Fatal("dialer got other bytes")
			}
			for range 2 {
				if err := <-errc; err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// failoverSlack is what the failover tests allow beyond the keepalive
// interval, within which the node is bound again: the dialer's QUERY,
// the introduction, the punch and the QUIC handshake of the dial that
// gets through, on loopback on a loaded machine.
const failoverSlack = 500 * time.Millisecond

// sharedEvents reads ewfd_shared_total{event} of d.
func sharedEvents(t *testing.T, d *server.Daemon, event string) float64 {
	t.Helper()
	mfs, err := d.Server().Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ewfd_shared_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "event" && lp.GetValue() == event {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A listener given three servers binds at the first, an ewfd in a process
// of its own; when that process is killed (SIGKILL), the listener moves to
// the next server by itself and a dialer at the third reaches it again,
// over UDP and TCP, within its keepalive interval (failover.go) plus
// failoverSlack.
func TestFailoverToAnotherServer(t *testing.T) {
	r := redistest.Start(t, redistest.Options{})
	first := startEwfdProcess(t, r.URL())
	others, _ := startSharedServers(t, r.URL(), 2)
	srv := append([]string{first.addr}, others...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	const keepalive = 500 * time.Millisecond
	lcfg := config(t, strings.Join(srv, ","), "listener")
	lcfg.KeepaliveInterval = func() time.Duration { return keepalive }
	l, err := ewf.Listen(ctx, lcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// dial returns when a connection was made (before closing it, which
	// may take a while), failing the test if that is after deadline.
	dial := func(tr ewf.Transport, deadline time.Time) time.Time {
		t.Helper()
		cfg := config(t, srv[2], "dialer-"+string(tr))
		cfg.Transport = tr
		for {
			dctx, dcancel := context.WithTimeout(ctx, time.Second)
			c, err := ewf.Dial(dctx, cfg, l.ID())
			dcancel()
			if err == nil {
				at := time.Now()
				ac, err := l.AcceptContext(ctx)
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
				ac.Close()
				if at.After(deadline) {
					t.Fatalf("%s: connected %v after the deadline", tr, at.Sub(deadline))
				}
				return at
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s dial not through by the deadline: %v", tr, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	dial(ewf.TransportUDP, time.Now().Add(5*time.Second))

	killed := time.Now()
	first.kill()
	// The bound: the node is bound again within one keepalive interval
	// (failover.go), plus failoverSlack for the dialer to find it there.
	bound := keepalive + failoverSlack
	at := dial(ewf.TransportUDP, killed.Add(bound))
	t.Logf("UDP: reachable again %v after its server was killed (bound %v)", at.Sub(killed).Round(time.Millisecond), bound)
	// Its TCP binding moved too (the dial starts after the UDP check,
	// whose connection takes a while to close).
	start := time.Now()
	at = dial(ewf.TransportTCP, start.Add(5*time.Second))
	t.Logf("TCP: connected %v after dialling", at.Sub(start).Round(time.Millisecond))
}

// An identity registered at one server keeps its ID when the node is given
// a list that includes that server (they share the store, so the KEY is
// the same): no second REGISTER, no ID conflict.
func TestIdentityKeptWhenServerBecomesAList(t *testing.T) {
	r := redistest.Start(t, redistest.Options{})
	srv, _ := startSharedServers(t, r.URL(), 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := config(t, srv[1], "node")
	n1, err := ewf.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	id := n1.ID()
	n1.Close()
	cfg.Server = srv[0] + "," + srv[1]
	n2, err := ewf.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("the same identity with a list of servers: %v", err)
	}
	defer n2.Close()
	if n2.ID() != id {
		t.Fatalf("ID changed from %s to %s", id, n2.ID())
	}
}

// ewfdProcess is an ewfd in a child process: this test binary run as
// TestHelperEwfd, so that it can be killed with SIGKILL like a real one.
type ewfdProcess struct {
	addr string
	cmd  *exec.Cmd
	done chan struct{}
}

func startEwfdProcess(t *testing.T, storeURL string) *ewfdProcess {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperEwfd$")
	cmd.Env = append(os.Environ(), "EWF_HELPER_EWFD="+storeURL)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// An os.Pipe of our own rather than StdoutPipe: Wait then returns when
	// the process is gone, without waiting for the pipe's other holders.
	out, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd.Stdout = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	p := &ewfdProcess{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(p.kill)
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if a, ok := strings.CutPrefix(sc.Text(), "ewfd-helper-addr "); ok {
			p.addr = a
			break
		}
	}
	if p.addr == "" {
		t.Fatal("the ewfd helper process did not report its address")
	}
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *ewfdProcess) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// TestHelperEwfd is not a test: it is the ewfd of startEwfdProcess.
func TestHelperEwfd(t *testing.T) {
	url := os.Getenv("EWF_HELPER_EWFD")
	if url == "" {
		return
	}
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, StoreURL: url})
	if err != nil {
		fmt.Fprintln(os.Stderr, "ewfd helper:", err)
		os.Exit(1)
	}
	fmt.Printf("ewfd-helper-addr %s\n", d.Addrs()[0])
	select {} // until killed
}

// Without a TCP connection to lose, only the UDP refresh notices the dead
// server: sent early and given up by the end of the keepalive interval,
// the node moves on, so it is reachable again within keepalive +
// failoverSlack.
func TestFailoverUDPOnly(t *testing.T) {
	r := redistest.Start(t, redistest.Options{})
	first := startEwfdProcess(t, r.URL())
	others, _ := startSharedServers(t, r.URL(), 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const keepalive = 500 * time.Millisecond
	cfg := config(t, first.addr+","+strings.Join(others, ","), "node")
	cfg.KeepaliveInterval = func() time.Duration { return keepalive }
	n, err := ewf.Open(ctx, cfg) // EnableTCP false: UDP only
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	dcfg := config(t, others[1], "dialer")
	reach := func(deadline time.Time) time.Time {
		t.Helper()
		for {
			dctx, dcancel := context.WithTimeout(ctx, time.Second)
			c, err := ewf.Dial(dctx, dcfg, n.ID())
			dcancel()
			if err == nil {
				at := time.Now()
				ac, err := n.Accept(ctx)
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
				ac.Close()
				return at
			}
			if time.Now().After(deadline) {
				t.Fatalf("not reachable by the deadline: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	reach(time.Now().Add(5 * time.Second))
	killed := time.Now()
	first.kill()
	bound := keepalive + failoverSlack
	at := reach(killed.Add(bound))
	if at.Sub(killed) > bound {
		t.Fatalf("reachable again only after %v, bound %v", at.Sub(killed), bound)
	}
	t.Logf("UDP only: reachable again %v after its server was killed (bound %v)", at.Sub(killed).Round(time.Millisecond), bound)
}
