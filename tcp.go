package ewf

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/wire"
)

// tcpSide is a node's TCP presence: a connection to the server from one
// local port, which holds the NAT's TCP mapping and the TCP binding, and
// from which the node later dials peers (RFC 5128 §3.4: the simultaneous
// open must leave from the port whose mapping the peer was told).
type tcpSide struct {
	conn   *client.Conn
	local  netip.AddrPort
	public atomic.Value
}

func (t *tcpSide) close() { t.conn.Close() }

// bindTCP connects to the server over TCP, learns the public TCP address
// and binds it.
func (n *Node) bindTCP(ctx context.Context, self wire.ID, key wire.Key) (*tcpSide, error) {
	c, err := client.DialTCP(ctx, n.cfg.Server, netip.AddrPort{}, client.Config{
		Logger:      n.log,
		OnIntroduce: n.onIntroduce,
	})
	if err != nil {
		return nil, fmt.Errorf("ewf: TCP to server: %w", serverErr(err))
	}
	public, err := c.PublicAddress(ctx)
	if err == nil {
		err = c.Bind(ctx, self, key, wire.Address{Transport: wire.TransportTCP, AddrPort: public})
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("ewf: TCP binding: %w", serverErr(err))
	}
	t := &tcpSide{conn: c, local: c.LocalAddr()}
	t.public.Store(public)
	return t, nil
}

// tcpRetry is the pause between connect attempts while the peer's NAT is
// still closed; the kernel's own SYN retransmission (1 s, then 2 s) is too
// slow for a fast connect.
const tcpRetry = 200 * time.Millisecond

// dialTCP makes a TCP connection with peer at addr by simultaneous open:
// it connects from the bound port again and again and at the same time
// accepts on it; whichever succeeds first wins. Then TLS, with the dialer
// as the TLS client.
func (n *Node) dialTCP(ctx context.Context, peer wire.ID, secret wire.Secret, addr netip.AddrPort, isClient bool) (*Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.PunchTimeout)
	defer cancel()
	start := time.Now()
	local := n.tcp.Load().local
	// Each goroutine sends at most one connection, so neither blocks.
	results := make(chan net.Conn, 2)
	var wg sync.WaitGroup

	lc := net.ListenConfig{Control: client.ReusePortControl}
	ln, err := lc.Listen(ctx, "tcp", local.String())
	if err == nil {
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return // ln closed
				}
				ra, _ := netip.ParseAddrPort(c.RemoteAddr().String())
				if ra.Addr().Unmap() != addr.Addr() {
					c.Close() // not the introduced peer's address
					continue
				}
				results <- c
				return
			}
		})
	}
	wg.Go(func() {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), Control: client.ReusePortControl, Timeout: time.Second}
		for ctx.Err() == nil {
			c, err := d.DialContext(ctx, "tcp", addr.String())
			if err == nil {
				results <- c
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(tcpRetry):
			}
		}
	})

	var raw net.Conn
	select {
	case raw = <-results:
	case <-ctx.Done():
	}
	// Stop both sides of the race and close a second connection that got
	// in too: one is all the peer will use.
	cancel()
	if ln != nil {
		ln.Close()
	}
	wg.Wait()
	close(results)
	for c := range results {
		c.Close()
	}
	if raw == nil {
		return nil, fmt.Errorf("%w: TCP simultaneous open with %s (peer %s) did not complete", ErrNoDirectPath, addr, peer)
	}
	rtt := time.Since(start)

	conf, err := tlsConfig(secret, n.self, peer, isClient)
	if err != nil {
		raw.Close()
		return nil, err
	}
	var tc *tls.Conn
	if isClient {
		tc = tls.Client(raw, conf)
	} else {
		tc = tls.Server(raw, conf)
	}
	hctx, hcancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer hcancel()
	hs := time.Now()
	if err := tc.HandshakeContext(hctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("%w: TLS with %s: %w", ErrPeerAuth, addr, err)
	}
	// A TLS 1.3 handshake takes one round trip on each side's clock; it is
	// a better estimate than the connect time, which includes waiting for
	// the peer's NAT to open.
	if d := time.Since(hs); d < rtt {
		rtt = d
	}
	return newTLSConn(tc, peer, rtt), nil
}
