//go:build linux

package natlab

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// NAT names the behaviour of a router, in RFC 4787 terms.
type NAT string

// The NAT types the lab can emulate.
const (
	// None is no NAT at all: a host on the public segment.
	None NAT = "none"
	// FullCone has endpoint-independent mapping and filtering: once an
	// inside endpoint has sent anything, anyone may send to its mapping.
	FullCone NAT = "full-cone"
	// Restricted has endpoint-independent mapping and address-dependent
	// filtering: a remote address the inside endpoint has sent to may reach
	// the mapping from any of its ports.
	Restricted NAT = "restricted"
	// PortRestricted has endpoint-independent mapping and address-and-port-
	// dependent filtering; this is Linux conntrack's own behaviour.
	PortRestricted NAT = "port-restricted"
	// Symmetric has address-and-port-dependent mapping (a new external port
	// for every destination) and address-and-port-dependent filtering.
	Symmetric NAT = "symmetric"
	// CGNAT is a port-restricted home NAT behind a port-restricted carrier
	// NAT on 100.64.0.0/10; the carrier does not hairpin.
	CGNAT NAT = "cgnat"
	// SymmetricSequential is Symmetric with predictable ports: every new
	// mapping (any inside host, UDP or TCP) gets the next port of a
	// counter, as many carrier and corporate NATs do.
	SymmetricSequential NAT = "symmetric-sequential"
	// UDPBlocked is a port-restricted NAT for TCP whose firewall drops
	// all UDP from the inside: a corporate or guest network where only
	// TCP gets out (docs/PROTOCOL.md §23).
	UDPBlocked NAT = "udp-blocked"
)

// NATs lists the NAT types of the connection matrix, public host first.
var NATs = []NAT{None, FullCone, Restricted, PortRestricted, Symmetric, CGNAT, SymmetricSequential, UDPBlocked}

// AllNATs lists every NAT type the lab can build; all of them are in the
// matrix now.
var AllNATs = NATs

// Mapping is an RFC 4787 section 4.1 mapping behaviour.
type Mapping string

// Mapping behaviours.
const (
	EIM  Mapping = "EIM"  // endpoint-independent
	ADM  Mapping = "ADM"  // address-dependent
	APDM Mapping = "APDM" // address-and-port-dependent
)

// Filtering is an RFC 4787 section 5 filtering behaviour.
type Filtering string

// Filtering behaviours.
const (
	EIF  Filtering = "EIF"  // endpoint-independent
	ADF  Filtering = "ADF"  // address-dependent
	APDF Filtering = "APDF" // address-and-port-dependent
)

// PortAlloc is how a NAT picks the public port of a new mapping.
type PortAlloc string

// Port allocation patterns.
const (
	PortsPreserved  PortAlloc = "preserved"  // the inside port, kept
	PortsSequential PortAlloc = "sequential" // the previous mapping's port plus a small constant
	PortsRandom     PortAlloc = "random"     // no pattern
)

// Behavior is what the probe observes of the path from a host to the
// public segment, or what a NAT type promises.
type Behavior struct {
	// Translated is true when the server sees an address other than the
	// host's own.
	Translated bool
	// Mapping and Filtering are the UDP behaviours.
	Mapping   Mapping
	Filtering Filtering
	// TCPMapping is the mapping behaviour for TCP connections made from one
	// local port.
	TCPMapping Mapping
	// Hairpin is true when a packet sent from inside to the host's own
	// public mapping comes back in. For a public host it is local delivery.
	Hairpin bool
	// Ports is the UDP port allocation of consecutive new mappings.
	Ports PortAlloc
	// UDPBlocked is true when no UDP request gets an answer: then only
	// TCPMapping (and Translated, from TCP) is measured.
	UDPBlocked bool
}

func (b Behavior) String() string {
	if b.UDPBlocked {
		return fmt.Sprintf("translated=%t udp=blocked tcp=%s", b.Translated, b.TCPMapping)
	}
	return fmt.Sprintf("translated=%t udp=%s/%s tcp=%s hairpin=%t ports=%s",
		b.Translated, b.Mapping, b.Filtering, b.TCPMapping, b.Hairpin, b.Ports)
}

// Expected returns the behaviour a router of this type must show to a host
// behind it. hairpin is the router's Hairpin setting.
func (n NAT) Expected(hairpin bool) Behavior {
	switch n {
	case None:
		return Behavior{Translated: false, Mapping: EIM, Filtering: EIF, TCPMapping: EIM, Hairpin: true, Ports: PortsPreserved}
	case FullCone:
		return Behavior{Translated: true, Mapping: EIM, Filtering: EIF, TCPMapping: EIM, Hairpin: hairpin, Ports: PortsPreserved}
	case Restricted:
		return Behavior{Translated: true, Mapping: EIM, Filtering: ADF, TCPMapping: EIM, Hairpin: hairpin, Ports: PortsPreserved}
	case PortRestricted:
		return Behavior{Translated: true, Mapping: EIM, Filtering: APDF, TCPMapping: EIM, Hairpin: hairpin, Ports: PortsPreserved}
	case Symmetric:
		return Behavior{Translated: true, Mapping: APDM, Filtering: APDF, TCPMapping: APDM, Hairpin: hairpin, Ports: PortsRandom}
	case SymmetricSequential:
		return Behavior{Translated: true, Mapping: APDM, Filtering: APDF, TCPMapping: APDM, Hairpin: hairpin, Ports: PortsSequential}
	case CGNAT:
		return Behavior{Translated: true, Mapping: EIM, Filtering: APDF, TCPMapping: EIM, Hairpin: false, Ports: PortsPreserved}
	case UDPBlocked:
		return Behavior{Translated: true, TCPMapping: EIM, UDPBlocked: true}
	}
	panic("natlab: unknown NAT type " + string(n))
}

func (n NAT) valid() bool {
	for _, k := range AllNATs {
		if n == k {
			return true
		}
	}
	return false
}

// seqPort is the nftables expression of SymmetricSequential's next port:
// a counter over 20000–22047, below the inside hosts' ephemeral ports
// (32768+), so a kept port is never mistaken for a sequential one. The
// counter goes through a map because numgen's value is in host byte order
// and a port must be in network order: "numgen inc mod N offset 20000"
// straight into snat advances the port by 256 per connection on x86
// (measured with the probe); the map's values are typed inet_service and
// come out right.
var seqPort = func() string {
	var b strings.Builder
	b.WriteString("numgen inc mod 2048 map { ")
	for i := range 2048 {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d : %d", i, 20000+i)
	}
	b.WriteString(" }")
	return b.String()
}()

// natRules is the nftables rule set of one NAT box.
type natRules struct {
	nat     NAT // FullCone, Restricted, PortRestricted or Symmetric
	wan     netip.Addr
	lan     netip.Prefix
	hairpin bool
	// timeout is how long the filtering state (the mapping and permission
	// sets) lives without outbound traffic; it matches the conntrack UDP
	// timeout of the router.
	timeout time.Duration
}

// text renders the rule set. Interfaces are called wan0 and lan0 in every
// router. The design, per NAT type, is described in docs/NATLAB.md:
//
//   - Mapping: snat to the WAN address. Without "random" Linux keeps the
//     inside source port whenever the resulting tuple is unique, which makes
//     the mapping endpoint-independent; "random" picks a port from a hash of
//     the destination, which makes it address-and-port-dependent.
//     SymmetricSequential instead snats UDP and TCP to one port taken from
//     an nftables counter (numgen inc) per new connection: address-and-
//     port-dependent with ports in sequence.
//   - Filtering: conntrack alone lets in only replies from the exact remote
//     endpoint (APDF). Full-cone and restricted add inbound paths of their
//     own: the "mapping" map (external proto.port -> inside addr.port) is
//     learned from every outbound packet after snat and drives a dnat for
//     unsolicited inbound packets; restricted also requires the remote
//     address to be in the "permit" set (remote addr . proto . external
//     port), learned the same way.
//   - Every unsolicited inbound packet that no rule admits is dropped in a
//     filter chain at priority -150, after conntrack has looked it up (-200)
//     but before anything can confirm its entry. Left alone, it would reach
//     the router's own stack, draw an ICMP port-unreachable and leave a
//     confirmed conntrack entry; the inside host's later flow to that remote
//     endpoint would then clash with it and silently get a new port.
//   - Hairpinning: packets from the LAN to the WAN address are dnat'ed with
//     the same "mapping" map and snat'ed to the WAN address, so the inside
//     peer sees the sender's public mapping. Hairpinned packets are filtered
//     endpoint-independently. Without hairpinning they are dropped.
func (r natRules) text() string {
	var b strings.Builder
	to := fmt.Sprintf("%ds", int(r.timeout/time.Second))
	w := r.wan.String()
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }

	p("table ip ewfnat {")
	p("  map mapping { type inet_proto . inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout %s; }", to)
	p("  set permit { type ipv4_addr . inet_proto . inet_service; flags dynamic,timeout; timeout %s; }", to)

	p("  chain early {")
	p("    type filter hook prerouting priority -150; policy accept;")
	p("    iifname \"wan0\" ct state established,related accept")
	switch r.nat {
	case FullCone:
		p("    iifname \"wan0\" ct state new meta l4proto { udp, tcp } meta l4proto . th dport @mapping accept")
	case Restricted:
		p("    iifname \"wan0\" ct state new meta l4proto { udp, tcp } ip saddr . meta l4proto . th dport @permit meta l4proto . th dport @mapping accept")
	}
	p("    iifname \"wan0\" drop")
	// A packet conntrack cannot place would leave without NAT, leaking an
	// inside address; home routers drop those.
	p("    iifname \"lan0\" ct state invalid drop")
	if r.nat == UDPBlocked {
		// The firewall: no UDP leaves, to anywhere (the router itself too).
		p("    iifname \"lan0\" meta l4proto udp drop")
	}
	if r.hairpin {
		p("    iifname \"lan0\" ip daddr %s ct state new meta l4proto { udp, tcp } meta l4proto . th dport @mapping accept", w)
		p("    iifname \"lan0\" ip daddr %s ct state new drop", w)
	} else {
		p("    iifname \"lan0\" ip daddr %s drop", w)
	}
	p("  }")

	p("  chain in_nat {")
	p("    type nat hook prerouting priority dstnat; policy accept;")
	if r.nat == FullCone || r.nat == Restricted {
		p("    iifname \"wan0\" meta l4proto { udp, tcp } dnat ip to meta l4proto . th dport map @mapping")
	}
	if r.hairpin {
		p("    iifname \"lan0\" ip daddr %s meta l4proto { udp, tcp } dnat ip to meta l4proto . th dport map @mapping", w)
	}
	p("  }")

	random := ""
	if r.nat == Symmetric {
		random = " random"
	}
	p("  chain out_nat {")
	p("    type nat hook postrouting priority srcnat; policy accept;")
	if r.nat == SymmetricSequential {
		// The counter advances once per new connection (NAT rules see
		// only a connection's first packet), so consecutive mappings get
		// consecutive ports; the single-port range means the kernel never
		// keeps the inside port.
		p("    oifname \"wan0\" meta l4proto { udp, tcp } snat ip to %s : %s", w, seqPort)
		if r.hairpin {
			p("    iifname \"lan0\" oifname \"lan0\" ct status dnat ip saddr %s meta l4proto { udp, tcp } snat ip to %s : %s", r.lan.Masked(), w, seqPort)
		}
	}
	p("    oifname \"wan0\" snat ip to %s%s", w, random)
	if r.hairpin {
		p("    iifname \"lan0\" oifname \"lan0\" ct status dnat ip saddr %s snat ip to %s%s", r.lan.Masked(), w, random)
	}
	p("  }")

	// After snat (priority srcnat + 1) the packet carries its external
	// port; the ct expressions still know the inside endpoint. Packets of
	// inbound connections (ct direction reply) have it on the reply side.
	p("  chain learn {")
	p("    type filter hook postrouting priority srcnat + 1; policy accept;")
	for _, proto := range []string{"udp", "tcp"} {
		p("    oifname \"wan0\" meta l4proto %[1]s ct direction original update @mapping { meta l4proto . %[1]s sport : ct original ip saddr . ct original proto-src }", proto)
		p("    oifname \"wan0\" meta l4proto %[1]s ct direction reply update @mapping { meta l4proto . %[1]s sport : ct reply ip saddr . ct reply proto-src }", proto)
	}
	if r.nat == Restricted {
		p("    oifname \"wan0\" meta l4proto { udp, tcp } update @permit { ip daddr . meta l4proto . th sport }")
	}
	p("  }")
	p("}")
	return b.String()
}
