package ewf_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/wire"
)

// flipProxy relays UDP between one client and ewfd and, while flip is
// set, changes one bit of every BIND success on its way back: a forger on
// the path who does not have the KEY.
type flipProxy struct {
	conn    *net.UDPConn
	flip    atomic.Bool
	flipped atomic.Int64
}

func startFlipProxy(t *testing.T, srv netip.AddrPort) *flipProxy {
	t.Helper()
	c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	p := &flipProxy{conn: c}
	done := make(chan struct{})
	go func() {
		defer close(done)
		var client netip.AddrPort
		b := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(b)
			if err != nil {
				return
			}
			if from != srv {
				client = from
				c.WriteToUDPAddrPort(b[:n], srv)
				continue
			}
			if p.flip.Load() && n >= 4 && b[0] == 0xc1 && b[1] == 0x03 {
				b[n-1] ^= 0x01
				p.flipped.Add(1)
			}
			if client.IsValid() {
				c.WriteToUDPAddrPort(b[:n], client)
			}
		}
	}()
	t.Cleanup(func() { c.Close(); <-done })
	return p
}

// TestForgedAnswerIsRejectedThroughRealListeners: against a real ewfd,
// a BIND success with one bit changed on the way fails the MAC check and
// is treated as no answer (the client retransmits and times out with
// ErrBadResponse); the same BIND goes through once the path is honest.
func TestForgedAnswerIsRejectedThroughRealListeners(t *testing.T) {
	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	p := startFlipProxy(t, d.Addrs()[0])
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.DialUDP(ctx, p.conn.LocalAddr().String(), client.Config{RTO: 50 * time.Millisecond, MaxAttempts: 3, LastWait: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The client's Server is the proxy: answers come from there.
	id := wire.ID{0xf0, 0x0d}
	key, err := c.Register(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	public, err := c.PublicAddress(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// public is the proxy's address: what the server sees.
	addr := wire.Address{Transport: wire.TransportUDP, AddrPort: public}

	p.flip.Store(true)
	err = c.Bind(ctx, id, key, addr)
	if !errors.Is(err, client.ErrTimeout) || !errors.Is(err, client.ErrBadResponse) {
		t.Fatalf("Bind with forged answers = %v, want a timeout matching ErrBadResponse", err)
	}
	if p.flipped.Load() < 3 {
		t.Fatalf("only %d answers were forged: the server did not answer every attempt?", p.flipped.Load())
	}
	p.flip.Store(false)
	if err := c.Bind(ctx, id, key, addr); err != nil {
		t.Fatalf("Bind on an honest path: %v", err)
	}
}
