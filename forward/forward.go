package forward

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ewf-project/ewf"
)

// Events receives one event per line-worthy happening, as an event name
// and key/value pairs (cmd/ewf prints them as status lines). Values that
// may hold spaces are quoted by the callee's choice; nil means none.
type Events func(event string, kv ...string)

func (e Events) emit(event string, kv ...string) {
	if e != nil {
		e(event, kv...)
	}
}

// headerTimeout bounds how long either side waits for the other's header.
const headerTimeout = 10 * time.Second

// Exposer answers a peer's forwarding requests by dialing its Services.
type Exposer struct {
	Services []Service
	// DialTimeout bounds dialing a TCP service. Default 5 s.
	DialTimeout time.Duration
	Events      Events
}

// Serve handles the streams of c until the connection ends (it returns
// that error) or ctx is done (it returns ctx's error). It closes c, and
// every forwarded connection with it, before it returns.
func (e *Exposer) Serve(ctx context.Context, c *ewf.Conn) error {
	if err := checkServices(e.Services); err != nil {
		return err
	}
	dialTimeout := e.DialTimeout
	if dialTimeout <= 0 {
		dialTimeout = 5 * time.Second
	}
	ctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	u := &udpFlows{c: c, flows: map[uint32]*net.UDPConn{}}
	wg.Add(1)
	go func() { defer wg.Done(); drainDefault(c) }()
	if c.Transport() == ewf.TransportUDP {
		wg.Add(1)
		go func() { defer wg.Done(); u.receive(ctx) }()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			s, err := c.AcceptStream(ctx)
			if err != nil {
				cancel(err)
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				e.handle(ctx, c, s, u, dialTimeout)
			}()
		}
	}()
	<-ctx.Done()
	c.Close()
	wg.Wait()
	return context.Cause(ctx)
}

func (e *Exposer) lookup(network, label string) *Service {
	var only *Service
	n := 0
	for i := range e.Services {
		s := &e.Services[i]
		if s.Network != network {
			continue
		}
		if s.Label == label {
			return s
		}
		only = s
		n++
	}
	if label == "" && n == 1 {
		return only // the one service of its network needs no name
	}
	return nil
}

func (e *Exposer) handle(ctx context.Context, c *ewf.Conn, s *ewf.Stream, u *udpFlows, dialTimeout time.Duration) {
	req, err := readRequest(s)
	if err != nil {
		s.Reset(CodeAborted)
		return
	}
	network := "tcp"
	if req.kind == kindUDP {
		network = "udp"
	}
	refuse := func(status byte, reason, target, msg string) {
		a := answer{status: status, msg: msg}
		s.SetWriteDeadline(time.Now().Add(headerTimeout))
		s.Write(a.appendTo(nil))
		s.Close()
		e.Events.emit("refused", "peer", c.Peer().String(), "label", labelOrDefault(req.label), "target", target,
			"reason", reason, "msg", strconv.Quote(msg))
	}
	if req.kind != kindTCP && req.kind != kindUDP {
		refuse(statusUnsupported, "unsupported", "-", "unknown kind "+strconv.Itoa(int(req.kind)))
		return
	}
	svc := e.lookup(network, req.label)
	if svc == nil {
		refuse(statusNoService, "no-service", "-", fmt.Sprintf("no %s service labelled %q here", network, req.label))
		return
	}
	if req.kind == kindUDP {
		if c.Transport() != ewf.TransportUDP {
			refuse(statusUnsupported, "unsupported", svc.Addr, ErrUDPNeedsQUIC.Error())
			return
		}
		uc, err := u.open(req.flow, svc.Addr)
		if err != nil {
			refuse(statusRefused, "refused", svc.Addr, err.Error())
			return
		}
		a := answer{status: statusOK}
		if _, err := s.Write(a.appendTo(nil)); err != nil {
			u.close(req.flow)
			s.Reset(CodeAborted)
			return
		}
		e.Events.emit("flow", "peer", c.Peer().String(), "label", labelOrDefault(req.label), "target", svc.Addr, "proto", "udp")
		// The stream lives as long as the flow: its end ends the flow.
		done := make(chan struct{})
		go func() { defer close(done); u.replies(req.flow, uc) }()
		io.Copy(io.Discard, s)
		u.close(req.flow)
		s.Close()
		<-done
		return
	}
	d := net.Dialer{Timeout: dialTimeout}
	lc, err := d.DialContext(ctx, "tcp", svc.Addr)
	if err != nil {
		refuse(statusRefused, "refused", svc.Addr, err.Error())
		return
	}
	a := answer{status: statusOK}
	if _, err := s.Write(a.appendTo(nil)); err != nil {
		lc.Close()
		s.Reset(CodeAborted)
		return
	}
	splice(lc.(*net.TCPConn), s)
}

func labelOrDefault(l string) string {
	if l == "" {
		return "-"
	}
	return l
}

func readRequest(s *ewf.Stream) (request, error) {
	s.SetReadDeadline(time.Now().Add(headerTimeout))
	defer s.SetReadDeadline(time.Time{})
	var b [7 + MaxLabel]byte
	if _, err := io.ReadFull(s, b[:7]); err != nil {
		return request{}, err
	}
	n := int(b[6])
	if n > MaxLabel {
		return request{}, ErrBadLabel
	}
	if _, err := io.ReadFull(s, b[7:7+n]); err != nil {
		return request{}, err
	}
	req, _, err := parseRequest(b[:7+n])
	return req, err
}

func readAnswer(s *ewf.Stream, timeout time.Duration) (answer, error) {
	s.SetReadDeadline(time.Now().Add(timeout))
	defer s.SetReadDeadline(time.Time{})
	var b [2 + 255]byte
	if _, err := io.ReadFull(s, b[:2]); err != nil {
		return answer{}, err
	}
	n := int(b[1])
	if _, err := io.ReadFull(s, b[2:2+n]); err != nil {
		return answer{}, err
	}
	a, _, err := parseAnswer(b[:2+n])
	return a, err
}

// drainDefault reads the connection's default stream, which forwarding
// does not use, so that the peer's Close learns we read its end.
func drainDefault(c *ewf.Conn) { io.Copy(io.Discard, c) }

// splice copies both ways between a local TCP connection and a stream
// until both directions ended. An end of stream is passed on as a
// half-close; a failure on either side aborts both: the stream is reset
// with CodeAborted and the local connection reset (RST), so neither end
// mistakes a failure for a clean end.
func splice(lc *net.TCPConn, s *ewf.Stream) error {
	var once sync.Once
	var first error
	abort := func(err error) {
		once.Do(func() {
			first = err
			s.Reset(CodeAborted)
			lc.SetLinger(0)
			lc.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if _, err := io.Copy(s, lc); err != nil {
			abort(err)
			return
		}
		s.CloseWrite()
	}()
	go func() {
		defer wg.Done()
		if _, err := io.Copy(lc, s); err != nil {
			abort(err)
			return
		}
		lc.CloseWrite()
	}()
	wg.Wait()
	lc.Close()
	s.Close()
	return first
}

// udpFlows is the exposer's side of UDP forwarding: one connected socket
// to the service per flow.
type udpFlows struct {
	c     *ewf.Conn
	mu    sync.Mutex
	flows map[uint32]*net.UDPConn
}

func (u *udpFlows) open(flow uint32, addr string) (*net.UDPConn, error) {
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	uc, err := net.DialUDP("udp", nil, ra)
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if old := u.flows[flow]; old != nil {
		old.Close()
	}
	u.flows[flow] = uc
	return uc, nil
}

func (u *udpFlows) close(flow uint32) {
	u.mu.Lock()
	uc := u.flows[flow]
	delete(u.flows, flow)
	u.mu.Unlock()
	if uc != nil {
		uc.Close()
	}
}

// replies sends the service's datagrams of one flow back to the peer.
func (u *udpFlows) replies(flow uint32, uc *net.UDPConn) {
	buf := make([]byte, 4+64<<10)
	binary.BigEndian.PutUint32(buf, flow)
	for {
		n, err := uc.Read(buf[4:])
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) {
				continue // the service port answered ICMP unreachable; UDP is lossy
			}
			return
		}
		u.c.SendDatagram(buf[:4+n]) // too large or no room: dropped, as UDP may
	}
}

// receive hands the peer's datagrams to the service of their flow.
func (u *udpFlows) receive(ctx context.Context) {
	receiveFlows(ctx, u.c, func(flow uint32, p []byte) {
		u.mu.Lock()
		uc := u.flows[flow]
		u.mu.Unlock()
		if uc != nil {
			uc.Write(p)
		}
	})
}

// receiveFlows reads c's datagrams until ctx or c ends and hands each
// payload to deliver with the flow tag it carries; untagged ones are
// dropped.
func receiveFlows(ctx context.Context, c *ewf.Conn, deliver func(flow uint32, p []byte)) {
	for {
		d, err := c.ReceiveDatagram(ctx)
		if err != nil {
			return
		}
		if len(d) >= 4 {
			deliver(binary.BigEndian.Uint32(d), d[4:])
		}
	}
}

// Forwarder listens on local ports and carries every local connection
// (TCP) or flow (UDP, by source address) to the peer's services.
type Forwarder struct {
	Forwards []Forward
	// AnswerTimeout bounds the wait for the peer's answer to a request.
	// Default 15 s.
	AnswerTimeout time.Duration
	// UDPIdle ends a UDP flow that carried nothing for this long.
	// Default 60 s.
	UDPIdle time.Duration
	Events  Events
}

// Run listens on every Forward and forwards until the connection ends (it
// returns that error) or ctx is done (ctx's error). It closes the local
// listeners, every forwarded connection and c before it returns. Each
// listener is announced with a "forward local=ADDR label=L proto=P" event.
func (f *Forwarder) Run(ctx context.Context, c *ewf.Conn) error {
	answerTimeout := f.AnswerTimeout
	if answerTimeout <= 0 {
		answerTimeout = 15 * time.Second
	}
	udpIdle := f.UDPIdle
	if udpIdle <= 0 {
		udpIdle = 60 * time.Second
	}
	for _, fw := range f.Forwards {
		if fw.Network == "udp" && c.Transport() != ewf.TransportUDP {
			c.Close()
			return ErrUDPNeedsQUIC
		}
	}
	var closers []io.Closer
	closeAll := func() {
		for _, cl := range closers {
			cl.Close()
		}
	}
	var tcpLns []*net.TCPListener
	var udpPCs []*net.UDPConn
	for _, fw := range f.Forwards {
		if fw.Network == "udp" {
			pc, err := net.ListenPacket("udp", fw.Local)
			if err != nil {
				closeAll()
				c.Close()
				return fmt.Errorf("forward: listen %s: %w", fw.Local, err)
			}
			udpPCs = append(udpPCs, pc.(*net.UDPConn))
			closers = append(closers, pc)
			f.Events.emit("forward", "local", pc.LocalAddr().String(), "label", labelOrDefault(fw.Label), "proto", "udp")
			continue
		}
		ln, err := net.Listen("tcp", fw.Local)
		if err != nil {
			closeAll()
			c.Close()
			return fmt.Errorf("forward: listen %s: %w", fw.Local, err)
		}
		tcpLns = append(tcpLns, ln.(*net.TCPListener))
		closers = append(closers, ln)
		f.Events.emit("forward", "local", ln.Addr().String(), "label", labelOrDefault(fw.Label), "proto", "tcp")
	}

	ctx, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); drainDefault(c) }()
	go func() {
		// The peer opens no streams towards a forwarder; waiting for one
		// is how the end of the connection is noticed.
		defer wg.Done()
		for {
			s, err := c.AcceptStream(ctx)
			if err != nil {
				cancel(err)
				return
			}
			s.Reset(CodeAborted)
		}
	}()
	tcpI, udpI := 0, 0
	uf := &udpForwarder{c: c, f: f, byID: map[uint32]*clientFlow{}, answerTimeout: answerTimeout, idle: udpIdle}
	for _, fw := range f.Forwards {
		if fw.Network == "udp" {
			pc := udpPCs[udpI]
			udpI++
			wg.Add(1)
			go func() { defer wg.Done(); uf.serve(ctx, pc, fw, &wg) }()
			continue
		}
		ln := tcpLns[tcpI]
		tcpI++
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				lc, err := ln.AcceptTCP()
				if err != nil {
					if ctx.Err() == nil {
						cancel(fmt.Errorf("forward: accept on %s: %w", ln.Addr(), err))
					}
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					f.forwardTCP(ctx, c, lc, fw, ln.Addr().String(), answerTimeout)
				}()
			}
		}()
	}
	if len(udpPCs) > 0 {
		wg.Add(2)
		go func() { defer wg.Done(); uf.receive(ctx) }()
		go func() { defer wg.Done(); uf.expire(ctx) }()
	}
	<-ctx.Done()
	closeAll()
	c.Close()
	wg.Wait()
	return context.Cause(ctx)
}

// forwardTCP carries one local connection: request, answer, then bytes.
// A refusal resets the local connection at once, before it read anything.
func (f *Forwarder) forwardTCP(ctx context.Context, c *ewf.Conn, lc *net.TCPConn, fw Forward, local string, answerTimeout time.Duration) {
	reset := func() { lc.SetLinger(0); lc.Close() }
	s, err := c.OpenStream(ctx)
	if err != nil {
		reset()
		return
	}
	req := request{kind: kindTCP, label: fw.Label}
	if _, err := s.Write(req.appendTo(nil)); err != nil {
		s.Reset(CodeAborted)
		reset()
		return
	}
	a, err := readAnswer(s, answerTimeout)
	if err != nil || a.status != statusOK {
		msg := a.msg
		if err != nil {
			msg = err.Error()
		}
		f.Events.emit("refused", "local", local, "label", labelOrDefault(fw.Label), "reason", statusWord(a.status, err),
			"msg", strconv.Quote(msg))
		s.Close()
		reset()
		return
	}
	splice(lc, s)
}

func statusWord(st byte, err error) string {
	switch {
	case err != nil:
		return "no-answer"
	case st == statusRefused:
		return "refused"
	case st == statusNoService:
		return "no-service"
	case st == statusUnsupported:
		return "unsupported"
	}
	return "unknown"
}

// udpForwarder is the connector's side of UDP forwarding.
type udpForwarder struct {
	c             *ewf.Conn
	f             *Forwarder
	answerTimeout time.Duration
	idle          time.Duration

	mu     sync.Mutex
	nextID uint32
	byID   map[uint32]*clientFlow
}

type clientFlow struct {
	id    uint32
	pc    *net.UDPConn
	from  netip.AddrPort
	s     *ewf.Stream
	ready bool
	last  time.Time
}

// serve reads one local UDP socket; a new source address starts a flow.
func (u *udpForwarder) serve(ctx context.Context, pc *net.UDPConn, fw Forward, wg *sync.WaitGroup) {
	bySrc := map[netip.AddrPort]*clientFlow{}
	buf := make([]byte, 4+64<<10)
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf[4:])
		if err != nil {
			return
		}
		u.mu.Lock()
		fl := bySrc[from]
		if fl != nil && u.byID[fl.id] == nil {
			delete(bySrc, from) // expired or refused
			fl = nil
		}
		if fl == nil {
			u.nextID++
			fl = &clientFlow{id: u.nextID, pc: pc, from: from, last: time.Now()}
			bySrc[from] = fl
			u.byID[fl.id] = fl
			first := append([]byte(nil), buf[4:4+n]...)
			u.mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); u.open(ctx, fl, fw, first, pc.LocalAddr().String()) }()
			continue
		}
		fl.last = time.Now()
		ready := fl.ready
		u.mu.Unlock()
		if ready {
			binary.BigEndian.PutUint32(buf, fl.id)
			u.c.SendDatagram(buf[:4+n])
		}
		// A datagram of a flow still being set up is dropped, as UDP may.
	}
}

func (u *udpForwarder) open(ctx context.Context, fl *clientFlow, fw Forward, first []byte, local string) {
	fail := func(reason, msg string) {
		u.mu.Lock()
		delete(u.byID, fl.id)
		u.mu.Unlock()
		u.f.Events.emit("refused", "local", local, "label", labelOrDefault(fw.Label), "reason", reason, "msg", strconv.Quote(msg))
	}
	s, err := u.c.OpenStream(ctx)
	if err != nil {
		fail("no-answer", err.Error())
		return
	}
	req := request{kind: kindUDP, flow: fl.id, label: fw.Label}
	if _, err := s.Write(req.appendTo(nil)); err != nil {
		s.Reset(CodeAborted)
		fail("no-answer", err.Error())
		return
	}
	a, err := readAnswer(s, u.answerTimeout)
	if err != nil || a.status != statusOK {
		s.Close()
		msg := a.msg
		if err != nil {
			msg = err.Error()
		}
		fail(statusWord(a.status, err), msg)
		return
	}
	u.mu.Lock()
	fl.s, fl.ready = s, true
	u.mu.Unlock()
	d := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(first)), fl.id)
	u.c.SendDatagram(append(d, first...))
	// The flow ends when the exposer ends its stream or expire closes it.
	io.Copy(io.Discard, s)
	u.mu.Lock()
	delete(u.byID, fl.id)
	u.mu.Unlock()
	s.Close()
}

func (u *udpForwarder) receive(ctx context.Context) {
	receiveFlows(ctx, u.c, func(flow uint32, p []byte) {
		u.mu.Lock()
		fl := u.byID[flow]
		if fl != nil {
			fl.last = time.Now()
		}
		u.mu.Unlock()
		if fl != nil {
			fl.pc.WriteToUDPAddrPort(p, fl.from)
		}
	})
}

// expire closes flows that carried nothing for the idle time, which ends
// their streams and the exposer's sockets.
func (u *udpForwarder) expire(ctx context.Context) {
	t := time.NewTicker(u.idle / 4)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			var idle []*ewf.Stream
			u.mu.Lock()
			for id, fl := range u.byID {
				if fl.ready && now.Sub(fl.last) > u.idle {
					delete(u.byID, id)
					idle = append(idle, fl.s)
				}
			}
			u.mu.Unlock()
			for _, s := range idle {
				s.Close()
			}
		case <-ctx.Done():
			return
		}
	}
}
