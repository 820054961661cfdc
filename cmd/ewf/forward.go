package main

import (
	"context"
	"errors"
	"flag"
	"strconv"
	"sync"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/forward"
)

// exposeFlag registers the repeatable --expose flag of ewf listen.
func exposeFlag(fs *flag.FlagSet) *[]forward.Service {
	var svcs []forward.Service
	fs.Func("expose", "offer a local service to peers: `[LABEL=][tcp:|udp:]HOST:PORT` (repeatable; then serve peers until interrupted, no stdin/stdout)",
		func(s string) error {
			svc, err := forward.ParseService(s)
			if err != nil {
				return err
			}
			svcs = append(svcs, svc)
			return nil
		})
	return &svcs
}

// forwardFlag registers the repeatable --forward flag of ewf connect.
func forwardFlag(fs *flag.FlagSet) *[]forward.Forward {
	var fws []forward.Forward
	fs.Func("forward", "listen on a local port and carry each connection to the peer's service: `[tcp:|udp:]HOST:PORT[=LABEL]` (repeatable; no stdin/stdout)",
		func(s string) error {
			f, err := forward.ParseForward(s)
			if err != nil {
				return err
			}
			fws = append(fws, f)
			return nil
		})
	return &fws
}

// checkForwards refuses UDP forwarding over TCP before any connecting.
func checkForwards(fws []forward.Forward, tr ewf.Transport) error {
	for _, f := range fws {
		if f.Network == "udp" && tr == ewf.TransportTCP {
			return usageError("--forward udp:" + f.Local + " needs --transport udp: " + forward.ErrUDPNeedsQUIC.Error())
		}
	}
	return nil
}

// serveExposed serves every peer that connects, each on its own, until
// ctx ends. actx bounds the wait for the first peer (--timeout). A peer's
// end is a "disconnected peer=... reason=... msg=..." line; the listener
// goes on.
func serveExposed(ctx, actx context.Context, l *ewf.Listener, svcs []forward.Service, peers *peers) error {
	for _, s := range svcs {
		label := s.Label
		if label == "" {
			label = "-"
		}
		status("expose", "label", label, "target", s.Addr, "proto", s.Network)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for first := true; ; first = false {
		wctx := ctx
		if first {
			wctx = actx
		}
		conn, err := l.AcceptContext(wctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted: a normal end for a server
			}
			return err
		}
		if !peers.admit(conn) { // --max-peers
			continue
		}
		connected(conn)
		ex := &forward.Exposer{Services: svcs, Events: status}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := ex.Serve(ctx, conn)
			peers.done(conn, err)
			if ctx.Err() == nil {
				status("disconnected", "peer", conn.Peer().String(), "reason", reasonWord(err), "msg", strconv.Quote(errText(err)))
			}
		}()
	}
}

// runForwards forwards until the connection ends (an error: the peer is
// gone) or the user interrupts (a normal end).
func runForwards(ctx context.Context, conn *ewf.Conn, fws []forward.Forward) error {
	f := &forward.Forwarder{Forwards: fws, Events: status}
	err := f.Run(ctx, conn)
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
