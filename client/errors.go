package client

import (
	"errors"
	"net/netip"
	"strconv"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// One error value per wire.Reason. A *ReasonError from the server matches
// exactly one of them with errors.Is, so callers branch on the reason
// without looking at numbers:
//
//	if errors.Is(err, client.ErrKeyMismatch) { /* re-register */ }
var (
	ErrUnknownMethod     = errors.New("server does not know the method")                       // wire.ReasonUnknownMethod
	ErrInvalidAttributes = errors.New("server refused the request's attributes")               // wire.ReasonInvalidAttributes
	ErrNotRegistered     = errors.New("ID not registered")                                     // wire.ReasonNotRegistered
	ErrKeyMismatch       = errors.New("ID and KEY not matched")                                // wire.ReasonKeyMismatch
	ErrIDConflict        = errors.New("ID conflict: the server already holds this ID")         // wire.ReasonIDConflict
	ErrAddressMismatch   = errors.New("address mismatch: not the address the server observed") // wire.ReasonAddressMismatch
	ErrNotBound          = errors.New("ID not bound: no live binding")                         // wire.ReasonNotBound
	ErrRegistrationLimit = errors.New("registration limit reached")                            // wire.ReasonRegistrationLimit
	ErrRateLimited       = errors.New("rate limited")                                          // wire.ReasonRateLimited
	ErrServerError       = errors.New("server error (transient)")                              // wire.ReasonServerError
	// ErrPeerUnreachable: the peer is bound but the server could not
	// reach its binding (wire.ReasonPeerUnreachable); retry later.
	ErrPeerUnreachable = errors.New("peer unreachable: its binding could not be reached")
	ErrTryLater        = errors.New("server's shared store unavailable: try again later") // wire.ReasonTryLater
	// ErrIntegrityRequired: the server refuses the KEY in clear
	// (wire.ReasonIntegrityRequired). This client never sends it so.
	ErrIntegrityRequired = errors.New("server requires the integrity form")
	// ErrStale: the request's TIMESTAMP was outside the server's window
	// even after the clock offset was corrected, or it was replayed
	// (wire.ReasonStale).
	ErrStale = errors.New("request stale or replayed")
	// ErrUnknownReason matches wire.ReasonUnknown and also any reason value
	// this client does not know (a newer server's), so every ReasonError
	// matches exactly one sentinel.
	ErrUnknownReason = errors.New("unknown reason")
)

// ErrTimeout: no valid response came after all attempts (UDP) or within
// Config.Timeout (TCP). The error that carries it is a *TimeoutError, whose
// text names the server, the request and the attempts made.
var ErrTimeout = errors.New("server did not answer")

// ErrBadResponse: a response with an outstanding transaction ID failed
// validation (undecodable, wrong method, attributes against the rules,
// STUN without XOR-MAPPED-ADDRESS, bad FINGERPRINT). Such a response is
// dropped and the transaction goes on waiting; if nothing valid follows,
// the *TimeoutError unwraps to an error matching ErrBadResponse, so both
// errors.Is(err, ErrTimeout) and errors.Is(err, ErrBadResponse) hold.
var ErrBadResponse = errors.New("invalid response from server")

// ErrClosed is returned by requests made after Fail (for Conn: after Close
// or after its socket died); it matches net.ErrClosed too when the cause
// was a closed socket.
var ErrClosed = errors.New("rendezvous client closed")

// reasonSentinel maps a wire reason to its sentinel.
func reasonSentinel(r wire.Reason) error {
	switch r {
	case wire.ReasonUnknownMethod:
		return ErrUnknownMethod
	case wire.ReasonInvalidAttributes:
		return ErrInvalidAttributes
	case wire.ReasonNotRegistered:
		return ErrNotRegistered
	case wire.ReasonKeyMismatch:
		return ErrKeyMismatch
	case wire.ReasonIDConflict:
		return ErrIDConflict
	case wire.ReasonAddressMismatch:
		return ErrAddressMismatch
	case wire.ReasonNotBound:
		return ErrNotBound
	case wire.ReasonRegistrationLimit:
		return ErrRegistrationLimit
	case wire.ReasonRateLimited:
		return ErrRateLimited
	case wire.ReasonServerError:
		return ErrServerError
	case wire.ReasonPeerUnreachable:
		return ErrPeerUnreachable
	case wire.ReasonTryLater:
		return ErrTryLater
	case wire.ReasonNoRelay:
		return ErrNoRelay
	case wire.ReasonIntegrityRequired:
		return ErrIntegrityRequired
	case wire.ReasonStale:
		return ErrStale
	}
	return ErrUnknownReason
}

// ReasonError is an error response from the server. It matches the
// sentinel of its Reason with errors.Is:
//
//	errors.Is(err, client.ErrKeyMismatch)
type ReasonError struct {
	Method wire.Method
	Reason wire.Reason
	Server netip.AddrPort // the server that answered
	// Authenticated is true when the error answered a signed request and
	// carried the server's MAC keyed by the KEY (docs/PROTOCOL.md §18.4):
	// then the server really said it. Errors a server gives before it can
	// check a MAC (ID not registered, KEY mismatch, ...) come unsigned,
	// and anyone on the path could have forged them.
	Authenticated bool

	serverMs uint64 // the server's TIMESTAMP in an authenticated ReasonStale
}

func (e *ReasonError) Error() string {
	s := "ewf server refused "
	if e.Server.IsValid() {
		s = "ewf server " + e.Server.String() + " refused "
	}
	s += e.Method.String() + ": " + e.Reason.String()
	if reasonSentinel(e.Reason) == ErrUnknownReason && e.Reason != wire.ReasonUnknown {
		s += " 0x" + strconv.FormatUint(uint64(e.Reason), 16)
	}
	return s
}

// Is reports whether target is the sentinel of e.Reason.
func (e *ReasonError) Is(target error) bool { return target == reasonSentinel(e.Reason) }

// TimeoutError says that the server did not answer a request. It matches
// ErrTimeout; Unwrap gives the last problem seen while waiting (a bad
// response, a failed send), or nil.
type TimeoutError struct {
	Request  string         // "REGISTER", "STUN Binding", ...
	Server   netip.AddrPort // where the request went
	Attempts int            // transmissions made
	Waited   time.Duration  // from the first transmission to giving up
	Last     error          // last bad response or send error, may be nil
}

func (e *TimeoutError) Error() string {
	s := "ewf server "
	if e.Server.IsValid() {
		s += e.Server.String() + " "
	}
	s += "did not answer " + e.Request +
		" after " + strconv.Itoa(e.Attempts) + " attempt"
	if e.Attempts != 1 {
		s += "s"
	}
	s += " over " + e.Waited.String()
	if e.Last != nil {
		s += " (last problem: " + e.Last.Error() + ")"
	}
	return s
}

// Is makes a TimeoutError match ErrTimeout.
func (e *TimeoutError) Is(target error) bool { return target == ErrTimeout }

// Unwrap returns the last problem seen, or nil.
func (e *TimeoutError) Unwrap() error { return e.Last }

// Causes of bad responses found in HandlePacket. They are package-level
// values so that recording one allocates nothing; the requester wraps the
// last one with ErrBadResponse when it gives up.
var (
	errWrongMethod     = errors.New("response is for another method")
	errWrongKind       = errors.New("STUN response to an X request or X response to a STUN request")
	errNotResponse     = errors.New("request or indication with an outstanding transaction ID")
	errSTUNNotSuccess  = errors.New("STUN response is not a Binding success")
	errSTUNNoMapped    = errors.New("STUN Binding success without a valid XOR-MAPPED-ADDRESS")
	errSTUNFingerprint = errors.New("STUN FINGERPRINT does not match")
	errSTUNDecode      = errors.New("STUN message does not decode")
	errNoSecret        = errors.New("introduction answered without SECRET")
	errBadMAC          = errors.New("answer's MAC does not verify with the KEY: forged or corrupted")
	errNoMAC           = errors.New("success answer to a signed request carries no MAC")
	errUnsignedReason  = errors.New("unsigned error with a reason the server only sends signed")
)
