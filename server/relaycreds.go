package server

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/ewf-project/ewf/server/relay"
	"github.com/ewf-project/ewf/wire"
)

// RelayConfig is the TURN relay ewfd offers its clients through RELAY
// (docs/PROTOCOL.md §17). The zero value offers none: RELAY is answered
// with ReasonNoRelay.
type RelayConfig struct {
	// Embedded, if set, makes Start run ewfd's own TURN relay (package
	// server/relay) with this configuration. Start fills in its Secret
	// (from Secret, or a random one), Registered (the store), Registry
	// and Logger.
	Embedded *relay.Config

	// URLs are the TURN URIs (RFC 7065) given to clients, UDP first, at
	// most wire.MaxRelayURLs. Empty with Embedded means one
	// turn:IP:port?transport=udp and one ?transport=tcp per relay IP.
	URLs []string

	// Secret is the secret shared with the TURN server (coturn's
	// static-auth-secret). Required with URLs and no Embedded.
	Secret []byte

	// TTL is how long credentials are valid for a new allocation. Zero
	// means 10 minutes.
	TTL time.Duration
}

// DefaultRelayTTL is the default validity of relay credentials.
const DefaultRelayTTL = 10 * time.Minute

// relayRate and relayBurst limit RELAY requests per ID: a client asks once
// per relayed connection attempt.
const (
	relayRate  = 1
	relayBurst = 10
)

// populateRelay checks the offer; Start has filled URLs and Secret for an
// embedded relay by the time New runs.
func (c *RelayConfig) populate() error {
	if err := orDefault("Relay.TTL", &c.TTL, DefaultRelayTTL); err != nil {
		return err
	}
	if len(c.URLs) == 0 {
		return nil
	}
	if len(c.Secret) == 0 {
		return fmt.Errorf("%w: a relay URL needs the shared secret", errConfig)
	}
	if len(c.URLs) > wire.MaxRelayURLs {
		return fmt.Errorf("%w: at most %d relay URLs", errConfig, wire.MaxRelayURLs)
	}
	// The largest answer: every URL, a username with a far-future expiry,
	// the password, the expiry. It must fit twice a padded request.
	var m wire.Message
	m.Type = wire.Type{Method: wire.MethodRelay, Class: wire.ClassSuccess}
	for _, u := range c.URLs {
		if err := m.AddRelayURL([]byte(u)); err != nil {
			return fmt.Errorf("%w: relay URL %q: %w", errConfig, u, err)
		}
	}
	user := relay.AppendUsername(nil, time.Unix(1e12, 0), [16]byte{})
	_ = m.SetRelayUsername(user)
	_ = m.SetRelayPassword(relay.AppendPassword(nil, c.Secret, user))
	m.SetRelayExpiry(0)
	if n := m.Len(); n > wire.MaxRelayAnswer {
		return fmt.Errorf("%w: the RELAY answer for these URLs is %d bytes, over %d", errConfig, n, wire.MaxRelayAnswer)
	}
	return nil
}

// relayCreds answers a RELAY request: credentials for the relay, scoped to
// the ID whose KEY the request carries.
func (h *Handler) relayCreds(src netip.AddrPort, now time.Time, sec uint32, ns int64, out []byte) []byte {
	s, m := h.s, &h.req
	if len(s.relayURLs) == 0 {
		return h.fail(out, kindRelay, wire.ReasonNoRelay)
	}
	key, ok := s.st.Lookup(m.ID)
	if !ok {
		return h.fail(out, kindRelay, wire.ReasonNotRegistered)
	}
	// The KEY form or the TIMESTAMP+MAC proof of docs/PROTOCOL.md §18;
	// once a MAC verified, every answer is signed.
	if r, o := h.prove((*wire.Key)(&key), src, now, sec); r != 0 {
		return h.refuse(out, kindRelay, r, o)
	}
	if !s.relayLim.allow((*[16]byte)(&m.ID), ns) {
		return h.fail(out, kindRelay, wire.ReasonRateLimited)
	}
	exp := now.Add(s.cfg.Relay.TTL)
	r := h.success()
	for _, u := range s.relayURLs {
		_ = r.AddRelayURL(u) // checked in populate
	}
	user := relay.AppendUsername(h.relayUser[:0], exp, m.ID)
	_ = r.SetRelayUsername(user)
	_ = r.SetRelayPassword(relay.AppendPassword(h.relayPass[:0], s.cfg.Relay.Secret, user))
	r.SetRelayExpiry(uint64(exp.Unix()))
	n := r.Len()
	if h.auth.signed {
		n += 4 + wire.MACSize
	}
	if h.tr == wire.TransportUDP && n > 2*len(m.Raw) {
		// Not padded (§17.1): an error is within the bound, the answer
		// would not be.
		return h.fail(out, kindRelay, wire.ReasonInvalidAttributes)
	}
	s.met.count(kindRelay, outOK)
	return h.finish(r, out)
}
