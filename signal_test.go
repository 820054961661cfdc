package ewf

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/natdisco"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

// TestHostCandidates: what a node offers its peers from its interface
// addresses: never loopback, link-local, unspecified or multicast; IPv4
// first; the TCP candidates (one per family) right after the first; no
// duplicates; at most MaxCandidates.
func TestHostCandidates(t *testing.T) {
	ap := netip.MustParseAddrPort
	udp := func(s string) wire.Address { return wire.Address{Transport: wire.TransportUDP, AddrPort: ap(s)} }
	tcp := func(s string) wire.Address { return wire.Address{Transport: wire.TransportTCP, AddrPort: ap(s)} }
	addrs := func(ss ...string) []netip.Addr {
		var out []netip.Addr
		for _, s := range ss {
			out = append(out, netip.MustParseAddr(s))
		}
		return out
	}
	for _, c := range []struct {
		name  string
		addrs []netip.Addr
		tcp   []netip.AddrPort
		want  []wire.Address
	}{
		{"loopback and link-local never", addrs("127.0.0.1", "::1", "169.254.1.2", "fe80::1%eth0", "0.0.0.0", "::", "ff02::1"),
			[]netip.AddrPort{ap("127.0.0.1:6000"), ap("[fe80::1]:6001")}, nil},
		{"LAN v4, global v6, ULA; v4 first", addrs("2001:db8::5", "192.168.1.5", "fd00::5", "::ffff:10.0.0.5"),
			[]netip.AddrPort{ap("192.168.1.5:6000")},
			[]wire.Address{udp("192.168.1.5:5000"), tcp("192.168.1.5:6000"), udp("10.0.0.5:5000"), udp("[2001:db8::5]:5000"), udp("[fd00::5]:5000")}},
		{"TCP per family: bound side, then host side", addrs("10.0.1.2", "2001:db8:0:1::2", "10.9.0.2", "2001:db8:0:9::2"),
			[]netip.AddrPort{ap("10.0.1.2:6000"), ap("[2001:db8:0:1::2]:7000")},
			[]wire.Address{udp("10.0.1.2:5000"), tcp("10.0.1.2:6000"), tcp("[2001:db8:0:1::2]:7000"), udp("10.9.0.2:5000"),
				udp("[2001:db8:0:1::2]:5000"), udp("[2001:db8:0:9::2]:5000")}},
		{"no TCP binding", addrs("10.1.0.2"), nil, []wire.Address{udp("10.1.0.2:5000")}},
		{"TCP from a link-local address is not offered", addrs("10.1.0.2"), []netip.AddrPort{ap("169.254.0.1:6000"), ap("[fe80::2%eth0]:6001")},
			[]wire.Address{udp("10.1.0.2:5000")}},
		{"duplicates once", addrs("10.1.0.2", "10.1.0.2", "::ffff:10.1.0.2"), []netip.AddrPort{ap("10.1.0.2:6000"), ap("[::ffff:10.1.0.2]:6000")},
			[]wire.Address{udp("10.1.0.2:5000"), tcp("10.1.0.2:6000")}},
		{"bounded, TCP kept", addrs("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7", "10.0.0.8", "10.0.0.9"),
			[]netip.AddrPort{ap("10.0.0.1:6000")},
			[]wire.Address{udp("10.0.0.1:5000"), tcp("10.0.0.1:6000"), udp("10.0.0.2:5000"), udp("10.0.0.3:5000"),
				udp("10.0.0.4:5000"), udp("10.0.0.5:5000"), udp("10.0.0.6:5000"), udp("10.0.0.7:5000")}},
		{"bounded, both TCP kept", addrs("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7", "2001:db8::1"),
			[]netip.AddrPort{ap("10.0.0.1:6000"), ap("[2001:db8::1]:7000")},
			[]wire.Address{udp("10.0.0.1:5000"), tcp("10.0.0.1:6000"), tcp("[2001:db8::1]:7000"), udp("10.0.0.2:5000"),
				udp("10.0.0.3:5000"), udp("10.0.0.4:5000"), udp("10.0.0.5:5000"), udp("10.0.0.6:5000")}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := hostCandidates(c.addrs, 5000, c.tcp...)
			if !slices.Equal(got, c.want) {
				t.Errorf("got  %v\nwant %v", got, c.want)
			}
			if len(got) > wire.MaxCandidates {
				t.Errorf("%d candidates", len(got))
			}
		})
	}
}

func TestTCPTargets(t *testing.T) {
	a, b := netip.MustParseAddrPort("198.51.100.1:1000"), netip.MustParseAddrPort("192.168.1.2:1000")
	tg := newTCPTargets(a)
	got, changed := tg.snapshot()
	if !slices.Equal(got, []netip.AddrPort{a}) {
		t.Fatalf("targets %v", got)
	}
	tg.add([]netip.AddrPort{a, {}, netip.MustParseAddrPort("0.0.0.0:1")})
	select {
	case <-changed:
		t.Fatal("changed without a new target")
	default:
	}
	tg.add([]netip.AddrPort{netip.MustParseAddrPort("[::ffff:192.168.1.2]:1000")})
	select {
	case <-changed:
	default:
		t.Fatal("a new target did not signal a change")
	}
	if got, _ := tg.snapshot(); !slices.Equal(got, []netip.AddrPort{a, b}) {
		t.Fatalf("targets %v", got)
	}
	if !tg.hasIP(b.Addr()) || tg.hasIP(netip.MustParseAddr("192.168.1.3")) {
		t.Error("hasIP")
	}
	for i := range 3 * maxTCPTargets {
		tg.add([]netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), 1)})
	}
	if got, _ := tg.snapshot(); len(got) != maxTCPTargets {
		t.Errorf("%d targets, bound %d", len(got), maxTCPTargets)
	}
}

// TestIntroductionSignalsBack: on loopback with a real ewfd, the target of
// an introduction SIGNALs its candidates back and the dialer accepts them
// under the introduction's SECRET; a SIGNAL under another SECRET is
// dropped; a SIGNAL that arrives before its introduction is kept and
// applied when the introduction comes.
func TestIntroductionSignalsBack(t *testing.T) {
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	srv := d.Addrs()[0].String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func(name string) *Node {
		n, err := Open(ctx, Config{Server: srv, IdentityFile: filepath.Join(t.TempDir(), name+".json"), EnableTCP: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	ln, dn := open("listener"), open("dialer")
	go func() {
		if c, err := ln.Accept(ctx); err == nil {
			c.Close()
		}
	}()
	c, err := dn.Dial(ctx, ln.ID(), TransportUDP)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	signalled := func() int {
		dn.mu.Lock()
		defer dn.mu.Unlock()
		if s := dn.sessions[ln.ID()]; s != nil {
			return s.nsignalled
		}
		return -1
	}
	deadline := time.Now().Add(5 * time.Second)
	for signalled() < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := signalled(); n != 1 {
		t.Fatalf("dialer accepted %d SIGNALs from the listener, want 1", n)
	}

	// A SIGNAL under another SECRET (an introduction that is not the live
	// one) is dropped.
	var other wire.Secret
	other[0] = 1
	if err := ln.rc.Signal(ctx, ln.self, ln.key, dn.self, other, client.Signal{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if n := signalled(); n != 1 {
		t.Fatalf("a SIGNAL under another SECRET was accepted (%d)", n)
	}

	// Before the introduction: kept, then applied.
	var early wire.Secret
	early[0] = 2
	third := open("third")
	if err := third.rc.Signal(ctx, third.self, third.key, dn.self, early, client.Signal{HasNAT: true, NATClass: 7}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		dn.mu.Lock()
		_, ok := dn.pendingSignals[third.self]
		dn.mu.Unlock()
		if ok {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	dn.addSession(third.self, early, nil)
	if c, ok := dn.peerNATClass(third.self); !ok || c != 7 {
		t.Errorf("early SIGNAL not applied: %v %v", c, ok)
	}
	// Nodes before the server (deferred), so that nothing waits for it.
	for _, n := range []*Node{ln, dn, third} {
		n.Close()
	}
}

// TestRoles: what a node concludes about a NAT for birthday probing, from
// discovery or, before it answers, from whether the NAT kept the port.
func TestRoles(t *testing.T) {
	for _, c := range []struct {
		class natdisco.Class
		role  natRole
		delta int
	}{
		{natdisco.Class{}, roleUnknown, 0},
		{natdisco.Class{Mapping: natdisco.MappingEIM, Filtering: natdisco.FilteringAPDF}, roleEasy, 0},
		{natdisco.Class{Public: true}, roleEasy, 0},
		{natdisco.Class{Mapping: natdisco.MappingAPDM, Ports: natdisco.PortsRandom}, roleHard, 0},
		{natdisco.Class{Mapping: natdisco.MappingADM}, roleHard, 0},
		{natdisco.Class{Mapping: natdisco.MappingAPDM, Ports: natdisco.PortsSequential, Delta: 2}, roleSeq, 2},
	} {
		if r, d := roleOf(c.class); r != c.role || d != c.delta {
			t.Errorf("roleOf(%v) = %v, %d; want %v, %d", c.class, r, d, c.role, c.delta)
		}
	}
	pub := netip.MustParseAddrPort("203.0.113.5:40000")
	if r := guessRole(pub, []uint16{1234, 40000}); r != roleEasy {
		t.Errorf("kept port: %v", r)
	}
	if r := guessRole(pub, []uint16{1234}); r != roleHard {
		t.Errorf("changed port: %v", r)
	}
	if r := guessRole(pub, nil); r != roleUnknown {
		t.Errorf("no local port known: %v", r)
	}
	if r := guessRole(netip.AddrPort{}, []uint16{1}); r != roleUnknown {
		t.Errorf("no public address: %v", r)
	}
}

// TestNoPathErrorDiagnoses: the error names both sides' NATs' effect and
// matches ErrNoDirectPath.
func TestNoPathErrorDiagnoses(t *testing.T) {
	hard := natdisco.Class{Mapping: natdisco.MappingAPDM, Filtering: natdisco.FilteringAPDF, Ports: natdisco.PortsRandom}
	e := &NoPathError{Local: hard, Remote: hard, Diagnosis: natdisco.Diagnose(hard, hard), Detail: "42 punches sent, 0 received"}
	if !errors.Is(e, ErrNoDirectPath) {
		t.Fatal("does not match ErrNoDirectPath")
	}
	if !strings.Contains(e.Error(), "both peers are behind NATs that map each destination to a new random port") ||
		!strings.Contains(e.Error(), "42 punches sent") {
		t.Errorf("Error() = %q", e.Error())
	}
}
