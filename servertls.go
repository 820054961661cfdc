package ewf

import (
	"context"
	"fmt"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/wire"
)

// register asks the server for a KEY for id. With Config.ServerTLS it does
// so over a TLS connection of its own, closed afterwards: the REGISTER
// answer is the one message that carries a KEY (docs/PROTOCOL.md §19).
// Without, over the node's UDP socket, as the original design does.
func (n *Node) register(ctx context.Context, id wire.ID) (wire.Key, error) {
	if n.cfg.ServerTLS == "" {
		return n.rc.Register(ctx, id)
	}
	conf, err := client.ServerTLSConfig(n.cfg.ServerTLS, n.cfg.ServerCA)
	if err != nil {
		return wire.Key{}, err
	}
	c, err := client.DialTLS(ctx, n.cfg.ServerTLS, conf, client.Config{Logger: n.log})
	if err != nil {
		return wire.Key{}, fmt.Errorf("ewf: REGISTER over TLS: %w", err)
	}
	defer c.Close()
	return c.Register(ctx, id)
}
