package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// Conn is a Client with a socket of its own and one reader goroutine that
// feeds HandlePacket with what the server sends: the standalone form used
// by the CLI (`ewf stun`, `ewf query`) and tests. Close joins the reader.
type Conn struct {
	*Client
	conn  net.Conn // *net.UDPConn or *net.TCPConn
	local netip.AddrPort
	wg    sync.WaitGroup
	once  sync.Once
	cerr  error
}

// ResolveServer turns "host:port", "host", "1.2.3.4" or "[::1]:3478" into
// an address; a missing port means DefaultPort. When a name has several
// addresses, the first IPv4 one is preferred, as most NATs map only IPv4.
// A list or SRV name (ResolveServers) gives its first server.
func ResolveServer(ctx context.Context, server string) (netip.AddrPort, error) {
	if strings.Contains(server, ",") || strings.HasPrefix(server, "_") {
		l, err := ResolveServers(ctx, server, nil)
		if err != nil {
			return netip.AddrPort{}, err
		}
		return l[0], nil
	}
	return resolveServer(ctx, net.DefaultResolver, server)
}

// errBadServer marks a server string that cannot name a server.
var errBadServer = errors.New("bad server address")

func resolveServer(ctx context.Context, r *net.Resolver, server string) (netip.AddrPort, error) {
	if a, err := netip.ParseAddr(server); err == nil { // a bare IPv6 address has colons too
		return netip.AddrPortFrom(a.Unmap(), DefaultPort), nil
	}
	host, port := server, ""
	if h, p, err := net.SplitHostPort(server); err == nil {
		host, port = h, p
	}
	if host == "" {
		return netip.AddrPort{}, fmt.Errorf("ewf client: %w %q: no host", errBadServer, server)
	}
	portNum := uint16(DefaultPort)
	if port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return netip.AddrPort{}, fmt.Errorf("ewf client: %w %q: bad port %q", errBadServer, server, port)
		}
		portNum = uint16(n)
	}
	ip, err := pickAddr(ctx, r, host)
	if err != nil {
		return netip.AddrPort{}, err
	}
	return netip.AddrPortFrom(ip, portNum), nil
}

// DialUDP resolves server, opens a UDP socket on an ephemeral port of the
// wildcard address and returns a Conn whose reader passes what comes from
// the server's address to HandlePacket. cfg.Server and cfg.Send are set
// by DialUDP; cfg.Reliable is false.
func DialUDP(ctx context.Context, server string, cfg Config) (*Conn, error) {
	return DialUDPFrom(ctx, server, netip.AddrPort{}, cfg)
}

// DialUDPFrom is DialUDP from the local address laddr (the zero value: the
// wildcard address, port 0).
func DialUDPFrom(ctx context.Context, server string, laddr netip.AddrPort, cfg Config) (*Conn, error) {
	srv, err := ResolveServer(ctx, server)
	if err != nil {
		return nil, err
	}
	network := "udp4"
	if srv.Addr().Is6() {
		network = "udp6"
	}
	var la *net.UDPAddr
	if laddr.IsValid() {
		la = net.UDPAddrFromAddrPort(laddr)
	}
	uc, err := net.ListenUDP(network, la)
	if err != nil {
		return nil, fmt.Errorf("ewf client: opening UDP socket for server %s: %w", srv, err)
	}
	cfg.Server = srv
	cfg.Reliable = false
	cfg.Send = func(b []byte) error {
		_, err := uc.WriteToUDPAddrPort(b, srv)
		return err
	}
	c := &Conn{Client: New(cfg), conn: uc, local: uc.LocalAddr().(*net.UDPAddr).AddrPort()}
	c.wg.Add(1)
	go c.readUDP(uc)
	return c, nil
}

func (c *Conn) readUDP(uc *net.UDPConn) {
	defer c.wg.Done()
	buf := make([]byte, wire.MaxMessageSize+1) // +1: an oversized datagram is seen as such
	srv := c.cfg.Server
	for {
		n, from, err := uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			// An unconnected UDP socket fails reads only when it is
			// closed or broken; either way no answer can come.
			c.Fail(fmt.Errorf("reading UDP socket: %w", err))
			return
		}
		if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != srv {
			continue
		}
		c.HandlePacket(buf[:n])
	}
}

// DialTCP resolves server and connects to it over TCP from laddr (the zero
// value, or port 0: an ephemeral port), with SO_REUSEADDR and SO_REUSEPORT
// set so that the TCP hole-punching path can later listen on and dial
// from the same local port. Frames are cut with wire.Framer; cfg.Reliable
// is set. The connection attempt is bounded by ctx and by cfg.Timeout.
func DialTCP(ctx context.Context, server string, laddr netip.AddrPort, cfg Config) (*Conn, error) {
	srv, err := ResolveServer(ctx, server)
	if err != nil {
		return nil, err
	}
	cfg.populate()
	// Bind before connecting, also to a port of the kernel's choosing: a
	// port that connect picks by itself may be shared with other
	// outgoing connections (without SO_REUSEPORT) to other destinations,
	// and then the node cannot listen or dial from it for a TCP
	// simultaneous open (EADDRINUSE). A port taken by bind is not shared.
	d := net.Dialer{Timeout: cfg.Timeout, Control: ReusePortControl, LocalAddr: &net.TCPAddr{}}
	if laddr.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(laddr)
	}
	nc, err := d.DialContext(ctx, "tcp", srv.String())
	if err != nil {
		return nil, fmt.Errorf("ewf client: connecting to server %s over TCP: %w", srv, err)
	}
	return streamConn(nc, srv, cfg), nil
}

// streamConn runs the rendezvous conversation over nc, a TCP connection to
// srv or a TLS connection over one: frames cut by wire.Framer, cfg.Reliable
// set, and one reader goroutine.
func streamConn(nc net.Conn, srv netip.AddrPort, cfg Config) *Conn {
	var wmu sync.Mutex
	timeout := cfg.Timeout
	cfg.Server = srv
	cfg.Reliable = true
	cfg.Send = func(b []byte) error {
		// One frame per Write, never interleaved, and never blocked
		// forever by a server that stopped reading.
		wmu.Lock()
		defer wmu.Unlock()
		nc.SetWriteDeadline(time.Now().Add(timeout))
		_, err := nc.Write(b)
		return err
	}
	c := &Conn{Client: New(cfg), conn: nc, local: nc.LocalAddr().(*net.TCPAddr).AddrPort()}
	c.wg.Add(1)
	go c.readTCP(nc)
	return c
}

func (c *Conn) readTCP(tc net.Conn) {
	defer c.wg.Done()
	f := wire.NewFramer(tc)
	for {
		msg, _, err := f.Next()
		if err != nil {
			switch {
			case errors.Is(err, net.ErrClosed):
				c.Fail(err)
			case errors.Is(err, wire.ErrBadFrame):
				c.Fail(fmt.Errorf("server %s sent a stream that is not STUN/X framed: %w", c.cfg.Server, err))
				tc.Close()
			default:
				c.Fail(fmt.Errorf("TCP connection to server %s ended: %w", c.cfg.Server, err))
			}
			return
		}
		c.HandlePacket(msg)
	}
}

// LocalAddr returns the local address of the socket, unmapped.
func (c *Conn) LocalAddr() netip.AddrPort {
	return netip.AddrPortFrom(c.local.Addr().Unmap(), c.local.Port())
}

// Close closes the socket, ends every outstanding request with ErrClosed
// and waits for the reader to exit. It is safe to call more than once.
func (c *Conn) Close() error {
	c.once.Do(func() {
		c.cerr = c.conn.Close()
		c.Fail(net.ErrClosed)
		c.wg.Wait()
	})
	return c.cerr
}
