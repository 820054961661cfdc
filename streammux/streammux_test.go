package streammux

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
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

// tlsPair is a TLS 1.3 connection over loopback TCP, as ewf runs
// sessions: the interrupts of a Read that reads the connection itself
// rely on crypto/tls surviving a read deadline.
func tlsPair(t testing.TB) (net.Conn, net.Conn) {
	return tlsPairOver(t, func(c net.Conn) net.Conn { return c })
}

// tlsPairOver is tlsPair with wrap applied to both TCP ends beneath TLS.
func tlsPairOver(t testing.TB, wrap func(net.Conn) net.Conn) (net.Conn, net.Conn) {
	t.Helper()
	a, c := tcpPair(t)
	a, c = wrap(a), wrap(c)
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	srv := tls.Server(c, &tls.Config{MinVersion: tls.VersionTLS13,
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	cli := tls.Client(a, &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return cli, srv
}

// transports runs f over plain TCP and over TLS.
func transports(t *testing.T, f func(t *testing.T, pair func(testing.TB) (net.Conn, net.Conn))) {
	t.Run("tcp", func(t *testing.T) { f(t, tcpPair) })
	t.Run("tls", func(t *testing.T) { f(t, tlsPair) })
}

func sessionsOver(t *testing.T, pair func(testing.TB) (net.Conn, net.Conn), cfg Config) (*Session, *Session) {
	a, b := pair(t)
	ccfg := cfg
	ccfg.Client = true
	c, s := New(a, ccfg), New(b, cfg)
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

// waitLeading waits until st's Read holds the read token: it is inside
// the connection's Read, where only an interrupt gets it out.
func waitLeading(t *testing.T, st *Stream) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		st.s.rmu.Lock()
		leading := st.s.holding && st.s.holder == st
		st.s.rmu.Unlock()
		if leading {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the Read never took the read token")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestInterruptedReadLeavesSessionWorking: a Read that is reading the
// connection itself returns at once on its stream's Close, Reset and read
// deadline, and the session goes on: the next bytes arrive whole and in
// order, on that stream and others.
func TestInterruptedReadLeavesSessionWorking(t *testing.T) {
	transports(t, func(t *testing.T, pair func(testing.TB) (net.Conn, net.Conn)) {
		c, s := sessionsOver(t, pair, Config{})
		for _, how := range []string{"deadline", "close", "reset"} {
			a, err := c.Open()
			if err != nil {
				t.Fatal(err)
			}
			b, err := s.Accept(nil)
			if err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() { _, err := a.Read(make([]byte, 100)); errc <- err }()
			waitLeading(t, a)
			start := time.Now()
			var want error
			switch how { // the reading Read's own stream ends it
			case "deadline":
				a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
				want = os.ErrDeadlineExceeded
			case "close":
				a.Close()
				want = net.ErrClosed
			case "reset":
				a.Reset(7)
				want = net.ErrClosed // a local Reset closes the stream here
			}
			select {
			case err := <-errc:
				if !errors.Is(err, want) {
					t.Fatalf("%s: Read returned %v, want %v", how, err, want)
				}
			case <-time.After(2 * time.Second):
				t.Fatalf("%s: the reading Read did not return", how)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("%s: Read took %v to return", how, d)
			}
			// The session still carries bytes, in order, both ways.
			if how == "deadline" {
				a.SetReadDeadline(time.Time{})
				b.Write([]byte("after the deadline"))
				got := make([]byte, 18)
				if _, err := io.ReadFull(a, got); err != nil || string(got) != "after the deadline" {
					t.Fatalf("after the deadline: %q, %v", got, err)
				}
			}
			checkDefaultStream(t, c, s)
		}
	})
}

// checkDefaultStream sends 1 MiB each way on stream 0 and checks it.
func checkDefaultStream(t *testing.T, c, s *Session) {
	t.Helper()
	for _, dir := range [][2]*Session{{c, s}, {s, c}} {
		data := make([]byte, 1<<20)
		rand.Read(data)
		go dir[0].Default().Write(data)
		got := make([]byte, len(data))
		if _, err := io.ReadFull(dir[1].Default(), got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("stream 0 bytes differ")
		}
	}
}

// TestInterruptMidFrame: a Read interrupted while a frame is half read
// (its header, or its payload, split by the peer) leaves the rest to the
// next reader: no byte is lost or misread.
func TestInterruptMidFrame(t *testing.T) {
	a, raw := tcpPair(t)
	c := New(a, Config{Client: true})
	defer c.Close()
	defer raw.Close() // first: Close need not wait for the raw peer's answer
	st := c.Default()
	frame := func(typ byte, id, val uint32, payload []byte) []byte {
		b := make([]byte, headerLen, headerLen+len(payload))
		putHeader(b, typ, id, val)
		return append(b, payload...)
	}
	data := make([]byte, 1000)
	rand.Read(data)
	wire := append(frame(typeData, 0, 1000, data), frame(typeData, 0, 3, []byte("end"))...)
	// Cut inside the first header, inside the first payload, and inside
	// the second header.
	cuts := []int{4, headerLen + 300, headerLen + 1000 + 5, len(wire)}
	var got []byte
	prev := 0
	for _, cut := range cuts {
		if _, err := raw.Write(wire[prev:cut]); err != nil {
			t.Fatal(err)
		}
		prev = cut
		// Read what there is, then wait in Read until the deadline.
		for {
			st.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			buf := make([]byte, 64<<10)
			n, err := st.Read(buf)
			got = append(got, buf[:n]...)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if want := append(append([]byte{}, data...), "end"...); !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, want %d, or different bytes", len(got), len(want))
	}
	if c.Err() != nil {
		t.Fatalf("session ended: %v", c.Err())
	}
}

// TestSlowReaderDoesNotHoldFastOne: two streams carry bulk data at once;
// one reader is slow (it reads, but little and rarely, so it still takes
// turns reading the connection), the other reads as fast as it can. The
// fast one finishes, and the slow one never buffers more than its window.
func TestSlowReaderDoesNotHoldFastOne(t *testing.T) {
	transports(t, func(t *testing.T, pair func(testing.TB) (net.Conn, net.Conn)) {
		const window = 256 << 10
		c, s := sessionsOver(t, pair, Config{Window: window})
		slowW, _ := c.Open()
		slowR, _ := s.Accept(nil)
		fastW, _ := c.Open()
		fastR, _ := s.Accept(nil)
		go slowW.Write(make([]byte, 64<<20)) // ends with the session
		const fastSize = 32 << 20
		go func() { fastW.Write(make([]byte, fastSize)); fastW.CloseWrite() }()
		stop := make(chan struct{})
		slowDone := make(chan int)
		var maxBuf int
		go func() {
			buf := make([]byte, 1024)
			total := 0
			for {
				select {
				case <-stop:
					slowDone <- total
					return
				case <-time.After(5 * time.Millisecond):
				}
				n, err := slowR.Read(buf)
				total += n
				if err != nil {
					slowDone <- total
					return
				}
				slowR.mu.Lock()
				maxBuf = max(maxBuf, len(slowR.buf)-slowR.off)
				slowR.mu.Unlock()
			}
		}()
		done := make(chan error, 1)
		go func() {
			n, err := io.Copy(io.Discard, fastR)
			if err == nil && n != fastSize {
				err = fmt.Errorf("fast stream: %d bytes", n)
			}
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("the fast stream is held up by the slow one")
		}
		close(stop)
		total := <-slowDone
		if total == 0 {
			t.Error("the slow reader read nothing")
		}
		if maxBuf > window {
			t.Errorf("slow stream buffered %d bytes, window %d", maxBuf, window)
		}
	})
}

// TestReadingStreamServesWriters: while a Read on one stream reads the
// connection (waiting for bytes that do not come), a Write on another
// stream of the same side gets its WINDOW frames through it, and a
// peer's new stream reaches Accept.
func TestReadingStreamServesWriters(t *testing.T) {
	transports(t, func(t *testing.T, pair func(testing.TB) (net.Conn, net.Conn)) {
		c, s := sessionsOver(t, pair, Config{})
		idle := make(chan error, 1)
		go func() { _, err := c.Default().Read(make([]byte, 10)); idle <- err }()
		waitLeading(t, c.Default())
		w, _ := c.Open()
		r, _ := s.Accept(nil)
		const size = 8 << 20 // many windows
		go func() { w.Write(make([]byte, size)); w.CloseWrite() }()
		if n, err := io.Copy(io.Discard, r); err != nil || n != size {
			t.Fatalf("%d bytes, %v", n, err)
		}
		// The peer opens a stream; Accept here gets it.
		o, _ := s.Open()
		o.Write([]byte("hi"))
		acc, err := c.Accept(nil)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, 2)
		if _, err := io.ReadFull(acc, got); err != nil || string(got) != "hi" {
			t.Fatalf("%q, %v", got, err)
		}
		// And the waiting Read gets its bytes when they come.
		s.Default().Write([]byte("late"))
		if err := <-idle; err != nil {
			t.Fatal(err)
		}
	})
}

// TestManyReadersOneConnection: many streams whose Reads all wait at
// once, over TLS; every stream's bytes arrive whole.
func TestManyReadersOneConnection(t *testing.T) {
	c, s := sessionsOver(t, tlsPair, Config{})
	const streams, size = 40, 1 << 20
	var ws, rs []*Stream
	for range streams {
		w, err := c.Open()
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Accept(nil)
		if err != nil {
			t.Fatal(err)
		}
		ws, rs = append(ws, w), append(rs, r)
	}
	errc := make(chan error, streams)
	for i := range streams {
		go func() {
			h := sha256.New()
			n, err := io.Copy(h, rs[i])
			if err == nil && n != size {
				err = fmt.Errorf("stream %d: %d bytes", i, n)
			}
			want := sha256.Sum256(pattern(i, size))
			if err == nil && !bytes.Equal(h.Sum(nil), want[:]) {
				err = fmt.Errorf("stream %d: bytes differ", i)
			}
			errc <- err
		}()
	}
	for i := range streams {
		go func() { ws[i].Write(pattern(i, size)); ws[i].CloseWrite() }()
	}
	for range streams {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

func pattern(i, n int) []byte {
	b := make([]byte, n)
	for j := range b {
		b[j] = byte(i*131 + j*7 + j>>9)
	}
	return b
}

// noDeadlineConn cannot set read deadlines, so a Read cannot be
// interrupted inside it.
type noDeadlineConn struct{ net.Conn }

func (noDeadlineConn) SetReadDeadline(time.Time) error { return errors.New("not supported") }

// TestConnWithoutReadDeadline: over a connection whose read deadline
// does not work, Reads never read it themselves (nothing could get them
// out): the background goroutine reads for them, and Close still ends a
// waiting Read at once.
func TestConnWithoutReadDeadline(t *testing.T) {
	a, b := tcpPair(t)
	c, s := New(noDeadlineConn{a}, Config{Client: true}), New(noDeadlineConn{b}, Config{})
	defer c.Close()
	defer s.Close()
	if c.canLead {
		t.Fatal("canLead over a connection without read deadlines")
	}
	checkDefaultStream(t, c, s)
	st, _ := c.Open()
	s.Accept(nil)
	errc := make(chan error, 1)
	go func() { _, err := st.Read(make([]byte, 10)); errc <- err }()
	time.Sleep(20 * time.Millisecond)
	st.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Close did not end the Read")
	}
}

// TestQuietAfterReads: after Reads have been reading the connection
// themselves, and a Write waited for window, the session stays up while
// nobody reads or writes: the background goroutine takes over the
// reading (PINGs are answered, the idle timeout sees them).
func TestQuietAfterReads(t *testing.T) {
	c, s := sessionPair(t, Config{IdleTimeout: 300 * time.Millisecond})
	go s.Default().Write(make([]byte, 1<<20)) // waits for window twice
	if _, err := io.CopyN(io.Discard, c.Default(), 1<<20); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if c.Err() != nil || s.Err() != nil {
		t.Fatalf("quiet sessions ended: %v, %v", c.Err(), s.Err())
	}
	checkDefaultStream(t, c, s)
}

// TestReadersRacing: many streams at once over TLS, read with random
// buffer sizes and short read deadlines (each one that passes interrupts
// the Read that is reading the connection, or a waiting one), some
// streams closed by their reader half way: the others get every byte in
// order, nothing hangs, and the session is fine afterwards.
func TestReadersRacing(t *testing.T) {
	c, s := sessionsOver(t, tlsPair, Config{})
	const streams, size = 24, 256 << 10
	errc := make(chan error, 2*streams)
	for i := range streams {
		w, err := c.Open()
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Accept(nil)
		if err != nil {
			t.Fatal(err)
		}
		data := pattern(i, size)
		go func() {
			for off := 0; off < size; {
				n := min(1+(off*7+i*131)%40000, size-off)
				if _, err := w.Write(data[off : off+n]); err != nil {
					errc <- nil // the reader closed the stream
					return
				}
				off += n
			}
			w.CloseWrite()
			errc <- nil
		}()
		go func() {
			closeAt := -1
			if i%6 == 5 {
				closeAt = size / 2
			}
			var got []byte
			buf := make([]byte, 64<<10)
			for k := 0; ; k++ {
				if k%3 == 0 {
					r.SetReadDeadline(time.Now().Add(time.Duration(k%5) * time.Millisecond))
				} else {
					r.SetReadDeadline(time.Time{})
				}
				n, err := r.Read(buf[:1+(k*977+i)%len(buf)])
				got = append(got, buf[:n]...)
				if closeAt >= 0 && len(got) >= closeAt {
					r.Close()
					errc <- nil
					return
				}
				if errors.Is(err, os.ErrDeadlineExceeded) {
					continue
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					errc <- fmt.Errorf("stream %d: %v", i, err)
					return
				}
			}
			if !bytes.Equal(got, data) {
				errc <- fmt.Errorf("stream %d: %d bytes, or different ones", i, len(got))
				return
			}
			errc <- nil
		}()
	}
	timeout := time.After(30 * time.Second)
	for range 2 * streams {
		select {
		case err := <-errc:
			if err != nil {
				t.Error(err)
			}
		case <-timeout:
			t.Fatal("streams hang")
		}
	}
	checkDefaultStream(t, c, s)
}
