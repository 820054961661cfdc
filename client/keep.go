package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// Refresh interval bounds: the server keeps a binding 120 s and a NAT
// may drop an idle UDP mapping after 30 s, so refresh well inside both.
const (
	MinKeepInterval = 20 * time.Second
	MaxKeepInterval = 25 * time.Second
)

// DefaultKeepInterval returns a refresh interval drawn uniformly from
// [MinKeepInterval, MaxKeepInterval). The jitter keeps many clients that
// started together from refreshing in lockstep.
func DefaultKeepInterval() time.Duration {
	return MinKeepInterval + rand.N(MaxKeepInterval-MinKeepInterval)
}

// Keep holds the binding of id for transport tr alive until ctx ends. At
// once and then every interval() (nil: DefaultKeepInterval) it asks
// PublicAddress, calls onChange when the address differs from the last
// one seen (so also at the first success), and BINDs the current address.
// The regular refresh also keeps the NAT mapping open, and a changed
// public address is re-BOUND in the same step.
//
// A failed refresh (timeout, rate limit, server error, an address that
// changed between STUN and BIND) is reported to onError (may be nil) and
// retried after Config.RetryBackoff, doubling up to the interval (see
// Config.KeepGiveUp for a client with several servers). Keep
// returns the error when the server answers ErrNotRegistered or
// ErrKeyMismatch (the caller must register again), when the Client fails
// (ErrClosed), and an error wrapping ctx.Err() when ctx ends.
func (c *Client) Keep(ctx context.Context, id wire.ID, key wire.Key, tr wire.Transport,
	interval func() time.Duration, onChange func(netip.AddrPort), onError func(error)) error {
	if interval == nil {
		interval = DefaultKeepInterval
	}
	var last netip.AddrPort
	backoff := time.Duration(0)
	failing := false
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var giveUp time.Duration // this refresh's limit (KeepGiveUp), 0: none
	if c.cfg.KeepGiveUp != nil {
		giveUp = c.cfg.KeepGiveUp(interval())
	}
	for {
		err := c.refreshWithin(ctx, giveUp, id, key, tr, &last, onChange)
		next := interval()
		if c.cfg.KeepGiveUp != nil {
			// Sent giveUp early and given up by then: a server that
			// died just after a refresh is noticed within next.
			giveUp = min(c.cfg.KeepGiveUp(next), next)
		}
		switch {
		case err == nil:
			backoff, failing = 0, false
			next -= giveUp
		case ctx.Err() != nil:
			return fmt.Errorf("ewf client: keeping %s binding of %v at %s: %w", tr, id, c.cfg.Server, ctx.Err())
		case errors.Is(err, ErrNotRegistered), errors.Is(err, ErrKeyMismatch), errors.Is(err, ErrClosed):
			return err
		default:
			if onError != nil {
				onError(err)
			}
			if c.cfg.KeepGiveUp != nil && !failing {
				next = 0 // onError moved the client to another server
			} else {
				if backoff == 0 {
					backoff = c.cfg.RetryBackoff
				} else {
					backoff = sat(backoff, 2)
				}
				if backoff < next {
					next = backoff
				}
			}
			failing = true
		}
		if timer == nil {
			timer = time.NewTimer(next)
		} else {
			timer.Reset(next)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("ewf client: keeping %s binding of %v at %s: %w", tr, id, c.cfg.Server, ctx.Err())
		case <-timer.C:
		}
	}
}

// refreshWithin is refresh given up after limit (0: no limit) with an
// error matching ErrTimeout, unless ctx itself ended.
func (c *Client) refreshWithin(ctx context.Context, limit time.Duration, id wire.ID, key wire.Key, tr wire.Transport,
	last *netip.AddrPort, onChange func(netip.AddrPort)) error {
	if limit <= 0 {
		return c.refresh(ctx, id, key, tr, last, onChange)
	}
	rctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	err := c.refresh(rctx, id, key, tr, last, onChange)
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%w: refresh given up after %v: %w", ErrTimeout, limit, err)
	}
	return err
}

// refresh is one STUN + BIND round of Keep.
func (c *Client) refresh(ctx context.Context, id wire.ID, key wire.Key, tr wire.Transport,
	last *netip.AddrPort, onChange func(netip.AddrPort)) error {
	addr, err := c.PublicAddress(ctx)
	if err != nil {
		return err
	}
	if addr != *last {
		c.log.Info("public address", "transport", tr, "address", addr, "previous", *last)
		*last = addr
		if onChange != nil {
			onChange(addr)
		}
	}
	return c.Bind(ctx, id, key, wire.Address{Transport: tr, AddrPort: addr})
}
