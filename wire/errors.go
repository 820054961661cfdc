package wire

import "errors"

// The three ways a received X message can be wrong. Every error Decode and
// Check return matches exactly one of them with errors.Is, and the match
// says what the receiver does.
var (
	// ErrInvalidHeader: not a well-formed X message. Ignore it; never
	// answer, because answering unverified junk is how reflectors are made.
	ErrInvalidHeader = errors.New("x: invalid header")
	// ErrInvalidAttributes: a good header with a body that breaks the
	// attribute rules. A request gets ReasonInvalidAttributes back.
	ErrInvalidAttributes = errors.New("x: invalid attributes")
	// ErrUnknownMethod: a good message of a method this side does not
	// serve. A request gets ReasonUnknownMethod back.
	ErrUnknownMethod = errors.New("x: unknown method")
)

// Errors from building messages and parsing IDs; they are programmer or
// user errors, not wire errors.
var (
	ErrBadAddress        = errors.New("x: invalid address")
	ErrDuplicateAddress  = errors.New("x: NETWORK_ADDRESS for this transport already present")
	ErrTooManyCandidates = errors.New("x: too many CANDIDATE attributes")
	ErrTooManyRelayed    = errors.New("x: too many RELAYED attributes")
	ErrBadIDText         = errors.New("x: an ID is 32 hex digits")
	ErrBadString         = errors.New("x: a relay string must be 1 to MaxRelayString bytes")
	ErrTooManyURLs       = errors.New("x: too many RELAY_URL attributes")
)

// formatError is a specific decode error that matches one of the three
// kinds. Values are package-level pointers, so returning one allocates
// nothing even when an attacker sends a flood of bad packets.
type formatError struct {
	msg  string
	kind error
}

func (e *formatError) Error() string { return e.msg }
func (e *formatError) Unwrap() error { return e.kind }

var (
	errShortHeader      = &formatError{"x: shorter than the 20-byte header", ErrInvalidHeader}
	errTooLarge         = &formatError{"x: longer than MaxMessageSize", ErrInvalidHeader}
	errNotX             = &formatError{"x: leading bits are not 11", ErrInvalidHeader}
	errBadCookie        = &formatError{"x: wrong magic cookie", ErrInvalidHeader}
	errLengthNotAligned = &formatError{"x: length is not a multiple of 4", ErrInvalidHeader}
	errLengthMismatch   = &formatError{"x: length does not match the message size", ErrInvalidHeader}

	errAttrTruncated     = &formatError{"x: attribute runs past the end of the message", ErrInvalidAttributes}
	errAttrLength        = &formatError{"x: attribute has the wrong length for its type", ErrInvalidAttributes}
	errUnknownRequired   = &formatError{"x: unknown comprehension-required attribute", ErrInvalidAttributes}
	errDuplicate         = &formatError{"x: duplicate attribute", ErrInvalidAttributes}
	errTooManyCandidates = &formatError{"x: more than MaxCandidates CANDIDATE attributes", ErrInvalidAttributes}
	errTooManyURLs       = &formatError{"x: more than MaxRelayURLs RELAY_URL attributes", ErrInvalidAttributes}
	errTooManyRelayed    = &formatError{"x: more than MaxRelayed RELAYED attributes", ErrInvalidAttributes}
	errAfterMAC          = &formatError{"x: attribute after MAC", ErrInvalidAttributes}
	errBadFamily         = &formatError{"x: unknown address family", ErrInvalidAttributes}
	errBadTransport      = &formatError{"x: unknown transport", ErrInvalidAttributes}
	errMissing           = &formatError{"x: a required attribute is missing", ErrInvalidAttributes}
	errUnexpected        = &formatError{"x: attribute not allowed in this message", ErrInvalidAttributes}
	errMethod            = &formatError{"x: unknown method", ErrUnknownMethod}
	errClass             = &formatError{"x: method not defined for this class", ErrUnknownMethod}
)
