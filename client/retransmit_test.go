package client

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/ewf-project/ewf/wire"
)

// sendTimes returns when each request reached the responder, relative to
// start.
func sendTimes(r *responder, start time.Time) []time.Duration {
	var out []time.Duration
	for _, g := range r.requests() {
		out = append(out, g.at.Sub(start))
	}
	return out
}

func ms(v ...int) []time.Duration {
	out := make([]time.Duration, len(v))
	for i, x := range v {
		out[i] = time.Duration(x) * time.Millisecond
	}
	return out
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// The schedule of RFC 5389 §7.2.1: sends at 0, R, 3R, 7R, ..., Rc sends,
// then Rm·R more, and a timeout error that names server and attempts.
func TestRetransmitScheduleRFC5389(t *testing.T) {
	tests := []struct {
		name     string
		cfg      Config
		sends    []time.Duration
		giveUpAt time.Duration
	}{
		{"defaults", Config{}, ms(0, 500, 1500, 3500, 7500, 15500, 31500), 39500 * time.Millisecond},
		{"custom", Config{RTO: 100 * time.Millisecond, MaxAttempts: 3, LastWait: 4}, ms(0, 100, 300), 700 * time.Millisecond},
		{"one attempt", Config{RTO: time.Second, MaxAttempts: 1, LastWait: 2}, ms(0), 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				r := newResponder()
				r.silent = true
				p := newPipe(r, tt.cfg)
				defer p.close()
				start := time.Now()
				_, err := p.c.Register(t.Context(), wire.ID{1})
				took := time.Since(start)
				synctest.Wait()
				if got := sendTimes(r, start); !equalDurations(got, tt.sends) {
					t.Errorf("sends at %v, want %v", got, tt.sends)
				}
				if took != tt.giveUpAt {
					t.Errorf("gave up after %v, want %v", took, tt.giveUpAt)
				}
				if !errors.Is(err, ErrTimeout) {
					t.Fatalf("err = %v, want ErrTimeout", err)
				}
				var te *TimeoutError
				if !errors.As(err, &te) || te.Attempts != len(tt.sends) || te.Waited != tt.giveUpAt || te.Request != "REGISTER" {
					t.Errorf("TimeoutError = %+v", te)
				}
				for _, want := range []string{"127.0.0.1:3478", "REGISTER", "did not answer"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not name %q", err, want)
					}
				}
				if errors.Is(err, ErrBadResponse) {
					t.Errorf("silence reported as bad response: %v", err)
				}
			})
		})
	}
}

// A response to the n-th transmission ends the transaction at once: no
// further retransmissions, and the result arrives when the answer does.
func TestRetransmitStopsAtAnswer(t *testing.T) {
	all := ms(0, 500, 1500, 3500, 7500, 15500, 31500)
	for drop := 0; drop < 7; drop++ {
		synctest.Test(t, func(t *testing.T) {
			r := newResponder()
			r.dropRequests = drop
			p := newPipe(r, Config{})
			defer p.close()
			start := time.Now()
			key, err := p.c.Register(t.Context(), wire.ID{1})
			took := time.Since(start)
			if err != nil {
				t.Fatalf("drop %d: %v", drop, err)
			}
			if key != r.key(wire.ID{1}) {
				t.Errorf("drop %d: key %x, server has %x", drop, key, r.key(wire.ID{1}))
			}
			time.Sleep(time.Minute) // would expose a stray retransmission
			if got := sendTimes(r, start); !equalDurations(got, all[:drop+1]) {
				t.Errorf("drop %d: sends at %v, want %v", drop, got, all[:drop+1])
			}
			if took != all[drop] {
				t.Errorf("drop %d: answered after %v, want %v", drop, took, all[drop])
			}
		})
	}
}

// Retransmissions are the same bytes, so the same transaction ID: a server
// that carried out a REGISTER whose answer was lost recognises the
// retransmission and answers with the same KEY, not "ID conflict".
func TestRetransmitReusesTransactionID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newResponder()
		r.dropResponses = 3 // carried out, answer lost, three times
		p := newPipe(r, Config{})
		defer p.close()
		key, err := p.c.Register(t.Context(), wire.ID{7})
		if err != nil {
			t.Fatalf("Register after lost answers: %v", err)
		}
		got := r.requests()
		if len(got) != 4 {
			t.Fatalf("%d transmissions, want 4", len(got))
		}
		for i, g := range got[1:] {
			if !bytes.Equal(g.raw, got[0].raw) || g.tx != got[0].tx {
				t.Errorf("transmission %d differs from the first:\n%x\n%x", i+1, g.raw, got[0].raw)
			}
		}
		if key != r.key(wire.ID{7}) {
			t.Errorf("key %x, server holds %x", key, r.key(wire.ID{7}))
		}
		// A new request gets a new transaction ID.
		if _, err := p.c.Register(t.Context(), wire.ID{8}); err != nil {
			t.Fatal(err)
		}
		got = r.requests()
		if got[len(got)-1].tx == got[0].tx {
			t.Error("second request reused the first one's transaction ID")
		}
	})
}

// Over a reliable transport a request is sent once and waits Timeout.
func TestReliableSendsOnce(t *testing.T) {
	for _, tt := range []struct {
		timeout, want time.Duration
	}{{0, 39500 * time.Millisecond}, {3 * time.Second, 3 * time.Second}} {
		synctest.Test(t, func(t *testing.T) {
			r := newResponder()
			r.silent = true
			p := newPipe(r, Config{Reliable: true, Timeout: tt.timeout})
			defer p.close()
			start := time.Now()
			_, err := p.c.PublicAddress(t.Context())
			took := time.Since(start)
			var te *TimeoutError
			if !errors.As(err, &te) || te.Attempts != 1 || te.Request != "STUN Binding" {
				t.Fatalf("err = %v, want a TimeoutError after 1 attempt", err)
			}
			if took != tt.want {
				t.Errorf("gave up after %v, want %v", took, tt.want)
			}
			if n := len(r.requests()); n != 1 {
				t.Errorf("%d transmissions, want 1", n)
			}
		})
	}
}

// Cancelling or timing out the context ends a request at that moment,
// with an error wrapping ctx.Err(); a dead context sends nothing.
func TestContextEndsRequestPromptly(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newResponder()
		r.silent = true
		p := newPipe(r, Config{})
		defer p.close()

		ctx, cancel := context.WithCancel(t.Context())
		time.AfterFunc(2*time.Second, cancel)
		start := time.Now()
		_, err := p.c.Query(ctx, wire.ID{1})
		if !errors.Is(err, context.Canceled) || time.Since(start) != 2*time.Second {
			t.Errorf("cancel: err = %v after %v, want context.Canceled after 2s", err, time.Since(start))
		}
		if !strings.Contains(err.Error(), "QUERY") || !strings.Contains(err.Error(), "127.0.0.1:3478") {
			t.Errorf("error %q does not say what was abandoned", err)
		}

		ctx, cancel = context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		start = time.Now()
		err = p.c.Bind(ctx, wire.ID{1}, wire.Key{}, wire.Address{AddrPort: p.src})
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) != 5*time.Second {
			t.Errorf("deadline: err = %v after %v, want DeadlineExceeded after 5s", err, time.Since(start))
		}

		n := len(r.requests())
		_, err = p.c.PublicAddress(ctx) // already expired
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("dead context: err = %v", err)
		}
		synctest.Wait()
		if len(r.requests()) != n {
			t.Error("a request with a dead context was sent")
		}
		p.c.mu.Lock()
		left := len(p.c.pending)
		p.c.mu.Unlock()
		if left != 0 {
			t.Errorf("%d transactions left outstanding", left)
		}
	})
}

// A failed UDP send counts as an attempt and is retried; a closed socket
// ends the request at once. Over TCP any send error ends it.
func TestSendErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newResponder()
		p := newPipe(r, Config{})
		defer p.close()
		p.sendErr = []error{errors.New("no buffer space"), errors.New("no buffer space")}
		start := time.Now()
		if _, err := p.c.PublicAddress(t.Context()); err != nil {
			t.Fatalf("after two failed sends: %v", err)
		}
		if took := time.Since(start); took != 1500*time.Millisecond {
			t.Errorf("answered after %v, want 1.5s (third attempt)", took)
		}

		r.silent = true
		p.sendErr = []error{errors.New("no buffer space")}
		_, err := p.c.PublicAddress(t.Context())
		if !errors.Is(err, ErrTimeout) || !strings.Contains(err.Error(), "no buffer space") {
			t.Errorf("err = %v, want timeout naming the send error", err)
		}

		p.sendErr = []error{net.ErrClosed}
		start = time.Now()
		_, err = p.c.PublicAddress(t.Context())
		if !errors.Is(err, net.ErrClosed) || time.Since(start) != 0 {
			t.Errorf("closed socket: err = %v after %v", err, time.Since(start))
		}
	})
	synctest.Test(t, func(t *testing.T) {
		p := newPipe(newResponder(), Config{Reliable: true})
		defer p.close()
		p.sendErr = []error{errors.New("broken pipe")}
		_, err := p.c.Register(t.Context(), wire.ID{1})
		if err == nil || !strings.Contains(err.Error(), "broken pipe") || errors.Is(err, ErrTimeout) {
			t.Errorf("TCP send error: err = %v", err)
		}
	})
}

// Fail ends the requests in flight and every later one, at once.
func TestFailEndsRequests(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newResponder()
		r.silent = true
		p := newPipe(r, Config{})
		defer p.close()
		cause := errors.New("connection reset")
		time.AfterFunc(time.Second, func() { p.c.Fail(cause) })
		start := time.Now()
		_, err := p.c.Query(t.Context(), wire.ID{1})
		if !errors.Is(err, ErrClosed) || !errors.Is(err, cause) || time.Since(start) != time.Second {
			t.Errorf("in flight: err = %v after %v", err, time.Since(start))
		}
		_, err = p.c.Register(t.Context(), wire.ID{1})
		if !errors.Is(err, ErrClosed) || !errors.Is(err, cause) {
			t.Errorf("after Fail: err = %v", err)
		}
	})
}
