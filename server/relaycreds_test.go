package server_test

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pion/turn/v5"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/server/relay"
	"github.com/ewf-project/ewf/store/bolt"
	"github.com/ewf-project/ewf/wire"
)

func relayReq(id wire.ID, key wire.Key, padded bool) *wire.Message {
	m := req(wire.MethodRelay)
	m.SetID(id)
	m.SetKey(key)
	if padded {
		m.Padding = wire.RelayRequestSize - m.Len() - 4
	}
	return m
}

// startRelayDaemon runs ewfd with its embedded relay on loopback and a
// known shared secret.
func startRelayDaemon(t *testing.T, secret []byte) (*server.Daemon, *bolt.Store) {
	st := openStore(t, bolt.Options{})
	return startDaemon(t, server.Config{Store: st, Relay: server.RelayConfig{
		Secret: secret,
		TTL:    5 * time.Minute,
		Embedded: &relay.Config{
			Listen:   "127.0.0.1:0",
			RelayIPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")},
			PortMin:  21000, PortMax: 21999,
		},
	}}), st
}

// TestRelayCredentialsEndToEnd: a client that registered gets credentials
// for ewfd's own relay with a padded RELAY, over UDP and TCP; they are
// the TURN REST ones for its ID (checked with crypto/hmac here, not with
// the code under test), and a real pion/turn client allocates with them.
// Once the registration is gone, the same credentials are refused.
func TestRelayCredentialsEndToEnd(t *testing.T) {
	secret := []byte("shared with coturn")
	d, st := startRelayDaemon(t, secret)
	srv := addrFor(t, d, "127.0.0.1")
	turnAddr := d.Relay().Addr()
	for _, tr := range transports {
		t.Run(tr.String(), func(t *testing.T) {
			c := dial(t, tr, srv)
			id, key := c.register()
			before := time.Now()
			r := c.roundTrip(relayReq(id, key, true))
			wantSuccess(t, r, wire.MethodRelay)
			wantURLs := []string{
				"turn:" + turnAddr.String() + "?transport=udp",
				"turn:" + turnAddr.String() + "?transport=tcp",
			}
			if r.Relay.NumURLs != 2 || string(r.Relay.URLs[0]) != wantURLs[0] || string(r.Relay.URLs[1]) != wantURLs[1] {
				t.Fatalf("URLs %q %q, want %q", r.Relay.URLs[0], r.Relay.URLs[1], wantURLs)
			}
			user := string(r.Relay.Username)
			exp := int64(r.Relay.Expiry)
			if lo, hi := before.Add(5*time.Minute).Unix(), time.Now().Add(5*time.Minute).Unix()+1; exp < lo || exp > hi {
				t.Fatalf("expiry %d, want about now + TTL (%d..%d)", exp, lo, hi)
			}
			if want := strconv.FormatInt(exp, 10) + ":" + id.String(); user != want {
				t.Fatalf("username %q, want %q", user, want)
			}
			mac := hmac.New(sha1.New, secret)
			mac.Write([]byte(user))
			if want := base64.StdEncoding.EncodeToString(mac.Sum(nil)); string(r.Relay.Password) != want {
				t.Fatalf("password %q, want %q", r.Relay.Password, want)
			}

			tc := turnClient(t, turnAddr, user, string(r.Relay.Password))
			relayed, err := tc.Allocate()
			if err != nil {
				t.Fatalf("Allocate with ewfd's credentials: %v", err)
			}
			relayed.Close()

			// The registration expires: the relay refuses the ID.
			if n, err := st.Expire(time.Now().Add(48 * time.Hour)); err != nil || n == 0 {
				t.Fatalf("Expire = %d, %v", n, err)
			}
			tc2 := turnClient(t, turnAddr, user, string(r.Relay.Password))
			if _, err := tc2.Allocate(); err == nil {
				t.Fatal("allocation granted to an ID whose registration expired")
			}
		})
	}
}

func turnClient(t *testing.T, turnAddr netip.AddrPort, user, pass string) *turn.Client {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tc, err := turn.NewClient(&turn.ClientConfig{
		TURNServerAddr: turnAddr.String(), STUNServerAddr: turnAddr.String(),
		Username: user, Password: pass, Conn: pc, RTO: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close(); pc.Close() })
	if err := tc.Listen(); err != nil {
		t.Fatal(err)
	}
	return tc
}

// TestRelayRequestErrors: a wrong KEY, an unknown ID, an unpadded request
// over UDP, and a server without a relay each get their reason.
func TestRelayRequestErrors(t *testing.T) {
	d, _ := startRelayDaemon(t, []byte("s"))
	srv := addrFor(t, d, "127.0.0.1")
	c := dial(t, wire.TransportUDP, srv)
	id, key := c.register()
	wantError(t, c.roundTrip(relayReq(id, wire.Key{1}, true)), wire.MethodRelay, wire.ReasonKeyMismatch)
	wantError(t, c.roundTrip(relayReq(newID(), key, true)), wire.MethodRelay, wire.ReasonNotRegistered)
	// Unpadded over UDP: the answer would break the 2x bound.
	wantError(t, c.roundTrip(relayReq(id, key, false)), wire.MethodRelay, wire.ReasonInvalidAttributes)
	// Over TCP the bound does not apply.
	ct := dial(t, wire.TransportTCP, srv)
	wantSuccess(t, ct.roundTrip(relayReq(id, key, false)), wire.MethodRelay)

	plain := startDaemon(t, server.Config{})
	c2 := dial(t, wire.TransportUDP, addrFor(t, plain, "127.0.0.1"))
	id2, key2 := c2.register()
	wantError(t, c2.roundTrip(relayReq(id2, key2, true)), wire.MethodRelay, wire.ReasonNoRelay)
}

// TestRelayRequestRateLimited: RELAY is limited per ID.
func TestRelayRequestRateLimited(t *testing.T) {
	d, _ := startRelayDaemon(t, []byte("s"))
	c := dial(t, wire.TransportTCP, addrFor(t, d, "127.0.0.1"))
	id, key := c.register()
	limited := false
	for range 30 {
		r := c.roundTrip(relayReq(id, key, true))
		if r.Type.Class == wire.ClassError {
			wantError(t, r, wire.MethodRelay, wire.ReasonRateLimited)
			limited = true
			break
		}
	}
	if !limited {
		t.Fatal("30 RELAY requests at once were all answered")
	}
}

// TestExternalRelayOffer: with URLs and a secret (coturn), ewfd offers
// them as given; a configuration whose answer would not fit is refused.
func TestExternalRelayOffer(t *testing.T) {
	d := startDaemon(t, server.Config{Relay: server.RelayConfig{
		URLs:   []string{"turn:relay.example.org:3478?transport=udp", "turn:relay.example.org:3478?transport=tcp"},
		Secret: []byte("coturn's static-auth-secret"),
	}})
	c := dial(t, wire.TransportUDP, addrFor(t, d, "127.0.0.1"))
	id, key := c.register()
	r := c.roundTrip(relayReq(id, key, true))
	wantSuccess(t, r, wire.MethodRelay)
	if string(r.Relay.URLs[0]) != "turn:relay.example.org:3478?transport=udp" {
		t.Fatalf("URL %q", r.Relay.URLs[0])
	}
	for name, rc := range map[string]server.RelayConfig{
		"no secret":    {URLs: []string{"turn:x:3478"}},
		"five URLs":    {URLs: []string{"turn:a", "turn:b", "turn:c", "turn:d", "turn:e"}, Secret: []byte("s")},
		"URL too long": {URLs: []string{"turn:" + strings.Repeat("a", 300)}, Secret: []byte("s")},
	} {
		if _, err := server.Start(server.Config{DataDir: t.TempDir(), Listen: []string{"127.0.0.1:0"}, Relay: rc}); err == nil {
			t.Errorf("%s: Start accepted the relay config", name)
		}
	}
}
