package ewf_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ewf-project/ewf"
)

// TestStreams runs the stream behaviours over both transports: many
// streams at once beside the default stream, half-close, reset codes,
// backpressure.
func TestStreams(t *testing.T) {
	srv := startServer(t)
	for _, tr := range []ewf.Transport{ewf.TransportUDP, ewf.TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			_, d, a := connectPair(t, srv, tr)
			t.Run("concurrent", func(t *testing.T) { testConcurrentStreams(t, d, a) })
			t.Run("half-close", func(t *testing.T) { testStreamHalfClose(t, d, a) })
			t.Run("reset", func(t *testing.T) { testStreamReset(t, d, a) })
			t.Run("backpressure", func(t *testing.T) { testStreamBackpressure(t, d, a) })
		})
	}
}

// testConcurrentStreams: 50 streams opened from each side at once, each
// with its own random bytes checked by SHA-256, while the default stream
// carries its own transfer.
func testConcurrentStreams(t *testing.T, d, a *ewf.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const per, size = 50, 128 << 10
	errc := make(chan error, 4*per+2)
	var wg sync.WaitGroup
	// Each side accepts the other's streams and answers with the hash of
	// what it read.
	serve := func(c *ewf.Conn) {
		defer wg.Done()
		for range per {
			s, err := c.AcceptStream(ctx)
			if err != nil {
				errc <- err
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer s.Close()
				h := sha256.New()
				if _, err := io.Copy(h, s); err != nil {
					errc <- err
					return
				}
				s.Write(h.Sum(nil))
			}()
		}
	}
	open := func(c *ewf.Conn) {
		defer wg.Done()
		s, err := c.OpenStream(ctx)
		if err != nil {
			errc <- err
			return
		}
		defer s.Close()
		data := randomBytes(t, size)
		if _, err := s.Write(data); err != nil {
			errc <- err
			return
		}
		s.CloseWrite()
		got, err := io.ReadAll(s)
		if want := sha256.Sum256(data); err != nil || string(got) != string(want[:]) {
			errc <- errors.New("stream hash mismatch")
		}
	}
	wg.Add(2 + 2*per)
	go serve(d)
	go serve(a)
	for range per {
		go open(d)
		go open(a)
	}
	// The default stream, meanwhile.
	def := randomBytes(t, 256<<10)
	go func() { d.Write(def) }()
	got := make([]byte, len(def))
	if _, err := io.ReadFull(a, got); err != nil || string(got) != string(def) {
		t.Errorf("default stream: %v", err)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
}

func testStreamHalfClose(t *testing.T, d, a *ewf.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Write([]byte("request"))
	s.CloseWrite()
	p, err := a.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if got, err := io.ReadAll(p); err != nil || string(got) != "request" {
		t.Fatalf("read %q, %v", got, err)
	}
	p.Write([]byte("response"))
	p.CloseWrite()
	if got, err := io.ReadAll(s); err != nil || string(got) != "response" {
		t.Fatalf("read %q, %v", got, err)
	}
}

func testStreamReset(t *testing.T, d, a *ewf.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := d.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p, err := a.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	s.Reset(7)
	var se *ewf.StreamError
	if _, err := io.ReadAll(p); !errors.As(err, &se) || se.Code != 7 || !se.Remote {
		t.Fatalf("peer's Read after Reset(7): %v", err)
	}
}

// testStreamBackpressure: a stream nobody reads takes only a bounded
// amount before the writer blocks; then reading lets it finish.
func testStreamBackpressure(t *testing.T, d, a *ewf.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := d.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, err := a.AcceptStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	s.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	n, err := s.Write(make([]byte, 64<<20))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Write to an unread stream: %d bytes, %v; want a deadline error", n, err)
	}
	// Flow control, not buffering without bound: quic-go's stream window
	// grows to at most 6 MiB, streammux's is 1 MiB.
	if n > 8<<20 {
		t.Errorf("%d bytes went into a stream nobody read", n)
	}
	s.SetWriteDeadline(time.Time{})
	done := make(chan error, 1)
	go func() {
		_, err := s.Write(make([]byte, 8<<20))
		s.CloseWrite()
		done <- err
	}()
	got, err := io.Copy(io.Discard, p)
	if err != nil || got != int64(n)+8<<20 {
		t.Fatalf("read %d of %d bytes, %v", got, int64(n)+8<<20, err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestStreamsEndWithConn: closing one side ends the other's AcceptStream
// and open streams with ErrPeerClosed.
func TestStreamsEndWithConn(t *testing.T) {
	srv := startServer(t)
	for _, tr := range []ewf.Transport{ewf.TransportUDP, ewf.TransportTCP} {
		t.Run(string(tr), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, d, a := connectPair(t, srv, tr)
			s, err := d.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.AcceptStream(ctx); err != nil {
				t.Fatal(err)
			}
			go func() { io.Copy(io.Discard, a) }() // lets d's Close linger end
			d.Close()
			if _, err := a.AcceptStream(ctx); !errors.Is(err, ewf.ErrPeerClosed) {
				t.Errorf("AcceptStream after the peer closed: %v", err)
			}
			if _, err := s.Write([]byte("x")); err == nil {
				t.Error("Write on a stream of a closed Conn succeeded")
			}
		})
	}
}
