package relay

import (
	"net/netip"
)

// Policy decides which peer addresses an allocation may get a permission
// or a channel to. A TURN relay that lets anyone reach any address is an
// open proxy into the network it stands in: its loopback (the metrics
// endpoint, ewfd itself), the operator's private ranges, the cloud
// metadata service at 169.254.169.254. coturn's CVE-2020-26262 was a peer
// address of 0.0.0.0 and ::ffff:127.0.0.1 slipping through such a filter,
// so every IPv6 form that carries an IPv4 address is decoded and the
// embedded address judged too.
//
// The zero Policy refuses every address in Denied and allows the rest.
type Policy struct {
	// Allow lists ranges the operator opens although Denied covers them
	// (a lab, a relay for a private network). An address, or the IPv4
	// address embedded in it, inside one of them is allowed.
	Allow []netip.Prefix
}

// Denied are the ranges no peer address may fall in, nor any IPv4
// address embedded in an IPv6 one. Sources: the IANA special-purpose
// registries (RFC 6890 and its updates).
var Denied = mustPrefixes(
	// IPv4
	"0.0.0.0/8",       // "this network", incl. unspecified
	"10.0.0.0/8",      // private (RFC 1918)
	"100.64.0.0/10",   // CGNAT shared space (RFC 6598)
	"127.0.0.0/8",     // loopback
	"169.254.0.0/16",  // link-local, cloud metadata
	"172.16.0.0/12",   // private
	"192.0.0.0/24",    // IETF protocol assignments
	"192.0.2.0/24",    // documentation TEST-NET-1
	"192.88.99.0/24",  // 6to4 relay anycast (deprecated)
	"192.168.0.0/16",  // private
	"198.18.0.0/15",   // benchmarking
	"198.51.100.0/24", // documentation TEST-NET-2
	"203.0.113.0/24",  // documentation TEST-NET-3
	"224.0.0.0/4",     // multicast
	"240.0.0.0/4",     // reserved, incl. broadcast 255.255.255.255
	// IPv6
	"::/128",          // unspecified
	"::1/128",         // loopback
	"::/96",           // IPv4-compatible (deprecated; also judged by its IPv4)
	"::ffff:0:0/96",   // IPv4-mapped (judged by its IPv4 before this)
	"::ffff:0:0:0/96", // IPv4-translated (SIIT)
	"64:ff9b:1::/48",  // local-use NAT64 (RFC 8215): an operator's own translator
	"100::/64",        // discard-only
	"2001::/23",       // IETF protocol assignments, incl. Teredo 2001::/32, ORCHID
	"2001:db8::/32",   // documentation
	"3fff::/20",       // documentation (RFC 9637)
	"5f00::/16",       // segment routing SIDs
	"fc00::/7",        // unique local
	"fe80::/10",       // link-local
	"fec0::/10",       // site-local (deprecated)
	"ff00::/8",        // multicast
)

func mustPrefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

// Allowed reports whether a peer may be reached at a. When it may not, why
// names the range or the encoding that refused it.
func (p *Policy) Allowed(a netip.Addr) (ok bool, why string) {
	if !a.IsValid() {
		return false, "invalid"
	}
	a = a.WithZone("")
	forms := embedded(a)
	for _, f := range forms {
		if p.allowed(f) {
			return true, ""
		}
	}
	for _, f := range forms {
		for _, d := range Denied {
			if d.Contains(f) {
				return false, d.String()
			}
		}
	}
	return true, ""
}

func (p *Policy) allowed(a netip.Addr) bool {
	for _, r := range p.Allow {
		if r.Contains(a) {
			return true
		}
	}
	return false
}

// embedded returns a (unmapped) and every IPv4 address an IPv6 form of a
// carries, so that each is judged. The forms:
//
//	::ffff:a.b.c.d        IPv4-mapped: the socket sends to a.b.c.d
//	::a.b.c.d             IPv4-compatible (deprecated, RFC 4291)
//	::ffff:0:a.b.c.d      IPv4-translated (SIIT, RFC 2765)
//	64:ff9b::a.b.c.d      well-known NAT64 prefix (RFC 6052): reaches a.b.c.d through the translator
//	2002:AABB:CCDD::/48   6to4 (RFC 3056): the IPv4 in bits 16..47
//	2001:0:SSSS:SSSS::/32 Teredo (RFC 4380): server IPv4 in bits 32..63, client IPv4 inverted in the last 32
func embedded(a netip.Addr) []netip.Addr {
	u := a.Unmap()
	out := []netip.Addr{u}
	if u.Is4() {
		return out
	}
	b := u.As16()
	v4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte(b[i : i+4])) }
	allZero := func(bs []byte) bool {
		for _, x := range bs {
			if x != 0 {
				return false
			}
		}
		return true
	}
	switch {
	case allZero(b[:12]): // IPv4-compatible (:: and ::1 are judged as IPv6 too)
		out = append(out, v4(12))
	case allZero(b[:8]) && b[8] == 0xff && b[9] == 0xff && b[10] == 0 && b[11] == 0: // SIIT
		out = append(out, v4(12))
	case b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && allZero(b[4:12]): // NAT64 /96
		out = append(out, v4(12))
	case b[0] == 0x20 && b[1] == 0x02: // 6to4
		out = append(out, v4(2))
	case b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0: // Teredo
		c := v4(12).As4()
		for i := range c {
			c[i] ^= 0xff
		}
		out = append(out, v4(4), netip.AddrFrom4(c))
	}
	return out
}
