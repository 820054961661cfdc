package ewf

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/net/ipv4"
)

// TestPathSwitchReadBatch: quic-go's reader gets every queued datagram of
// a path switch in order, as many per ReadBatch as it has slots, each
// with its control messages and the relayed remote address as source; an
// error of the relay socket behind a batch comes with the next call, not
// instead of the datagrams before it; a read deadline ends a wait.
func TestPathSwitchReadBatch(t *testing.T) {
	remote := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 3478}
	ps := &pathSwitch{
		in:    make(chan *packet, switchQueue),
		kick:  make(chan struct{}, 1),
		done:  make(chan struct{}),
		heard: make(chan struct{}),
	}
	ps.remote.Store(remote)
	ms := func(n int) []ipv4.Message {
		m := make([]ipv4.Message, n)
		for i := range m {
			m[i].Buffers = [][]byte{make([]byte, 1452)}
			m[i].OOB = make([]byte, packetOOB)
		}
		return m
	}
	for i := range 5 {
		ps.fromDirect(bytes.Repeat([]byte{byte(i)}, 100+i), []byte{0xc0, byte(i)})
	}
	relayErr := errors.New("relay socket gone")
	p := packetPool.Get().(*packet)
	p.n, p.nn, p.from, p.err = 0, 0, nil, relayErr // as pump queues it
	ps.in <- p

	select {
	case <-ps.heard:
	default:
		t.Fatal("a diverted datagram did not mark the direct path as heard")
	}
	next := 0
	for _, slots := range []int{2, 8} {
		m := ms(slots)
		n, err := ps.ReadBatch(m, 0)
		if err != nil {
			t.Fatalf("ReadBatch(%d slots): %v with datagrams queued", slots, err)
		}
		if want := min(slots, 5-next); n != want {
			t.Fatalf("ReadBatch(%d slots) = %d, want %d", slots, n, want)
		}
		for _, msg := range m[:n] {
			if msg.N != 100+next || msg.Buffers[0][0] != byte(next) || msg.Buffers[0][msg.N-1] != byte(next) {
				t.Errorf("datagram %d: %d bytes starting %d", next, msg.N, msg.Buffers[0][0])
			}
			if msg.NN != 2 || msg.OOB[1] != byte(next) {
				t.Errorf("datagram %d: control messages %x", next, msg.OOB[:msg.NN])
			}
			if msg.Addr != remote {
				t.Errorf("datagram %d from %v, want the relayed remote %v", next, msg.Addr, remote)
			}
			next++
		}
	}
	if next != 5 {
		t.Fatalf("%d of 5 datagrams read", next)
	}
	if n, err := ps.ReadBatch(ms(8), 0); n != 0 || !errors.Is(err, relayErr) {
		t.Fatalf("after the datagrams: %d, %v; want the relay socket's error", n, err)
	}
	ps.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	start := time.Now()
	if _, err := ps.ReadBatch(ms(8), 0); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("empty queue with a deadline: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("deadline of 20 ms ended the read after %v", d)
	}
	ps.SetReadDeadline(time.Time{})
	ps.Close()
	if _, err := ps.ReadBatch(ms(8), 0); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("closed: %v", err)
	}
}
