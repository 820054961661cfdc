package udpio_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/ipv4"

	"github.com/ewf-project/ewf/internal/udpio"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func listen(t testing.TB, network, addr string) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Skipf("cannot listen on %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newMsgs(n int) []udpio.Message {
	ms := make([]udpio.Message, n)
	for i := range ms {
		ms[i].Buf = make([]byte, 1600)
	}
	return ms
}

// TestBatchRoundTrip sends a batch from one socket to another and back,
// over IPv4, IPv6 and a dual-stack socket talking to an IPv4 peer (whose
// address must come back unmapped).
func TestBatchRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name                     string
		netA, addrA, netB, addrB string
	}{
		{"ipv4", "udp4", "127.0.0.1:0", "udp4", "127.0.0.1:0"},
		{"ipv6", "udp6", "[::1]:0", "udp6", "[::1]:0"},
		{"dual-stack to ipv4", "udp", "[::]:0", "udp4", "127.0.0.1:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := listen(t, tc.netA, tc.addrA)
			b := listen(t, tc.netB, tc.addrB)
			aPort := a.LocalAddr().(*net.UDPAddr).AddrPort().Port()
			bAddr := b.LocalAddr().(*net.UDPAddr).AddrPort()
			aAddr := netip.AddrPortFrom(bAddr.Addr(), aPort) // how b reaches a

			w, err := udpio.NewWriter(a, 8)
			if err != nil {
				t.Fatal(err)
			}
			out := make([]udpio.Message, 20) // more than one batch
			for i := range out {
				p := []byte(fmt.Sprintf("datagram %02d", i))
				out[i] = udpio.Message{Buf: p, N: len(p), Addr: bAddr}
			}
			if skipped, err := w.WriteBatch(out); skipped != 0 || err != nil {
				t.Fatalf("WriteBatch: %d skipped, %v", skipped, err)
			}

			r, err := udpio.NewReader(b, 8)
			if err != nil {
				t.Fatal(err)
			}
			in := newMsgs(8)
			got := 0
			b.SetReadDeadline(time.Now().Add(10 * time.Second))
			for got < len(out) {
				n, err := r.ReadBatch(in)
				if err != nil {
					t.Fatalf("ReadBatch after %d: %v", got, err)
				}
				for i := range n {
					want := fmt.Sprintf("datagram %02d", got)
					if string(in[i].Buf[:in[i].N]) != want {
						t.Fatalf("got %q, want %q", in[i].Buf[:in[i].N], want)
					}
					if in[i].Addr != aAddr {
						t.Fatalf("source %v, want %v", in[i].Addr, aAddr)
					}
					got++
				}
			}
		})
	}
}

func TestUndeliverableDestinationIsSkipped(t *testing.T) {
	a := listen(t, "udp4", "127.0.0.1:0")
	b := listen(t, "udp4", "127.0.0.1:0")
	w, err := udpio.NewWriter(a, 4)
	if err != nil {
		t.Fatal(err)
	}
	bAddr := b.LocalAddr().(*net.UDPAddr).AddrPort()
	ms := []udpio.Message{
		{Buf: []byte("one"), N: 3, Addr: bAddr},
		{Buf: []byte("v6"), N: 2, Addr: netip.MustParseAddrPort("[::1]:9")}, // an IPv4 socket cannot
		{Buf: []byte("two"), N: 3, Addr: bAddr},
	}
	skipped, err := w.WriteBatch(ms)
	if skipped != 1 || err == nil {
		t.Fatalf("skipped %d, err %v; want 1 and an error", skipped, err)
	}
	buf := make([]byte, 16)
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	for _, want := range []string{"one", "two"} {
		n, err := b.Read(buf)
		if err != nil || string(buf[:n]) != want {
			t.Fatalf("got %q %v, want %q", buf[:n], err, want)
		}
	}
}

func TestReadAfterCloseReturnsErrClosed(t *testing.T) {
	c := listen(t, "udp4", "127.0.0.1:0")
	r, err := udpio.NewReader(c, 4)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	go func() {
		_, err := r.ReadBatch(newMsgs(4))
		done <- err
	}()
	time.Sleep(10 * time.Millisecond) // let it block; the test holds either way
	c.Close()
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("ReadBatch on a closed socket: %v, want net.ErrClosed", err)
	}
}

// TestBatchIODoesNotAllocate locks in why this package exists.
func TestBatchIODoesNotAllocate(t *testing.T) {
	a := listen(t, "udp", "[::]:0")
	b := listen(t, "udp4", "127.0.0.1:0")
	w, _ := udpio.NewWriter(b, 8)
	r, _ := udpio.NewReader(a, 8)
	aAddr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), a.LocalAddr().(*net.UDPAddr).AddrPort().Port())
	out := make([]udpio.Message, 8)
	for i := range out {
		out[i] = udpio.Message{Buf: bytes.Repeat([]byte{byte(i)}, 40), N: 40, Addr: aAddr}
	}
	in := newMsgs(8)
	allocs := testing.AllocsPerRun(200, func() {
		if _, err := w.WriteBatch(out); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(out); {
			n, err := r.ReadBatch(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch of 8 out and 8 in, want 0", allocs)
	}
}

// BenchmarkReadBatch compares this package with x/net's ipv4.PacketConn
// ReadBatch on the same traffic:
//
//	go test -run '^$' -bench ReadBatch -benchmem ./internal/udpio
func BenchmarkReadBatch(b *testing.B) {
	for _, impl := range []string{"udpio", "x/net"} {
		b.Run(impl, func(b *testing.B) {
			rc := listen(b, "udp4", "127.0.0.1:0")
			sc := listen(b, "udp4", "127.0.0.1:0")
			dst := rc.LocalAddr().(*net.UDPAddr).AddrPort()
			w, _ := udpio.NewWriter(sc, 32)
			out := make([]udpio.Message, 32)
			for i := range out {
				out[i] = udpio.Message{Buf: make([]byte, 40), N: 40, Addr: dst}
			}
			r, _ := udpio.NewReader(rc, 32)
			in := newMsgs(32)
			xc := ipv4.NewPacketConn(rc)
			xin := make([]ipv4.Message, 32)
			for i := range xin {
				xin[i].Buffers = [][]byte{make([]byte, 1600)}
			}
			b.ReportAllocs()
			for b.Loop() {
				w.WriteBatch(out)
				for got := 0; got < len(out); {
					var n int
					var err error
					if impl == "udpio" {
						n, err = r.ReadBatch(in)
					} else {
						n, err = xc.ReadBatch(xin, 0)
					}
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(out)), "ns/datagram")
		})
	}
}
