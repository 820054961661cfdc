package server_test

import (
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

// TestShortRegistrationTTLExpires: with a registration lifetime of 2 s
// (ewfd -registration-ttl 2s), a registration nobody binds is gone within
// a few seconds, not after the store's hour of expiry slack, while one
// that keeps binding stays.
func TestShortRegistrationTTLExpires(t *testing.T) {
	d := startDaemon(t, server.Config{RegistrationTTL: 2 * time.Second})
	c := dial(t, wire.TransportUDP, addrFor(t, d, "127.0.0.1"))
	idle, _ := c.register()
	kept, keptKey := c.register()
	start := time.Now()
	for {
		c.bind(kept, keptKey)
		// QUERY does not count as use: registered but unbound answers
		// not bound, and not registered once it expired.
		r := c.roundTrip(queryReq(idle))
		if r.Type.Class != wire.ClassError {
			t.Fatalf("QUERY of an unbound ID: %v", r.Type)
		}
		if r.Reason == wire.ReasonNotRegistered {
			break
		}
		wantError(t, r, wire.MethodQuery, wire.ReasonNotBound)
		if time.Since(start) > 15*time.Second {
			t.Fatal("the idle registration was still there after 15 s")
		}
		time.Sleep(250 * time.Millisecond)
	}
	if e := time.Since(start); e < 2*time.Second {
		t.Errorf("expired after %v, before its lifetime of 2 s", e)
	}
	t.Logf("idle registration expired after %v", time.Since(start).Round(100*time.Millisecond))
	c.bind(kept, keptKey) // the one that kept binding is still there
}
