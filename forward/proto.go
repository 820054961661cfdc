// Package forward carries local TCP connections and UDP flows to services
// on a peer, over one ewf connection: the connector side listens on local
// ports (Forwarder), the listener side dials the services it exposes by
// label (Exposer). Each forwarded TCP connection is one stream of the
// connection; each UDP flow is one stream for its setup and lifetime plus
// QUIC datagrams (RFC 9221) for its packets.
//
// A stream opens with a request from the connector and an answer from the
// exposer, then carries the bytes of the connection:
//
//	request:  version(1)=1 | kind(1): 1 tcp, 2 udp | flow(4) | len(1) | label
//	answer:   status(1): 0 ok, 1 refused, 2 no such service, 3 unsupported
//	          | len(1) | message (why, for the connector's log)
//
// A UDP datagram on the connection is flow(4) | the UDP payload, where
// flow is the number the connector chose in its request.
//
// Half-close is carried both ways (a FIN from a local socket becomes the
// stream's CloseWrite, and back), and failures too: a local connection
// that is reset resets its stream with CodeAborted, which the far side
// turns into a reset of its own socket.
package forward

import (
	"encoding/binary"
	"errors"
)

const version = 1

// Kinds of forwarded traffic.
const (
	kindTCP byte = 1
	kindUDP byte = 2
)

// Answer statuses.
const (
	statusOK          byte = 0
	statusRefused     byte = 1
	statusNoService   byte = 2
	statusUnsupported byte = 3
)

// Stream reset codes.
const (
	// CodeAborted: the local socket at one end failed or was reset.
	CodeAborted uint32 = 1
)

// MaxLabel is the longest service label.
const MaxLabel = 64

// Errors of the stream header.
var (
	ErrShortHeader = errors.New("forward: truncated header")
	ErrVersion     = errors.New("forward: unknown header version")
	ErrBadLabel    = errors.New("forward: bad service label")
)

// request is the connector's opening of a stream.
type request struct {
	kind  byte
	flow  uint32
	label string
}

func (r *request) appendTo(b []byte) []byte {
	b = append(b, version, r.kind)
	b = binary.BigEndian.AppendUint32(b, r.flow)
	b = append(b, byte(len(r.label)))
	return append(b, r.label...)
}

// parseRequest decodes a request from the start of b and returns its
// length; b must hold the whole request (readRequest makes sure).
func parseRequest(b []byte) (request, int, error) {
	if len(b) < 7 {
		return request{}, 0, ErrShortHeader
	}
	if b[0] != version {
		return request{}, 0, ErrVersion
	}
	n := int(b[6])
	if n > MaxLabel {
		return request{}, 0, ErrBadLabel
	}
	if len(b) < 7+n {
		return request{}, 0, ErrShortHeader
	}
	return request{kind: b[1], flow: binary.BigEndian.Uint32(b[2:6]), label: string(b[7 : 7+n])}, 7 + n, nil
}

type answer struct {
	status byte
	msg    string
}

func (a *answer) appendTo(b []byte) []byte {
	msg := a.msg
	if len(msg) > 255 {
		msg = msg[:255]
	}
	b = append(b, a.status, byte(len(msg)))
	return append(b, msg...)
}

func parseAnswer(b []byte) (answer, int, error) {
	if len(b) < 2 {
		return answer{}, 0, ErrShortHeader
	}
	n := int(b[1])
	if len(b) < 2+n {
		return answer{}, 0, ErrShortHeader
	}
	return answer{status: b[0], msg: string(b[2 : 2+n])}, 2 + n, nil
}

// validLabel: letters, digits, '-', '_' and '.', up to MaxLabel bytes;
// empty means the default service of its kind.
func validLabel(s string) bool {
	if len(s) > MaxLabel {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}
