package server

import (
	"crypto/subtle"
	"net/netip"
	"time"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/integrity"
)

// authState is a Handler's part of docs/PROTOCOL.md §18: the reused HMAC
// state, and what the request being handled proved, which decides whether
// its answer is signed.
type authState struct {
	sig    *integrity.Signer
	key    wire.Key // the KEY the request's MAC verified with
	signed bool     // the request's MAC verified: every answer carries a MAC keyed by key
	stamp  bool     // the answer also carries the server's TIMESTAMP (ReasonStale)
	nowMs  uint64
}

// reset forgets the previous request; handleX calls it first.
func (a *authState) reset() { a.signed, a.stamp = false, false }

// requireIntegrity reports whether h.req must be refused for carrying a
// KEY (Config.RequireIntegrity, §18.3 step 0). REGISTER answers carry a
// KEY, requests never need to, so any request with KEY is the old form.
func (h *Handler) requireIntegrity() bool {
	return h.s.cfg.RequireIntegrity && h.req.Has(wire.AttrKey)
}

// prove checks that h.req proves key, the KEY of the ID it authenticates:
// in the KEY form by comparison, in the integrity form by MAC (steps 2-4 of
// §18.3: MAC, TIMESTAMP window, replay cache). A zero reason means proven.
// Once the MAC has verified, every answer to the request is signed, the
// refusals of steps 3 and 4 included.
func (h *Handler) prove(key *wire.Key, src netip.AddrPort, now time.Time, sec uint32) (wire.Reason, outcome) {
	m, a := &h.req, &h.auth
	if !m.HasIntegrity() {
		if subtle.ConstantTimeCompare(key[:], m.Key[:]) != 1 {
			return wire.ReasonKeyMismatch, reasonOutcome(wire.ReasonKeyMismatch)
		}
		return 0, outOK
	}
	if a.sig == nil { // a Handler not made by NewHandler (a cluster worker's)
		a.sig = integrity.NewSigner()
	}
	// The KEY is copied into the Handler first: handing the caller's
	// stack copy to the hash would move it to the heap on every request.
	// Verify compares with hmac.Equal: constant time.
	a.key = *key
	if !a.sig.Verify(m.Raw, a.key[:]) {
		return wire.ReasonKeyMismatch, reasonOutcome(wire.ReasonKeyMismatch)
	}
	a.signed = true
	a.nowMs = uint64(now.UnixMilli())
	if !integrity.Fresh(m.Timestamp, a.nowMs) {
		a.stamp = true
		return wire.ReasonStale, outStale
	}
	// The transaction ID is remembered until the TIMESTAMP leaves the
	// window; after that the request is stale anyway.
	left := uint32((m.Timestamp+integrity.Window-a.nowMs)/1000) + 1
	if !h.s.replay.check(&m.TransactionID, src, h.tr, sec, sec+left) {
		a.stamp = true
		return wire.ReasonStale, outReplayed
	}
	return 0, outOK
}

// finish appends r to out, with a MAC keyed by the request's KEY if the
// request proved it by MAC (§18.4).
func (h *Handler) finish(r *wire.Message, out []byte) []byte {
	a := &h.auth
	if !a.signed {
		return r.AppendTo(out)
	}
	if a.stamp {
		r.SetTimestamp(a.nowMs)
	}
	return a.sig.Append(out, r, a.key[:])
}

// refuse counts o for kind k and appends the error response with reason r,
// signed if the request proved its KEY.
func (h *Handler) refuse(out []byte, k reqKind, r wire.Reason, o outcome) []byte {
	h.s.met.count(k, o)
	resp := &h.resp
	resp.Reset()
	resp.Type = wire.Type{Method: h.req.Type.Method, Class: wire.ClassError}
	resp.TransactionID = h.req.TransactionID
	resp.SetReason(r)
	return h.finish(resp, out)
}
