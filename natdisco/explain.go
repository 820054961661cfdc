package natdisco

// Explain returns a few plain sentences about what c means for direct
// connections: what a peer can and cannot reach, and what would fix it.
// `ewf nat` prints them under the Line.
func Explain(c Class) []string {
	var s []string
	switch {
	case !c.Known():
		s = append(s, "The NAT behaviour could not be measured: the server did not answer, or it has no second address or port (ewfd --alternate).")
	case c.Public:
		s = append(s, "This host has a public IPv4 address: peers can reach it directly.")
		if c.Filtering == FilteringAPDF || c.Filtering == FilteringADF {
			s = append(s, "A firewall only lets in answers to traffic this host sent first; hole punching opens it for each peer.")
		}
	case c.Mapping == MappingEIM:
		s = append(s, "This NAT keeps one public port for every destination, so peers learn it from the server: hole punching works with almost any peer.")
		switch c.Filtering {
		case FilteringEIF:
			s = append(s, "It lets in anyone once this host has sent a packet (full cone).")
		case FilteringADF:
			s = append(s, "It lets in any port of an address this host has sent to.")
		case FilteringAPDF:
			s = append(s, "It lets in only the exact address and port this host has sent to, so a peer whose NAT changes its port per destination is hard to reach.")
		}
	case c.dependent():
		what := "each destination address and port"
		if c.Mapping == MappingADM {
			what = "each destination address"
		}
		s = append(s, "This NAT gives "+what+" a new public port, so the port the server sees is not the one a peer must use.")
		switch c.Ports {
		case PortsSequential:
			s = append(s, "New ports follow each other in sequence, so a peer's port can be predicted: direct connections usually work.")
		case PortsPreserved:
			s = append(s, "It keeps the local port where it can, so a peer's port can usually be predicted.")
		default:
			s = append(s, "New ports are random: a peer behind a NAT of the same kind cannot be reached directly; a peer with an endpoint-independent NAT can, by probing many ports.")
		}
		s = append(s, "To fix it: enable endpoint-independent mapping on the router (often called full cone, or \"NAT type 2\"/UPnP/PCP), use IPv6, or use a relay.")
	}
	if c.Known() && !c.Public && !c.Hairpin {
		s = append(s, "It does not hairpin: two hosts behind it reach each other only over their LAN addresses.")
	}
	if c.IPv6 {
		s = append(s, "This host has global IPv6: peers with IPv6 can usually reach it without any NAT in the way.")
	} else {
		s = append(s, "This host has no global IPv6.")
	}
	return s
}

// Diagnose returns the sentence that explains why no direct path was found
// between a host of class local and a peer of class peer; the CLI prints
// it as the msg of `error reason=no-direct-path`. A zero Class stands for
// an unknown one (a peer that sent no NAT_CLASS).
func Diagnose(local, peer Class) string {
	switch {
	case local.unpredictable() && peer.unpredictable():
		return "both peers are behind NATs that map each destination to a new random port; no direct path is possible"
	case !local.Known() && !peer.Known():
		return "the NAT behaviour of neither peer is known (run `ewf nat` on both sides); the probes found no path"
	case local.unpredictable() && peer.Filtering == FilteringAPDF:
		return "this peer's NAT maps each destination to a new random port and the other peer's NAT only admits the exact port it sent to; only port guessing can connect them, and it did not succeed"
	case peer.unpredictable() && local.Filtering == FilteringAPDF:
		return "the other peer's NAT maps each destination to a new random port and this peer's NAT only admits the exact port it sent to; only port guessing can connect them, and it did not succeed"
	case local.unpredictable():
		return "this peer's NAT maps each destination to a new random port and the probes did not get through; a direct path is unlikely"
	case peer.unpredictable():
		return "the other peer's NAT maps each destination to a new random port and the probes did not get through; a direct path is unlikely"
	case local.dependent() && peer.dependent():
		return "both peers are behind NATs that map each destination to a new port; the predicted ports did not answer"
	case local.Known() && peer.Known():
		return "both NATs should allow a direct path, but no probe got through; a firewall may be blocking UDP or the mappings expired"
	}
	return "no probe got through; the NAT behaviour of one peer is unknown (run `ewf nat`)"
}
