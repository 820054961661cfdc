// Command ewfd is the ewf rendezvous server: STUN Binding and the ewf
// protocol (REGISTER, BIND, QUERY, introductions) on one UDP+TCP port.
//
// It is a thin main: flags and EWFD_* environment variables become a
// server.Config, and server.Start does the rest. docs/OPERATIONS.md
// explains how to run it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/ewf-project/ewf/server"
	redisstore "github.com/ewf-project/ewf/store/redis"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise the module version from the build info is used.
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	cfg       server.Config
	listen    string
	tlsListen string
	relay     relayOptions
	logFormat string
	logLevel  string
	version   bool
}

const usageHead = `ewfd is the ewf rendezvous server. Clients register an ID, bind the public
address the server sees for them, and look each other up to connect directly.
It also answers plain STUN Binding requests, so it works as a STUN server.

Usage:
  ewfd [flags]

With no flags it listens on UDP and TCP port 3478 on every address (IPv4 and
IPv6) and keeps its registrations in the data directory below. Every flag can
also be set with the environment variable shown next to it; a flag given on
the command line wins over the variable.

Flags:
`

func defaultDataDir() string {
	// systemd's StateDirectory= sets STATE_DIRECTORY (a list if several).
	if d := os.Getenv("STATE_DIRECTORY"); d != "" {
		return strings.Split(d, ":")[0]
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "ewfd")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "ewfd")
	}
	return "ewfd-data"
}

func newFlagSet(o *options, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("ewfd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c := &o.cfg
	fs.StringVar(&o.listen, "listen", fmt.Sprintf(":%d", server.DefaultPort),
		"comma-separated `host:port` list to serve, each on UDP and TCP; \":3478\" means every address")
	fs.StringVar(&c.Alternate, "alternate", "",
		"RFC 5780 NAT discovery: a second UDP `host:port` (\":3479\" for a second port only, \"IP2:3479\" for a second address too); default off")
	fs.StringVar(&c.DataDir, "data", defaultDataDir(),
		"`directory` of the registration store (created if missing; keep it across restarts)")
	fs.StringVar(&c.StoreURL, "store", "",
		"shared registration store instead of -data, for several ewfd behind one name: `url` redis://host:6379/0 or redis+cluster://host:port,host:port,... (see docs/OPERATIONS.md)")
	fs.StringVar(&c.MetricsAddr, "metrics", "",
		"`host:port` for Prometheus /metrics and /healthz over HTTP, e.g. 127.0.0.1:9478 (default off)")
	fs.StringVar(&o.logFormat, "log-format", "text", "log `format`: text or json")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.DurationVar(&c.BindingTTL, "binding-ttl", server.DefaultBindingTTL,
		"how long a bound address lives without a refreshing BIND")
	fs.DurationVar(&c.RegistrationTTL, "registration-ttl", server.DefaultRegistrationTTL,
		"how long a registration lives without any BIND")
	fs.IntVar(&c.MaxRegistrations, "max-registrations", server.DefaultMaxRegistrations,
		"most registrations held; more REGISTERs get \"registration limit reached\"")
	fs.IntVar(&c.RegisterPerIP, "register-per-ip", server.DefaultRegisterPerIP,
		"REGISTERs one source IP (IPv6: one /64) may make per -register-window")
	fs.DurationVar(&c.RegisterWindow, "register-window", server.DefaultRegisterWindow,
		"the time window of -register-per-ip")
	fs.Float64Var(&c.Rate, "rate", server.DefaultRate,
		"requests per second one source IP (IPv6: one /64) may send; excess is dropped")
	fs.IntVar(&c.Burst, "burst", 0, "requests one source may send at once above -rate (0: twice -rate)")
	fs.Float64Var(&c.IntroRate, "intro-rate", server.DefaultIntroRate,
		"introductions per second one querier ID may ask for; more get \"rate limited\"")
	fs.IntVar(&c.IntroBurst, "intro-burst", server.DefaultIntroBurst, "introductions one querier ID may ask for at once above -intro-rate")
	fs.IntVar(&c.MaxSources, "max-sources", server.DefaultMaxSources,
		"size of the per-source rate-limit table")
	fs.DurationVar(&c.TCPIdle, "tcp-idle", server.DefaultTCPIdle,
		"close a TCP connection that delivers no whole message for this long")
	fs.IntVar(&c.MaxTCPConns, "max-tcp-conns", server.DefaultMaxTCPConns, "most open TCP connections")
	fs.IntVar(&c.MaxTCPPerIP, "max-tcp-per-ip", server.DefaultMaxTCPPerIP,
		"most open TCP connections from one IP (IPv6: one /64)")
	fs.StringVar(&c.TLSCertFile, "tls-cert", "",
		"PEM certificate `file` (chain) for X and STUN over TLS on -tls-listen, so REGISTER's KEY is never in clear; with -tls-key (default off)")
	fs.StringVar(&c.TLSKeyFile, "tls-key", "", "PEM private key `file` of -tls-cert")
	fs.StringVar(&o.tlsListen, "tls-listen", fmt.Sprintf(":%d", server.DefaultTLSPort),
		"comma-separated TCP `host:port` list served over TLS when -tls-cert is set")
	fs.BoolVar(&c.RequireIntegrity, "require-integrity", false,
		"refuse BIND and introductions that carry the KEY in clear; clients must prove it with a MAC (docs/PROTOCOL.md §18)")
	fs.IntVar(&c.UDPReaders, "udp-readers", 0, "UDP sockets and reader goroutines per address (0: one per CPU)")
	o.relay.flags(fs)
	fs.BoolVar(&o.version, "version", false, "print the version and exit")

	fs.Usage = func() {
		fmt.Fprint(stderr, usageHead)
		fs.VisitAll(func(f *flag.Flag) {
			name, usage := flag.UnquoteUsage(f)
			line := "  -" + f.Name
			if name != "" {
				line += " " + name
			}
			fmt.Fprintf(stderr, "%s\n    \t%s", line, usage)
			if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" {
				fmt.Fprintf(stderr, " (default %s)", f.DefValue)
			}
			if f.Name != "version" {
				fmt.Fprintf(stderr, " [%s]", envName(f.Name))
			}
			fmt.Fprintln(stderr)
		})
		fmt.Fprint(stderr, "\nSee docs/OPERATIONS.md for what is kept on disk, the limits and the metrics.\n")
	}
	return fs
}

func envName(flagName string) string {
	return "EWFD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parse applies EWFD_* variables, then the command line.
func parse(args []string, getenv func(string) string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := newFlagSet(o, stderr)
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if v := getenv(envName(f.Name)); v != "" && envErr == nil && f.Name != "version" {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%s=%q: %w", envName(f.Name), v, err)
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (ewfd takes only flags; see ewfd -help)", fs.Arg(0))
	}
	for _, a := range strings.Split(o.listen, ",") {
		if a = strings.TrimSpace(a); a != "" {
			o.cfg.Listen = append(o.cfg.Listen, a)
		}
	}
	if o.cfg.TLSCertFile != "" {
		for _, a := range strings.Split(o.tlsListen, ",") {
			if a = strings.TrimSpace(a); a != "" {
				o.cfg.TLSListen = append(o.cfg.TLSListen, a)
			}
		}
	}
	rc, err := o.relay.config()
	if err != nil {
		return nil, err
	}
	o.cfg.Relay = rc
	return o, nil
}

func newLogger(format, level string, w io.Writer) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: want debug, info, warn or error", level)
	}
	hopts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return nil, fmt.Errorf("-log-format %q: want text or json", format)
}

func versionString() string {
	v := version
	if v == "" {
		v = "(devel)"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
			v = bi.Main.Version
		}
	}
	return "ewfd " + v
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parse(args, os.Getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "ewfd:", err)
		return 2
	}
	if o.version {
		fmt.Fprintln(stdout, versionString())
		return 0
	}
	log, err := newLogger(o.logFormat, o.logLevel, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "ewfd:", err)
		return 2
	}
	o.cfg.Logger = log
	redisstore.RouteClientLogs(log) // only the -store redis client logs there
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := server.Start(o.cfg)
	if err != nil {
		log.Error("ewfd could not start", "err", err)
		return 1
	}
	log.Info("ewfd ready", "version", versionString(), "addrs", d.Addrs())
	<-ctx.Done()
	stop() // a second signal kills at once
	log.Info("ewfd shutting down")
	start := time.Now()
	if err := d.Close(); err != nil {
		log.Error("ewfd shutdown", "err", err)
		return 1
	}
	log.Info("ewfd shut down", "took", time.Since(start))
	return 0
}
