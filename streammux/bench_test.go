package streammux

import (
	"io"
	"net"
	"testing"
)

// BenchmarkStream: bytes through one stream of a session on a loopback
// TCP connection, with and without TLS, against the same bytes on the
// bare connection; the difference is the multiplexer's cost.
//
//	go test -run='^$' -bench=. -benchmem ./streammux/
func BenchmarkStream(b *testing.B) {
	const chunk = 64 << 10
	b.Run("bare-tcp", func(b *testing.B) {
		a, c := tcpPair(b)
		defer a.Close()
		defer c.Close()
		benchCopy(b, a, c, chunk)
	})
	b.Run("streammux", func(b *testing.B) {
		a, c := tcpPair(b)
		sa, sc := New(a, Config{Client: true, Window: 1 << 20}), New(c, Config{Window: 1 << 20})
		defer sa.Close()
		defer sc.Close()
		benchCopy(b, sa.Default(), sc.Default(), chunk)
	})
	// Over TLS, as ewf runs it.
	b.Run("bare-tls", func(b *testing.B) {
		a, c := tlsPair(b)
		defer a.Close()
		defer c.Close()
		benchCopy(b, a, c, chunk)
	})
	b.Run("streammux-tls", func(b *testing.B) {
		a, c := tlsPair(b)
		sa, sc := New(a, Config{Client: true, Window: 1 << 20}), New(c, Config{Window: 1 << 20})
		defer sa.Close()
		defer sc.Close()
		benchCopy(b, sa.Default(), sc.Default(), chunk)
	})
}

func benchCopy(b *testing.B, w io.Writer, r io.Reader, chunk int) {
	buf := make([]byte, chunk)
	b.SetBytes(int64(chunk))
	b.ReportAllocs()
	done := make(chan int64)
	go func() {
		// 256 KiB reads, as bench/throughput does.
		n, _ := io.CopyBuffer(struct{ io.Writer }{io.Discard}, io.LimitReader(r, int64(b.N)*int64(chunk)), make([]byte, 256<<10))
		done <- n
	}()
	b.ResetTimer()
	for range b.N {
		if _, err := w.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if n := <-done; n != int64(b.N)*int64(chunk) {
		b.Fatalf("read %d bytes", n)
	}
}

var _ net.Conn = (*Stream)(nil) // a Stream is a net.Conn
