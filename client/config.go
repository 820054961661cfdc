package client

import (
	"log/slog"
	"net/netip"
	"time"
)

// Defaults of Config (RFC 5389 §7.2.1 for the timing).
const (
	DefaultRTO         = 500 * time.Millisecond
	DefaultMaxAttempts = 7
	DefaultLastWait    = 16
	DefaultTimeout     = 39500 * time.Millisecond
	// DefaultRetryBackoff is Keep's first wait after a failed refresh.
	DefaultRetryBackoff = time.Second
	// DefaultPort is the port of ewfd, used when a server string has none.
	DefaultPort = 3478
)

// Config configures a Client. Zero values are replaced by the defaults
// named on each field in New.
type Config struct {
	// Server is the ewfd address. It only names the server in errors and
	// logs: the caller must pass HandlePacket only what came from it.
	Server netip.AddrPort
	// Send writes one datagram (UDP) or one whole TCP frame to the server.
	// b is not retained after Send returns. Required.
	Send func(b []byte) error
	// Reliable is true over TCP: a request is transmitted once and the
	// client waits up to Timeout (RFC 5389 §7.2.2).
	Reliable bool
	// RTO is the initial retransmission timeout, doubled after each
	// transmission. Default DefaultRTO (500 ms).
	RTO time.Duration
	// MaxAttempts (Rc) is how many times a request is sent over UDP.
	// Default DefaultMaxAttempts (7).
	MaxAttempts int
	// LastWait (Rm) sets the wait after the last transmission to
	// LastWait × RTO. Default DefaultLastWait (16).
	LastWait int
	// Timeout is how long a request over a reliable transport waits.
	// Default DefaultTimeout (39.5 s).
	Timeout time.Duration
	// RetryBackoff is Keep's first wait after a failed refresh; it doubles
	// up to the refresh interval. Default DefaultRetryBackoff (1 s).
	RetryBackoff time.Duration
	// KeepGiveUp, when set, makes Keep notice a server that stopped
	// answering within the refresh interval, for a client that has other
	// servers to move to (its onError moves it): each refresh is given up
	// (ErrTimeout) after g = KeepGiveUp(interval) and sent g before the
	// interval ends, and the first retry after a failed refresh is sent at
	// once instead of after RetryBackoff. g must be below the interval.
	// nil: refreshes wait as long as a request does, every interval.
	KeepGiveUp func(interval time.Duration) time.Duration
	// Logger receives debug logs. nil discards them.
	Logger *slog.Logger
	// OnIntroduce is called, from the goroutine that calls HandlePacket,
	// for each valid INTRODUCE indication: another client queried this
	// one with an introduction. nil drops them. It must not block long.
	OnIntroduce func(Introduction)
	// OnSignal is called, like OnIntroduce, for each well-formed SIGNAL
	// indication: the peer of an introduction sent candidates through the
	// server. Its SIGNAL_MAC is not checked yet (the Client holds no
	// SECRET): the callee checks it with Signal.Verify. nil drops them.
	OnSignal func(Signal)
}

// populate fills in the defaults.
func (c *Config) populate() {
	if c.RTO <= 0 {
		c.RTO = DefaultRTO
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.LastWait <= 0 {
		c.LastWait = DefaultLastWait
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = DefaultRetryBackoff
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}
