package loadgen

import (
	"context"
	"strings"
	"testing"

	"github.com/ewf-project/ewf/server"
)

// TestIntegrityModeAgainstEwfd drives a real ewfd that refuses the KEY
// form (--require-integrity): with Config.Integrity every BIND and
// introduction is accepted and every answer's MAC verifies; without it,
// setup fails with the server's refusal.
func TestIntegrityModeAgainstEwfd(t *testing.T) {
	d, err := server.Start(server.Config{
		Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir(), UDPReaders: 1,
		RequireIntegrity: true, Rate: 1e6, IntroRate: 1e6, IntroBurst: 1 << 20,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	srv := d.Addrs()[0]
	for _, mode := range []Mode{ModeBind, ModeIntro} {
		t.Run(mode.String(), func(t *testing.T) {
			cfg := testConfig(srv, mode, longTimeout)
			cfg.Integrity = true
			r, err := Run(context.Background(), cfg)
			if err != nil {
				t.Fatalf("Run: %v (bad %v)", err, r.BadReasons)
			}
			checkInvariants(t, r)
			if r.Sent == 0 || r.OK != r.Sent || r.Bad != 0 {
				t.Fatalf("sent %d ok %d bad %v", r.Sent, r.OK, r.BadReasons)
			}
		})
	}
	cfg := testConfig(srv, ModeBind, longTimeout)
	if _, err := Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "integrity required") {
		t.Fatalf("KEY form against --require-integrity: %v, want the server's refusal", err)
	}
}
