// Package redis is the store.Shared backend on Redis or Redis Cluster: the
// registrations, bindings and server-to-server messages of several ewfd
// sharing one state, so that they can be scaled out and one can be lost.
//
// What lives where in Redis (IDs as their 16 raw bytes):
//
//	ewf:r:<id>    the KEY (16 bytes), TTL = registration idle time (+ touch resolution)
//	ewf:b0:{<id>} the UDP binding, TTL = binding TTL: addr(16) port(2) flags(1) via(1) server-name
//	ewf:b1:{<id>} the TCP binding, likewise (one hash tag: one cluster node)
//	ewf:s:<name>  the sharded pub/sub channel (SPUBLISH/SSUBSCRIBE) of server <name>
//
// Writes. A Register is queued and written by one of a few committer
// goroutines, which send whatever has queued up as one pipeline of
// SET NX PX (many registrations per round trip); done(nil) runs only after
// Redis answered OK. With Options.Wait, the pipeline ends with WAIT and the
// batch is acknowledged only if that many replicas confirmed it. Bindings
// and touches are queued without blocking and written in pipelines by their
// own goroutines; a full queue drops them (the client refreshes anyway).
//
// Reads and staleness. Lookup reads a local cache of ID→KEY filled by
// Register and Fetch. A KEY never changes for an ID, except when the
// registration expires (RegistrationTTL without a BIND) and the same ID is
// registered again; a cache entry is trusted for at most KeyCacheTTL after
// it was read from Redis, so a KEY the cache returns is at most KeyCacheTTL
// stale, and only in that expired-then-re-registered case. Bindings are not
// cached beyond the server's own: Bindings reads Redis each time.
//
// Losing Redis. A failed round trip marks the store down: Register then
// fails at once with store.ErrUnavailable (the server answers "try again
// later"), Fetch, Bindings and Send likewise, and bindings are not shared. A
// prober PINGs every ProbeInterval and clears the mark when Redis answers;
// go-redis reconnects its pool and resubscribes by itself. Nothing is ever
// acknowledged that Redis did not confirm.
package redis

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/ewf-project/ewf/store"
)

// Options configures Open. Zero values are the defaults named.
type Options struct {
	// MaxIdle is how long a registration lives without a BIND. Zero means
	// store.DefaultMaxIdle.
	MaxIdle time.Duration

	// KeyCacheTTL is how long a KEY read from Redis is trusted by Lookup:
	// the staleness bound of the cache. Zero means 5 minutes.
	KeyCacheTTL time.Duration

	// TouchResolution: a BIND extends its registration's TTL in Redis at
	// most once per TouchResolution per server, and the TTL written is
	// MaxIdle+TouchResolution, so a registration expires up to that late,
	// never early. Zero means one hour.
	TouchResolution time.Duration

	// QueueSize bounds each write queue (registrations, bindings,
	// touches). Zero means 8192.
	QueueSize int

	// Committers is how many goroutines write registrations, each with one
	// pipeline in flight. Zero means 4.
	Committers int

	// Timeout bounds each Redis round trip and connection attempt. Zero
	// means one second.
	Timeout time.Duration

	// Wait, if positive, makes every batch of registrations wait until
	// that many replicas acknowledged it (WAIT) before any is acknowledged
	// to clients; a batch that times out is answered "try again later".
	// Single-node Redis only. The URL parameter wait=N sets it too.
	Wait int

	// ProbeInterval is how often a store marked down PINGs Redis. Zero
	// means 500 ms.
	ProbeInterval time.Duration

	// Now is the clock. Nil means time.Now.
	Now func() time.Time

	// Logger receives outages, recoveries and the durability report. Nil
	// discards.
	Logger *slog.Logger
}

func (o *Options) populate() {
	if o.MaxIdle <= 0 {
		o.MaxIdle = store.DefaultMaxIdle
	}
	if o.KeyCacheTTL <= 0 {
		o.KeyCacheTTL = 5 * time.Minute
	}
	if o.TouchResolution <= 0 {
		o.TouchResolution = time.Hour
	}
	if o.QueueSize <= 0 {
		o.QueueSize = 8192
	}
	if o.Committers <= 0 {
		o.Committers = 4
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = 500 * time.Millisecond
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Key prefixes and the channel prefix; see the package comment.
const (
	prefixReg     = "ewf:r:"
	prefixBinding = "ewf:b"
	prefixServer  = "ewf:s:"
)

// maxBatch bounds one pipeline.
const maxBatch = 512

// poolSize is the connections per Redis node: enough for the server's
// cluster workers (64, each waiting one round trip at a time), the
// committers and the writers, so that they do not queue for a connection.
const poolSize = 96

// Store is the Redis-backed store.Shared.
type Store struct {
	c       goredis.UniversalClient
	cluster bool
	opts    Options
	log     *slog.Logger

	cache    [cacheShards]cacheShard
	clock    atomic.Int64 // unix seconds, for Lookup, which gets no now
	down     atomic.Bool
	queued   atomic.Int64 // registrations queued or being written
	lastFail atomic.Int64 // unix ns of the last binding not shared (LastFailure)

	closeMu sync.RWMutex
	closed  bool

	regQ   chan pending
	bindQ  chan bindWrite
	touchQ chan store.ID
	quit   chan struct{}
	wg     sync.WaitGroup // committers
	bgWG   sync.WaitGroup // binding and touch writers, prober, listeners

	subMu sync.Mutex
	subs  []*goredis.PubSub

	stats struct {
		committed, conflicts, failures, busy, bindsDropped, bindsWritten, touches atomic.Uint64
	}
}

var _ store.Shared = (*Store)(nil)

type pending struct {
	id   store.ID
	key  store.Key
	done func(error)
}

type bindWrite struct {
	id  store.ID
	tr  int
	b   store.Binding
	ttl time.Duration
}

const cacheShards = 64

type cacheShard struct {
	mu sync.RWMutex
	m  map[store.ID]cacheEntry
	_  [40]byte
}

type cacheEntry struct {
	key     store.Key
	until   int64 // unix seconds: trusted until then
	touched int64 // unix seconds of the last touch written to Redis
}

// Open connects to Redis at rawURL: redis://[user:pass@]host:port/db (or
// rediss:// for TLS) for one node, redis+cluster://host:port,host:port,...
// for Redis Cluster. Query parameters: wait=N (see Options.Wait). It fails
// if Redis does not answer a PING.
func Open(rawURL string, opts Options) (*Store, error) {
	opts.populate()
	c, cluster, err := newClient(rawURL, &opts)
	if err != nil {
		return nil, err
	}
	if cluster && opts.Wait > 0 {
		c.Close()
		return nil, fmt.Errorf("store/redis: wait=%d: WAIT is for single-node Redis; a cluster acknowledges per master", opts.Wait)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*opts.Timeout)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		c.Close()
		return nil, fmt.Errorf("store/redis: %s: %w: %w", redactURL(rawURL), store.ErrUnavailable, err)
	}
	s := &Store{
		c:       c,
		cluster: cluster,
		opts:    opts,
		log:     opts.Logger,
		regQ:    make(chan pending, opts.QueueSize),
		bindQ:   make(chan bindWrite, opts.QueueSize),
		touchQ:  make(chan store.ID, opts.QueueSize),
		quit:    make(chan struct{}),
	}
	for i := range s.cache {
		s.cache[i].m = make(map[store.ID]cacheEntry)
	}
	s.clock.Store(opts.Now().Unix())
	for range opts.Committers {
		s.wg.Add(1)
		go s.commit()
	}
	s.bgWG.Add(3)
	go s.writeBindings()
	go s.writeTouches()
	go s.housekeep()
	return s, nil
}

// newClient parses the URL into a go-redis client.
func newClient(rawURL string, o *Options) (goredis.UniversalClient, bool, error) {
	const clusterScheme = "redis+cluster://"
	if rest, ok := strings.CutPrefix(rawURL, clusterScheme); ok {
		hosts, query, _ := strings.Cut(rest, "?")
		if err := parseQuery(query, o); err != nil {
			return nil, false, err
		}
		var addrs []string
		for _, h := range strings.Split(hosts, ",") {
			if h = strings.TrimSpace(strings.TrimSuffix(h, "/")); h != "" {
				addrs = append(addrs, h)
			}
		}
		if len(addrs) == 0 {
			return nil, false, fmt.Errorf("store/redis: %q: no cluster node given", rawURL)
		}
		return goredis.NewClusterClient(&goredis.ClusterOptions{
			Addrs:        addrs,
			DialTimeout:  o.Timeout,
			ReadTimeout:  o.Timeout,
			WriteTimeout: o.Timeout,
			MaxRetries:   -1, // the client retransmits; a retry here only delays "try later"
			PoolSize:     poolSize,
		}), true, nil
	}
	base, query, _ := strings.Cut(rawURL, "?")
	if err := parseQuery(query, o); err != nil {
		return nil, false, err
	}
	ro, err := goredis.ParseURL(base)
	if err != nil {
		return nil, false, fmt.Errorf("store/redis: %s: %w", redactURL(rawURL), err)
	}
	ro.DialTimeout, ro.ReadTimeout, ro.WriteTimeout = o.Timeout, o.Timeout, o.Timeout
	ro.MaxRetries = -1
	ro.PoolSize = poolSize
	return goredis.NewClient(ro), false, nil
}

func parseQuery(q string, o *Options) error {
	if q == "" {
		return nil
	}
	for _, kv := range strings.Split(q, "&") {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "wait":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return fmt.Errorf("store/redis: wait=%q: want a number of replicas", v)
			}
			o.Wait = n
		default:
			return fmt.Errorf("store/redis: unknown URL parameter %q (known: wait)", k)
		}
	}
	return nil
}

// redactURL hides a password in logs and errors.
func redactURL(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return u
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		rest = "…@" + rest[at+1:]
	}
	return scheme + "://" + rest
}

func regKey(id store.ID) string { return prefixReg + string(id[:]) }

// bindKey puts the ID in a hash tag, so that in a cluster both transports'
// bindings of one ID live on one node and Bindings reads them in one round
// trip to one node. (An ID whose first byte is '}' makes an empty tag; its
// two keys may then live on two nodes, which costs only speed.)
func bindKey(id store.ID, tr int) string {
	return prefixBinding + strconv.Itoa(tr) + ":{" + string(id[:]) + "}"
}

func (s *Store) shard(id *store.ID) *cacheShard {
	// IDs are random: their first byte spreads them well enough.
	return &s.cache[id[0]&(cacheShards-1)]
}

func (s *Store) remember(id store.ID, key store.Key) {
	sh := s.shard(&id)
	until := s.opts.Now().Add(s.opts.KeyCacheTTL).Unix()
	sh.mu.Lock()
	e := sh.m[id]
	if e.key != key {
		e.touched = 0
	}
	e.key, e.until = key, until
	sh.m[id] = e
	sh.mu.Unlock()
}

func (s *Store) forget(id store.ID) {
	sh := s.shard(&id)
	sh.mu.Lock()
	delete(sh.m, id)
	sh.mu.Unlock()
}

// Register queues id→key; done(nil) runs once Redis acknowledged the SET.
func (s *Store) Register(id store.ID, key store.Key, now time.Time, done func(error)) {
	s.closeMu.RLock()
	defer s.closeMu.RUnlock()
	switch {
	case s.closed:
		done(store.ErrClosed)
		return
	case s.down.Load():
		done(store.ErrUnavailable)
		return
	}
	select {
	case s.regQ <- pending{id: id, key: key, done: done}:
		s.queued.Add(1)
	default:
		s.stats.busy.Add(1)
		done(store.ErrBusy)
	}
}

// Lookup returns id's KEY from the local cache if it was read from Redis
// less than KeyCacheTTL ago. It does not allocate.
func (s *Store) Lookup(id store.ID) (store.Key, bool) {
	sh := s.shard(&id)
	sh.mu.RLock()
	e, ok := sh.m[id]
	sh.mu.RUnlock()
	if !ok || e.until < s.clock.Load() {
		return store.Key{}, false
	}
	return e.key, true
}

// Touch extends id's TTL in Redis, at most once per TouchResolution.
func (s *Store) Touch(id store.ID, now time.Time) {
	sh := s.shard(&id)
	t := now.Unix()
	sh.mu.Lock()
	e, ok := sh.m[id]
	write := ok && t-e.touched >= int64(s.opts.TouchResolution/time.Second)
	if write {
		e.touched = t
		sh.m[id] = e // an existing key: no allocation
	}
	sh.mu.Unlock()
	if write {
		select {
		case s.touchQ <- id:
		default: // next BIND after TouchResolution tries again
			sh.mu.Lock()
			if e, ok := sh.m[id]; ok {
				e.touched = 0
				sh.m[id] = e
			}
			sh.mu.Unlock()
		}
	}
}

// Expire does nothing: Redis expires registrations by their TTL.
func (s *Store) Expire(time.Time) (int, error) { return 0, nil }

// Len is the number of registrations this server holds in its cache plus
// those it is writing: not the cluster's total (see DBSize).
func (s *Store) Len() int {
	n := int(s.queued.Load())
	for i := range s.cache {
		sh := &s.cache[i]
		sh.mu.RLock()
		n += len(sh.m)
		sh.mu.RUnlock()
	}
	return n
}

// Fetch reads id's KEY from Redis and refreshes the cache.
func (s *Store) Fetch(ctx context.Context, id store.ID) (store.Key, bool, error) {
	if s.down.Load() {
		return store.Key{}, false, store.ErrUnavailable
	}
	v, err := s.c.Get(ctx, regKey(id)).Bytes()
	switch {
	case errors.Is(err, goredis.Nil):
		s.forget(id)
		return store.Key{}, false, nil
	case err != nil:
		return store.Key{}, false, s.failed(err)
	case len(v) != len(store.Key{}):
		return store.Key{}, false, fmt.Errorf("store/redis: %w: registration value of %d bytes", store.ErrUnavailable, len(v))
	}
	key := store.Key(v)
	s.remember(id, key)
	return key, true, nil
}

// PutBinding queues a binding write; see store.Shared.
func (s *Store) PutBinding(id store.ID, tr int, b store.Binding, ttl time.Duration) bool {
	if s.down.Load() {
		s.dropped(1)
		return false
	}
	select {
	case s.bindQ <- bindWrite{id: id, tr: tr, b: b, ttl: ttl}:
		return true
	default:
		s.dropped(1)
		return false
	}
}

func (s *Store) dropped(n int) {
	s.stats.bindsDropped.Add(uint64(n))
	s.lastFail.Store(s.opts.Now().UnixNano())
}

// LastFailure is the last time a binding was not shared; see store.Shared.
func (s *Store) LastFailure() time.Time {
	if n := s.lastFail.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Bindings reads id's shared bindings and its registration in one
// pipeline (in a cluster, the nodes are asked in parallel).
func (s *Store) Bindings(ctx context.Context, id store.ID) ([2]store.Binding, [2]bool, error) {
	var b [2]store.Binding
	var ok [2]bool
	if s.down.Load() {
		return b, ok, store.ErrUnavailable
	}
	p := s.c.Pipeline()
	cmds := [2]*goredis.StringCmd{p.Get(ctx, bindKey(id, 0)), p.Get(ctx, bindKey(id, 1))}
	reg := p.Get(ctx, regKey(id))
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, goredis.Nil) {
		return b, ok, s.failed(err)
	}
	switch v, err := reg.Bytes(); {
	case errors.Is(err, goredis.Nil):
		s.forget(id)
	case err == nil && len(v) == len(store.Key{}):
		s.remember(id, store.Key(v))
	}
	for tr, c := range cmds {
		v, err := c.Bytes()
		if err != nil {
			continue
		}
		b[tr], ok[tr] = decodeBinding(v)
	}
	return b, ok, nil
}

// Send publishes msg on the channel of server to.
func (s *Store) Send(ctx context.Context, to string, msg []byte) (bool, error) {
	if s.down.Load() {
		return false, store.ErrUnavailable
	}
	n, err := s.c.SPublish(ctx, prefixServer+to, msg).Result()
	if err != nil {
		return false, s.failed(err)
	}
	return n > 0, nil
}

// Listen subscribes to server name's channel; see store.Shared.
func (s *Store) Listen(name string, fn func(msg []byte)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*s.opts.Timeout)
	defer cancel()
	ps := s.c.SSubscribe(ctx, prefixServer+name)
	if _, err := ps.Receive(ctx); err != nil {
		ps.Close()
		return fmt.Errorf("store/redis: subscribe: %w: %w", store.ErrUnavailable, err)
	}
	s.subMu.Lock()
	s.subs = append(s.subs, ps)
	s.subMu.Unlock()
	s.bgWG.Add(1)
	go func() {
		defer s.bgWG.Done()
		// Channel reconnects and resubscribes after an outage; it is
		// closed when ps is closed (Close).
		for m := range ps.Channel(goredis.WithChannelSize(1024)) {
			fn([]byte(m.Payload))
		}
	}()
	return nil
}

// failed classifies err: a Redis error reply (other than OOM) and a lost
// connection both become ErrUnavailable; a lost connection marks the store
// down until the prober gets an answer.
func (s *Store) failed(err error) error {
	var rerr goredis.Error
	if errors.As(err, &rerr) {
		if strings.HasPrefix(rerr.Error(), "OOM") {
			return fmt.Errorf("%w: %w", store.ErrFull, err)
		}
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	if errors.Is(err, context.Canceled) {
		return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	s.lastFail.Store(s.opts.Now().UnixNano())
	if s.down.CompareAndSwap(false, true) {
		s.log.Error("redis unreachable: REGISTER answered \"try again later\", bindings not shared until it is back", "err", err)
	}
	return fmt.Errorf("%w: %w", store.ErrUnavailable, err)
}

// commit writes queued registrations in pipelines until Close, then drains
// the queue.
func (s *Store) commit() {
	defer s.wg.Done()
	batch := make([]pending, 0, maxBatch)
	cmds := make([]*goredis.BoolCmd, 0, maxBatch)
	for {
		var first pending
		select {
		case first = <-s.regQ:
		case <-s.quit:
			// Close holds closeMu: nothing more is queued. Drain.
			for {
				select {
				case p := <-s.regQ:
					s.commitBatch(append(batch[:0], p), cmds)
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
	fill:
		for len(batch) < maxBatch {
			select {
			case p := <-s.regQ:
				batch = append(batch, p)
			default:
				break fill
			}
		}
		s.commitBatch(batch, cmds)
	}
}

func (s *Store) commitBatch(batch []pending, cmds []*goredis.BoolCmd) {
	defer s.queued.Add(-int64(len(batch)))
	if s.down.Load() {
		for _, p := range batch {
			p.done(store.ErrUnavailable)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.opts.Timeout)
	defer cancel()
	ttl := s.opts.MaxIdle + s.opts.TouchResolution
	p := s.c.Pipeline()
	cmds = cmds[:0]
	for _, r := range batch {
		cmds = append(cmds, p.SetNX(ctx, regKey(r.id), r.key[:], ttl))
	}
	var wait *goredis.IntCmd
	if s.opts.Wait > 0 {
		wait = goredis.NewIntCmd(ctx, "wait", s.opts.Wait, s.opts.Timeout.Milliseconds())
		_ = p.Process(ctx, wait)
	}
	_, err := p.Exec(ctx)
	if err != nil && !isReplyError(err) {
		err = s.failed(err)
		for _, r := range batch {
			r.done(err)
		}
		s.stats.failures.Add(uint64(len(batch)))
		return
	}
	if wait != nil {
		if n, werr := wait.Result(); werr != nil || n < int64(s.opts.Wait) {
			// On the master, not on enough replicas: not acknowledged. A
			// retransmission will find the ID taken (see OPERATIONS.md).
			e := fmt.Errorf("%w: WAIT %d: %d replicas acknowledged (%v)", store.ErrUnavailable, s.opts.Wait, n, werr)
			for _, r := range batch {
				r.done(e)
			}
			s.stats.failures.Add(uint64(len(batch)))
			return
		}
	}
	for i, r := range batch {
		ok, err := cmds[i].Result()
		switch {
		case err != nil:
			s.stats.failures.Add(1)
			r.done(s.failed(err))
		case !ok:
			s.stats.conflicts.Add(1)
			r.done(store.ErrExists)
		default:
			s.remember(r.id, r.key)
			s.stats.committed.Add(1)
			r.done(nil)
		}
	}
}

// isReplyError reports whether err is a Redis error reply to some command
// of a pipeline (each command then carries its own), not a lost connection.
func isReplyError(err error) bool {
	var rerr goredis.Error
	return errors.As(err, &rerr) && !errors.Is(err, goredis.Nil)
}

// writeBindings sends queued bindings in pipelines.
func (s *Store) writeBindings() {
	defer s.bgWG.Done()
	batch := make([]bindWrite, 0, maxBatch)
	var buf []byte
	for {
		select {
		case w := <-s.bindQ:
			batch = append(batch[:0], w)
		case <-s.quit:
			return
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case w := <-s.bindQ:
				batch = append(batch, w)
			default:
				break fill
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*s.opts.Timeout)
		p := s.c.Pipeline()
		for _, w := range batch {
			buf = encodeBinding(buf[:0], &w.b)
			p.Set(ctx, bindKey(w.id, w.tr), string(buf), w.ttl)
		}
		if _, err := p.Exec(ctx); err != nil {
			s.dropped(len(batch))
			if !isReplyError(err) {
				s.failed(err)
			}
		} else {
			s.stats.bindsWritten.Add(uint64(len(batch)))
		}
		cancel()
	}
}

// writeTouches extends registrations' TTLs in pipelines.
func (s *Store) writeTouches() {
	defer s.bgWG.Done()
	batch := make([]store.ID, 0, maxBatch)
	ttl := s.opts.MaxIdle + s.opts.TouchResolution
	for {
		select {
		case id := <-s.touchQ:
			batch = append(batch[:0], id)
		case <-s.quit:
			return
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case id := <-s.touchQ:
				batch = append(batch, id)
			default:
				break fill
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*s.opts.Timeout)
		p := s.c.Pipeline()
		for _, id := range batch {
			p.PExpire(ctx, regKey(id), ttl)
		}
		if _, err := p.Exec(ctx); err != nil && !isReplyError(err) {
			s.failed(err)
			for _, id := range batch {
				s.untouch(id) // written again at the next BIND
			}
		} else {
			s.stats.touches.Add(uint64(len(batch)))
		}
		cancel()
	}
}

func (s *Store) untouch(id store.ID) {
	sh := s.shard(&id)
	sh.mu.Lock()
	if e, ok := sh.m[id]; ok {
		e.touched = 0
		sh.m[id] = e
	}
	sh.mu.Unlock()
}

// housekeep advances the coarse clock, drops cache entries past their
// trust, and probes Redis while it is marked down.
func (s *Store) housekeep() {
	defer s.bgWG.Done()
	t := time.NewTicker(min(s.opts.ProbeInterval, 250*time.Millisecond))
	defer t.Stop()
	lastProbe, lastSweep := time.Time{}, s.opts.Now()
	for {
		select {
		case <-t.C:
		case <-s.quit:
			return
		}
		now := s.opts.Now()
		s.clock.Store(now.Unix())
		if s.down.Load() && now.Sub(lastProbe) >= s.opts.ProbeInterval {
			lastProbe = now
			ctx, cancel := context.WithTimeout(context.Background(), s.opts.Timeout)
			err := s.c.Ping(ctx).Err()
			cancel()
			if err == nil {
				s.down.Store(false)
				s.log.Info("redis reachable again: registrations and shared bindings resume")
			}
		}
		if now.Sub(lastSweep) >= 10*time.Second {
			lastSweep = now
			s.sweepCache(now.Unix())
		}
	}
}

func (s *Store) sweepCache(now int64) {
	for i := range s.cache {
		sh := &s.cache[i]
		sh.mu.Lock()
		for id, e := range sh.m {
			if e.until < now {
				delete(sh.m, id)
			}
		}
		sh.mu.Unlock()
	}
}

// Down reports whether the store has marked Redis unreachable.
func (s *Store) Down() bool { return s.down.Load() }

// Close answers queued registrations, stops the goroutines and closes the
// connections.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	close(s.quit)
	s.closeMu.Unlock()
	s.wg.Wait()
	s.subMu.Lock()
	for _, ps := range s.subs {
		ps.Close()
	}
	s.subMu.Unlock()
	s.bgWG.Wait()
	return s.c.Close()
}

// Stats are the store's counters since Open.
type Stats struct {
	Committed, Conflicts, Failures, Busy uint64
	BindingsWritten, BindingsDropped     uint64
	TouchesWritten                       uint64
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats {
	return Stats{
		Committed: s.stats.committed.Load(), Conflicts: s.stats.conflicts.Load(),
		Failures: s.stats.failures.Load(), Busy: s.stats.busy.Load(),
		BindingsWritten: s.stats.bindsWritten.Load(), BindingsDropped: s.stats.bindsDropped.Load(),
		TouchesWritten: s.stats.touches.Load(),
	}
}

// Binding values: addr(16) port(2) flags(1) via(1) server-name.
const (
	bindFixed = 20
	flagIs4   = 1
)

func encodeBinding(b []byte, x *store.Binding) []byte {
	b = append(b, x.Addr[:]...)
	b = binary.BigEndian.AppendUint16(b, x.Port)
	var f byte
	if x.Is4 {
		f |= flagIs4
	}
	b = append(b, f, x.Via)
	return append(b, x.Server...)
}

func decodeBinding(v []byte) (store.Binding, bool) {
	if len(v) <= bindFixed {
		return store.Binding{}, false
	}
	var x store.Binding
	copy(x.Addr[:], v)
	x.Port = binary.BigEndian.Uint16(v[16:])
	x.Is4 = v[18]&flagIs4 != 0
	x.Via = v[19]
	x.Server = string(v[bindFixed:])
	return x, true
}

// RouteClientLogs sends go-redis's own log lines (dial failures, pub/sub
// reconnects: each attempt, while the store logs an outage once) to l at
// Debug level instead of the standard logger. go-redis has one logger per
// process, so this is for a main to call once, not for a library.
func RouteClientLogs(l *slog.Logger) {
	goredis.SetLogger(clientLog{l})
}

type clientLog struct{ l *slog.Logger }

func (c clientLog) Printf(ctx context.Context, format string, v ...any) {
	if c.l.Enabled(ctx, slog.LevelDebug) {
		c.l.DebugContext(ctx, "go-redis", "msg", fmt.Sprintf(format, v...))
	}
}
