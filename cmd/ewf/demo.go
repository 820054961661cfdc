package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/server"
)

// runDemo shows the whole system on loopback: a rendezvous server, a
// listener and a dialer, each step printed as it happens. It is the
// README's "see it work in one command".
func runDemo(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	verbose := fs.Bool("v", false, "log debug detail to stderr")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "ewf-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	step := func(format string, a ...any) { fmt.Printf("==> "+format+"\n", a...) }

	d, err := server.Start(server.Config{Listen: []string{"127.0.0.1:0"}, DataDir: filepath.Join(dir, "ewfd")})
	if err != nil {
		return err
	}
	defer d.Close()
	addr := d.Addrs()[0].String()
	step("ewfd is up on %s (UDP and TCP), data in %s", addr, filepath.Join(dir, "ewfd"))

	cfg := func(name string) ewf.Config {
		c := ewf.Config{Server: addr, IdentityFile: filepath.Join(dir, name+".json")}
		if *verbose {
			c.Logger = debugLogger()
		}
		return c
	}
	alice, err := ewf.Listen(ctx, cfg("alice"))
	if err != nil {
		return err
	}
	defer alice.Close()
	tcpAddr, _ := alice.Node().PublicTCPAddr()
	step("alice registered as %s and bound udp %s, tcp %s; she waits for peers", alice.ID(), alice.Node().PublicAddr(), tcpAddr)

	for _, tr := range []ewf.Transport{ewf.TransportUDP, ewf.TransportTCP} {
		c := cfg("bob")
		c.Transport = tr
		start := time.Now()
		step("bob dials alice's ID over %s: register, STUN, BIND, then QUERY with introduction", tr)
		bob, err := ewf.Dial(ctx, c, alice.ID())
		if err != nil {
			return err
		}
		conn, err := alice.AcceptContext(ctx)
		if err != nil {
			bob.Close()
			return err
		}
		step("punched through in %v: bob sees alice at %s, alice sees bob (%s) at %s, rtt %v",
			time.Since(start).Round(time.Millisecond), bob.RemoteAddr(), conn.Peer(), conn.RemoteAddr(), bob.RTT().Round(time.Microsecond))
		if err := exchange(bob, conn, "hello alice, this is bob", "hi bob, alice here"); err != nil {
			bob.Close()
			conn.Close()
			return err
		}
		step("messages went both ways over %s; the server carried none of them", tr)
		bob.Close()
		conn.Close()
	}
	step("done")
	return nil
}

// exchange sends one message each way and checks both arrive whole.
func exchange(a, b *ewf.Conn, fromA, fromB string) error {
	errc := make(chan error, 2)
	send := func(c *ewf.Conn, msg string) {
		_, err := io.WriteString(c, msg)
		if err == nil {
			err = c.CloseWrite()
		}
		errc <- err
	}
	go send(a, fromA)
	go send(b, fromB)
	gotB, errB := io.ReadAll(b)
	gotA, errA := io.ReadAll(a)
	for range 2 {
		if err := <-errc; err != nil {
			return err
		}
	}
	if errA != nil || errB != nil {
		return fmt.Errorf("demo: read: %v %v", errA, errB)
	}
	fmt.Printf("    bob   -> alice: %q\n    alice -> bob:   %q\n", gotB, gotA)
	if !bytes.Equal(gotB, []byte(fromA)) || !bytes.Equal(gotA, []byte(fromB)) {
		return fmt.Errorf("demo: messages arrived changed")
	}
	return nil
}
