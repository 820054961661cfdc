package forward

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// Service is one local service an Exposer offers to its peers.
type Service struct {
	// Label names the service in requests; empty makes it the default
	// service of its network, the one a Forward without a label reaches.
	Label string
	// Network is "tcp" or "udp".
	Network string
	// Addr is the service's "host:port", dialed for every request.
	Addr string
}

// Forward is one local port a Forwarder listens on.
type Forward struct {
	// Network is "tcp" or "udp".
	Network string
	// Local is the "host:port" to listen on; port 0 picks a free one.
	Local string
	// Label is the service asked for; empty asks for the default one.
	Label string
}

// ParseService parses an --expose value: "[LABEL=][tcp:|udp:]HOST:PORT";
// the network defaults to tcp.
func ParseService(s string) (Service, error) {
	var svc Service
	if l, rest, ok := strings.Cut(s, "="); ok {
		svc.Label, s = l, rest
		if l == "" {
			return Service{}, fmt.Errorf("forward: %q: empty label before '='", s)
		}
	}
	svc.Network, svc.Addr = splitNetwork(s)
	if err := checkAddr(svc.Addr, false); err != nil {
		return Service{}, err
	}
	if !validLabel(svc.Label) {
		return Service{}, fmt.Errorf("%w: %q (letters, digits, '-', '_', '.'; at most %d)", ErrBadLabel, svc.Label, MaxLabel)
	}
	return svc, nil
}

// ParseForward parses a --forward value: "[tcp:|udp:]HOST:PORT[=LABEL]";
// the network defaults to tcp.
func ParseForward(s string) (Forward, error) {
	var f Forward
	if i := strings.LastIndexByte(s, '='); i >= 0 {
		s, f.Label = s[:i], s[i+1:]
		if f.Label == "" {
			return Forward{}, fmt.Errorf("forward: %q: empty label after '='", s)
		}
	}
	f.Network, f.Local = splitNetwork(s)
	if err := checkAddr(f.Local, true); err != nil {
		return Forward{}, err
	}
	if !validLabel(f.Label) {
		return Forward{}, fmt.Errorf("%w: %q (letters, digits, '-', '_', '.'; at most %d)", ErrBadLabel, f.Label, MaxLabel)
	}
	return f, nil
}

func splitNetwork(s string) (network, addr string) {
	for _, n := range []string{"tcp", "udp"} {
		if rest, ok := strings.CutPrefix(s, n+":"); ok {
			return n, rest
		}
	}
	return "tcp", s
}

func checkAddr(addr string, portZeroOK bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("forward: address %q: %w", addr, err)
	}
	if port == "" || (!portZeroOK && port == "0") {
		return fmt.Errorf("forward: address %q needs a port", addr)
	}
	_ = host // an empty host means every address, as net.Listen has it
	return nil
}

// checkServices refuses two services answering to the same request.
func checkServices(svcs []Service) error {
	seen := map[string]bool{}
	for _, s := range svcs {
		k := s.Network + "/" + s.Label
		if seen[k] {
			if s.Label == "" {
				return fmt.Errorf("forward: two %s services without a label: name them LABEL=%s:HOST:PORT", s.Network, s.Network)
			}
			return fmt.Errorf("forward: two %s services labelled %q", s.Network, s.Label)
		}
		seen[k] = true
	}
	return nil
}

// ErrUDPNeedsQUIC: UDP is forwarded as QUIC datagrams, which the TLS/TCP
// path does not have.
var ErrUDPNeedsQUIC = errors.New("forward: UDP forwarding needs the udp transport (QUIC datagrams); this connection is TLS over TCP")
