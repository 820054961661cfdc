package server

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
)

// DefaultTLSPort is where ewfd serves X and STUN over TLS: STUN's port for
// TLS (RFC 5389 §9), which middleboxes already expect to carry TLS.
const DefaultTLSPort = 5349

// startTLS serves X and STUN over TLS on TCP (docs/PROTOCOL.md §19) when a
// certificate is configured: the same framing and the same Handler as plain
// TCP, inside a TLS connection, so that the one message that carries a KEY
// (the REGISTER answer) can travel privately. The connections count
// against the TCP caps (MaxTCPConns, MaxTCPPerIP) and the idle timeout,
// which also bounds the handshake.
func (d *Daemon) startTLS(cfg *Config) error {
	if cfg.TLSCertFile == "" && cfg.TLSKeyFile == "" {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return fmt.Errorf("server: TLS certificate: %w", err)
	}
	conf := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}
	for _, a := range cfg.TLSListen {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return fmt.Errorf("server: listen TLS %s: %w", a, err)
		}
		tl := ln.(*net.TCPListener)
		d.tlsLn = append(d.tlsLn, tl)
		d.wg.Add(1)
		go d.serveTCP(tl, conf)
	}
	d.log.Info("ewfd serving TLS", "listen", d.TLSAddrs())
	return nil
}

// TLSAddrs returns the addresses served over TLS, one per TLSListen entry
// (a port 0 resolved), or nil without a TLS certificate.
func (d *Daemon) TLSAddrs() []netip.AddrPort {
	var out []netip.AddrPort
	for _, ln := range d.tlsLn {
		out = append(out, ln.Addr().(*net.TCPAddr).AddrPort())
	}
	return out
}
