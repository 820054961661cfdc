package ewf

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/ewf-project/ewf/streammux"
)

// Conn is a direct, encrypted connection to a peer: QUIC over the punched
// UDP path, or TLS over a TCP simultaneous open. It is a net.Conn with
// CloseWrite, so that each direction can end on its own: its Read and
// Write use the connection's default stream. OpenStream and AcceptStream
// add more streams, each its own net.Conn (streams.go).
type Conn struct {
	peer      ID
	transport Transport
	auth      Auth // how the peer was proven (tls.go)

	// The path: set before the Conn is handed out, changed under pmu
	// when a relayed connection moves to a direct path (migrate.go).
	pmu   sync.Mutex
	rtt   time.Duration
	path  Path           // PathDirect unless relayed (relay.go)
	relay netip.AddrPort // the relayed address in use, if relayed
	// relayTr is how this side reaches the relay, if relayed: UDP, or
	// TCP (TURN over TCP: UDP blocked, or a --transport tcp dial).
	relayTr Transport
	direct  netip.AddrPort // the direct address a relayed connection moved to
	moved   chan struct{}  // closed when it moved
	// roamed is where a QUIC client connection's packets go since its peer
	// moved (roam.go); quic-go's remote address stays the old one.
	roamed atomic.Pointer[netip.AddrPort]

	// QUIC: qc and its default stream st. TCP: tc, multiplexed by mux,
	// whose stream 0 is the default stream def.
	qc  *quic.Conn
	st  *quic.Stream
	tc  *tls.Conn
	mux *streammux.Session
	def *streammux.Stream

	// The dialer reads the acceptor's welcome lazily (tls.go): over QUIC
	// here, before the first byte Read returns (welcomeMu guards wgot and
	// wbuf; welcomed is true from the start on the accepting side), over
	// TLS in welcomeConn. refusal is set once the welcome failed to come
	// (the acceptor refused us): every use of the Conn then returns it.
	welcomeMu sync.Mutex
	welcomed  atomic.Bool
	wgot      int
	wbuf      [len(welcome)]byte
	refusal   atomic.Pointer[error]

	eofOnce   sync.Once
	peerGotIt chan struct{} // QUIC: the peer has read our end of stream
	onClose   func()
	closeOnce sync.Once
}

// closeLinger bounds how long Close waits for the peer to confirm that it
// read everything, before it tears the connection down anyway.
const closeLinger = 5 * time.Second

func newQUICConn(qc *quic.Conn, st *quic.Stream, peer ID, rtt time.Duration) *Conn {
	c := &Conn{peer: peer, transport: TransportUDP, rtt: rtt, qc: qc, st: st, peerGotIt: make(chan struct{}), path: PathDirect,
		moved: make(chan struct{})}
	c.welcomed.Store(true) // the dialer's openConn clears it
	go c.awaitEOFAck()
	return c
}

// newTLSConn multiplexes tc; isClient (the TLS client) opens odd stream
// IDs, and reads the acceptor's welcome first (welcomeConn). idle ends the
// connection when the peer goes silent that long.
func newTLSConn(tc *tls.Conn, peer ID, rtt time.Duration, isClient bool, idle time.Duration) *Conn {
	c := &Conn{peer: peer, transport: TransportTCP, rtt: rtt, tc: tc, path: PathDirect, moved: make(chan struct{})}
	var conn net.Conn = tc
	if isClient {
		conn = &welcomeConn{Conn: tc, c: c, peer: peer}
	}
	cfg := streammux.Config{Client: isClient, IdleTimeout: idle, Window: tcpStreamWindow}
	if b, ok := tc.NetConn().(streammux.Batcher); ok {
		cfg.Batcher = b
	}
	c.mux = streammux.New(conn, cfg)
	c.def = c.mux.Default()
	return c
}

// fail records err as the reason the connection cannot be used (the first
// one wins) and returns the one recorded.
func (c *Conn) fail(err error) error {
	c.refusal.CompareAndSwap(nil, &err)
	return *c.refusal.Load()
}

// streamErr is streamErr for the connection's own calls: once the welcome
// failed, that failure (ErrPeerAuth, as a rule) is the error of every
// call, whatever the transport reported first.
func (c *Conn) streamErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if r := c.refusal.Load(); r != nil {
		return *r
	}
	return streamErr(err)
}

// readWelcome reads the acceptor's welcome from the default QUIC stream
// (the dialer's side; the accepting side has welcomed set). A read
// deadline that passes meanwhile is returned as is, and the next Read goes
// on where this one stopped.
func (c *Conn) readWelcome() error {
	c.welcomeMu.Lock()
	defer c.welcomeMu.Unlock()
	if r := c.refusal.Load(); r != nil {
		return *r
	}
	for !c.welcomed.Load() && c.wgot < len(welcome) {
		n, err := c.st.Read(c.wbuf[c.wgot:])
		c.wgot += n
		var ne net.Error
		switch {
		case err == nil, err == io.EOF && c.wgot == len(welcome):
			// The welcome and the end of the stream came together:
			// the next Read returns io.EOF again.
		case errors.As(err, &ne) && ne.Timeout() && !isAuthFailure(err):
			return err // a read deadline (or the idle timeout, which is one too)
		case err == io.EOF:
			c.qc.CloseWithError(0, "")
			return c.fail(handshakeErr("QUIC", c.qc.RemoteAddr(), errNoWelcome))
		default:
			return c.fail(handshakeErr("QUIC", c.qc.RemoteAddr(), err))
		}
	}
	if !c.welcomed.Load() {
		if c.wbuf != welcome {
			c.qc.CloseWithError(0, "")
			return c.fail(handshakeErr("QUIC", c.qc.RemoteAddr(), errNoWelcome))
		}
		c.welcomed.Store(true)
	}
	return nil
}

// tcpStreamWindow is each TCP-path stream's receive window: 1 MiB keeps a
// path of 100 Mbit/s and 80 ms full, and bounds what one slow reader holds.
const tcpStreamWindow = 1 << 20

// Peer returns the ID of the peer, as proven in the TLS handshake.
func (c *Conn) Peer() ID { return c.peer }

// Auth returns how the peer's ID was proven: AuthKey by its identity key,
// or AuthSecret, for a legacy ID, by the introduction's secret (which the
// rendezvous server knows too).
func (c *Conn) Auth() Auth { return c.auth }

// Transport returns TransportUDP (QUIC) or TransportTCP.
func (c *Conn) Transport() Transport { return c.transport }

// Path says whether the connection is direct or goes through a TURN
// relay; Relay is then the relayed address in use (this side's or the
// peer's). The relay forwards only ciphertext. A relayed QUIC connection
// goes on punching in the background and moves to a direct path when one
// answers: Path then changes to PathDirect, and Moved is closed.
func (c *Conn) Path() Path {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.path
}

// Relay returns the relayed address the connection uses, if Path is
// PathRelay.
func (c *Conn) Relay() (netip.AddrPort, bool) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.relay, c.path == PathRelay
}

// RelayTransport returns how this side's packets reach the relay, if Path
// is PathRelay: TransportUDP, or TransportTCP when it talks TURN over TCP
// (its network drops UDP, or it dialled with TransportTCP). The session
// itself is QUIC end to end either way: Transport is TransportUDP for
// every relayed connection, because the relay forwards datagrams.
func (c *Conn) RelayTransport() (Transport, bool) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.relayTr, c.path == PathRelay
}

// Moved returns a channel that is closed when a relayed connection has
// moved to a direct path (Path, RemoteAddr and RTT then tell the new
// path). It is never closed for a connection that was direct from the
// start or stays relayed: wait on it together with the connection's end.
func (c *Conn) Moved() <-chan struct{} { return c.moved }

// RTT returns the round-trip time measured while the path was made, or
// while the direct path a relayed connection moved to was punched.
func (c *Conn) RTT() time.Duration {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.rtt
}

// moveTo records that the connection now runs on the direct path to, and
// tells Moved's waiters.
func (c *Conn) moveTo(to netip.AddrPort, rtt time.Duration) {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if c.path == PathDirect {
		return
	}
	c.path, c.direct, c.rtt = PathDirect, to, rtt
	close(c.moved)
}

// Read reads the default stream. On the dialing side, the first Read
// first takes the acceptor's welcome off it: a peer that refused us in
// the handshake makes Read fail with ErrPeerAuth instead.
func (c *Conn) Read(p []byte) (int, error) {
	if c.tc != nil {
		n, err := c.def.Read(p)
		return n, c.streamErr(err)
	}
	if !c.welcomed.Load() {
		if err := c.readWelcome(); err != nil {
			return 0, err
		}
	}
	n, err := c.st.Read(p)
	if err == io.EOF {
		c.eofOnce.Do(c.ackEOF)
	}
	return n, c.streamErr(err)
}

// Write writes the default stream. On the dialing side it does not wait
// for the acceptor's welcome: what is written before it travels encrypted
// to the peer that proved its identity in Dial, which discards it if it
// refuses us; the refusal then fails the next Write or Read with
// ErrPeerAuth.
func (c *Conn) Write(p []byte) (int, error) {
	if c.tc != nil {
		n, err := c.def.Write(p)
		return n, c.streamErr(err)
	}
	n, err := c.st.Write(p)
	return n, c.streamErr(err)
}

// CloseWrite ends this side's direction: the peer reads io.EOF once it has
// read everything written before.
func (c *Conn) CloseWrite() error {
	if c.tc != nil {
		return c.def.CloseWrite()
	}
	return c.st.Close()
}

// Close ends both directions of the connection and every stream on it.
// Over QUIC it first waits (up to a few seconds) until the peer confirms
// it read all that was written on the default stream, because closing a
// QUIC connection discards data still in flight; extra streams get no
// such wait: close them, and let their peers finish, before Close.
func (c *Conn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		if c.tc != nil {
			c.def.CloseWrite()
			err = c.mux.Close()
		} else {
			c.st.Close()
			t := time.NewTimer(closeLinger)
			select {
			case <-c.peerGotIt:
			case <-c.qc.Context().Done():
			case <-t.C:
			}
			t.Stop()
			c.st.CancelRead(0)
			err = c.qc.CloseWithError(0, "")
		}
		if c.onClose != nil {
			c.onClose()
		}
	})
	return err
}

// ackEOF tells the peer that we read its end of stream, on a
// unidirectional stream of one byte.
func (c *Conn) ackEOF() {
	go func() {
		ctx, cancel := context.WithTimeout(c.qc.Context(), closeLinger)
		defer cancel()
		s, err := c.qc.OpenUniStreamSync(ctx)
		if err != nil {
			return
		}
		s.Write([]byte{1})
		s.Close()
	}()
}

func (c *Conn) awaitEOFAck() {
	s, err := c.qc.AcceptUniStream(c.qc.Context())
	if err != nil {
		return
	}
	var b [1]byte
	if _, err := io.ReadFull(s, b[:]); err == nil {
		close(c.peerGotIt)
	}
}

// LocalAddr returns the local address of the direct path.
func (c *Conn) LocalAddr() net.Addr {
	if c.tc != nil {
		return c.tc.LocalAddr()
	}
	return c.qc.LocalAddr()
}

// RemoteAddr returns the peer's address on the direct path: its NAT's
// public mapping, or its LAN address when both are behind one NAT. For a
// relayed connection it is the relayed address QUIC talks to, until the
// connection moves to a direct path.
func (c *Conn) RemoteAddr() net.Addr {
	if c.tc != nil {
		return c.tc.RemoteAddr()
	}
	c.pmu.Lock()
	d := c.direct
	c.pmu.Unlock()
	if d.IsValid() {
		return net.UDPAddrFromAddrPort(d)
	}
	if r := c.roamed.Load(); r != nil {
		return net.UDPAddrFromAddrPort(*r)
	}
	return c.qc.RemoteAddr()
}

func (c *Conn) SetDeadline(t time.Time) error {
	if c.tc != nil {
		return c.def.SetDeadline(t)
	}
	return c.st.SetDeadline(t)
}

func (c *Conn) SetReadDeadline(t time.Time) error {
	if c.tc != nil {
		return c.def.SetReadDeadline(t)
	}
	return c.st.SetReadDeadline(t)
}

func (c *Conn) SetWriteDeadline(t time.Time) error {
	if c.tc != nil {
		return c.def.SetWriteDeadline(t)
	}
	return c.st.SetWriteDeadline(t)
}

// ErrNoDatagrams is returned by the datagram methods on a TCP Conn.
var ErrNoDatagrams = errors.New("ewf: datagrams need the UDP transport")

// SendDatagram sends p to the peer as one unreliable, encrypted datagram
// (RFC 9221) over the punched UDP path, for applications that want
// datagrams rather than a stream. It must fit in one packet (about 1,200
// bytes is always safe).
func (c *Conn) SendDatagram(p []byte) error {
	if c.qc == nil {
		return ErrNoDatagrams
	}
	return c.authErr(c.qc.SendDatagram(p))
}

// ReceiveDatagram returns the next datagram from the peer.
func (c *Conn) ReceiveDatagram(ctx context.Context) ([]byte, error) {
	if c.qc == nil {
		return nil, ErrNoDatagrams
	}
	b, err := c.qc.ReceiveDatagram(ctx)
	return b, c.authErr(err)
}

// authErr leaves err as it is, unless the peer refused us in the
// handshake: then it is ErrPeerAuth.
func (c *Conn) authErr(err error) error {
	if err == nil {
		return nil
	}
	if r := c.refusal.Load(); r != nil {
		return *r
	}
	var te *quic.TransportError
	if errors.As(err, &te) && te.ErrorCode.IsCryptoError() {
		return fmt.Errorf("%w: %w", ErrPeerAuth, err)
	}
	return err
}
