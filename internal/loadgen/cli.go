package loadgen

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// Exit codes of Main.
const (
	ExitOK    = 0 // every response valid (lost requests are not a failure)
	ExitBad   = 1 // the server sent invalid responses
	ExitError = 2 // bad flags, or the run could not start or was interrupted
)

// Main is the whole command line tool, shared by cmd/ewf-bench and the
// `ewf bench` subcommand: it parses args (without the program name) into
// a Config, runs it, prints the summary and the key=value line (or JSON
// with --json) to stdout, and returns the exit code. prog names the tool
// in usage and error messages.
func Main(ctx context.Context, prog string, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg    Config
		server = netip.MustParseAddrPort("127.0.0.1:3478")
		local  netip.Addr
		mode   = "stun"
		asJSON bool
	)
	fs.Func("server", "server `address:port` under test (default 127.0.0.1:3478)", func(s string) (err error) {
		server, err = netip.ParseAddrPort(s)
		return err
	})
	fs.StringVar(&mode, "mode", mode, "requests to send: stun, bind, query, intro or register (register fills the server's store)")
	fs.IntVar(&cfg.Sockets, "sockets", DefaultSockets, "number of UDP sockets")
	fs.DurationVar(&cfg.Duration, "duration", DefaultDuration, "measured time")
	fs.DurationVar(&cfg.Warmup, "warmup", time.Second, "time before the measured window whose requests are checked but not counted")
	fs.IntVar(&cfg.Depth, "depth", DefaultDepth, "requests in flight per socket (closed loop)")
	fs.DurationVar(&cfg.Timeout, "timeout", DefaultTimeout, "time after which a request counts as lost")
	fs.Float64Var(&cfg.Rate, "rate", 0, "cap on total requests per second (0: as fast as the server answers)")
	fs.Func("local", "local `IP` to bind the sockets to (default: chosen by the kernel)", func(s string) (err error) {
		local, err = netip.ParseAddr(s)
		return err
	})
	integ := "off"
	fs.StringVar(&integ, "integrity", integ, "bind/intro: `off` sends the KEY (the design note's form); on proves it with TIMESTAMP+MAC and checks the server's MAC on every answer, as the ewf client does; both runs off then on and prints the ratio of their rates")
	fs.BoolVar(&cfg.Batch, "batch", false, "move datagrams with recvmmsg/sendmmsg (Linux)")
	var peersOut, peersIn string
	fs.StringVar(&peersOut, "peers-out", "", "after setup, write the sockets' IDs and bound addresses to `file` (for another run's -peers-in)")
	fs.StringVar(&peersIn, "peers-in", "", "query/intro: ask for the clients listed in `file` (another run's -peers-out, possibly bound at another server) instead of this run's")
	fs.BoolVar(&asJSON, "json", false, "print the result as one JSON object instead of the summary and key=value line")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s [flags]\n\nFloods an ewf (or any STUN) server with requests from many UDP sockets,\nchecks every response and prints requests/s and latency percentiles.\nExit status: 0 all responses valid, 1 invalid responses, 2 error.\n\nFlags:\n", prog)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitError
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", prog, fs.Arg(0))
		return ExitError
	}
	var err error
	if cfg.Mode, err = ParseMode(mode); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return ExitError
	}
	cfg.Server, cfg.Local = server, local
	switch integ {
	case "off":
	case "on":
		cfg.Integrity = true
	case "both":
		return compareIntegrity(ctx, prog, cfg, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "%s: -integrity %q: want off, on or both\n", prog, integ)
		return ExitError
	}
	if peersIn != "" {
		if cfg.Targets, err = readTargets(peersIn); err != nil {
			fmt.Fprintf(stderr, "%s: -peers-in: %v\n", prog, err)
			return ExitError
		}
	}
	if peersOut != "" {
		cfg.OnSetup = func(t []Target) {
			if err := writeTargets(peersOut, t); err != nil {
				fmt.Fprintf(stderr, "%s: -peers-out: %v\n", prog, err)
			}
		}
	}

	res, err := Run(ctx, cfg)
	if err != nil && !errors.Is(err, ErrBadResponses) && res.Sockets == 0 {
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return ExitError
	}
	if asJSON {
		out, jerr := json.Marshal(res)
		if jerr != nil {
			fmt.Fprintf(stderr, "%s: %v\n", prog, jerr)
			return ExitError
		}
		fmt.Fprintf(stdout, "%s\n", out)
	} else {
		fmt.Fprintf(stdout, "%s%s\n", res, res.KV())
	}
	switch {
	case errors.Is(err, ErrBadResponses):
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return ExitBad
	case err != nil:
		fmt.Fprintf(stderr, "%s: interrupted: %v\n", prog, err)
		return ExitError
	}
	return ExitOK
}

// writeTargets writes one "hex-ID address" line per target, atomically
// (a reader waiting for the file never sees half of it).
func writeTargets(path string, ts []Target) error {
	var b strings.Builder
	for _, t := range ts {
		fmt.Fprintf(&b, "%s %s\n", hex.EncodeToString(t.ID[:]), t.Addr)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// readTargets reads what writeTargets wrote.
func readTargets(path string) ([]Target, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ts []Target
	for n, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("line %d: want \"hex-ID address\"", n+1)
		}
		id, err := hex.DecodeString(f[0])
		if err != nil || len(id) != len(wire.ID{}) {
			return nil, fmt.Errorf("line %d: bad ID %q", n+1, f[0])
		}
		ap, err := netip.ParseAddrPort(f[1])
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		ts = append(ts, Target{ID: wire.ID(id), Addr: ap})
	}
	if len(ts) == 0 {
		return nil, fmt.Errorf("%s: no targets", path)
	}
	return ts, nil
}

// compareIntegrity runs cfg twice, with the KEY form and with the
// integrity form (docs/PROTOCOL.md §18), against the same server, and prints
// both results and the ratio of their rates: the cost of integrity seen
// end to end.
func compareIntegrity(ctx context.Context, prog string, cfg Config, stdout, stderr io.Writer) int {
	var res [2]Result
	for i, on := range []bool{false, true} {
		c := cfg
		c.Integrity = on
		r, err := Run(ctx, c)
		name := map[bool]string{false: "KEY form", true: "integrity form"}[on]
		if err != nil {
			fmt.Fprintf(stderr, "%s: %s: %v\n", prog, name, err)
			if errors.Is(err, ErrBadResponses) {
				return ExitBad
			}
			return ExitError
		}
		fmt.Fprintf(stdout, "== %s ==\n%s%s integrity=%v\n", name, r, r.KV(), on)
		res[i] = r
	}
	if res[0].RPS > 0 {
		fmt.Fprintf(stdout, "integrity/KEY rate ratio: %.3f (p50 %v vs %v)\n", res[1].RPS/res[0].RPS, res[1].P50, res[0].P50)
	}
	return ExitOK
}
