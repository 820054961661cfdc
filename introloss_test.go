package ewf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewf-project/ewf/server"
)

// TestIntroduceLost: the server sends the target of an introduction one
// INTRODUCE datagram. When the network loses it, the target never punches
// and never SIGNALs; the dialer, having heard nothing from the peer
// (neither SIGNAL nor PUNCH) within reintroduceAfter, introduces itself
// again, and the connection is made on the second introduction, over UDP
// and over TCP alike. When every INTRODUCE of the bounded number of
// introductions is lost, Dial ends with ErrNoDirectPath, as before.
func TestIntroduceLost(t *testing.T) {
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir(), Rate: 100000})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	srv := d.Addrs()[0].String()
	for _, tr := range []Transport{TransportUDP, TransportTCP} {
		for _, lost := range []int64{1, 1 + maxReintroductions} {
			name := string(tr) + "/one lost"
			allLost := lost > 1
			if allLost {
				name = string(tr) + "/all lost"
			}
			t.Run(name, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				dir := t.TempDir()
				var drop atomic.Int64
				drop.Store(lost)
				const punchTimeout = 2 * time.Second
				ln, err := Open(ctx, Config{Server: srv, EnableTCP: true, PunchTimeout: punchTimeout,
					IdentityFile: filepath.Join(dir, "l.json"), dropIntroduces: &drop})
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				dn, err := Open(ctx, Config{Server: srv, EnableTCP: true, PunchTimeout: punchTimeout,
					IdentityFile: filepath.Join(dir, "d.json")})
				if err != nil {
					t.Fatal(err)
				}
				defer dn.Close()
				accepted := make(chan error, 1)
				go func() {
					c, err := ln.Accept(ctx)
					if err == nil {
						_, err = io.Copy(c, c)
						c.Close()
					}
					accepted <- err
				}()
				start := time.Now()
				c, err := dn.Dial(ctx, ln.ID(), tr)
				took := time.Since(start)
				if allLost {
					if !errors.Is(err, ErrNoDirectPath) {
						t.Fatalf("every INTRODUCE lost: Dial = %v, want ErrNoDirectPath", err)
					}
					if want := fmt.Sprintf("introduction %d", 1+maxReintroductions); !strings.Contains(err.Error(), want) {
						t.Fatalf("Dial = %v: the error does not say %q", err, want)
					}
					if got := drop.Load(); got != 0 {
						t.Fatalf("%d introductions reached the target's socket, want %d", lost-got, lost)
					}
					return
				}
				if err != nil {
					t.Fatalf("Dial after one lost INTRODUCE: %v (after %v)", err, took)
				}
				defer c.Close()
				if got := drop.Load(); got != -1 {
					t.Fatalf("the target saw %d INTRODUCEs, want 2 (one lost, one answered)", lost-got)
				}
				if took < reintroduceAfter(0, punchTimeout) {
					t.Fatalf("connected after %v, before the re-introduction was due", took)
				}
				msg := []byte("after a lost INTRODUCE")
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				if err := c.CloseWrite(); err != nil {
					t.Fatal(err)
				}
				got, err := io.ReadAll(c)
				if err != nil || string(got) != string(msg) {
					t.Fatalf("echo = %q, %v", got, err)
				}
				if err := <-accepted; err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: connected %v after the dial began, one INTRODUCE lost", tr, took.Round(time.Millisecond))
			})
		}
	}
}
