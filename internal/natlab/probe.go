//go:build linux

package natlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The probe follows RFC 5780 (NAT behaviour discovery) with a protocol of
// its own instead of STUN, so that it does not depend on the code under
// test. The responder listens on the server's two addresses and two ports
// (away from 3478, which belongs to ewfd):
//
//	request  "ewfprobe <txn> <from> <delay_ms>"  (UDP)
//	response "ewfprobe <txn> <seen ip:port>"
//
// <from> is an RFC 5780 CHANGE-REQUEST: bit 0 asks for the answer from the
// other port, bit 1 from the other address, so the answer leaves from
// responderEndpoints[i^from] when the request came in on endpoint i. Over TCP the responder writes
// "ewfprobe <seen ip:port>\n" on every accepted connection and closes it.
const (
	probePort1 = 3490
	probePort2 = 3491
)

// responderEndpoints: index 0 is the primary; index bit 0 selects the
// other port, bit 1 the other address.
var responderEndpoints = [4]netip.AddrPort{
	netip.AddrPortFrom(serverAddr1, probePort1),
	netip.AddrPortFrom(serverAddr1, probePort2),
	netip.AddrPortFrom(serverAddr2, probePort1),
	netip.AddrPortFrom(serverAddr2, probePort2),
}

const (
	fromSame    = 0
	fromPort    = 1
	fromAddr    = 2
	fromAddrPrt = 3
)

type responder struct {
	udp   [4]*net.UDPConn
	tcp   [4]*net.TCPListener
	wg    sync.WaitGroup
	close sync.Once
	done  chan struct{}
}

func startResponder(ns string) (*responder, error) {
	r := &responder{done: make(chan struct{})}
	err := inNetns(ns, func() error {
		for i, ep := range responderEndpoints {
			u, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ep))
			if err != nil {
				return err
			}
			r.udp[i] = u
			t, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(ep))
			if err != nil {
				return err
			}
			r.tcp[i] = t
		}
		return nil
	})
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("natlab: probe responder: %w", err)
	}
	for i := range responderEndpoints {
		r.wg.Add(2)
		go r.serveUDP(i)
		go r.serveTCP(r.tcp[i])
	}
	return r, nil
}

func (r *responder) serveUDP(i int) {
	defer r.wg.Done()
	c := r.udp[i]
	buf := make([]byte, 512)
	for {
		n, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		f := strings.Fields(string(buf[:n]))
		if len(f) != 4 || f[0] != "ewfprobe" {
			continue
		}
		from, err1 := strconv.Atoi(f[2])
		delay, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil || from < 0 || from > 3 || delay < 0 || delay > 600_000 {
			continue
		}
		reply := []byte("ewfprobe " + f[1] + " " + src.String())
		out := r.udp[i^from]
		if delay == 0 {
			_, _ = out.WriteToUDPAddrPort(reply, src)
			continue
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			select {
			case <-time.After(time.Duration(delay) * time.Millisecond):
				_, _ = out.WriteToUDPAddrPort(reply, src)
			case <-r.done:
			}
		}()
	}
}

func (r *responder) serveTCP(l *net.TCPListener) {
	defer r.wg.Done()
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			return
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.Write([]byte("ewfprobe " + c.RemoteAddr().String() + "\n"))
		_ = c.Close()
	}
}

func (r *responder) Close() error {
	r.close.Do(func() {
		close(r.done)
		for i := range r.udp {
			if r.udp[i] != nil {
				r.udp[i].Close()
			}
			if r.tcp[i] != nil {
				r.tcp[i].Close()
			}
		}
		r.wg.Wait()
	})
	return nil
}

// ensureResponder starts the probe responder on the server host once.
func (l *Lab) ensureResponder() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("natlab: lab is closed")
	}
	if l.responder != nil {
		return nil
	}
	r, err := startResponder(l.hosts[ServerHost].ns)
	if err != nil {
		return err
	}
	l.responder = r
	return nil
}

var txnSeq atomic.Uint64

// prober holds the probe's UDP sockets inside a host.
type prober struct {
	wait     time.Duration // how long one attempt waits for an answer
	attempts int
}

// ListenUDP opens a UDP socket inside a host's namespace. The socket works
// from any goroutine; close it when done (an open socket keeps the
// namespace alive past Close).
func (l *Lab) ListenUDP(hostName string, port uint16) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := inNetns(l.host(hostName).ns, func() error {
		var err error
		c, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero, Port: int(port)})
		return err
	})
	return c, err
}

// ListenTCP opens a TCP listener inside a host's namespace, on all
// addresses, with SO_REUSEADDR and SO_REUSEPORT so that DialTCP can
// connect out from the same port (TCP hole punching listens and connects
// at once). Close it when done.
func (l *Lab) ListenTCP(hostName string, port uint16) (*net.TCPListener, error) {
	var ln net.Listener
	err := inNetns(l.host(hostName).ns, func() error {
		lc := net.ListenConfig{Control: reuseControl}
		var err error
		ln, err = lc.Listen(context.Background(), "tcp4", fmt.Sprintf("0.0.0.0:%d", port))
		return err
	})
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// DialTCP connects from a host's namespace to dst, from local port port
// (0: any) with SO_REUSEADDR and SO_REUSEPORT, so that the same local port
// can make several connections (TCP mapping probes, simultaneous open).
func (l *Lab) DialTCP(ctx context.Context, hostName string, port uint16, dst netip.AddrPort) (*net.TCPConn, error) {
	var conn net.Conn
	err := inNetns(l.host(hostName).ns, func() error {
		d := net.Dialer{
			LocalAddr: &net.TCPAddr{IP: net.IPv4zero, Port: int(port)},
			Control:   reuseControl,
		}
		// DialContext makes the socket on this thread before it blocks, so
		// the socket is in the namespace.
		var err error
		conn, err = d.DialContext(ctx, "tcp4", dst.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return conn.(*net.TCPConn), nil
}

func reuseControl(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// request sends a probe request from c to dst asking for the answer from
// endpoint from, and returns the address the responder saw; ok is false if
// no answer came.
func (p prober) request(c *net.UDPConn, dst netip.AddrPort, from int) (netip.AddrPort, bool, error) {
	txn := strconv.FormatUint(txnSeq.Add(1), 10)
	msg := []byte(fmt.Sprintf("ewfprobe %s %d 0", txn, from))
	buf := make([]byte, 512)
	for range p.attempts {
		if _, err := c.WriteToUDPAddrPort(msg, dst); err != nil {
			return netip.AddrPort{}, false, err
		}
		deadline := time.Now().Add(p.wait)
		for {
			_ = c.SetReadDeadline(deadline)
			n, _, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
					break
				}
				return netip.AddrPort{}, false, err
			}
			f := strings.Fields(string(buf[:n]))
			if len(f) == 3 && f[0] == "ewfprobe" && f[1] == txn {
				seen, err := netip.ParseAddrPort(f[2])
				if err != nil {
					return netip.AddrPort{}, false, err
				}
				return seen, true, nil
			}
		}
	}
	return netip.AddrPort{}, false, nil
}

// hairpin sends from h to dst (a's public mapping) and reports whether a
// receives it.
func (p prober) hairpin(h, a *net.UDPConn, dst netip.AddrPort) (bool, error) {
	token := []byte(fmt.Sprintf("ewfhairpin %d", txnSeq.Add(1)))
	buf := make([]byte, 512)
	for range p.attempts {
		if _, err := h.WriteToUDPAddrPort(token, dst); err != nil {
			return false, err
		}
		_ = a.SetReadDeadline(time.Now().Add(p.wait))
		for {
			n, _, err := a.ReadFromUDPAddrPort(buf)
			if err != nil {
				if isTimeout(err) {
					break
				}
				return false, err
			}
			if bytes.Equal(buf[:n], token) {
				return true, nil
			}
		}
	}
	return false, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func classifyMapping(m1, m2, m3 netip.AddrPort) Mapping {
	switch {
	case m1 == m2:
		return EIM
	case m2 == m3:
		return ADM
	default:
		return APDM
	}
}

// Probe classifies the path from a host to the public segment: RFC 5780
// mapping tests (same socket to three server endpoints), filtering tests (a
// fresh socket asks for answers from another address and port, then from
// another port only), a hairpinning test (a third socket sends to the
// first socket's mapping) and a TCP mapping test (three connections from
// one local port).
func (l *Lab) Probe(hostName string) (Behavior, error) {
	if err := l.ensureResponder(); err != nil {
		return Behavior{}, err
	}
	h := l.host(hostName)
	p := prober{wait: 250 * time.Millisecond, attempts: 3}
	if h.router != nil {
		p.wait += 4 * h.router.spec.WAN.Delay
		if h.router.spec.WAN.Loss > 0 {
			p.attempts = 6
		}
	}
	var b Behavior
	fail := func(format string, args ...any) (Behavior, error) {
		return Behavior{}, fmt.Errorf("natlab: probe %s: "+format, append([]any{hostName}, args...)...)
	}

	var socks [3]*net.UDPConn
	for i := range socks {
		c, err := l.ListenUDP(hostName, 0)
		if err != nil {
			return fail("%v", err)
		}
		defer c.Close()
		socks[i] = c
	}
	a, f, hp := socks[0], socks[1], socks[2]

	// Mapping: primary, other address, other address and port.
	var seen [3]netip.AddrPort
	for i, ep := range []netip.AddrPort{responderEndpoints[0], responderEndpoints[2], responderEndpoints[3]} {
		m, ok, err := p.request(a, ep, fromSame)
		if err != nil {
			return fail("%v", err)
		}
		if !ok && i == 0 {
			// No UDP answer at all: a UDP-blocking network, if TCP
			// gets through (a broken lab fails there).
			m, _, err := l.tcpMapped(hostName, 0, responderEndpoints[0])
			if err != nil {
				return fail("no UDP answer from %v, and %v", ep, err)
			}
			b.UDPBlocked, b.Translated = true, m.Addr() != h.addr
			if b.TCPMapping, err = l.probeTCP(hostName); err != nil {
				return fail("%v", err)
			}
			return b, nil
		}
		if !ok {
			return fail("no answer from %v", ep)
		}
		seen[i] = m
	}
	b.Translated = seen[0].Addr() != h.addr
	b.Mapping = classifyMapping(seen[0], seen[1], seen[2])

	// Filtering: test I sets up the mapping, II asks for the answer from the
	// other address and port, III from the other port only.
	if _, ok, err := p.request(f, responderEndpoints[0], fromSame); err != nil || !ok {
		return fail("filtering test I: answered=%t err=%v", ok, err)
	}
	_, eif, err := p.request(f, responderEndpoints[0], fromAddrPrt)
	if err != nil {
		return fail("%v", err)
	}
	_, adf, err := p.request(f, responderEndpoints[0], fromPort)
	if err != nil {
		return fail("%v", err)
	}
	switch {
	case eif:
		b.Filtering = EIF
	case adf:
		b.Filtering = ADF
	default:
		b.Filtering = APDF
	}

	if b.Hairpin, err = p.hairpin(hp, a, seen[0]); err != nil {
		return fail("hairpin: %v", err)
	}

	if b.Ports, err = l.probePorts(hostName, p); err != nil {
		return fail("ports: %v", err)
	}

	if b.TCPMapping, err = l.probeTCP(hostName); err != nil {
		return fail("%v", err)
	}
	return b, nil
}

// probePorts makes four new mappings in a row, from four fresh sockets to
// the primary endpoint, and classifies their public ports: all equal to
// the inside ports is preserved, a constant small step is sequential,
// anything else random. The sockets stay open until the end, so that no
// port is freed and reused in between.
func (l *Lab) probePorts(hostName string, p prober) (PortAlloc, error) {
	var pub, local []uint16
	for range 4 {
		c, err := l.ListenUDP(hostName, 0)
		if err != nil {
			return "", err
		}
		defer c.Close()
		m, ok, err := p.request(c, responderEndpoints[0], fromSame)
		if err != nil {
			return "", err
		}
		if !ok {
			return "", fmt.Errorf("no answer from %v", responderEndpoints[0])
		}
		pub = append(pub, m.Port())
		local = append(local, netip.MustParseAddrPort(c.LocalAddr().String()).Port())
	}
	return classifyPorts(pub, local), nil
}

func classifyPorts(pub, local []uint16) PortAlloc {
	preserved := true
	for i := range pub {
		preserved = preserved && pub[i] == local[i]
	}
	if preserved {
		return PortsPreserved
	}
	step := int16(pub[1] - pub[0])
	for i := 2; i < len(pub); i++ {
		if int16(pub[i]-pub[i-1]) != step {
			return PortsRandom
		}
	}
	if step != 0 && step >= -16 && step <= 16 {
		return PortsSequential
	}
	return PortsRandom
}

// probeTCP makes three connections from one local port, to the primary
// endpoint, the other address and the other address and port, and
// classifies the mapping from what the responder saw.
func (l *Lab) probeTCP(hostName string) (Mapping, error) {
	var seen [3]netip.AddrPort
	var port uint16
	for i, ep := range []netip.AddrPort{responderEndpoints[0], responderEndpoints[2], responderEndpoints[3]} {
		m, local, err := l.tcpMapped(hostName, port, ep)
		if err != nil {
			return "", err
		}
		port = local
		seen[i] = m
	}
	return classifyMapping(seen[0], seen[1], seen[2]), nil
}

// tcpMapped connects from local port port (0: any) to a responder endpoint
// and returns the address the responder saw and the local port used.
func (l *Lab) tcpMapped(hostName string, port uint16, ep netip.AddrPort) (netip.AddrPort, uint16, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := l.DialTCP(ctx, hostName, port, ep)
	if err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("tcp to %v: %w", ep, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 128)
	n := 0
	for n < len(buf) {
		k, err := c.Read(buf[n:])
		n += k
		if err != nil || bytes.IndexByte(buf[:n], '\n') >= 0 {
			break
		}
	}
	f := strings.Fields(string(buf[:n]))
	if len(f) != 2 || f[0] != "ewfprobe" {
		return netip.AddrPort{}, 0, fmt.Errorf("tcp to %v: bad answer %q", ep, buf[:n])
	}
	seen, err := netip.ParseAddrPort(f[1])
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	local := netip.MustParseAddrPort(c.LocalAddr().String()).Port()
	return seen, local, nil
}

// Verify probes one host behind every router (and every public host)
// concurrently and reports each behaviour that differs from what its NAT
// type promises. A lab must pass Verify before a test trusts it.
func (l *Lab) Verify() (map[string]Behavior, error) {
	type result struct {
		host string
		b    Behavior
		err  error
	}
	want := map[string]Behavior{}
	seenRouter := map[string]bool{}
	for _, hs := range l.spec.Hosts {
		if hs.Router == "" {
			want[hs.Name] = None.Expected(false)
			continue
		}
		if seenRouter[hs.Router] {
			continue
		}
		seenRouter[hs.Router] = true
		rs := l.routers[hs.Router].spec
		want[hs.Name] = rs.NAT.Expected(rs.Hairpin)
	}
	results := make(chan result, len(want))
	for name := range want {
		go func() {
			b, err := l.Probe(name)
			results <- result{name, b, err}
		}()
	}
	got := map[string]Behavior{}
	var errs []error
	for range want {
		r := <-results
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		got[r.host] = r.b
		if r.b != want[r.host] {
			errs = append(errs, fmt.Errorf("natlab: %s: probe saw %v, want %v", r.host, r.b, want[r.host]))
		}
	}
	return got, errors.Join(errs...)
}
