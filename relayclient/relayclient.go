// Package relayclient is ewf's TURN client (RFC 8656), on
// github.com/pion/turn: it makes a relayed address on the TURN server that
// ewfd names in its RELAY answer (its own embedded relay or an external
// one such as coturn), with the credentials that answer carries.
//
// It owns its own socket, separate from the node's punching socket: a UDP
// socket for TURN over UDP, or a TCP connection for TURN over TCP when the
// network drops UDP. An Allocation is a net.PacketConn on which a QUIC
// transport can run end to end with a peer: the relay forwards the
// ciphertext and never holds keys.
//
// The package knows nothing of peers, punching or QUIC: the node decides
// when to allocate, whom to permit and what to run over the result.
package relayclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pion/turn/v5"

	"github.com/ewf-project/ewf/internal/pionlog"
)

// Config says which TURN servers to try and with what credentials
// (client.RelayCredentials has the same fields).
type Config struct {
	// URLs are TURN URIs (RFC 7065), tried in order, UDP ones first:
	// turn:host[:port][?transport=udp|tcp]. turns: (TLS) is skipped.
	URLs []string
	// Username and Password are the TURN long-term credentials.
	Username, Password string
	// UDPTimeout bounds an allocation over UDP before the TCP URLs are
	// tried: a network that drops UDP never answers. Zero means 3 s.
	UDPTimeout time.Duration
	// LocalAddr is the local address of the UDP socket; zero means any.
	LocalAddr netip.Addr
	// Logger receives debug logs (pion/turn's among them).
	Logger *slog.Logger
}

// ErrNoURL: no URL of the configuration could be used.
var ErrNoURL = errors.New("relayclient: no usable TURN URL")

// Server is one parsed TURN URI.
type Server struct {
	Host      string
	Port      uint16
	Transport string // "udp" or "tcp"
}

// ParseURL parses a turn: URI (RFC 7065). The default port is 3478, the
// default transport UDP.
func ParseURL(s string) (Server, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "turn" || u.Opaque == "" {
		return Server{}, fmt.Errorf("relayclient: %q is not a turn: URI", s)
	}
	hostport := u.Opaque
	var host, port string
	if h, p, err := net.SplitHostPort(hostport); err == nil {
		host, port = h, p
	} else {
		host, port = strings.Trim(hostport, "[]"), "3478"
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || host == "" {
		return Server{}, fmt.Errorf("relayclient: %q: bad host or port", s)
	}
	tr := u.Query().Get("transport")
	switch tr {
	case "":
		tr = "udp"
	case "udp", "tcp":
	default:
		return Server{}, fmt.Errorf("relayclient: %q: transport %q", s, tr)
	}
	return Server{Host: host, Port: uint16(p), Transport: tr}, nil
}

// Allocation is a relayed address on a TURN server and the client that
// keeps it: reads and writes of its PacketConn go through the relay.
// Close releases it.
type Allocation struct {
	relayed net.PacketConn
	client  *turn.Client
	under   net.PacketConn // the UDP socket, or the TCP connection as a PacketConn
	server  netip.AddrPort
	tr      string

	closeOnce sync.Once
}

// Allocate makes an allocation on the first server of cfg that grants one:
// the UDP URLs first, each within UDPTimeout, then the TCP ones.
func Allocate(ctx context.Context, cfg Config) (*Allocation, error) {
	if cfg.UDPTimeout == 0 {
		cfg.UDPTimeout = 3 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	var servers []Server
	for _, tr := range []string{"udp", "tcp"} {
		for _, u := range cfg.URLs {
			s, err := ParseURL(u)
			if err != nil {
				cfg.Logger.Debug("relay URL skipped", "url", u, "err", err)
				continue
			}
			if s.Transport == tr {
				servers = append(servers, s)
			}
		}
	}
	if len(servers) == 0 {
		return nil, ErrNoURL
	}
	var errs []error
	for _, s := range servers {
		actx := ctx
		var cancel context.CancelFunc = func() {}
		if s.Transport == "udp" {
			actx, cancel = context.WithTimeout(ctx, cfg.UDPTimeout)
		}
		a, err := allocate(actx, cfg, s)
		cancel()
		if err == nil {
			return a, nil
		}
		errs = append(errs, fmt.Errorf("%s:%d/%s: %w", s.Host, s.Port, s.Transport, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("relayclient: no allocation: %w", errors.Join(errs...))
}

func allocate(ctx context.Context, cfg Config, s Server) (*Allocation, error) {
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", s.Host)
	if err != nil || len(ips) == 0 {
		return nil, fmt.Errorf("resolve: %w", err)
	}
	server := netip.AddrPortFrom(ips[0].Unmap(), s.Port)
	var under net.PacketConn
	switch s.Transport {
	case "udp":
		la := netip.AddrPortFrom(cfg.LocalAddr, 0)
		if !cfg.LocalAddr.IsValid() {
			la = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
			if server.Addr().Is6() {
				la = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
			}
		}
		pc, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(la))
		if err != nil {
			return nil, err
		}
		under = pc
	case "tcp":
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", server.String())
		if err != nil {
			return nil, err
		}
		under = turn.NewSTUNConn(c)
	}
	fam := turn.RequestedAddressFamilyIPv4
	if server.Addr().Is6() {
		fam = turn.RequestedAddressFamilyIPv6
	}
	tc, err := turn.NewClient(&turn.ClientConfig{
		STUNServerAddr:         server.String(),
		TURNServerAddr:         server.String(),
		Username:               cfg.Username,
		Password:               cfg.Password,
		Conn:                   under,
		LoggerFactory:          pionlog.Factory(cfg.Logger),
		RequestedAddressFamily: fam,
	})
	if err != nil {
		under.Close()
		return nil, err
	}
	if err := tc.Listen(); err != nil {
		tc.Close()
		under.Close()
		return nil, err
	}
	relayed, err := tc.AllocateWithContext(ctx)
	if err != nil {
		tc.Close()
		under.Close()
		return nil, err
	}
	return &Allocation{relayed: relayed, client: tc, under: under, server: server, tr: s.Transport}, nil
}

// PacketConn is the relayed socket: WriteTo a peer goes out from the
// relayed address (after a permission for the peer's IP, made on the first
// write), and ReadFrom returns what permitted peers sent to it.
func (a *Allocation) PacketConn() net.PacketConn { return a.relayed }

// Relayed is the relayed address peers send to.
func (a *Allocation) Relayed() netip.AddrPort {
	ua, _ := a.relayed.LocalAddr().(*net.UDPAddr)
	if ua == nil {
		return netip.AddrPort{}
	}
	ap := ua.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

// Server is the TURN server's address, and Transport "udp" or "tcp": how
// this client reaches it.
func (a *Allocation) Server() netip.AddrPort { return a.server }

// Transport is how this client reaches the TURN server: "udp" or "tcp".
func (a *Allocation) Transport() string { return a.tr }

// Permit asks the relay to let the given peer IPs send to the relayed
// address (a TURN permission is per IP; the relay refuses private and
// reserved peers unless its operator allowed them). A peer must be
// permitted before its first datagram arrives; the node permits every
// address it knows of the peer as soon as it has the allocation.
func (a *Allocation) Permit(ips ...netip.Addr) error {
	addrs := make([]net.Addr, 0, len(ips))
	for _, ip := range ips {
		addrs = append(addrs, &net.UDPAddr{IP: ip.Unmap().AsSlice()})
	}
	if len(addrs) == 0 {
		return nil
	}
	return a.client.CreatePermission(addrs...)
}

// Close releases the allocation (a Refresh with lifetime 0) and closes the
// client's socket.
func (a *Allocation) Close() error {
	a.closeOnce.Do(func() {
		a.relayed.Close()
		a.client.Close()
		a.under.Close()
	})
	return nil
}
