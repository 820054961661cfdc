package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// ResolveServers resolves a list of servers that share one store (several
// ewfd on Redis, docs/OPERATIONS.md): comma-separated entries, each a
// "host:port", "host" or address as ResolveServer takes, or a DNS SRV name
// beginning with "_", such as "_ewf._udp.example.org" or
// "_ewf._tcp.example.org", which stands for its targets. The result keeps
// the entries' order, SRV targets in the order of RFC 2782 (lowest priority
// first, weighted-random within a priority, as net.Resolver.LookupSRV
// sorts them), without duplicates. An entry that does not resolve is
// skipped while another does; if none does, the first error is returned.
// r nil means net.DefaultResolver.
func ResolveServers(ctx context.Context, spec string, r *net.Resolver) ([]netip.AddrPort, error) {
	if r == nil {
		r = net.DefaultResolver
	}
	var out []netip.AddrPort
	var firstErr error
	add := func(a netip.AddrPort) {
		for _, x := range out {
			if x == a {
				return
			}
		}
		out = append(out, a)
	}
	entries := 0
	for _, e := range strings.Split(spec, ",") {
		if e = strings.TrimSpace(e); e == "" {
			continue
		}
		entries++
		if strings.HasPrefix(e, "_") {
			addrs, err := resolveSRV(ctx, r, e)
			if err != nil {
				firstErr = cmp(firstErr, err)
				continue
			}
			for _, a := range addrs {
				add(a)
			}
			continue
		}
		a, err := resolveServer(ctx, r, e)
		if err != nil {
			if errors.Is(err, errBadServer) {
				return nil, err // a typo, not an outage: say so
			}
			firstErr = cmp(firstErr, err)
			continue
		}
		add(a)
	}
	switch {
	case entries == 0:
		return nil, fmt.Errorf("ewf client: %w: no server in %q", errBadServer, spec)
	case len(out) == 0:
		return nil, firstErr
	}
	return out, nil
}

func cmp(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// resolveSRV looks up an SRV name and resolves each target to one address.
func resolveSRV(ctx context.Context, r *net.Resolver, name string) ([]netip.AddrPort, error) {
	_, srvs, err := r.LookupSRV(ctx, "", "", name)
	if err != nil {
		return nil, fmt.Errorf("ewf client: SRV %q: %w", name, err)
	}
	var out []netip.AddrPort
	var firstErr error
	for _, s := range srvs {
		host := strings.TrimSuffix(s.Target, ".")
		if host == "" || s.Port == 0 {
			continue // "." means the service is not offered here
		}
		ip, err := pickAddr(ctx, r, host)
		if err != nil {
			firstErr = cmp(firstErr, err)
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, s.Port))
	}
	if len(out) == 0 {
		if firstErr == nil {
			firstErr = fmt.Errorf("ewf client: SRV %q: no usable target", name)
		}
		return nil, firstErr
	}
	return out, nil
}

// pickAddr resolves host, preferring IPv4, as most NATs map only IPv4.
func pickAddr(ctx context.Context, r *net.Resolver, host string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return a.Unmap(), nil
	}
	addrs, err := r.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ewf client: resolving server %q: %w", host, err)
	}
	if len(addrs) == 0 {
		return netip.Addr{}, fmt.Errorf("ewf client: resolving server %q: no addresses", host)
	}
	pick := addrs[0].Unmap()
	for _, a := range addrs {
		if a.Unmap().Is4() {
			return a.Unmap(), nil
		}
	}
	return pick, nil
}
