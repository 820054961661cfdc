package ewf

import (
	"net/netip"
	"testing"
)

// TestHostTCPAddr: the address of the TCP side of the other family is the
// host's first offerable address of that family, for IPv6 a global one
// before a unique local one; never loopback or link-local, and none when
// the host has no such address (then no host side, and no candidate).
func TestHostTCPAddr(t *testing.T) {
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
		is4   bool
		want  string // "" for none
	}{
		{"IPv6: global before ULA", addrs("127.0.0.1", "::1", "fe80::1%eth0", "fd00::2", "10.0.1.2", "2001:db8:0:1::2"), false, "2001:db8:0:1::2"},
		{"IPv6: a ULA when that is all", addrs("fe80::1%eth0", "fd00::2", "10.0.1.2"), false, "fd00::2"},
		{"IPv6: none, loopback and link-local never", addrs("::1", "fe80::1%eth0", "10.0.1.2"), false, ""},
		{"IPv4: first LAN address", addrs("127.0.0.1", "169.254.3.4", "2001:db8::2", "10.0.1.2", "192.168.7.2"), true, "10.0.1.2"},
		{"IPv4: a mapped address counts as IPv4", addrs("::ffff:10.0.1.2"), true, "10.0.1.2"},
		{"IPv4: none", addrs("127.0.0.1", "2001:db8::2"), true, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := hostTCPAddr(c.addrs, c.is4)
			if (c.want == "" && got.IsValid()) || (c.want != "" && got != netip.MustParseAddr(c.want)) {
				t.Errorf("got %v, want %q", got, c.want)
			}
		})
	}
}
