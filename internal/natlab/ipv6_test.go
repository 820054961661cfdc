//go:build linux

package natlab

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/natdisco"
)

// TestIPv6Firewall checks the lab's IPv6 side (RouterSpec.IPv6): hosts
// have global addresses that ewfd sees untranslated, the routers' stateful
// firewalls drop unsolicited inbound packets and admit the flows an inside
// host started (exact remote address and port), two dual-stack hosts
// whose IPv4 is behind symmetric NATs reach each other directly over IPv6
// once both have sent, and natdisco and `ewf nat` report IPv6.
func TestIPv6Firewall(t *testing.T) {
	Skip(t)
	start := time.Now()
	ewfd, ewf := BuildBinaries(t)
	defer func() { t.Logf("total %v", time.Since(start).Round(time.Millisecond)) }()
	lab := New(t, Spec{
		Routers: []RouterSpec{
			{Name: "sym6a-gw", NAT: Symmetric, IPv6: true},
			{Name: "sym6b-gw", NAT: Symmetric, IPv6: true},
		},
		Hosts: []HostSpec{{Name: "dual-a", Router: "sym6a-gw"}, {Name: "dual-b", Router: "sym6b-gw"}},
	})
	t.Logf("binaries and lab after %v", time.Since(start).Round(time.Millisecond))
	srv6, _ := lab.ServerAddrs6()
	stun6 := netip.AddrPortFrom(srv6, 3478)
	p, err := lab.Start(ServerHost, ewfd, "-listen", discoServer+",[2001:db8::1]:3478",
		"-alternate", discoAlternate, "-data", t.TempDir(), "-log-level", "warn")
	if err != nil {
		t.Fatal(err)
	}
	a6, ok := lab.Addr6("dual-a")
	b6, _ := lab.Addr6("dual-b")
	if !ok || !natdisco.GlobalIPv6(a6) {
		t.Fatalf("dual-a has no global IPv6 address: %v", a6)
	}

	// ewfd answers over IPv6 and sees the host's own address.
	a, err := lab.ListenUDP6("dual-a", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	aLocal := netip.AddrPortFrom(a6, uint16(a.LocalAddr().(*net.UDPAddr).Port))
	var mapped netip.AddrPort
	for deadline := time.Now().Add(20 * time.Second); !mapped.IsValid() && time.Now().Before(deadline); {
		mapped = stunOnce(a, stun6)
	}
	if mapped != aLocal {
		t.Fatalf("ewfd over IPv6 saw %v, want the host's own %v (no NAT66)\n%s", mapped, aLocal, strings.Join(p.Lines(), "\n"))
	}

	t.Logf("lab up, ewfd answering over IPv6 after %v", time.Since(start).Round(time.Millisecond))

	// The firewall: the server sends from two ports to dual-a's socket;
	// only the port dual-a talked to gets through, and only after it did.
	s1, err := listenUDP6In(lab, ServerHost, 3600)
	if err != nil {
		t.Fatal(err)
	}
	defer s1.Close()
	s2, err := listenUDP6In(lab, ServerHost, 3601)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := sendAndSee(s1, a, aLocal, "unsolicited"); got {
		t.Fatal("an unsolicited IPv6 packet passed the firewall")
	}
	if _, err := a.WriteToUDPAddrPort([]byte("open"), netip.AddrPortFrom(srv6, 3600)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if got := sendAndSee(s1, a, aLocal, "reply"); !got {
		t.Fatal("a reply from the endpoint the host sent to did not pass the firewall")
	}
	if got := sendAndSee(s2, a, aLocal, "other-port"); got {
		t.Fatal("a packet from another port of the same address passed the firewall (want APDF)")
	}

	// Two dual-stack hosts behind symmetric IPv4 NATs: direct over IPv6
	// once both have sent (the punch any ICE-like client does).
	b, err := lab.ListenUDP6("dual-b", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	bLocal := netip.AddrPortFrom(b6, uint16(b.LocalAddr().(*net.UDPAddr).Port))
	if sendAndSee(a, b, bLocal, "first") {
		t.Fatal("dual-a reached dual-b before dual-b had sent: the firewall is open")
	}
	if !sendAndSee(b, a, aLocal, "punch-b") {
		t.Fatal("dual-b's packet to dual-a did not arrive although dual-a had sent to it")
	}
	if !sendAndSee(a, b, bLocal, "punch-a") {
		t.Fatal("dual-a's packet to dual-b did not arrive after both had sent")
	}

	t.Logf("firewall checked after %v", time.Since(start).Round(time.Millisecond))

	// natdisco: the IPv4 class is the NAT's, and IPv6 is present.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := natdisco.Classify(ctx, natdisco.Config{
		Server: netip.MustParseAddrPort(discoServer), Server6: stun6,
		Listen: func(network string) (natdisco.Conn, error) {
			var c *net.UDPConn
			var err error
			if network == "udp6" {
				c, err = lab.ListenUDP6("dual-a", 0)
			} else {
				c, err = lab.ListenUDP("dual-a", 0)
			}
			if err != nil {
				return nil, err
			}
			return natdisco.UDPConn(c), nil
		},
		LocalAddrs: func() ([]netip.Addr, error) { return []netip.Addr{lab.Addr("dual-a"), a6}, nil },
		Timeout:    200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := natdisco.Class{Mapping: natdisco.MappingAPDM, Filtering: natdisco.FilteringAPDF, Ports: natdisco.PortsRandom, IPv6: true}
	if res.Class != want || res.Mapped6.Addr() != a6 {
		t.Fatalf("natdisco on dual-a: %v mapped6 %v, want %v from %v", res.Class, res.Mapped6, want, a6)
	}

	t.Logf("classified after %v", time.Since(start).Round(time.Millisecond))
	np, err := lab.Start("dual-a", ewf, "nat", "--server", discoServer)
	if err != nil {
		t.Fatal(err)
	}
	if err := np.Wait(30 * time.Second); err != nil {
		t.Fatalf("ewf nat: %v\n%s", err, strings.Join(np.Lines(), "\n"))
	}
	if first, _, _ := strings.Cut(np.Stdout(), "\n"); first != "nat mapping=apdm filtering=apdf ports=random hairpin=no ipv6=yes" {
		t.Errorf("ewf nat on a dual-stack host behind a symmetric NAT printed %q", np.Stdout())
	}
}

// listenUDP6In opens a socket on the server host's first IPv6 address (a
// wildcard socket could answer from the second one, which the firewall
// rightly drops).
func listenUDP6In(lab *Lab, host string, port uint16) (*net.UDPConn, error) {
	var c *net.UDPConn
	a, _ := lab.ServerAddrs6()
	err := inNetns(lab.host(host).ns, func() error {
		var err error
		c, err = net.ListenUDP("udp6", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, port)))
		return err
	})
	return c, err
}

// stunOnce sends one Binding request and returns the mapped address, or
// an invalid one after 200 ms.
func stunOnce(c *net.UDPConn, dst netip.AddrPort) netip.AddrPort {
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	if _, err := c.WriteToUDPAddrPort(req.Raw, dst); err != nil {
		return netip.AddrPort{}
	}
	buf := make([]byte, 1500)
	_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		n, _, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return netip.AddrPort{}
		}
		var r stun.Message
		r.Raw = buf[:n]
		var x stun.XORMappedAddress
		if r.Decode() == nil && r.TransactionID == req.TransactionID && x.GetFrom(&r) == nil {
			ip, _ := netip.AddrFromSlice(x.IP)
			return netip.AddrPortFrom(ip, uint16(x.Port))
		}
	}
}

// sendAndSee sends token from one socket to dst (the receiver's address)
// three times and reports whether the receiver got it.
func sendAndSee(from, to *net.UDPConn, dst netip.AddrPort, token string) bool {
	buf := make([]byte, 256)
	for range 3 {
		if _, err := from.WriteToUDPAddrPort([]byte(token), dst); err != nil {
			return false
		}
		_ = to.SetReadDeadline(time.Now().Add(150 * time.Millisecond))
		for {
			n, _, err := to.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if bytes.Equal(buf[:n], []byte(token)) {
				return true
			}
		}
	}
	return false
}
