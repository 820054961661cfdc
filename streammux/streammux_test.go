package streammux

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// tcpPair returns the two ends of a real loopback TCP connection.
func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		ch <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-ch
	if b == nil {
		t.Fatal("accept failed")
	}
	return a, b
}

func sessionPair(t *testing.T, cfg Config) (*Session, *Session) {
	a, b := tcpPair(t)
	ccfg, scfg := cfg, cfg
	ccfg.Client = true
	c, s := New(a, ccfg), New(b, scfg)
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// TestManyConcurrentStreams: 100 streams at once, each carrying its own
// random bytes both ways, every byte checked.
func TestManyConcurrentStreams(t *testing.T) {
	c, s := sessionPair(t, Config{})
	const streams, size = 100, 200 << 10
	var wg sync.WaitGroup
	errc := make(chan error, 2*streams)
	// The accepting side echoes each stream's bytes back reversed in
	// direction only: it reads everything, then writes its hash.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for range streams {
			st, err := s.Accept(nil)
			if err != nil {
				errc <- err
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer st.Close()
				h := sha256.New()
				if _, err := io.Copy(h, st); err != nil {
					errc <- err
					return
				}
				if _, err := st.Write(h.Sum(nil)); err != nil {
					errc <- err
				}
			}()
		}
	}()
	for range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := c.Open()
			if err != nil {
				errc <- err
				return
			}
			defer st.Close()
			data := make([]byte, size)
			rand.Read(data)
			if _, err := st.Write(data); err != nil {
				errc <- err
				return
			}
			st.CloseWrite()
			got, err := io.ReadAll(st)
			if err != nil {
				errc <- err
				return
			}
			want := sha256.Sum256(data)
			if !bytes.Equal(got, want[:]) {
				errc <- errors.New("hash mismatch")
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	// Finished streams are dropped from both sessions.
	deadline := time.Now().Add(2 * time.Second)
	for (c.NumStreams() > 1 || s.NumStreams() > 1) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if c.NumStreams() != 1 || s.NumStreams() != 1 {
		t.Errorf("streams left: client %d, server %d (want only stream 0)", c.NumStreams(), s.NumStreams())
	}
}

// TestBackpressure: a reader that does not read holds the writer back
// after one window, the buffered bytes stay within the window, and
// another stream keeps flowing meanwhile.
func TestBackpressure(t *testing.T) {
	c, s := sessionPair(t, Config{Window: 512 << 10})
	slow, err := c.Open()
	if err != nil {
		t.Fatal(err)
	}
	slowPeer, err := s.Accept(nil)
	if err != nil {
		t.Fatal(err)
	}
	written := make(chan int, 1)
	go func() {
		n, _ := slow.Write(make([]byte, 8<<20))
		written <- n
	}()
	time.Sleep(300 * time.Millisecond)
	slowPeer.mu.Lock()
	buffered, capacity := len(slowPeer.buf)-slowPeer.off, cap(slowPeer.buf)
	slowPeer.mu.Unlock()
	if buffered != 512<<10 {
		t.Errorf("reader buffers %d bytes, want exactly the window %d", buffered, 512<<10)
	}
	if capacity > 2*(512<<10) {
		t.Errorf("receive buffer grew to %d bytes for a 512 KiB window", capacity)
	}
	select {
	case n := <-written:
		t.Fatalf("Write of 8 MiB returned (%d) while nobody read", n)
	default:
	}

	// Another stream is not held up by the stalled one.
	fast, _ := c.Open()
	fastPeer, _ := s.Accept(nil)
	go func() { fast.Write(make([]byte, 4<<20)); fast.CloseWrite() }()
	n, err := io.Copy(io.Discard, fastPeer)
	if err != nil || n != 4<<20 {
		t.Fatalf("fast stream: %d bytes, %v", n, err)
	}

	// Reading the slow stream lets the writer finish.
	n, err = io.CopyN(io.Discard, slowPeer, 8<<20)
	if err != nil || n != 8<<20 {
		t.Fatalf("slow stream: %d bytes, %v", n, err)
	}
	if got := <-written; got != 8<<20 {
		t.Fatalf("Write returned %d", got)
	}
}

// TestHalfClose: after one side's CloseWrite the other reads EOF and can
// still answer.
func TestHalfClose(t *testing.T) {
	c, s := sessionPair(t, Config{})
	a, _ := c.Open()
	b, _ := s.Accept(nil)
	a.Write([]byte("question"))
	a.CloseWrite()
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "question" {
		t.Fatalf("read %q, %v", got, err)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Write after CloseWrite: %v, want net.ErrClosed", err)
	}
	b.Write([]byte("answer"))
	b.CloseWrite()
	got, err = io.ReadAll(a)
	if err != nil || string(got) != "answer" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// TestDefaultStream: stream 0 works on both sides without Open/Accept.
func TestDefaultStream(t *testing.T) {
	c, s := sessionPair(t, Config{})
	go func() { c.Default().Write([]byte("hello")); c.Default().CloseWrite() }()
	got, err := io.ReadAll(s.Default())
	if err != nil || string(got) != "hello" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// TestResetCarriesCode: Reset's code reaches the peer's Read and Write.
func TestResetCarriesCode(t *testing.T) {
	c, s := sessionPair(t, Config{})
	a, _ := c.Open()
	b, _ := s.Accept(nil)
	a.Reset(42)
	var se *StreamError
	if _, err := b.Read(make([]byte, 1)); !errors.As(err, &se) || se.Code != 42 || !se.Remote {
		t.Fatalf("peer Read after Reset: %v", err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, err := b.Write([]byte("x"))
		if errors.As(err, &se) && se.Code == 42 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer Write after Reset: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := a.Write([]byte("x")); !errors.As(err, &se) || se.Remote {
		t.Errorf("own Write after Reset: %v", err)
	}
}

// TestCloseStopsPeerWrites: after Close, the peer's writes fail with
// CodeClosed, but what was written before Close still arrives.
func TestCloseStopsPeerWrites(t *testing.T) {
	c, s := sessionPair(t, Config{})
	a, _ := c.Open()
	b, _ := s.Accept(nil)
	a.Write([]byte("last words"))
	a.Close()
	got, err := io.ReadAll(b)
	if err != nil || string(got) != "last words" {
		t.Fatalf("read %q, %v", got, err)
	}
	var se *StreamError
	deadline := time.Now().Add(2 * time.Second)
	for {
		_, err := b.Write(make([]byte, 1024))
		if errors.As(err, &se) && se.Code == CodeClosed && se.Remote {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Write to a closed stream: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Read after Close: %v", err)
	}
}

// TestCloseUnblocksWrite: a Write blocked on the peer's window returns
// when the stream is closed.
func TestCloseUnblocksWrite(t *testing.T) {
	c, s := sessionPair(t, Config{})
	a, _ := c.Open()
	s.Accept(nil)
	errc := make(chan error, 1)
	go func() { _, err := a.Write(make([]byte, 4<<20)); errc <- err }()
	time.Sleep(100 * time.Millisecond)
	a.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Errorf("blocked Write: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not unblock Write")
	}
}

func TestReadDeadline(t *testing.T) {
	c, s := sessionPair(t, Config{})
	a, _ := c.Open()
	s.Accept(nil)
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("deadline took %v", d)
	}
}

// TestIdleTimeout: a peer that goes silent (here: a socket nobody
// serves) ends the session with ErrIdleTimeout, and blocked calls return.
func TestIdleTimeout(t *testing.T) {
	a, b := tcpPair(t)
	defer b.Close()
	c := New(a, Config{Client: true, IdleTimeout: 300 * time.Millisecond})
	defer c.Close()
	st, err := c.Open()
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = st.Read(make([]byte, 1))
	if !errors.Is(err, ErrIdleTimeout) {
		t.Fatalf("Read: %v, want ErrIdleTimeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("idle timeout took %v", d)
	}
	if _, err := c.Accept(nil); !errors.Is(err, ErrIdleTimeout) {
		t.Errorf("Accept: %v", err)
	}
}

// TestKeepAliveHoldsQuietSession: two live sessions that exchange no data
// stay up past the idle timeout, because of PINGs.
func TestKeepAliveHoldsQuietSession(t *testing.T) {
	c, s := sessionPair(t, Config{IdleTimeout: 300 * time.Millisecond})
	time.Sleep(time.Second)
	if c.Err() != nil || s.Err() != nil {
		t.Fatalf("quiet sessions ended: %v, %v", c.Err(), s.Err())
	}
}

// TestPeerClose: closing one session ends the other's Accept and streams
// with ErrPeerClosed.
func TestPeerClose(t *testing.T) {
	c, s := sessionPair(t, Config{})
	a, _ := c.Open()
	s.Accept(nil)
	s.Close()
	if _, err := a.Read(make([]byte, 1)); !errors.Is(err, ErrPeerClosed) {
		t.Errorf("Read: %v", err)
	}
	if _, err := c.Accept(nil); !errors.Is(err, ErrPeerClosed) {
		t.Errorf("Accept: %v", err)
	}
}

// TestProtocolViolations: a peer that breaks the rules ends the session
// with ErrProtocol instead of making it buffer or guess.
func TestProtocolViolations(t *testing.T) {
	frame := func(typ byte, id, val uint32, payload []byte) []byte {
		b := make([]byte, headerLen, headerLen+len(payload))
		putHeader(b, typ, id, val)
		return append(b, payload...)
	}
	var over []byte
	over = append(over, frame(typeOpen, 1, 0, nil)...)
	for i := 0; i <= InitialWindow/MaxPayload; i++ {
		over = append(over, frame(typeData, 1, MaxPayload, make([]byte, MaxPayload))...)
	}
	cases := []struct {
		name  string
		bytes []byte
	}{
		{"more than the window", over},
		{"data before open", frame(typeData, 3, 1, []byte{1})},
		{"oversized frame", frame(typeData, 0, MaxPayload+1, nil)},
		{"unknown type", frame(0x7f, 0, 0, nil)},
		{"data after fin", append(frame(typeFin, 0, 0, nil), frame(typeData, 0, 1, []byte{1})...)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := tcpPair(t)
			defer b.Close()
			s := New(a, Config{})
			defer s.Close()
			go b.Write(tc.bytes)
			select {
			case <-s.Done():
			case <-time.After(2 * time.Second):
				t.Fatal("session still up")
			}
			if !errors.Is(s.Err(), ErrProtocol) {
				t.Errorf("Err() = %v, want ErrProtocol", s.Err())
			}
		})
	}
}

// TestMaxStreamsRefuses: streams over MaxStreams are reset with
// CodeRefused instead of queued without bound.
func TestMaxStreamsRefuses(t *testing.T) {
	c, _ := sessionPair(t, Config{MaxStreams: 3}) // stream 0 + 2
	var refused int
	for range 4 {
		st, err := c.Open()
		if err != nil {
			t.Fatal(err)
		}
		st.SetReadDeadline(time.Now().Add(time.Second))
		var se *StreamError
		if _, err := st.Read(make([]byte, 1)); errors.As(err, &se) && se.Code == CodeRefused {
			refused++
		}
	}
	if refused != 2 {
		t.Errorf("%d of 4 streams refused, want 2", refused)
	}
}

// TestHeaderLayout pins the frame header written by hand from the
// package doc.
func TestHeaderLayout(t *testing.T) {
	var b [headerLen]byte
	putHeader(b[:], typeWindow, 0x01020304, 0x0a0b0c0d)
	want := []byte{5, 1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d}
	if !bytes.Equal(b[:], want) {
		t.Errorf("header % x, want % x", b, want)
	}
	if binary.BigEndian.Uint32(b[1:5]) != 0x01020304 {
		t.Error("id")
	}
}
