package server

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ewf-project/ewf/store"
)

// Config configures a Server (New) and a Daemon (Start). The zero value of
// every field is a sensible production default, named in its comment; a
// negative number where a count or duration is expected is an error.
// Config is read once, when the Server or Daemon is made.
type Config struct {
	// Listen lists the addresses to serve, each on UDP and TCP with the
	// same port. Nil means ":3478": every address, IPv4 and IPv6. A port
	// of 0 picks a free port, the same one for UDP and TCP (tests).
	// Used by Start only.
	Listen []string

	// Alternate turns on RFC 5780 NAT behaviour discovery: a second UDP
	// port, and optionally a second IP, as "host:port" (":port" or the
	// primary's host for a second port only). The primary is the first
	// Listen address with a concrete IP of the same family. ewfd then also
	// listens on UDP at the alternate port of each IP (four sockets with
	// two IPs, two with one) and answers Binding requests with OTHER-ADDRESS
	// and RESPONSE-ORIGIN, and from another socket when a CHANGE-REQUEST
	// asks. Empty (the default) means off, as in coturn: a server that
	// answers from an address the client did not talk to is a tool for
	// probing filters, so an operator opts in. Used by Start only.
	Alternate string

	// DataDir is the directory of the registration store (bbolt file
	// ewfd.db). Required by Start unless Store is set.
	DataDir string

	// Store, if set, is used instead of opening DataDir; the caller keeps
	// ownership and closes it after the Daemon.
	Store store.Store

	// StoreURL, if set (and Store is not), is a shared store to open
	// instead of the bbolt file in DataDir: redis://host:port/db or
	// redis+cluster://host:port,host:port,... (package store/redis). Used
	// by Start only.
	StoreURL string

	// MetricsAddr is the host:port of the HTTP server for /metrics and
	// /healthz. Empty means no HTTP server. Used by Start only.
	MetricsAddr string

	// Logger receives the server's logs. Nil discards them. Nothing is
	// logged per packet at Info level or above.
	Logger *slog.Logger

	// Registry receives the server's metrics. Nil means a new registry,
	// available from Server.Registry; never the global one.
	Registry *prometheus.Registry

	// Now is the Daemon's clock, read once per batch of datagrams or TCP
	// message and passed to Handler.Handle, and the store's. Nil means
	// time.Now.
	Now func() time.Time

	// BindingTTL is how long a binding lives without a refreshing BIND.
	// Zero means 120 s.
	BindingTTL time.Duration

	// RegistrationTTL is how long a registration lives without a BIND.
	// Zero means 720 h (30 days). Passed to the store opened by Start.
	RegistrationTTL time.Duration

	// MaxRegistrations caps the registrations held; REGISTER beyond it gets
	// ReasonRegistrationLimit. Zero means 2,000,000 (about 500 MB of RSS
	// with all of them bound). Enforced by the store opened by Start.
	MaxRegistrations int

	// RegisterPerIP is how many REGISTER transactions one source IP (IPv6:
	// one /64) may start per RegisterWindow, as a token bucket; beyond it,
	// ReasonRegistrationLimit. Zero means 20.
	RegisterPerIP int

	// RegisterWindow is the window of RegisterPerIP. Zero means one hour.
	RegisterWindow time.Duration

	// Rate is how many requests per second one source IP (IPv6: one /64)
	// may send on average; beyond it packets are dropped unanswered. Zero
	// means 50, enough for some hundreds of clients behind one CGNAT
	// address binding every 20 s.
	Rate float64

	// Burst is the number of requests a source may send at once above Rate.
	// Zero means 2×Rate (at least 1).
	Burst int

	// MaxSources is the size of the table of per-source rate limits.
	// Zero means 131072 (about 6 MB).
	MaxSources int

	// IntroRate and IntroBurst limit introductions (QUERY with SOURCE_ID
	// and KEY) per querier ID; beyond them, ReasonRateLimited. Zero means
	// 10 per second with a burst of 20.
	IntroRate  float64
	IntroBurst int

	// TLSCertFile and TLSKeyFile, PEM files, turn on X and STUN over TLS
	// on TCP (docs/PROTOCOL.md §19), so that a client can REGISTER without
	// its KEY crossing the network in clear. Both or neither. Used by
	// Start only; a new certificate needs a restart.
	TLSCertFile, TLSKeyFile string

	// TLSListen lists the TCP addresses served over TLS. Nil means
	// ":5349" (STUN's TLS port) when a certificate is set. Used by Start
	// only.
	TLSListen []string

	// RequireIntegrity refuses BIND, introductions and every other request
	// that carries a KEY in clear, with ReasonIntegrityRequired: clients
	// must prove the KEY with TIMESTAMP and MAC instead (docs/PROTOCOL.md
	// §18). False (the default) accepts both forms, as the original design
	// only knows the KEY form.
	RequireIntegrity bool

	// ReplayCacheSize is how many authenticated requests the replay cache
	// remembers (16 bytes each, allocated on first use); beyond
	// ReplayCacheSize per minute the oldest are forgotten early and counted
	// in ewfd_replay_evictions_total. Zero means 1048576 (16 MB, about
	// 17,000 authenticated requests per second).
	ReplayCacheSize int

	// TCPIdle closes a TCP connection on which no whole message arrived for
	// this long; it is also the time a client has to send a message once it
	// has started it. Zero means 60 s.
	TCPIdle time.Duration

	// TCPWriteTimeout closes a TCP connection that does not take a response
	// within this time. Zero means 10 s.
	TCPWriteTimeout time.Duration

	// MaxTCPConns caps the open TCP connections; more are closed at once.
	// Zero means 4096.
	MaxTCPConns int

	// MaxTCPPerIP caps the open TCP connections from one IP (IPv6: one
	// /64). Zero means 32.
	MaxTCPPerIP int

	// UDPReaders is the number of UDP sockets (SO_REUSEPORT) and reader
	// goroutines per listen address. Zero means GOMAXPROCS.
	UDPReaders int

	// UDPBatch is how many datagrams one read or write system call moves.
	// Zero means 64.
	UDPBatch int

	// Relay is the TURN relay offered through RELAY; the zero value
	// offers none (relaycreds.go).
	Relay RelayConfig
}

// Defaults of Config; see the field comments.
const (
	DefaultPort             = 3478
	DefaultBindingTTL       = 120 * time.Second
	DefaultRegistrationTTL  = store.DefaultMaxIdle
	DefaultMaxRegistrations = 2_000_000
	DefaultRegisterPerIP    = 20
	DefaultRegisterWindow   = time.Hour
	DefaultRate             = 50
	DefaultMaxSources       = 1 << 17
	DefaultIntroRate        = 10
	DefaultIntroBurst       = 20
	DefaultTCPIdle          = 60 * time.Second
	DefaultTCPWriteTimeout  = 10 * time.Second
	DefaultMaxTCPConns      = 4096
	DefaultMaxTCPPerIP      = 32
	DefaultUDPBatch         = 64
	DefaultReplayCacheSize  = 1 << 20
)

// errConfig marks a bad Config.
var errConfig = errors.New("server: invalid config")

// orDefault replaces a zero *v with def and rejects a negative, NaN or
// infinite one.
func orDefault[T ~int | ~int64 | ~float64](field string, v *T, def T) error {
	f := float64(*v)
	switch {
	case f < 0 || math.IsNaN(f) || math.IsInf(f, 0):
		return fmt.Errorf("%w: %s must be a finite number, not negative (got %v)", errConfig, field, *v)
	case *v == 0:
		*v = def
	}
	return nil
}

// populate fills defaults and rejects nonsense. It works on a copy: the
// caller's Config is not changed.
func (c Config) populate() (Config, error) {
	for _, err := range []error{
		orDefault("BindingTTL", &c.BindingTTL, DefaultBindingTTL),
		orDefault("RegistrationTTL", &c.RegistrationTTL, DefaultRegistrationTTL),
		orDefault("RegisterWindow", &c.RegisterWindow, DefaultRegisterWindow),
		orDefault("TCPIdle", &c.TCPIdle, DefaultTCPIdle),
		orDefault("TCPWriteTimeout", &c.TCPWriteTimeout, DefaultTCPWriteTimeout),
		orDefault("MaxRegistrations", &c.MaxRegistrations, DefaultMaxRegistrations),
		orDefault("RegisterPerIP", &c.RegisterPerIP, DefaultRegisterPerIP),
		orDefault("MaxSources", &c.MaxSources, DefaultMaxSources),
		orDefault("IntroBurst", &c.IntroBurst, DefaultIntroBurst),
		orDefault("MaxTCPConns", &c.MaxTCPConns, DefaultMaxTCPConns),
		orDefault("MaxTCPPerIP", &c.MaxTCPPerIP, DefaultMaxTCPPerIP),
		orDefault("UDPReaders", &c.UDPReaders, runtime.GOMAXPROCS(0)),
		orDefault("UDPBatch", &c.UDPBatch, DefaultUDPBatch),
		orDefault("ReplayCacheSize", &c.ReplayCacheSize, DefaultReplayCacheSize),
		orDefault("Burst", &c.Burst, 0), // filled below from Rate
		orDefault("Rate", &c.Rate, DefaultRate),
		orDefault("IntroRate", &c.IntroRate, DefaultIntroRate),
	} {
		if err != nil {
			return c, err
		}
	}
	if c.Burst == 0 {
		c.Burst = max(int(2*c.Rate), 1)
	}
	if c.BindingTTL < time.Second {
		return c, fmt.Errorf("%w: BindingTTL must be at least 1s (got %v)", errConfig, c.BindingTTL)
	}
	if c.UDPBatch > 1024 {
		return c, fmt.Errorf("%w: UDPBatch must be at most 1024 (got %d)", errConfig, c.UDPBatch)
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return c, fmt.Errorf("%w: TLSCertFile and TLSKeyFile go together", errConfig)
	}
	if c.TLSCertFile != "" && len(c.TLSListen) == 0 {
		c.TLSListen = []string{fmt.Sprintf(":%d", DefaultTLSPort)}
	}
	if len(c.Listen) == 0 {
		c.Listen = []string{fmt.Sprintf(":%d", DefaultPort)}
	}
	if err := c.Relay.populate(); err != nil {
		return c, err
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}
