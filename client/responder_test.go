package client

import (
	"crypto/rand"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/pion/stun/v3"

	"github.com/ewf-project/ewf/wire"
	"github.com/ewf-project/ewf/wire/integrity"
)

// responder is a small stand-in for ewfd that answers STUN Binding and X
// as docs/PROTOCOL.md says, so the client can be tested before (and
// independently of) the real server. Its knobs make the failures the
// client must survive: lost requests, lost responses, an error reason for
// everything, silence.
type responder struct {
	mu sync.Mutex

	dropRequests  int          // the next N requests are lost on the way in
	dropResponses int          // the next N requests are carried out, their answers lost
	force         *wire.Reason // answer every X request with this reason
	silent        bool         // answer nothing
	// nat gives the address the server observes for a source; nil: the
	// source itself.
	nat func(netip.AddrPort) netip.AddrPort
	// sendTo delivers an INTRODUCE indication to a client's UDP binding.
	sendTo func(to netip.AddrPort, b []byte)
	// skew is how far the responder's clock is ahead of the real one, for
	// the TIMESTAMP window of docs/PROTOCOL.md §18.3.
	skew time.Duration
	// tamper, if set, may change an answer's bytes on the way out (a
	// forger on the path).
	tamper func(b []byte)
	// unsigned makes the responder answer signed requests without a MAC
	// (a forger without the KEY, or a server that does not sign).
	unsigned bool
	// keyForm counts requests that carried the KEY in clear.
	keyForm int

	regs  map[wire.ID]wire.Key
	done  map[dedupKey][]byte // REGISTER responses by transaction and source
	binds map[wire.ID]map[wire.Transport]netip.AddrPort
	got   []received
}

type dedupKey struct {
	tx  wire.TransactionID
	src netip.AddrPort
}

// received is one request as the responder saw it.
type received struct {
	at     time.Time
	kind   wire.Kind
	method wire.Method // X only
	tx     wire.TransactionID
	raw    []byte
}

func newResponder() *responder {
	return &responder{
		regs:  map[wire.ID]wire.Key{},
		done:  map[dedupKey][]byte{},
		binds: map[wire.ID]map[wire.Transport]netip.AddrPort{},
	}
}

func (r *responder) requests() []received {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]received(nil), r.got...)
}

func (r *responder) set(f func(r *responder)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r)
}

// handle answers one message from src that came over tr; nil means no
// answer.
func (r *responder) handle(b []byte, src netip.AddrPort, tr wire.Transport) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	kind := wire.Classify(b)
	if kind == wire.KindOther {
		return nil
	}
	rec := received{at: time.Now(), kind: kind, tx: wire.TransactionID(b[8:20]), raw: append([]byte(nil), b...)}
	if kind == wire.KindX {
		var m wire.Message
		m.Decode(b)
		rec.method = m.Type.Method
	}
	r.got = append(r.got, rec)
	if r.silent {
		return nil
	}
	if r.dropRequests > 0 {
		r.dropRequests--
		return nil
	}
	observed := src
	if r.nat != nil {
		observed = r.nat(src)
	}
	var resp []byte
	if kind == wire.KindSTUN {
		resp = r.stun(b, observed)
	} else {
		resp = r.x(b, src, observed, tr)
	}
	if resp != nil && r.dropResponses > 0 {
		r.dropResponses--
		return nil
	}
	return resp
}

func (r *responder) stun(b []byte, observed netip.AddrPort) []byte {
	var req stun.Message
	if err := stun.Decode(b, &req); err != nil || req.Type != stun.BindingRequest {
		return nil
	}
	resp, err := stun.Build(stun.NewTransactionIDSetter(req.TransactionID), stun.BindingSuccess,
		&stun.XORMappedAddress{IP: observed.Addr().AsSlice(), Port: int(observed.Port())}, stun.Fingerprint)
	if err != nil {
		panic(err)
	}
	return resp.Raw
}

func (r *responder) x(b []byte, src, observed netip.AddrPort, tr wire.Transport) []byte {
	var m wire.Message
	err := m.Decode(b)
	if errors.Is(err, wire.ErrInvalidHeader) || m.Type.Class != wire.ClassRequest {
		return nil
	}
	if err == nil {
		err = m.Check()
	}
	var out wire.Message
	out.Type = wire.Type{Method: m.Type.Method, Class: wire.ClassSuccess}
	out.TransactionID = m.TransactionID
	// signKey is set once the request's MAC verified: from then on every
	// answer is signed (docs/PROTOCOL.md §18.4).
	var signKey *wire.Key
	stale := false
	emit := func() []byte {
		var b []byte
		if signKey != nil && !r.unsigned {
			if stale {
				out.SetTimestamp(uint64(time.Now().Add(r.skew).UnixMilli()))
			}
			b = integrity.NewSigner().Append(nil, &out, signKey[:])
		} else {
			b = out.AppendTo(nil)
		}
		if r.tamper != nil {
			r.tamper(b)
		}
		return b
	}
	fail := func(reason wire.Reason) []byte {
		out = wire.Message{Type: wire.Type{Method: m.Type.Method, Class: wire.ClassError}, TransactionID: m.TransactionID}
		out.SetReason(reason)
		return emit()
	}
	auth := func(id wire.ID) (wire.Reason, bool) {
		k, ok := r.regs[id]
		if !ok {
			return wire.ReasonNotRegistered, false
		}
		if !m.HasIntegrity() {
			r.keyForm++
			if k != m.Key {
				return wire.ReasonKeyMismatch, false
			}
			return 0, true
		}
		if !integrity.NewSigner().Verify(b, k[:]) {
			return wire.ReasonKeyMismatch, false
		}
		signKey = &k
		if !integrity.Fresh(m.Timestamp, uint64(time.Now().Add(r.skew).UnixMilli())) {
			stale = true
			return wire.ReasonStale, false
		}
		return 0, true
	}
	switch {
	case errors.Is(err, wire.ErrUnknownMethod):
		return fail(wire.ReasonUnknownMethod)
	case err != nil:
		return fail(wire.ReasonInvalidAttributes)
	case r.force != nil:
		// As ewfd: a reason given after the request's MAC verified is
		// signed.
		if m.HasIntegrity() {
			id := m.ID
			if m.Has(wire.AttrSourceID) {
				id = m.SourceID
			}
			auth(id)
		}
		return fail(*r.force)
	}
	switch m.Type.Method {
	case wire.MethodRegister:
		dk := dedupKey{m.TransactionID, src}
		if resp, ok := r.done[dk]; ok {
			return resp // a retransmission gets the same answer
		}
		var resp []byte
		if _, used := r.regs[m.ID]; used {
			resp = fail(wire.ReasonIDConflict)
		} else {
			var k wire.Key
			rand.Read(k[:])
			r.regs[m.ID] = k
			out.SetKey(k)
			resp = emit()
		}
		r.done[dk] = resp
		return resp
	case wire.MethodBind:
		if reason, ok := auth(m.ID); !ok {
			return fail(reason)
		}
		a := m.Addresses[0]
		if a.Transport != tr || a.AddrPort != observed {
			return fail(wire.ReasonAddressMismatch)
		}
		if r.binds[m.ID] == nil {
			r.binds[m.ID] = map[wire.Transport]netip.AddrPort{}
		}
		r.binds[m.ID][tr] = observed
		return emit()
	case wire.MethodQuery:
		if m.IsIntroduction() {
			if reason, ok := auth(m.SourceID); !ok {
				return fail(reason)
			}
		}
		if _, ok := r.regs[m.ID]; !ok {
			return fail(wire.ReasonNotRegistered)
		}
		bound := r.binds[m.ID]
		if len(bound) == 0 {
			return fail(wire.ReasonNotBound)
		}
		for _, t := range []wire.Transport{wire.TransportUDP, wire.TransportTCP} {
			if ap, ok := bound[t]; ok {
				out.AddAddress(wire.Address{Transport: t, AddrPort: ap})
			}
		}
		if m.IsIntroduction() {
			var s wire.Secret
			rand.Read(s[:])
			out.SetSecret(s)
			if to, ok := bound[wire.TransportUDP]; ok && r.sendTo != nil {
				var in wire.Message
				in.Type = wire.Type{Method: wire.MethodIntroduce, Class: wire.ClassIndication}
				rand.Read(in.TransactionID[:])
				in.SetSourceID(m.SourceID)
				in.SetSecret(s)
				for _, t := range []wire.Transport{wire.TransportUDP, wire.TransportTCP} {
					if ap, ok := r.binds[m.SourceID][t]; ok {
						in.AddAddress(wire.Address{Transport: t, AddrPort: ap})
					}
				}
				for _, c := range m.Candidates[:m.NumCandidates] {
					in.AddCandidate(c)
				}
				if in.NumAddresses > 0 {
					r.sendTo(to, in.AppendTo(nil))
				}
			}
		}
		return emit()
	}
	return fail(wire.ReasonUnknownMethod)
}

// udpServer runs a responder on a real UDP socket on 127.0.0.1.
type udpServer struct {
	r    *responder
	conn *net.UDPConn
	wg   sync.WaitGroup
}

func (s *udpServer) addr() netip.AddrPort { return s.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

func startUDP(t *testing.T, r *responder) *udpServer {
	t.Helper()
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	s := &udpServer{r: r, conn: conn}
	r.set(func(r *responder) {
		r.sendTo = func(to netip.AddrPort, b []byte) { conn.WriteToUDPAddrPort(b, to) }
	})
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if resp := r.handle(buf[:n], from, wire.TransportUDP); resp != nil {
				conn.WriteToUDPAddrPort(resp, from)
			}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		s.wg.Wait()
	})
	return s
}

// tcpServer runs a responder on a real TCP listener on 127.0.0.1.
type tcpServer struct {
	r  *responder
	ln *net.TCPListener
	wg sync.WaitGroup

	mu           sync.Mutex
	conns        map[net.Conn]bool
	closeOnFrame bool // hang up instead of answering
}

func (s *tcpServer) addr() netip.AddrPort { return s.ln.Addr().(*net.TCPAddr).AddrPort() }

func startTCP(t *testing.T, r *responder) *tcpServer {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpServer{r: r, ln: ln, conns: map[net.Conn]bool{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns[c] = true
			s.mu.Unlock()
			s.wg.Add(1)
			go s.serve(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *tcpServer) serve(c *net.TCPConn) {
	defer s.wg.Done()
	defer c.Close()
	from := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	f := wire.NewFramer(c)
	for {
		msg, _, err := f.Next()
		if err != nil {
			return
		}
		s.mu.Lock()
		hangUp := s.closeOnFrame
		s.mu.Unlock()
		if hangUp {
			return
		}
		if resp := s.r.handle(msg, from, wire.TransportTCP); resp != nil {
			c.Write(resp)
		}
	}
}

// pipe connects a Client to a responder in memory, for tests that run in
// a synctest bubble (where a goroutine blocked on a real socket would stop
// the fake clock). Requests go through a channel to a responder goroutine
// that feeds the answers to HandlePacket, as a socket reader would.
type pipe struct {
	r       *responder
	c       *Client
	src     netip.AddrPort
	in      chan []byte
	done    chan struct{}
	mu      sync.Mutex
	sendErr []error // errors for the next sends, in order
}

func newPipe(r *responder, cfg Config) *pipe {
	p := &pipe{r: r, src: netip.MustParseAddrPort("192.0.2.1:40000"), in: make(chan []byte, 64), done: make(chan struct{})}
	cfg.Send = p.send
	if !cfg.Server.IsValid() {
		cfg.Server = netip.MustParseAddrPort("127.0.0.1:3478")
	}
	p.c = New(cfg)
	go p.run()
	return p
}

func (p *pipe) send(b []byte) error {
	p.mu.Lock()
	if len(p.sendErr) > 0 {
		err := p.sendErr[0]
		p.sendErr = p.sendErr[1:]
		p.mu.Unlock()
		if err != nil {
			return err
		}
	} else {
		p.mu.Unlock()
	}
	p.in <- append([]byte(nil), b...)
	return nil
}

func (p *pipe) run() {
	defer close(p.done)
	for b := range p.in {
		if resp := p.r.handle(b, p.src, wire.TransportUDP); resp != nil {
			p.c.HandlePacket(resp)
		}
	}
}

func (p *pipe) close() {
	close(p.in)
	<-p.done
}

func (r *responder) binding(id wire.ID, tr wire.Transport) (netip.AddrPort, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ap, ok := r.binds[id][tr]
	return ap, ok
}

func (r *responder) key(id wire.ID) wire.Key {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.regs[id]
}
