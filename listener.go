package ewf

import (
	"context"
	"net"
)

// Listener accepts direct connections from peers that dial this host's
// ID, over UDP (QUIC) or TCP, whichever each peer chooses.
type Listener struct {
	n *Node
}

// Listen registers and binds this host (UDP and, when the server accepts
// it, TCP) and returns a Listener for the peers that dial its ID.
func Listen(ctx context.Context, cfg Config) (*Listener, error) {
	cfg.EnableTCP = true
	n, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return &Listener{n: n}, nil
}

// Accept waits for the next peer. The net.Conn is a *Conn.
func (l *Listener) Accept() (net.Conn, error) { return l.n.Accept(context.Background()) }

// AcceptContext is Accept bounded by ctx.
func (l *Listener) AcceptContext(ctx context.Context) (*Conn, error) { return l.n.Accept(ctx) }

// Close stops listening and closes the node under it.
func (l *Listener) Close() error { return l.n.Close() }

// Addr returns the public UDP address peers reach this host at.
func (l *Listener) Addr() net.Addr { return net.UDPAddrFromAddrPort(l.n.PublicAddr()) }

// ID returns the ID peers dial.
func (l *Listener) ID() ID { return l.n.ID() }

// Node returns the Node under the listener.
func (l *Listener) Node() *Node { return l.n }

// Dial opens a Node, connects to peer over cfg.Transport and returns the
// connection; closing it closes the node too.
func Dial(ctx context.Context, cfg Config, peer ID) (*Conn, error) {
	if cfg.Transport == TransportTCP {
		cfg.EnableTCP = true
	}
	n, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	c, err := n.Dial(ctx, peer, "")
	if err != nil {
		n.Close()
		return nil, err
	}
	c.onClose = func() { n.Close() }
	return c, nil
}
