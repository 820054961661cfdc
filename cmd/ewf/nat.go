package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/ewf-project/ewf"
	"github.com/ewf-project/ewf/natdisco"
)

// runNAT is `ewf nat`: classify this host's NAT against an RFC 5780 server
// and say what it means. The first line is stable for scripts:
//
//	nat mapping=<eim|adm|apdm|unknown> filtering=<eif|adf|apdf|unknown> ports=<preserved|sequential|random|unknown> hairpin=<yes|no> ipv6=<yes|no>
func runNAT(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("nat", flag.ContinueOnError)
	var c common
	c.register(fs)
	timeout := fs.Duration("timeout", 300*time.Millisecond, "wait this long for each STUN answer (each request is tried 3 times)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if err := c.check(); err != nil {
		return err
	}
	srv4, srv6, err := resolveBoth(ctx, c.server)
	if err != nil {
		return err
	}
	cfg := natdisco.Config{Server: srv4, Server6: srv6, Listen: natdisco.ListenUDP, Timeout: *timeout}
	if !srv4.IsValid() {
		cfg.Server, cfg.Server6 = srv6, netip.AddrPort{}
	}
	res, err := natdisco.Classify(ctx, cfg)
	if err != nil && err != natdisco.ErrNoAnswer {
		return err
	}
	fmt.Fprintln(stdout, res.Class.Line())
	if err == natdisco.ErrNoAnswer {
		fmt.Fprintf(stdout, "The server %s did not answer over UDP: UDP may be blocked on this network, or the server is down.\n", cfg.Server)
	}
	for _, s := range natdisco.Explain(res.Class) {
		fmt.Fprintln(stdout, s)
	}
	if c.verbose {
		fmt.Fprintf(stdout, "evidence: mapped=%v other=%v ports=%v mapped6=%v\n", res.Mapped, res.Other, res.Ports, res.Mapped6)
	}
	return nil
}

// resolveBoth returns an IPv4 and an IPv6 address of hostport, each
// invalid when the name has none.
func resolveBoth(ctx context.Context, hostport string) (v4, v6 netip.AddrPort, err error) {
	host, ps, err := net.SplitHostPort(hostport)
	if err != nil {
		return v4, v6, usageError(fmt.Sprintf("--server %q: %v", hostport, err))
	}
	port, err := strconv.ParseUint(ps, 10, 16)
	if err != nil {
		return v4, v6, usageError(fmt.Sprintf("--server %q: bad port", hostport))
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return v4, v6, fmt.Errorf("%w: resolve %s: %w", ewf.ErrServerUnreachable, host, err)
	}
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case ip.Is4() && !v4.IsValid():
			v4 = netip.AddrPortFrom(ip, uint16(port))
		case ip.Is6() && !v6.IsValid():
			v6 = netip.AddrPortFrom(ip, uint16(port))
		}
	}
	return v4, v6, nil
}
