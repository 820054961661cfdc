package redis

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	goredis "github.com/redis/go-redis/v9"
)

// Durability is what an acknowledged REGISTER survives, read from the
// connected Redis (the weakest master of a cluster).
type Durability struct {
	AOF      bool   // appendonly yes
	Fsync    string // appendfsync: always, everysec, no; "" if unknown
	Replicas int    // connected replicas (fewest over the masters)
	Wait     int    // Options.Wait
	Masters  int
	Unknown  string // why CONFIG could not be read (renamed, ACL), if so
}

// String is the one-line guarantee ewfd logs at start-up.
func (d Durability) String() string {
	var b strings.Builder
	switch {
	case d.Unknown != "":
		fmt.Fprintf(&b, "unknown persistence (CONFIG GET failed: %s); check appendonly/appendfsync by hand", d.Unknown)
	case !d.AOF:
		b.WriteString("no AOF: an acknowledged REGISTER is only in Redis memory; a Redis restart loses everything since the last RDB snapshot, if any")
	case d.Fsync == "always":
		b.WriteString("AOF appendfsync always: an acknowledged REGISTER is on Redis's disk; it survives a crash of Redis and of its host")
	case d.Fsync == "everysec":
		b.WriteString("AOF appendfsync everysec: an acknowledged REGISTER survives a crash of the Redis process; a crash of its host may lose the last ~1-2 s")
	default:
		fmt.Fprintf(&b, "AOF appendfsync %s: an acknowledged REGISTER survives a crash of the Redis process; a crash of its host may lose the last ~30 s", d.Fsync)
	}
	switch {
	case d.Wait > 0:
		fmt.Fprintf(&b, "; each REGISTER is also on %d replica(s) (WAIT) before it is acknowledged", d.Wait)
	case d.Replicas > 0:
		fmt.Fprintf(&b, "; %d replica(s), asynchronous: a failover to a replica may lose the last acknowledged REGISTERs (use wait=N)", d.Replicas)
	default:
		b.WriteString("; no replica: losing the Redis host's disk loses the registrations")
	}
	if d.Masters > 1 {
		fmt.Fprintf(&b, " (weakest of %d masters)", d.Masters)
	}
	return b.String()
}

// Durability reads the persistence settings of every master.
func (s *Store) Durability(ctx context.Context) (Durability, error) {
	var mu sync.Mutex
	var all []Durability
	one := func(ctx context.Context, c *goredis.Client) error {
		d := Durability{Wait: s.opts.Wait, Masters: 1}
		if cfg, err := c.ConfigGet(ctx, "append*").Result(); err != nil {
			d.Unknown = err.Error()
		} else {
			d.AOF = cfg["appendonly"] == "yes"
			d.Fsync = cfg["appendfsync"]
		}
		info, err := c.Info(ctx, "replication").Result()
		if err != nil {
			return err
		}
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "connected_slaves:"); ok {
				d.Replicas, _ = strconv.Atoi(v)
			}
		}
		mu.Lock()
		all = append(all, d)
		mu.Unlock()
		return nil
	}
	var err error
	switch c := s.c.(type) {
	case *goredis.ClusterClient:
		err = c.ForEachMaster(ctx, one)
	case *goredis.Client:
		err = one(ctx, c)
	}
	if err != nil {
		return Durability{}, fmt.Errorf("store/redis: durability: %w", err)
	}
	if len(all) == 0 {
		return Durability{}, fmt.Errorf("store/redis: durability: no master answered")
	}
	w := all[0]
	rank := func(d Durability) int {
		switch {
		case d.Unknown != "":
			return -1
		case !d.AOF:
			return 0
		case d.Fsync == "always":
			return 3
		case d.Fsync == "everysec":
			return 2
		}
		return 1
	}
	for _, d := range all[1:] {
		if rank(d) < rank(w) {
			w.AOF, w.Fsync, w.Unknown = d.AOF, d.Fsync, d.Unknown
		}
		w.Replicas = min(w.Replicas, d.Replicas)
	}
	w.Masters = len(all)
	return w, nil
}
