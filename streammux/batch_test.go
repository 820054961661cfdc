package streammux

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// nothingArrives checks that c has nothing to read for a while.
func nothingArrives(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	defer c.SetReadDeadline(time.Time{})
	var b [1]byte
	if n, err := c.Read(b[:]); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d bytes (%v), want nothing yet", n, err)
	}
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBatchConn: in a batch a short write waits for the next write, with
// which it leaves in order; a long one is never held; EndBatch sends what
// is held; outside a batch everything goes at once.
func TestBatchConn(t *testing.T) {
	a, peer := tcpPair(t)
	defer peer.Close()
	b := NewBatchConn(a, nil)
	defer b.Close()

	b.Write([]byte("now"))
	if got := readN(t, peer, 3); string(got) != "now" {
		t.Fatalf("outside a batch: %q", got)
	}

	b.BeginBatch()
	b.Write([]byte("short"))
	nothingArrives(t, peer)
	long := make([]byte, 4*batchHold)
	rand.Read(long)
	b.Write(long)
	if got := readN(t, peer, 5+len(long)); string(got[:5]) != "short" || !bytes.Equal(got[5:], long) {
		t.Fatal("held write and the next one: wrong bytes or order")
	}
	b.Write(long) // not held
	if got := readN(t, peer, len(long)); !bytes.Equal(got, long) {
		t.Fatal("long write in a batch")
	}
	b.Write([]byte("tail"))
	nothingArrives(t, peer)
	if err := b.EndBatch(); err != nil {
		t.Fatal(err)
	}
	if got := readN(t, peer, 4); string(got) != "tail" {
		t.Fatalf("after EndBatch: %q", got)
	}

	// A failed send is reported, then by every later write.
	peer.Close()
	a.Close()
	b.BeginBatch()
	b.Write([]byte("lost"))
	if err := b.EndBatch(); err == nil {
		t.Error("EndBatch on a closed connection: no error")
	}
	if _, err := b.Write([]byte("x")); err == nil {
		t.Error("Write after a failed send: no error")
	}
}

// TestWriteSendsShortFrameFirst: over a Batcher, a Write of several
// frames sends its remainder first, so that it can leave with the first
// full frame; the bytes are in order.
func TestWriteSendsShortFrameFirst(t *testing.T) {
	a, raw := tcpPair(t)
	bc := NewBatchConn(a, nil)
	c := New(bc, Config{Client: true, Batcher: bc})
	defer c.Close()
	defer raw.Close() // first: Close need not wait for the raw peer's answer
	data := make([]byte, 64<<10)
	rand.Read(data)
	go c.Default().Write(data)
	var lens []int
	var got []byte
	for len(got) < len(data) {
		h := readN(t, raw, headerLen)
		if h[0] != typeData || binary.BigEndian.Uint32(h[1:5]) != 0 {
			t.Fatalf("frame % x, want DATA on stream 0", h)
		}
		n := int(binary.BigEndian.Uint32(h[5:9]))
		lens = append(lens, n)
		got = append(got, readN(t, raw, n)...)
	}
	if want := fmt.Sprint([]int{len(data) % MaxPayload, MaxPayload, MaxPayload, MaxPayload, MaxPayload}); fmt.Sprint(lens) != want {
		t.Errorf("frame lengths %v, want %s", lens, want)
	}
	if !bytes.Equal(got, data) {
		t.Error("bytes differ")
	}
}

// batchedTLSPair is tlsPair with a BatchConn beneath TLS on both ends,
// as ewf runs it.
func batchedTLSPair(t testing.TB) (net.Conn, net.Conn) {
	return tlsPairOver(t, func(c net.Conn) net.Conn { return NewBatchConn(c, nil) })
}

// TestBatchedSessions: sessions over TLS over BatchConns carry many
// streams of Writes of every size, every byte in order; nothing stays
// held once a Write returned (each stream's last bytes arrive with no
// write after them).
func TestBatchedSessions(t *testing.T) {
	a, b := batchedTLSPair(t)
	c := New(a, Config{Client: true, Batcher: a.(*tls.Conn).NetConn().(Batcher)})
	s := New(b, Config{Batcher: b.(*tls.Conn).NetConn().(Batcher)})
	defer c.Close()
	defer s.Close()
	sizes := []int{1, 35, MaxPayload - 1, MaxPayload, MaxPayload + 1, 64 << 10, 100_000, 1 << 20}
	errc := make(chan error, len(sizes))
	for i, size := range sizes {
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
			// Two Writes, the stream left open: the second's bytes
			// must arrive without anything written after them.
			w.Write(data[:size/2])
			w.Write(data[size/2:])
		}()
		go func() {
			got := make([]byte, size)
			r.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, err := io.ReadFull(r, got)
			if err == nil && !bytes.Equal(got, data) {
				err = fmt.Errorf("size %d: bytes differ", size)
			}
			errc <- err
		}()
	}
	for range sizes {
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}
}

// TestBatchConnDoesNotAllocate: sending a held write with the next one
// (writev) allocates nothing, once per frame as it is.
func TestBatchConnDoesNotAllocate(t *testing.T) {
	a, peer := tcpPair(t)
	defer peer.Close()
	b := NewBatchConn(a, nil)
	defer b.Close()
	go io.Copy(io.Discard, peer)
	short, long := make([]byte, 45), make([]byte, 16384)
	allocs := testing.AllocsPerRun(100, func() {
		b.BeginBatch()
		b.Write(short)
		b.Write(long)
		b.EndBatch()
	})
	if allocs > 0 {
		t.Errorf("%.1f allocations per batch", allocs)
	}
}
