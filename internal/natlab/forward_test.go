//go:build linux

package natlab

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestForwardAcrossNATs is the README's forwarding example in the lab: a
// machine at home behind a carrier NAT (CGNAT) exposes a TCP service on its
// loopback (standing in for sshd), and a laptop behind a hotel's NAT
// (address-restricted) reaches it through `ewf connect --forward`, over
// QUIC and over TLS/TCP: ten connections at once, each checked by SHA-256.
func TestForwardAcrossNATs(t *testing.T) {
	spec := Spec{
		Routers: []RouterSpec{{Name: "carrier", NAT: CGNAT}, {Name: "hotel", NAT: Restricted}},
		Hosts:   []HostSpec{{Name: "home", Router: "carrier"}, {Name: "laptop", Router: "hotel"}},
	}
	ewfd, ewf := BuildBinaries(t)
	lab := New(t, spec)
	srv, err := lab.Start(ServerHost, ewfd, "-listen", matrixServer, "-data", t.TempDir(), "-metrics", matrixMetrics, "-log-level", "warn")
	if err != nil {
		t.Fatal(err)
	}
	if err := waitMetrics(lab, 20*time.Second); err != nil {
		t.Fatalf("ewfd did not come up: %v\n%s", err, strings.Join(srv.Lines(), "\n"))
	}

	// The service, on every address of home's namespace (so also on its
	// loopback): it reads a connection to its end and sends it back.
	ln, err := lab.ListenTCP("home", 8022)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				if b, err := io.ReadAll(c); err == nil {
					c.Write(b)
				}
			}()
		}
	}()

	dir := t.TempDir()
	for _, tr := range []string{"udp", "tcp"} {
		t.Run(tr, func(t *testing.T) {
			l, err := lab.Start("home", ewf, "listen", "--server", matrixServer, "--identity", filepath.Join(dir, "home.json"),
				"--expose", "ssh=tcp:127.0.0.1:8022")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Kill()
			ready, err := l.WaitLine("ready", 30*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			c, err := lab.Start("laptop", ewf, "connect", "--server", matrixServer, "--identity", filepath.Join(dir, "laptop.json"),
				"--transport", tr, "--forward", "127.0.0.1:2222=ssh", ready["id"])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Kill()
			got, err := c.WaitLine("connected", 60*time.Second)
			if err != nil {
				t.Fatalf("connector: %v\n--- listener:\n%s", err, strings.Join(l.Lines(), "\n"))
			}
			if got["transport"] != tr || got["path"] != "direct" {
				t.Errorf("connected line: %v", got)
			}
			fw, err := c.WaitLine("forward", 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			local, err := netip.ParseAddrPort(fw["local"])
			if err != nil {
				t.Fatalf("forward line: %v", fw)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			errc := make(chan error, 10)
			for i := range 10 {
				go func() { errc <- forwardedTransfer(ctx, lab, local, i) }()
			}
			for range 10 {
				if err := <-errc; err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// forwardedTransfer sends 1 MiB through the laptop's forward and checks
// that the same bytes come back.
func forwardedTransfer(ctx context.Context, lab *Lab, local netip.AddrPort, i int) error {
	conn, err := lab.DialTCP(ctx, "laptop", 0, local)
	if err != nil {
		return err
	}
	defer conn.Close()
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	go func() {
		conn.Write(data)
		conn.CloseWrite()
	}()
	back, err := io.ReadAll(conn)
	if err != nil {
		return fmt.Errorf("connection %d: %d bytes back: %w", i, len(back), err)
	}
	if a, b := sha256.Sum256(back), sha256.Sum256(data); !bytes.Equal(a[:], b[:]) {
		return fmt.Errorf("connection %d: %d bytes back, SHA-256 mismatch", i, len(back))
	}
	return nil
}
