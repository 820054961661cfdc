// Package natdisco learns how the NAT (or firewall) between a host and the
// Internet behaves, with a few STUN round trips to an RFC 5780 server
// (ewfd with --alternate): the mapping behaviour, the filtering behaviour,
// the port allocation pattern of new mappings, hairpinning and global
// IPv6. The result, a Class, travels to peers as the NAT_CLASS attribute
// (docs/PROTOCOL.md §6.4) so that the punch can pick a strategy and a
// failure can be explained (Diagnose).
//
// Like tailscale's netcheck, the classifier owns no socket: the caller
// hands it Conns (a real UDP socket wrapped by UDPConn in production, a
// namespace's socket in the lab) and a clock; Classify only sends, reads
// and compares addresses. The tests run it against the real ewfd.
package natdisco
