package main

import (
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestRelayFlags(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("  s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	noenv := func(string) string { return "" }

	o, err := parse([]string{"-relay", "-relay-ip", "198.51.100.1,2001:db8::1", "-relay-ports", "40000-40999",
		"-relay-allow", "203.0.113.0/24,10.0.0.0/8", "-relay-listen", "127.0.0.1:0"}, noenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	e := o.cfg.Relay.Embedded
	if e == nil || len(e.RelayIPs) != 2 || e.RelayIPs[1] != netip.MustParseAddr("2001:db8::1") ||
		e.PortMin != 40000 || e.PortMax != 40999 || len(e.Policy.Allow) != 2 || e.Listen != "127.0.0.1:0" {
		t.Fatalf("embedded relay config %+v", e)
	}

	o, err = parse([]string{"-relay-url", "turn:relay.example.org:3478?transport=udp", "-relay-secret", secret}, noenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.cfg.Relay.Embedded != nil || string(o.cfg.Relay.Secret) != "s3cret" || len(o.cfg.Relay.URLs) != 1 {
		t.Fatalf("external relay config %+v", o.cfg.Relay)
	}

	o, err = parse(nil, noenv, io.Discard)
	if err != nil || o.cfg.Relay.Embedded != nil || len(o.cfg.Relay.URLs) != 0 {
		t.Fatalf("the relay is not off by default: %+v, %v", o.cfg.Relay, err)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"-relay"}, "-relay-ip"},
		{[]string{"-relay", "-relay-ip", "nope"}, "-relay-ip"},
		{[]string{"-relay", "-relay-ip", "192.0.2.1", "-relay-ports", "5-4"}, "-relay-ports"},
		{[]string{"-relay", "-relay-ip", "192.0.2.1", "-relay-ports", "70000-70001"}, "-relay-ports"},
		{[]string{"-relay", "-relay-ip", "192.0.2.1", "-relay-allow", "10.0.0.0"}, "-relay-allow"},
		{[]string{"-relay-url", "turn:x"}, "-relay-secret"},
		{[]string{"-relay-ip", "192.0.2.1"}, "-relay"},
		{[]string{"-relay-url", "turn:x", "-relay-secret", filepath.Join(t.TempDir(), "missing")}, "-relay-secret"},
	} {
		_, err := parse(c.args, noenv, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err %v, want one naming %s", c.args, err, c.want)
		}
		if code := run(c.args, io.Discard, io.Discard); code != 2 {
			t.Errorf("%q: exit code %d, want 2", c.args, code)
		}
	}
}

// TestRelayStartsAndStopsWithEwfd: the real binary with -relay logs the
// relay's address and exits cleanly on SIGTERM.
func TestRelayStartsAndStopsWithEwfd(t *testing.T) {
	bin := ewfdBinary(t)
	p := start(t, bin, nil, "-relay", "-relay-ip", "127.0.0.1", "-relay-listen", "127.0.0.1:0",
		"-relay-ports", "22000-22099", "-listen", "127.0.0.1:0", "-data", t.TempDir())
	st := p.stop(t, syscall.SIGTERM)
	if !st.Success() {
		t.Fatalf("exit %v:\n%s", st, p.logs)
	}
	if !strings.Contains(p.logs.String(), `msg="relay serving"`) {
		t.Fatalf("no relay in the logs:\n%s", p.logs)
	}
}
