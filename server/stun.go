package server

import (
	"net/netip"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire/stunx"
)

// stunOutcome says what happened to a STUN message.
type stunOutcome uint8

const (
	stunAnswered   stunOutcome = iota
	stunMalformed              // fails stunx.Check (bad FINGERPRINT included): dropped
	stunNotBinding             // not a Binding request: ignored
)

// handleSTUN answers a STUN Binding request with the source address the
// server saw (docs/PROTOCOL.md §12), appended to out. It decodes into the
// caller's reused stun.Message, so steady state does not allocate.
//
// Only Binding requests are answered; indications (keepalives), responses
// and other methods are dropped: ewfd is not a TURN server, and RFC 5389
// servers do not answer indications. Attributes other than FINGERPRINT are
// ignored, including comprehension-required ones a full RFC 5389 server
// would answer with 420: a client asking for CHANGE-REQUEST (RFC 5780) or
// sending ICE attributes still gets its mapped address, which is all ewfd
// offers, and a 420 with UNKNOWN-ATTRIBUTES would cost more code than it
// tells the client.
func handleSTUN(m *stun.Message, req []byte, src netip.AddrPort, out []byte) ([]byte, stunOutcome) {
	if err := stunx.Decode(req, m); err != nil {
		return out, stunMalformed
	}
	if m.Type != stun.BindingRequest {
		return out, stunNotBinding
	}
	return stunx.AppendBindingSuccess(out, m, src), stunAnswered
}
