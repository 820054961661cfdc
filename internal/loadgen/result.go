package loadgen

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// Result is the outcome of one Run. Counts cover requests sent in the
// measured window (after Warmup, for Duration); Bad counts every invalid
// datagram, whenever it came.
type Result struct {
	Mode     Mode
	Server   netip.AddrPort
	Sockets  int
	Depth    int
	Duration time.Duration // configured measured window
	Warmup   time.Duration
	Timeout  time.Duration
	Rate     float64 // configured cap in requests/s; 0 for none

	Sent uint64 // requests sent
	OK   uint64 // valid responses
	Bad  uint64 // invalid responses (wrong, malformed, error responses, unknown transaction)
	Lost uint64 // requests without a response within Timeout
	Late uint64 // responses that came after their request had timed out
	// BadReasons breaks Bad down by cause; only causes that occurred.
	// X error responses are listed by ERROR_REASON ("error response:
	// rate limited").
	BadReasons map[string]uint64

	RPS      float64       // OK per second of the measured window
	Measured time.Duration // the measured window as it happened (shorter if cancelled)
	P50      time.Duration
	P90      time.Duration
	P99      time.Duration
	Max      time.Duration
	Mean     time.Duration

	SetupTime time.Duration // REGISTER/STUN/BIND of every socket, before the clock
	Wall      time.Duration // from the first request to the last answer or timeout
	// CPUUser and CPUSystem are the generator process's own CPU time over
	// Wall (getrusage), and CPUPercent their sum over Wall: 100 is one
	// core busy. When generator and server share a machine, this is the
	// share the server could not have.
	CPUUser    time.Duration
	CPUSystem  time.Duration
	CPUPercent float64

	// ReadErrors and WriteErrors count socket errors, mostly ICMP port
	// unreachable when nothing listens at Server.
	ReadErrors  uint64
	WriteErrors uint64
}

func newResult(cfg *Config, c *counts, measured, wall time.Duration, cpu cpuTime) Result {
	r := Result{
		Mode: cfg.Mode, Server: cfg.Server, Sockets: cfg.Sockets, Depth: cfg.Depth,
		Duration: cfg.Duration, Warmup: cfg.Warmup, Timeout: cfg.Timeout, Rate: cfg.Rate,
		Sent: c.sent, OK: c.ok, Bad: c.badTotal(), Lost: c.lost, Late: c.late,
		Measured: max(measured, 0),
		P50:      c.hist.Quantile(0.50),
		P90:      c.hist.Quantile(0.90),
		P99:      c.hist.Quantile(0.99),
		Max:      c.hist.Max(),
		Mean:     c.hist.Mean(),
		Wall:     wall,
		CPUUser:  cpu.user, CPUSystem: cpu.system,
		ReadErrors: c.readErrs, WriteErrors: c.writeErrs,
	}
	if r.Measured > 0 {
		r.RPS = float64(r.OK) / r.Measured.Seconds()
	}
	if wall > 0 {
		r.CPUPercent = 100 * (cpu.user + cpu.system).Seconds() / wall.Seconds()
	}
	for k, n := range c.bad {
		if n > 0 && badKind(k) != badErrorReply {
			r.addBad(badNames[k], n)
		}
	}
	for reason, n := range c.reasons {
		if n > 0 {
			name := wire.Reason(reason).String()
			if reason == numReasons-1 {
				name = "other reason"
			}
			r.addBad("error response: "+name, n)
		}
	}
	return r
}

func (r *Result) addBad(name string, n uint64) {
	if r.BadReasons == nil {
		r.BadReasons = make(map[string]uint64)
	}
	r.BadReasons[name] += n
}

func us(d time.Duration) int64 { return d.Microseconds() }

// fields returns the result as ordered key/value pairs: the keys of the
// key=value line and of the JSON form. The first keys are the ones the
// README and bench/ scripts parse; new keys go at the end.
func (r *Result) fields() [][2]string {
	u := func(v uint64) string { return strconv.FormatUint(v, 10) }
	i := func(v int64) string { return strconv.FormatInt(v, 10) }
	f := func(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	return [][2]string{
		{"mode", r.Mode.String()},
		{"server", r.Server.String()},
		{"sockets", i(int64(r.Sockets))},
		{"duration", r.Duration.String()},
		{"sent", u(r.Sent)},
		{"ok", u(r.OK)},
		{"bad", u(r.Bad)},
		{"lost", u(r.Lost)},
		{"rps", f(r.RPS, 0)},
		{"p50_us", i(us(r.P50))},
		{"p99_us", i(us(r.P99))},
		{"depth", i(int64(r.Depth))},
		{"late", u(r.Late)},
		{"p90_us", i(us(r.P90))},
		{"max_us", i(us(r.Max))},
		{"mean_us", i(us(r.Mean))},
		{"cpu_user_s", f(r.CPUUser.Seconds(), 2)},
		{"cpu_sys_s", f(r.CPUSystem.Seconds(), 2)},
		{"cpu_pct", f(r.CPUPercent, 0)},
		{"wall_s", f(r.Wall.Seconds(), 2)},
	}
}

// KV returns the result as one stable line for scripts:
//
//	bench mode=stun server=127.0.0.1:3478 sockets=64 duration=10s sent=… ok=… bad=… lost=… rps=… p50_us=… p99_us=… …
//
// Keys are never renamed or reordered; new ones are appended.
func (r Result) KV() string {
	var b strings.Builder
	b.WriteString("bench")
	for _, kv := range r.fields() {
		b.WriteString(" " + kv[0] + "=" + kv[1])
	}
	return b.String()
}

// MarshalJSON encodes the result as one object with the keys of KV (numbers
// as numbers) and "bad_reasons".
func (r Result) MarshalJSON() ([]byte, error) {
	b := []byte{'{'}
	for n, kv := range r.fields() {
		if n > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, kv[0])
		b = append(b, ':')
		switch kv[0] {
		case "mode", "server", "duration":
			b = strconv.AppendQuote(b, kv[1])
		default:
			b = append(b, kv[1]...)
		}
	}
	reasons, err := json.Marshal(r.BadReasons)
	if err != nil {
		return nil, err
	}
	if r.BadReasons == nil {
		reasons = []byte("{}")
	}
	b = append(b, `,"bad_reasons":`...)
	b = append(b, reasons...)
	return append(b, '}'), nil
}

// String returns a human-readable summary of several lines.
func (r Result) String() string {
	var b strings.Builder
	round := func(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
	fmt.Fprintf(&b, "ewf bench: %s against %v, %d sockets × %d in flight, %v measured",
		r.Mode, r.Server, r.Sockets, r.Depth, round(r.Measured))
	if r.Warmup > 0 {
		fmt.Fprintf(&b, " after %v warm-up", r.Warmup)
	}
	if r.Rate > 0 {
		fmt.Fprintf(&b, ", capped at %.0f/s", r.Rate)
	}
	fmt.Fprintf(&b, "\n  requests    %d sent, %d ok, %d bad, %d lost (timeout %v), %d late\n",
		r.Sent, r.OK, r.Bad, r.Lost, r.Timeout, r.Late)
	fmt.Fprintf(&b, "  throughput  %.0f requests/s\n", r.RPS)
	fmt.Fprintf(&b, "  latency     p50 %v, p90 %v, p99 %v, max %v, mean %v\n",
		round(r.P50), round(r.P90), round(r.P99), round(r.Max), round(r.Mean))
	fmt.Fprintf(&b, "  generator   %.2f s user + %.2f s system CPU in %.2f s = %.0f%% of one core\n",
		r.CPUUser.Seconds(), r.CPUSystem.Seconds(), r.Wall.Seconds(), r.CPUPercent)
	if r.Mode == ModeBind || r.Mode == ModeQuery || r.Mode == ModeIntro {
		fmt.Fprintf(&b, "  setup       %v (REGISTER, STUN, BIND per socket)\n", round(r.SetupTime))
	}
	if r.Bad > 0 {
		names := make([]string, 0, len(r.BadReasons))
		for k := range r.BadReasons {
			names = append(names, k)
		}
		slices.Sort(names)
		for n, k := range names {
			names[n] = fmt.Sprintf("%s %d", k, r.BadReasons[k])
		}
		fmt.Fprintf(&b, "  BAD         %s\n", strings.Join(names, "; "))
	}
	if r.ReadErrors+r.WriteErrors > 0 {
		fmt.Fprintf(&b, "  socket errors: %d on read, %d on write (is the server up?)\n", r.ReadErrors, r.WriteErrors)
	}
	if r.Lost > r.Sent/2 {
		// The usual cause, besides a server that is down: per-source
		// rate limits, which a generator on one address hits at once.
		b.WriteString("  most requests were lost: is the server up, and does it rate-limit this\n" +
			"  source address? (ewfd: run it with -rate 1e9 for benchmarks)\n")
	}
	return b.String()
}
