package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
)

// DefaultTLSPort is the port of ewfd's X over TLS (docs/PROTOCOL.md §19),
// used when a TLS server string has none.
const DefaultTLSPort = 5349

// ServerTLSConfig returns the TLS configuration for ewfd's X-over-TLS
// listener at server ("host:port"): the certificate must name host (a DNS
// name or an IP address). With caFile, a PEM file of one or more
// certificates, the server's chain must end in one of them and the
// system's roots are not consulted: that pins a private CA or a
// self-signed certificate. Without it the system's public roots verify the
// chain, as a browser would.
func ServerTLSConfig(server, caFile string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(server)
	if err != nil {
		host = server
	}
	conf := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("ewf client: server CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ewf client: server CA %s holds no PEM certificate", caFile)
		}
		conf.RootCAs = pool
	}
	return conf, nil
}

// DialTLS connects to ewfd's X-over-TLS listener at server ("host:port";
// "host" means DefaultTLSPort) and verifies it with conf (ServerTLSConfig);
// the TLS handshake is done when it returns. The Conn speaks the same
// STUN and X as DialTCP's, inside TLS. Its use is REGISTER, the one request
// whose answer is a secret; a BIND over it would bind the TLS connection's
// TCP address.
func DialTLS(ctx context.Context, server string, conf *tls.Config, cfg Config) (*Conn, error) {
	if _, _, err := net.SplitHostPort(server); err != nil {
		server = net.JoinHostPort(server, fmt.Sprint(DefaultTLSPort))
	}
	srv, err := ResolveServer(ctx, server)
	if err != nil {
		return nil, err
	}
	cfg.populate()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: cfg.Timeout}, Config: conf}
	nc, err := d.DialContext(ctx, "tcp", srv.String())
	if err != nil {
		return nil, fmt.Errorf("ewf client: connecting to server %s over TLS: %w", srv, err)
	}
	return streamConn(nc, srv, cfg), nil
}
