package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/client"
	"github.com/ewf-project/ewf/forward"
	"github.com/ewf-project/ewf/wire"
)

// common holds the flags every networked command shares.
type common struct {
	server    string
	serverTLS string
	serverCA  string
	identity  string
	punch     time.Duration
	relay     string
	udpWait   time.Duration
	idle      time.Duration
	keepalive time.Duration
	verbose   bool
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", os.Getenv("EWF_SERVER"), "ewfd rendezvous server `HOST:PORT`; several sharing one store comma-separated, or a DNS SRV name like _ewf._udp.example.org (default $EWF_SERVER)")
	fs.StringVar(&c.serverTLS, "server-tls", os.Getenv("EWF_SERVER_TLS"), "the server's X-over-TLS `HOST:PORT` (ewfd --tls-cert): REGISTER goes there, so its KEY is never in clear (default $EWF_SERVER_TLS)")
	fs.StringVar(&c.serverCA, "server-ca", os.Getenv("EWF_SERVER_CA"), "PEM `FILE` of the CA or self-signed certificate to trust for --server-tls instead of the system roots (default $EWF_SERVER_CA)")
	fs.StringVar(&c.identity, "identity", "", "identity `FILE` (default: ewf/identity.json in the user config directory)")
	fs.DurationVar(&c.punch, "punch-timeout", 10*time.Second, "give up hole punching towards one peer after this `duration`")
	fs.StringVar(&c.relay, "relay", string(ewf.RelayFallback),
		"use the server's TURN relay: `fallback` (when no direct path), always, or never")
	fs.DurationVar(&c.udpWait, "udp-wait", 2500*time.Millisecond,
		"wait this `duration` for the server's answer over UDP before going on over TCP only (UDP blocked: connections then go through the relay)")
	fs.DurationVar(&c.idle, "idle-timeout", 60*time.Second, "end a connection when nothing arrived from the peer for this `duration`")
	fs.DurationVar(&c.keepalive, "keepalive", 0, "refresh the bindings at the server every `duration`, which is also how soon a changed public address is noticed and connected peers are told (0: randomly every 20–25 s)")
	fs.BoolVar(&c.verbose, "v", false, "log debug detail to stderr")
}

func (c *common) check() error {
	if c.server == "" {
		return usageError("--server HOST:PORT is required (or set EWF_SERVER)")
	}
	switch ewf.RelayMode(c.relay) {
	case ewf.RelayFallback, ewf.RelayAlways, ewf.RelayNever:
	default:
		return usageError("--relay must be fallback, always or never")
	}
	if c.keepalive < 0 || (c.keepalive > 0 && c.keepalive < 500*time.Millisecond) {
		return usageError("--keepalive must be at least 500ms (or 0 for the default)")
	}
	if c.udpWait <= 0 {
		return usageError("--udp-wait must be positive")
	}
	return nil
}

func (c *common) config() ewf.Config {
	cfg := ewf.Config{Server: c.server, ServerTLS: c.serverTLS, ServerCA: c.serverCA, IdentityFile: c.identity,
		PunchTimeout: c.punch, Relay: ewf.RelayMode(c.relay), IdleTimeout: c.idle, UDPWait: c.udpWait}
	if c.verbose {
		cfg.Logger = debugLogger()
	}
	if k := c.keepalive; k > 0 {
		cfg.KeepaliveInterval = func() time.Duration { return k }
	}
	return cfg
}

func runID(args []string) error {
	fs := flag.NewFlagSet("id", flag.ContinueOnError)
	var c common
	c.register(fs)
	upgrade := fs.Bool("upgrade", false, "replace a legacy identity by a key-bound one (a new key pair and a new ID)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	path := c.identity
	if path == "" {
		p, err := client.DefaultIdentityPath()
		if err != nil {
			return err
		}
		path = p
	}
	var id *client.Identity
	var err error
	if *upgrade {
		var prev wire.ID
		id, prev, err = client.UpgradeIdentity(path)
		if err == nil && !prev.IsZero() {
			status("upgraded", "previous", prev.String(), "id", id.ID.String(), "auth", string(ewf.AuthKey))
		}
	} else {
		id, err = client.LoadIdentity(path)
	}
	if errors.Is(err, os.ErrNotExist) {
		id = client.NewIdentity()
		err = id.Save(path)
	}
	if err != nil {
		return err
	}
	if id.NeedsUpgrade() {
		status("warning", "msg", strconv.Quote("this legacy ID starts with the key-bound marker; peers cannot authenticate it: run \"ewf id --upgrade\""))
	}
	fmt.Println(id.ID)
	return nil
}

func runSTUN(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("stun", flag.ContinueOnError)
	var c common
	c.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	conn, err := client.DialUDP(ctx, c.server, client.Config{})
	if err != nil {
		return err
	}
	defer conn.Close()
	addr, err := conn.PublicAddress(ctx)
	if err != nil {
		return fmt.Errorf("%w: %w", ewf.ErrServerUnreachable, err)
	}
	fmt.Println(addr)
	return nil
}

func runQuery(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("query", flag.ContinueOnError)
	var c common
	c.register(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	peer, err := peerArg("query", pos)
	if err != nil {
		return err
	}
	conn, err := client.DialUDP(ctx, c.server, client.Config{})
	if err != nil {
		return err
	}
	defer conn.Close()
	addrs, err := conn.Query(ctx, peer)
	if err != nil {
		return queryErr(err)
	}
	for _, a := range addrs {
		fmt.Println(a.Transport, a.AddrPort)
	}
	return nil
}

// peerArg parses the one PEERID argument of cmd.
func peerArg(cmd string, pos []string) (ewf.ID, error) {
	if len(pos) != 1 {
		return ewf.ID{}, usageError(cmd + " takes one PEERID")
	}
	peer, err := ewf.ParseID(pos[0])
	if err != nil {
		return ewf.ID{}, usageError(err.Error())
	}
	return peer, nil
}

func queryErr(err error) error {
	switch {
	case errors.Is(err, client.ErrNotRegistered):
		return fmt.Errorf("%w: %w", ewf.ErrUnknownPeer, err)
	case errors.Is(err, client.ErrNotBound):
		return fmt.Errorf("%w: %w", ewf.ErrPeerOffline, err)
	case errors.Is(err, client.ErrTimeout):
		return fmt.Errorf("%w: %w", ewf.ErrServerUnreachable, err)
	}
	return err
}

func runListen(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("listen", flag.ContinueOnError)
	var c common
	c.register(fs)
	timeout := fs.Duration("timeout", 0, "give up if no peer connected within this `duration` (0: wait forever)")
	exposes := exposeFlag(fs)
	allowFile := fs.String("allow", "", "accept only the peer IDs listed in `FILE` (one per line, # comments)")
	maxPeers := fs.Int("max-peers", defaultMaxPeers, "serve at most `N` peers at once and refuse more (stdin/stdout serves one)")
	statusDir := fs.String("status-dir", defaultStatusDir(), "`directory` for this listener's status file, read by ewf status (\"\": none)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	if *maxPeers < 1 {
		return usageError("--max-peers must be at least 1")
	}
	cfg := c.config()
	if *allowFile != "" {
		list, err := ewf.LoadAllowList(*allowFile)
		if err != nil {
			return usageError(err.Error())
		}
		cfg.Allow = list.Allows
		legacy := 0
		for id := range list {
			if !client.KeyBound(id) {
				legacy++
			}
		}
		if legacy > 0 {
			status("warning", "msg", strconv.Quote(fmt.Sprintf("%d of the %d IDs in %s are legacy (not key-bound): "+
				"only the rendezvous server's secret proves them, so that server could pass as them", legacy, len(list), *allowFile)))
		}
	}
	cfg.OnRefused = func(peer ewf.ID, err error) {
		status("refused", "peer", peer.String(), "reason", reasonWord(err), "msg", strconv.Quote(err.Error()))
	}
	l, err := ewf.Listen(ctx, cfg)
	if err != nil {
		return err
	}
	defer l.Close()
	status("ready", readyKV(l.Node())...)
	peers := newPeers(l.Node(), *maxPeers, *statusDir)
	lctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() { peers.keepWriting(lctx) })

	actx := ctx
	if *timeout > 0 {
		var cancel context.CancelFunc
		actx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	if len(*exposes) > 0 {
		return serveExposed(ctx, actx, l, *exposes, peers)
	}

	// Accept every peer and report it; the first one gets stdin/stdout,
	// and while it has them every other one is refused as busy.
	accepted := make(chan *ewf.Conn)
	acceptErr := make(chan error, 1)
	var taken atomic.Bool
	wg.Go(func() {
		for {
			conn, err := l.AcceptContext(lctx)
			if err != nil {
				acceptErr <- err
				return
			}
			if taken.Load() {
				status("refused", "peer", conn.Peer().String(), "transport", string(conn.Transport()), "reason", "busy")
				wg.Go(func() { conn.Close() })
				continue
			}
			if !peers.admit(conn) {
				continue
			}
			taken.Store(true)
			select {
			case accepted <- conn:
			case <-lctx.Done():
				conn.Close()
				return
			}
		}
	})
	var conn *ewf.Conn
	select {
	case conn = <-accepted:
	case err := <-acceptErr:
		return err
	case <-actx.Done():
		return actx.Err()
	}
	connected(conn)
	err = pipe(conn, os.Stdin, os.Stdout)
	peers.done(conn, err)
	return err
}

func runConnect(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("connect", flag.ContinueOnError)
	var c common
	c.register(fs)
	transport := fs.String("transport", "udp", "`udp` (QUIC over a punched UDP path) or tcp (TLS over TCP simultaneous open)")
	timeout := fs.Duration("timeout", 30*time.Second, "give up on connecting after this `duration`")
	forwards := forwardFlag(fs)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	if err := checkForwards(*forwards, ewf.Transport(*transport)); err != nil {
		return err
	}
	peer, err := peerArg("connect", pos)
	if err != nil {
		return err
	}
	cfg := c.config()
	cfg.Transport = ewf.Transport(*transport)
	cfg.EnableTCP = cfg.Transport == ewf.TransportTCP
	dctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	n, err := ewf.Open(dctx, cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	status("ready", readyKV(n)...)
	stop := progress("punching")
	conn, err := n.Dial(dctx, peer, "")
	stop()
	if err != nil {
		return err
	}
	connected(conn)
	watchPath(conn, ctx.Done(), nil)
	if len(*forwards) > 0 {
		return runForwards(ctx, conn, *forwards)
	}
	return pipe(conn, os.Stdin, os.Stdout)
}

// watchPath reports, once, a relayed connection's move to a direct path
// ("path peer=… path=direct remote=… rtt_ms=…"), and calls moved after
// it; it stops watching when stop is closed.
func watchPath(c *ewf.Conn, stop <-chan struct{}, moved func()) {
	if c.Path() != ewf.PathRelay {
		return
	}
	go func() {
		select {
		case <-c.Moved():
		case <-stop:
			return
		}
		status("path", "peer", c.Peer().String(), "path", string(c.Path()), "remote", c.RemoteAddr().String(),
			"rtt_ms", strconv.FormatInt(c.RTT().Milliseconds(), 10))
		if moved != nil {
			moved()
		}
	}()
}

func connected(c *ewf.Conn) {
	kv := []string{"peer", c.Peer().String(), "transport", string(c.Transport()), "path", string(c.Path())}
	if r, ok := c.Relay(); ok {
		via, _ := c.RelayTransport()
		kv = append(kv, "relay", r.String(), "relay_transport", string(via))
	}
	kv = append(kv, "remote", c.RemoteAddr().String(), "rtt_ms", strconv.FormatInt(c.RTT().Milliseconds(), 10),
		"auth", string(c.Auth()))
	status("connected", kv...)
}

// reasonWord is the stable word of an "error reason=" line.
func reasonWord(err error) string {
	var ue usageError
	switch {
	case errors.As(err, &ue):
		return "usage"
	case errors.Is(err, ewf.ErrServerUnreachable), errors.Is(err, client.ErrTimeout):
		return "server-unreachable"
	case errors.Is(err, ewf.ErrUnknownPeer):
		return "unknown-peer"
	case errors.Is(err, ewf.ErrPeerOffline):
		return "peer-offline"
	case errors.Is(err, ewf.ErrNoDirectPath):
		return "no-direct-path"
	case errors.Is(err, ewf.ErrPeerAuth):
		return "peer-auth"
	case errors.Is(err, client.ErrCorruptIdentity), errors.Is(err, client.ErrMustUpgrade):
		return "identity"
	case errors.Is(err, ewf.ErrIdleTimeout):
		return "idle-timeout"
	case errors.Is(err, ewf.ErrPeerClosed):
		return "peer-closed"
	case errors.Is(err, forward.ErrUDPNeedsQUIC):
		return "unsupported"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "interrupted"
	}
	return "failed"
}
