package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"

	"github.com/ewf-project/ewf/server"
)

var natLine = regexp.MustCompile(`^nat mapping=(eim|adm|apdm|unknown) filtering=(eif|adf|apdf|unknown) ports=(preserved|sequential|random|unknown) hairpin=(yes|no) ipv6=(yes|no)$`)

func TestNATCommand(t *testing.T) {
	for _, tc := range []struct {
		name, alternate string
		args            []string
		wantLine        string
		wantText        string
	}{
		{"rfc5780", "127.0.0.2:0", nil, "nat mapping=eim filtering=eif ports=preserved hairpin=yes", "public IPv4 address"},
		{"no-alternate", "", nil, "nat mapping=unknown filtering=unknown ports=preserved hairpin=yes", "could not be measured"},
		{"no-server", "", []string{"--timeout", "30ms"}, "nat mapping=unknown filtering=unknown ports=unknown hairpin=no", "did not answer over UDP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, Alternate: tc.alternate, DataDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			addr := d.Addrs()[0].String()
			if tc.name == "no-server" {
				d.Close()
			} else {
				defer d.Close()
			}
			var out bytes.Buffer
			if err := runNAT(context.Background(), append([]string{"--server", addr}, tc.args...), &out); err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(out.String()), "\n")
			if !natLine.MatchString(lines[0]) || !strings.HasPrefix(lines[0], tc.wantLine) {
				t.Fatalf("first line %q, want %q ipv6=...", lines[0], tc.wantLine)
			}
			if len(lines) < 2 || !strings.Contains(out.String(), tc.wantText) {
				t.Fatalf("output %q: no sentence with %q", out.String(), tc.wantText)
			}
		})
	}
}

func TestNATCommandNeedsServer(t *testing.T) {
	t.Setenv("EWF_SERVER", "")
	err := runNAT(context.Background(), nil, &bytes.Buffer{})
	if _, ok := err.(usageError); !ok {
		t.Fatalf("err = %v, want a usage error", err)
	}
}
