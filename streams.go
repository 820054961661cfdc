package ewf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ewf-project/ewf/streammux"
)

// Stream is one extra bidirectional stream of a Conn, independent of the
// others: each has its own flow control, so a slow reader holds back only
// its own stream. It is a net.Conn with CloseWrite (half-close) and Reset.
// Over QUIC it is a native QUIC stream; over TLS/TCP a stream of the
// streammux multiplexer.
type Stream struct {
	c *Conn
	q *quic.Stream
	m *streammux.Stream
}

// StreamError is returned by a Stream's Read after the peer reset its
// direction, and by Write after the peer stopped reading (or after Reset
// here). Code is the application's error code.
type StreamError struct {
	Code   uint32
	Remote bool // the peer chose the code
}

func (e *StreamError) Error() string {
	if e.Remote {
		return fmt.Sprintf("ewf: stream reset by the peer, code %d", e.Code)
	}
	return fmt.Sprintf("ewf: stream reset, code %d", e.Code)
}

// Errors of a connection that ended; the cause is wrapped too.
var (
	// ErrIdleTimeout: nothing arrived from the peer within
	// Config.IdleTimeout; the peer or the path is gone.
	ErrIdleTimeout = errors.New("ewf: nothing heard from the peer within the idle timeout")
	// ErrPeerClosed: the peer closed the connection.
	ErrPeerClosed = errors.New("ewf: the peer closed the connection")
)

// streamPreamble opens every extra QUIC stream, for the reason preamble
// opens the default one: QUIC tells the accepting side about a stream only
// once data arrives on it. It differs from preamble so that a confused
// peer cannot make an extra stream pass for the default one.
var streamPreamble = [4]byte{'e', 'w', 'f', 's'}

// OpenStream opens a new stream to the peer, whose AcceptStream returns
// it. Over QUIC it waits while the peer's limit on open streams is
// reached.
func (c *Conn) OpenStream(ctx context.Context) (*Stream, error) {
	if c.mux != nil {
		m, err := c.mux.Open()
		if err != nil {
			return nil, c.streamErr(err)
		}
		return &Stream{c: c, m: m}, nil
	}
	q, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, c.streamErr(err)
	}
	if _, err := q.Write(streamPreamble[:]); err != nil {
		q.CancelRead(0)
		q.CancelWrite(0)
		return nil, c.streamErr(err)
	}
	return &Stream{c: c, q: q}, nil
}

// AcceptStream waits for the next stream the peer opened. It returns an
// error wrapping ErrIdleTimeout or ErrPeerClosed (or net.ErrClosed after
// Close) when the connection ends, which makes a loop around it a way to
// notice that.
func (c *Conn) AcceptStream(ctx context.Context) (*Stream, error) {
	if c.mux != nil {
		m, err := c.mux.Accept(ctx.Done())
		if streammux.ErrCanceled(err) {
			return nil, ctx.Err()
		}
		if err != nil {
			return nil, c.streamErr(err)
		}
		return &Stream{c: c, m: m}, nil
	}
	for {
		q, err := c.qc.AcceptStream(ctx)
		if err != nil {
			return nil, c.streamErr(err)
		}
		var pre [len(streamPreamble)]byte
		q.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(q, pre[:]); err != nil || pre != streamPreamble {
			q.CancelRead(0)
			q.CancelWrite(0)
			continue
		}
		q.SetReadDeadline(time.Time{})
		return &Stream{c: c, q: q}, nil
	}
}

// Read reads the stream: io.EOF after the peer's CloseWrite, a
// *StreamError after its Reset.
func (s *Stream) Read(p []byte) (int, error) {
	var n int
	var err error
	if s.m != nil {
		n, err = s.m.Read(p)
	} else {
		n, err = s.q.Read(p)
	}
	return n, s.c.streamErr(err)
}

// Write writes p, waiting while the peer's flow-control window is full.
func (s *Stream) Write(p []byte) (int, error) {
	var n int
	var err error
	if s.m != nil {
		n, err = s.m.Write(p)
	} else {
		n, err = s.q.Write(p)
	}
	return n, s.c.streamErr(err)
}

// CloseWrite ends this side's direction once what was written arrived;
// the peer reads io.EOF. Reading goes on.
func (s *Stream) CloseWrite() error {
	if s.m != nil {
		return s.m.CloseWrite()
	}
	return s.q.Close()
}

// Close ends both directions: what was written is still delivered, and
// the peer's further writes fail with a StreamError of code 0.
func (s *Stream) Close() error {
	if s.m != nil {
		return s.m.Close()
	}
	err := s.q.Close()
	s.q.CancelRead(0)
	return err
}

// Reset abandons both directions with code: the peer's Read and Write
// return a *StreamError carrying it. Bytes not yet delivered are lost.
func (s *Stream) Reset(code uint32) error {
	if s.m != nil {
		return s.m.Reset(code)
	}
	s.q.CancelWrite(quic.StreamErrorCode(code))
	s.q.CancelRead(quic.StreamErrorCode(code))
	return nil
}

// LocalAddr returns the connection's local address.
func (s *Stream) LocalAddr() net.Addr { return s.c.LocalAddr() }

// RemoteAddr returns the peer's address on the direct path.
func (s *Stream) RemoteAddr() net.Addr { return s.c.RemoteAddr() }

func (s *Stream) SetDeadline(t time.Time) error {
	if s.m != nil {
		return s.m.SetDeadline(t)
	}
	return s.q.SetDeadline(t)
}

func (s *Stream) SetReadDeadline(t time.Time) error {
	if s.m != nil {
		return s.m.SetReadDeadline(t)
	}
	return s.q.SetReadDeadline(t)
}

func (s *Stream) SetWriteDeadline(t time.Time) error {
	if s.m != nil {
		return s.m.SetWriteDeadline(t)
	}
	return s.q.SetWriteDeadline(t)
}

// streamErr turns the two transports' stream and connection errors into
// ewf's, keeping the cause wrapped. io.EOF and nil pass unchanged.
func streamErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	var qse *quic.StreamError
	var mse *streammux.StreamError
	var idle *quic.IdleTimeoutError
	var app *quic.ApplicationError
	var te *quic.TransportError
	switch {
	case errors.As(err, &te) && te.ErrorCode.IsCryptoError():
		// The peer refused us in the TLS handshake after our side of
		// it had finished (tls.go, welcome): the dialer learns it here.
		return fmt.Errorf("%w: %w", ErrPeerAuth, err)
	case errors.As(err, &qse):
		return &StreamError{Code: uint32(qse.ErrorCode), Remote: qse.Remote}
	case errors.As(err, &mse):
		return &StreamError{Code: mse.Code, Remote: mse.Remote}
	case errors.As(err, &idle), errors.Is(err, streammux.ErrIdleTimeout):
		return fmt.Errorf("%w: %w", ErrIdleTimeout, err)
	case errors.As(err, &app) && app.Remote, errors.Is(err, streammux.ErrPeerClosed):
		return fmt.Errorf("%w: %w", ErrPeerClosed, err)
	case errors.As(err, &app) && !app.Remote:
		return fmt.Errorf("%w: %w", net.ErrClosed, err)
	}
	return err
}

// quicConfig is shared by both sides of this node's connections.
// KeepAlivePeriod keeps the punched path's NAT mappings open (strict NATs
// forget UDP after 30 s); MaxIncomingStreams bounds the streams a peer may
// have open at once (OpenStream waits beyond it).
func (n *Node) quicConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout: 5 * time.Second,
		MaxIdleTimeout:       n.cfg.IdleTimeout,
		KeepAlivePeriod:      min(10*time.Second, n.cfg.IdleTimeout/4),
		EnableDatagrams:      true,
		MaxIncomingStreams:   1024,
	}
}
