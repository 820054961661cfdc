package natdisco_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ewf-project/ewf/natdisco"
	"github.com/ewf-project/ewf/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startEwfd starts the real ewfd on loopback; alternate as in
// Config.Alternate ("" for off).
func startEwfd(t *testing.T, alternate string) netip.AddrPort {
	t.Helper()
	d, err := server.Start(server.Config{
		Listen: []string{"127.0.0.1:0"}, Alternate: alternate, DataDir: t.TempDir(),
		UDPReaders: 1, Rate: 1e6,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d.Addrs()[0]
}

func classify(t *testing.T, srv netip.AddrPort, listen func(string) (natdisco.Conn, error), local func() ([]netip.Addr, error)) (natdisco.Result, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return natdisco.Classify(ctx, natdisco.Config{
		Server: srv, Listen: listen, LocalAddrs: local,
		Timeout: 100 * time.Millisecond, Tries: 2,
	})
}

// TestClassifyBehindSimulatedNATs is the expected-outcome table: every
// mapping, filtering and port behaviour the classifier should tell, each
// behind a userspace NAT talking to the real ewfd with a second IP.
func TestClassifyBehindSimulatedNATs(t *testing.T) {
	srv := startEwfd(t, "127.0.0.2:0")
	const (
		eim, adm, apdm  = natdisco.MappingEIM, natdisco.MappingADM, natdisco.MappingAPDM
		eif, adf, apdf  = natdisco.FilteringEIF, natdisco.FilteringADF, natdisco.FilteringAPDF
		pres, seq, rand = natdisco.PortsPreserved, natdisco.PortsSequential, natdisco.PortsRandom
	)
	for _, tc := range []struct {
		name    string
		m       natdisco.Mapping
		f       natdisco.Filtering
		p       natdisco.Ports
		delta   int
		hairpin bool
		outlier int // the n-th new mapping is an outlier (simNAT.outlierAt)
	}{
		{"full-cone", eim, eif, pres, 0, true, 0},
		{"restricted", eim, adf, pres, 0, false, 0},
		{"port-restricted", eim, apdf, pres, 0, true, 0},
		{"port-restricted-random-ports", eim, apdf, rand, 0, false, 0},
		{"address-dependent-sequential", adm, adf, seq, 1, false, 0},
		{"symmetric-sequential", apdm, apdf, seq, 1, true, 0},
		{"symmetric-sequential-step-2", apdm, apdf, seq, 2, false, 0},
		{"symmetric-descending", apdm, apdf, seq, -1, false, 0},
		// A shared counter: another host takes a port between two samples
		// and this one gets an unrelated port (seen in the lab), first
		// among the port samples, then as the last sample.
		{"symmetric-sequential-one-outlier", apdm, apdf, seq, 1, false, 4},
		{"symmetric-sequential-last-outlier", apdm, apdf, seq, 1, false, 7},
		{"symmetric-random", apdm, apdf, rand, 0, false, 0},
		{"symmetric-open-filter", apdm, eif, rand, 0, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nat := newSimNAT(t, tc.m, tc.f, tc.p, tc.hairpin)
			if tc.delta != 0 {
				nat.delta = tc.delta
			}
			nat.outlierAt = tc.outlier
			res, err := classify(t, srv, nat.listen, nat.localAddrs)
			if err != nil {
				t.Fatal(err)
			}
			want := natdisco.Class{Mapping: tc.m, Filtering: tc.f, Ports: tc.p, Hairpin: tc.hairpin}
			if tc.p == seq {
				want.Delta = int8(tc.delta)
			}
			if res.Class != want {
				t.Fatalf("classified %v (ports %v), want %v", res.Class, res.Ports, want)
			}
		})
	}
}

// TestClassifyPublicHost: no NAT at all, real sockets on loopback.
func TestClassifyPublicHost(t *testing.T) {
	srv := startEwfd(t, "127.0.0.2:0")
	res, err := classify(t, srv, natdisco.ListenUDP, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := natdisco.Class{Mapping: natdisco.MappingEIM, Filtering: natdisco.FilteringEIF,
		Ports: natdisco.PortsPreserved, Hairpin: true, Public: true, IPv6: res.Class.IPv6}
	if res.Class != want || res.Other.Addr() != netip.MustParseAddr("127.0.0.2") {
		t.Fatalf("classified %v other %v, want %v", res.Class, res.Other, want)
	}
}

// TestClassifyOneServerIP: with a second port only, the classifier cannot
// tell address-dependent from endpoint-independent behaviour and says the
// weaker thing for filtering (ADF) and the mapping it saw (EIM).
func TestClassifyOneServerIP(t *testing.T) {
	srv := startEwfd(t, ":0")
	for _, tc := range []struct {
		name  string
		m     natdisco.Mapping
		f     natdisco.Filtering
		wantM natdisco.Mapping
		wantF natdisco.Filtering
	}{
		{"full-cone", natdisco.MappingEIM, natdisco.FilteringEIF, natdisco.MappingEIM, natdisco.FilteringADF},
		{"adm-reads-as-eim", natdisco.MappingADM, natdisco.FilteringADF, natdisco.MappingEIM, natdisco.FilteringADF},
		{"symmetric", natdisco.MappingAPDM, natdisco.FilteringAPDF, natdisco.MappingAPDM, natdisco.FilteringAPDF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nat := newSimNAT(t, tc.m, tc.f, natdisco.PortsRandom, false)
			res, err := classify(t, srv, nat.listen, nat.localAddrs)
			if err != nil {
				t.Fatal(err)
			}
			if res.Class.Mapping != tc.wantM || res.Class.Filtering != tc.wantF {
				t.Fatalf("classified %v, want mapping %v filtering %v", res.Class, tc.wantM, tc.wantF)
			}
		})
	}
}

// TestClassifyWithoutRFC5780: a server without --alternate gives no
// OTHER-ADDRESS; mapping and filtering stay unknown, the rest is measured.
func TestClassifyWithoutRFC5780(t *testing.T) {
	srv := startEwfd(t, "")
	nat := newSimNAT(t, natdisco.MappingAPDM, natdisco.FilteringAPDF, natdisco.PortsSequential, false)
	res, err := classify(t, srv, nat.listen, nat.localAddrs)
	if err != nil {
		t.Fatal(err)
	}
	want := natdisco.Class{Ports: natdisco.PortsSequential, Delta: 1}
	if res.Class != want || res.Other.IsValid() {
		t.Fatalf("classified %v other %v, want %v", res.Class, res.Other, want)
	}
}

// TestClassifyUDPBlocked: no answer at all is ErrNoAnswer and an unknown
// class, not a guess.
func TestClassifyUDPBlocked(t *testing.T) {
	srv := startEwfd(t, "127.0.0.2:0")
	nat := newSimNAT(t, natdisco.MappingEIM, natdisco.FilteringEIF, natdisco.PortsPreserved, false)
	nat.blockUDP = true
	res, err := classify(t, srv, nat.listen, nat.localAddrs)
	if !errors.Is(err, natdisco.ErrNoAnswer) || res.Class.Known() {
		t.Fatalf("Classify = %v, %v; want ErrNoAnswer and an unknown class", res.Class, err)
	}
}

// TestClassifyStopsWhenCancelled: a cancelled context ends Classify while
// it waits for an answer that will not come, not at the read's deadline
// (here an hour, so that a Classify that waits for it fails the test by
// the test's timeout): a node that closes is not held up by discovery.
func TestClassifyStopsWhenCancelled(t *testing.T) {
	silent, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close() // reads nothing: every request goes unanswered
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := natdisco.Classify(ctx, natdisco.Config{
			Server: silent.LocalAddr().(*net.UDPAddr).AddrPort(), Listen: natdisco.ListenUDP,
			LocalAddrs: func() ([]netip.Addr, error) { return nil, nil },
			Timeout:    time.Hour, Tries: 1,
		})
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let it send and wait
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Classify after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Classify still waiting 10 s after its context was cancelled")
	}
}

func TestClassifyConfigErrors(t *testing.T) {
	if _, err := natdisco.Classify(context.Background(), natdisco.Config{}); !errors.Is(err, natdisco.ErrConfig) {
		t.Fatalf("empty Config: %v", err)
	}
}

// TestClassifyIPv6: with Server6, IPv6 is whether the server answered
// from a global address; loopback ::1 is not global.
func TestClassifyIPv6(t *testing.T) {
	c, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback")
	}
	c.Close()
	srv := startEwfd(t, "127.0.0.2:0")
	d, err := server.Start(server.Config{Listen: []string{"[::1]:0"}, DataDir: t.TempDir(), UDPReaders: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx := context.Background()
	res, err := natdisco.Classify(ctx, natdisco.Config{Server: srv, Server6: d.Addrs()[0], Listen: natdisco.ListenUDP,
		Timeout: 100 * time.Millisecond, Tries: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Mapped6.IsValid() || res.Class.IPv6 {
		t.Fatalf("mapped6 %v ipv6 %v: want an answer from ::1 that is not global", res.Mapped6, res.Class.IPv6)
	}
}

func TestGlobalIPv6(t *testing.T) {
	for a, want := range map[string]bool{
		"2001:db8::1": true, "2a00:1450::1": true, "::1": false, "fe80::1": false,
		"fd00::1": false, "192.0.2.1": false, "::ffff:192.0.2.1": false, "ff02::1": false,
	} {
		if got := natdisco.GlobalIPv6(netip.MustParseAddr(a)); got != want {
			t.Errorf("GlobalIPv6(%s) = %v", a, got)
		}
	}
}

// TestClassifyReportsPartialFirst: the mapping and port pattern reach
// Config.Partial before the filtering tests wait out their timeouts, so a
// punch does not have to wait for them.
func TestClassifyReportsPartialFirst(t *testing.T) {
	srv := startEwfd(t, "127.0.0.2:0")
	nat := newSimNAT(t, natdisco.MappingAPDM, natdisco.FilteringAPDF, natdisco.PortsSequential, false)
	var partial natdisco.Class
	var partialAt time.Time
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const timeout, tries = 100 * time.Millisecond, 2
	res, err := natdisco.Classify(ctx, natdisco.Config{
		Server: srv, Listen: nat.listen, LocalAddrs: nat.localAddrs, Timeout: timeout, Tries: tries,
		Partial: func(r natdisco.Result) { partial, partialAt = r.Class, time.Now() },
	})
	done := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	want := natdisco.Class{Mapping: natdisco.MappingAPDM, Ports: natdisco.PortsSequential, Delta: 1}
	if partial != want {
		t.Fatalf("partial class %v, want %v", partial, want)
	}
	if res.Class.Filtering != natdisco.FilteringAPDF {
		t.Fatalf("final class %v", res.Class)
	}
	// Behind APDF both filtering tests and the hairpin test go
	// unanswered: at least three rounds of tries × timeout come after.
	if gap := done.Sub(partialAt); gap < 3*tries*timeout {
		t.Fatalf("partial reported only %v before the end", gap)
	}
}
