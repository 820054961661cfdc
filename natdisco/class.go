package natdisco

import (
	"strconv"
	"strings"

	"github.com/ewf-project/ewf/wire"
)

// Mapping is the RFC 4787 §4.1 mapping behaviour: how the NAT chooses the
// public address and port of an inside socket's traffic.
type Mapping uint8

// Mapping behaviours. The values are the NAT_CLASS wire values.
const (
	MappingUnknown Mapping = 0 // not measured (no answer, or no alternate server address)
	MappingEIM     Mapping = 1 // endpoint-independent: one public port for every destination
	MappingADM     Mapping = 2 // address-dependent: a new public port per destination IP
	MappingAPDM    Mapping = 3 // address-and-port-dependent: a new public port per destination IP and port
)

// String returns the word of the `ewf nat` line: eim, adm, apdm or unknown.
func (m Mapping) String() string {
	switch m {
	case MappingEIM:
		return "eim"
	case MappingADM:
		return "adm"
	case MappingAPDM:
		return "apdm"
	}
	return "unknown"
}

// Filtering is the RFC 4787 §5 filtering behaviour: which inbound packets
// the NAT lets through to a mapping.
type Filtering uint8

// Filtering behaviours. The values are the NAT_CLASS wire values.
const (
	FilteringUnknown Filtering = 0 // not measured: the server has no alternate address or port
	FilteringEIF     Filtering = 1 // endpoint-independent: anyone may send to the mapping
	FilteringADF     Filtering = 2 // address-dependent: any port of an IP the inside socket sent to
	FilteringAPDF    Filtering = 3 // address-and-port-dependent: only the exact IP and port sent to
)

// String returns the word of the `ewf nat` line: eif, adf, apdf or unknown.
func (f Filtering) String() string {
	switch f {
	case FilteringEIF:
		return "eif"
	case FilteringADF:
		return "adf"
	case FilteringAPDF:
		return "apdf"
	}
	return "unknown"
}

// Ports is the port allocation pattern of new mappings.
type Ports uint8

// Port allocation patterns. The values are the NAT_CLASS wire values.
const (
	PortsUnknown    Ports = 0 // not measured
	PortsPreserved  Ports = 1 // the public port equals the local port
	PortsSequential Ports = 2 // each new mapping's port is the previous one plus Class.Delta
	PortsRandom     Ports = 3 // no pattern found
)

// String returns the word of the `ewf nat` line: preserved, sequential,
// random or unknown.
func (p Ports) String() string {
	switch p {
	case PortsPreserved:
		return "preserved"
	case PortsSequential:
		return "sequential"
	case PortsRandom:
		return "random"
	}
	return "unknown"
}

// Class is what discovery learned about the path from one host to the
// Internet. The zero Class means "nothing known" and is what a peer that
// sent no NAT_CLASS is assumed to have.
//
// Class is a comparable value; it travels as the one-word NAT_CLASS
// attribute (Wire, FromWire).
type Class struct {
	Mapping   Mapping
	Filtering Filtering
	Ports     Ports
	// Delta is the step between the ports of consecutive new mappings when
	// Ports is PortsSequential (usually 1), else 0.
	Delta int8
	// Hairpin: a packet sent to the host's own public mapping came back in.
	Hairpin bool
	// IPv6: the host reached the server over IPv6 from a global address.
	IPv6 bool
	// Public: the server saw the host's own IPv4 address and port, so no
	// NAT translates it (a firewall may still filter, see Filtering).
	Public bool
}

// Known reports whether the mapping behaviour was measured.
func (c Class) Known() bool { return c.Mapping != MappingUnknown }

// Wire returns the NAT_CLASS word of c.
func (c Class) Wire() wire.NATClass {
	var f uint8
	if c.Hairpin {
		f |= wire.NATFlagHairpin
	}
	if c.IPv6 {
		f |= wire.NATFlagIPv6
	}
	if c.Public {
		f |= wire.NATFlagPublic
	}
	d := c.Delta
	if c.Ports != PortsSequential {
		d = 0
	}
	return wire.MakeNATClass(uint8(c.Mapping), uint8(c.Filtering), uint8(c.Ports), d, f)
}

// FromWire returns the Class a NAT_CLASS word describes. A field value this
// version does not know reads as unknown; unknown flags are ignored.
func FromWire(w wire.NATClass) Class {
	c := Class{
		Mapping:   Mapping(w.Mapping()),
		Filtering: Filtering(w.Filtering()),
		Ports:     Ports(w.Ports()),
		Hairpin:   w.Flags()&wire.NATFlagHairpin != 0,
		IPv6:      w.Flags()&wire.NATFlagIPv6 != 0,
		Public:    w.Flags()&wire.NATFlagPublic != 0,
	}
	if c.Mapping > MappingAPDM {
		c.Mapping = MappingUnknown
	}
	if c.Filtering > FilteringAPDF {
		c.Filtering = FilteringUnknown
	}
	if c.Ports > PortsRandom {
		c.Ports = PortsUnknown
	}
	if c.Ports == PortsSequential {
		c.Delta = w.Delta()
	}
	return c
}

// dependent reports whether each destination gets its own public port.
func (c Class) dependent() bool { return c.Mapping == MappingADM || c.Mapping == MappingAPDM }

// unpredictable reports whether the public port a peer must send to cannot
// be learned in advance: a dependent mapping with random ports.
func (c Class) unpredictable() bool {
	return c.dependent() && (c.Ports == PortsRandom || c.Ports == PortsUnknown)
}

// Line returns the stable one-line summary `ewf nat` prints first:
//
//	nat mapping=apdm filtering=apdf ports=sequential hairpin=no ipv6=yes
//
// The keys and their order never change; scripts may parse it. A
// sequential pattern with a step other than 1 adds delta=N at the end.
func (c Class) Line() string {
	var b strings.Builder
	b.WriteString("nat mapping=")
	b.WriteString(c.Mapping.String())
	b.WriteString(" filtering=")
	b.WriteString(c.Filtering.String())
	b.WriteString(" ports=")
	b.WriteString(c.Ports.String())
	b.WriteString(" hairpin=")
	b.WriteString(yesNo(c.Hairpin))
	b.WriteString(" ipv6=")
	b.WriteString(yesNo(c.IPv6))
	if c.Ports == PortsSequential && c.Delta != 1 {
		b.WriteString(" delta=")
		b.WriteString(strconv.Itoa(int(c.Delta)))
	}
	return b.String()
}

// String is Line without the leading "nat ".
func (c Class) String() string { return strings.TrimPrefix(c.Line(), "nat ") }

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
