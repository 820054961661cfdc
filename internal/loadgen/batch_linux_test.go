package loadgen

import (
	"net"
	"testing"
)

// TestBatchIODoesNotAllocate sends and receives batches between two
// loopback sockets and checks that neither direction allocates.
func TestBatchIODoesNotAllocate(t *testing.T) {
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	conn, err := net.DialUDP("udp4", nil, peer.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	b, err := newBatchIO(conn, 4)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	round := func() {
		for _, msg := range []string{"one", "two", "three"} {
			p := b.queue()
			*p = append((*p)[:0], msg...)
		}
		if failed := b.flush(); failed != 0 {
			t.Fatalf("%d datagrams refused", failed)
		}
		for range 3 {
			n, from, err := peer.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := peer.WriteToUDPAddrPort(buf[:n], from); err != nil {
				t.Fatal(err)
			}
		}
		got := 0
		for got < 3 {
			n, err := b.read()
			if err != nil {
				t.Fatal(err)
			}
			for i := range n {
				if want := []string{"one", "two", "three"}[got+i]; string(b.packet(i)) != want {
					t.Fatalf("datagram %d is %q, want %q", got+i, b.packet(i), want)
				}
			}
			got += n
		}
	}
	round()
	if n := testing.AllocsPerRun(50, round); n != 0 {
		t.Errorf("a batch round trip allocates %v times", n)
	}
}
