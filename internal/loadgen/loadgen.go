// Package loadgen is ewf's load generator: it floods a server with STUN
// Binding, BIND-refresh, QUERY or REGISTER requests from many UDP sockets
// for a bounded time, validates every response, and reports requests per
// second and latency percentiles. Operators use it (as `ewf bench` and
// cmd/ewf-bench) to size a server; bench/ uses it to compare ewfd with
// coturn.
//
// The generator is closed-loop: each socket keeps Config.Depth requests in
// flight and sends the next one only when one is answered or times out.
// Throughput is then what the server sustains, and latency is that of a
// server with Sockets×Depth requests queued, not of a flooded buffer. One
// goroutine drives each socket; its counters and latency histogram are its
// own and are added up when it is done, so nothing is shared and nothing is
// allocated per request.
//
// Every response is checked, and counted as ok, bad or late; a request
// without a response within Config.Timeout is lost:
//
//   - STUN: a well-formed Binding success response (pion/stun) to a request
//     in flight on that socket, with a correct FINGERPRINT if it has one,
//     whose XOR-MAPPED-ADDRESS is the socket's own local address. The
//     generator must therefore reach the server without NAT (loopback).
//   - X (bind, query, register): wire.Message Decode and Check pass, the
//     method and transaction ID are those of a request in flight, the class
//     is success; a QUERY success carries exactly the UDP address the
//     queried socket bound.
//
// For bind and query, each socket first registers a random ID, learns its
// address with STUN and BINDs it, before the clock starts.
package loadgen

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// ErrBadResponses is returned, with a complete Result, when the server sent
// at least one invalid response. Tools exit non-zero on it.
var ErrBadResponses = errors.New("loadgen: server sent invalid responses")

// setupParallel bounds how many sockets run their setup at once, so that a
// server's per-source rate limits see a trickle rather than a burst.
const setupParallel = 16

// Run performs one measurement and returns its result. It returns when
// Config.Warmup+Duration have passed and every request is answered or
// timed out, or as soon as ctx is done; then the Result holds what was
// counted so far and the error is ctx's. A result with bad responses comes
// with ErrBadResponses. Errors before the clock starts (config, sockets,
// setup) come with a zero Result.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return Result{}, err
	}
	network := "udp4"
	if cfg.Server.Addr().Is6() {
		network = "udp6"
	}
	var laddr *net.UDPAddr
	if cfg.Local.IsValid() {
		laddr = &net.UDPAddr{IP: cfg.Local.AsSlice()}
	}
	raddr := net.UDPAddrFromAddrPort(cfg.Server)

	workers := make([]*worker, 0, cfg.Sockets)
	closeAll := func() {
		for _, w := range workers {
			w.conn.Close()
		}
	}
	defer closeAll()
	for i := range cfg.Sockets {
		// A connected socket: the kernel drops datagrams from anyone but
		// the server, and reads and writes need no address.
		conn, err := net.DialUDP(network, laddr, raddr)
		if err != nil {
			return Result{}, fmt.Errorf("loadgen: socket %d: %w", i, err)
		}
		var seed [32]byte
		_, _ = rand.Read(seed[:])
		w := newWorker(&cfg, i, conn, seed)
		workers = append(workers, w)
		if cfg.Batch {
			if w.bio, err = newBatchIO(conn, cfg.Depth); err != nil {
				return Result{}, fmt.Errorf("loadgen: batched I/O: %w", err)
			}
		}
	}

	// Cancellation closes the sockets: every blocked read returns at once.
	stop := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		select {
		case <-ctx.Done():
			closeAll()
		case <-stop:
		}
	})
	defer func() {
		close(stop)
		watch.Wait()
	}()

	setupStart := time.Now()
	if cfg.Mode == ModeBind || cfg.Mode == ModeQuery || cfg.Mode == ModeIntro {
		if err := setupAll(workers, cfg.Targets, cfg.OnSetup); err != nil {
			if ctx.Err() != nil {
				return Result{}, ctx.Err()
			}
			return Result{}, err
		}
	}
	setupTime := time.Since(setupStart)

	cpu0 := processCPU()
	t := timing{base: time.Now(), measureFrom: cfg.Warmup, stopAt: cfg.Warmup + cfg.Duration}
	var wg sync.WaitGroup
	for _, w := range workers {
		wg.Go(func() { w.run(t) })
	}
	wg.Wait()
	wall := time.Since(t.base)
	cpu := processCPU().sub(cpu0)

	var total counts
	for _, w := range workers {
		total.add(&w.c)
	}
	res := newResult(&cfg, &total, min(wall, t.stopAt)-t.measureFrom, wall, cpu)
	res.SetupTime = setupTime
	switch {
	case ctx.Err() != nil:
		return res, ctx.Err()
	case res.Bad > 0:
		return res, ErrBadResponses
	}
	return res, nil
}

// setupAll runs every worker's setup, setupParallel at a time, and hands
// the query workers the list of everyone's registration.
func setupAll(workers []*worker, targets []Target, onSetup func([]Target)) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, setupParallel)
	)
	for _, w := range workers {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := w.setup(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("socket %d (%v): %w", w.index, w.local, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("loadgen: setup failed on %d of %d sockets, first: %w", len(errs), len(workers), errs[0])
	}
	peers := make([]peer, len(workers))
	own := make([]Target, len(workers))
	for i, w := range workers {
		peers[i] = w.self
		own[i] = Target{ID: w.self.id, Addr: w.self.addr}
	}
	if onSetup != nil {
		onSetup(own)
	}
	external := len(targets) > 0
	if external {
		peers = make([]peer, len(targets))
		for i, t := range targets {
			peers[i] = peer{id: t.ID, addr: t.Addr}
		}
	}
	for _, w := range workers {
		w.peers, w.external = peers, external
		w.next = (w.index + 1) % len(peers)
	}
	return nil
}
