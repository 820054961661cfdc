package server

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// tcpConn is one accepted connection. Its goroutine reads frames, handles
// them and writes the answers; it is also the Replier of its Handler, for
// the late REGISTER answer, which a small writer goroutine (started on the
// first one) writes so that the store's committer never waits on a socket.
type tcpConn struct {
	d      *Daemon
	c      net.Conn // *net.TCPConn, or *tls.Conn on a TLS listener (tls.go)
	remote netip.AddrPort
	key    [16]byte // per-IP accounting key

	wmu sync.Mutex // one writer at a time on c

	mu     sync.Mutex
	closed bool
	async  chan []byte // nil until the first Reply
}

// asyncQueue is how many late answers and indications may wait for one
// connection. A client has at most a few REGISTERs in flight; a client
// reached over TCP (tcpdeliver.go) also gets an INTRODUCE and a few
// SIGNALs per introduction. More are dropped, as over UDP.
const asyncQueue = 16

// isClosed reports whether the connection ended (closedReplier).
func (t *tcpConn) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// Reply queues b for the connection's writer goroutine.
func (t *tcpConn) Reply(b []byte, _ netip.AddrPort) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	if t.async == nil {
		t.async = make(chan []byte, asyncQueue)
		// The connection's own goroutine still counts in d.wg until after
		// closed is set, so this Add cannot race with Wait reaching zero.
		t.d.wg.Add(1)
		go t.writeLoop(t.async)
	}
	select {
	case t.async <- append([]byte(nil), b...):
	default:
	}
}

func (t *tcpConn) writeLoop(ch <-chan []byte) {
	defer t.d.wg.Done()
	for b := range ch {
		if t.write(b) != nil {
			t.c.Close() // the reader sees the error and cleans up
		}
	}
}

// write writes b whole within the write timeout.
func (t *tcpConn) write(b []byte) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	if err := t.c.SetWriteDeadline(time.Now().Add(t.d.srv.cfg.TCPWriteTimeout)); err != nil {
		return err
	}
	_, err := t.c.Write(b)
	return err
}

// serveTCP accepts connections until ln is closed.
// With tlsConf, every connection is served through TLS (tls.go).
func (d *Daemon) serveTCP(ln *net.TCPListener, tlsConf *tls.Config) {
	defer d.wg.Done()
	var backoff time.Duration
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait a little, as
			// net/http does, instead of spinning.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			d.log.Warn("tcp accept", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-d.quit:
				return
			}
			continue
		}
		backoff = 0
		d.admit(c, tlsConf)
	}
}

// admit starts serving c, or closes it at once if a connection cap is
// reached.
func (d *Daemon) admit(c *net.TCPConn, tlsConf *tls.Config) {
	var ra netip.AddrPort
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		ra = a.AddrPort()
	}
	ra = netip.AddrPortFrom(ra.Addr().Unmap().WithZone(""), ra.Port())
	t := &tcpConn{d: d, c: c, remote: ra, key: sourceKey(ra.Addr())}
	if tlsConf != nil {
		// The handshake runs on the first read, under the same idle
		// deadline as a message.
		t.c = tls.Server(c, tlsConf)
	}
	cfg := &d.srv.cfg
	d.connMu.Lock()
	switch {
	case d.closing:
		d.connMu.Unlock()
		c.Close()
		return
	case len(d.conns) >= cfg.MaxTCPConns:
		d.connMu.Unlock()
		d.met.tcpRefused[0].Inc()
		c.SetLinger(0) // no TIME_WAIT for a connection we never served
		c.Close()
		return
	case d.perIP[t.key] >= cfg.MaxTCPPerIP:
		d.connMu.Unlock()
		d.met.tcpRefused[1].Inc()
		c.SetLinger(0)
		c.Close()
		return
	}
	d.conns[t] = struct{}{}
	d.perIP[t.key]++
	d.connMu.Unlock()
	d.met.tcpConns.Inc()
	d.wg.Add(1)
	go d.serveConn(t)
}

// serveConn reads STUN and X messages framed by their headers until the
// peer closes, sends a bad frame, stays silent for TCPIdle, or the daemon
// stops.
func (d *Daemon) serveConn(t *tcpConn) {
	defer d.wg.Done()
	defer d.release(t)
	cfg := &d.srv.cfg
	h := d.srv.NewHandler(wire.TransportTCP, t)
	f := wire.NewFramer(t.c)
	out := make([]byte, 0, wire.MaxMessageSize)
	for {
		// One deadline per message: a client must deliver a whole message
		// within TCPIdle of the previous one, so trickling bytes does not
		// hold a connection any longer than silence does.
		if err := t.c.SetReadDeadline(time.Now().Add(cfg.TCPIdle)); err != nil {
			return
		}
		msg, _, err := f.Next()
		if err != nil {
			d.countTCPClose(err)
			return
		}
		resp := h.Handle(d.srv.now(), msg, t.remote, out[:0])
		if len(resp) > 0 {
			if err := t.write(resp); err != nil {
				d.met.tcpClosed[closeWrite].Inc()
				return
			}
		}
		if h.HangUp() {
			// Told it is over the rate, the source kept on (server.go,
			// overRate): closing ends its waiting requests at once.
			d.met.tcpClosed[closeRateLimited].Inc()
			return
		}
		out = resp[:0]
	}
}

// Why TCP connections end, the "reason" label of ewfd_tcp_closed_total.
const (
	closeEOF = iota
	closeIdle
	closeBadFrame
	closeWrite
	closeOther
	closeRateLimited
	numCloses
)

var closeNames = [numCloses]string{"eof", "idle", "bad_frame", "write", "other", "rate_limited"}

func (d *Daemon) countTCPClose(err error) {
	switch {
	case errors.Is(err, io.EOF):
		d.met.tcpClosed[closeEOF].Inc()
	case errors.Is(err, os.ErrDeadlineExceeded):
		d.met.tcpClosed[closeIdle].Inc()
	case errors.Is(err, wire.ErrBadFrame), errors.Is(err, io.ErrUnexpectedEOF):
		d.met.tcpClosed[closeBadFrame].Inc()
	default:
		d.met.tcpClosed[closeOther].Inc()
	}
}

// release closes t and forgets it.
func (d *Daemon) release(t *tcpConn) {
	t.mu.Lock()
	t.closed = true
	if t.async != nil {
		close(t.async)
	}
	t.mu.Unlock()
	t.c.Close()
	d.connMu.Lock()
	delete(d.conns, t)
	if d.perIP[t.key]--; d.perIP[t.key] <= 0 {
		delete(d.perIP, t.key)
	}
	d.connMu.Unlock()
	d.met.tcpConns.Dec()
}
