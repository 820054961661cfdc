package relay_test

import (
	"net/netip"
	"testing"

	"github.com/ewf-project/ewf/server/relay"
)

// policyCases are the peer addresses the relay must refuse or allow, in
// every encoding that can carry an IPv4 address inside IPv6 (coturn's
// CVE-2020-26262 was 0.0.0.0 and ::ffff:127.0.0.1 getting through). v6
// says which allocation family the address needs through a real relay.
var policyCases = []struct {
	name string
	addr string
	ok   bool
}{
	// IPv4 special ranges
	{"loopback", "127.0.0.1", false},
	{"loopback other", "127.8.9.10", false},
	{"unspecified", "0.0.0.0", false},
	{"this network", "0.1.2.3", false},
	{"private 10/8", "10.0.1.2", false},
	{"private 172.16/12", "172.31.255.254", false},
	{"private 192.168/16", "192.168.1.1", false},
	{"CGNAT 100.64/10", "100.64.0.1", false},
	{"CGNAT top", "100.127.255.254", false},
	{"link-local, cloud metadata", "169.254.169.254", false},
	{"multicast", "224.0.0.251", false},
	{"broadcast", "255.255.255.255", false},
	{"reserved 240/4", "240.0.0.1", false},
	{"documentation TEST-NET-1", "192.0.2.1", false},
	{"documentation TEST-NET-3 (the lab's public segment)", "203.0.113.9", false},
	{"benchmarking", "198.18.0.1", false},
	{"IETF protocol assignments", "192.0.0.8", false},
	{"public", "8.8.8.8", true},
	{"public next to CGNAT", "100.128.0.1", true},
	// IPv4-mapped
	{"mapped loopback", "::ffff:127.0.0.1", false},
	{"mapped unspecified", "::ffff:0.0.0.0", false},
	{"mapped private", "::ffff:10.0.0.1", false},
	{"mapped public", "::ffff:8.8.8.8", true},
	// IPv6
	{"v6 unspecified", "::", false},
	{"v6 loopback", "::1", false},
	{"IPv4-compatible loopback", "::127.0.0.1", false},
	{"IPv4-compatible public (deprecated form)", "::8.8.8.8", false},
	{"SIIT IPv4-translated loopback", "::ffff:0:127.0.0.1", false},
	{"NAT64 loopback", "64:ff9b::127.0.0.1", false},
	{"NAT64 private", "64:ff9b::10.1.2.3", false},
	{"NAT64 metadata", "64:ff9b::169.254.169.254", false},
	{"NAT64 public", "64:ff9b::8.8.8.8", true},
	{"local-use NAT64 /48", "64:ff9b:1::8.8.8.8", false},
	{"6to4 of loopback", "2002:7f00:1::1", false},
	{"6to4 of private", "2002:a00:1::1", false},
	{"6to4 of public", "2002:808:808::1", true},
	{"Teredo", "2001:0:4136:e378:8000:63bf:3fff:fdd2", false},
	{"Teredo with a public server", "2001:0:808:808::1", false},
	{"link-local", "fe80::1", false},
	{"link-local with zone", "fe80::1%eth0", false},
	{"unique local", "fd12:3456::1", false},
	{"multicast all nodes", "ff02::1", false},
	{"site-local", "fec0::1", false},
	{"documentation", "2001:db8::1", false},
	{"discard-only", "100::1", false},
	{"public v6", "2606:4700:4700::1111", true},
}

func TestPolicyDeniesEveryEncoding(t *testing.T) {
	var p relay.Policy
	for _, c := range policyCases {
		t.Run(c.name, func(t *testing.T) {
			ok, why := p.Allowed(netip.MustParseAddr(c.addr))
			if ok != c.ok {
				t.Fatalf("Allowed(%s) = %v (%s), want %v", c.addr, ok, why, c.ok)
			}
			if !ok && why == "" {
				t.Fatal("a refusal must say which range refused")
			}
		})
	}
	if ok, _ := p.Allowed(netip.Addr{}); ok {
		t.Fatal("the invalid address was allowed")
	}
}

// TestPolicyAllowRanges: an operator's allowed range opens that range in
// every encoding, and nothing else.
func TestPolicyAllowRanges(t *testing.T) {
	p := relay.Policy{Allow: []netip.Prefix{
		netip.MustParsePrefix("127.0.0.0/8"),
		netip.MustParsePrefix("203.0.113.0/24"),
		netip.MustParsePrefix("fd00:ab::/32"),
	}}
	for _, c := range []struct {
		addr string
		ok   bool
	}{
		{"127.0.0.1", true},
		{"::ffff:127.0.0.1", true},
		{"64:ff9b::127.0.0.1", true},
		{"2002:7f00:1::1", true},
		{"203.0.113.9", true},
		{"fd00:ab::5", true},
		{"10.0.0.1", false},
		{"::ffff:10.0.0.1", false},
		{"fd00:ac::5", false},
		{"::1", false},
	} {
		if ok, why := p.Allowed(netip.MustParseAddr(c.addr)); ok != c.ok {
			t.Errorf("Allowed(%s) = %v (%s), want %v", c.addr, ok, why, c.ok)
		}
	}
}

func TestCredentials(t *testing.T) {
	id := [16]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
	u := relay.AppendUsername(nil, unixTime(1700000000), id)
	if string(u) != "1700000000:000102030405060708090a0b0c0d0e0f" {
		t.Fatalf("username %q", u)
	}
	// The same vector as docs/PROTOCOL.md §17.3, computed with openssl.
	if pw := relay.AppendPassword(nil, []byte("ewf-golden-secret"), u); string(pw) != "cijJwm/EKovf/K65/CoXNgQgd1E=" {
		t.Fatalf("password %q", pw)
	}
	exp, got, err := relay.ParseUsername(string(u))
	if err != nil || got != id || exp.Unix() != 1700000000 {
		t.Fatalf("ParseUsername = %v %x %v", exp, got, err)
	}
	for _, bad := range []string{
		"", "alice", ":000102030405060708090a0b0c0d0e0f", "x:000102030405060708090a0b0c0d0e0f",
		"-5:000102030405060708090a0b0c0d0e0f", "1700000000:000102030405060708090A0B0C0D0E0F",
		"1700000000:000102030405060708090a0b0c0d0e0", "1700000000-000102030405060708090a0b0c0d0e0f",
		"1700000000:000102030405060708090a0b0c0d0e0g",
	} {
		if _, _, err := relay.ParseUsername(bad); err == nil {
			t.Errorf("ParseUsername(%q) accepted", bad)
		}
	}
}
