//go:build linux

package natlab

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/natdisco"
)

// Where ewfd serves RFC 5780 in the discovery lab: the server host's two
// addresses, ports 3478 and 3479.
const (
	discoServer    = "203.0.113.1:3478"
	discoAlternate = "203.0.113.2:3479"
)

// discoCase is one row of the classification table.
type discoCase struct {
	router RouterSpec // zero Name: a public host
	want   natdisco.Class
}

// discoTable is what package natdisco must report behind each lab NAT,
// written out by hand so that a change is a visible diff. Every mapping,
// filtering and port behaviour the lab has is here.
var discoTable = func() []discoCase {
	const (
		eim, apdm = natdisco.MappingEIM, natdisco.MappingAPDM
		eif, adf  = natdisco.FilteringEIF, natdisco.FilteringADF
		apdf      = natdisco.FilteringAPDF
		pres      = natdisco.PortsPreserved
	)
	return []discoCase{
		{RouterSpec{}, natdisco.Class{Mapping: eim, Filtering: eif, Ports: pres, Hairpin: true, Public: true}},
		{RouterSpec{NAT: FullCone}, natdisco.Class{Mapping: eim, Filtering: eif, Ports: pres}},
		{RouterSpec{NAT: Restricted, Hairpin: true}, natdisco.Class{Mapping: eim, Filtering: adf, Ports: pres, Hairpin: true}},
		{RouterSpec{NAT: PortRestricted}, natdisco.Class{Mapping: eim, Filtering: apdf, Ports: pres}},
		{RouterSpec{NAT: Symmetric}, natdisco.Class{Mapping: apdm, Filtering: apdf, Ports: natdisco.PortsRandom}},
		{RouterSpec{NAT: SymmetricSequential, Hairpin: true}, natdisco.Class{Mapping: apdm, Filtering: apdf, Ports: natdisco.PortsSequential, Delta: 1, Hairpin: true}},
		{RouterSpec{NAT: CGNAT}, natdisco.Class{Mapping: eim, Filtering: apdf, Ports: pres}},
	}
}()

func discoName(r RouterSpec) string {
	if r.NAT == "" {
		return "none"
	}
	n := string(r.NAT)
	if r.Hairpin {
		n += "+hairpin"
	}
	return n
}

// discoLab builds one host per row of discoTable and starts ewfd with
// --alternate on the server host.
func discoLab(t *testing.T) (*Lab, string) {
	t.Helper()
	Skip(t)
	ewfd, ewf := BuildBinaries(t)
	var spec Spec
	for _, c := range discoTable {
		name := discoName(c.router)
		r := c.router
		if r.NAT != "" {
			r.Name = name + "-gw"
			spec.Routers = append(spec.Routers, r)
		}
		spec.Hosts = append(spec.Hosts, HostSpec{Name: name, Router: r.Name})
	}
	lab := New(t, spec)
	srv, err := lab.Start(ServerHost, ewfd, "-listen", discoServer, "-alternate", discoAlternate,
		"-data", t.TempDir(), "-log-level", "warn")
	if err != nil {
		t.Fatal(err)
	}
	if err := waitSTUN(lab, "none", netip.MustParseAddrPort(discoAlternate)); err != nil {
		t.Fatalf("ewfd did not answer on its alternate address: %v\n%s", err, strings.Join(srv.Lines(), "\n"))
	}
	return lab, ewf
}

// waitSTUN waits until a Binding request from host to dst is answered.
func waitSTUN(lab *Lab, host string, dst netip.AddrPort) error {
	c, err := lab.ListenUDP(host, 0)
	if err != nil {
		return err
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	buf := make([]byte, 1500)
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		if _, err := c.WriteToUDPAddrPort(req.Raw, dst); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		if _, _, err := c.ReadFromUDPAddrPort(buf); err == nil {
			return nil
		}
	}
	return errors.New("no answer")
}

// TestNATDiscovery classifies every lab NAT with package natdisco against
// the real ewfd (with --alternate), checks the independent RFC 5780 client
// below agrees on mapping and filtering, and runs `ewf nat` behind the
// hardest NAT for its stable line.
func TestNATDiscovery(t *testing.T) {
	lab, ewf := discoLab(t)
	type result struct {
		res    natdisco.Result
		err    error
		m      Mapping
		f      Filtering
		rfcErr error
	}
	results := make([]chan result, len(discoTable))
	for i, c := range discoTable {
		results[i] = make(chan result, 1)
		host := discoName(c.router)
		go func() {
			var r result
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			r.res, r.err = natdisco.Classify(ctx, natdisco.Config{
				Server: netip.MustParseAddrPort(discoServer),
				Listen: func(string) (natdisco.Conn, error) {
					c, err := lab.ListenUDP(host, 0)
					if err != nil {
						return nil, err
					}
					return natdisco.UDPConn(c), nil
				},
				LocalAddrs: func() ([]netip.Addr, error) { return []netip.Addr{lab.Addr(host)}, nil },
				Timeout:    200 * time.Millisecond,
			})
			r.m, r.f, r.rfcErr = rfc5780Client(lab, host, netip.MustParseAddrPort(discoServer))
			results[i] <- r
		}()
	}
	for i, c := range discoTable {
		name := discoName(c.router)
		r := <-results[i]
		if r.err != nil {
			t.Errorf("%s: natdisco: %v", name, r.err)
			continue
		}
		t.Logf("%-28s %s public=%v ports=%v", name, r.res.Class, r.res.Class.Public, r.res.Ports)
		if r.res.Class != c.want {
			t.Errorf("%s: natdisco says %v public=%v, want %v public=%v", name, r.res.Class, r.res.Class.Public, c.want, c.want.Public)
		}
		// The independent client must agree with the lab's own probe
		// (what the NAT type promises) on mapping and filtering.
		n := c.router.NAT
		if n == "" {
			n = None
		}
		exp := n.Expected(c.router.Hairpin)
		if r.rfcErr != nil {
			t.Errorf("%s: RFC 5780 client: %v", name, r.rfcErr)
		} else if r.m != exp.Mapping || r.f != exp.Filtering {
			t.Errorf("%s: RFC 5780 client against ewfd says %s/%s, the NAT is %s/%s", name, r.m, r.f, exp.Mapping, exp.Filtering)
		}
	}

	p, err := lab.Start(discoName(RouterSpec{NAT: SymmetricSequential, Hairpin: true}), ewf, "nat", "--server", discoServer)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(30 * time.Second); err != nil {
		t.Fatalf("ewf nat: %v\n%s", err, strings.Join(p.Lines(), "\n"))
	}
	out := p.Stdout()
	if first, _, _ := strings.Cut(out, "\n"); first != "nat mapping=apdm filtering=apdf ports=sequential hairpin=yes ipv6=no" {
		t.Errorf("ewf nat printed %q", out)
	}
	if !strings.Contains(out, "predicted") {
		t.Errorf("ewf nat output does not explain sequential ports:\n%s", out)
	}
}

// rfc5780Client is an RFC 5780 §4.3/§4.4 client written from the RFC text
// (the logic of pion/stun's cmd/stun-nat-behaviour, re-implemented here
// with pion's message types only), so that the server is checked by code
// that shares nothing with package natdisco: Test I to the primary, Test
// II to the OTHER-ADDRESS's IP and the primary port, Test III to the
// OTHER-ADDRESS, comparing XOR-MAPPED-ADDRESSes; then, from a new socket,
// CHANGE-REQUEST "change IP and port" and "change port".
func rfc5780Client(lab *Lab, host string, server netip.AddrPort) (Mapping, Filtering, error) {
	ask := func(c *net.UDPConn, dst netip.AddrPort, change byte) (*stun.Message, error) {
		for range 3 {
			m := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
			if change != 0 {
				m.Add(stun.AttrChangeRequest, []byte{0, 0, 0, change})
				m.WriteHeader()
			}
			if _, err := c.WriteToUDPAddrPort(m.Raw, dst); err != nil {
				return nil, err
			}
			buf := make([]byte, 1500)
			_ = c.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
			for {
				n, _, err := c.ReadFromUDPAddrPort(buf)
				if err != nil {
					break
				}
				var r stun.Message
				r.Raw = buf[:n]
				if r.Decode() == nil && r.TransactionID == m.TransactionID {
					return &r, nil
				}
			}
		}
		return nil, nil // no answer: a result, not an error
	}
	mapped := func(r *stun.Message) (string, error) {
		var x stun.XORMappedAddress
		if err := x.GetFrom(r); err != nil {
			return "", err
		}
		return x.String(), nil
	}

	// Mapping: RFC 5780 §4.3.
	c, err := lab.ListenUDP(host, 0)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	r1, err := ask(c, server, 0)
	if err != nil || r1 == nil {
		return "", "", errors.Join(errors.New("Test I unanswered"), err)
	}
	var other stun.OtherAddress
	if err := other.GetFrom(r1); err != nil {
		return "", "", errors.New("no OTHER-ADDRESS: the server does not do RFC 5780")
	}
	oip, _ := netip.AddrFromSlice(other.IP)
	m1, err := mapped(r1)
	if err != nil {
		return "", "", err
	}
	var mapping Mapping
	r2, err := ask(c, netip.AddrPortFrom(oip.Unmap(), server.Port()), 0)
	if err != nil || r2 == nil {
		return "", "", errors.Join(errors.New("Test II unanswered"), err)
	}
	m2, _ := mapped(r2)
	if m2 == m1 {
		mapping = EIM
	} else {
		r3, err := ask(c, netip.AddrPortFrom(oip.Unmap(), uint16(other.Port)), 0)
		if err != nil || r3 == nil {
			return "", "", errors.Join(errors.New("Test III unanswered"), err)
		}
		if m3, _ := mapped(r3); m3 == m2 {
			mapping = ADM
		} else {
			mapping = APDM
		}
	}

	// Filtering: RFC 5780 §4.4, on a fresh socket.
	f, err := lab.ListenUDP(host, 0)
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	if r, err := ask(f, server, 0); err != nil || r == nil {
		return "", "", errors.Join(errors.New("filtering Test I unanswered"), err)
	}
	filtering := APDF
	if r, err := ask(f, server, 0x06); err != nil {
		return "", "", err
	} else if r != nil {
		filtering = EIF
	} else if r, err := ask(f, server, 0x02); err != nil {
		return "", "", err
	} else if r != nil {
		filtering = ADF
	}
	return mapping, filtering, nil
}
