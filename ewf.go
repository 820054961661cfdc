// Package ewf gives two programs on different hosts, each possibly behind a
// NAT, a direct connection to each other by naming the other's ID.
//
// A program that waits for peers calls Listen and then Accept; a program
// that wants to reach one calls Dial with the peer's ID:
//
//	l, err := ewf.Listen(ctx, ewf.Config{Server: "rendezvous.example:3478"})
//	fmt.Println("my ID:", l.ID())
//	conn, err := l.Accept()
//
//	conn, err := ewf.Dial(ctx, ewf.Config{Server: "rendezvous.example:3478"}, peerID)
//
// Both sides register with an ewfd server, learn their public address,
// bind it, and the dialer asks the server to introduce it to the listener.
// Both then punch through their NATs at the same time, and the dialer opens
// an encrypted QUIC connection (TLS 1.3) on the first path that works, or,
// with TransportTCP, a TLS connection over a TCP simultaneous open. An ID
// is the hash of the peer's Ed25519 key and each side's certificate holds
// that key, so each side knows it talks to the ID it meant, whatever the
// server says (Conn.Auth; identities from before key-bound IDs are proven
// by the introduction's secret instead: docs/SECURITY.md). The server
// never carries the connection.
package ewf

import (
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/wire"
)

// ID is a peer's 128-bit identifier; its String form is 32 hex digits.
type ID = wire.ID

// ParseID parses the 32-hex-digit form of an ID.
func ParseID(s string) (ID, error) { return wire.ParseID(s) }

// Transport selects how Dial reaches the peer.
type Transport string

// The transports of a direct connection.
const (
	// TransportUDP is QUIC over a punched UDP path: the default, and the
	// one that gets through the most NATs.
	TransportUDP Transport = "udp"
	// TransportTCP is TLS over a TCP connection made by simultaneous open.
	TransportTCP Transport = "tcp"
)

// Config configures a Node. Only Server is required; every other field's
// zero value is the documented default.
type Config struct {
	// Server is the ewfd rendezvous server, "host:port" ("host" means port
	// 3478). Several servers sharing one store may be listed,
	// comma-separated, or named by a DNS SRV record such as
	// "_ewf._udp.example.org": the node binds at the first that answers
	// and moves to the next when it stops answering (failover.go).
	Server string
	// ServerTLS is the server's X-over-TLS address, "host:port" ("host"
	// means port 5349), where REGISTER goes instead of over UDP, so that
	// the KEY in its answer never crosses the network in clear
	// (docs/PROTOCOL.md §19). Empty means REGISTER over UDP. When set,
	// there is no fallback: a server that cannot be reached or verified
	// over TLS is an error, because an attacker on the path could
	// otherwise force the clear form. Everything else (BIND, QUERY)
	// proves the KEY without sending it and needs no TLS.
	ServerTLS string
	// ServerCA is a PEM file of the certificate(s) that must have signed
	// the TLS server's certificate (a private CA, or the self-signed
	// certificate itself): it pins them and the system's roots are not
	// used. Empty means the system's public roots.
	ServerCA string
	// IdentityFile keeps this host's ID and KEY between runs. Default:
	// identity.json in the user's config directory, under ewf/.
	IdentityFile string
	// LocalAddr is the local UDP (and TCP) address to use. Default ":0", a
	// free port on every address.
	LocalAddr string
	// Transport is what Dial uses. Default TransportUDP.
	Transport Transport
	// EnableTCP makes a Node also bind a TCP address, so that peers can
	// reach it with TransportTCP. Listen turns it on; Dial turns it on
	// when Transport is TransportTCP.
	EnableTCP bool
	// PunchTimeout bounds one hole-punching attempt. Default 10 s.
	PunchTimeout time.Duration
	// KeepaliveInterval returns the time until the next binding refresh.
	// Default: uniformly random between 20 and 25 s, well inside the
	// server's 120 s binding lifetime and the 30 s UDP timeout of strict
	// NATs.
	// A refresh is also how the node notices that its public address
	// changed, and then tells its connected peers (docs/PROTOCOL.md §24).
	KeepaliveInterval func() time.Duration
	// IdleTimeout ends a connection when nothing arrived from the peer for
	// this long, however quiet the application is (keepalives flow): it is
	// how a peer that vanished is noticed. Default 60 s.
	IdleTimeout time.Duration
	// Allow, if set, decides which peers may connect to this node: a peer
	// whose ID it rejects is refused in the TLS handshake, after its
	// certificate was checked and before any application byte, and its
	// Dial fails with ErrPeerAuth. It does not restrict whom this node
	// dials. Default: every authenticated peer. Only key-bound IDs are
	// proven independently of the server (docs/SECURITY.md).
	Allow func(ID) bool
	// OnRefused, if set, is called for each introduced peer this node
	// refused: a certificate that does not prove the peer's ID, or an ID
	// that Allow rejected. err wraps ErrPeerAuth. It runs on the
	// connection's handshake goroutine and must not block.
	OnRefused func(peer ID, err error)
	// Logger receives debug and warning logs. Default: discard.
	Logger *slog.Logger
	// Relay says when a connection may go through the TURN relay the
	// server offers (RELAY, docs/PROTOCOL.md §17): RelayFallback (the
	// default) when no direct path is found, RelayAlways, or RelayNever.
	// Conn.Path tells which a connection got.
	Relay RelayMode
	// DisableNATDiscovery turns off the background NAT behaviour discovery
	// (package natdisco, Node.NAT) that a Node otherwise runs at start and
	// after an address change: about ten STUN requests from fresh sockets.
	// Default false: discovery on.
	DisableNATDiscovery bool
	// UDPWait is how long Open waits for the server's answer over UDP
	// before it goes on over TCP only, as a node on a network that drops
	// UDP (docs/PROTOCOL.md §23): once for REGISTER with a new identity,
	// once for the binding. Default 2.5 s, which rides out an answer lost
	// once or twice (UDP requests retransmit at 0.5 s, 1.5 s, ...); on a
	// network known to be fast, less makes a UDP-blocked node ready
	// sooner, at the risk of taking a slow answer for a block.
	UDPWait time.Duration

	// forged, in tests only, is the identity to use instead of the
	// identity file: it lets a test play an impostor that holds another
	// ID's KEY but not its private key, which no identity file can hold.
	forged *client.Identity
	// blockUDP, in tests only, drops every UDP datagram the node sends
	// to the server while set, as a network that blocks UDP does
	// (blocked_test.go).
	blockUDP *atomic.Bool
	// dropPeers, in tests only, drops every PUNCH and QUIC datagram that
	// reaches the node's main socket while set, as an inbound firewall
	// that lets only the server through would (migrate_test.go).
	dropPeers *atomic.Bool
	// punchesIn, in tests only, counts every PUNCH that reaches the
	// node's socket, whether an attempt wants it or not (refuse_test.go).
	punchesIn *atomic.Int64
	// dropIntroduces, in tests only, drops that many INTRODUCE
	// indications as they arrive, as a lossy network would drop the one
	// datagram that tells the node a peer is coming (introloss_test.go).
	dropIntroduces *atomic.Int64
}

func (c *Config) populate() error {
	if c.Server == "" {
		return errors.New("ewf: Config.Server is required")
	}
	if c.LocalAddr == "" {
		c.LocalAddr = ":0"
	}
	switch c.Transport {
	case "":
		c.Transport = TransportUDP
	case TransportUDP, TransportTCP:
	default:
		return errors.New("ewf: Config.Transport must be \"udp\" or \"tcp\"")
	}
	switch c.Relay {
	case "":
		c.Relay = RelayFallback
	case RelayFallback, RelayNever, RelayAlways:
	default:
		return errors.New("ewf: Config.Relay must be \"fallback\", \"never\" or \"always\"")
	}
	if c.PunchTimeout == 0 {
		c.PunchTimeout = 10 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 60 * time.Second
	}
	if c.UDPWait <= 0 {
		c.UDPWait = udpGrace
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Errors of a connection attempt. They wrap the cause, so the client
// package's errors (client.ErrTimeout and the per-reason errors) match too.
var (
	// ErrServerUnreachable: the rendezvous server did not answer.
	ErrServerUnreachable = errors.New("ewf: rendezvous server unreachable")
	// ErrUnknownPeer: the server has never heard of the peer's ID.
	ErrUnknownPeer = errors.New("ewf: unknown peer")
	// ErrPeerOffline: the peer is registered but not bound right now.
	ErrPeerOffline = errors.New("ewf: peer offline")
	// ErrNoDirectPath: hole punching found no path before PunchTimeout.
	// Both NATs are of a kind that cannot be punched from each other (for
	// example symmetric on both sides), or the peer did not answer.
	ErrNoDirectPath = errors.New("ewf: no direct path to the peer")
	// ErrPeerAuth: the peer at the other end did not prove the identity
	// the server introduced.
	ErrPeerAuth = errors.New("ewf: peer failed authentication")
)
