package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v3"
	"go.uber.org/goleak"

	"github.com/ewf-project/ewf/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Runs are short and small; timeouts that a valid answer must beat are
// long, so that a loaded machine makes a test slower, never red.
const (
	testDuration = 300 * time.Millisecond
	longTimeout  = 5 * time.Second
	shortTimeout = 30 * time.Millisecond // only where no answer is expected in time
)

func testConfig(server netip.AddrPort, mode Mode, timeout time.Duration) Config {
	return Config{Server: server, Mode: mode, Sockets: 3, Depth: 2, Duration: testDuration, Timeout: timeout}
}

// checkInvariants holds for every run that was not cancelled: every
// request sent in the window was either answered (ok or bad) or lost.
func checkInvariants(t *testing.T, r Result) {
	t.Helper()
	var badSum uint64
	for _, n := range r.BadReasons {
		badSum += n
	}
	if badSum != r.Bad {
		t.Errorf("bad reasons add up to %d, Bad is %d: %v", badSum, r.Bad, r.BadReasons)
	}
	if r.OK > r.Sent || r.Lost > r.Sent {
		t.Errorf("ok %d or lost %d exceeds sent %d", r.OK, r.Lost, r.Sent)
	}
	if r.OK > 0 && !(0 < r.P50 && r.P50 <= r.P90 && r.P90 <= r.P99 && r.P99 <= r.Max) {
		t.Errorf("percentiles out of order: p50 %v p90 %v p99 %v max %v", r.P50, r.P90, r.P99, r.Max)
	}
	if r.OK == 0 && (r.P50 != 0 || r.RPS != 0) {
		t.Errorf("no ok responses but p50 %v, rps %v", r.P50, r.RPS)
	}
}

func TestSTUN(t *testing.T) {
	// Flip a byte of the per-socket prefix, not of the sequence number,
	// which could turn one request's ID into another's.
	flipTx := func(tx *[stun.TransactionIDSize]byte) { tx[0] ^= 0xFF }
	nextPort := func(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr(), a.Port()+1) }
	otherIP := func(a netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), a.Port())
	}
	tests := []struct {
		name    string
		handler handler
		delay   time.Duration
		timeout time.Duration
		wantErr error
		check   func(t *testing.T, r Result)
	}{
		{
			name: "valid responses are all ok", handler: stunHandler(stunMutation{}), timeout: longTimeout,
			check: func(t *testing.T, r Result) {
				if r.Sent == 0 || r.OK != r.Sent || r.Bad != 0 || r.Lost != 0 || r.Late != 0 {
					t.Errorf("sent %d ok %d bad %d lost %d late %d; want all ok", r.Sent, r.OK, r.Bad, r.Lost, r.Late)
				}
				if r.RPS <= 0 {
					t.Errorf("rps %v", r.RPS)
				}
			},
		},
		{
			name: "wrong XOR-MAPPED-ADDRESS port is bad", handler: stunHandler(stunMutation{addr: nextPort}), timeout: longTimeout,
			wantErr: ErrBadResponses,
			check: func(t *testing.T, r Result) {
				// Each wrong answer settles its request, so the loop
				// runs at full speed and every request is bad.
				if r.OK != 0 || r.Bad < r.Sent || r.BadReasons["wrong address"] != r.Bad || r.Lost != 0 {
					t.Errorf("sent %d ok %d bad %d (%v) lost %d; want every request bad for its address", r.Sent, r.OK, r.Bad, r.BadReasons, r.Lost)
				}
			},
		},
		{
			name: "wrong XOR-MAPPED-ADDRESS IP is bad", handler: stunHandler(stunMutation{addr: otherIP}), timeout: longTimeout,
			wantErr: ErrBadResponses,
			check: func(t *testing.T, r Result) {
				if r.OK != 0 || r.BadReasons["wrong address"] < r.Sent {
					t.Errorf("ok %d bad %v, sent %d", r.OK, r.BadReasons, r.Sent)
				}
			},
		},
		{
			name: "wrong transaction ID is bad and its request lost", handler: stunHandler(stunMutation{txid: flipTx}), timeout: shortTimeout,
			wantErr: ErrBadResponses,
			check: func(t *testing.T, r Result) {
				if r.OK != 0 || r.Bad == 0 || r.BadReasons["unknown transaction ID"] != r.Bad || r.Lost != r.Sent {
					t.Errorf("sent %d ok %d bad %d (%v) lost %d; want unknown-ID answers and every request lost", r.Sent, r.OK, r.Bad, r.BadReasons, r.Lost)
				}
			},
		},
		{
			name: "error response is bad", handler: stunHandler(stunMutation{class: stun.BindingError}), timeout: longTimeout,
			wantErr: ErrBadResponses,
			check: func(t *testing.T, r Result) {
				if r.OK != 0 || r.BadReasons["STUN error response"] < r.Sent {
					t.Errorf("ok %d bad %v, sent %d", r.OK, r.BadReasons, r.Sent)
				}
			},
		},
		{
			name: "a success of another method is bad", handler: stunHandler(stunMutation{class: stun.NewType(stun.MethodAllocate, stun.ClassSuccessResponse)}), timeout: longTimeout,
			wantErr: ErrBadResponses,
			check: func(t *testing.T, r Result) {
				if r.OK != 0 || r.BadReasons["wrong type"] < r.Sent {
					t.Errorf("ok %d bad %v, sent %d", r.OK, r.BadReasons, r.Sent)
				}
			},
		},
		{
			name: "garbage is bad", timeout: shortTimeout, wantErr: ErrBadResponses,
			handler: func([]byte, netip.AddrPort) []byte { return []byte("not a STUN message, long enough") },
			check: func(t *testing.T, r Result) {
				if r.OK != 0 || r.BadReasons["malformed"] == 0 || r.Lost != r.Sent {
					t.Errorf("ok %d bad %v lost %d sent %d", r.OK, r.BadReasons, r.Lost, r.Sent)
				}
			},
		},
		{
			name: "silence is lost, not bad", handler: func([]byte, netip.AddrPort) []byte { return nil }, timeout: shortTimeout,
			check: func(t *testing.T, r Result) {
				// The closed loop sends Sockets×Depth requests per
				// timeout period.
				if r.Sent < 3*2 || r.Lost != r.Sent || r.OK != 0 || r.Bad != 0 {
					t.Errorf("sent %d lost %d ok %d bad %d; want every request lost", r.Sent, r.Lost, r.OK, r.Bad)
				}
			},
		},
		{
			name: "an answer after the timeout is late, not bad", handler: stunHandler(stunMutation{}),
			delay: 4 * shortTimeout, timeout: shortTimeout,
			check: func(t *testing.T, r Result) {
				if r.Late == 0 || r.Lost != r.Sent || r.OK != 0 || r.Bad != 0 {
					t.Errorf("sent %d lost %d late %d ok %d bad %d; want lost requests with late answers", r.Sent, r.Lost, r.Late, r.OK, r.Bad)
				}
			},
		},
	}
	for _, batch := range batchModes() {
		for _, tt := range tests {
			t.Run(ioName(batch)+"/"+tt.name, func(t *testing.T) {
				srv := startResponder(t, tt.handler, tt.delay)
				cfg := testConfig(srv.addr(), ModeSTUN, tt.timeout)
				cfg.Batch = batch
				r, err := Run(context.Background(), cfg)
				if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
					t.Fatalf("Run: %v, want %v", err, tt.wantErr)
				}
				checkInvariants(t, r)
				tt.check(t, r)
			})
		}
	}
}

// batchModes are the I/O paths to test: batched I/O is Linux-only.
func batchModes() []bool {
	if runtime.GOOS == "linux" {
		return []bool{false, true}
	}
	return []bool{false}
}

func ioName(batch bool) string {
	if batch {
		return "batch"
	}
	return "single"
}

func TestSTUNNoServerIsLost(t *testing.T) {
	// Nothing listens: ICMP port unreachable comes back as socket errors,
	// the requests time out as lost, and the run still ends on time.
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	for _, batch := range batchModes() {
		t.Run(ioName(batch), func(t *testing.T) {
			cfg := testConfig(addr, ModeSTUN, shortTimeout)
			cfg.Batch = batch
			r, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if r.Sent == 0 || r.Lost != r.Sent || r.ReadErrors+r.WriteErrors == 0 {
				t.Errorf("sent %d lost %d socket errors %d+%d", r.Sent, r.Lost, r.ReadErrors, r.WriteErrors)
			}
			if !strings.Contains(r.String(), "is the server up?") {
				t.Errorf("summary does not point at the socket errors:\n%s", r)
			}
		})
	}
}

func TestXModes(t *testing.T) {
	tests := []struct {
		name    string
		mode    Mode
		server  func(*xServer)
		wantErr error
		check   func(t *testing.T, r Result, s *xServer)
	}{
		{
			name: "bind refreshes are ok", mode: ModeBind,
			check: func(t *testing.T, r Result, s *xServer) {
				if r.Sent == 0 || r.OK != r.Sent || r.Bad != 0 {
					t.Errorf("sent %d ok %d bad %d", r.Sent, r.OK, r.Bad)
				}
				if len(s.bound) != r.Sockets {
					t.Errorf("server has %d bindings, want one per socket (%d)", len(s.bound), r.Sockets)
				}
			},
		},
		{
			name: "queries return the peers' addresses", mode: ModeQuery,
			check: func(t *testing.T, r Result, s *xServer) {
				if r.Sent == 0 || r.OK != r.Sent || r.Bad != 0 {
					t.Errorf("sent %d ok %d bad %d", r.Sent, r.OK, r.Bad)
				}
			},
		},
		{
			name: "a query answered with a wrong address is bad", mode: ModeQuery,
			server: func(s *xServer) { s.queryLie = true }, wantErr: ErrBadResponses,
			check: func(t *testing.T, r Result, s *xServer) {
				if r.OK != 0 || r.BadReasons["wrong address"] < r.Sent {
					t.Errorf("ok %d bad %v sent %d", r.OK, r.BadReasons, r.Sent)
				}
			},
		},
		{
			name: "error responses are bad, by reason", mode: ModeQuery,
			server: func(s *xServer) { s.queryReason = wire.ReasonRateLimited }, wantErr: ErrBadResponses,
			check: func(t *testing.T, r Result, s *xServer) {
				if r.OK != 0 || r.BadReasons["error response: rate limited"] < r.Sent {
					t.Errorf("ok %d bad %v sent %d", r.OK, r.BadReasons, r.Sent)
				}
			},
		},
		{
			name: "register creates one registration per request", mode: ModeRegister,
			check: func(t *testing.T, r Result, s *xServer) {
				if r.Sent == 0 || r.OK != r.Sent || r.Bad != 0 {
					t.Errorf("sent %d ok %d bad %d", r.Sent, r.OK, r.Bad)
				}
				if uint64(s.registered) != r.Sent {
					t.Errorf("server registered %d IDs, generator sent %d", s.registered, r.Sent)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newXServer()
			if tt.server != nil {
				tt.server(s)
			}
			srv := startResponder(t, s.handle, 0)
			cfg := testConfig(srv.addr(), tt.mode, longTimeout)
			cfg.Batch = tt.mode == ModeQuery && runtime.GOOS == "linux" // both I/O paths see X
			r, err := Run(context.Background(), cfg)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("Run: %v, want %v", err, tt.wantErr)
			}
			checkInvariants(t, r)
			s.mu.Lock()
			defer s.mu.Unlock()
			tt.check(t, r, s)
		})
	}
}

func TestSetupFailures(t *testing.T) {
	t.Run("register refused", func(t *testing.T) {
		s := newXServer()
		s.regReason = wire.ReasonRegistrationLimit
		srv := startResponder(t, s.handle, 0)
		r, err := Run(context.Background(), testConfig(srv.addr(), ModeBind, longTimeout))
		if err == nil || !strings.Contains(err.Error(), "registration limit reached") || r.Sockets != 0 {
			t.Fatalf("Run: %v, result %+v; want a setup error naming the reason", err, r)
		}
	})
	t.Run("STUN address is not the socket's", func(t *testing.T) {
		// The generator binds what the server says it saw; an X server
		// that disagrees with its own STUN answer refuses the BIND.
		s := newXServer()
		s.stun = stunHandler(stunMutation{addr: func(a netip.AddrPort) netip.AddrPort {
			return netip.AddrPortFrom(a.Addr(), a.Port()+1)
		}})
		srv := startResponder(t, s.handle, 0)
		_, err := Run(context.Background(), testConfig(srv.addr(), ModeQuery, longTimeout))
		if err == nil || !strings.Contains(err.Error(), "address mismatch") {
			t.Fatalf("Run: %v; want BIND refused for address mismatch", err)
		}
	})
	t.Run("no answer", func(t *testing.T) {
		srv := startResponder(t, func([]byte, netip.AddrPort) []byte { return nil }, 0)
		_, err := Run(context.Background(), testConfig(srv.addr(), ModeBind, shortTimeout))
		if !errors.Is(err, ErrNoAnswer) {
			t.Fatalf("Run: %v; want ErrNoAnswer", err)
		}
	})
}

func TestCancelEndsRun(t *testing.T) {
	srv := startResponder(t, stunHandler(stunMutation{}), 0)
	ctx, cancel := context.WithCancel(context.Background())
	cfg := testConfig(srv.addr(), ModeSTUN, longTimeout)
	cfg.Duration = time.Hour
	stop := time.AfterFunc(100*time.Millisecond, cancel)
	defer stop.Stop()
	r, err := Run(ctx, cfg)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want context.Canceled", err)
	}
	if r.Measured >= time.Hour || r.Sockets != 3 {
		t.Errorf("partial result: measured %v sockets %d", r.Measured, r.Sockets)
	}
}

func TestCancelDuringSetup(t *testing.T) {
	srv := startResponder(t, func([]byte, netip.AddrPort) []byte { return nil }, 0)
	ctx, cancel := context.WithCancel(context.Background())
	stop := time.AfterFunc(50*time.Millisecond, cancel)
	defer stop.Stop()
	_, err := Run(ctx, testConfig(srv.addr(), ModeBind, time.Hour))
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v, want context.Canceled", err)
	}
}

func TestRateCapsSending(t *testing.T) {
	srv := startResponder(t, stunHandler(stunMutation{}), 0)
	cfg := testConfig(srv.addr(), ModeSTUN, longTimeout)
	cfg.Rate = 100
	cfg.Duration = 500 * time.Millisecond
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	// 100/s for 0.5 s is 50; each socket may send once at the start of its
	// interval. Pacing may only ever send less.
	if limit := uint64(50 + cfg.Sockets); r.Sent > limit || r.Sent == 0 {
		t.Errorf("sent %d at rate 100/s over %v, want 1..%d", r.Sent, cfg.Duration, limit)
	}
}

func TestWarmupIsNotCounted(t *testing.T) {
	s := newXServer()
	srv := startResponder(t, s.handle, 0)
	cfg := testConfig(srv.addr(), ModeRegister, longTimeout)
	cfg.Warmup = 200 * time.Millisecond
	r, err := Run(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.OK != r.Sent || uint64(s.registered) <= r.Sent {
		t.Errorf("server saw %d registrations, result counts %d sent, %d ok; want warm-up requests seen but not counted", s.registered, r.Sent, r.OK)
	}
}

func TestConfigErrors(t *testing.T) {
	srv := netip.MustParseAddrPort("127.0.0.1:3478")
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no server", Config{}},
		{"no port", Config{Server: netip.AddrPortFrom(srv.Addr(), 0)}},
		{"unknown mode", Config{Server: srv, Mode: 9}},
		{"negative sockets", Config{Server: srv, Sockets: -1}},
		{"too many sockets", Config{Server: srv, Sockets: MaxSockets + 1}},
		{"depth too large", Config{Server: srv, Depth: MaxDepth + 1}},
		{"negative duration", Config{Server: srv, Duration: -time.Second}},
		{"negative timeout", Config{Server: srv, Timeout: -time.Second}},
		{"negative rate", Config{Server: srv, Rate: -1}},
		{"local of another family", Config{Server: srv, Local: netip.MustParseAddr("::1")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Run(context.Background(), tt.cfg); !errors.Is(err, ErrConfig) {
				t.Errorf("Run: %v, want ErrConfig", err)
			}
		})
	}
	for _, m := range []Mode{ModeSTUN, ModeBind, ModeQuery, ModeRegister} {
		if got, err := ParseMode(m.String()); got != m || err != nil {
			t.Errorf("ParseMode(%q) = %v, %v", m, got, err)
		}
	}
	if _, err := ParseMode("turn"); err == nil {
		t.Error(`ParseMode("turn") succeeded`)
	}
}

func TestIPv6(t *testing.T) {
	// startResponder listens on IPv4; run one by hand on ::1.
	pc, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	h := stunHandler(stunMutation{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, src, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if resp := h(buf[:n], src); resp != nil {
				_, _ = pc.WriteToUDPAddrPort(resp, src)
			}
		}
	}()
	defer func() { pc.Close(); <-done }()
	r, err := Run(context.Background(), testConfig(pc.LocalAddr().(*net.UDPAddr).AddrPort(), ModeSTUN, longTimeout))
	if err != nil || r.OK == 0 || r.OK != r.Sent {
		t.Fatalf("Run: %v, sent %d ok %d", err, r.Sent, r.OK)
	}
}

func TestOutputFormats(t *testing.T) {
	r := Result{Mode: ModeQuery, Server: netip.MustParseAddrPort("127.0.0.1:3478"), Sockets: 64, Depth: 4,
		Duration: 10 * time.Second, Sent: 1000, OK: 990, Bad: 2, Lost: 8, RPS: 99, P50: 412 * time.Microsecond,
		P99: 1500 * time.Microsecond, BadReasons: map[string]uint64{"wrong address": 2}}
	kv := r.KV()
	const prefix = "bench mode=query server=127.0.0.1:3478 sockets=64 duration=10s sent=1000 ok=990 bad=2 lost=8 rps=99 p50_us=412 p99_us=1500 "
	if !strings.HasPrefix(kv, prefix) {
		t.Errorf("KV line\n%s\ndoes not start with\n%s", kv, prefix)
	}
	var m map[string]any
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("invalid JSON %s: %v", b, err)
	}
	for _, kv := range r.fields() {
		if _, ok := m[kv[0]]; !ok {
			t.Errorf("JSON lacks key %q", kv[0])
		}
	}
	if m["mode"] != "query" || m["rps"] != 99.0 || m["bad_reasons"].(map[string]any)["wrong address"] != 2.0 {
		t.Errorf("JSON %s", b)
	}
	if s := r.String(); !strings.Contains(s, "wrong address 2") || !strings.Contains(s, "99 requests/s") {
		t.Errorf("summary lacks the bad reasons or the rate:\n%s", s)
	}
}

func TestMainExitCodes(t *testing.T) {
	good := startResponder(t, stunHandler(stunMutation{}), 0)
	liar := startResponder(t, stunHandler(stunMutation{addr: func(a netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(a.Addr(), a.Port()+1)
	}}), 0)
	tests := []struct {
		name string
		args []string
		code int
		out  string
	}{
		{"help", []string{"-h"}, ExitOK, ""},
		{"bad flag", []string{"--nope"}, ExitError, ""},
		{"bad mode", []string{"--mode", "turn"}, ExitError, ""},
		{"stray argument", []string{"x"}, ExitError, ""},
		{"valid server", []string{"--server", good.addr().String(), "--sockets", "2", "--duration", "100ms", "--warmup", "0"}, ExitOK, "bench mode=stun server=" + good.addr().String()},
		{"json", []string{"--server", good.addr().String(), "--sockets", "2", "--duration", "100ms", "--warmup", "0", "--json"}, ExitOK, `{"mode":"stun"`},
		{"bad responses", []string{"--server", liar.addr().String(), "--sockets", "2", "--duration", "100ms", "--warmup", "0"}, ExitBad, "wrong address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Main(context.Background(), "ewf-bench", tt.args, &stdout, &stderr)
			if code != tt.code || !strings.Contains(stdout.String(), tt.out) {
				t.Errorf("exit %d, want %d; stdout:\n%s\nstderr:\n%s", code, tt.code, stdout.String(), stderr.String())
			}
		})
	}
}
