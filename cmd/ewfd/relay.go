package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ewf-project/ewf/server"
	"github.com/ewf-project/ewf/server/relay"
)

// relayOptions are the -relay* flags: ewfd's embedded TURN relay, or an
// external one (coturn) whose credentials ewfd hands out.
type relayOptions struct {
	embedded bool
	listen   string
	ips      string
	ports    string
	allow    string
	urls     string
	secret   string
	ttl      time.Duration
	perID    int
	perIP    int
	bwID     float64
	bwIP     float64
	lifetime time.Duration
}

func (r *relayOptions) flags(fs *flag.FlagSet) {
	fs.BoolVar(&r.embedded, "relay", false,
		"run the embedded TURN relay for clients without a direct path (needs -relay-ip)")
	fs.StringVar(&r.listen, "relay-listen", fmt.Sprintf(":%d", relay.DefaultPort),
		"`host:port` of the embedded relay's TURN service, UDP and TCP")
	fs.StringVar(&r.ips, "relay-ip", "",
		"comma-separated public `IP`s of the relayed sockets, at most one IPv4 and one IPv6")
	fs.StringVar(&r.ports, "relay-ports", fmt.Sprintf("%d-%d", relay.DefaultPortMin, relay.DefaultPortMax),
		"`range` of relayed UDP ports")
	fs.StringVar(&r.allow, "relay-allow", "",
		"comma-separated `CIDR`s of peers allowed although private, loopback or reserved (e.g. a lab)")
	fs.StringVar(&r.urls, "relay-url", "",
		"comma-separated TURN `URI`s offered to clients, e.g. turn:relay.example.org:3478?transport=udp (an external relay, or the embedded one's public name)")
	fs.StringVar(&r.secret, "relay-secret", "",
		"`file` holding the secret shared with the TURN server (coturn's static-auth-secret); required with -relay-url alone")
	fs.DurationVar(&r.ttl, "relay-ttl", server.DefaultRelayTTL, "how long relay credentials allow new allocations")
	fs.IntVar(&r.perID, "relay-max-per-id", relay.DefaultMaxAllocsPerID, "most relay allocations per ID")
	fs.IntVar(&r.perIP, "relay-max-per-ip", relay.DefaultMaxAllocsPerIP,
		"most relay allocations per client IP (IPv6: per /64)")
	fs.Float64Var(&r.bwID, "relay-bandwidth-per-id", relay.DefaultBandwidthPerID,
		"bytes per second relayed for one ID, both directions")
	fs.Float64Var(&r.bwIP, "relay-bandwidth-per-ip", relay.DefaultBandwidthPerIP,
		"bytes per second relayed for one client IP, both directions")
	fs.DurationVar(&r.lifetime, "relay-max-lifetime", relay.DefaultMaxLifetime,
		"an allocation ends this long after it was made, however often refreshed")
}

func splitList(s string) []string {
	var out []string
	for _, x := range strings.Split(s, ",") {
		if x = strings.TrimSpace(x); x != "" {
			out = append(out, x)
		}
	}
	return out
}

// config turns the flags into server.RelayConfig.
func (r *relayOptions) config() (server.RelayConfig, error) {
	var rc server.RelayConfig
	rc.URLs = splitList(r.urls)
	rc.TTL = r.ttl
	if r.secret != "" {
		b, err := os.ReadFile(r.secret)
		if err != nil {
			return rc, fmt.Errorf("-relay-secret: %w", err)
		}
		rc.Secret = bytes.TrimSpace(b)
		if len(rc.Secret) == 0 {
			return rc, fmt.Errorf("-relay-secret: %s is empty", r.secret)
		}
	}
	if !r.embedded {
		if len(rc.URLs) > 0 && len(rc.Secret) == 0 {
			return rc, errors.New("-relay-url needs -relay-secret (the TURN server's shared secret)")
		}
		if r.ips != "" || r.allow != "" {
			return rc, errors.New("-relay-ip and -relay-allow configure the embedded relay: add -relay")
		}
		return rc, nil
	}
	e := &relay.Config{
		Listen: r.listen, MaxAllocsPerID: r.perID, MaxAllocsPerIP: r.perIP,
		BandwidthPerID: r.bwID, BandwidthPerIP: r.bwIP, MaxLifetime: r.lifetime,
	}
	for _, s := range splitList(r.ips) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return rc, fmt.Errorf("-relay-ip %q: %w", s, err)
		}
		e.RelayIPs = append(e.RelayIPs, a)
	}
	if len(e.RelayIPs) == 0 {
		return rc, errors.New("-relay needs -relay-ip: the public address clients and peers reach the relay at")
	}
	lo, hi, ok := strings.Cut(r.ports, "-")
	pmin, err1 := strconv.ParseUint(lo, 10, 16)
	pmax, err2 := strconv.ParseUint(hi, 10, 16)
	if !ok || err1 != nil || err2 != nil || pmin == 0 || pmin > pmax {
		return rc, fmt.Errorf("-relay-ports %q: want MIN-MAX, 1 <= MIN <= MAX <= 65535", r.ports)
	}
	e.PortMin, e.PortMax = uint16(pmin), uint16(pmax)
	for _, s := range splitList(r.allow) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return rc, fmt.Errorf("-relay-allow %q: %w", s, err)
		}
		e.Policy.Allow = append(e.Policy.Allow, p.Masked())
	}
	rc.Embedded = e
	return rc, nil
}
