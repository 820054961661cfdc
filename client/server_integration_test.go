package client_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

// These tests run the client against the real ewfd (server.Start) on
// 127.0.0.1 in this process: the in-test responder of package client
// proves the client against the spec, these prove that client and server
// read the spec the same way.

// rto keeps lost-packet tests short; passing never depends on it.
var rto = client.Config{RTO: 20 * time.Millisecond}

func startServer(t *testing.T) netip.AddrPort {
	t.Helper()
	d, err := server.Start(server.Config{
		Listen:     []string{"127.0.0.1:0"},
		DataDir:    t.TempDir(),
		UDPReaders: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d.Addrs()[0]
}

func dial(t *testing.T, srv string, cfg client.Config) *client.Conn {
	t.Helper()
	c, err := client.DialUDPFrom(t.Context(), srv, netip.MustParseAddrPort("127.0.0.1:0"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// up registers (through an identity file) and binds a UDP client.
func up(t *testing.T, c *client.Conn, srv string) (*client.Identity, netip.AddrPort) {
	t.Helper()
	id, err := client.EnsureRegistered(t.Context(), filepath.Join(t.TempDir(), "identity.json"), srv, c.Register)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := c.PublicAddress(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Bind(t.Context(), id.ID, id.Keys[srv], wire.Address{AddrPort: pub}); err != nil {
		t.Fatal(err)
	}
	return id, pub
}

func TestAgainstServer(t *testing.T) {
	addr := startServer(t)
	srv := addr.String()
	ctx := t.Context()

	// A: UDP and TCP bindings.
	a := dial(t, srv, rto)
	aid, apub := up(t, a, srv)
	if apub != a.LocalAddr() {
		t.Errorf("UDP public address %v, local %v", apub, a.LocalAddr())
	}
	at, err := client.DialTCP(ctx, srv, netip.MustParseAddrPort("127.0.0.1:0"), client.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer at.Close()
	atpub, err := at.PublicAddress(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if atpub != at.LocalAddr() {
		t.Errorf("TCP public address %v, local %v", atpub, at.LocalAddr())
	}
	if err := at.Bind(ctx, aid.ID, aid.Keys[srv], wire.Address{Transport: wire.TransportTCP, AddrPort: atpub}); err != nil {
		t.Fatalf("TCP BIND: %v", err)
	}

	// B: UDP, listening for introductions.
	intros := make(chan client.Introduction, 1)
	b := dial(t, srv, client.Config{RTO: rto.RTO, OnIntroduce: func(in client.Introduction) { intros <- in }})
	bid, bpub := up(t, b, srv)

	got, err := a.Query(ctx, bid.ID)
	if err != nil || len(got) != 1 || got[0] != (wire.Address{AddrPort: bpub}) {
		t.Errorf("QUERY B = %v, %v; want [udp/%v]", got, err, bpub)
	}
	got, err = b.Query(ctx, aid.ID)
	want := []wire.Address{{AddrPort: apub}, {Transport: wire.TransportTCP, AddrPort: atpub}}
	if err != nil || len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("QUERY A = %v, %v; want %v", got, err, want)
	}

	cand := []wire.Address{{AddrPort: netip.MustParseAddrPort("10.0.0.5:7000")}}
	in, err := a.Introduce(ctx, aid.ID, aid.Keys[srv], bid.ID, cand)
	if err != nil {
		t.Fatal(err)
	}
	if in.Peer != bid.ID || len(in.Addresses) != 1 || in.Addresses[0].AddrPort != bpub || in.Secret == (wire.Secret{}) {
		t.Errorf("introduction answer %+v", in)
	}
	select {
	case bin := <-intros:
		if bin.Peer != aid.ID || bin.Secret != in.Secret || len(bin.Addresses) != 2 || bin.Addresses[0] != want[0] ||
			bin.Addresses[1] != want[1] || len(bin.Candidates) != 1 || bin.Candidates[0] != cand[0] {
			t.Errorf("INTRODUCE at B = %+v", bin)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no INTRODUCE reached B")
	}

	// The server's error reasons arrive as the client's error values.
	lonely := wire.ID{0x10, 1}
	if _, err := a.Register(ctx, lonely); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		err  error
		want error
	}{
		{"REGISTER of a taken ID", func() error { _, err := a.Register(ctx, aid.ID); return err }(), client.ErrIDConflict},
		{"BIND with a wrong KEY", a.Bind(ctx, aid.ID, wire.Key{1}, wire.Address{AddrPort: apub}), client.ErrKeyMismatch},
		{"BIND of an unknown ID", a.Bind(ctx, wire.ID{0x10, 2}, wire.Key{1}, wire.Address{AddrPort: apub}), client.ErrNotRegistered},
		{"BIND of another address", a.Bind(ctx, aid.ID, aid.Keys[srv], wire.Address{AddrPort: netip.MustParseAddrPort("127.0.0.1:9")}), client.ErrAddressMismatch},
		{"BIND over UDP for TCP", a.Bind(ctx, aid.ID, aid.Keys[srv], wire.Address{Transport: wire.TransportTCP, AddrPort: apub}), client.ErrAddressMismatch},
		{"QUERY of an unknown ID", func() error { _, err := a.Query(ctx, wire.ID{0x10, 3}); return err }(), client.ErrNotRegistered},
		{"QUERY of an unbound ID", func() error { _, err := a.Query(ctx, lonely); return err }(), client.ErrNotBound},
		{"introduction with a wrong KEY", func() error { _, err := a.Introduce(ctx, aid.ID, wire.Key{}, bid.ID, nil); return err }(), client.ErrKeyMismatch},
	} {
		var re *client.ReasonError
		if !errors.Is(tt.err, tt.want) || !errors.As(tt.err, &re) || re.Server != addr {
			t.Errorf("%s: %v, want %v", tt.name, tt.err, tt.want)
		}
	}
}

// A restart with the same identity file reuses the ID, and the server
// accepts the saved KEY.
func TestAgainstServerRestartReusesIdentity(t *testing.T) {
	srv := startServer(t).String()
	path := filepath.Join(t.TempDir(), "identity.json")
	first := dial(t, srv, rto)
	id1, err := client.EnsureRegistered(t.Context(), path, srv, first.Register)
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	second := dial(t, srv, rto)
	id2, err := client.EnsureRegistered(t.Context(), path, srv, second.Register)
	if err != nil || id2.ID != id1.ID || id2.Keys[srv] != id1.Keys[srv] {
		t.Fatalf("restart: %+v, %v; first %+v", id2, err, id1)
	}
	pub, err := second.PublicAddress(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Bind(t.Context(), id2.ID, id2.Keys[srv], wire.Address{AddrPort: pub}); err != nil {
		t.Errorf("BIND with the saved KEY: %v", err)
	}
}

// Keep against the real server: refreshes, reports the address once,
// returns ErrKeyMismatch for a KEY the server does not hold.
func TestAgainstServerKeep(t *testing.T) {
	srv := startServer(t).String()
	c := dial(t, srv, rto)
	id, pub := up(t, c, srv)
	ctx, cancel := context.WithCancel(t.Context())
	var mu sync.Mutex
	var changes []netip.AddrPort
	binds := 0
	errc := make(chan error, 1)
	go func() {
		errc <- c.Keep(ctx, id.ID, id.Keys[srv], wire.TransportUDP,
			func() time.Duration {
				mu.Lock()
				defer mu.Unlock()
				binds++
				if binds == 3 {
					cancel()
				}
				return time.Millisecond
			},
			func(a netip.AddrPort) { mu.Lock(); changes = append(changes, a); mu.Unlock() },
			func(err error) { t.Errorf("transient error: %v", err) })
	}()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("Keep = %v", err)
	}
	if len(changes) != 1 || changes[0] != pub {
		t.Errorf("onChange %v, want [%v]", changes, pub)
	}
	err := c.Keep(t.Context(), id.ID, wire.Key{}, wire.TransportUDP, nil, nil, nil)
	if !errors.Is(err, client.ErrKeyMismatch) {
		t.Errorf("Keep with a wrong KEY = %v", err)
	}
}

// The server carries out a REGISTER whose answer is lost; the client's
// retransmission (same transaction ID) gets the same KEY, not "ID
// conflict", and that KEY is the one the server holds.
func TestAgainstServerLostRegisterAnswer(t *testing.T) {
	addr := startServer(t)
	p := startLossyProxy(t, addr, 2)
	c := dial(t, p.String(), rto)
	id := wire.ID{0x42, 1}
	key, err := c.Register(t.Context(), id)
	if err != nil {
		t.Fatalf("REGISTER with lost answers: %v", err)
	}
	pub, err := c.PublicAddress(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Bind(t.Context(), id, key, wire.Address{AddrPort: pub}); err != nil {
		t.Errorf("BIND with the KEY from the retransmission: %v", err)
	}
}

// A server that goes away: UDP requests time out naming it, a TCP
// connection's requests end at once.
func TestAgainstServerGone(t *testing.T) {
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir(), UDPReaders: 1})
	if err != nil {
		t.Fatal(err)
	}
	srv := d.Addrs()[0].String()
	u := dial(t, srv, client.Config{RTO: 5 * time.Millisecond, MaxAttempts: 3, LastWait: 2})
	tc, err := client.DialTCP(t.Context(), srv, netip.AddrPort{}, client.Config{Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if _, err := tc.PublicAddress(t.Context()); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if _, err := u.PublicAddress(t.Context()); !errors.Is(err, client.ErrTimeout) {
		t.Errorf("UDP after the server stopped: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := tc.PublicAddress(ctx); !errors.Is(err, client.ErrClosed) {
		t.Errorf("TCP after the server stopped: %v", err)
	}
}

// startLossyProxy relays UDP between one client and the server and drops
// the first n X responses on the way back.
func startLossyProxy(t *testing.T, server netip.AddrPort, n int) netip.AddrPort {
	t.Helper()
	lo := net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0"))
	front, err := net.ListenUDP("udp4", lo)
	if err != nil {
		t.Fatal(err)
	}
	back, err := net.ListenUDP("udp4", lo)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var clientAddr netip.AddrPort
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			k, from, err := front.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			clientAddr = from
			mu.Unlock()
			back.WriteToUDPAddrPort(buf[:k], server)
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			k, _, err := back.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			mu.Lock()
			to := clientAddr
			drop := n > 0 && wire.Classify(buf[:k]) == wire.KindX
			if drop {
				n--
			}
			mu.Unlock()
			if !drop {
				front.WriteToUDPAddrPort(buf[:k], to)
			}
		}
	}()
	t.Cleanup(func() {
		front.Close()
		back.Close()
		wg.Wait()
	})
	return front.LocalAddr().(*net.UDPAddr).AddrPort()
}

// TestRelayWithoutRelay: a server that offers no relay answers RELAY with
// no relay, which the client reports as ErrNoRelay.
func TestRelayWithoutRelay(t *testing.T) {
	srv := startServer(t).String()
	c := dial(t, srv, rto)
	id, _ := up(t, c, srv)
	_, err := c.Relay(t.Context(), id.ID, id.Keys[srv])
	if !errors.Is(err, client.ErrNoRelay) {
		t.Fatalf("Relay = %v, want ErrNoRelay", err)
	}
}

// TestAgainstServerTCPRateLimited: over TCP, a request over ewfd's
// per-source rate ends at once with ErrRateLimited, the signed BIND's too
// (the answer is unsigned: the server checks no MAC over the rate), instead
// of waiting out Timeout; one more request at once finds the connection
// closed by the server, again without waiting.
func TestAgainstServerTCPRateLimited(t *testing.T) {
	d, err := server.Start(server.Config{
		Listen:     []string{"127.0.0.1:0"},
		DataDir:    t.TempDir(),
		UDPReaders: 1,
		Rate:       0.01, // the burst, then nothing for the test's duration
		Burst:      3,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	srv := d.Addrs()[0].String()
	ctx := t.Context()
	// A failure waits out this Timeout instead of the default 39.5 s.
	c, err := client.DialTCP(ctx, srv, netip.MustParseAddrPort("127.0.0.1:0"), client.Config{Timeout: 15 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	id := wire.ID{0x10, 9}
	key, err := c.Register(ctx, id) // the burst of 3: REGISTER, STUN, BIND
	if err != nil {
		t.Fatal(err)
	}
	pub, err := c.PublicAddress(ctx)
	if err != nil {
		t.Fatal(err)
	}
	addr := wire.Address{Transport: wire.TransportTCP, AddrPort: pub}
	if err := c.Bind(ctx, id, key, addr); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	err = c.Bind(ctx, id, key, addr)
	t.Logf("BIND over the rate ended in %v: %v", time.Since(t0), err)
	var re *client.ReasonError
	if !errors.Is(err, client.ErrRateLimited) || !errors.As(err, &re) || re.Authenticated {
		t.Fatalf("BIND over the rate: %v, want an unauthenticated ErrRateLimited", err)
	}
	if _, err := c.Query(ctx, id); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("QUERY right after: %v, want ErrClosed (the server closed the connection)", err)
	}
}
