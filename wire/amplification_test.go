package wire_test

import (
	"net/netip"
	"testing"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/stunx"
)

// TestAmplificationBound checks docs/PROTOCOL.md §8: every response the
// server can send is at most twice the size of the request that caused
// it. Each row pairs the smallest request that gets an answer with the
// largest answer it can get (IPv6 everywhere, both transports bound, every
// optional field the server fills), built with the real encoder, so a new
// attribute in a response shows up here. The INTRODUCE indication is not a
// response to its sender but is caused by an introduction request, so it
// is held to the same bound against that request.
//
// The one exception is STUN: RFC 5389 makes the answer to a bare 20-byte
// Binding request from an IPv6 address 44 bytes (2.2×). Counted as
// datagrams on the wire (IPv6 40 + UDP 8 bytes of headers each way) it is
// 92 against 68 bytes, 1.35×; that is the bound the STUN rows are held to.
func TestAmplificationBound(t *testing.T) {
	v6a := netip.MustParseAddrPort("[2001:db8::1]:65535")
	v6b := netip.MustParseAddrPort("[2001:db8::2]:65535")
	v4 := netip.MustParseAddrPort("192.0.2.1:1")
	mk := func(m wire.Method, c wire.Class, set ...func(*wire.Message)) int {
		v := msg(m, c, set...)
		return len(v.AppendTo(nil))
	}
	maxAddrs := []func(*wire.Message){
		withAddr(wire.Address{Transport: wire.TransportUDP, AddrPort: v6a}),
		withAddr(wire.Address{Transport: wire.TransportTCP, AddrPort: v6b}),
	}
	errResp := func(m wire.Method) int { return mk(m, wire.ClassError, withReason(wire.ReasonServerError)) }

	type row struct {
		name          string
		request, resp int
	}
	rows := []row{
		{"header-only request → error (invalid attributes / unknown method)",
			mk(0x7ff, wire.ClassRequest), errResp(0x7ff)},
		{"REGISTER request → success",
			mk(wire.MethodRegister, wire.ClassRequest, withID), mk(wire.MethodRegister, wire.ClassSuccess, withKey)},
		{"BIND request → success",
			mk(wire.MethodBind, wire.ClassRequest, withID, withKey, withAddr(wire.Address{AddrPort: v4})), mk(wire.MethodBind, wire.ClassSuccess)},
		{"BIND request → error",
			mk(wire.MethodBind, wire.ClassRequest, withID, withKey, withAddr(wire.Address{AddrPort: v4})), errResp(wire.MethodBind)},
		{"QUERY request → success (two IPv6 bindings)",
			mk(wire.MethodQuery, wire.ClassRequest, withID), mk(wire.MethodQuery, wire.ClassSuccess, maxAddrs...)},
		{"QUERY introduction → success (two IPv6 bindings, SECRET)",
			mk(wire.MethodQuery, wire.ClassRequest, withID, withSource, withKey),
			mk(wire.MethodQuery, wire.ClassSuccess, append(maxAddrs, withSecret)...)},
		// Integrity (§17): the answers grow by a MAC, the requests by
		// TIMESTAMP and MAC in place of KEY.
		{"BIND request with integrity → success with MAC",
			mk(wire.MethodBind, wire.ClassRequest, withID, withAddr(wire.Address{AddrPort: v4}), withTS(1), withMAC(macReqV)),
			mk(wire.MethodBind, wire.ClassSuccess, withMAC(macResV))},
		{"BIND request with integrity → stale error with TIMESTAMP and MAC",
			mk(wire.MethodBind, wire.ClassRequest, withID, withAddr(wire.Address{AddrPort: v4}), withTS(1), withMAC(macReqV)),
			mk(wire.MethodBind, wire.ClassError, withReason(wire.ReasonStale), withTS(1), withMAC(macResV))},
		{"QUERY introduction with integrity → success (two IPv6 bindings, SECRET, MAC)",
			mk(wire.MethodQuery, wire.ClassRequest, withID, withSource, withTS(1), withMAC(macReqV)),
			mk(wire.MethodQuery, wire.ClassSuccess, append(maxAddrs, withSecret, withMAC(macResV))...)},
		{"PUNCH request → PUNCH success (peer)",
			mk(wire.MethodPunch, wire.ClassRequest, withSource, withMAC(macReqV)), mk(wire.MethodPunch, wire.ClassSuccess, withSource, withMAC(macResV))},
	}
	// INTRODUCE carries the querier's candidates, which came in the
	// request, so its size follows the request's: check every count.
	for n := 0; n <= wire.MaxCandidates; n++ {
		var cands []func(*wire.Message)
		for range n {
			cands = append(cands, withCand(wire.Address{AddrPort: v6a}))
		}
		req := mk(wire.MethodQuery, wire.ClassRequest, append([]func(*wire.Message){withID, withSource, withKey}, cands...)...)
		intro := mk(wire.MethodIntroduce, wire.ClassIndication, append(append([]func(*wire.Message){withSource, withSecret}, maxAddrs...), cands...)...)
		rows = append(rows, row{"QUERY introduction → INTRODUCE to the target, candidates: " + string(rune('0'+n)), req, intro})
	}
	// A SIGNAL's indication carries what the request carried, minus ID
	// and KEY: never larger than its request. The answer is 20 or 28 bytes.
	sigMACSet := func(m *wire.Message) { m.SetSignalMAC(macReqV) }
	rows = append(rows, row{"SIGNAL request → success / error",
		mk(wire.MethodSignal, wire.ClassRequest, withID, withSource, withKey, sigMACSet), errResp(wire.MethodSignal)})
	for n := 0; n <= wire.MaxCandidates; n++ {
		var cands []func(*wire.Message)
		for range n {
			cands = append(cands, withCand(wire.Address{AddrPort: v6a}))
		}
		relayed := []func(*wire.Message){withRelayed(wire.Address{AddrPort: v6a}), withRelayed(wire.Address{AddrPort: v6a})}
		req := mk(wire.MethodSignal, wire.ClassRequest, append(append(append([]func(*wire.Message){withID, withSource, withKey}, cands...), relayed...), sigMACSet)...)
		ind := mk(wire.MethodSignal, wire.ClassIndication, append(append(append([]func(*wire.Message){withSource}, cands...), relayed...), sigMACSet)...)
		if ind > req {
			t.Errorf("SIGNAL indication %d bytes, request %d", ind, req)
		}
		rows = append(rows, row{"SIGNAL request → SIGNAL indication to the peer, candidates: " + string(rune('0'+n)), req, ind})
	}
	for _, r := range rows {
		t.Logf("%-70s request %4d  response %4d  ratio %.2f", r.name, r.request, r.resp, float64(r.resp)/float64(r.request))
		if r.resp > 2*r.request {
			t.Errorf("%s: %d-byte response to a %d-byte request is over 2×", r.name, r.resp, r.request)
		}
	}

	// STUN: the bare request and the request with FINGERPRINT.
	const ipv6UDP = 40 + 8
	for _, c := range []struct {
		name string
		req  string
	}{
		{"bare", "00010000" + "2112a442" + txHex},
		{"with FINGERPRINT", "00010008" + "2112a442" + txHex + "80280004" + "fdf6ae02"},
	} {
		var m stun.Message
		b := unhex(t, c.req)
		if err := stunx.Decode(b, &m); err != nil {
			t.Fatal(err)
		}
		for _, src := range []netip.AddrPort{v4, v6a} {
			resp := len(stunx.AppendBindingSuccess(nil, &m, src))
			t.Logf("STUN Binding %-16s from %-22v request %4d  response %4d  ratio %.2f (datagrams %.2f)",
				c.name, src, len(b), resp, float64(resp)/float64(len(b)), float64(resp+ipv6UDP)/float64(len(b)+ipv6UDP))
			if resp+ipv6UDP > 2*(len(b)+ipv6UDP) {
				t.Errorf("STUN %s from %v: %d-byte response to a %d-byte request", c.name, src, resp, len(b))
			}
		}
	}
}
