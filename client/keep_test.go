package client

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// keepRun runs Keep in the background and records what it reports.
type keepRun struct {
	mu      sync.Mutex
	changes []netip.AddrPort
	errs    []error
	err     error
	done    chan struct{}
}

func startKeep(ctx context.Context, c *Client, id wire.ID, key wire.Key, interval func() time.Duration) *keepRun {
	k := &keepRun{done: make(chan struct{})}
	go func() {
		defer close(k.done)
		k.err = c.Keep(ctx, id, key, wire.TransportUDP, interval,
			func(a netip.AddrPort) { k.mu.Lock(); k.changes = append(k.changes, a); k.mu.Unlock() },
			func(err error) { k.mu.Lock(); k.errs = append(k.errs, err); k.mu.Unlock() })
	}()
	return k
}

func (k *keepRun) snapshot() ([]netip.AddrPort, []error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]netip.AddrPort(nil), k.changes...), append([]error(nil), k.errs...)
}

// binds returns when BIND requests reached the responder, since start.
func binds(r *responder, start time.Time) []time.Duration {
	var out []time.Duration
	for _, g := range r.requests() {
		if g.method == wire.MethodBind {
			out = append(out, g.at.Sub(start))
		}
	}
	return out
}

// Keep refreshes at once and then every interval, reports the public
// address at first and when the NAT changes it, re-BINDs the new address,
// and stops with ctx.
func TestKeepRefreshesAndFollowsAddressChanges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newResponder()
		nat := netip.MustParseAddrPort("203.0.113.7:1000")
		r.nat = func(netip.AddrPort) netip.AddrPort { return nat }
		p := newPipe(r, Config{})
		defer p.close()
		id := wire.ID{1}
		key, err := p.c.Register(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		start := time.Now()
		k := startKeep(ctx, p.c, id, key, func() time.Duration { return 20 * time.Second })

		time.Sleep(30 * time.Second)
		synctest.Wait()
		changed := netip.MustParseAddrPort("203.0.113.7:2000")
		r.set(func(r *responder) { r.nat = func(netip.AddrPort) netip.AddrPort { return changed } })
		time.Sleep(25 * time.Second)
		synctest.Wait()
		cancel()
		<-k.done

		if got, want := binds(r, start), []time.Duration{0, 20 * time.Second, 40 * time.Second}; !equalDurations(got, want) {
			t.Errorf("BINDs at %v, want %v", got, want)
		}
		changes, errs := k.snapshot()
		if len(changes) != 2 || changes[0] != nat || changes[1] != changed {
			t.Errorf("onChange got %v, want [%v %v]", changes, nat, changed)
		}
		if len(errs) != 0 {
			t.Errorf("onError got %v", errs)
		}
		if b, _ := r.binding(id, wire.TransportUDP); b != changed {
			t.Errorf("server binding %v, want %v", b, changed)
		}
		if !errors.Is(k.err, context.Canceled) {
			t.Errorf("Keep returned %v, want context.Canceled", k.err)
		}
	})
}

// A refresh that fails for a transient reason is reported and retried with
// a doubling backoff capped by the interval; the next success resets it.
func TestKeepRetriesTransientFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newResponder()
		// One attempt, 1 s wait: each failed STUN takes 1 s.
		p := newPipe(r, Config{RTO: time.Second, MaxAttempts: 1, LastWait: 1, RetryBackoff: 2 * time.Second})
		defer p.close()
		id := wire.ID{1}
		key, err := p.c.Register(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		busy := wire.ReasonRateLimited
		r.set(func(r *responder) { r.silent = true })
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		start := time.Now()
		k := startKeep(ctx, p.c, id, key, func() time.Duration { return 10 * time.Second })
		// Failures end at 1 s; retries at 3 s (+2), 8 s (+4), 17 s (+8),
		// 28 s (+10, capped): four timeouts by 27.5 s.
		time.Sleep(27500 * time.Millisecond)
		synctest.Wait()
		_, errs := k.snapshot()
		if len(errs) != 4 {
			t.Fatalf("%d errors by 27.5s, want 4: %v", len(errs), errs)
		}
		for _, err := range errs {
			if !errors.Is(err, ErrTimeout) {
				t.Errorf("onError got %v, want ErrTimeout", err)
			}
		}
		// Server answers again but refuses BIND for now: still transient.
		r.set(func(r *responder) { r.silent = false; r.force = &busy })
		time.Sleep(time.Second) // the 28 s retry: STUN ok, BIND rate limited
		synctest.Wait()
		_, errs = k.snapshot()
		if len(errs) != 5 || !errors.Is(errs[4], ErrRateLimited) {
			t.Fatalf("errors %v, want a fifth, ErrRateLimited", errs)
		}
		r.set(func(r *responder) { r.force = nil })
		time.Sleep(10 * time.Second) // retry at 38 s (+10) succeeds
		synctest.Wait()
		got := binds(r, start)
		if last := got[len(got)-1]; last != 38*time.Second {
			t.Errorf("BINDs at %v; want the last success at 38s", got)
		}
		if b, ok := r.binding(id, wire.TransportUDP); !ok || b != p.src {
			t.Errorf("server binding %v, %v", b, ok)
		}
		time.Sleep(10 * time.Second) // back on the regular interval
		synctest.Wait()
		got = binds(r, start)
		if last := got[len(got)-1]; last != 48*time.Second {
			t.Errorf("BINDs at %v; want the next at 48s", got)
		}
	})
}

// Keep returns at once when the server no longer knows the ID or the KEY.
func TestKeepReturnsWhenRegistrationIsGone(t *testing.T) {
	for _, tt := range []struct {
		name string
		id   wire.ID
		key  wire.Key
		want error
	}{
		{"unknown ID", wire.ID{2}, wire.Key{}, ErrNotRegistered},
		{"wrong KEY", wire.ID{1}, wire.Key{0xFF}, ErrKeyMismatch},
	} {
		synctest.Test(t, func(t *testing.T) {
			r := newResponder()
			p := newPipe(r, Config{})
			defer p.close()
			if _, err := p.c.Register(t.Context(), wire.ID{1}); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			k := startKeep(t.Context(), p.c, tt.id, tt.key, nil)
			<-k.done
			if !errors.Is(k.err, tt.want) || time.Since(start) != 0 {
				t.Errorf("%s: Keep = %v after %v, want %v at once", tt.name, k.err, time.Since(start), tt.want)
			}
			if _, errs := k.snapshot(); len(errs) != 0 {
				t.Errorf("%s: fatal error also reported as transient: %v", tt.name, errs)
			}
		})
	}
}

func TestDefaultKeepInterval(t *testing.T) {
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := DefaultKeepInterval()
		if d < MinKeepInterval || d >= MaxKeepInterval {
			t.Fatalf("interval %v outside [%v, %v)", d, MinKeepInterval, MaxKeepInterval)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Errorf("only %d distinct intervals in 1000: no jitter", len(seen))
	}
}

// With KeepGiveUp (a client with other servers to move to) a server that
// stops answering just after a refresh is noticed within the interval:
// the next refresh is sent g early and given up after g, and the first
// retry goes at once (onError has moved the client), later ones back off.
func TestKeepGiveUpNoticesADeadServerWithinTheInterval(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newResponder()
		// Default RTO and attempts: a request alone would wait 39.5 s.
		p := newPipe(r, Config{KeepGiveUp: func(time.Duration) time.Duration { return 2 * time.Second }})
		defer p.close()
		id := wire.ID{1}
		key, err := p.c.Register(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		start := time.Now()
		var mu sync.Mutex
		var failed []time.Duration
		done := make(chan error, 1)
		go func() {
			done <- p.c.Keep(ctx, id, key, wire.TransportUDP, func() time.Duration { return 10 * time.Second }, nil,
				func(err error) {
					if !errors.Is(err, ErrTimeout) {
						t.Errorf("onError got %v, want ErrTimeout", err)
					}
					mu.Lock()
					failed = append(failed, time.Since(start))
					mu.Unlock()
				})
		}()
		synctest.Wait() // the first refresh, at once, succeeded
		r.set(func(r *responder) { r.silent = true })
		time.Sleep(14 * time.Second)
		synctest.Wait()
		mu.Lock()
		got := append([]time.Duration(nil), failed...)
		mu.Unlock()
		// Sent at 8 s, given up at 10 s; again at once, given up at 12 s;
		// again after RetryBackoff (1 s) at 13 s, not given up by 14 s.
		if want := []time.Duration{10 * time.Second, 12 * time.Second}; !equalDurations(got, want) {
			t.Errorf("refreshes failed at %v, want %v", got, want)
		}
		var sent []time.Duration
		for _, g := range r.requests() {
			if d := g.at.Sub(start); d > 0 && g.kind == wire.KindSTUN {
				sent = append(sent, d)
			}
		}
		want := []time.Duration{8 * time.Second, 8500 * time.Millisecond, 9500 * time.Millisecond,
			10 * time.Second, 10500 * time.Millisecond, 11500 * time.Millisecond, 13 * time.Second, 13500 * time.Millisecond}
		if !equalDurations(sent, want) {
			t.Errorf("STUN requests at %v, want %v", sent, want)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Keep returned %v", err)
		}
	})
}
