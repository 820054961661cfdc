package main

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ewf-project/ewf/internal/redistest"
	"github.com/ewf-project/ewf/wire"
)

func TestHelpExplainsEveryFlagWithItsVariable(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"--help"}, &out, &errb); code != 0 {
		t.Fatalf("--help exit code %d", code)
	}
	help := errb.String()
	for _, want := range []string{
		"Usage:", "ewfd [flags]", "3478", "OPERATIONS.md",
		"-listen", "EWFD_LISTEN", "-data", "EWFD_DATA", "-metrics", "EWFD_METRICS",
		"-log-format", "-log-level", "-binding-ttl", "-registration-ttl", "-rate",
		"-max-registrations", "-register-per-ip", "-tcp-idle", "-max-tcp-conns",
		"-max-tcp-per-ip", "-version", "-require-integrity", "EWFD_REQUIRE_INTEGRITY",
		"-tls-cert", "EWFD_TLS_CERT", "-tls-key", "-tls-listen", "5349",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("--help does not mention %q", want)
		}
	}
}

func TestVersionPrintsAndExits(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"-version"}, &out, io.Discard); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if !strings.HasPrefix(out.String(), "ewfd ") {
		t.Fatalf("-version printed %q", out.String())
	}
}

func TestBadFlagsAndArgumentsExitWith2(t *testing.T) {
	for _, args := range [][]string{
		{"-no-such-flag"}, {"-rate", "fast"}, {"extra"}, {"-log-format", "xml"}, {"-log-level", "loud"},
	} {
		if code := run(args, io.Discard, io.Discard); code != 2 {
			t.Errorf("%q: exit code %d, want 2", args, code)
		}
	}
}

func TestEnvironmentSetsFlagsAndCommandLineWins(t *testing.T) {
	env := map[string]string{
		"EWFD_LISTEN":            "127.0.0.1:1,[::1]:2",
		"EWFD_RATE":              "7",
		"EWFD_BINDING_TTL":       "30s",
		"EWFD_DATA":              "/from/env",
		"EWFD_REQUIRE_INTEGRITY": "true",
	}
	o, err := parse([]string{"-rate", "9"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if got := o.cfg.Listen; len(got) != 2 || got[0] != "127.0.0.1:1" || got[1] != "[::1]:2" {
		t.Errorf("Listen %q", got)
	}
	if o.cfg.Rate != 9 {
		t.Errorf("Rate %v, want the flag's 9 over the variable's 7", o.cfg.Rate)
	}
	if o.cfg.BindingTTL != 30*time.Second || o.cfg.DataDir != "/from/env" || !o.cfg.RequireIntegrity {
		t.Errorf("BindingTTL %v, DataDir %q, RequireIntegrity %v", o.cfg.BindingTTL, o.cfg.DataDir, o.cfg.RequireIntegrity)
	}
	if _, err := parse(nil, func(k string) string {
		if k == "EWFD_RATE" {
			return "lots"
		}
		return ""
	}, io.Discard); err == nil || !strings.Contains(err.Error(), "EWFD_RATE") {
		t.Errorf("bad EWFD_RATE: err %v, want one naming the variable", err)
	}
}

func TestDefaultDataDirFollowsSystemdThenXDG(t *testing.T) {
	t.Setenv("STATE_DIRECTORY", "/var/lib/ewfd:/other")
	if got := defaultDataDir(); got != "/var/lib/ewfd" {
		t.Errorf("with STATE_DIRECTORY: %q", got)
	}
	t.Setenv("STATE_DIRECTORY", "")
	t.Setenv("XDG_STATE_HOME", "/xdg")
	if got := defaultDataDir(); got != "/xdg/ewfd" {
		t.Errorf("with XDG_STATE_HOME: %q", got)
	}
	t.Setenv("XDG_STATE_HOME", "")
	t.Setenv("HOME", "/home/u")
	if got := defaultDataDir(); got != "/home/u/.local/state/ewfd" {
		t.Errorf("with HOME only: %q", got)
	}
}

// The tests below run the real binary.

func ewfdBinary(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs ewfd")
	}
	bin := filepath.Join(t.TempDir(), "ewfd")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

type proc struct {
	cmd  *exec.Cmd
	addr netip.AddrPort
	logs *bytes.Buffer
	done chan struct{}
}

var readyRE = regexp.MustCompile(`msg="ewfd ready".*addrs=\[([^\] ]+)`)

// start runs ewfd with args and env and waits for its "ready" log line.
func start(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, logs: new(bytes.Buffer), done: make(chan struct{})}
	ready := make(chan netip.AddrPort, 1)
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			p.logs.WriteString(line + "\n")
			if m := readyRE.FindStringSubmatch(line); m != nil {
				if ap, err := netip.ParseAddrPort(m[1]); err == nil {
					ready <- ap
				}
			}
		}
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-p.done
			cmd.Wait()
		}
	})
	select {
	case p.addr = <-ready:
	case <-p.done:
		cmd.Wait()
		t.Fatalf("ewfd exited before it was ready:\n%s", p.logs)
	case <-time.After(30 * time.Second):
		t.Fatalf("ewfd not ready after 30 s:\n%s", p.logs)
	}
	return p
}

// stop signals p and returns its exit status after its logs are read.
func (p *proc) stop(t *testing.T, sig os.Signal) *os.ProcessState {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	<-p.done
	p.cmd.Wait()
	return p.cmd.ProcessState
}

// exchange sends m over UDP to srv and returns the answer with its
// transaction ID.
func exchange(t *testing.T, c *net.UDPConn, m *wire.Message) *wire.Message {
	t.Helper()
	if _, err := c.Write(m.AppendTo(nil)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	for {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("no answer to %v: %v", m.Type, err)
		}
		var r wire.Message
		if err := r.Decode(buf[:n]); err == nil && r.TransactionID == m.TransactionID {
			return &r
		}
	}
}

func request(method wire.Method) *wire.Message {
	m := &wire.Message{Type: wire.Type{Method: method, Class: wire.ClassRequest}}
	rand.Read(m.TransactionID[:])
	return m
}

func dialUDP(t *testing.T, srv netip.AddrPort) *net.UDPConn {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(srv))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func bind(t *testing.T, srv netip.AddrPort, id wire.ID, key wire.Key) *wire.Message {
	c := dialUDP(t, srv)
	m := request(wire.MethodBind)
	m.SetID(id)
	m.SetKey(key)
	m.AddAddress(wire.Address{Transport: wire.TransportUDP, AddrPort: c.LocalAddr().(*net.UDPAddr).AddrPort()})
	return exchange(t, c, m)
}

// TestKilledServerKeepsAcknowledgedRegistrations is the durability test of
// the issue: register, SIGKILL, restart on the same data directory, BIND
// with the old KEY.
func TestKilledServerKeepsAcknowledgedRegistrations(t *testing.T) {
	bin := ewfdBinary(t)
	data := t.TempDir()
	// 50 REGISTERs from one IP are over the default budget of 20 an hour.
	args := []string{"-listen", "127.0.0.1:0", "-data", data, "-register-per-ip", "100"}
	p := start(t, bin, nil, args...)

	type reg struct {
		id  wire.ID
		key wire.Key
	}
	var regs []reg
	c := dialUDP(t, p.addr)
	for range 50 {
		m := request(wire.MethodRegister)
		rand.Read(m.ID[:])
		m.SetID(m.ID)
		r := exchange(t, c, m)
		if r.Type.Class != wire.ClassSuccess {
			t.Fatalf("REGISTER: %v %q", r.Type, r.Reason)
		}
		regs = append(regs, reg{m.ID, r.Key})
	}
	if st := p.stop(t, syscall.SIGKILL); st.Success() {
		t.Fatal("ewfd survived SIGKILL?")
	}

	p2 := start(t, bin, nil, args...)
	for _, r := range regs {
		if a := bind(t, p2.addr, r.id, r.key); a.Type.Class != wire.ClassSuccess {
			t.Fatalf("BIND with a KEY acknowledged before SIGKILL: %v %q", a.Type, a.Reason)
		}
	}
	wrong := regs[0].key
	wrong[0] ^= 1
	if a := bind(t, p2.addr, regs[0].id, wrong); a.Reason != wire.ReasonKeyMismatch {
		t.Fatalf("BIND with a wrong KEY after restart: %v %q", a.Type, a.Reason)
	}
	if st := p2.stop(t, syscall.SIGTERM); !st.Success() {
		t.Fatalf("SIGTERM: %v\n%s", st, p2.logs)
	}
	if !strings.Contains(p2.logs.String(), "ewfd shut down") {
		t.Fatalf("no clean shutdown in the logs:\n%s", p2.logs)
	}
}

// TestRunsWithNoFlags checks the README's "go run ./cmd/ewfd": no flag at
// all, the data directory from XDG_STATE_HOME (the port comes from
// EWFD_LISTEN only because 3478 may be taken on a test machine).
func TestRunsWithNoFlags(t *testing.T) {
	bin := ewfdBinary(t)
	state := t.TempDir()
	p := start(t, bin, []string{"EWFD_LISTEN=127.0.0.1:0", "XDG_STATE_HOME=" + state, "STATE_DIRECTORY="})
	m := request(wire.MethodRegister)
	rand.Read(m.ID[:])
	m.SetID(m.ID)
	if r := exchange(t, dialUDP(t, p.addr), m); r.Type.Class != wire.ClassSuccess {
		t.Fatalf("REGISTER: %v %q", r.Type, r.Reason)
	}
	if st := p.stop(t, os.Interrupt); !st.Success() {
		t.Fatalf("SIGINT: %v\n%s", st, p.logs)
	}
	if _, err := os.Stat(filepath.Join(state, "ewfd", "ewfd.db")); err != nil {
		t.Fatalf("store not in $XDG_STATE_HOME/ewfd: %v", err)
	}
}

// TestStoreFlagUsesRedis: ewfd -store redis://… says at start-up what an
// acknowledged REGISTER survives, and a registration acknowledged by one
// ewfd, killed -9, binds at another ewfd on the same Redis.
func TestStoreFlagUsesRedis(t *testing.T) {
	bin := ewfdBinary(t)
	r := redistest.Start(t, redistest.Options{AOF: true})
	args := []string{"-listen", "127.0.0.1:0", "-store", r.URL()}
	p := start(t, bin, nil, args...)
	if !strings.Contains(p.logs.String(), "AOF appendfsync always") {
		t.Fatalf("no durability report in the start-up logs:\n%s", p.logs)
	}
	m := request(wire.MethodRegister)
	rand.Read(m.ID[:])
	m.SetID(m.ID)
	reg := exchange(t, dialUDP(t, p.addr), m)
	if reg.Type.Class != wire.ClassSuccess {
		t.Fatalf("REGISTER: %v %q", reg.Type, reg.Reason)
	}
	if st := p.stop(t, syscall.SIGKILL); st.Success() {
		t.Fatal("ewfd survived SIGKILL?")
	}
	p2 := start(t, bin, nil, args...)
	if a := bind(t, p2.addr, m.ID, reg.Key); a.Type.Class != wire.ClassSuccess {
		t.Fatalf("BIND at another ewfd: %v %q", a.Type, a.Reason)
	}
	if st := p2.stop(t, syscall.SIGTERM); !st.Success() {
		t.Fatalf("SIGTERM: %v\n%s", st, p2.logs)
	}
}
