package server

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/ewf-project/ewf/server/relay"
	"github.com/ewf-project/ewf/store"
	"github.com/ewf-project/ewf/store/bolt"
	redisstore "github.com/ewf-project/ewf/store/redis"
	"github.com/ewf-project/ewf/wire"
)

// Daemon is a running ewfd: the store, the Server, its UDP and TCP sockets,
// the optional metrics endpoint and the periodic sweep.
type Daemon struct {
	srv     *Server
	st      store.Store
	ownsSt  bool
	log     *slog.Logger
	met     *daemonMetrics
	addrs   []netip.AddrPort
	alt     *rfc5780 // nil unless Config.Alternate
	udp     []*udpSocket
	tcp     []*net.TCPListener
	tlsLn   []*net.TCPListener // X over TLS (tls.go)
	http    *http.Server
	httpLn  net.Listener
	relay   *relay.Relay
	quit    chan struct{}
	wg      sync.WaitGroup // readers, accept loops, connections, writers
	bgWG    sync.WaitGroup // sweep and HTTP
	closeMu sync.Mutex
	done    bool

	connMu  sync.Mutex
	closing bool
	conns   map[*tcpConn]struct{}
	perIP   map[[16]byte]int
}

// sweepInterval is how often expired bindings and REGISTER transactions
// are removed from memory.
const sweepInterval = 5 * time.Second

type daemonMetrics struct {
	tcpConns   prometheus.Gauge
	tcpRefused [2]prometheus.Counter // total cap, per-IP cap
	tcpClosed  [numCloses]prometheus.Counter
}

// Start opens the store (unless cfg.Store is set), listens on every
// address of cfg.Listen over UDP and TCP, and serves until Close.
func Start(cfg Config) (*Daemon, error) {
	cfg, err := cfg.populate()
	if err != nil {
		return nil, err
	}
	d := &Daemon{
		st:    cfg.Store,
		log:   cfg.Logger,
		quit:  make(chan struct{}),
		conns: make(map[*tcpConn]struct{}),
		perIP: make(map[[16]byte]int),
	}
	if err := d.start(cfg); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *Daemon) start(cfg Config) error {
	if d.st == nil && cfg.StoreURL != "" {
		rs, err := redisstore.Open(cfg.StoreURL, redisstore.Options{
			MaxIdle: cfg.RegistrationTTL,
			Logger:  cfg.Logger,
			Now:     cfg.Now,
		})
		if err != nil {
			return err
		}
		d.st, d.ownsSt = rs, true
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		dur, err := rs.Durability(ctx)
		cancel()
		if err != nil {
			d.log.Warn("shared store: could not read Redis persistence settings", "err", err)
		} else {
			lv := slog.LevelInfo
			if !dur.AOF && dur.Wait == 0 {
				lv = slog.LevelWarn
			}
			d.log.Log(context.Background(), lv, "shared store: what an acknowledged REGISTER survives", "durability", dur.String())
		}
	}
	if d.st == nil {
		if cfg.DataDir == "" {
			return fmt.Errorf("%w: DataDir is empty and no Store given", errConfig)
		}
		every, resolution := expiryPace(cfg.RegistrationTTL)
		bs, err := bolt.Open(cfg.DataDir, bolt.Options{
			MaxRegistrations: cfg.MaxRegistrations,
			MaxIdle:          cfg.RegistrationTTL,
			ExpireInterval:   every,
			TouchResolution:  resolution,
			Logger:           cfg.Logger,
			Now:              cfg.Now,
		})
		if err != nil {
			return err
		}
		d.st, d.ownsSt = bs, true
	}
	if cfg.Relay.Embedded != nil {
		if err := d.startRelay(&cfg); err != nil {
			return err
		}
	}
	srv, err := New(d.st, cfg)
	if err != nil {
		return err
	}
	d.srv = srv
	if err := d.registerMetrics(cfg.Registry); err != nil {
		return err
	}
	if srv.cl != nil {
		if err := srv.StartShared(); err != nil {
			return err
		}
	}
	if len(cfg.Listen)*cfg.UDPReaders > maxUDPRepliers {
		return fmt.Errorf("%w: %d listen addresses × %d UDP readers exceed %d sockets",
			errConfig, len(cfg.Listen), cfg.UDPReaders, maxUDPRepliers)
	}
	for _, a := range cfg.Listen {
		if err := d.listen(a, cfg.UDPReaders); err != nil {
			return err
		}
	}
	if cfg.Alternate != "" {
		if err := d.listenAlternate(cfg.Listen, cfg.Alternate); err != nil {
			return err
		}
	}
	if cfg.MetricsAddr != "" {
		if err := d.serveMetrics(cfg.MetricsAddr, cfg.Registry); err != nil {
			return err
		}
	}
	for _, u := range d.udp {
		h := d.srv.NewHandler(wire.TransportUDP, u)
		if u.alt != nil {
			h.alt, h.altI, h.altJ, h.altIP4 = u.alt, u.altI, u.altJ, u.altIP4
		}
		d.wg.Add(1)
		go d.serveUDP(u, h)
	}
	for _, ln := range d.tcp {
		d.wg.Add(1)
		go d.serveTCP(ln, nil)
	}
	if err := d.startTLS(&cfg); err != nil {
		return err
	}
	d.bgWG.Add(1)
	go d.sweep()
	metrics := "off"
	if ma, ok := d.MetricsAddr(); ok {
		metrics = ma.String()
	}
	alternate := "off"
	if d.alt != nil {
		alternate = d.alt.other(0, 0).String()
	}
	d.log.Info("ewfd serving", "listen", d.addrs, "alternate", alternate, "udp_sockets", len(d.udp),
		"registrations", d.st.Len(), "data", dataName(cfg), "metrics", metrics, "shared_name", srv.Name())
	return nil
}

func (d *Daemon) registerMetrics(reg *prometheus.Registry) error {
	m := &daemonMetrics{
		tcpConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ewfd_tcp_connections", Help: "Open TCP connections.",
		}),
	}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ewfd_tcp_refused_total", Help: "TCP connections closed at once because a cap was reached.",
	}, []string{"cap"})
	closed := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ewfd_tcp_closed_total", Help: "TCP connections ended, by reason (idle: no whole message within -tcp-idle).",
	}, []string{"reason"})
	for _, c := range []prometheus.Collector{m.tcpConns, refused, closed,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("server: metrics: %w", err)
		}
	}
	m.tcpRefused[0] = refused.WithLabelValues("total")
	m.tcpRefused[1] = refused.WithLabelValues("per_ip")
	for i := range m.tcpClosed {
		m.tcpClosed[i] = closed.WithLabelValues(closeNames[i])
	}
	d.met = m
	return nil
}

// reusePort lets several sockets share one UDP port, one reader each; the
// kernel spreads clients over them by their address.
func reusePort(_, _ string, c syscall.RawConn) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	}); err != nil {
		return err
	}
	return serr
}

// listen opens readers UDP sockets and one TCP listener on addr, all on one
// port. With port 0 it picks a port free for both.
func (d *Daemon) listen(addr string, readers int) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("server: listen address %q: %w", addr, err)
	}
	ctx := context.Background()
	var lastErr error
	for attempt := 0; attempt < 10; attempt++ {
		lc := net.ListenConfig{Control: reusePort}
		pc, err := lc.ListenPacket(ctx, "udp", addr)
		if err != nil {
			return fmt.Errorf("server: listen udp %s: %w", addr, err)
		}
		first := pc.(*net.UDPConn)
		bound := first.LocalAddr().(*net.UDPAddr).AddrPort()
		p := strconv.Itoa(int(bound.Port()))
		socks := []*net.UDPConn{first}
		var ln net.Listener
		for i := 1; i < readers && err == nil; i++ {
			if pc, err = lc.ListenPacket(ctx, "udp", net.JoinHostPort(host, p)); err == nil {
				socks = append(socks, pc.(*net.UDPConn))
			}
		}
		if err == nil {
			ln, err = (&net.ListenConfig{}).Listen(ctx, "tcp", net.JoinHostPort(host, p))
		}
		if err != nil {
			for _, s := range socks {
				s.Close()
			}
			lastErr = err
			if port == "0" && errors.Is(err, syscall.EADDRINUSE) {
				continue // the TCP side of that port was taken: try another
			}
			return fmt.Errorf("server: listen %s: %w", addr, err)
		}
		for _, s := range socks {
			// Bigger buffers absorb bursts between batches; the kernel caps
			// them at net.core.[rw]mem_max, which is fine.
			_ = s.SetReadBuffer(4 << 20)
			_ = s.SetWriteBuffer(4 << 20)
			d.udp = append(d.udp, &udpSocket{c: s})
		}
		d.tcp = append(d.tcp, ln.(*net.TCPListener))
		d.addrs = append(d.addrs, bound)
		return nil
	}
	return fmt.Errorf("server: listen %s: no port free for both UDP and TCP: %w", addr, lastErr)
}

func (d *Daemon) serveMetrics(addr string, reg *prometheus.Registry) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("server: metrics listener: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	d.httpLn = ln
	d.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	d.bgWG.Add(1)
	go func() {
		defer d.bgWG.Done()
		if err := d.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server", "err", err)
		}
	}()
	return nil
}

func (d *Daemon) sweep() {
	defer d.bgWG.Done()
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			d.srv.Sweep(d.srv.now())
		case <-d.quit:
			return
		}
	}
}

// Addrs returns the addresses served, one per Listen entry, each on UDP and
// TCP; a port 0 in the Config is resolved here.
func (d *Daemon) Addrs() []netip.AddrPort { return append([]netip.AddrPort(nil), d.addrs...) }

// MetricsAddr returns the address of the metrics endpoint, if any.
func (d *Daemon) MetricsAddr() (netip.AddrPort, bool) {
	if d.httpLn == nil {
		return netip.AddrPort{}, false
	}
	return netip.MustParseAddrPort(d.httpLn.Addr().String()), true
}

// startRelay starts the embedded TURN relay and fills in the offer: the
// shared secret (random unless configured: nobody else needs it) and the
// URLs (one UDP and one TCP per relay IP unless configured).
func (d *Daemon) startRelay(cfg *Config) error {
	rc := *cfg.Relay.Embedded
	if len(cfg.Relay.Secret) == 0 {
		cfg.Relay.Secret = make([]byte, 32)
		rand.Read(cfg.Relay.Secret)
	}
	st := d.st
	rc.Secret = cfg.Relay.Secret
	rc.Registered = func(id [16]byte) bool { _, ok := st.Lookup(id); return ok }
	rc.Registry = cfg.Registry
	if rc.Logger == nil {
		rc.Logger = cfg.Logger
	}
	r, err := relay.Start(rc)
	if err != nil {
		return err
	}
	d.relay = r
	if len(cfg.Relay.URLs) == 0 {
		port := strconv.Itoa(int(r.Addr().Port()))
		var udp, tcp []string
		for _, ip := range rc.RelayIPs {
			hp := net.JoinHostPort(ip.Unmap().String(), port)
			udp = append(udp, "turn:"+hp+"?transport=udp")
			tcp = append(tcp, "turn:"+hp+"?transport=tcp")
		}
		cfg.Relay.URLs = append(udp, tcp...)
	}
	return nil
}

// Relay returns the embedded TURN relay, nil if none runs.
func (d *Daemon) Relay() *relay.Relay { return d.relay }

// Server returns the protocol core.
func (d *Daemon) Server() *Server { return d.srv }

// Close stops the daemon gracefully: no new TCP connections; the store is
// closed (if the Daemon opened it) while the sockets are still open, so
// registrations being committed are answered; then the sockets close and
// every goroutine is joined. It returns the store's close error.
func (d *Daemon) Close() error {
	d.closeMu.Lock()
	defer d.closeMu.Unlock()
	if d.done {
		return nil
	}
	d.done = true
	for _, ln := range d.tcp {
		ln.Close()
	}
	for _, ln := range d.tlsLn {
		ln.Close()
	}
	var err error
	if d.srv != nil {
		d.srv.StopShared() // its workers use the store
	}
	if d.ownsSt && d.st != nil {
		err = d.st.Close()
	}
	for _, u := range d.udp {
		u.c.Close()
	}
	d.connMu.Lock()
	d.closing = true
	for t := range d.conns {
		t.c.Close()
	}
	d.connMu.Unlock()
	close(d.quit)
	d.wg.Wait()
	if d.http != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = d.http.Shutdown(ctx)
		cancel()
		_ = d.http.Close()
	}
	d.bgWG.Wait()
	if d.relay != nil {
		_ = d.relay.Close()
	}
	d.log.Info("ewfd stopped")
	return err
}

// dataName says where registrations are kept, for the start-up log; a
// password in a store URL is not shown.
func dataName(cfg Config) string {
	if cfg.Store != nil {
		return "(caller's store)"
	}
	if cfg.StoreURL != "" {
		u := cfg.StoreURL
		if scheme, rest, ok := strings.Cut(u, "://"); ok {
			if at := strings.LastIndex(rest, "@"); at >= 0 {
				u = scheme + "://…@" + rest[at+1:]
			}
		}
		return u
	}
	return cfg.DataDir
}

// expiryPace is how often the store expires idle registrations and the
// granularity of their last-use times, for a registration lifetime of ttl:
// the store's hourly defaults for the usual lifetimes of days, and a
// fraction of ttl for short ones, so that a registration of
// -registration-ttl 10s expires after about 10 s, not after more than an
// hour of slack (registrations expire up to interval + resolution late).
func expiryPace(ttl time.Duration) (interval, resolution time.Duration) {
	clamp := func(d time.Duration) time.Duration { return min(max(d, time.Second), time.Hour) }
	return clamp(ttl / 4), clamp(ttl / 8)
}
