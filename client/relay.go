package client

import (
	"context"
	"errors"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// RelayCredentials are what the server's RELAY answer holds
// (docs/PROTOCOL.md §17): the TURN servers to try, UDP first, and
// credentials for them that expire.
type RelayCredentials struct {
	URLs     []string
	Username string
	Password string
	Expiry   time.Time
}

// ErrNoRelay: the server offers no relay (it answered ReasonNoRelay, or it
// does not know RELAY at all).
var ErrNoRelay = errors.New("server offers no relay")

// Relay asks the server for TURN credentials for id, proven by key. The
// request is padded to wire.RelayRequestSize, so that the answer stays
// within the amplification bound on UDP. ErrNoRelay means the server
// offers none.
func (c *Client) Relay(ctx context.Context, id wire.ID, key wire.Key) (RelayCredentials, error) {
	var m wire.Message
	m.SetID(id)
	// ID, TIMESTAMP and MAC (the KEY proven, docs/PROTOCOL.md §18), and
	// the PADDING attribute's header.
	m.Padding = wire.RelayRequestSize - (wire.HeaderSize + (4 + 16) + (4 + 8) + (4 + wire.MACSize) + 4)
	resp, err := c.RequestWithKey(ctx, wire.MethodRelay, &m, key)
	if errors.Is(err, ErrUnknownMethod) {
		return RelayCredentials{}, errors.Join(ErrNoRelay, err)
	}
	if err != nil {
		return RelayCredentials{}, err
	}
	rc := RelayCredentials{
		Username: string(resp.Relay.Username),
		Password: string(resp.Relay.Password),
		Expiry:   time.Unix(int64(resp.Relay.Expiry), 0),
	}
	for _, u := range resp.Relay.URLs[:resp.Relay.NumURLs] {
		rc.URLs = append(rc.URLs, string(u))
	}
	return rc, nil
}
