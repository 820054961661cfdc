package wire

import (
	"bufio"
	"errors"
	"io"
)

// ErrBadFrame is returned by Framer.Next when the stream does not hold a
// STUN or X header where one must start, or the header announces a message
// over MaxMessageSize. The stream cannot be resynchronised after that, so
// the connection must be closed.
var ErrBadFrame = errors.New("wire: stream is not STUN/X framed")

// Framer cuts a TCP stream into STUN and X messages, each header's length
// field giving where the next one starts (RFC 5389 §7.2.2: STUN over TCP
// has no other framing, and X follows it).
type Framer struct {
	r   *bufio.Reader
	buf [MaxMessageSize]byte
}

// NewFramer returns a Framer reading from r. It buffers, so nothing else
// should read r afterwards.
func NewFramer(r io.Reader) *Framer {
	return &Framer{r: bufio.NewReaderSize(r, 2*MaxMessageSize)}
}

// Reset makes f read from r as if new, keeping its buffers, so a server
// can reuse one Framer for connection after connection without allocating.
func (f *Framer) Reset(r io.Reader) { f.r.Reset(r) }

// Next returns the next whole message and its kind. The slice is valid
// until the following call. At a clean end of stream between messages it
// returns io.EOF; a stream that ends inside a message returns
// io.ErrUnexpectedEOF; a bad header returns ErrBadFrame. Read errors
// (deadlines included) are returned as they are.
func (f *Framer) Next() ([]byte, Kind, error) {
	h := f.buf[:HeaderSize]
	if _, err := io.ReadFull(f.r, h); err != nil {
		return nil, KindOther, err
	}
	k := Classify(h)
	if k == KindOther {
		return nil, k, ErrBadFrame
	}
	n := MessageLength(h)
	if n > MaxMessageSize {
		return nil, k, ErrBadFrame
	}
	msg := f.buf[:n]
	if _, err := io.ReadFull(f.r, msg[HeaderSize:]); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, k, err
	}
	return msg, k, nil
}
