package ewf

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// A node's one UDP socket carries three protocols: STUN and X with the
// server, PUNCH with peers, and QUIC with peers. mux reads the socket and
// hands each datagram to its owner (docs/PROTOCOL.md §5):
//   - from the server's address and STUN or X: the rendezvous client;
//   - X PUNCH from anywhere: the puncher;
//   - everything else: QUIC, through quicConn.
type mux struct {
	conn    *net.UDPConn
	servers []netip.AddrPort // Config.Server's: the node may move among them

	toServer func(b []byte)                             // rendezvous client
	toPunch  func(m *wire.Message, from netip.AddrPort) // PUNCH from peers
	quic     *quicConn

	done chan struct{}
}

// quicQueue bounds the datagrams waiting for quic-go; beyond it new ones
// are dropped, as a full socket buffer would, and QUIC retransmits.
const quicQueue = 256

type datagram struct {
	buf  *[wire.MaxMessageSize + 100]byte
	n    int
	from netip.AddrPort
}

var bufPool = sync.Pool{New: func() any { return new([wire.MaxMessageSize + 100]byte) }}

func (m *mux) run() {
	defer close(m.done)
	var msg wire.Message
	for {
		buf := bufPool.Get().(*[wire.MaxMessageSize + 100]byte)
		n, from, err := m.conn.ReadFromUDPAddrPort(buf[:])
		if err != nil {
			bufPool.Put(buf)
			if isClosed(err) {
				m.quic.closeWith(net.ErrClosed)
				return
			}
			continue // ICMP errors surface here on Linux; keep reading
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		b := buf[:n]
		switch wire.Classify(b) {
		case wire.KindSTUN:
			if m.fromServer(from) {
				m.toServer(b)
			}
			bufPool.Put(buf)
			continue
		case wire.KindX:
			if m.fromServer(from) {
				m.toServer(b)
			} else if msg.Decode(b) == nil && msg.Type.Method == wire.MethodPunch {
				m.toPunch(&msg, from)
			}
			bufPool.Put(buf)
			continue
		}
		m.quic.deliver(datagram{buf, n, from})
	}
}

func isClosed(err error) bool {
	return err != nil && (errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed))
}

// quicConn is the net.PacketConn that quic-go reads from: the non-STUN/X
// share of the node's socket. Writes go straight to the socket.
type quicConn struct {
	sock *net.UDPConn
	in   chan datagram

	mu       sync.Mutex
	closed   error
	done     chan struct{} // closed on close
	deadline time.Time
	wake     chan struct{} // replaced and closed when the deadline changes
}

func newQuicConn(sock *net.UDPConn) *quicConn {
	return &quicConn{
		sock: sock,
		in:   make(chan datagram, quicQueue),
		done: make(chan struct{}),
		wake: make(chan struct{}),
	}
}

func (q *quicConn) deliver(d datagram) {
	select {
	case q.in <- d:
	default:
		bufPool.Put(d.buf)
	}
}

func (q *quicConn) ReadFrom(p []byte) (int, net.Addr, error) {
	for {
		q.mu.Lock()
		if q.closed != nil {
			err := q.closed
			q.mu.Unlock()
			return 0, nil, err
		}
		deadline, wake := q.deadline, q.wake
		q.mu.Unlock()
		var timer *time.Timer
		var expired <-chan time.Time
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			timer = time.NewTimer(d)
			expired = timer.C
		}
		select {
		case d := <-q.in:
			if timer != nil {
				timer.Stop()
			}
			n := copy(p, d.buf[:d.n])
			bufPool.Put(d.buf)
			return n, net.UDPAddrFromAddrPort(d.from), nil
		case <-q.done:
		case <-wake:
		case <-expired:
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

func (q *quicConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, &net.OpError{Op: "write", Net: "udp", Err: net.InvalidAddrError("not a UDP address")}
	}
	return q.sock.WriteToUDPAddrPort(p, ua.AddrPort())
}

// Close detaches quic-go; the socket belongs to the node.
func (q *quicConn) Close() error { q.closeWith(net.ErrClosed); return nil }

func (q *quicConn) closeWith(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed == nil {
		q.closed = err
		close(q.done)
	}
}

func (q *quicConn) LocalAddr() net.Addr { return q.sock.LocalAddr() }

func (q *quicConn) SetDeadline(t time.Time) error { return q.SetReadDeadline(t) }

func (q *quicConn) SetReadDeadline(t time.Time) error {
	q.mu.Lock()
	q.deadline = t
	close(q.wake)
	q.wake = make(chan struct{})
	q.mu.Unlock()
	return nil
}

func (q *quicConn) SetWriteDeadline(time.Time) error { return nil }

// SetReadBuffer and SetWriteBuffer let quic-go size the node's socket
// buffers as it would its own socket's.
func (q *quicConn) SetReadBuffer(n int) error { return q.sock.SetReadBuffer(n) }

// SetWriteBuffer sets the socket's send buffer.
func (q *quicConn) SetWriteBuffer(n int) error { return q.sock.SetWriteBuffer(n) }

func (m *mux) fromServer(from netip.AddrPort) bool {
	for _, s := range m.servers {
		if from == s {
			return true
		}
	}
	return false
}
