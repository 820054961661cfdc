package server

import (
	"net/netip"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/stunx"
)

// stunOutcome says what happened to a STUN message.
type stunOutcome uint8

const (
	stunAnswered    stunOutcome = iota
	stunMalformed               // fails stunx.Check (bad FINGERPRINT included): dropped
	stunNotBinding              // not a Binding request: ignored
	stunUnsupported             // CHANGE-REQUEST asks for a change this server cannot make: ignored
	stunTooLarge                // the answer through another socket would break the amplification bound
)

// rfc5780 is the server's NAT-behaviour-discovery configuration (RFC 5780,
// Config.Alternate): up to four UDP sockets, by [IP][port] index, 0 the
// primary and 1 the alternate. With one IP, only [0][0] and [0][1] exist.
// It is fixed before the first Handler runs and never changes.
type rfc5780 struct {
	twoIPs bool
	addr   [2][2]netip.AddrPort
	sock   [2][2]Replier
}

// other returns the OTHER-ADDRESS of socket (i, j): the one that differs in
// both IP and port, or in port only when there is one IP (RFC 5780 §7.4).
func (a *rfc5780) other(i, j uint8) netip.AddrPort {
	if a.twoIPs {
		return a.addr[1-i][1-j]
	}
	return a.addr[i][1-j]
}

// handleSTUN answers a STUN Binding request with the source address the
// server saw (docs/PROTOCOL.md §12), appended to out. It decodes into the
// Handler's reused stun.Message, so steady state does not allocate.
//
// Only Binding requests are answered; indications (keepalives), responses
// and other methods are dropped: ewfd is not a TURN server, and RFC 5389
// servers do not answer indications.
//
// On a socket that is not an RFC 5780 socket (no Config.Alternate, or a
// listen address other than the primary), attributes other than
// FINGERPRINT are ignored, CHANGE-REQUEST included: the client gets its
// mapped address, and no OTHER-ADDRESS tells it that discovery is off.
//
// On an RFC 5780 socket the answer carries RESPONSE-ORIGIN and
// OTHER-ADDRESS, and a CHANGE-REQUEST makes it leave from the socket with
// the other port and/or IP — always to src, the request's source, and
// never larger than twice the request (§10): the RFC 5780 attributes are
// left out when they would not fit. A change of IP on a server with one
// IP is dropped (docs/PROTOCOL.md §12.1 says why not 420).
func (h *Handler) handleSTUN(req []byte, src netip.AddrPort, out []byte) ([]byte, stunOutcome) {
	m := &h.stun
	if err := stunx.Decode(req, m); err != nil {
		return out, stunMalformed
	}
	if m.Type != stun.BindingRequest {
		return out, stunNotBinding
	}
	a := h.alt
	if a == nil || src.Addr().Is4() != h.altIP4 {
		return stunx.AppendBindingSuccess(out, m, src), stunAnswered
	}
	changeIP, changePort, _, ok := stunx.ChangeRequest(m)
	if !ok {
		return out, stunMalformed
	}
	i, j := h.altI, h.altJ
	if changeIP {
		if !a.twoIPs {
			return out, stunUnsupported
		}
		i = 1 - i
	}
	if changePort {
		j = 1 - j
	}
	origin, other := a.addr[i][j], a.other(i, j)
	// The RFC 5780 attributes are a courtesy; the mapped address is the
	// answer. Drop them rather than the answer when the bound is tight
	// (a bare request from IPv6).
	if !withinAmplification(wire.KindSTUN, len(req), stunx.BindingSuccess5780Len(m, src, origin, other), src) {
		other = netip.AddrPort{}
		if !withinAmplification(wire.KindSTUN, len(req), stunx.BindingSuccess5780Len(m, src, origin, other), src) {
			origin = netip.AddrPort{}
		}
	}
	if i == h.altI && j == h.altJ {
		return stunx.AppendBindingSuccess5780(out, m, src, origin, other), stunAnswered
	}
	b := stunx.AppendBindingSuccess5780(h.ind[:0], m, src, origin, other)
	if !withinAmplification(wire.KindSTUN, len(req), len(b), src) {
		return out, stunTooLarge // unreachable: the bare answer always fits
	}
	a.sock[i][j].Reply(b, src)
	return out, stunAnswered
}
