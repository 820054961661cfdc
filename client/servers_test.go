package client

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// dnsServer is a tiny authoritative DNS server on loopback UDP for the
// names of the tests: SRV records listed out of priority order, A records
// for their targets, nothing else (NXDOMAIN).
func dnsServer(t *testing.T) *net.Resolver {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { pc.Close(); <-done })
	srv := map[string][]dnsmessage.SRVResource{
		"_ewf._udp.example.org.": {
			{Priority: 20, Weight: 1, Port: 4000, Target: dnsmessage.MustNewName("b.example.org.")},
			{Priority: 10, Weight: 1, Port: 3000, Target: dnsmessage.MustNewName("a.example.org.")},
			{Priority: 30, Weight: 1, Port: 5000, Target: dnsmessage.MustNewName("gone.example.org.")},
		},
	}
	a := map[string][4]byte{"a.example.org.": {127, 0, 0, 2}, "b.example.org.": {127, 0, 0, 3}}
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			name := q.Name.String()
			rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true}
			_, srvOK := srv[name]
			_, aOK := a[name]
			if !srvOK && !aOK {
				rh.RCode = dnsmessage.RCodeNameError
			}
			b := dnsmessage.NewBuilder(nil, rh)
			b.EnableCompression()
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			rr := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}
			switch q.Type {
			case dnsmessage.TypeSRV:
				for _, r := range srv[name] {
					b.SRVResource(rr, r)
				}
			case dnsmessage.TypeA:
				if ip, ok := a[name]; ok {
					b.AResource(rr, dnsmessage.AResource{A: ip})
				}
			}
			out, err := b.Finish()
			if err == nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	addr := pc.LocalAddr().String()
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", addr)
	}}
}

func TestResolveServers(t *testing.T) {
	r := dnsServer(t)
	ctx := context.Background()
	ap := netip.MustParseAddrPort
	for _, tc := range []struct {
		spec string
		want []netip.AddrPort
	}{
		// SRV targets by priority, whatever the order of the records; a
		// target without an address is left out.
		{"_ewf._udp.example.org", []netip.AddrPort{ap("127.0.0.2:3000"), ap("127.0.0.3:4000")}},
		// A list keeps its order, SRV expanded in place, duplicates once.
		{"127.0.0.9:1, _ewf._udp.example.org,127.0.0.2:3000, a.example.org",
			[]netip.AddrPort{ap("127.0.0.9:1"), ap("127.0.0.2:3000"), ap("127.0.0.3:4000"), ap("127.0.0.2:3478")}},
		// Entries that do not resolve are skipped while others do.
		{"_ewf._udp.nothing.example.org,nothing.example.org:1,127.0.0.5:5", []netip.AddrPort{ap("127.0.0.5:5")}},
		{"[::1]:7", []netip.AddrPort{ap("[::1]:7")}},
	} {
		got, err := ResolveServers(ctx, tc.spec, r)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ResolveServers(%q) = %v, %v; want %v", tc.spec, got, err, tc.want)
		}
	}
	for _, spec := range []string{"", " , ", "a.example.org:0", "127.0.0.1:x,127.0.0.1:1"} {
		if _, err := ResolveServers(ctx, spec, r); !errors.Is(err, errBadServer) {
			t.Errorf("ResolveServers(%q): %v, want a bad-server error", spec, err)
		}
	}
	if _, err := ResolveServers(ctx, "_ewf._udp.nothing.example.org", r); err == nil || errors.Is(err, errBadServer) {
		t.Errorf("unresolvable SRV name: %v, want a lookup error", err)
	}
}
