package loadgen

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// Mode is the kind of request the generator sends.
type Mode uint8

// The modes. STUN is the zero value.
const (
	// ModeSTUN sends STUN Binding requests (RFC 5389) and checks that the
	// XOR-MAPPED-ADDRESS of every success response is the socket's own
	// address, so it needs no NAT between generator and server.
	ModeSTUN Mode = iota
	// ModeBind refreshes a binding: every request is a BIND with the
	// socket's ID, KEY and address, every response must be a BIND success.
	ModeBind
	// ModeQuery asks for the addresses of the other sockets' IDs, round
	// robin; every response must carry exactly the address that socket
	// bound.
	ModeQuery
	// ModeRegister registers a fresh random ID with every request. Each
	// success is a durable registration on the server, so this measures
	// the server's store and fills it: point it at a scratch server.
	ModeRegister
	// ModeIntro asks for introductions: a QUERY with the socket's own
	// SOURCE_ID and KEY for the other sockets' IDs (or Targets), round
	// robin; every response must carry a SECRET and exactly the address
	// the target bound. The server sends each target an INTRODUCE, which
	// the target's socket receives and ignores: lift the server's limits
	// on introductions per querier and per target (ewfd -intro-rate, -rate).
	ModeIntro
)

var modeNames = [...]string{"stun", "bind", "query", "register", "intro"}

// String returns the mode's flag spelling.
func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return "unknown"
}

// ParseMode parses a mode's flag spelling ("stun", "bind", "query",
// "register").
func ParseMode(s string) (Mode, error) {
	for i, n := range modeNames {
		if s == n {
			return Mode(i), nil
		}
	}
	return 0, fmt.Errorf("loadgen: unknown mode %q (want %s)", s, strings.Join(modeNames[:], ", "))
}

// Limits on the configuration.
const (
	// MaxDepth bounds the requests in flight per socket. The outstanding
	// requests are searched linearly on every response, which is the
	// fastest way for a handful and still cheap at this bound.
	MaxDepth = 64
	// MaxSockets bounds the socket count, well below the usual open-file
	// limit.
	MaxSockets = 4096
)

// Defaults for the zero values of Config.
const (
	DefaultSockets  = 64
	DefaultDuration = 10 * time.Second
	DefaultDepth    = 4
	DefaultTimeout  = time.Second
)

// Config describes one run. Zero fields take the default their comment
// gives; Run checks the rest.
type Config struct {
	// Server is the address of the server under test. Required.
	Server netip.AddrPort
	// Mode is what to send; the zero value is ModeSTUN.
	Mode Mode
	// Sockets is the number of UDP sockets, each with its own local port
	// and goroutine, so that a server that spreads load by 4-tuple (as
	// SO_REUSEPORT does) sees many flows. 0 means DefaultSockets (64).
	Sockets int
	// Duration is how long requests are sent and counted, after setup
	// and warm-up. 0 means DefaultDuration (10 s).
	Duration time.Duration
	// Warmup is a period before Duration during which requests are sent
	// and checked (a bad response still counts) but not counted in the
	// rate or latency, so that caches and goroutines are warm when the
	// clock starts. 0 means none.
	Warmup time.Duration
	// Depth is the number of requests each socket keeps in flight: the
	// generator is closed-loop, a socket sends a new request only when
	// one is answered or lost, so latency is that of a server with
	// Sockets×Depth requests queued, not of an overflowing buffer.
	// 0 means DefaultDepth (4); at most MaxDepth.
	Depth int
	// Timeout is how long a request waits for its response before it
	// counts as lost. 0 means DefaultTimeout (1 s).
	Timeout time.Duration
	// Rate caps the total requests per second over all sockets; each
	// socket paces itself at Rate/Sockets. 0 means as fast as the
	// closed loop allows.
	Rate float64
	// Batch moves datagrams with recvmmsg/sendmmsg (Linux only): one
	// system call per socket reads every waiting answer and one sends
	// every request there is room for.
	Batch bool
	// Local is the local IP address the sockets bind to. The zero value
	// lets the kernel choose (127.0.0.1 for a server on 127.0.0.1).
	Local netip.Addr
	// Targets, if set, are the peers ModeQuery and ModeIntro ask for
	// instead of the run's own sockets: clients bound by another run,
	// possibly at another server sharing the store (OnSetup of that run).
	Targets []Target
	// Integrity sends BIND and introductions in the integrity form of
	// docs/PROTOCOL.md §18 (TIMESTAMP and a MAC keyed by the KEY instead
	// of the KEY) and requires every answer to them to carry the server's
	// MAC, verified: what the ewf client does. Off: the design note's KEY
	// form. Setup follows the same choice, so a server run with
	// --require-integrity can be measured.
	Integrity bool
	// OnSetup, if set, is called with the run's own sockets' bindings once
	// setup is done (ModeBind, ModeQuery, ModeIntro), before the clock
	// starts: to hand them to another run as its Targets.
	OnSetup func([]Target)
}

// Target is a client bound at the server: its ID and the address it bound.
type Target struct {
	ID   wire.ID
	Addr netip.AddrPort
}

// ErrConfig is matched (errors.Is) by every error about a bad Config.
var ErrConfig = errors.New("loadgen: invalid config")

func (c Config) withDefaults() (Config, error) {
	if !c.Server.IsValid() || c.Server.Port() == 0 {
		return c, fmt.Errorf("%w: server address %v needs an IP and a port", ErrConfig, c.Server)
	}
	c.Server = netip.AddrPortFrom(c.Server.Addr().Unmap(), c.Server.Port())
	if c.Mode > ModeIntro {
		return c, fmt.Errorf("%w: unknown mode %d", ErrConfig, c.Mode)
	}
	if c.Sockets == 0 {
		c.Sockets = DefaultSockets
	}
	if c.Sockets < 0 || c.Sockets > MaxSockets {
		return c, fmt.Errorf("%w: sockets %d not in 1..%d", ErrConfig, c.Sockets, MaxSockets)
	}
	if c.Duration == 0 {
		c.Duration = DefaultDuration
	}
	if c.Depth == 0 {
		c.Depth = DefaultDepth
	}
	if c.Depth < 0 || c.Depth > MaxDepth {
		return c, fmt.Errorf("%w: depth %d not in 1..%d", ErrConfig, c.Depth, MaxDepth)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Duration < 0 || c.Warmup < 0 || c.Timeout < 0 {
		return c, fmt.Errorf("%w: negative duration, warm-up or timeout", ErrConfig)
	}
	if c.Rate < 0 || c.Rate != c.Rate {
		return c, fmt.Errorf("%w: rate %v", ErrConfig, c.Rate)
	}
	if c.Local.IsValid() {
		c.Local = c.Local.Unmap()
		if c.Local.Is4() != c.Server.Addr().Is4() {
			return c, fmt.Errorf("%w: local address %v and server %v are of different families", ErrConfig, c.Local, c.Server)
		}
	}
	return c, nil
}
