package server_test

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/server"
)

// probe5780 is an unconnected UDP socket, so the test sees which server
// address each answer comes from.
type probe5780 struct {
	t *testing.T
	c *net.UDPConn
}

func newProbe5780(t *testing.T, host string) *probe5780 {
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(host), 0)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &probe5780{t, c}
}

func (p *probe5780) local() netip.AddrPort { return p.c.LocalAddr().(*net.UDPAddr).AddrPort() }

// answer5780 is what a Binding answer said and where it came from.
type answer5780 struct {
	from, mapped, origin, other netip.AddrPort
	size                        int
}

// ask sends a Binding request (with CHANGE-REQUEST flags when change != 0,
// FINGERPRINT when fp) to dst and returns the answer, ok false on silence.
func (p *probe5780) ask(dst netip.AddrPort, change byte, fp bool) (answer5780, bool) {
	p.t.Helper()
	m := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
	if change != 0 {
		m.Add(stun.AttrChangeRequest, []byte{0, 0, 0, change})
	}
	if fp {
		if err := stun.Fingerprint.AddTo(m); err != nil {
			p.t.Fatal(err)
		}
	}
	m.WriteHeader()
	if _, err := p.c.WriteToUDPAddrPort(m.Raw, dst); err != nil {
		p.t.Fatal(err)
	}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(300 * time.Millisecond)
	for {
		_ = p.c.SetReadDeadline(deadline)
		n, from, err := p.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return answer5780{}, false
		}
		var r stun.Message
		r.Raw = append([]byte(nil), buf[:n]...)
		if r.Decode() != nil || r.TransactionID != m.TransactionID {
			continue
		}
		a := answer5780{from: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), size: n}
		var x stun.XORMappedAddress
		if x.GetFrom(&r) == nil {
			a.mapped = toAP(x.IP, x.Port)
		}
		var o stun.ResponseOrigin
		if o.GetFrom(&r) == nil {
			a.origin = toAP(o.IP, o.Port)
		}
		var oa stun.OtherAddress
		if oa.GetFrom(&r) == nil {
			a.other = toAP(oa.IP, oa.Port)
		}
		return a, true
	}
}

func toAP(ip net.IP, port int) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), uint16(port))
}

const (
	changeIP   = 0x04
	changePort = 0x02
)

// TestRFC5780TwoAddresses checks every CHANGE-REQUEST against a daemon with
// a second IP (127.0.0.2) and port: the answer leaves from the socket the
// flags name, always to the request's source, and names itself in
// RESPONSE-ORIGIN and the diagonal socket in OTHER-ADDRESS.
func TestRFC5780TwoAddresses(t *testing.T) {
	d := startDaemon(t, server.Config{Listen: []string{"127.0.0.1:0"}, Alternate: "127.0.0.2:0"})
	alt, ok := d.AlternateAddrs()
	if !ok {
		t.Fatal("AlternateAddrs not set")
	}
	if alt[0][0] != d.Addrs()[0] || alt[1][1].Addr() != netip.MustParseAddr("127.0.0.2") ||
		alt[0][1].Port() != alt[1][1].Port() || alt[1][0].Port() != alt[0][0].Port() || alt[0][1].Port() == alt[0][0].Port() {
		t.Fatalf("alternate addresses %v", alt)
	}
	p := newProbe5780(t, "127.0.0.1")
	for i := range 2 {
		for j := range 2 {
			for _, change := range []byte{0, changePort, changeIP, changeIP | changePort} {
				wi, wj := i, j
				if change&changeIP != 0 {
					wi = 1 - i
				}
				if change&changePort != 0 {
					wj = 1 - j
				}
				a, ok := p.ask(alt[i][j], change, false)
				if !ok {
					t.Fatalf("to %v change %x: no answer", alt[i][j], change)
				}
				if a.from != alt[wi][wj] || a.origin != alt[wi][wj] || a.other != alt[1-wi][1-wj] || a.mapped != p.local() {
					t.Fatalf("to %v change %x: from %v origin %v other %v mapped %v; want from/origin %v other %v mapped %v",
						alt[i][j], change, a.from, a.origin, a.other, a.mapped, alt[wi][wj], alt[1-wi][1-wj], p.local())
				}
			}
		}
	}
}

// TestRFC5780OnePortOnly: with a second port only, OTHER-ADDRESS differs
// in port, a change of port is honoured and a change of IP is dropped
// (the server cannot make it; answering from the same IP would lie).
func TestRFC5780OnePortOnly(t *testing.T) {
	d := startDaemon(t, server.Config{Listen: []string{"127.0.0.1:0"}, Alternate: ":0"})
	alt, _ := d.AlternateAddrs()
	p := newProbe5780(t, "127.0.0.1")
	a, ok := p.ask(alt[0][0], 0, false)
	if !ok || a.other != alt[0][1] || a.origin != alt[0][0] {
		t.Fatalf("plain answer %+v ok=%v, want other %v", a, ok, alt[0][1])
	}
	if a, ok := p.ask(alt[0][0], changePort, false); !ok || a.from != alt[0][1] {
		t.Fatalf("change port: %+v ok=%v, want from %v", a, ok, alt[0][1])
	}
	for _, change := range []byte{changeIP, changeIP | changePort} {
		if a, ok := p.ask(alt[0][0], change, false); ok {
			t.Fatalf("change %x answered from %v; want silence", change, a.from)
		}
	}
}

// TestRFC5780OffByDefault: without Alternate, no OTHER-ADDRESS tells a
// client that discovery is off, and a CHANGE-REQUEST is answered from the
// socket it reached, as before.
func TestRFC5780OffByDefault(t *testing.T) {
	d := startDaemon(t, server.Config{Listen: []string{"127.0.0.1:0"}})
	if _, ok := d.AlternateAddrs(); ok {
		t.Fatal("AlternateAddrs set without Alternate")
	}
	p := newProbe5780(t, "127.0.0.1")
	a, ok := p.ask(d.Addrs()[0], changeIP|changePort, false)
	if !ok || a.from != d.Addrs()[0] || a.other.IsValid() || a.origin.IsValid() {
		t.Fatalf("answer %+v ok=%v", a, ok)
	}
}

// TestRFC5780AmplificationIPv6: a bare 20-byte request from IPv6 leaves
// room for only one of the two RFC 5780 attributes within the 2× bound;
// every answer, measured as a datagram, stays within it.
func TestRFC5780AmplificationIPv6(t *testing.T) {
	if len(loopbacks(t)) < 2 {
		t.Skip("no IPv6 loopback")
	}
	d := startDaemon(t, server.Config{Listen: []string{"[::1]:0"}, Alternate: ":0"})
	alt, _ := d.AlternateAddrs()
	p := newProbe5780(t, "::1")
	for _, tc := range []struct {
		change    byte
		fp        bool
		wantOther bool
	}{
		{0, false, false},
		{changePort, false, true}, // CHANGE-REQUEST makes the request 8 bytes longer
		{0, true, true},
	} {
		a, ok := p.ask(alt[0][0], tc.change, tc.fp)
		if !ok {
			t.Fatalf("%+v: no answer", tc)
		}
		req := 20
		if tc.change != 0 {
			req += 8
		}
		if tc.fp {
			req += 8
		}
		if a.size+48 > 2*(req+48) {
			t.Fatalf("%+v: %d-byte answer to a %d-byte request breaks the 2x bound", tc, a.size, req)
		}
		if !a.origin.IsValid() || a.other.IsValid() != tc.wantOther || a.mapped != p.local() {
			t.Fatalf("%+v: answer %+v", tc, a)
		}
	}
}

// TestRFC5780RateLimited: answers through the other sockets count against
// the per-source rate like any request.
func TestRFC5780RateLimited(t *testing.T) {
	d := startDaemon(t, server.Config{Listen: []string{"127.0.0.1:0"}, Alternate: "127.0.0.2:0", Rate: 0.001, Burst: 3})
	alt, _ := d.AlternateAddrs()
	p := newProbe5780(t, "127.0.0.1")
	answered := 0
	for range 8 {
		if _, ok := p.ask(alt[0][0], changeIP|changePort, false); ok {
			answered++
		}
	}
	if answered != 3 {
		t.Fatalf("%d of 8 answered with a burst of 3", answered)
	}
}

func TestRFC5780BadConfig(t *testing.T) {
	for _, tc := range []struct {
		listen    []string
		alternate string
		want      string
	}{
		{[]string{":0"}, "127.0.0.2:0", "concrete IP"},
		{[]string{"127.0.0.1:0"}, "[::1]:0", "concrete IP"},
		{[]string{"127.0.0.1:0"}, "localhost:0", "IP address"},
		{[]string{"127.0.0.1:0"}, "127.0.0.2", "Alternate"},
	} {
		_, err := server.Start(server.Config{Listen: tc.listen, Alternate: tc.alternate, DataDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Listen %v Alternate %q: err %v, want %q", tc.listen, tc.alternate, err, tc.want)
		}
	}
}

// TestRFC5780ServingDoesNotAllocate: the RFC 5780 answers, from the socket
// asked and from another socket, cost no allocation in the whole round
// trip (AllocsPerRun counts every goroutine, the readers included).
func TestRFC5780ServingDoesNotAllocate(t *testing.T) {
	if testing.Short() {
		t.Skip("round trips on loopback")
	}
	d := startDaemon(t, server.Config{Listen: []string{"127.0.0.1:0"}, Alternate: "127.0.0.2:0", UDPReaders: 1})
	alt, _ := d.AlternateAddrs()
	p := newProbe5780(t, "127.0.0.1")
	buf := make([]byte, 1500)
	for _, change := range []byte{0, changeIP | changePort} {
		m := stun.MustBuild(stun.TransactionID, stun.BindingRequest)
		if change != 0 {
			m.Add(stun.AttrChangeRequest, []byte{0, 0, 0, change})
			m.WriteHeader()
		}
		req := m.Raw
		rt := func() {
			if _, err := p.c.WriteToUDPAddrPort(req, alt[0][0]); err != nil {
				t.Fatal(err)
			}
			if _, _, err := p.c.ReadFromUDPAddrPort(buf); err != nil {
				t.Fatal(err)
			}
		}
		_ = p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		rt()
		if allocs := testing.AllocsPerRun(300, rt); allocs > 0.05 {
			t.Errorf("change %x: %.2f allocations per round trip, want 0", change, allocs)
		}
	}
}
