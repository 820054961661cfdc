package loadgen

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
)

// handler answers one request from src; nil means no answer.
type handler func(req []byte, src netip.AddrPort) []byte

// responder is a UDP server on 127.0.0.1 for the generator to talk to:
// pion/stun builds its STUN answers and package wire its X answers, so the
// generator is checked against independent encoders.
type responder struct {
	conn  *net.UDPConn
	delay time.Duration
	wg    sync.WaitGroup
	queue chan delayed
}

type delayed struct {
	at   time.Time
	resp []byte
	to   netip.AddrPort
}

func startResponder(t *testing.T, h handler, delay time.Duration) *responder {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	r := &responder{conn: conn, delay: delay, queue: make(chan delayed, 4096)}
	r.wg.Go(func() {
		defer close(r.queue)
		buf := make([]byte, 2048)
		for {
			n, src, err := conn.ReadFromUDPAddrPort(buf)
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if err != nil {
				continue
			}
			resp := h(buf[:n], netip.AddrPortFrom(src.Addr().Unmap(), src.Port()))
			if resp == nil {
				continue
			}
			if delay == 0 {
				_, _ = conn.WriteToUDPAddrPort(resp, src)
				continue
			}
			select {
			case r.queue <- delayed{time.Now().Add(delay), resp, src}:
			default: // full: drop, as a real server would
			}
		}
	})
	r.wg.Go(func() {
		for d := range r.queue {
			time.Sleep(time.Until(d.at))
			_, _ = conn.WriteToUDPAddrPort(d.resp, d.to)
		}
	})
	t.Cleanup(func() {
		conn.Close()
		r.wg.Wait()
	})
	return r
}

func (r *responder) addr() netip.AddrPort {
	return r.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

// stunMutation changes an otherwise correct Binding success response.
type stunMutation struct {
	addr  func(netip.AddrPort) netip.AddrPort
	txid  func(*[stun.TransactionIDSize]byte)
	class stun.MessageType
}

// stunHandler answers Binding requests with pion/stun, as a STUN server
// should, unless mut says otherwise.
func stunHandler(mut stunMutation) handler {
	return func(b []byte, src netip.AddrPort) []byte {
		req := &stun.Message{Raw: append([]byte(nil), b...)}
		if req.Decode() != nil || req.Type != stun.BindingRequest {
			return nil
		}
		addr, tx, typ := src, req.TransactionID, stun.BindingSuccess
		if mut.addr != nil {
			addr = mut.addr(addr)
		}
		if mut.txid != nil {
			mut.txid(&tx)
		}
		if mut.class != (stun.MessageType{}) {
			typ = mut.class
		}
		setters := []stun.Setter{stun.NewTransactionIDSetter(tx), typ}
		if typ == stun.BindingError {
			setters = append(setters, stun.CodeBadRequest)
		} else {
			setters = append(setters, &stun.XORMappedAddress{IP: addr.Addr().AsSlice(), Port: int(addr.Port())})
		}
		resp, err := stun.Build(append(setters, stun.Fingerprint)...)
		if err != nil {
			panic(err)
		}
		return resp.Raw
	}
}

// xServer is a small in-memory implementation of the REGISTER, BIND and
// QUERY semantics of docs/PROTOCOL.md, enough for the generator's setup
// and its bind, query and register modes.
type xServer struct {
	mu         sync.Mutex
	keys       map[wire.ID]wire.Key
	bound      map[wire.ID]netip.AddrPort
	registered int
	// Misbehaviour for the tests.
	queryLie    bool        // answer QUERY with the wrong port
	queryReason wire.Reason // if set, answer QUERY with this error
	regReason   wire.Reason // if set, answer REGISTER with this error
	stun        handler
}

func newXServer() *xServer {
	return &xServer{keys: map[wire.ID]wire.Key{}, bound: map[wire.ID]netip.AddrPort{}, stun: stunHandler(stunMutation{})}
}

func (s *xServer) handle(b []byte, src netip.AddrPort) []byte {
	if wire.Classify(b) == wire.KindSTUN {
		return s.stun(b, src)
	}
	var req wire.Message
	if req.Decode(b) != nil || req.Check() != nil || req.Type.Class != wire.ClassRequest {
		return nil
	}
	resp := wire.Message{TransactionID: req.TransactionID,
		Type: wire.Type{Method: req.Type.Method, Class: wire.ClassSuccess}}
	fail := func(r wire.Reason) []byte {
		resp = wire.Message{TransactionID: req.TransactionID,
			Type: wire.Type{Method: req.Type.Method, Class: wire.ClassError}}
		resp.SetReason(r)
		return resp.AppendTo(nil)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch req.Type.Method {
	case wire.MethodRegister:
		if s.regReason != 0 {
			return fail(s.regReason)
		}
		if _, ok := s.keys[req.ID]; ok {
			return fail(wire.ReasonIDConflict)
		}
		var k wire.Key
		_, _ = rand.Read(k[:])
		s.keys[req.ID] = k
		s.registered++
		resp.SetKey(k)
	case wire.MethodBind:
		k, ok := s.keys[req.ID]
		switch {
		case !ok:
			return fail(wire.ReasonNotRegistered)
		case k != req.Key:
			return fail(wire.ReasonKeyMismatch)
		case req.Addresses[0] != wire.Address{Transport: wire.TransportUDP, AddrPort: src}:
			return fail(wire.ReasonAddressMismatch)
		}
		s.bound[req.ID] = src
	case wire.MethodQuery:
		if s.queryReason != 0 {
			return fail(s.queryReason)
		}
		a, ok := s.bound[req.ID]
		if !ok {
			return fail(wire.ReasonNotBound)
		}
		if s.queryLie {
			a = netip.AddrPortFrom(a.Addr(), a.Port()+1)
		}
		_ = resp.AddAddress(wire.Address{Transport: wire.TransportUDP, AddrPort: a})
	default:
		return fail(wire.ReasonUnknownMethod)
	}
	return resp.AppendTo(nil)
}
